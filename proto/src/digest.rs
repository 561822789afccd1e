//! Content digests: SHA-256 and BLAKE3, both 32 bytes.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

use crate::reapi;
use crate::{Error, Result};

/// The digest functions MemoBuild speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestFunction {
    Sha256,
    Blake3,
}

impl DigestFunction {
    pub const ALL: [DigestFunction; 2] = [DigestFunction::Sha256, DigestFunction::Blake3];

    /// Reads the REAPI `digest_function` field. `UNKNOWN` (unset) means
    /// SHA-256: the spec has servers infer it from the hash length, and
    /// SHA-256 is the only legacy function of that length we serve.
    pub fn from_proto(value: i32) -> Result<Self> {
        use reapi::digest_function::Value;
        match Value::try_from(value) {
            Ok(Value::Unknown | Value::Sha256) => Ok(DigestFunction::Sha256),
            Ok(Value::Blake3) => Ok(DigestFunction::Blake3),
            Ok(other) => Err(Error::invalid_argument(format!(
                "unsupported digest function {}: this server speaks sha256 and blake3",
                other.as_str_name().to_ascii_lowercase()
            ))),
            Err(_) => Err(Error::invalid_argument(format!("unknown digest function value {value}"))),
        }
    }

    pub fn to_proto(self) -> i32 {
        use reapi::digest_function::Value;
        match self {
            DigestFunction::Sha256 => Value::Sha256 as i32,
            DigestFunction::Blake3 => Value::Blake3 as i32,
        }
    }

    /// The lowercase name used in resource names (`sha256`, `blake3`).
    pub fn name(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "sha256",
            DigestFunction::Blake3 => "blake3",
        }
    }

    /// Whether the REAPI requires this function's name to be left out of
    /// resource names (the functions that predate the `digest_function` field).
    pub fn is_legacy(self) -> bool {
        self == DigestFunction::Sha256
    }

    pub fn hasher(self) -> DigestHasher {
        DigestHasher::new(self)
    }
}

impl FromStr for DigestFunction {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sha256" => Ok(DigestFunction::Sha256),
            "blake3" => Ok(DigestFunction::Blake3),
            _ => Err(Error::invalid_argument(format!(
                "unsupported digest function {s:?}: this server speaks sha256 and blake3"
            ))),
        }
    }
}

impl fmt::Display for DigestFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A blob's identity: digest function, 32-byte hash and size in bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    function: DigestFunction,
    hash: [u8; 32],
    size: u64,
}

impl Digest {
    pub fn new(function: DigestFunction, hash: [u8; 32], size: u64) -> Self {
        Digest { function, hash, size }
    }

    /// The digest of `data`.
    pub fn of(function: DigestFunction, data: &[u8]) -> Self {
        let mut hasher = function.hasher();
        hasher.update(data);
        hasher.finish()
    }

    /// The digest of the empty blob, which every CAS holds implicitly.
    pub fn empty(function: DigestFunction) -> Self {
        Self::of(function, b"")
    }

    /// Parses a lowercase hex hash and a size, as they appear in protos and
    /// resource names.
    pub fn parse(function: DigestFunction, hash: &str, size: i64) -> Result<Self> {
        let size =
            u64::try_from(size).map_err(|_| Error::invalid_argument(format!("digest {hash}/{size}: negative size")))?;
        match decode_hash(hash.as_bytes()) {
            Some(bytes) => Ok(Digest::new(function, bytes, size)),
            None => Err(Error::invalid_argument(format!(
                "digest {hash}/{size}: a {function} hash is 64 lowercase hex characters"
            ))),
        }
    }

    pub fn from_proto(function: DigestFunction, digest: &reapi::Digest) -> Result<Self> {
        Self::parse(function, &digest.hash, digest.size_bytes)
    }

    /// Like [`Digest::from_proto`] for a field that may be unset.
    pub fn from_proto_field(function: DigestFunction, digest: Option<&reapi::Digest>, field: &str) -> Result<Self> {
        match digest {
            Some(d) => Self::from_proto(function, d).map_err(|e| e.context(field)),
            None => Err(Error::invalid_argument(format!("{field} is missing"))),
        }
    }

    pub fn to_proto(&self) -> reapi::Digest {
        reapi::Digest { hash: self.hex(), size_bytes: self.size as i64 }
    }

    pub fn function(&self) -> DigestFunction {
        self.function
    }

    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    pub fn hex(&self) -> String {
        hex::encode(self.hash)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// `blobs/{digest_function/}{hash}/{size}`: how REAPI names a blob in
    /// resource names and precondition failures.
    pub fn subject(&self) -> String {
        format!("blobs/{self}")
    }
}

/// Lowercase hex digit values; 0xff marks anything else.
const HEX_VALUES: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Decodes 64 lowercase hex digits; `None` for anything else.
fn decode_hash(hex: &[u8]) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
        let (high, low) = (HEX_VALUES[pair[0] as usize], HEX_VALUES[pair[1] as usize]);
        if (high | low) == 0xff {
            return None;
        }
        *byte = high << 4 | low;
    }
    Some(bytes)
}

