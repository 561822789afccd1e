//! `RUN --mount=type=...` specifications.

use serde::Serialize;

/// The kinds of RUN mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

/// How concurrent builds share a cache mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// One `--mount`, with Docker's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: MountType,
    pub target: Option<String>,
    pub source: Option<String>,
    /// A stage name or an image reference (bind and cache).
    pub from: Option<String>,
    pub readonly: bool,
    /// Cache id, secret id or ssh id.
    pub id: Option<String>,
    pub sharing: Option<Sharing>,
    pub required: bool,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// tmpfs size in bytes.
    pub size: Option<u64>,
    /// Secret exposed as this environment variable.
    pub env: Option<String>,
}

impl Mount {
    /// Parses a mount spec (comma-separated, CSV quoting). `expand` is
    /// applied to each value; at parse time pass the identity, and values
    /// that still hold a `$` are checked later, once expanded.
    pub fn parse(spec: &str, expand: &mut dyn FnMut(&str) -> Result<String, String>) -> Result<Mount, String> {
        let fields = split_csv(spec)?;
        let mut kind = MountType::Bind;
        for field in &fields {
            if let Some((k, v)) = field.split_once('=') {
                if k.eq_ignore_ascii_case("type") {
                    kind = match expand(v)?.as_str() {
                        "bind" => MountType::Bind,
                        "cache" => MountType::Cache,
                        "tmpfs" => MountType::Tmpfs,
                        "secret" => MountType::Secret,
                        "ssh" => MountType::Ssh,
                        other => {
                            return Err(format!("unsupported mount type {other:?} (bind, cache, tmpfs, secret or ssh)"))
                        }
                    };
                }
            }
        }
        let mut m = Mount {
            kind,
            target: None,
            source: None,
            from: None,
            readonly: kind == MountType::Bind,
            id: None,
            sharing: None,
            required: false,
            mode: None,
            uid: None,
            gid: None,
            size: None,
            env: None,
        };
        let secret_like = matches!(kind, MountType::Secret | MountType::Ssh);
        for field in &fields {
            let Some((key, raw)) = field.split_once('=') else {
                match field.to_ascii_lowercase().as_str() {
                    "readonly" | "ro" => m.readonly = true,
                    "readwrite" | "rw" => m.readonly = false,
                    "required" if secret_like => m.required = true,
                    _ => return Err(format!("invalid field {field:?}: it must be a key=value pair")),
                }
                continue;
            };
            let key = key.to_ascii_lowercase();
            let value = expand(raw)?;
            let deferred = value.contains('$');
            let unexpected = || format!("unexpected key {key:?} for mount type {kind:?}");
            match key.as_str() {
                "type" => {}
                "from" => {
                    if !matches!(kind, MountType::Bind | MountType::Cache) {
                        return Err(format!("{kind:?} mounts do not take from="));
                    }
                    m.from = Some(value)
                }
                "source" | "src" => m.source = Some(value),
                "target" | "dst" | "destination" => m.target = Some(value),
                "readonly" | "ro" => m.readonly = parse_bool(&key, &value)?,
                "readwrite" | "rw" => m.readonly = !parse_bool(&key, &value)?,
                "required" if secret_like => m.required = parse_bool(&key, &value)?,
                "sharing" if kind == MountType::Cache => {
                    m.sharing = Some(match value.as_str() {
                        "shared" => Sharing::Shared,
                        "private" => Sharing::Private,
                        "locked" => Sharing::Locked,
                        other => {
                            return Err(format!("unsupported sharing value {other:?} (shared, private or locked)"))
                        }
                    })
                }
                "id" => m.id = Some(value),
                "size" if kind == MountType::Tmpfs => {
                    if !deferred {
                        m.size = Some(crate::parse_byte_size(&value)?);
                    }
                }
                "mode" if !deferred => {
                    m.mode = Some(
                        u32::from_str_radix(&value, 8)
                            .map_err(|_| format!("invalid value for mode: {value:?} (octal)"))?,
                    )
                }
                "uid" | "gid" if !deferred => {
                    let n: u32 = value.parse().map_err(|_| format!("invalid value for {key}: {value:?}"))?;
                    if key == "uid" {
                        m.uid = Some(n)
                    } else {
                        m.gid = Some(n)
                    }
                }
                "mode" | "uid" | "gid" => {}
                "env" if kind == MountType::Secret => m.env = Some(value),
                "required" | "sharing" | "size" | "env" => return Err(unexpected()),
                _ => return Err(format!("unexpected key {key:?} in mount {spec:?}")),
            }
        }
        match kind {
            MountType::Bind | MountType::Cache | MountType::Tmpfs => {
                if m.target.as_deref().unwrap_or("").is_empty() {
                    return Err(format!("{kind:?} mount needs a target").to_lowercase());
                }
            }
            MountType::Secret => {
                if m.id.is_none() {
                    let from_target = m.target.as_deref().and_then(|t| t.rsplit('/').next());
                    m.id = from_target.filter(|s| !s.is_empty()).map(str::to_string);
                }
                if m.id.is_none() && m.env.is_none() {
                    return Err("secret mount needs an id, a target or an env".into());
                }
            }
            MountType::Ssh => {
                m.id.get_or_insert_with(|| "default".to_string());
            }
        }
        if kind == MountType::Cache {
            m.sharing.get_or_insert(Sharing::Shared);
            if m.id.is_none() {
                m.id = m.target.clone();
            }
        }
        Ok(m)
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "t" => Ok(true),
        "false" | "0" | "f" => Ok(false),
        _ => Err(format!("invalid value for {key}: {value:?} (true or false)")),
    }
}

