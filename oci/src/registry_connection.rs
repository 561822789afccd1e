//! One registry as a [`crate::RegistryClient`] speaks to it.

use std::sync::OnceLock;
use std::time::Duration;

use memobuild_proto::{Error, Result};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};

use crate::image_reference::ImageReference;
use crate::manifest::OCI_MANIFEST;
use crate::manifest_fetch::ManifestSource;
use crate::registry_client::registry_error;

/// How long connecting to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// One registry: manifests go over one HTTP client shared by the process,
/// with the credentials as they are; oci-client (which loads the TLS roots
/// when it is made, milliseconds of CPU) is made only when a token
/// handshake, a blob or a push needs it, so a rebuild whose image is all
/// here costs one request and no handshake with an open registry.
pub(crate) struct Connection {
    protocol: ClientProtocol,
    registry: String,
    pub(crate) auth: RegistryAuth,
    /// For manifests, read with a bound (oci-client reads them whole).
    pub(crate) http: reqwest::Client,
    /// `http` or `https`.
    pub(crate) scheme: &'static str,
    client: OnceLock<Client>,
    /// The pull token of the handshake, once done.
    pull_token: tokio::sync::OnceCell<Option<String>>,
}

impl Connection {
    pub(crate) fn new(registry: &str, insecure_host: Option<String>, auth: RegistryAuth) -> Result<Connection> {
        let (protocol, scheme) = match insecure_host {
            Some(host) => (ClientProtocol::HttpsExcept(vec![host]), "http"),
            None => (ClientProtocol::Https, "https"),
        };
        Ok(Connection {
            protocol,
            registry: registry.to_string(),
            auth,
            http: shared_http(registry)?,
            scheme,
            client: OnceLock::new(),
            pull_token: tokio::sync::OnceCell::new(),
        })
    }

    pub(crate) fn manifests(&self) -> ManifestSource<'_> {
        ManifestSource { connection: self }
    }

    /// oci-client for this registry, made on first use.
    pub(crate) fn client(&self) -> Result<&Client> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let config = ClientConfig { protocol: self.protocol.clone(), platform_resolver: None, ..Default::default() };
        let client = Client::try_from(config)
            .map_err(|e| Error::internal(format!("creating the HTTP client for {}: {e}", self.registry)))?;
        Ok(self.client.get_or_init(|| client))
    }

    /// oci-client with the pull handshake done (a token, or the
    /// credentials stored), for blob downloads.
    pub(crate) async fn pulling_client(&self, reference: &ImageReference) -> Result<&Client> {
        self.pull_token(reference).await?;
        self.client()
    }

    /// The bearer token for pulls from `reference`'s repository (`None`:
    /// the registry asks for none, or takes the credentials as they are).
    pub(crate) async fn pull_token(&self, reference: &ImageReference) -> Result<Option<String>> {
        let client = self.client()?;
        let token = self
            .pull_token
            .get_or_try_init(|| async {
                client
                    .auth(reference.as_oci(), &self.auth, RegistryOperation::Pull)
                    .await
                    .map_err(|e| registry_error(e, &format!("authenticating to {}", self.registry)))
            })
            .await?;
        Ok(token.clone())
    }

    /// `request` with the credentials as they are (no handshake).
    pub(crate) fn with_credentials(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            RegistryAuth::Basic(user, password) => request.basic_auth(user, Some(password)),
            RegistryAuth::Bearer(token) => request.bearer_auth(token),
            RegistryAuth::Anonymous => request,
        }
    }

    /// Whether `reference` (its tag or digest) names the manifest `digest`
    /// in its registry: one HEAD request, with the credentials when they are
    /// a user name and password (or a token). Any other answer (not there,
    /// another image, a token challenge, an error) is `false`, and the push
    /// goes the whole way.
    pub(crate) async fn names_manifest(&self, reference: &ImageReference, digest: &str) -> bool {
        let oci = reference.as_oci();
        let Some(name) = oci.digest().or(oci.tag()) else { return false };
        let url = format!("{}://{}/v2/{}/manifests/{name}", self.scheme, oci.resolve_registry(), oci.repository());
        let request = self.with_credentials(self.http.head(&url).header(http::header::ACCEPT, OCI_MANIFEST));
        match request.send().await {
            Ok(response) if response.status() == http::StatusCode::OK => response
                .headers()
                .get("docker-content-digest")
                .is_some_and(|found| found.as_bytes() == digest.as_bytes()),
            Ok(response) => {
                tracing::debug!(%url, status = %response.status(), "the manifest is not there as pushed");
                false
            }
            Err(e) => {
                tracing::debug!(%url, error = %e, "checking the manifest");
                false
            }
        }
    }
}

/// The process's HTTP client for manifests, made once (it loads the TLS
/// roots).
fn shared_http(registry: &str) -> Result<reqwest::Client> {
    static HTTP: OnceLock<std::result::Result<reqwest::Client, String>> = OnceLock::new();
    // Concurrent callers wait for the one that makes it (see `prepare_registry_http`).
    let made = HTTP
        .get_or_init(|| reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).build().map_err(|e| e.to_string()));
    made.clone().map_err(|e| Error::internal(format!("creating the HTTP client for {registry}: {e}")))
}

/// Makes the registries' HTTP client on a thread of its own, so that a
/// build's first registry request finds it made: making it loads the
/// system's TLS roots (a millisecond or two), which this overlaps with
/// whatever the caller does first (reading the context, planning).
pub fn prepare_registry_http() {
    let spawned = std::thread::Builder::new().name("registry-http".into()).spawn(|| shared_http("registries"));
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "could not make the registry HTTP client ahead; it is made on first use");
    }
}
