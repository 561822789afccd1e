//! Starts a real server on loopback ports, as `memobuild server` does.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use memobuild_cli::config::ServerConfig;
use memobuild_cli::server::{self, Listeners};
use memobuild_proto::bytestream::byte_stream_client::ByteStreamClient;
use memobuild_proto::reapi::action_cache_client::ActionCacheClient;
use memobuild_proto::reapi::capabilities_client::CapabilitiesClient;
use memobuild_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// `len` pseudo-random bytes, the same for the same seed.
pub fn data(len: usize, seed: u32) -> bytes::Bytes {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

pub const MAX_MESSAGE: usize = 64 << 20;

pub struct TestServer {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// A server on embedded defaults under `state_dir`.
    pub async fn start(state_dir: &Path) -> Self {
        Self::start_with(ServerConfig::embedded(state_dir)).await
    }

    /// A server on `config`, on loopback ports of its own (the addresses
    /// `config` names are not used).
    pub async fn start_with(config: ServerConfig) -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = Listeners { grpc, admin: Some(admin) };
        let task = tokio::spawn(server::run(config, listeners, async move {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        TestServer { addr, admin: admin_addr, channel, stop: Some(stop), task: Some(task) }
    }

    /// Shuts down gracefully and waits until the state is released.
    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        drop(self.channel);
        self.task.take().unwrap().await.unwrap().unwrap();
    }

    pub fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    pub fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    pub fn action_cache(&self) -> ActionCacheClient<Channel> {
        ActionCacheClient::new(self.channel.clone())
    }

    pub fn capabilities(&self) -> CapabilitiesClient<Channel> {
        CapabilitiesClient::new(self.channel.clone())
    }

    /// GET a path on the admin listener; returns the body.
    pub async fn admin_get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"), "{response}");
        response.split_once("\r\n\r\n").unwrap().1.to_string()
    }
}
