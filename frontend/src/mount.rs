//! `RUN --mount=type=...` specifications.

use serde::{Deserialize, Serialize};

use crate::check_config::parse_go_bool;

/// The kinds of RUN mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

/// How concurrent builds share a cache mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// One `--mount`, with Docker's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Parses a mount spec (comma-separated, CSV quoting) as BuildKit does
    /// when it runs the RUN: fields in order, each value passed through
    /// `expand` (the ARG/ENV expansion) before it is checked. A bind, cache
    /// or tmpfs mount without `target=` keeps `target` empty: it mounts at
    /// the WORKDIR, which the planner knows.
    pub fn parse(spec: &str, expand: &mut dyn FnMut(&str) -> Result<String, String>) -> Result<Mount, String> {
        let mut m = Mount {
            kind: MountType::Bind,
            target: None,
            source: None,
            from: None,
            readonly: false,
            id: None,
            sharing: None,
            required: false,
            mode: None,
            uid: None,
            gid: None,
            size: None,
            env: None,
        };
        let mut readonly = None;
        for field in split_csv(spec)? {
            let Some((key, raw)) = field.split_once('=') else {
                match field.to_ascii_lowercase().as_str() {
                    "readonly" | "ro" => readonly = Some(true),
                    "readwrite" | "rw" => readonly = Some(false),
                    "required" if m.kind.takes_required() => m.required = true,
                    "required" => return Err(unexpected_key("required", m.kind)),
                    _ => return Err(format!("invalid field '{field}' must be a key=value pair")),
                }
                continue;
            };
            let key = key.to_ascii_lowercase();
            let value = expand(raw)?;
            let invalid = || format!("invalid value for {key}: {value}");
            match key.as_str() {
                "type" => m.kind = MountType::parse(&value)?,
                "from" => m.from = Some(value),
                "source" | "src" => m.source = Some(value),
                "target" | "dst" | "destination" => m.target = Some(value),
                "readonly" | "ro" => readonly = Some(parse_go_bool(&value).ok_or_else(invalid)?),
                "readwrite" | "rw" => readonly = Some(!parse_go_bool(&value).ok_or_else(invalid)?),
                "required" if m.kind.takes_required() => m.required = parse_go_bool(&value).ok_or_else(invalid)?,
                "size" if m.kind == MountType::Tmpfs => {
                    m.size = Some(crate::parse_byte_size(&value).map_err(|_| invalid())?)
                }
                "required" | "size" => return Err(unexpected_key(&key, m.kind)),
                "id" => m.id = Some(value),
                "sharing" => m.sharing = Some(Sharing::parse(&value)?),
                "mode" => {
                    m.mode =
                        Some(u32::from_str_radix(&value, 8).map_err(|_| format!("invalid value {value} for mode"))?)
                }
                "uid" => m.uid = Some(value.parse().map_err(|_| format!("invalid value {value} for uid"))?),
                "gid" => m.gid = Some(value.parse().map_err(|_| format!("invalid value {value} for gid"))?),
                "env" => m.env = Some(value),
                _ => return Err(format!("unexpected key '{key}' in '{field}'")),
            }
        }
        let kind = m.kind;
        if !matches!(kind, MountType::Secret | MountType::Ssh | MountType::Cache) {
            for (name, set) in [("mode", m.mode.is_some()), ("uid", m.uid.is_some()), ("gid", m.gid.is_some())] {
                if set {
                    return Err(format!("{name} not allowed for \"{}\" type mounts", kind.name()));
                }
            }
        }
        m.readonly = readonly.unwrap_or(!matches!(kind, MountType::Cache | MountType::Tmpfs));
        match kind {
            MountType::Secret => {
                if m.from.is_some() {
                    return Err("secret mount should not have a from".into());
                }
                if m.sharing.is_some() {
                    return Err("secret mount should not define sharing".into());
                }
                if m.source.is_none() && m.target.is_none() && m.id.is_none() {
                    return Err("invalid secret mount. one of source, target required".into());
                }
                if m.source.is_some() && m.id.is_some() {
                    return Err("both source and id can't be set".into());
                }
                // The secret's id: source=, else id=, else the target's name.
                if let Some(source) = m.source.take() {
                    m.id = Some(source);
                }
                if m.id.is_none() {
                    m.id = m.target.as_deref().map(|t| t.rsplit('/').next().unwrap_or(t).to_string());
                }
            }
            MountType::Ssh => {
                m.id.get_or_insert_with(|| "default".to_string());
            }
            MountType::Cache => {
                m.sharing.get_or_insert(Sharing::Shared);
                if m.id.is_none() {
                    m.id = Some(crate::clean_path(m.target.as_deref().unwrap_or(".")));
                }
            }
            MountType::Bind | MountType::Tmpfs => {}
        }
        if m.sharing.is_some() && kind != MountType::Cache {
            return Err(format!("invalid cache sharing set for {} mount", kind.name()));
        }
        if kind != MountType::Secret {
            m.env = None;
        }
        Ok(m)
    }

    /// The `from=` of a mount spec as written, checked as BuildKit checks
    /// it when it reads the file: it names a stage or an image and cannot
    /// hold a variable.
    pub fn raw_from(spec: &str) -> Result<Option<String>, String> {
        let mut from = None;
        for field in split_csv(spec)? {
            if let Some((key, value)) = field.split_once('=') {
                if key.eq_ignore_ascii_case("from") {
                    if value.find('$').is_some_and(|i| i != value.len() - 1) {
                        return Err("'from' doesn't support variable expansion, define alias stage instead".into());
                    }
                    from = Some(value.to_string());
                }
            }
        }
        Ok(from)
    }
}

