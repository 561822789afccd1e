//! Checking the images a FROM or `--from` names.

use memobuild_proto::ImageName;

/// Checks an image a FROM or `--from` names: an OCI layout on this
/// machine (`oci-layout://PATH[:TAG]`, which the engine reads, so no
/// registry grammar applies to it) or a registry reference.
pub fn check_image_source(source: &str) -> Result<(), String> {
    match source.strip_prefix("oci-layout://") {
        Some("") => Err(format!("invalid image source {source:?}: oci-layout:// needs a path")),
        Some(_) => Ok(()),
        None => check_image_reference(source),
    }
}

/// Checks `reference`; the error is what Docker says.
pub fn check_image_reference(reference: &str) -> Result<(), String> {
    ImageName::parse(reference).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_layouts_are_paths_not_references() {
        assert_eq!(check_image_source("oci-layout:///tmp/My Layout:busybox"), Ok(()));
        assert_eq!(check_image_source("busybox"), Ok(()));
        assert!(check_image_source("oci-layout://").is_err_and(|e| e.contains("needs a path")));
        assert!(check_image_source("UPPER/Case").is_err_and(|e| e.contains("must be lowercase")));
    }
}
