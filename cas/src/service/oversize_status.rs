use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::codegen::http::{HeaderValue, Request, Response};
use tonic::codegen::Service;
use tonic::server::NamedService;

/// What tonic's message-size check says, percent-encoded as in the
/// `grpc-message` header.
const TOO_LARGE: &str = "length%20too%20large";

/// A gRPC service whose oversized messages are RESOURCE_EXHAUSTED, as the
/// gRPC spec asks, rather than tonic's OUT_OF_RANGE. Tonic's message keeps
/// naming the size found and the limit.
#[derive(Clone)]
pub struct OversizeStatus<S>(pub S);

impl<S: NamedService> NamedService for OversizeStatus<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<Request<Body>> for OversizeStatus<S>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<B>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let response = self.0.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            let out_of_range = headers.get("grpc-status").is_some_and(|s| s == "11");
            let too_large =
                headers.get("grpc-message").and_then(|m| m.to_str().ok()).is_some_and(|m| m.contains(TOO_LARGE));
            if out_of_range && too_large {
                headers.insert("grpc-status", HeaderValue::from_static("8"));
            }
            Ok(response)
        })
    }
}
