//! Registry credentials from Docker's `config.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use memobuild_proto::{Error, Result};
use serde::Deserialize;

use crate::credential_helper::CredentialHelper;

/// The parts of `config.json` we read.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    /// The helper for every registry without one in `cred_helpers`.
    #[serde(default)]
    creds_store: Option<String>,
    /// Registry -> helper.
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; `None`
    /// when neither variable leads to a file.
    pub(crate) fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(Path::new(&dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker").join("config.json"))
    }

    /// Reads `path`; an absent file is an empty config.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DockerConfig::default()),
            Err(e) => return Err(Error::from(e).context(format!("reading {}", path.display()))),
        };
        serde_json::from_slice(&text)
            .map_err(|e| Error::invalid_argument(format!("{}: malformed docker config: {e}", path.display())))
    }

    /// `credsStore`: the helper for registries `credHelpers` does not name.
    /// When set, Docker takes no secrets from `auths`.
    pub(crate) fn store(&self) -> Option<CredentialHelper> {
        self.creds_store.as_deref().filter(|s| !s.is_empty()).map(CredentialHelper::new)
    }

    /// `credHelpers`, by registry normalised with [`normalize_registry`].
    pub(crate) fn helpers(&self) -> BTreeMap<String, CredentialHelper> {
        self.cred_helpers
            .iter()
            .filter(|(_, name)| !name.is_empty())
            .map(|(registry, name)| (normalize_registry(registry), CredentialHelper::new(name)))
            .collect()
    }

    /// `(registry, username, password)` for each usable entry, registries
    /// normalised with [`normalize_registry`].
    pub(crate) fn credentials(&self, path: &Path) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        for (key, entry) in &self.auths {
            let registry = normalize_registry(key);
            if let (Some(user), Some(pass)) = (&entry.username, &entry.password) {
                out.push((registry, user.clone(), pass.clone()));
            } else if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|e| {
                    Error::invalid_argument(format!("{}: auths.{key}.auth is not base64: {e}", path.display()))
                })?;
                let text = String::from_utf8(decoded).map_err(|_| {
                    Error::invalid_argument(format!("{}: auths.{key}.auth is not UTF-8", path.display()))
                })?;
                let (user, pass) = text.split_once(':').ok_or_else(|| {
                    Error::invalid_argument(format!("{}: auths.{key}.auth is not user:password", path.display()))
                })?;
                out.push((registry, user.to_string(), pass.to_string()));
            }
        }
        Ok(out)
    }
}

/// The server address Docker gives a credential helper for a registry
/// normalised with [`normalize_registry`].
pub(crate) fn helper_server_address(registry: &str) -> String {
    match registry {
        "docker.io" => "https://index.docker.io/v1/".to_string(),
        other => other.to_string(),
    }
}

/// A registry key as Docker writes it (`https://index.docker.io/v1/`,
/// `ghcr.io`, `http://localhost:5000`) reduced to the host, with Docker
/// Hub's aliases mapped to `docker.io`.
pub(crate) fn normalize_registry(key: &str) -> String {
    let host = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auth_and_username_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
                "localhost:5000":{{"username":"bob","password":"pw"}},"ghcr.io":{{}}}},"credsStore":"desktop"}}"#
            ),
        )
        .unwrap();
        let config = DockerConfig::load(&path).unwrap();
        let mut creds = config.credentials(&path).unwrap();
        creds.sort();
        assert_eq!(
            creds,
            vec![
                ("docker.io".to_string(), "alice".to_string(), "s3cret:x".to_string()),
                ("localhost:5000".to_string(), "bob".to_string(), "pw".to_string()),
            ]
        );
        assert!(DockerConfig::load(&dir.path().join("absent.json")).unwrap().auths.is_empty());
        assert_eq!(config.store(), Some(CredentialHelper::new("desktop")));
    }

    #[test]
    fn reads_credential_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"credsStore":"","credHelpers":{"https://index.docker.io/v1/":"hub","ghcr.io":"gh","quay.io":""}}"#,
        )
        .unwrap();
        let config = DockerConfig::load(&path).unwrap();
        assert_eq!(config.store(), None);
        let helpers = config.helpers();
        assert_eq!(helpers.keys().collect::<Vec<_>>(), ["docker.io", "ghcr.io"]);
        assert_eq!(helpers["docker.io"].program(), "docker-credential-hub");
        assert_eq!(helper_server_address("docker.io"), "https://index.docker.io/v1/");
        assert_eq!(helper_server_address("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
