//! Pulling images from and pushing them to OCI / Docker registries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use memobuild_cas::{verify_stream, BlobStore, ByteRange};
use memobuild_proto::{Digest, Error, Result};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use tonic::Code;

use crate::blob_io::{oci_digest, small_blob, DEFAULT_MAX_LAYER_BYTES, MAX_METADATA_BYTES};
use crate::built_image::BuiltImage;
use crate::credential_helper::{CredentialHelper, HelperCredentials};
use crate::diff_id_memo::DiffIdMemo;
use crate::docker_config::{helper_server_address, normalize_registry, DockerConfig};
use crate::image_reference::ImageReference;
use crate::manifest::{
    complete_layers, layers_of, select_platform, ManifestDocument, ACCEPTED, DOCKER_MANIFEST, OCI_MANIFEST,
};
use crate::manifest_fetch::http_status_error;
use crate::pulled_image::PulledImage;
use crate::registry_connection::Connection;

/// Layer downloads and uploads in flight at once.
const CONCURRENT_TRANSFERS: usize = 4;

/// Talks to registries with the credentials it holds or its credential
/// helpers give (anonymously where there are none); oci-client does the
/// token handshake. Registries on this machine (see
/// [`ImageReference::is_insecure_default`]) and those added with
/// [`RegistryClient::with_insecure_registry`] are spoken to over HTTP.
#[derive(Clone, Default)]
pub struct RegistryClient {
    credentials: BTreeMap<String, (String, String)>,
    /// `credHelpers`: a registry's own helper, before anything else.
    helpers: BTreeMap<String, CredentialHelper>,
    /// `credsStore`: the helper for registries without credentials.
    creds_store: Option<CredentialHelper>,
    insecure: BTreeSet<String>,
    diff_ids: Option<Arc<dyn DiffIdMemo>>,
    /// The largest manifest or index read; `None`: [`MAX_METADATA_BYTES`].
    max_manifest_bytes: Option<u64>,
    /// The most a pulled layer may decompress to; `None`: [`DEFAULT_MAX_LAYER_BYTES`].
    max_layer_bytes: Option<u64>,
}

impl RegistryClient {
    /// A client without credentials.
    pub fn anonymous() -> Self {
        RegistryClient::default()
    }

    /// Credentials from `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`, as Docker picks them for a registry: its
    /// `credHelpers` entry, else the `credsStore` helper, else its `auths`
    /// entry (`auth` or `username`/`password`); anonymous when there is no
    /// such file. A helper runs (`docker-credential-NAME get`) at each
    /// pull or push; one that holds nothing for the registry leaves it
    /// anonymous. Identity tokens (username `<token>`) need an OAuth2
    /// refresh-token exchange oci-client does not do: such a registry is
    /// spoken to anonymously, with a warning.
    pub fn from_docker_config() -> Result<Self> {
        let mut client = RegistryClient::default();
        if let Some(path) = DockerConfig::default_path() {
            let config = DockerConfig::load(&path)?;
            client.helpers = config.helpers();
            client.creds_store = config.store();
            if client.creds_store.is_none() {
                for (registry, user, pass) in config.credentials(&path)? {
                    client.add_credentials(&registry, &user, &pass);
                }
            }
        }
        Ok(client)
    }

    /// A client with one registry's credentials.
    pub fn with_credentials(registry: &str, username: &str, password: &str) -> Self {
        let mut client = RegistryClient::default();
        client.add_credentials(registry, username, password);
        client
    }

    /// Adds (or replaces) a registry's credentials.
    pub fn add_credentials(&mut self, registry: &str, username: &str, password: &str) {
        self.credentials.insert(normalize_registry(registry), (username.to_string(), password.to_string()));
    }

    /// Keeps the diff ids of pulled layers in `memo`, so a layer already
    /// pulled is not decompressed again to learn its diff id.
    pub fn with_diff_id_memo(mut self, memo: Arc<dyn DiffIdMemo>) -> Self {
        self.diff_ids = Some(memo);
        self
    }

    /// Speaks plain HTTP to `registry` (`host[:port]`).
    pub fn with_insecure_registry(mut self, registry: &str) -> Self {
        self.insecure.insert(registry.to_string());
        self
    }

