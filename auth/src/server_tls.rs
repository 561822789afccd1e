//! TLS on a server's gRPC port. The certificate chain, its key and the
//! client CA are read again when they change (see [`watch_files`]), so a
//! renewed certificate is served to new connections without a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use parking_lot::RwLock;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::file_watch::watch_files;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 1024;

/// Where the PEM files are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA of client certificates: with it a client may present one (it is
    /// optional, as a client may present a token instead).
    pub client_ca: Option<PathBuf>,
}

/// The TLS side of a gRPC port, with the configuration of the files as they
/// were last read.
pub struct ServerTls {
    config: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads the files now (a bad file stops the server at start) and again
    /// whenever they change, while the result lives.
    pub fn load(files: &TlsFiles) -> Result<Arc<Self>, String> {
        let paths: Vec<PathBuf> =
            [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()].into_iter().flatten().cloned().collect();
        let contents = paths
            .iter()
            .map(|path| std::fs::read(path).map_err(|e| format!("reading the TLS file {}: {e}", path.display())))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = Arc::new(ServerTls { config: RwLock::new(Arc::new(server_config(&contents)?)) });
        watch_files(&tls, paths, "TLS certificate", |tls, contents| {
            let config = server_config(contents)?;
            *tls.config.write() = Arc::new(config);
            Ok(format!("{} bytes of certificate chain", contents[0].len()))
        });
        Ok(tls)
    }

    /// The TLS connections made on `listener`, each handshake done with the
    /// configuration current when its client connected. Handshakes run
    /// beside one another, each for at most [`HANDSHAKE_TIMEOUT`]; one that
    /// fails is logged and dropped. Accepting stops when the stream is
    /// dropped.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
    ) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> + Send + 'static {
        let (sender, receiver) = mpsc::channel(64);
        let tls = self.clone();
        tokio::spawn(async move {
            let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
                let accepted = tokio::select! {
                    _ = sender.closed() => return,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, or a connection reset
                        // before it was accepted: try again shortly.
                        tracing::warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = TlsAcceptor::from(tls.config.read().clone());
                let sender = sender.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(stream) = handshake(acceptor, stream, peer).await {
                        let _ = sender.send(Ok(stream)).await;
                    }
                });
            }
        });
        ReceiverStream::new(receiver)
    }
}

async fn handshake(acceptor: TlsAcceptor, stream: TcpStream, peer: SocketAddr) -> Option<TlsStream<TcpStream>> {
    // Small request/response calls must not wait on Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// The rustls configuration of `contents`: the certificate chain, the key
/// and, when there is a third, the client CA. HTTP/2 is the one protocol.
fn server_config(contents: &[Vec<u8>]) -> Result<ServerConfig, String> {
    let chain = CertificateDer::pem_slice_iter(&contents[0])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the TLS certificate is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the TLS certificate file holds no certificate".to_string());
    }
    let key = PrivateKeyDer::from_pem_slice(&contents[1])
        .map_err(|e| format!("the TLS key is not a PEM private key: {e}"))?;
    let builder = ServerConfig::builder();
    let builder = match contents.get(2) {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(ca) {
                let certificate = certificate.map_err(|e| format!("the TLS client CA is not PEM: {e}"))?;
                roots.add(certificate).map_err(|e| format!("the TLS client CA: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder(roots.into())
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("the TLS client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("the TLS certificate and key do not make a pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
