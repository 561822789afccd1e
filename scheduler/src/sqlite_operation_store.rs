use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use memobuild_proto::{Error, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::Row;

use crate::operation_record::{OperationRecord, COLUMNS, UPSERT};
use crate::operation_store::{bind_columns, db_error, row_columns, OperationStore};

/// [`OperationStore`] in SQLite, for the embedded scheduler.
pub struct SqliteOperationStore {
    pool: SqlitePool,
}

impl SqliteOperationStore {
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(db_error("parsing the path"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(|e| Error::unavailable(format!("opening operation store {}: {e}", path.display())))?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| Error::internal(format!("migrating operation store {}: {e}", path.display())))?;
        Ok(SqliteOperationStore { pool })
    }
}

/// SQLite numbers its parameters `?n`.
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

#[async_trait]
impl OperationStore for SqliteOperationStore {
    async fn save(&self, records: &[OperationRecord]) -> Result<()> {
        let sql = sqlite_sql(UPSERT);
        let mut tx = self.pool.begin().await.map_err(db_error("starting a transaction"))?;
        for record in records {
            let c = record.to_columns();
            bind_columns!(sqlx::query(&sql), c).execute(&mut *tx).await.map_err(db_error("saving an operation"))?;
        }
        tx.commit().await.map_err(db_error("committing operations"))
    }

    async fn delete(&self, names: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error("starting a transaction"))?;
        for name in names {
            sqlx::query("DELETE FROM operations WHERE name = ?1")
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db_error("deleting an operation"))?;
        }
        tx.commit().await.map_err(db_error("committing deletions"))
    }

    async fn load(&self) -> Result<Vec<OperationRecord>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM operations ORDER BY queued_at_ms"))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("loading operations"))?;
        rows.iter()
            .map(|row| {
                let columns = (|| -> Result<_, sqlx::Error> { Ok(row_columns!(row)) })()
                    .map_err(db_error("reading an operation"))?;
                OperationRecord::from_columns(columns)
            })
            .collect()
    }

    async fn delete_completed_before(&self, ms: i64) -> Result<u64> {
        let done = crate::operation_record::Stage::Completed.to_proto() as i64;
        let result = sqlx::query("DELETE FROM operations WHERE stage = ?1 AND updated_at_ms < ?2")
            .bind(done)
            .bind(ms)
            .execute(&self.pool)
            .await
            .map_err(db_error("expiring operations"))?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteOperationStore::open(&dir.path().join("ops.db")).await.unwrap();
        crate::operation_store_tests::run(&store).await;
    }
}
