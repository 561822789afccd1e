use std::sync::Arc;

use async_trait::async_trait;
use memobuild_cas::BlobStore;
use memobuild_proto::{Digest, DigestFunction};

use super::HealthCheck;

/// A blob store answers FindMissingBlobs (through every layer of it: its
/// metadata, index and backend, or the CAS role it is a client of).
pub struct StoreCheck {
    pub name: String,
    pub store: Arc<dyn BlobStore>,
}

#[async_trait]
impl HealthCheck for StoreCheck {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn check(&self) -> Result<String, String> {
        let probe = Digest::of(DigestFunction::Sha256, b"memobuild health check");
        self.store.find_missing(&[probe]).await.map_err(|e| e.message().to_string())?;
        Ok("answers FindMissingBlobs".into())
    }
}