    /// Refuses manifests and indexes larger than `bytes` (4 MiB unless
    /// set), before more than that is read.
    pub fn with_max_manifest_bytes(mut self, bytes: u64) -> Self {
        self.max_manifest_bytes = Some(bytes);
        self
    }

    /// Refuses pulled layers that decompress to more than `bytes` (64 GiB
    /// unless set), decompressing no more than that.
    pub fn with_max_layer_bytes(mut self, bytes: u64) -> Self {
        self.max_layer_bytes = Some(bytes);
        self
    }

    /// The most a pulled (or imported) layer may decompress to.
    pub fn max_layer_bytes(&self) -> u64 {
        self.max_layer_bytes.unwrap_or(DEFAULT_MAX_LAYER_BYTES)
    }

    fn manifest_limit(&self) -> u64 {
        self.max_manifest_bytes.unwrap_or(MAX_METADATA_BYTES)
    }

    /// How to authenticate to `registry`: its helper, its credentials, the
    /// default helper, else anonymously.
    async fn auth_for(&self, registry: &str) -> Result<RegistryAuth> {
        let host = normalize_registry(registry);
        let helper = match (self.helpers.get(&host), self.credentials.get(&host)) {
            (Some(helper), _) => helper,
            (None, Some((user, pass))) => return Ok(RegistryAuth::Basic(user.clone(), pass.clone())),
            (None, None) => match &self.creds_store {
                Some(helper) => helper,
                None => return Ok(RegistryAuth::Anonymous),
            },
        };
        Ok(match helper.get(&helper_server_address(&host), registry).await? {
            HelperCredentials::Basic { username, secret } => RegistryAuth::Basic(username, secret),
            HelperCredentials::NotFound => RegistryAuth::Anonymous,
            HelperCredentials::IdentityToken(_) => {
                tracing::warn!(
                    "{} gave an identity token for {registry}, which memobuild cannot use: \
                     going on anonymously (log in with a password or access token instead)",
                    helper.program()
                );
                RegistryAuth::Anonymous
            }
        })
    }

    /// The user name and password this client would use for `registry`
    /// (`None`: anonymous), so a build elsewhere can push as this user.
    pub async fn basic_credentials(&self, registry: &str) -> Result<Option<(String, String)>> {
        Ok(match self.auth_for(registry).await? {
            RegistryAuth::Basic(user, password) => Some((user, password)),
            _ => None,
        })
    }

    async fn client_for(&self, reference: &ImageReference) -> Result<Connection> {
        let registry = reference.registry();
        let insecure = reference.is_insecure_default() || self.insecure.contains(registry);
        let insecure_host = insecure.then(|| reference.as_oci().resolve_registry().to_string());
        Connection::new(registry, insecure_host, self.auth_for(registry).await?)
    }

    /// Resolves `reference` to the image manifest for `platform` (from an
    /// index when it names one), and brings the config and every layer the
    /// store lacks into `store`, verified against their digests.
    pub async fn pull(&self, reference: &ImageReference, platform: &str, store: &dyn BlobStore) -> Result<PulledImage> {
        let what = reference.to_string();
        self.pull_inner(reference, platform, store).await.map_err(|e| e.context(format!("pulling {what}")))
    }

