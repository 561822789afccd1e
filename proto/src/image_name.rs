//! Image references read the way `docker` and BuildKit read one: the
//! distribution reference grammar after Docker's normalization (a name
//! without a registry is on Docker Hub, one without a namespace is under
//! `library/`). No regular expression: this runs on every build.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] component ( "/" component )*
//! domain     := host [ ":" port ]    host := label ( "." label )* | "[" IPv6 "]"
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" hex{32,}, with sha256/384/512 checked for length
//! ```

/// A parsed and normalized image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageName {
    /// `docker.io` when the reference names no registry.
    pub registry: String,
    /// With `library/` for a single-name Docker Hub repository.
    pub repository: String,
    /// As written: `None` when the reference has none.
    pub tag: Option<String>,
    /// `algorithm:hex`, as written.
    pub digest: Option<String>,
}

impl ImageName {
    /// Parses `reference`; the error is what Docker says.
    pub fn parse(reference: &str) -> Result<ImageName, String> {
        if reference.len() == 64 && reference.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("invalid repository name ({reference}), cannot specify 64-byte hexadecimal strings"));
        }
        let (domain, remainder) = split_domain(reference);
        let remote = remainder.split(':').next().unwrap_or_default();
        if remote.to_lowercase() != remote {
            return Err(format!("invalid reference format: repository name ({remote}) must be lowercase"));
        }
        let full = format!("{domain}/{remainder}");
        match parse(&full) {
            Ok(parts) => Ok(ImageName {
                registry: domain.to_string(),
                repository: parts.name[domain.len() + 1..].to_string(),
                tag: parts.tag.map(str::to_string),
                digest: parts.digest.map(str::to_string),
            }),
            Err(ParseError::Format) if parse(&full.to_lowercase()).is_ok() => {
                Err("invalid reference format: repository name must be lowercase".into())
            }
            Err(ParseError::Format) => Err("invalid reference format".into()),
            Err(ParseError::Other(message)) => Err(message),
        }
    }
}

/// Docker's split of a name into its registry and the rest.
fn split_domain(name: &str) -> (&str, String) {
    match name.split_once('/') {
        None => ("docker.io", format!("library/{name}")),
        Some(("index.docker.io", rest)) => ("docker.io", library(rest)),
        Some((first, rest)) if first == "localhost" || first.contains(['.', ':']) || first.to_lowercase() != first => {
            (first, if first == "docker.io" { library(rest) } else { rest.to_string() })
        }
        Some(_) => ("docker.io", name.to_string()),
    }
}

fn library(rest: &str) -> String {
    if rest.contains('/') {
        rest.to_string()
    } else {
        format!("library/{rest}")
    }
}

enum ParseError {
    /// The text does not match the grammar.
    Format,
    Other(String),
}

/// The parts of a reference, in the text parsed.
struct Parts<'a> {
    name: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

/// The anchored reference grammar.
fn parse(text: &str) -> Result<Parts<'_>, ParseError> {
    let (name_tag, digest) = match text.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (text, None),
    };
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].find(':') {
        Some(i) => (&name_tag[..last_slash + i], Some(&name_tag[last_slash + i + 1..])),
        None => (name_tag, None),
    };
    if !valid_name(name) || !tag.is_none_or(valid_tag) || !digest.is_none_or(digest_matches_grammar) {
        return Err(ParseError::Format);
    }
    if name.len() > 255 {
        return Err(ParseError::Other("repository name must not be more than 255 characters".into()));
    }
    if let Some(digest) = digest {
        check_digest(digest).map_err(|e| ParseError::Other(e.into()))?;
    }
    Ok(Parts { name, tag, digest })
}

fn valid_name(name: &str) -> bool {
    let components: Vec<&str> = name.split('/').collect();
    components.iter().all(|c| valid_component(c))
        || (components.len() > 1 && valid_domain(components[0]) && components[1..].iter().all(|c| valid_component(c)))
}

fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return false;
    }
    // Between alphanumeric runs: ".", "_", "__" or any number of "-".
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        if !(matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((inner, after)) => {
                let ipv6 = !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
                if !ipv6 {
                    return false;
                }
                match after.strip_prefix(':') {
                    Some(port) => ("", Some(port)),
                    None if after.is_empty() => ("", None),
                    None => return false,
                }
            }
            None => return false,
        },
        None => match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        },
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    domain.starts_with('[')
        || host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    bytes.first().is_some_and(|b| word(*b))
        && bytes.len() <= 128
        && bytes[1..].iter().all(|b| word(*b) || *b == b'.' || *b == b'-')
}

fn digest_matches_grammar(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        b.first().is_some_and(u8::is_ascii_alphabetic) && b.iter().all(u8::is_ascii_alphanumeric)
    };
    algorithm.split(['-', '_', '+', '.']).all(component_ok)
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// go-digest's checks of a known algorithm.
fn check_digest(digest: &str) -> Result<(), &'static str> {
    let (algorithm, hex) = digest.split_once(':').ok_or("invalid checksum digest format")?;
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => {
            let lower_ok = algorithm
                .split(['-', '_', '+', '.'])
                .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
            return Err(if lower_ok { "unsupported digest algorithm" } else { "invalid checksum digest format" });
        }
    };
    if hex.len() != length {
        return Err("invalid checksum digest length");
    }
    if !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err("invalid checksum digest format");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_docker_accepts() {
        let sha = "a".repeat(64);
        for ok in [
            "busybox",
            "busybox:1.36",
            "library/busybox:latest",
            "docker.io/library/alpine:3.19",
            "ghcr.io/owner/repo/sub:v1.2_3-rc.1",
            "localhost:5000/app",
            "localhost/app",
            "my-registry.example.com:443/team/app",
            "[::1]:5000/app",
            "Registry.Example.com/app",
            "a__b/c.d/e---f",
            &format!("alpine@sha256:{sha}"),
            &format!("alpine:3@sha256:{sha}"),
            "tonistiigi/xx:1.6.1",
            "golang:1.22-alpine3.19",
        ] {
            assert!(ImageName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_with_dockers_message() {
        let sha = "a".repeat(64);
        for (bad, want) in [
            ("busybox:", "invalid reference format"),
            ("UPPER/Case", "invalid reference format: repository name (Case) must be lowercase"),
            ("Alpine", "invalid reference format: repository name (library/Alpine) must be lowercase"),
            ("", "invalid reference format"),
            ("a b", "invalid reference format"),
            ("alpine:-x", "invalid reference format"),
            ("a_/b", "invalid reference format"),
            ("alpine@sha256:abc", "invalid reference format"),
            (&format!("alpine@sha256:{}", "a".repeat(40)), "invalid checksum digest length"),
            (&format!("alpine@md5:{}", "a".repeat(32)), "unsupported digest algorithm"),
            (&sha, "cannot specify 64-byte hexadecimal strings"),
        ] {
            let e = ImageName::parse(bad).err().unwrap_or_default();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn names_are_normalized_as_docker_does() {
        let sha = format!("sha256:{}", "a".repeat(64));
        let parts = |r: &str| {
            let n = ImageName::parse(r).unwrap();
            (n.registry, n.repository, n.tag, n.digest)
        };
        let owned = |r: &str, p: &str, t: Option<&str>, d: Option<&str>| {
            (r.to_string(), p.to_string(), t.map(str::to_string), d.map(str::to_string))
        };
        assert_eq!(parts("busybox"), owned("docker.io", "library/busybox", None, None));
        assert_eq!(parts("index.docker.io/x:1"), owned("docker.io", "library/x", Some("1"), None));
        assert_eq!(parts("team/app:2"), owned("docker.io", "team/app", Some("2"), None));
        assert_eq!(parts("localhost:5000/a/b:c"), owned("localhost:5000", "a/b", Some("c"), None));
        assert_eq!(parts("test.com:5000"), owned("docker.io", "library/test.com", Some("5000"), None));
        assert_eq!(parts("[::1]:5000/app"), owned("[::1]:5000", "app", None, None));
        assert_eq!(parts(&format!("ghcr.io/o/r:v1@{sha}")), owned("ghcr.io", "o/r", Some("v1"), Some(&sha)));
        assert_eq!(parts(&format!("r.io/o@{sha}")), owned("r.io", "o", None, Some(&sha)));
    }
}
