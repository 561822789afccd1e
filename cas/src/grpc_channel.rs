//! Channels to a remote gRPC endpoint: plain or TLS (`grpcs://`), with a
//! client certificate for mTLS and a bearer token on every call.

use std::path::{Path, PathBuf};
use std::task::{Context, Poll};
use std::time::Duration;

use memobuild_proto::{Error, Result};
use tonic::body::Body;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// HTTP/2 flow-control windows: large enough to keep a fast link busy.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a client presents to a server that requires authentication.
#[derive(Clone, Default)]
pub struct ClientCredentials {
    /// Sent as `authorization: Bearer TOKEN` on every call.
    pub token: Option<String>,
    /// PEM CA bundle that signs the server's certificate (`grpcs://`);
    /// the system's roots when unset.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate and key, for mTLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl std::fmt::Debug for ClientCredentials {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish()
    }
}

/// A channel that adds the client's bearer token to every request.
#[derive(Clone)]
pub struct GrpcChannel {
    channel: Channel,
    authorization: Option<http::HeaderValue>,
}

impl GrpcChannel {
    /// `channel`, sending `token` (when given) as a bearer token on every call.
    pub fn with_token(channel: Channel, token: Option<&str>) -> Result<Self> {
        let authorization = match token {
            Some(token) => {
                let mut value = http::HeaderValue::try_from(format!("Bearer {}", token.trim()))
                    .map_err(|_| Error::invalid_argument("the token has characters a header cannot carry"))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(GrpcChannel { channel, authorization })
    }
}

impl From<Channel> for GrpcChannel {
    fn from(channel: Channel) -> Self {
        GrpcChannel { channel, authorization: None }
    }
}

impl tower::Service<http::Request<Body>> for GrpcChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = tonic::transport::channel::ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            request.headers_mut().insert(http::header::AUTHORIZATION, value.clone());
        }
        tower::Service::call(&mut self.channel, request)
    }
}

/// A lazily connecting channel to `endpoint` (`grpc://host:port` or
/// `http://host:port`), tuned for blob transfers and kept alive. Must be
/// called within a Tokio runtime.
pub fn grpc_channel(endpoint: &str) -> Result<Channel> {
    Ok(grpc_channel_with(endpoint, &ClientCredentials::default())?.channel)
}

/// [`grpc_channel`] with credentials: `grpcs://host:port` (or `https://`)
/// speaks TLS, verified against `tls_ca` (else the system's roots) and
/// offering the client certificate when one is given; the token goes on
/// every call.
pub fn grpc_channel_with(endpoint: &str, credentials: &ClientCredentials) -> Result<GrpcChannel> {
    let invalid = |reason: &str| Error::invalid_argument(format!("endpoint {endpoint:?}: {reason}"));
    let (uri, tls) = match endpoint.split_once("://") {
        Some(("grpc" | "http", rest)) => (format!("http://{rest}"), false),
        Some(("grpcs" | "https", rest)) => (format!("https://{rest}"), true),
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "unsupported scheme {scheme:?}; expected grpc://host:port, or grpcs://host:port for TLS"
            )))
        }
        None => return Err(invalid("expected grpc://host:port, or grpcs://host:port for TLS")),
    };
    if !tls && (credentials.tls_ca.is_some() || credentials.client_cert.is_some()) {
        return Err(invalid("TLS files were given for a plain endpoint; use grpcs://host:port"));
    }
    let mut endpoint_config = Endpoint::from_shared(uri).map_err(|e| invalid(&e.to_string()))?;
    if tls {
        endpoint_config =
            endpoint_config.tls_config(client_tls_config(credentials)?).map_err(|e| invalid(&e.to_string()))?;
    }
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::new(
            Code::FailedPrecondition,
            format!("connecting to {endpoint}: not within a Tokio runtime"),
        ));
    }
    let channel = endpoint_config
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_lazy();
    GrpcChannel::with_token(channel, credentials.token.as_deref())
        .map_err(|e| e.context(format!("endpoint {endpoint:?}")))
}

/// The TLS settings of `credentials`: their CA (else the system's roots)
/// and client certificate.
pub fn client_tls_config(credentials: &ClientCredentials) -> Result<ClientTlsConfig> {
    let mut config = match &credentials.tls_ca {
        Some(path) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(path, "TLS CA")?)),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    match (&credentials.client_cert, &credentials.client_key) {
        (Some(cert), Some(key)) => {
            config = config
                .identity(Identity::from_pem(read_pem(cert, "client certificate")?, read_pem(key, "client key")?));
        }
        (None, None) => {}
        _ => return Err(Error::invalid_argument("a client certificate needs its key, and a key its certificate")),
    }
    Ok(config)
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::invalid_argument(format!("reading the {what} {}: {e}", path.display())))
}
