//! A tower layer around the gRPC server: a tracing span with a request id on
//! every call, and Prometheus counts and latencies per method.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use memobuild_proto::trace_parent::{self, TRACEPARENT};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tower::{Layer, Service};
use tracing::Instrument;

/// Services whose methods get their own metric label; anything else is
/// counted as "unknown" so clients cannot grow the label set.
const KNOWN_SERVICES: [&str; 8] = [
    "build.bazel.remote.execution.v2.ContentAddressableStorage",
    "build.bazel.remote.execution.v2.ActionCache",
    "build.bazel.remote.execution.v2.Capabilities",
    "build.bazel.remote.execution.v2.Execution",
    "google.bytestream.ByteStream",
    "google.longrunning.Operations",
    "memobuild.worker.v1.WorkerApi",
    "memobuild.build.v1.BuildService",
];

#[derive(Clone)]
pub struct RequestLayer {
    inner: Arc<Inner>,
}

struct Inner {
    requests: IntCounterVec,
    latency: HistogramVec,
    next_id: AtomicU64,
}

impl RequestLayer {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("memobuild_grpc_requests_total", "gRPC requests by service, method and status code"),
            &["service", "method", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "memobuild_grpc_request_duration_seconds",
                "Time to the response headers, by service and method",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 4.0, 10)?),
            &["service", "method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(RequestLayer { inner: Arc::new(Inner { requests, latency, next_id: AtomicU64::new(1) }) })
    }
}

impl<S> Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, service: S) -> Self::Service {
        RequestService { inner: self.inner.clone(), service }
    }
}

#[derive(Clone)]
pub struct RequestService<S> {
    inner: Arc<Inner>,
    service: S,
}

/// The short service name and the method for known services, else
/// "unknown" for both.
fn method_labels(path: &str) -> (String, String) {
    let path = path.trim_start_matches('/');
    match path.split_once('/') {
        Some((service, method)) if KNOWN_SERVICES.contains(&service) && method_name(method) => {
            let short = service.rsplit('.').next().unwrap_or(service);
            (short.to_string(), method.to_string())
        }
        _ => ("unknown".to_string(), "unknown".to_string()),
    }
}

/// A method name as protos spell them: a few ASCII letters.
fn method_name(method: &str) -> bool {
    !method.is_empty() && method.len() <= 64 && method.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl<S, B, RB> Service<http::Request<B>> for RequestService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = method_labels(request.uri().path());
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| format!("r{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed)));
        let span = tracing::info_span!("grpc", %service, %method, %request_id);
        if let Some(parent) = request.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()) {
            trace_parent::adopt(&span, parent);
        }
        let inner = self.inner.clone();
        let started = Instant::now();
        let future = self.service.call(request);
        Box::pin(
            async move {
                let response = future.await;
                if let Ok(response) = &response {
                    // Errors before the first message come back trailers-only,
                    // with the status in the headers; streams end in trailers.
                    let code = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .unwrap_or(0);
                    let code = format!("{:?}", tonic::Code::from(code));
                    inner.requests.with_label_values(&[service.as_str(), method.as_str(), code.as_str()]).inc();
                    inner
                        .latency
                        .with_label_values(&[service.as_str(), method.as_str()])
                        .observe(started.elapsed().as_secs_f64());
                    tracing::debug!(%code, elapsed_ms = started.elapsed().as_millis() as u64, "handled");
                }
                response
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        let labels = |s: &str, m: &str| (s.to_string(), m.to_string());
        assert_eq!(
            method_labels("/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"),
            labels("ContentAddressableStorage", "FindMissingBlobs")
        );
        assert_eq!(method_labels("/google.bytestream.ByteStream/Read"), labels("ByteStream", "Read"));
        assert_eq!(method_labels("/memobuild.build.v1.BuildService/Build"), labels("BuildService", "Build"));
        assert_eq!(method_labels("/evil.Service/abc123"), labels("unknown", "unknown"));
        assert_eq!(method_labels("/google.bytestream.ByteStream/x-y"), labels("unknown", "unknown"));
        assert_eq!(method_labels("garbage"), labels("unknown", "unknown"));
    }
}
