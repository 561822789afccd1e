use async_trait::async_trait;
use memobuild_proto::reapi::action_cache_client::ActionCacheClient;
use memobuild_proto::reapi::{ActionResult, GetActionResultRequest, UpdateActionResultRequest};
use memobuild_proto::{Digest, Error, Result};

use crate::action_results::ActionResults;
use crate::cache_lookups::LOOKUP_COUNTED_BY_CALLER;
use crate::grpc_channel::GrpcChannel;

/// [`ActionResults`] on a remote REAPI ActionCache, which keeps its own
/// rule of serving only complete results. Its lookups are counted by the
/// process that makes them, not again by the remote cache.
pub struct GrpcActionCache {
    client: ActionCacheClient<GrpcChannel>,
}

impl GrpcActionCache {
    pub fn new(channel: impl Into<GrpcChannel>) -> Self {
        GrpcActionCache { client: ActionCacheClient::new(channel.into()) }
    }
}

#[async_trait]
impl ActionResults for GrpcActionCache {
    async fn get(&self, instance_name: &str, action: &Digest) -> Result<Option<ActionResult>> {
        let request = GetActionResultRequest {
            instance_name: instance_name.to_string(),
            action_digest: Some(action.to_proto()),
            digest_function: action.function().to_proto(),
            ..Default::default()
        };
        let mut request = tonic::Request::new(request);
        // This process counted the lookup (as `ac`, `execute` or `step`).
        request.metadata_mut().insert(LOOKUP_COUNTED_BY_CALLER, tonic::metadata::MetadataValue::from_static("1"));
        match self.client.clone().get_action_result(request).await {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::from(status).context(format!("looking up action {action} remotely"))),
        }
    }

    async fn update(&self, instance_name: &str, action: &Digest, result: &ActionResult) -> Result<()> {
        let request = UpdateActionResultRequest {
            instance_name: instance_name.to_string(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result.clone()),
            digest_function: action.function().to_proto(),
            ..Default::default()
        };
        self.client
            .clone()
            .update_action_result(request)
            .await
            .map(drop)
            .map_err(|status| Error::from(status).context(format!("recording the result of action {action} remotely")))
    }
}
