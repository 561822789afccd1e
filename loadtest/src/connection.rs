//! gRPC channels tuned for blob traffic, and the clients on top of them.

use std::time::Duration;

use anyhow::{bail, Context};
use memobuild_cas::{client_tls_config, ClientCredentials, GrpcChannel};
use memobuild_proto::bytestream::byte_stream_client::ByteStreamClient;
use memobuild_proto::reapi::capabilities_client::CapabilitiesClient;
use memobuild_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use memobuild_proto::reapi::{GetCapabilitiesRequest, ServerCapabilities};
use tonic::transport::Endpoint;

/// A channel that carries the client's bearer token, if any.
pub type Channel = GrpcChannel;

/// HTTP/2 flow-control windows: large enough that a 1 MiB message never
/// waits for a window update on a low-latency link.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
/// The largest response message accepted (tonic's default is 4 MiB).
pub const MAX_DECODING_MESSAGE: usize = 16 << 20;

/// How the channels are set up.
#[derive(Clone, Debug)]
pub struct ChannelOptions {
    pub endpoint: String,
    /// The HTTP/2 SETTINGS_MAX_FRAME_SIZE this client advertises; the
    /// protocol default (16 KiB) when `None`.
    pub max_frame_size: Option<u32>,
}

/// `grpc://host:port` (or `http://`, or a bare `host:port`) as the URI tonic
/// dials, and whether it speaks TLS (`grpcs://`, `https://`).
pub fn endpoint_uri(endpoint: &str) -> anyhow::Result<(String, bool)> {
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("grpc".to_string(), endpoint),
    };
    if rest.is_empty() || rest.contains('/') {
        bail!("endpoint {endpoint:?}: expected grpc://HOST:PORT");
    }
    match scheme.as_str() {
        "grpc" | "http" => Ok((format!("http://{rest}"), false)),
        "grpcs" | "https" => Ok((format!("https://{rest}"), true)),
        _ => bail!("endpoint {endpoint:?}: unknown scheme {scheme:?}, expected grpc:// or grpcs://"),
    }
}

/// What the load generator presents to a server with auth, from the
/// environment: `MEMOBUILD_TOKEN`, `MEMOBUILD_TLS_CA`,
/// `MEMOBUILD_TLS_CLIENT_CERT` and `MEMOBUILD_TLS_CLIENT_KEY`.
fn credentials() -> ClientCredentials {
    let path = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    ClientCredentials {
        token: std::env::var("MEMOBUILD_TOKEN").ok().filter(|t| !t.is_empty()),
        tls_ca: path("MEMOBUILD_TLS_CA"),
        client_cert: path("MEMOBUILD_TLS_CLIENT_CERT"),
        client_key: path("MEMOBUILD_TLS_CLIENT_KEY"),
    }
}

/// Opens `count` separate HTTP/2 connections to the endpoint.
pub async fn connect(options: &ChannelOptions, count: usize) -> anyhow::Result<Vec<Channel>> {
    let (uri, tls) = endpoint_uri(&options.endpoint)?;
    let credentials = credentials();
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .with_context(|| format!("endpoint {}", options.endpoint))?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(options.max_frame_size)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));
    if tls {
        let config = client_tls_config(&credentials).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        endpoint = endpoint.tls_config(config).with_context(|| format!("TLS to {}", options.endpoint))?;
    }
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let channel = endpoint.connect().await.with_context(|| format!("connecting to {}", options.endpoint))?;
        let channel = GrpcChannel::with_token(channel, credentials.token.as_deref())
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        channels.push(channel);
    }
    Ok(channels)
}

pub fn cas_client(channel: Channel) -> ContentAddressableStorageClient<Channel> {
    ContentAddressableStorageClient::new(channel)
        .max_decoding_message_size(MAX_DECODING_MESSAGE)
        .max_encoding_message_size(usize::MAX)
}

pub fn byte_stream_client(channel: Channel) -> ByteStreamClient<Channel> {
    ByteStreamClient::new(channel).max_decoding_message_size(MAX_DECODING_MESSAGE).max_encoding_message_size(usize::MAX)
}

/// The server's capabilities, or `None` (with a note) for a server that does
/// not implement the Capabilities service.
pub async fn capabilities(channel: Channel, instance_name: &str) -> anyhow::Result<Option<ServerCapabilities>> {
    let mut client = CapabilitiesClient::new(channel);
    let request = GetCapabilitiesRequest { instance_name: instance_name.to_string() };
    match client.get_capabilities(request).await {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            eprintln!("note: the server does not implement Capabilities; assuming defaults");
            Ok(None)
        }
        Err(status) => Err(anyhow::Error::new(status).context("GetCapabilities")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoints_become_http_uris() {
        assert_eq!(endpoint_uri("grpc://127.0.0.1:8980").unwrap(), ("http://127.0.0.1:8980".into(), false));
        assert_eq!(endpoint_uri("http://localhost:1").unwrap(), ("http://localhost:1".into(), false));
        assert_eq!(endpoint_uri("127.0.0.1:8980").unwrap(), ("http://127.0.0.1:8980".into(), false));
        assert_eq!(endpoint_uri("grpcs://x:1").unwrap(), ("https://x:1".into(), true));
        assert!(endpoint_uri("ftp://x:1").unwrap_err().to_string().contains("unknown scheme"));
        assert!(endpoint_uri("grpc://").is_err());
        assert!(endpoint_uri("grpc://x:1/path").is_err());
    }
}
