//! Finishing a build's cleanup in a process of its own, so that `memobuild
//! build` exits without waiting for containerd to delete its last RUN
//! steps' tasks, nor for its default network's bridge to be removed (tens
//! of milliseconds each): the build hands them to `memobuild finish-steps`,
//! and does not wait for it.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use memobuild_worker::steps::Leftovers;
use tokio::io::AsyncReadExt;

use super::anyhow_of;

/// The hidden command that finishes them.
pub const FINISH_STEPS: &str = "finish-steps";

/// Starts `memobuild finish-steps` for `leftovers`, its log in `log`, and
/// returns without waiting for it; when it cannot start, finishes them
/// here.
pub async fn hand_over(mut leftovers: Leftovers, log: &Path) {
    let started = spawn(log).map_err(|e| e.to_string());
    let sent = match started {
        Ok(mut child) => {
            leftovers.hand_to(child.id()).await;
            let sent = send(&mut child, &leftovers);
            // Reaped here should this process outlive it.
            std::thread::spawn(move || child.wait());
            sent
        }
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "finishing the build's cleanup in this process");
        if let Err(e) = leftovers.finish().await {
            tracing::warn!(error = %e, "cleaning up after the build's steps");
        }
    }
}

fn spawn(log: &Path) -> std::io::Result<Child> {
    let log = std::fs::File::create(log)?;
    Command::new(std::env::current_exe()?)
        .arg(FINISH_STEPS)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log)
        // Apart from the terminal's Ctrl-C.
        .process_group(0)
        .spawn()
}

fn send(child: &mut Child, leftovers: &Leftovers) -> Result<(), String> {
    let input = serde_json::to_vec(leftovers).map_err(|e| e.to_string())?;
    let mut stdin = child.stdin.take().ok_or("no stdin for memobuild finish-steps")?;
    stdin.write_all(&input).map_err(|e| e.to_string())
}

/// `memobuild finish-steps`: removes what a build left (JSON on stdin).
pub async fn finish_steps() -> anyhow::Result<()> {
    let mut input = Vec::new();
    tokio::io::stdin().read_to_end(&mut input).await?;
    let leftovers: Leftovers = serde_json::from_slice(&input)?;
    leftovers.finish().await.map_err(anyhow_of)
}