    async fn pull_inner(
        &self,
        reference: &ImageReference,
        platform: &str,
        store: &dyn BlobStore,
    ) -> Result<PulledImage> {
        let what = reference.to_string();
        let connection = self.client_for(reference).await?;
        let limit = self.manifest_limit();
        let (body, digest) = connection.manifests().fetch(reference, &ACCEPTED, limit).await?;
        let mut manifest = ManifestDocument::parse(&body, &what)?;
        let mut manifest_digest = digest;
        if let Some(entries) = manifest.index_entries() {
            let entry = select_platform(entries, platform, &what)?;
            let pinned = reference.with_digest(&entry.digest);
            // The index says how big the manifest is: refused before a byte
            // of it is read when too big, and no more than that is read.
            let claimed = u64::try_from(entry.size).ok().filter(|size| *size <= limit).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "manifest {pinned} is {} bytes by its index, more than the {limit} allowed",
                    entry.size
                ))
            })?;
            let (body, digest) = connection
                .manifests()
                .fetch(&pinned, &[OCI_MANIFEST, DOCKER_MANIFEST], claimed)
                .await
                .map_err(|e| e.context(format!("the index of {what} gives it {claimed} bytes")))?;
            if body.len() as u64 != claimed {
                return Err(Error::new(
                    Code::DataLoss,
                    format!("manifest {pinned} is {} bytes, its index {what} says {claimed}", body.len()),
                ));
            }
            manifest = ManifestDocument::parse(&body, &pinned.to_string())?;
            if manifest.index_entries().is_some() {
                return Err(Error::invalid_argument(format!("{pinned}: an index inside an index is not supported")));
            }
            manifest_digest = digest;
        }
        let config_descriptor = manifest.config(&what)?;
        let config_digest = config_descriptor.digest()?;
        let config = if store.find_missing(&[config_digest]).await?.is_empty() {
            small_blob(store, &config_digest, MAX_METADATA_BYTES, "image config").await?
        } else {
            let client = connection.pulling_client(reference).await?;
            let data = fetch_small_blob(client, reference, &config_descriptor.media_type, &config_digest).await?;
            store.put_bytes(&config_digest, data.clone()).await?;
            data
        };
        let (config_parsed, listed) = layers_of(&manifest, &config, &what)?;
        let blobs: Vec<Digest> = listed.iter().map(|l| *l.blob()).collect();
        let missing = store.find_missing(&blobs).await?;
        if !missing.is_empty() {
            let client = connection.pulling_client(reference).await?;
            // The futures are made up front: a stream that maps through a
            // closure over `&Digest` is not provably Send to callers that spawn.
            let downloads: Vec<_> =
                missing.iter().map(|digest| download_blob(client, reference, digest, store)).collect();
            futures::stream::iter(downloads).buffer_unordered(CONCURRENT_TRANSFERS).try_collect::<Vec<()>>().await?;
        }
        let layers = complete_layers(store, listed, &what, self.diff_ids.as_deref(), self.max_layer_bytes()).await?;
        Ok(PulledImage {
            reference: reference.as_written().to_string(),
            resolved: reference.pinned(&manifest_digest),
            manifest_digest,
            config: config_parsed,
            raw_config: config,
            layers,
        })
    }

    /// Pushes the layers the registry lacks, the config and the manifest,
    /// under `reference`'s tag (or digest). Returns the manifest digest. An
    /// image the tag already names costs one request.
    pub async fn push(&self, image: &BuiltImage, reference: &ImageReference, store: &dyn BlobStore) -> Result<String> {
        let what = reference.to_string();
        self.push_inner(image, reference, store).await.map_err(|e| e.context(format!("pushing {what}")))
    }

    async fn push_inner(
        &self,
        image: &BuiltImage,
        reference: &ImageReference,
        store: &dyn BlobStore,
    ) -> Result<String> {
        let connection = self.client_for(reference).await?;
        let digest = image.manifest_digest();
        if connection.names_manifest(reference, &digest).await {
            tracing::debug!(%reference, %digest, "the registry has the image under this name already");
            return Ok(digest);
        }
        let client = connection.client()?;
        let oci_ref = reference.as_oci();
        client.store_auth_if_needed(oci_ref.resolve_registry(), &connection.auth).await;
        let mut blobs: Vec<Digest> = image.layers.iter().map(|l| l.blob).collect();
        blobs.sort();
        blobs.dedup();
        let uploads: Vec<_> = blobs.iter().map(|digest| upload_blob(client, reference, digest, store)).collect();
        futures::stream::iter(uploads).buffer_unordered(CONCURRENT_TRANSFERS).try_collect::<Vec<()>>().await?;
        let config_digest = oci_digest(&image.config_digest());
        if !client.blob_exists(oci_ref, &config_digest).await.map_err(|e| registry_error(e, &config_digest))? {
            client
                .push_blob(oci_ref, image.config.clone(), &config_digest)
                .await
                .map_err(|e| registry_error(e, &format!("uploading config {config_digest}")))?;
        }
        let content_type = http::HeaderValue::from_static(OCI_MANIFEST);
        client
            .push_manifest_raw(oci_ref, image.manifest().clone(), content_type)
            .await
            .map_err(|e| registry_error(e, &format!("uploading manifest {}", image.manifest_digest())))?;
        Ok(image.manifest_digest())
    }
}

