use async_trait::async_trait;
use memobuild_proto::Result;
use sqlx::postgres::PgPool;
use sqlx::Row;

use crate::operation_record::{OperationRecord, EXPIRE, LOAD, UPSERT};
use crate::operation_store::{bind_columns, db_error, records_from_rows, row_columns, OperationStore};
use crate::state_db::connect_postgres;

/// [`OperationStore`] in PostgreSQL, for a cluster's scheduler.
pub struct PostgresOperationStore {
    pool: PgPool,
}

impl PostgresOperationStore {
    /// Connects to `url` (`postgres://...`) and migrates. With `schema`, the
    /// tables live in that schema (created if needed), so several schedulers
    /// or test runs can share one database.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self> {
        Ok(PostgresOperationStore { pool: connect_postgres(url, schema, "operation store").await? })
    }
}

#[async_trait]
impl OperationStore for PostgresOperationStore {
    async fn save(&self, records: &[OperationRecord]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error("starting a transaction"))?;
        for record in records {
            let c = record.to_columns();
            bind_columns!(sqlx::query(UPSERT), c).execute(&mut *tx).await.map_err(db_error("saving an operation"))?;
        }
        tx.commit().await.map_err(db_error("committing operations"))
    }

    async fn delete(&self, names: &[String]) -> Result<()> {
        sqlx::query("DELETE FROM operations WHERE name = ANY($1)")
            .bind(names)
            .execute(&self.pool)
            .await
            .map_err(db_error("deleting operations"))?;
        Ok(())
    }

    async fn load(&self) -> Result<Vec<OperationRecord>> {
        let rows = sqlx::query(LOAD).fetch_all(&self.pool).await.map_err(db_error("loading operations"))?;
        records_from_rows!(rows)
    }

    async fn delete_completed_before(&self, ms: i64) -> Result<u64> {
        let done = crate::operation_record::Stage::Completed.to_proto() as i64;
        let result = sqlx::query(EXPIRE)
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

    /// Runs against the real PostgreSQL the test command starts
    /// (`MEMOBUILD_TEST_POSTGRES`, default `postgres://postgres:postgres@127.0.0.1:5432/test`),
    /// in a schema of its own.
    #[tokio::test]
    async fn conformance_against_real_postgres() {
        let url = std::env::var("MEMOBUILD_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".to_string());
        let schema = format!("ops_test_{}", uuid::Uuid::new_v4().simple());
        let store = PostgresOperationStore::connect(&url, Some(&schema)).await.unwrap();
        crate::operation_store_tests::run(&store).await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&store.pool).await.unwrap();
    }
}
