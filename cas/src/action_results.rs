use async_trait::async_trait;
use memobuild_proto::reapi::ActionResult;
use memobuild_proto::{Digest, Result};

/// Where action results are looked up and recorded: the store-backed
/// [`crate::ActionCache`] on the CAS role, or a [`crate::GrpcActionCache`]
/// that forwards to it from another role.
#[async_trait]
pub trait ActionResults: Send + Sync + 'static {
    /// The cached result of `action`, if there is a complete one.
    async fn get(&self, instance_name: &str, action: &Digest) -> Result<Option<ActionResult>>;

    /// Records `result` as the result of `action`.
    async fn update(&self, instance_name: &str, action: &Digest, result: &ActionResult) -> Result<()>;
}
