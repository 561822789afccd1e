use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use memobuild_proto::{Error, Result};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::QueryBuilder;

/// The most parameters one statement of the bundled SQLite may bind
/// (`SQLITE_MAX_VARIABLE_NUMBER`, the default since SQLite 3.32): multi-row
/// statements are split to stay under it.
const SQLITE_MAX_PARAMETERS: usize = 32_766;

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

/// Writes `rows` with one multi-row statement per chunk, each made by
/// `statement` from at most [`SQLITE_MAX_PARAMETERS`] / `columns` rows. One
/// statement runs alone (it is atomic by itself, and each statement of a
/// transaction is a round trip to the connection's thread); several run in
/// one transaction.
pub async fn execute_chunked<'a, T>(
    pool: &SqlitePool,
    rows: &'a [T],
    columns: usize,
    statement: impl Fn(&'a [T]) -> QueryBuilder<'a, Sqlite>,
) -> std::result::Result<(), sqlx::Error> {
    let mut chunks = rows.chunks((SQLITE_MAX_PARAMETERS / columns.max(1)).max(1));
    if chunks.len() <= 1 {
        if let Some(chunk) = chunks.next() {
            statement(chunk).build().execute(pool).await?;
        }
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    for chunk in chunks {
        statement(chunk).build().execute(&mut *tx).await?;
    }
    tx.commit().await
}