fn descriptor(media_type: &str, digest: &Digest) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.to_string(),
        digest: oci_digest(digest),
        size: digest.size() as i64,
        ..Default::default()
    }
}

/// A small blob (a config) in memory, checked against its digest.
async fn fetch_small_blob(
    client: &Client,
    reference: &ImageReference,
    media_type: &str,
    digest: &Digest,
) -> Result<Bytes> {
    let what = format!("image config {}", oci_digest(digest));
    if digest.size() > MAX_METADATA_BYTES {
        return Err(Error::invalid_argument(format!(
            "{what} is {} bytes, more than the {MAX_METADATA_BYTES} allowed",
            digest.size()
        )));
    }
    let sized = client
        .pull_blob_stream(reference.as_oci(), &descriptor(media_type, digest))
        .await
        .map_err(|e| registry_error(e, &format!("fetching {what}")))?;
    let stream = sized.stream.map_err(|e| Error::unavailable(e.to_string())).boxed();
    memobuild_cas::collect(verify_stream(*digest, stream)).await.map_err(|e| e.context(format!("fetching {what}")))
}

async fn download_blob(
    client: &Client,
    reference: &ImageReference,
    digest: &Digest,
    store: &dyn BlobStore,
) -> Result<()> {
    let what = format!("layer {}", oci_digest(digest));
    let sized = client
        .pull_blob_stream(reference.as_oci(), &descriptor("", digest))
        .await
        .map_err(|e| registry_error(e, &format!("fetching {what}")))?;
    let stream = sized.stream.map_err(|e| Error::unavailable(e.to_string())).boxed();
    store.put(digest, verify_stream(*digest, stream)).await.map_err(|e| e.context(format!("fetching {what}")))
}

async fn upload_blob(
    client: &Client,
    reference: &ImageReference,
    digest: &Digest,
    store: &dyn BlobStore,
) -> Result<()> {
    let name = oci_digest(digest);
    let oci_ref = reference.as_oci();
    if client.blob_exists(oci_ref, &name).await.map_err(|e| registry_error(e, &format!("checking layer {name}")))? {
        return Ok(());
    }
    let stream = store.get(digest, ByteRange::ALL).await.map_err(|e| e.context(format!("reading layer {name}")))?;
    let stream = stream.map_err(|e| OciDistributionError::GenericError(Some(e.to_string())));
    client
        .push_blob_stream(oci_ref, stream, &name, Some(digest.size()))
        .await
        .map_err(|e| registry_error(e, &format!("uploading layer {name}")))?;
    Ok(())
}

/// Maps an oci-client error to our codes: unknown manifests and blobs are
/// NOT_FOUND, refused credentials UNAUTHENTICATED / PERMISSION_DENIED,
/// network and server trouble UNAVAILABLE.
pub(crate) fn registry_error(e: OciDistributionError, what: &str) -> Error {
    let code = match &e {
        OciDistributionError::RegistryError { envelope, .. } => match envelope.errors.first().map(|e| &e.code) {
            Some(
                OciErrorCode::ManifestUnknown
                | OciErrorCode::NameUnknown
                | OciErrorCode::BlobUnknown
                | OciErrorCode::NotFound,
            ) => Code::NotFound,
            Some(OciErrorCode::Unauthorized) => Code::Unauthenticated,
            Some(OciErrorCode::Denied) => Code::PermissionDenied,
            Some(OciErrorCode::Toomanyrequests) => Code::ResourceExhausted,
            _ => Code::InvalidArgument,
        },
        OciDistributionError::ServerError { code, .. } => http_status_error(*code, what).code(),
        OciDistributionError::ImageManifestNotFoundError(_) => Code::NotFound,
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            Code::Unauthenticated
        }
        OciDistributionError::DigestError(_) => Code::DataLoss,
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => Code::Unavailable,
        _ => Code::Internal,
    };
    Error::new(code, format!("{what}: {e}"))
}
