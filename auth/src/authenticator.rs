//! Turns a request's credentials into a [`Principal`], from a principals
//! file that is read again whenever it changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use memobuild_proto::{Error, Result};
use parking_lot::{Mutex, RwLock};
use sha2::{Digest as _, Sha256};
use tonic::Code;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::file_watch::watch_files;
use crate::principals_file::TokenEntry;
use crate::{Principal, PrincipalsFile};

/// The SHA-256 of a bearer token, as the principals file holds it.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The principals a server knows, and how to find the caller among them.
pub struct Authenticator {
    path: Option<PathBuf>,
    file: RwLock<Arc<PrincipalsFile>>,
    /// The names of client certificates seen, by their DER, so that a
    /// connection's certificate is parsed once, not on every request.
    certificate_names: Mutex<HashMap<Vec<u8>, Arc<[String]>>>,
}

/// Client certificates whose names are kept; past it the cache starts over.
const CERTIFICATES_KEPT: usize = 1024;

impl Authenticator {
    /// An authenticator over the principals file at `path` (read now: a bad
    /// file is an error at start), or over no file (client certificates
    /// with no mapping only).
    pub fn load(path: Option<&Path>) -> Result<Arc<Self>> {
        let file = match path {
            Some(path) => PrincipalsFile::load(path)?,
            None => PrincipalsFile::default(),
        };
        Ok(Arc::new(Authenticator {
            path: path.map(Path::to_path_buf),
            file: RwLock::new(Arc::new(file)),
            certificate_names: Mutex::new(HashMap::new()),
        }))
    }

    /// Reads the principals file again every second while the
    /// authenticator lives; a file that does not parse is logged and the
    /// previous principals stay.
    pub fn watch(self: &Arc<Self>) {
        let Some(path) = self.path.clone() else { return };
        watch_files(self, vec![path], "principals file", |this, contents| {
            let file = std::str::from_utf8(&contents[0])
                .map_err(|_| Error::invalid_argument("not UTF-8"))
                .and_then(PrincipalsFile::parse)
                .map_err(|e| e.message().to_string())?;
            let summary = format!("{} tokens, {} certificates", file.tokens.len(), file.certificates.len());
            *this.file.write() = Arc::new(file);
            Ok(summary)
        });
    }

    /// The caller of a request with these headers and, over TLS, this
    /// verified client certificate chain (leaf first). A bearer token wins
    /// over a certificate.
    pub fn authenticate(&self, headers: &http::HeaderMap, peer_leaf: Option<&[u8]>) -> Result<Arc<Principal>> {
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            return self.by_token(value);
        }
        if let Some(der) = peer_leaf {
            return self.by_certificate(der);
        }
        Err(unauthenticated(
            "this server requires credentials: a bearer token (authorization: Bearer ...) or a client certificate"
                .to_string(),
        ))
    }

    fn by_token(&self, value: &http::HeaderValue) -> Result<Arc<Principal>> {
        let text = value.to_str().unwrap_or_default();
        let token = match text.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(unauthenticated("the authorization header is not \"Bearer <token>\"".to_string())),
        };
        let hash = hash_token(token);
        let file = self.file.read().clone();
        let Some(TokenEntry { principal, expires }) = file.tokens.get(&hash) else {
            return Err(unauthenticated("unknown or revoked bearer token".to_string()));
        };
        if let Some(expires) = *expires {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
            if now >= expires {
                return Err(unauthenticated(format!(
                    "the bearer token of principal {:?} expired ({} seconds ago)",
                    principal.name,
                    now - expires
                )));
            }
        }
        Ok(principal.clone())
    }

    fn by_certificate(&self, der: &[u8]) -> Result<Arc<Principal>> {
        let known = self.certificate_names.lock().get(der).cloned();
        let names = match known {
            Some(names) => names,
            None => {
                let names: Arc<[String]> = certificate_names(der)?.into();
                let mut cache = self.certificate_names.lock();
                if cache.len() >= CERTIFICATES_KEPT {
                    cache.clear();
                }
                cache.insert(der.to_vec(), names.clone());
                names
            }
        };
        let file = self.file.read().clone();
        names.iter().find_map(|name| file.certificates.get(name).cloned()).ok_or_else(|| {
            unauthenticated(format!("the client certificate ({}) maps to no principal", names.join(", ")))
        })
    }
}

fn unauthenticated(message: String) -> Error {
    Error::new(Code::Unauthenticated, message)
}

/// The subject CNs and DNS SANs of a certificate, CNs first.
fn certificate_names(der: &[u8]) -> Result<Vec<String>> {
    let (_, certificate) = X509Certificate::from_der(der)
        .map_err(|e| unauthenticated(format!("the client certificate does not parse: {e}")))?;
    let mut names: Vec<String> =
        certificate.subject().iter_common_name().filter_map(|cn| cn.as_str().ok().map(str::to_string)).collect();
    if let Ok(Some(san)) = certificate.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_string());
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn tokens_map_to_principals_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("principals.toml");
        let text = format!(
            "[[token]]\nprincipal=\"ci\"\nsha256=\"{}\"\ncapabilities=[\"read\"]\n\
             [[token]]\nprincipal=\"old\"\nsha256=\"{}\"\ncapabilities=[\"read\"]\nexpires=2001-01-01T00:00:00Z\n",
            hex::encode(hash_token("s3cret")),
            hex::encode(hash_token("stale")),
        );
        std::fs::write(&path, text).unwrap();
        let auth = Authenticator::load(Some(&path)).unwrap();
        assert_eq!(auth.authenticate(&headers("Bearer s3cret"), None).unwrap().name, "ci");
        assert_eq!(auth.authenticate(&headers("bearer s3cret"), None).unwrap().name, "ci");
        let e = auth.authenticate(&headers("Bearer nope"), None).unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(!e.message().contains("nope"), "the token is never echoed: {}", e.message());
        let e = auth.authenticate(&headers("Bearer stale"), None).unwrap_err();
        assert!(e.message().contains("\"old\" expired"), "{}", e.message());
        let e = auth.authenticate(&headers("Basic abc"), None).unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = auth.authenticate(&http::HeaderMap::new(), None).unwrap_err();
        assert!(e.message().contains("requires credentials"), "{}", e.message());
    }
}
