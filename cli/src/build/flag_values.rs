//! Values of the `docker buildx build` flags that need more than NAME=VALUE:
//! `--annotation`, the attestation flags and the cache
//! import/export flags memobuild answers with an explanation.

/// `--annotation [manifest:]KEY=VALUE`: an annotation of the image manifest.
pub fn parse_annotation(text: &str) -> Result<(String, String), String> {
    let (key, value) =
        text.split_once('=').ok_or_else(|| format!("--annotation {text:?}: expected [manifest:]KEY=VALUE"))?;
    let key = match key.split_once(':') {
        None => key,
        Some(("manifest", key)) => key,
        Some((kind, _)) => {
            return Err(format!(
                "--annotation {text:?}: only manifest annotations are supported (KEY=VALUE or manifest:KEY=VALUE), not {kind:?}"
            ))
        }
    };
    if key.is_empty() {
        return Err(format!("--annotation {text:?}: the key is empty"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// `--provenance`, `--sbom`, `--attest`: only switching attestations off
/// (`false`, `0`, `disabled`, or `...,disabled=true`) is accepted.
pub fn attestation_off(text: &str) -> Result<String, String> {
    let off = |v: &str| matches!(v.trim().to_ascii_lowercase().as_str(), "false" | "0" | "disabled");
    let disabled_field = text.split(',').any(|field| {
        field.split_once('=').is_some_and(|(k, v)| k.trim() == "disabled" && matches!(v.trim(), "true" | "1"))
    });
    if off(text) || disabled_field {
        return Ok(text.to_string());
    }
    Err("attestations (provenance, SBOM) are not supported yet: leave the flag out or set it to false".to_string())
}

/// `--cache-from`, `--cache-to`: always an error that says why.
pub fn reject_cache_transfer(_: &str) -> Result<String, String> {
    Err("memobuild keeps its cache in --state-dir and does not import or export it; \
         sharing one cache across machines is what `memobuild remote build` with a cluster is for"
        .to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn annotations_plain_and_manifest() {
        assert_eq!(parse_annotation("org.example.a=1").unwrap(), ("org.example.a".into(), "1".into()));
        assert_eq!(parse_annotation("manifest:b=x=y").unwrap(), ("b".into(), "x=y".into()));
        assert!(parse_annotation("index:c=1").unwrap_err().contains("only manifest annotations"));
        assert!(parse_annotation("manifest-descriptor:c=1").unwrap_err().contains("\"manifest-descriptor\""));
        assert!(parse_annotation("novalue").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_annotation("=v").unwrap_err().contains("key is empty"));
    }

    #[test]
    fn attestations_only_off() {
        for off in ["false", "0", "disabled", "FALSE", "type=provenance,disabled=true", "type=sbom,disabled=1"] {
            assert!(attestation_off(off).is_ok(), "{off}");
        }
        for on in ["true", "1", "mode=max", "type=sbom", "type=provenance,disabled=false"] {
            assert!(attestation_off(on).unwrap_err().contains("not supported yet"), "{on}");
        }
    }

    #[test]
    fn cache_transfer_says_where_the_cache_is() {
        assert!(reject_cache_transfer("type=gha").unwrap_err().contains("--state-dir"));
    }
}
