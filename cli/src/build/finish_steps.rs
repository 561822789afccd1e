//! Finishing the cleanup of RUN steps in a process of its own, so that
//! `memobuild build` exits without waiting for containerd to delete the
//! last steps' tasks (tens of milliseconds each): the build hands what is
//! left to `memobuild finish-steps`, and does not wait for it.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use memobuild_worker::containerd::StepRemains;
use tokio::io::AsyncReadExt;

use super::anyhow_of;

/// The hidden command that finishes them.
pub const FINISH_STEPS: &str = "finish-steps";

/// Starts `memobuild finish-steps` for `remains` on the containerd at
/// `address`, its log in `log`, and returns without waiting for it; when
/// it cannot start, finishes them here.
pub async fn hand_over(address: &Path, remains: Vec<StepRemains>, log: &Path) {
    if let Err(e) = spawn(address, &remains, log) {
        tracing::debug!(error = %e, "finishing the steps' cleanup in this process");
        if let Err(e) = StepRemains::finish(address, remains).await {
            tracing::warn!(error = %e, "cleaning up after the build's steps");
        }
    }
}

fn spawn(address: &Path, remains: &[StepRemains], log: &Path) -> std::io::Result<()> {
    let input = serde_json::to_vec(remains)?;
    let log = std::fs::File::create(log)?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg(FINISH_STEPS)
        .arg("--containerd-address")
        .arg(address)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log)
        // Apart from the terminal's Ctrl-C.
        .process_group(0)
        .spawn()?;
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(&input),
        None => Err(std::io::Error::other("no stdin for memobuild finish-steps")),
    };
    // Reaped here should this process outlive it.
    std::thread::spawn(move || child.wait());
    written
}

/// `memobuild finish-steps`: finishes the steps whose remains (JSON) come
/// on stdin.
pub async fn finish_steps(address: &Path) -> anyhow::Result<()> {
    let mut input = Vec::new();
    tokio::io::stdin().read_to_end(&mut input).await?;
    let remains: Vec<StepRemains> = serde_json::from_slice(&input)?;
    StepRemains::finish(address, remains).await.map_err(anyhow_of)
}
