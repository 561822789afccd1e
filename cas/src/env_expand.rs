use memobuild_proto::{Error, Result};

/// Replaces `${NAME}` in a config value with the environment variable
/// `NAME`, and `${NAME:-default}` with its value or `default` when it is
/// unset or empty. A `${NAME}` that is unset is an error naming it, so a
/// cluster never starts against a half-filled config.
pub fn expand_env(value: &str) -> Result<String> {
    expand_with(value, |name| std::env::var(name).ok())
}

fn expand_with(value: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| Error::invalid_argument(format!("config value {value:?}: unclosed \"${{\"")))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::invalid_argument(format!("config value {value:?}: bad variable name {name:?}")));
        }
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(found), _) => out.push_str(&found),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(Error::invalid_argument(format!(
                    "config value {value:?} needs the environment variable {name}, which is not set"
                )))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "S3_ENDPOINT" => Some("http://127.0.0.1:9000".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_and_defaults() {
        assert_eq!(expand_with("plain", lookup).unwrap(), "plain");
        assert_eq!(expand_with("${S3_ENDPOINT}/x", lookup).unwrap(), "http://127.0.0.1:9000/x");
        assert_eq!(expand_with("${UNSET:-us-east-1}", lookup).unwrap(), "us-east-1");
        assert_eq!(expand_with("${EMPTY:-d}", lookup).unwrap(), "d");
        assert_eq!(expand_with("${UNSET:-}", lookup).unwrap(), "");
    }

    #[test]
    fn unset_variables_and_bad_syntax_are_named() {
        let e = expand_with("${DATABASE_URL}", lookup).unwrap_err();
        assert!(e.message().contains("DATABASE_URL"), "{e}");
        assert!(expand_with("${OPEN", lookup).unwrap_err().message().contains("unclosed"));
        assert!(expand_with("${a b}", lookup).is_err());
    }
}
