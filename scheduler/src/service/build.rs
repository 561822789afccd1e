//! `memobuild.build.v1.BuildService`: decode, call the [`BuildManager`],
//! stream its events.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use memobuild_auth::{caller, check_request, Capability, Principal};
use memobuild_proto::build::build_service_server::BuildService;
use memobuild_proto::build::{
    BuildEvent, BuildRequest, CancelRequest, CancelResponse, ClusterStatusRequest, ClusterStatusResponse,
    ListBuildsRequest, ListBuildsResponse, WatchRequest,
};
use memobuild_proto::{Error, Result};
use tonic::{Request, Response, Status};

use crate::build_manager::{BuildManager, RunningBuild};

/// Builds listed at most per call.
const MAX_LISTED: usize = 1000;

pub struct BuildServiceImpl {
    builds: Arc<BuildManager>,
}

impl BuildServiceImpl {
    pub fn new(builds: Arc<BuildManager>) -> Self {
        BuildServiceImpl { builds }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<BuildEvent, Status>> + Send>>;

/// Events sent ahead of a slow client.
const STREAM_BUFFER: usize = 256;

/// Every event of `build` from the start, then new ones as they come, until
/// the one that ends the build (or the client goes away).
fn follow(build: Arc<RunningBuild>, live: bool) -> EventStream {
    let (sender, receiver) = tokio::sync::mpsc::channel(STREAM_BUFFER);
    let mut added = build.subscribe();
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let (events, ended) = build.events_from(seen);
            seen += events.len();
            for event in events {
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if ended || !live || added.changed().await.is_err() {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

/// May `principal` watch or cancel a build of `instance`? PERMISSION_DENIED
/// without the build capability; NOT_FOUND, as for an unknown build, in an
/// instance it does not see.
fn check_build(principal: Option<&Principal>, instance: &str, build_id: &str) -> Result<()> {
    let Some(principal) = principal else { return Ok(()) };
    principal.require(Capability::Build)?;
    match principal.sees(instance) {
        true => Ok(()),
        false => Err(Error::not_found(format!("build {build_id} not found (unknown, or finished and expired)"))),
    }
}

#[tonic::async_trait]
impl BuildService for BuildServiceImpl {
    type BuildStream = EventStream;
    type WatchStream = EventStream;

    #[tracing::instrument(skip_all, fields(instance = %request.get_ref().instance_name))]
    async fn build(&self, request: Request<BuildRequest>) -> Result<Response<EventStream>, Status> {
        check_request(&request, Capability::Build, &request.get_ref().instance_name)?;
        let build = self.builds.build(request.into_inner()).await?;
        Ok(Response::new(follow(build, true)))
    }

    #[tracing::instrument(skip_all, fields(build = %request.get_ref().build_id))]
    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<EventStream>, Status> {
        let principal = caller(&request);
        let request = request.into_inner();
        check_build(principal.as_deref(), &request.instance_name, &request.build_id)?;
        let build = self.builds.get(&request.instance_name, &request.build_id).await?;
        Ok(Response::new(follow(build, !request.no_follow)))
    }

    #[tracing::instrument(skip_all, fields(build = %request.get_ref().build_id))]
    async fn cancel(&self, request: Request<CancelRequest>) -> Result<Response<CancelResponse>, Status> {
        let principal = caller(&request);
        let request = request.into_inner();
        check_build(principal.as_deref(), &request.instance_name, &request.build_id)?;
        self.builds.cancel(&request.instance_name, &request.build_id).await?;
        Ok(Response::new(CancelResponse {}))
    }

    async fn list_builds(&self, request: Request<ListBuildsRequest>) -> Result<Response<ListBuildsResponse>, Status> {
        check_request(&request, Capability::Build, &request.get_ref().instance_name)?;
        let request = request.into_inner();
        let limit = match request.limit as usize {
            0 => 100,
            n => n.min(MAX_LISTED),
        };
        Ok(Response::new(ListBuildsResponse { builds: self.builds.list(&request.instance_name, limit).await? }))
    }

    async fn cluster_status(
        &self,
        request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        check_request(&request, Capability::Build, &request.get_ref().instance_name)?;
        Ok(Response::new(self.builds.cluster_status()))
    }
}
