use async_trait::async_trait;
use memobuild_proto::Result;
use sqlx::postgres::PgPool;

use crate::build_record::{BuildState, StoredBuild};
use crate::build_store::{
    already_exists, build_from_row, check_finish, db_error, event_from_row, not_found, row_limit, stored_sequence,
    BuildStore, BUILD_EXISTS, EVENTS_AFTER, EXPIRE_BUILDS, EXPIRE_EVENTS, FINISH, GET, INSERT_BUILD, INSERT_EVENT,
    LIST, UNFINISHED,
};
use crate::state_db::connect_postgres;

/// [`BuildStore`] in PostgreSQL, for a cluster's scheduler. It may share its
/// schema with the [`crate::PostgresOperationStore`].
pub struct PostgresBuildStore {
    pool: PgPool,
}

impl PostgresBuildStore {
    /// Connects to `url` (`postgres://...`) and migrates. With `schema`, the
    /// tables live in that schema (created if needed).
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self> {
        Ok(PostgresBuildStore { pool: connect_postgres(url, schema, "build store").await? })
    }
}

#[async_trait]
impl BuildStore for PostgresBuildStore {
    async fn create(&self, build: &StoredBuild) -> Result<()> {
        let result = sqlx::query(INSERT_BUILD)
            .bind(&build.id)
            .bind(&build.instance_name)
            .bind(&build.dockerfile_name)
            .bind(&build.target)
            .bind(build.state.as_str())
            .bind(build.created_ms)
            .bind(build.finished_ms)
            .bind(&build.message)
            .bind(&build.request)
            .execute(&self.pool)
            .await
            .map_err(db_error(format!("creating build {}", build.id)))?;
        if result.rows_affected() == 0 {
            return Err(already_exists(&build.id));
        }
        Ok(())
    }

    async fn append_events(&self, build_id: &str, events: &[(u64, Vec<u8>)]) -> Result<()> {
        let what = || format!("appending events to build {build_id}");
        let mut tx = self.pool.begin().await.map_err(db_error(what()))?;
        let exists =
            sqlx::query(BUILD_EXISTS).bind(build_id).fetch_optional(&mut *tx).await.map_err(db_error(what()))?;
        if exists.is_none() {
            return Err(not_found(build_id));
        }
        for (sequence, event) in events {
            sqlx::query(INSERT_EVENT)
                .bind(build_id)
                .bind(stored_sequence(build_id, *sequence)?)
                .bind(event)
                .execute(&mut *tx)
                .await
                .map_err(db_error(what()))?;
        }
        tx.commit().await.map_err(db_error(what()))
    }

    async fn events_after(&self, build_id: &str, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let rows = sqlx::query(EVENTS_AFTER)
            .bind(build_id)
            .bind(i64::try_from(after).unwrap_or(i64::MAX))
            .bind(row_limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error(format!("reading events of build {build_id}")))?;
        rows.iter().map(|row| event_from_row(build_id, row)).collect()
    }

    async fn finish(&self, build_id: &str, state: BuildState, finished_ms: i64, message: &str) -> Result<()> {
        check_finish(build_id, state)?;
        let what = || format!("finishing build {build_id}");
        let mut tx = self.pool.begin().await.map_err(db_error(what()))?;
        let result = sqlx::query(FINISH)
            .bind(build_id)
            .bind(state.as_str())
            .bind(finished_ms)
            .bind(message)
            .bind(BuildState::Running.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_error(what()))?;
        if result.rows_affected() == 0 {
            let exists =
                sqlx::query(BUILD_EXISTS).bind(build_id).fetch_optional(&mut *tx).await.map_err(db_error(what()))?;
            if exists.is_none() {
                return Err(not_found(build_id));
            }
        }
        tx.commit().await.map_err(db_error(what()))
    }

    async fn get(&self, build_id: &str) -> Result<Option<StoredBuild>> {
        let row = sqlx::query(GET)
            .bind(build_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error(format!("reading build {build_id}")))?;
        row.map(|row| build_from_row(&row, true)).transpose()
    }

    async fn list(&self, instance_name: &str, limit: usize) -> Result<Vec<StoredBuild>> {
        let rows = sqlx::query(LIST)
            .bind(instance_name)
            .bind(row_limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error(format!("listing the builds of instance {instance_name:?}")))?;
        rows.iter().map(|row| build_from_row(row, false)).collect()
    }

    async fn unfinished(&self) -> Result<Vec<StoredBuild>> {
        let rows = sqlx::query(UNFINISHED)
            .bind(BuildState::Running.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("listing running builds"))?;
        rows.iter().map(|row| build_from_row(row, true)).collect()
    }

    async fn delete_finished_before(&self, ms: i64) -> Result<u64> {
        let what = || format!("deleting builds finished before {ms} ms");
        let mut tx = self.pool.begin().await.map_err(db_error(what()))?;
        sqlx::query(EXPIRE_EVENTS).bind(ms).execute(&mut *tx).await.map_err(db_error(what()))?;
        let result = sqlx::query(EXPIRE_BUILDS).bind(ms).execute(&mut *tx).await.map_err(db_error(what()))?;
        tx.commit().await.map_err(db_error(what()))?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against the real PostgreSQL the test command starts
    /// (`MEMOBUILD_TEST_POSTGRES`, default `postgres://postgres:postgres@127.0.0.1:5432/test`),
    /// in a schema of its own, shared with an operation store as in a cluster.
    #[tokio::test]
    async fn conformance_against_real_postgres() {
        let url = std::env::var("MEMOBUILD_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".to_string());
        let schema = format!("builds_test_{}", uuid::Uuid::new_v4().simple());
        let store = PostgresBuildStore::connect(&url, Some(&schema)).await.unwrap();
        let operations = crate::PostgresOperationStore::connect(&url, Some(&schema)).await.unwrap();
        crate::build_store_tests::run(&store).await;
        crate::operation_store_tests::run(&operations).await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&store.pool).await.unwrap();
    }
}
