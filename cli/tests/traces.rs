//! Traces across a cluster of real processes: a plain REAPI Execute (as
//! Bazel sends it) with a W3C `traceparent` and Bazel's RequestMetadata;
//! the scheduler and the worker export spans over OTLP to a receiver this
//! test runs, and the worker's span of the action is in the client's trace.
#![allow(clippy::unwrap_used)]

#[path = "common/process_cluster.rs"]
mod process_cluster;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use memobuild_cas::{BlobStore, GrpcStore};
use memobuild_proto::reapi::execution_client::ExecutionClient;
use memobuild_proto::reapi::{command, Action, Command, Directory, ExecuteRequest, ExecuteResponse, RequestMetadata};
use memobuild_proto::{Digest, DigestFunction};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use parking_lot::Mutex;
use process_cluster::{ClusterOptions, ProcessCluster};
use prost::Message;

/// A span as received: (service, name, trace id, parent span id, attributes).
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    parent: String,
    attributes: Vec<(String, String)>,
}

/// An OTLP/gRPC trace receiver keeping every span.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn text(attributes: &[KeyValue]) -> Vec<(String, String)> {
    let value = |kv: &KeyValue| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    attributes.iter().map(|kv| (kv.key.clone(), value(kv))).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock();
        for resource in request.into_inner().resource_spans {
            let attributes = text(&resource.resource.map(|r| r.attributes).unwrap_or_default());
            let service = attributes.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone());
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone().unwrap_or_default(),
                    name: span.name,
                    trace_id: hex::encode(&span.trace_id),
                    parent: hex::encode(&span.parent_span_id),
                    attributes: text(&span.attributes),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn put<M: Message>(cas: &GrpcStore, message: &M) -> Digest {
    let data = Bytes::from(message.encode_to_vec());
    let digest = Digest::of(DigestFunction::Sha256, &data);
    cas.put_bytes(&digest, data).await.unwrap();
    digest
}

#[test]
fn a_plain_execute_with_a_traceparent_puts_the_workers_span_in_the_clients_trace() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::default();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    let service = TraceServiceServer::new(receiver.clone());
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let otlp = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), collector),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
    ];
    let cluster = ProcessCluster::start(ClusterOptions {
        workers: 1,
        worker_env: otlp.clone(),
        scheduler_env: otlp,
        ..ClusterOptions::default()
    });

    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let client_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let invocation = uuid::Uuid::new_v4().to_string();
    let response: ExecuteResponse = runtime.block_on(async {
        let cas = GrpcStore::connect(&format!("grpc://{}", cluster.cas_address), "").unwrap();
        let command = Command {
            arguments: vec!["/bin/sh".into(), "-c".into(), format!("echo {trace_id} > out")],
            environment_variables: vec![command::EnvironmentVariable {
                name: "PATH".into(),
                value: "/usr/bin:/bin".into(),
            }],
            output_paths: vec!["out".into()],
            ..Default::default()
        };
        let command = put(&cas, &command).await;
        let root = put(&cas, &Directory::default()).await;
        let action = Action {
            command_digest: Some(command.to_proto()),
            input_root_digest: Some(root.to_proto()),
            ..Default::default()
        };
        let action = put(&cas, &action).await;
        let mut request = tonic::Request::new(ExecuteRequest {
            action_digest: Some(action.to_proto()),
            skip_cache_lookup: true,
            ..Default::default()
        });
        let traceparent = format!("00-{trace_id}-{client_span}-01");
        request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
        let metadata =
            RequestMetadata { tool_invocation_id: invocation.clone(), action_id: action.hex(), ..Default::default() };
        request.metadata_mut().insert_bin(
            "build.bazel.remote.execution.v2.requestmetadata-bin",
            tonic::metadata::MetadataValue::from_bytes(&metadata.encode_to_vec()),
        );
        let channel = tonic::transport::Channel::from_shared(cluster.endpoint().replace("grpc://", "http://"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut stream = ExecutionClient::new(channel).execute(request).await.unwrap().into_inner();
        loop {
            let operation = stream.message().await.unwrap().expect("the stream ended before the operation");
            if let Some(memobuild_proto::longrunning::operation::Result::Response(any)) = operation.result {
                break ExecuteResponse::decode(&any.value[..]).unwrap();
            }
        }
    });
    assert_eq!(response.result.as_ref().map(|r| r.exit_code), Some(0), "{response:?}");

    // Spans arrive in batches, a little after they end.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (worker, execute) = loop {
        let spans: Vec<Received> = receiver.spans.lock().iter().filter(|s| s.trace_id == trace_id).cloned().collect();
        let worker = spans.iter().find(|s| s.service == "memobuild-worker" && s.name == "action").cloned();
        let execute = spans.iter().find(|s| s.service == "memobuild-scheduler" && s.name == "execute").cloned();
        if let (Some(worker), Some(execute)) = (worker, execute) {
            break (worker, execute);
        }
        let all = receiver.spans.lock().clone();
        assert!(
            Instant::now() < deadline,
            "no worker action span and scheduler execute span in trace {trace_id}: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !worker.parent.is_empty() && worker.parent != client_span,
        "the worker's span has the scheduler's as parent: {worker:?}"
    );
    let attribute = |span: &Received, key: &str| span.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    assert!(attribute(&worker, "operation").is_some_and(|o| o.starts_with("operations/")), "{worker:?}");
    assert_eq!(attribute(&execute, "tool_invocation_id"), Some(invocation), "{execute:?}");
    assert!(attribute(&execute, "action_id").is_some_and(|a| !a.is_empty()), "{execute:?}");
    // The scheduler's gRPC span is the child of the client's.
    let grpc = receiver.spans.lock().iter().find(|s| s.trace_id == trace_id && s.name == "grpc").cloned();
    assert_eq!(grpc.map(|s| s.parent), Some(client_span.to_string()));
    drop(cluster);
}
