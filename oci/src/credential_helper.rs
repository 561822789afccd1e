//! Docker credential helpers: `docker-credential-<name> get`, the server
//! address on stdin, `{"Username": ..., "Secret": ...}` on stdout.

use std::process::Stdio;

use memobuild_proto::{Error, Result};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tonic::Code;

/// The username a helper gives for an identity (OAuth2 refresh) token.
const TOKEN_USERNAME: &str = "<token>";
/// What a helper prints when it holds nothing for the server.
const NOT_FOUND: &str = "credentials not found in native keychain";

/// A credential helper named in `config.json` (`credsStore` or
/// `credHelpers`): the program `docker-credential-<name>` on `PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CredentialHelper {
    name: String,
}

/// What a helper holds for a server.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HelperCredentials {
    Basic {
        username: String,
        secret: String,
    },
    /// An identity token, to be exchanged for access tokens.
    IdentityToken(String),
    NotFound,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Reply {
    username: String,
    secret: String,
}

impl CredentialHelper {
    pub(crate) fn new(name: &str) -> Self {
        CredentialHelper { name: name.to_string() }
    }

    /// `docker-credential-<name>`.
    pub(crate) fn program(&self) -> String {
        format!("docker-credential-{}", self.name)
    }

    /// Asks the helper for `server`'s credentials (`registry` names it in
    /// errors).
    pub(crate) async fn get(&self, server: &str, registry: &str) -> Result<HelperCredentials> {
        let program = self.program();
        let failed = |why: String| {
            Error::new(Code::FailedPrecondition, format!("credential helper {program} for registry {registry}: {why}"))
        };
        let mut child = tokio::process::Command::new(&program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => failed("not found on PATH (named in the docker config.json)".into()),
                _ => failed(format!("cannot start it: {e}")),
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading says why on its output.
            match stdin.write_all(server.as_bytes()).await {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(failed(format!("writing its input: {e}")))
                }
                _ => {}
            }
        }
        let output = child.wait_with_output().await.map_err(|e| failed(format!("waiting for it: {e}")))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            if stdout.trim() == NOT_FOUND {
                return Ok(HelperCredentials::NotFound);
            }
            let stderr = String::from_utf8_lossy(&output.stderr);
            let said = [stdout.trim(), stderr.trim()].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>();
            return Err(failed(format!("{}: {}", output.status, said.join("; "))));
        }
        let reply: Reply =
            serde_json::from_str(&stdout).map_err(|e| failed(format!("its reply is not credentials JSON: {e}")))?;
        Ok(if reply.username == TOKEN_USERNAME {
            HelperCredentials::IdentityToken(reply.secret)
        } else {
            HelperCredentials::Basic { username: reply.username, secret: reply.secret }
        })
    }
}