impl MountType {
    fn parse(value: &str) -> Result<MountType, String> {
        Ok(match value.to_ascii_lowercase().as_str() {
            "bind" => MountType::Bind,
            "cache" => MountType::Cache,
            "tmpfs" => MountType::Tmpfs,
            "secret" => MountType::Secret,
            "ssh" => MountType::Ssh,
            _ => return Err(format!("unsupported mount type {value:?} (bind, cache, tmpfs, secret or ssh)")),
        })
    }

    /// The type as written in a mount spec.
    pub fn name(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }

    /// Whether the mount is placed at a target taken relative to the
    /// WORKDIR, the WORKDIR itself when none is given (secret and ssh
    /// mounts have their own defaults).
    pub fn mounts_at_target(self) -> bool {
        matches!(self, MountType::Bind | MountType::Cache | MountType::Tmpfs)
    }

    fn takes_required(self) -> bool {
        matches!(self, MountType::Secret | MountType::Ssh)
    }
}

impl Sharing {
    fn parse(value: &str) -> Result<Sharing, String> {
        Ok(match value.to_ascii_lowercase().as_str() {
            "shared" => Sharing::Shared,
            "private" => Sharing::Private,
            "locked" => Sharing::Locked,
            _ => return Err(format!("unsupported sharing value {value:?} (shared, private or locked)")),
        })
    }
}

fn unexpected_key(key: &str, kind: MountType) -> String {
    format!("unexpected key '{key}' for mount type '{}'", kind.name())
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
        let m = parse("type=secret,source=aws,env=AWS").unwrap();
        assert_eq!((m.id.as_deref(), m.env.as_deref()), (Some("aws"), Some("AWS")));
        let m = parse("type=ssh").unwrap();
        assert_eq!(m.id.as_deref(), Some("default"));
        let m = parse("type=tmpfs,target=/tmp,size=64m").unwrap();
        assert_eq!(m.size, Some(64 << 20));
        let m = parse("type=bind,from=build,source=/out,target=/in,rw").unwrap();
        assert_eq!(m.from.as_deref(), Some("build"));
        assert!(!m.readonly);
        let m = parse("\"type=bind\",\"target=/a,b\"").unwrap();
        assert_eq!(m.target.as_deref(), Some("/a,b"));
        // No target: the planner mounts it at the WORKDIR.
        let m = parse("type=Cache").unwrap();
        assert_eq!((m.kind, m.target.as_deref(), m.id.as_deref()), (MountType::Cache, None, Some(".")));
        assert_eq!(parse("ro").unwrap().target, None);
    }

    #[test]
    fn expands_every_value_first() {
        let m =
            Mount::parse("type=$T,target=${D}", &mut |v| Ok(v.replace("$T", "cache").replace("${D}", "/c"))).unwrap();
        assert_eq!((m.kind, m.target.as_deref()), (MountType::Cache, Some("/c")));
    }

    #[test]
    fn errors() {
        for (spec, want) in [
            ("type=nfs,target=/x", "unsupported mount type \"nfs\""),
            ("type=bind,target=/x,sharing=locked", "invalid cache sharing set for bind mount"),
            ("target=/x,foo=bar", "unexpected key 'foo' in 'foo=bar'"),
            ("type=cache,target=/x,mode=999", "invalid value 999 for mode"),
            ("type=bind,target=/x,uid=1", "uid not allowed for \"bind\" type mounts"),
            ("type=secret", "invalid secret mount. one of source, target required"),
            ("type=secret,id=a,from=b", "secret mount should not have a from"),
            ("target=/x,bogus", "invalid field 'bogus' must be a key=value pair"),
            ("type=tmpfs,target=/t,size=lots", "invalid value for size: lots"),
            ("required,type=secret,id=a", "unexpected key 'required' for mount type 'bind'"),
            ("type=bind,ro=yes", "invalid value for ro: yes"),
        ] {
            let e = parse(spec).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }

    #[test]
    fn from_is_read_as_written() {
        assert_eq!(Mount::raw_from("type=bind,from=build,target=/b"), Ok(Some("build".into())));
        assert_eq!(Mount::raw_from("target=/b"), Ok(None));
        assert!(Mount::raw_from("from=$STAGE").unwrap_err().contains("doesn't support variable expansion"));
    }
}
