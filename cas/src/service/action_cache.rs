use memobuild_auth::{check_request, Capability};
use memobuild_proto::reapi::action_cache_server::ActionCache;
use memobuild_proto::reapi::{ActionResult, GetActionResultRequest, UpdateActionResultRequest};
use memobuild_proto::{Digest, DigestFunction, Error, Result};
use tonic::{Request, Response, Status};

use super::CasState;
use crate::action_cache::output_digests;
use crate::{CacheKind, LOOKUP_COUNTED_BY_CALLER};

/// The most output bytes inlined into one GetActionResult response.
const MAX_INLINE_BYTES: u64 = 1 << 20;

/// ActionCache: GetActionResult and UpdateActionResult.
pub struct ActionCacheService {
    state: CasState,
}

impl ActionCacheService {
    pub fn new(state: CasState) -> Self {
        ActionCacheService { state }
    }

    /// Looks the action up; `count` unless the caller counted the lookup
    /// already ([`LOOKUP_COUNTED_BY_CALLER`]).
    pub async fn get_action_result(&self, req: GetActionResultRequest, count: bool) -> Result<ActionResult> {
        let function = DigestFunction::from_proto(req.digest_function)?;
        let action = Digest::from_proto_field(function, req.action_digest.as_ref(), "action_digest")?;
        let found = self.state.action_cache.get(&req.instance_name, &action).await?;
        if count {
            self.state.metrics.lookups.record(CacheKind::ActionCache, found.is_some());
        }
        let mut result = found.ok_or_else(|| Error::not_found(format!("no cached result for action {action}")))?;
        self.inline_outputs(&mut result, &req, function).await?;
        Ok(result)
    }

    /// Fills in the contents the client asked to have inlined, within budget.
    async fn inline_outputs(
        &self,
        result: &mut ActionResult,
        req: &GetActionResultRequest,
        function: DigestFunction,
    ) -> Result<()> {
        let mut budget = MAX_INLINE_BYTES;
        let cas = &self.state.cas;
        let mut fetch = async |digest: &Option<memobuild_proto::reapi::Digest>| -> Result<Option<bytes::Bytes>> {
            let Some(digest) = digest else { return Ok(None) };
            let digest = Digest::from_proto(function, digest)?;
            if digest.size() > budget {
                return Ok(None);
            }
            budget -= digest.size();
            Ok(Some(cas.get_bytes(&digest).await?))
        };
        if req.inline_stdout {
            if let Some(data) = fetch(&result.stdout_digest).await? {
                result.stdout_raw = data.to_vec();
            }
        }
        if req.inline_stderr {
            if let Some(data) = fetch(&result.stderr_digest).await? {
                result.stderr_raw = data.to_vec();
            }
        }
        for file in &mut result.output_files {
            if req.inline_output_files.contains(&file.path) {
                if let Some(data) = fetch(&file.digest).await? {
                    file.contents = data.to_vec();
                }
            }
        }
        Ok(())
    }

    pub async fn update_action_result(&self, req: UpdateActionResultRequest) -> Result<ActionResult> {
        let function = DigestFunction::from_proto(req.digest_function)?;
        let action = Digest::from_proto_field(function, req.action_digest.as_ref(), "action_digest")?;
        let result = req
            .action_result
            .ok_or_else(|| Error::invalid_argument(format!("UpdateActionResult for {action} has no action_result")))?;
        // Reject malformed digests now rather than serve them later.
        output_digests(&result, &[], &action)?;
        self.state.action_cache.update(&req.instance_name, &action, &result).await?;
        Ok(result)
    }
}

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(&self, req: Request<GetActionResultRequest>) -> Result<Response<ActionResult>, Status> {
        check_request(&req, Capability::Read, &req.get_ref().instance_name)?;
        let count = !req.metadata().contains_key(LOOKUP_COUNTED_BY_CALLER);
        Ok(Response::new(ActionCacheService::get_action_result(self, req.into_inner(), count).await?))
    }

    async fn update_action_result(
        &self,
        req: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        // Workers hold ac-write too: with auth on, only they and ac-write principals write results.
        check_request(&req, Capability::AcWrite, &req.get_ref().instance_name)?;
        Ok(Response::new(ActionCacheService::update_action_result(self, req.into_inner()).await?))
    }
}
