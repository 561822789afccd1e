//! `--load`: the image goes into Docker as a docker archive piped to
//! `docker load`; the docker CLI talks to the daemon.

use std::path::Path;
use std::process::{Output, Stdio};

use memobuild_proto::{Error, Result, ResultExt};

/// What to do when Docker is not there.
const INSTEAD: &str =
    "to get the image as a file instead, use --output type=docker,dest=FILE (then `docker load -i FILE`)";

/// Checks, before building, that the docker CLI is installed and reaches
/// its daemon.
pub async fn check_docker() -> Result<()> {
    docker(&["version", "--format", "{{.Server.Version}}"], Stdio::null()).await.map(|_| ())
}

/// Pipes the docker archive at `archive` into `docker load`; returns what
/// docker said (`Loaded image: ...`).
pub async fn docker_load(archive: &Path) -> Result<String> {
    let file = std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let output = docker(&["load"], Stdio::from(file)).await?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

async fn docker(args: &[&str], stdin: Stdio) -> Result<Output> {
    let what = format!("docker {}", args.first().copied().unwrap_or_default());
    let output = tokio::process::Command::new("docker").args(args).stdin(stdin).output().await.map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "the docker CLI is not installed (no `docker` on PATH)".to_string(),
            _ => format!("cannot run {what}: {e}"),
        };
        Error::unavailable(format!("--load: {why}; {INSTEAD}"))
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(Error::unavailable(format!(
            "--load: {what} failed, is the Docker daemon running and reachable? ({}); {INSTEAD}",
            stderr.trim()
        )));
    }
    Ok(output)
}
