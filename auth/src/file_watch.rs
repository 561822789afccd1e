//! Files a server reads again when they change: the principals file, the
//! TLS certificate, key and client CA.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often watched files are looked at: a revoked token or a renewed
/// certificate takes effect within about this long.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Calls `reload` with the contents of `paths`, in order, every time one of
/// them has changed, for as long as `owner` lives. A file that cannot be
/// read, or contents `reload` refuses, are logged naming `what`, and the
/// owner keeps what it had; the same contents are not offered twice.
/// `reload` answers with a short summary of what it loaded, for the log.
pub fn watch_files<T: Send + Sync + 'static>(
    owner: &Arc<T>,
    paths: Vec<PathBuf>,
    what: &'static str,
    reload: impl Fn(&T, &[Vec<u8>]) -> Result<String, String> + Send + 'static,
) {
    let weak: Weak<T> = Arc::downgrade(owner);
    tokio::spawn(async move {
        let mut last = read_all(&paths).await.ok();
        loop {
            tokio::time::sleep(RELOAD_INTERVAL).await;
            let Some(owner) = weak.upgrade() else { return };
            let contents = match read_all(&paths).await {
                Ok(contents) => contents,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the {what}; keeping the previous one");
                    continue;
                }
            };
            if last.as_ref() == Some(&contents) {
                continue;
            }
            match reload(&owner, &contents) {
                Ok(summary) => tracing::info!(files = ?paths, "{what} reloaded: {summary}"),
                Err(e) => {
                    tracing::error!(files = ?paths, error = %e, "the {what} was not reloaded; keeping the previous one")
                }
            }
            last = Some(contents);
        }
    });
}

async fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, String> {
    let mut contents = Vec::with_capacity(paths.len());
    for path in paths {
        contents.push(tokio::fs::read(path).await.map_err(|e| format!("reading {}: {e}", path.display()))?);
    }
    Ok(contents)
}
