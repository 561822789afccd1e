//! The ByteStream resource-name parser on arbitrary text.

use memobuild_proto::ResourceName;

/// Parses `data` as a read and as a write resource name. Errors are fine;
/// a name that parses must print as a name that parses back to it.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(name) = ResourceName::parse_read(text) {
        assert!(name.upload_id.is_none(), "{text:?}");
        let printed = name.to_string();
        assert_eq!(ResourceName::parse_read(&printed).ok(), Some(name), "{text:?} printed as {printed:?}");
    }
    if let Ok(name) = ResourceName::parse_write(text) {
        assert!(name.upload_id.as_deref().is_some_and(|id| !id.is_empty()), "{text:?}");
        let printed = name.to_string();
        assert_eq!(ResourceName::parse_write(&printed).ok(), Some(name), "{text:?} printed as {printed:?}");
    }
}
