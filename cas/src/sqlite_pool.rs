use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use memobuild_proto::{Error, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

/// Opens (creating if needed) a SQLite database for embedded state: WAL
/// journal, normal sync, and a busy timeout so several processes can share it.
/// Connections are not pinged when taken from the pool: a file does not drop
/// a connection, and each ping is a round trip to the connection's thread.
/// `what` names the database in errors.
pub async fn open_sqlite(path: &Path, max_connections: u32, what: &str) -> Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .map_err(|e| Error::invalid_argument(format!("{what} {}: {e}", path.display())))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(max_connections)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .map_err(|e| Error::unavailable(format!("opening {what} {}: {e}", path.display())))
}