/// Splits a CSV record: `,` separated, `"` quoted with `""` for a quote.
fn split_csv(spec: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = spec.chars().peekable();
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        match (c, in_quotes) {
            ('"', false) if field.is_empty() || field.ends_with('=') => in_quotes = true,
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => in_quotes = false,
            (',', false) => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err(format!("unterminated quote in mount {spec:?}"));
    }
    fields.push(field);
    Ok(fields.into_iter().filter(|f| !f.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Result<Mount, String> {
        Mount::parse(spec, &mut |v| Ok(v.to_string()))
    }

    #[test]
    fn defaults() {
        let m = parse("target=/src").unwrap();
        assert_eq!(m.kind, MountType::Bind);
        assert!(m.readonly);
        let m = parse("type=cache,target=/root/.cache,sharing=locked,uid=1000,mode=0755").unwrap();
        assert_eq!(m.sharing, Some(Sharing::Locked));
        assert_eq!(m.id.as_deref(), Some("/root/.cache"));
        assert_eq!((m.uid, m.mode), (Some(1000), Some(0o755)));
        assert!(!m.readonly);
        let m = parse("type=secret,target=/run/secrets/npmrc,required").unwrap();
        assert_eq!(m.id.as_deref(), Some("npmrc"));
        assert!(m.required);
        let m = parse("type=ssh").unwrap();
        assert_eq!(m.id.as_deref(), Some("default"));
        let m = parse("type=tmpfs,target=/tmp,size=64m").unwrap();
        assert_eq!(m.size, Some(64 << 20));
        let m = parse("type=bind,from=build,source=/out,target=/in,rw").unwrap();
        assert_eq!(m.from.as_deref(), Some("build"));
        assert!(!m.readonly);
        let m = parse("\"type=bind\",\"target=/a,b\"").unwrap();
        assert_eq!(m.target.as_deref(), Some("/a,b"));
    }

    #[test]
    fn errors() {
        for (spec, want) in [
            ("type=nfs,target=/x", "unsupported mount type"),
            ("type=cache", "needs a target"),
            ("type=bind,target=/x,sharing=locked", "unexpected key"),
            ("target=/x,foo=bar", "unexpected key \"foo\""),
            ("type=cache,target=/x,mode=999", "invalid value for mode"),
            ("type=secret", "needs an id"),
            ("type=tmpfs,target=/x,from=a", "do not take from"),
            ("target=/x,bogus", "key=value"),
            ("type=tmpfs,target=/t,size=lots", "invalid size"),
        ] {
            let e = parse(spec).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }
}
