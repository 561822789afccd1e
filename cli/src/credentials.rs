//! What a client presents to a cluster that requires authentication: the
//! flags `memobuild remote`, `memobuild worker` and `memobuild scheduler`
//! (towards its CAS) share.

use std::path::PathBuf;

use anyhow::Context;
use memobuild_cas::ClientCredentials;

/// The environment variable holding a bearer token.
pub const TOKEN_ENV: &str = "MEMOBUILD_TOKEN";

#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClientArgs {
    /// A file holding the bearer token [default: the MEMOBUILD_TOKEN variable].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA that signs the server's certificate, for grpcs:// endpoints
    /// [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for servers that take mTLS.
    #[arg(long, value_name = "FILE", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// The client certificate's PEM private key.
    #[arg(long, value_name = "FILE", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
}

impl ClientArgs {
    /// The credentials: the token from --token-file, else $MEMOBUILD_TOKEN.
    pub fn credentials(&self) -> anyhow::Result<ClientCredentials> {
        let token = match &self.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading --token-file {}", path.display()))?;
                let token = text.trim().to_string();
                anyhow::ensure!(!token.is_empty(), "--token-file {} is empty", path.display());
                Some(token)
            }
            None => std::env::var(TOKEN_ENV).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()),
        };
        Ok(ClientCredentials {
            token,
            tls_ca: self.tls_ca.clone(),
            client_cert: self.tls_client_cert.clone(),
            client_key: self.tls_client_key.clone(),
        })
    }
}
