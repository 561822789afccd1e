use std::path::Path;

use async_trait::async_trait;
use memobuild_cas::SqliteWriter;
use memobuild_proto::Result;
use sqlx::sqlite::{Sqlite, SqlitePool};
use sqlx::{QueryBuilder, Row};

use crate::operation_record::{OperationRecord, COLUMNS, EXPIRE, INSERT_OPERATIONS, LOAD, UPDATE_OPERATIONS};
use crate::operation_store::{bind_columns, db_error, records_from_rows, row_columns, OperationStore};
use crate::state_db::{open_sqlite, sqlite_sql};

/// One statement saving `records`.
fn upsert<'a>(records: &'a [OperationRecord]) -> QueryBuilder<'a, Sqlite> {
    let mut query = QueryBuilder::new(INSERT_OPERATIONS);
    query.push_values(records.iter().map(OperationRecord::to_columns), |mut row, c| {
        bind_columns!(row, c, push_bind);
    });
    query.push(UPDATE_OPERATIONS);
    query
}

/// [`OperationStore`] in SQLite, for the embedded scheduler.
pub struct SqliteOperationStore {
    pool: SqlitePool,
    /// Saves, written several times per action.
    writer: SqliteWriter,
}

impl SqliteOperationStore {
    pub async fn open(path: &Path) -> Result<Self> {
        let pool = open_sqlite(path, "operation store").await?;
        let writer = SqliteWriter::open(&pool, "operation store").await?;
        Ok(SqliteOperationStore { pool, writer })
    }
}

#[async_trait]
impl OperationStore for SqliteOperationStore {
    async fn save(&self, records: &[OperationRecord]) -> Result<()> {
        self.writer.execute_chunked(records, COLUMNS, upsert).await.map_err(db_error("saving operations"))
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
        let rows = sqlx::query(LOAD).fetch_all(&self.pool).await.map_err(db_error("loading operations"))?;
        records_from_rows!(rows)
    }

    async fn delete_completed_before(&self, ms: i64) -> Result<u64> {
        let done = crate::operation_record::Stage::Completed.to_proto() as i64;
        let result = sqlx::query(&sqlite_sql(EXPIRE))
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
