//! Fetching a manifest or index by tag or digest with a bound on its size.
//! A registry's answer (and its `Content-Length`) is a claim: the body is
//! read chunk by chunk and refused as soon as it passes the limit, never
//! read whole first. The GET is ours: first with the credentials as they
//! are; after a 401, once more with the token of oci-client's handshake.

use bytes::{Bytes, BytesMut};
use memobuild_proto::{Digest, DigestFunction, Error, Result};
use tonic::Code;

use crate::image_reference::ImageReference;
use crate::registry_connection::Connection;

/// How much of an error answer's body goes into the message.
const MAX_ERROR_BODY: u64 = 4096;

/// Where and how to ask one registry for manifests.
pub(crate) struct ManifestSource<'a> {
    pub(crate) connection: &'a Connection,
}

impl ManifestSource<'_> {
    /// The manifest `reference` names (by digest, else tag) and its
    /// `sha256:<hex>` digest, checked against the reference's digest and the
    /// registry's `Docker-Content-Digest`. More than `limit` bytes: an
    /// INVALID_ARGUMENT naming the reference and the limit.
    pub(crate) async fn fetch(
        &self,
        reference: &ImageReference,
        accepted: &[&str],
        limit: u64,
    ) -> Result<(Bytes, String)> {
        let what = format!("fetching manifest {reference}");
        let url = self.url(reference);
        let connection = self.connection;
        let get = || connection.http.get(&url).header(http::header::ACCEPT, accepted.join(", "));
        let sent = |request: reqwest::RequestBuilder| async {
            request.send().await.map_err(|e| Error::unavailable(format!("{what}: {e}")))
        };
        let mut response = sent(connection.with_credentials(get())).await?;
        if response.status() == http::StatusCode::UNAUTHORIZED {
            if let Some(token) = connection.pull_token(reference).await.map_err(|e| e.context(&what))? {
                response = sent(get().bearer_auth(token)).await?;
            }
        }
        let status = response.status();
        if !status.is_success() {
            let (body, _) = read_at_most(&mut response, MAX_ERROR_BODY).await.unwrap_or_default();
            let body = String::from_utf8_lossy(&body);
            return Err(http_status_error(
                status.as_u16(),
                &format!("{what}: {url} answered {status}: {}", body.trim()),
            ));
        }
        let too_big =
            || Error::invalid_argument(format!("manifest {reference} is more than the {limit} bytes allowed"));
        if response.content_length().is_some_and(|claimed| claimed > limit) {
            return Err(too_big());
        }
        let header =
            response.headers().get("docker-content-digest").and_then(|value| value.to_str().ok()).map(str::to_string);
        let (body, whole) =
            read_at_most(&mut response, limit).await.map_err(|e| Error::unavailable(format!("{what}: {e}")))?;
        if !whole {
            return Err(too_big());
        }
        let digest = format!("sha256:{}", Digest::of(DigestFunction::Sha256, &body).hex());
        for (claim, source) in [(reference.digest(), "the reference"), (header.as_deref(), "the registry")] {
            // Only SHA-256 claims can be checked here; others are left to oci-client's callers.
            if let Some(claim) = claim.filter(|c| c.starts_with("sha256:")) {
                if claim != digest {
                    return Err(Error::new(
                        Code::DataLoss,
                        format!("manifest {reference} has digest {digest}, {source} says {claim}"),
                    ));
                }
            }
        }
        Ok((body, digest))
    }

    fn url(&self, reference: &ImageReference) -> String {
        let oci = reference.as_oci();
        let name = oci.digest().or(oci.tag()).unwrap_or("latest");
        let ns = oci.namespace().map(|ns| format!("?ns={ns}")).unwrap_or_default();
        format!("{}://{}/v2/{}/manifests/{name}{ns}", self.connection.scheme, oci.resolve_registry(), oci.repository())
    }
}

/// At most `limit` bytes of the body of `response`, and whether that is the
/// whole body: reading stops at the first chunk past the limit.
async fn read_at_most(response: &mut reqwest::Response, limit: u64) -> reqwest::Result<(Bytes, bool)> {
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len() as u64) as usize;
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body.freeze(), false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body.freeze(), true))
}

/// A registry's HTTP error status as our code: unknown names NOT_FOUND,
/// refused credentials UNAUTHENTICATED / PERMISSION_DENIED, throttling
/// RESOURCE_EXHAUSTED, other client errors INVALID_ARGUMENT, the rest
/// UNAVAILABLE.
pub(crate) fn http_status_error(status: u16, message: &str) -> Error {
    let code = match status {
        404 => Code::NotFound,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        429 => Code::ResourceExhausted,
        400..=499 => Code::InvalidArgument,
        _ => Code::Unavailable,
    };
    Error::new(code, message.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn response(
        chunks: impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    ) -> reqwest::Response {
        reqwest::Response::from(http::Response::new(reqwest::Body::wrap_stream(chunks)))
    }

    #[tokio::test]
    async fn an_endless_body_is_cut_at_the_limit() {
        let endless = futures::stream::repeat_with(|| Ok(Bytes::from_static(&[b'{'; 1000])));
        let (body, whole) = read_at_most(&mut response(endless), 4096).await.unwrap();
        assert_eq!((body.len(), whole), (4096, false));
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_whole() {
        let chunks = futures::stream::iter(["{\"a\":", "1}"].map(|c| Ok(Bytes::from_static(c.as_bytes()))));
        let (body, whole) = read_at_most(&mut response(chunks), 7).await.unwrap();
        assert_eq!((&body[..], whole), (&b"{\"a\":1}"[..], true));
    }
}
