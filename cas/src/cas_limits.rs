use memobuild_proto::{Digest, Error, Result};
use serde::{Deserialize, Serialize};

/// What one client may ask of the CAS services: every size or count a
/// request names is checked against these before anything is allocated,
/// stored or counted for it.
///
/// ```toml
/// [limits]
/// max_blob_bytes = 68719476736
/// max_batch_blobs = 10000
/// max_uploads = 1000
/// ```
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CasLimits {
    /// The largest blob accepted (uncompressed): larger digests are refused
    /// before a byte is read.
    pub max_blob_bytes: u64,
    /// The most blobs one BatchUpdateBlobs or BatchReadBlobs may name.
    pub max_batch_blobs: usize,
    /// The most ByteStream uploads in progress or waiting to be resumed.
    pub max_uploads: usize,
}

impl Default for CasLimits {
    fn default() -> Self {
        CasLimits { max_blob_bytes: 64 << 30, max_batch_blobs: 10_000, max_uploads: 1_000 }
    }
}

impl CasLimits {
    /// INVALID_ARGUMENT naming the limit when `digest` declares a blob
    /// larger than `max_blob_bytes`.
    pub fn check_blob(&self, digest: &Digest) -> Result<()> {
        if digest.size() > self.max_blob_bytes {
            return Err(Error::invalid_argument(format!(
                "blob {} declares {} bytes, over the max_blob_bytes limit of {}",
                digest.subject(),
                digest.size(),
                self.max_blob_bytes
            )));
        }
        Ok(())
    }

    /// INVALID_ARGUMENT naming the limit when a batch call names more than
    /// `max_batch_blobs` blobs.
    pub fn check_batch_count(&self, call: &str, count: usize) -> Result<()> {
        if count > self.max_batch_blobs {
            return Err(Error::invalid_argument(format!(
                "{call} names {count} blobs, over the max_batch_blobs limit of {}",
                self.max_batch_blobs
            )));
        }
        Ok(())
    }
}

/// The sum of sizes a client claims, or INVALID_ARGUMENT naming `limit`
/// (called `limit_name`) when it exceeds it, or overflows, which exceeds
/// any limit.
pub fn checked_total(sizes: impl IntoIterator<Item = u64>, limit: u64, what: &str, limit_name: &str) -> Result<u64> {
    let mut total = 0u64;
    for size in sizes {
        total = match total.checked_add(size) {
            Some(total) if total <= limit => total,
            _ => {
                return Err(Error::invalid_argument(format!(
                    "{what} add up to more than the {limit}-byte {limit_name}"
                )))
            }
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_that_overflow_are_over_the_limit() {
        assert_eq!(checked_total([1, 2, 3], 6, "sizes", "limit").ok(), Some(6));
        let e = checked_total([u64::MAX, 2], u64::MAX, "the blob sizes", "limit").err();
        assert!(e.is_some_and(|e| e.message().contains("18446744073709551615-byte limit")));
        assert!(checked_total([4, 3], 6, "x", "limit").is_err());
    }
}
