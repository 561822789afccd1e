//! How a server admits callers: TLS on its gRPC port and the principals
//! that may call, from `[auth]` and `[tls]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use memobuild_auth::{Authenticator, ServerTls, TlsFiles};

use crate::config::{AuthSection, TlsSection};

/// Flags that set `[auth]` and `[tls]` of a server role.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServerSecurityArgs {
    /// Principals file (hashed bearer tokens, client-certificate names):
    /// every call then needs credentials it names. Reloaded on change.
    #[arg(long, value_name = "FILE", env = "MEMOBUILD_PRINCIPALS_FILE")]
    pub principals_file: Option<PathBuf>,
    /// PEM certificate chain of the gRPC port: TLS on (clients use grpcs://).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA of client certificates (mTLS); a certificate's CN or DNS SAN
    /// is looked up in the principals file.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServerSecurityArgs {
    /// Overrides the config's sections with the flags given.
    pub fn apply(&self, auth: &mut Option<AuthSection>, tls: &mut Option<TlsSection>) {
        if let Some(path) = &self.principals_file {
            *auth = Some(AuthSection { principals_file: path.clone() });
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            *tls = Some(TlsSection { cert: cert.clone(), key: key.clone(), client_ca: self.tls_client_ca.clone() });
        }
    }
}

/// What the gRPC port requires.
#[derive(Default)]
pub struct Security {
    pub authenticator: Option<Arc<Authenticator>>,
    pub tls: Option<Arc<ServerTls>>,
}

impl Security {
    /// Reads the principals file and the TLS files now (a bad file stops
    /// the server at start, not at the first call), and again whenever
    /// they change.
    pub fn from_config(auth: Option<&AuthSection>, tls: Option<&TlsSection>) -> anyhow::Result<Self> {
        let authenticator = match auth {
            Some(section) => {
                let authenticator = Authenticator::load(Some(&section.principals_file))
                    .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
                authenticator.watch();
                Some(authenticator)
            }
            None => None,
        };
        let tls = match tls {
            Some(section) => {
                anyhow::ensure!(
                    section.client_ca.is_none() || authenticator.is_some(),
                    "[tls] client_ca needs [auth] principals_file: it maps client certificates to principals"
                );
                let files = TlsFiles {
                    cert: section.cert.clone(),
                    key: section.key.clone(),
                    client_ca: section.client_ca.clone(),
                };
                Some(ServerTls::load(&files).map_err(|e| anyhow::anyhow!("{e}"))?)
            }
            None => None,
        };
        Ok(Security { authenticator, tls })
    }

    /// A loud warning when anyone who reaches `address` may do anything.
    pub fn warn_if_open(&self, address: SocketAddr) {
        if self.authenticator.is_none() && !address.ip().is_loopback() {
            tracing::warn!(
                %address,
                "NO AUTHENTICATION: this server listens on a non-loopback address and anyone who reaches it can read \
                 and write the cache, run actions and register workers. Set [auth] principals_file (or \
                 --principals-file), and [tls], before exposing it."
            );
        }
    }
}
