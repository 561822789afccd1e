//! ByteStream resource names, as the REAPI defines them:
//!
//! ```text
//! read:  {instance}/blobs/{digest_function/}{hash}/{size}{/metadata}
//!        {instance}/compressed-blobs/{compressor}/{digest_function/}{hash}/{size}{/metadata}
//! write: {instance}/uploads/{uuid}/blobs/{digest_function/}{hash}/{size}{/metadata}
//!        {instance}/uploads/{uuid}/compressed-blobs/{compressor}/{digest_function/}{hash}/{size}{/metadata}
//! ```
//!
//! `digest_function` is left out for SHA-256 and required for BLAKE3. The
//! instance name may contain slashes but no reserved segment.

use std::fmt;

use crate::{reapi, Digest, DigestFunction, Error, Result};

/// How a blob's bytes travel over ByteStream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compressor {
    Identity,
    Zstd,
}

impl Compressor {
    pub fn from_proto(value: i32) -> Result<Self> {
        use reapi::compressor::Value;
        match Value::try_from(value) {
            Ok(Value::Identity) => Ok(Compressor::Identity),
            Ok(Value::Zstd) => Ok(Compressor::Zstd),
            _ => Err(Error::invalid_argument(format!(
                "unsupported compressor {value}: this server speaks identity and zstd"
            ))),
        }
    }

    pub fn to_proto(self) -> i32 {
        use reapi::compressor::Value;
        match self {
            Compressor::Identity => Value::Identity as i32,
            Compressor::Zstd => Value::Zstd as i32,
        }
    }

    fn from_segment(s: &str) -> Result<Self> {
        match s {
            "zstd" => Ok(Compressor::Zstd),
            "identity" => Ok(Compressor::Identity),
            _ => Err(Error::invalid_argument(format!("unsupported compressor {s:?}: this server speaks zstd"))),
        }
    }
}

const RESERVED: [&str; 7] =
    ["blobs", "compressed-blobs", "uploads", "actions", "actionResults", "operations", "capabilities"];

/// A parsed ByteStream resource name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceName {
    pub instance_name: String,
    /// Set for write resource names only.
    pub upload_id: Option<String>,
    pub compressor: Compressor,
    pub digest: Digest,
}

impl ResourceName {
    pub fn read(instance_name: &str, digest: Digest, compressor: Compressor) -> Self {
        ResourceName { instance_name: instance_name.to_string(), upload_id: None, compressor, digest }
    }

    pub fn write(instance_name: &str, upload_id: &str, digest: Digest, compressor: Compressor) -> Self {
        ResourceName { upload_id: Some(upload_id.to_string()), ..Self::read(instance_name, digest, compressor) }
    }

    /// Parses the resource name of a `ByteStream.Read`.
    pub fn parse_read(name: &str) -> Result<Self> {
        Self::parse(name, false).map_err(|e| e.context(format!("read resource name {name:?}")))
    }

    /// Parses the resource name of a `ByteStream.Write` or `QueryWriteStatus`.
    pub fn parse_write(name: &str) -> Result<Self> {
        Self::parse(name, true).map_err(|e| e.context(format!("write resource name {name:?}")))
    }

