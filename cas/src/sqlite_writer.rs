use memobuild_proto::{Error, Result};
use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePool};
use sqlx::{ConnectOptions, Connection, QueryBuilder};

/// The most parameters one statement of the bundled SQLite may bind
/// (`SQLITE_MAX_VARIABLE_NUMBER`, the default since SQLite 3.32): multi-row
/// statements are split to stay under it.
const SQLITE_MAX_PARAMETERS: usize = 32_766;

/// A connection of its own for the small writes a store makes all the time
/// (pins, operation saves), which queue for it. Each statement on it is one
/// round trip to the connection's thread; through the pool, each also paid
/// for a ping when its connection went back (sqlx tests every connection
/// returned to a pool).
pub struct SqliteWriter {
    connection: tokio::sync::Mutex<SqliteConnection>,
}

impl SqliteWriter {
    /// A connection to the database of `pool`, with its options, for this
    /// writer alone. `what` names the database in errors.
    pub async fn open(pool: &SqlitePool, what: &str) -> Result<Self> {
        let connection = pool
            .connect_options()
            .connect()
            .await
            .map_err(|e| Error::unavailable(format!("opening a writer on {what}: {e}")))?;
        Ok(SqliteWriter { connection: tokio::sync::Mutex::new(connection) })
    }

    /// Writes `rows` with one multi-row statement per chunk, each made by
    /// `statement` from at most [`SQLITE_MAX_PARAMETERS`] / `columns` rows.
    /// One statement runs alone (it is atomic by itself, and each statement
    /// of a transaction is a round trip); several run in one transaction.
    pub async fn execute_chunked<'a, T>(
        &self,
        rows: &'a [T],
        columns: usize,
        statement: impl Fn(&'a [T]) -> QueryBuilder<'a, Sqlite>,
    ) -> std::result::Result<(), sqlx::Error> {
        let mut chunks = rows.chunks((SQLITE_MAX_PARAMETERS / columns.max(1)).max(1));
        let mut connection = self.connection.lock().await;
        if chunks.len() <= 1 {
            if let Some(chunk) = chunks.next() {
                statement(chunk).build().execute(&mut *connection).await?;
            }
            return Ok(());
        }
        let mut tx = connection.begin().await?;
        for chunk in chunks {
            statement(chunk).build().execute(&mut *tx).await?;
        }
        tx.commit().await
    }
}
