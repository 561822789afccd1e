use memobuild_proto::reapi::capabilities_server::Capabilities;
use memobuild_proto::reapi::{
    compressor, symlink_absolute_path_strategy, ActionCacheUpdateCapabilities, CacheCapabilities,
    ExecutionCapabilities, GetCapabilitiesRequest, ServerCapabilities,
};
use memobuild_proto::semver::SemVer;
use memobuild_proto::DigestFunction;
use tonic::{Request, Response, Status};

/// The largest total of blob bytes in one batch request or response.
pub const MAX_BATCH_TOTAL_BYTES: i64 = 4 << 20;

/// Capabilities: what this endpoint serves. Execution is advertised only
/// where a scheduler is behind the endpoint.
#[derive(Clone, Default)]
pub struct CapabilitiesService {
    execution: Option<ExecutionCapabilities>,
}

impl CapabilitiesService {
    pub fn new(execution: Option<ExecutionCapabilities>) -> Self {
        CapabilitiesService { execution }
    }

    pub fn capabilities(&self) -> ServerCapabilities {
        let version = |minor| SemVer { major: 2, minor, patch: 0, prerelease: String::new() };
        ServerCapabilities {
            cache_capabilities: Some(CacheCapabilities {
                digest_functions: DigestFunction::ALL.iter().map(|f| f.to_proto()).collect(),
                action_cache_update_capabilities: Some(ActionCacheUpdateCapabilities { update_enabled: true }),
                max_batch_total_size_bytes: MAX_BATCH_TOTAL_BYTES,
                symlink_absolute_path_strategy: symlink_absolute_path_strategy::Value::Allowed as i32,
                supported_compressors: vec![compressor::Value::Zstd as i32],
                supported_batch_update_compressors: vec![compressor::Value::Zstd as i32],
                ..Default::default()
            }),
            execution_capabilities: self.execution.clone(),
            deprecated_api_version: None,
            low_api_version: Some(version(0)),
            high_api_version: Some(version(3)),
        }
    }
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        _: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        Ok(Response::new(self.capabilities()))
    }
}
