use serde::{Deserialize, Serialize};

/// How to reach an S3-compatible server and how to move blobs to it; the
/// bucket is named beside these (one per shard). Credentials come from the
/// standard AWS chain: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, profiles,
/// web identity, ECS and instance metadata.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct S3Settings {
    /// A custom endpoint (`http://minio:9000`, `${S3_ENDPOINT}`); AWS when unset or empty.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region; from the AWS chain when unset, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// `endpoint/bucket/key` instead of `bucket.endpoint/key`, as most
    /// S3-compatible servers want.
    #[serde(default)]
    pub path_style: bool,
    /// Prepended to every object key.
    #[serde(default)]
    pub key_prefix: String,
    /// Blobs larger than this are sent as a multipart upload.
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold_bytes: u64,
    /// The size of each part of a multipart upload (S3 wants at least 5 MiB).
    #[serde(default = "default_part_bytes")]
    pub part_bytes: u64,
    /// Parts of one upload sent at once.
    #[serde(default = "default_part_concurrency")]
    pub part_concurrency: usize,
    /// HEAD requests of one FindMissingBlobs in flight at once.
    #[serde(default = "default_head_concurrency")]
    pub head_concurrency: usize,
    /// Attempts per request, with exponential backoff and jitter between them.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Create the bucket at start when it does not exist.
    #[serde(default)]
    pub create_bucket: bool,
}

/// S3's smallest part, except the last.
pub const MIN_PART_BYTES: u64 = 5 << 20;

fn default_multipart_threshold() -> u64 {
    16 << 20
}

fn default_part_bytes() -> u64 {
    8 << 20
}

fn default_part_concurrency() -> usize {
    4
}

fn default_head_concurrency() -> usize {
    32
}

fn default_max_attempts() -> u32 {
    5
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            endpoint: None,
            region: None,
            path_style: false,
            key_prefix: String::new(),
            multipart_threshold_bytes: default_multipart_threshold(),
            part_bytes: default_part_bytes(),
            part_concurrency: default_part_concurrency(),
            head_concurrency: default_head_concurrency(),
            max_attempts: default_max_attempts(),
            create_bucket: false,
        }
    }
}