/// `{digest_function/}{hash}/{size}`, with the function left out for SHA-256.
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.function.is_legacy() {
            write!(f, "{}/", self.function)?;
        }
        write!(f, "{}/{}", hex::encode(self.hash), self.size)
    }
}

/// Parses the [`fmt::Display`] form, `{digest_function/}{hash}/{size}`.
impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut parts = s.rsplitn(3, '/');
        let (Some(size), Some(hash)) = (parts.next(), parts.next()) else {
            return Err(Error::invalid_argument(format!("digest {s:?}: expected HASH/SIZE")));
        };
        let function = match parts.next() {
            Some(name) => name.parse()?,
            None => DigestFunction::Sha256,
        };
        let size: i64 = size.parse().map_err(|_| Error::invalid_argument(format!("digest {s:?}: bad size")))?;
        Digest::parse(function, hash, size)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Incremental hashing that yields a [`Digest`].
pub struct DigestHasher {
    state: HasherState,
    size: u64,
}

enum HasherState {
    Sha256(sha2::Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl DigestHasher {
    pub fn new(function: DigestFunction) -> Self {
        let state = match function {
            DigestFunction::Sha256 => HasherState::Sha256(sha2::Sha256::new()),
            DigestFunction::Blake3 => HasherState::Blake3(Box::new(blake3::Hasher::new())),
        };
        DigestHasher { state, size: 0 }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.size += data.len() as u64;
        match &mut self.state {
            HasherState::Sha256(h) => h.update(data),
            HasherState::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// Bytes hashed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn finish(self) -> Digest {
        let (function, hash) = match self.state {
            HasherState::Sha256(h) => (DigestFunction::Sha256, h.finalize().into()),
            HasherState::Blake3(h) => (DigestFunction::Blake3, *h.finalize().as_bytes()),
        };
        Digest::new(function, hash, self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn display_form_round_trips() {
        for function in DigestFunction::ALL {
            let digest = Digest::of(function, b"memobuild");
            assert_eq!(digest.to_string().parse::<Digest>().ok(), Some(digest));
        }
        assert!("nothex/3".parse::<Digest>().is_err());
        assert!("md5/00/3".parse::<Digest>().is_err());
    }

    #[test]
    fn known_empty_digests() {
        assert_eq!(
            Digest::empty(DigestFunction::Sha256).hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            Digest::empty(DigestFunction::Blake3).hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn display_omits_sha256_name_only() {
        let s = Digest::of(DigestFunction::Sha256, b"x");
        let b = Digest::of(DigestFunction::Blake3, b"x");
        assert_eq!(s.to_string(), format!("{}/1", s.hex()));
        assert_eq!(b.to_string(), format!("blake3/{}/1", b.hex()));
    }

    #[test]
    fn rejects_bad_hashes_and_sizes() {
        let good = "a".repeat(64);
        assert!(Digest::parse(DigestFunction::Sha256, &good, 1).is_ok());
        for bad in ["", "abc", &"A".repeat(64), &"g".repeat(64), &"a".repeat(65)] {
            let e = Digest::parse(DigestFunction::Sha256, bad, 1).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        let e = Digest::parse(DigestFunction::Sha256, &good, -1).unwrap_err();
        assert!(e.message().contains("negative size"));
    }

    #[test]
    fn unsupported_functions_are_named() {
        use reapi::digest_function::Value;
        let e = DigestFunction::from_proto(Value::Md5 as i32).unwrap_err();
        assert!(e.message().contains("md5"), "{e}");
        assert!(DigestFunction::from_proto(999).is_err());
        assert_eq!(DigestFunction::from_proto(0).ok(), Some(DigestFunction::Sha256));
    }

    proptest! {
        #[test]
        fn proto_round_trip(hash in proptest::array::uniform32(any::<u8>()), size in 0u64..i64::MAX as u64, blake in any::<bool>()) {
            let f = if blake { DigestFunction::Blake3 } else { DigestFunction::Sha256 };
            let d = Digest::new(f, hash, size);
            prop_assert_eq!(Digest::from_proto(f, &d.to_proto()).ok(), Some(d));
        }

        #[test]
        fn parse_never_panics(hash in ".{0,80}", size in any::<i64>()) {
            let _ = Digest::parse(DigestFunction::Blake3, &hash, size);
        }

        #[test]
        fn incremental_hash_matches_one_shot(data in proptest::collection::vec(any::<u8>(), 0..4096), split in 0usize..4096) {
            for f in DigestFunction::ALL {
                let split = split.min(data.len());
                let mut h = f.hasher();
                h.update(&data[..split]);
                h.update(&data[split..]);
                prop_assert_eq!(h.finish(), Digest::of(f, &data));
            }
        }
    }
}
