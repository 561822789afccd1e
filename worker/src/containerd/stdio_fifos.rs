use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use memobuild_proto::{Error, Result, ResultExt};
use nix::sys::stat::Mode;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use super::LogChunk;

/// The FIFOs a task writes its stdout and stderr to, and the tasks that
/// forward what arrives to the step's log channel as it comes.
///
/// The read ends are open (non-blocking) before the task is created, and
/// this side holds a write end of each too until [`StdioFifos::finish`], so
/// the readers see end-of-file only once the task's side closed as well.
pub(super) struct StdioFifos {
    dir: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    keep_open: Vec<pipe::Sender>,
    pumps: Vec<JoinHandle<()>>,
}

impl StdioFifos {
    pub(super) fn create(container_id: &str, logs: UnboundedSender<LogChunk>) -> Result<StdioFifos> {
        let dir = std::env::temp_dir().join(format!("memobuild-io-{container_id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating FIFO directory {}", dir.display()))?;
        let mut fifos = StdioFifos {
            stdout: dir.join("stdout"),
            stderr: dir.join("stderr"),
            dir,
            keep_open: Vec::new(),
            pumps: Vec::new(),
        };
        for (path, is_stdout) in [(fifos.stdout.clone(), true), (fifos.stderr.clone(), false)] {
            nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
                .map_err(|e| Error::internal(format!("creating FIFO {}: {e}", path.display())))?;
            let receiver = pipe::OpenOptions::new()
                .open_receiver(&path)
                .with_context(|| format!("opening FIFO {} for reading", path.display()))?;
            let sender = pipe::OpenOptions::new()
                .open_sender(&path)
                .with_context(|| format!("opening FIFO {} for writing", path.display()))?;
            fifos.keep_open.push(sender);
            fifos.pumps.push(tokio::spawn(pump(receiver, logs.clone(), is_stdout)));
        }
        Ok(fifos)
    }

    pub(super) fn stdout(&self) -> &Path {
        &self.stdout
    }

    pub(super) fn stderr(&self) -> &Path {
        &self.stderr
    }

    /// Lets the readers reach end-of-file and waits up to `grace` for them
    /// to forward the rest; after that, output still unread is dropped.
    pub(super) async fn finish(&mut self, grace: Duration) {
        self.keep_open.clear();
        let pumps = std::mem::take(&mut self.pumps);
        let aborts: Vec<_> = pumps.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(grace, futures::future::join_all(pumps)).await.is_err() {
            tracing::warn!(dir = %self.dir.display(), "step output did not end; dropping the rest");
            aborts.iter().for_each(|a| a.abort());
        }
    }
}

impl Drop for StdioFifos {
    fn drop(&mut self) {
        self.pumps.iter().for_each(JoinHandle::abort);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn pump(mut receiver: pipe::Receiver, logs: UnboundedSender<LogChunk>, is_stdout: bool) {
    loop {
        let mut buf = BytesMut::with_capacity(32 * 1024);
        match receiver.read_buf(&mut buf).await {
            Ok(0) => break,
            Ok(_) => {
                let chunk: Bytes = buf.freeze();
                let chunk = if is_stdout { LogChunk::Stdout(chunk) } else { LogChunk::Stderr(chunk) };
                // A caller that stopped listening does not stop the step.
                let _ = logs.send(chunk);
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading step output");
                break;
            }
        }
    }
}
