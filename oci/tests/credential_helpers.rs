//! Registry credentials from Docker credential helpers (`credsStore`,
//! `credHelpers`), against a real registry with basic auth. The helpers are
//! shell scripts on PATH and the config is found through DOCKER_CONFIG, as
//! for a user; both are process-wide, so this binary holds one test, which
//! sets them before anything else runs.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{busybox_layout, require, run, store, Registry, HTPASSWD};
use memobuild_oci::{ImageReference, RegistryClient};
use tonic::Code;

/// Answers from `creds/<server address>` next to it, or says it has none;
/// logs each server address it is asked for to `asked`.
const MEMOTEST: &str = r#"#!/bin/sh
[ "$1" = get ] || { echo "unsupported action $1" >&2; exit 1; }
dir=$(dirname "$0")
read -r server
echo "$server" >> "$dir/asked"
if [ -f "$dir/creds/$server" ]; then cat "$dir/creds/$server"; else echo "credentials not found in native keychain"; exit 1; fi
"#;

const BROKEN: &str = "#!/bin/sh\necho 'keychain is locked' >&2\nexit 3\n";

fn write_script(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn credential_helpers_as_docker_uses_them() {
    require(&["docker-registry", "umoci", "skopeo"]);
    let dir = tempfile::tempdir().unwrap();
    let helpers = dir.path().join("helpers");
    let docker_config = dir.path().join("docker");
    std::fs::create_dir_all(helpers.join("creds")).unwrap();
    std::fs::create_dir_all(&docker_config).unwrap();
    write_script(&helpers, "docker-credential-memotest", MEMOTEST);
    write_script(&helpers, "docker-credential-broken", BROKEN);
    let path = format!("{}:{}", helpers.display(), std::env::var("PATH").unwrap_or_default());
    // The only test of this binary, before any thread reads the environment.
    std::env::set_var("PATH", path);
    std::env::set_var("DOCKER_CONFIG", &docker_config);

    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, HTPASSWD).unwrap();
    let registry = Registry::start(Some(&htpasswd));
    let host = registry.host();
    let layout = busybox_layout(dir.path());
    let base_name = format!("{host}/base/busybox:1");
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", "--dest-creds", "alice:s3cret"])
        .arg(format!("oci:{}:busybox", layout.display()))
        .arg(format!("docker://{base_name}")));
    let base: ImageReference = base_name.parse().unwrap();
    let app: ImageReference = format!("{host}/app/hello:v1").parse().unwrap();

    let config = |json: serde_json::Value| {
        std::fs::write(docker_config.join("config.json"), json.to_string()).unwrap();
        RegistryClient::from_docker_config().unwrap()
    };
    let creds = helpers.join("creds").join(&host);
    let wrong_auth = serde_json::json!({host.clone(): {"username": "alice", "password": "wrong"}});
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = store();
        let image = common::hello_image(&store).await;

        // credsStore gives the registry's credentials: pull and push work,
        // and the helper was asked for this registry.
        std::fs::write(&creds, format!(r#"{{"ServerURL":"{host}","Username":"alice","Secret":"s3cret"}}"#)).unwrap();
        let client = config(serde_json::json!({"credsStore": "memotest", "auths": wrong_auth.clone()}));
        assert_eq!(client.pull(&base, "linux/amd64", &store).await.unwrap().layers.len(), 1);
        let digest = client.push(&image, &app, &store).await.unwrap();
        assert_eq!(digest, image.manifest_digest());
        let asked = std::fs::read_to_string(helpers.join("asked")).unwrap();
        assert!(asked.lines().all(|l| l == host), "{asked}");

        // credHelpers wins over auths.
        let client = config(serde_json::json!({"credHelpers": {host.clone(): "memotest"}, "auths": wrong_auth}));
        assert!(client.pull(&base, "linux/amd64", &store).await.is_ok());

        // A helper without credentials for the registry: anonymous, refused.
        std::fs::remove_file(&creds).unwrap();
        let client = config(serde_json::json!({"credsStore": "memotest"}));
        let err = client.pull(&base, "linux/amd64", &store).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");
        assert!(err.message().contains(&base_name), "{err}");

        // An identity token cannot be used: anonymous, refused.
        std::fs::write(&creds, r#"{"Username":"<token>","Secret":"refresh-me"}"#).unwrap();
        let err = client.pull(&base, "linux/amd64", &store).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");

        // A failing helper (credHelpers wins over credsStore) and a missing
        // one: errors naming the helper, the registry and what it said.
        let client = config(serde_json::json!({"credsStore": "memotest", "credHelpers": {host.clone(): "broken"}}));
        let err = client.push(&image, &app, &store).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
        for part in ["docker-credential-broken", host.as_str(), "keychain is locked"] {
            assert!(err.message().contains(part), "{part}: {err}");
        }
        let client = config(serde_json::json!({"credHelpers": {host.clone(): "absent"}}));
        let err = client.pull(&base, "linux/amd64", &store).await.unwrap_err();
        for part in ["docker-credential-absent", host.as_str(), "not found on PATH", &base_name] {
            assert!(err.message().contains(part), "{part}: {err}");
        }
    });
}
