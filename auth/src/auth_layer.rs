//! The tower layer that authenticates every gRPC request.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::Authenticator;

/// Authenticates each request: on success the [`crate::Principal`] goes
/// into the request's extensions (as `Arc<Principal>`), else the caller
/// gets UNAUTHENTICATED and the service is not called. Without an
/// authenticator requests pass untouched.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Option<Arc<Authenticator>>,
}

impl AuthLayer {
    pub fn new(authenticator: Option<Arc<Authenticator>>) -> Self {
        AuthLayer { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, service: S) -> Self::Service {
        AuthService { authenticator: self.authenticator.clone(), service }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    authenticator: Option<Arc<Authenticator>>,
    service: S,
}

impl<S, B, RB> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(authenticator) = &self.authenticator else {
            return self.service.call(request).boxed();
        };
        let certificates =
            request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.peer_certs());
        let leaf = certificates.as_ref().and_then(|chain| chain.first()).map(|der| der.as_ref());
        match authenticator.authenticate(request.headers(), leaf) {
            Ok(principal) => {
                tracing::trace!(principal = %principal.name, "authenticated");
                request.extensions_mut().insert(principal);
                self.service.call(request).boxed()
            }
            Err(e) => {
                tracing::debug!(path = %request.uri().path(), error = %e.message(), "unauthenticated request");
                let status: tonic::Status = e.into();
                futures::future::ready(Ok(status.into_http())).boxed()
            }
        }
    }
}