    fn parse(name: &str, upload: bool) -> Result<Self> {
        let segments: Vec<&str> = name.split('/').collect();
        let anchor = if upload { "uploads" } else { "blobs" };
        let start = segments
            .iter()
            .position(|s| *s == anchor || (!upload && *s == "compressed-blobs"))
            .ok_or_else(|| Error::invalid_argument(format!("no {anchor:?} segment")))?;
        let instance_name = segments[..start].join("/");
        if segments[..start].iter().any(|s| s.is_empty() || RESERVED.contains(s)) {
            return Err(Error::invalid_argument(format!("invalid instance name {instance_name:?}")));
        }
        let mut rest = segments[start..].iter().copied();
        let upload_id = if upload {
            rest.next();
            let id =
                rest.next().filter(|id| !id.is_empty()).ok_or_else(|| Error::invalid_argument("missing upload id"))?;
            Some(id.to_string())
        } else {
            None
        };
        let compressor = match rest.next() {
            Some("blobs") => Compressor::Identity,
            Some("compressed-blobs") => {
                let c = rest.next().ok_or_else(|| Error::invalid_argument("missing compressor"))?;
                Compressor::from_segment(c)?
            }
            other => {
                return Err(Error::invalid_argument(format!(
                    "expected \"blobs\" or \"compressed-blobs\", found {other:?}"
                )))
            }
        };
        let first = rest.next().ok_or_else(|| Error::invalid_argument("missing hash"))?;
        let (function, hash) = if first.len() == 64 {
            (DigestFunction::Sha256, first)
        } else {
            let function: DigestFunction = first.parse()?;
            if function.is_legacy() {
                return Err(Error::invalid_argument(format!(
                    "the {function} digest function must be left out of resource names"
                )));
            }
            let hash = rest.next().ok_or_else(|| Error::invalid_argument("missing hash"))?;
            (function, hash)
        };
        let size = rest.next().ok_or_else(|| Error::invalid_argument("missing size"))?;
        let size: i64 = size.parse().map_err(|_| Error::invalid_argument(format!("size {size:?} is not a number")))?;
        let digest = Digest::parse(function, hash, size)?;
        Ok(ResourceName { instance_name, upload_id, compressor, digest })
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.instance_name.is_empty() {
            write!(f, "{}/", self.instance_name)?;
        }
        if let Some(id) = &self.upload_id {
            write!(f, "uploads/{id}/")?;
        }
        match self.compressor {
            Compressor::Identity => write!(f, "blobs/{}", self.digest),
            Compressor::Zstd => write!(f, "compressed-blobs/zstd/{}", self.digest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn digest(f: DigestFunction) -> Digest {
        Digest::of(f, b"hello")
    }

    #[test]
    fn parses_every_form() {
        let s = digest(DigestFunction::Sha256);
        let b = digest(DigestFunction::Blake3);
        let r = ResourceName::parse_read(&format!("blobs/{}/5", s.hex())).unwrap();
        assert_eq!(r, ResourceName::read("", s, Compressor::Identity));
        let r = ResourceName::parse_read(&format!("a/b/blobs/blake3/{}/5/extra", b.hex())).unwrap();
        assert_eq!(r, ResourceName::read("a/b", b, Compressor::Identity));
        let r = ResourceName::parse_read(&format!("ci/compressed-blobs/zstd/blake3/{}/5", b.hex())).unwrap();
        assert_eq!(r, ResourceName::read("ci", b, Compressor::Zstd));
        let r = ResourceName::parse_write(&format!("uploads/u-1/blobs/{}/5", s.hex())).unwrap();
        assert_eq!(r, ResourceName::write("", "u-1", s, Compressor::Identity));
        let r =
            ResourceName::parse_write(&format!("x/uploads/u/compressed-blobs/zstd/{}/5/meta/data", s.hex())).unwrap();
        assert_eq!(r, ResourceName::write("x", "u", s, Compressor::Zstd));
    }

    #[test]
    fn rejects_malformed_names_with_a_reason() {
        let h = digest(DigestFunction::Sha256).hex();
        let cases = [
            (String::new(), "no \"blobs\" segment"),
            (format!("blobs/{h}"), "missing size"),
            (format!("blobs/{h}/x"), "not a number"),
            (format!("blobs/{h}/-3"), "negative size"),
            (format!("blobs/md5/{h}/5"), "unsupported digest function"),
            (format!("blobs/sha256/{h}/5"), "must be left out"),
            (format!("compressed-blobs/lz4/{h}/5"), "unsupported compressor"),
            (format!("/blobs/{h}/5"), "invalid instance name"),
            (format!("uploads/blobs/{h}/5"), "invalid instance name"),
            (format!("blobs/{}/5", &h[..10]), "unsupported digest function"),
        ];
        for (name, reason) in cases {
            let e = ResourceName::parse_read(&name).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{name}");
            assert!(e.message().contains(reason), "{name}: {e}");
        }
        let e = ResourceName::parse_write(&format!("uploads//blobs/{h}/5")).unwrap_err();
        assert!(e.message().contains("missing upload id"), "{e}");
    }

    fn instance() -> impl Strategy<Value = String> {
        proptest::collection::vec("[a-z0-9_.-]{1,8}", 0..3)
            .prop_filter("reserved", |v| v.iter().all(|s| !RESERVED.contains(&s.as_str())))
            .prop_map(|v| v.join("/"))
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(
            inst in instance(),
            id in "[a-f0-9-]{1,36}",
            hash in proptest::array::uniform32(any::<u8>()),
            size in 0u64..1 << 40,
            blake in any::<bool>(),
            zstd in any::<bool>(),
        ) {
            let f = if blake { DigestFunction::Blake3 } else { DigestFunction::Sha256 };
            let c = if zstd { Compressor::Zstd } else { Compressor::Identity };
            let d = Digest::new(f, hash, size);
            let read = ResourceName::read(&inst, d, c);
            prop_assert_eq!(ResourceName::parse_read(&read.to_string()).ok(), Some(read));
            let write = ResourceName::write(&inst, &id, d, c);
            prop_assert_eq!(ResourceName::parse_write(&write.to_string()).ok(), Some(write));
        }

        #[test]
        fn parsing_never_panics(name in "[a-z0-9/-]{0,120}") {
            let _ = ResourceName::parse_read(&name);
            let _ = ResourceName::parse_write(&name);
        }
    }
}
