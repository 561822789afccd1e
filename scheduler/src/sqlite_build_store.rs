use std::path::Path;

use async_trait::async_trait;
use memobuild_proto::Result;
use sqlx::sqlite::SqlitePool;

use crate::build_record::{BuildState, StoredBuild};
use crate::build_store::{
    already_exists, build_from_row, check_finish, db_error, event_from_row, not_found, row_limit, stored_sequence,
    BuildStore, BUILD_EXISTS, EVENTS_AFTER, EXPIRE_BUILDS, EXPIRE_EVENTS, FINISH, GET, INSERT_BUILD, INSERT_EVENT,
    LIST, UNFINISHED,
};
use crate::state_db::{open_sqlite, sqlite_sql};

/// [`BuildStore`] in SQLite, for the embedded scheduler. It may share its
/// file with the [`crate::SqliteOperationStore`].
pub struct SqliteBuildStore {
    pool: SqlitePool,
}

impl SqliteBuildStore {
    pub async fn open(path: &Path) -> Result<Self> {
        Ok(SqliteBuildStore { pool: open_sqlite(path, "build store").await? })
    }
}

#[async_trait]
impl BuildStore for SqliteBuildStore {
    async fn create(&self, build: &StoredBuild) -> Result<()> {
        let result = sqlx::query(&sqlite_sql(INSERT_BUILD))
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
        let exists = sqlx::query(&sqlite_sql(BUILD_EXISTS))
            .bind(build_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error(what()))?;
        if exists.is_none() {
            return Err(not_found(build_id));
        }
        let sql = sqlite_sql(INSERT_EVENT);
        for (sequence, event) in events {
            sqlx::query(&sql)
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
        let rows = sqlx::query(&sqlite_sql(EVENTS_AFTER))
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
        let result = sqlx::query(&sqlite_sql(FINISH))
            .bind(build_id)
            .bind(state.as_str())
            .bind(finished_ms)
            .bind(message)
            .bind(BuildState::Running.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_error(what()))?;
        if result.rows_affected() == 0 {
            let exists = sqlx::query(&sqlite_sql(BUILD_EXISTS))
                .bind(build_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error(what()))?;
            if exists.is_none() {
                return Err(not_found(build_id));
            }
        }
        tx.commit().await.map_err(db_error(what()))
    }

    async fn get(&self, build_id: &str) -> Result<Option<StoredBuild>> {
        let row = sqlx::query(&sqlite_sql(GET))
            .bind(build_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error(format!("reading build {build_id}")))?;
        row.map(|row| build_from_row(&row, true)).transpose()
    }

    async fn list(&self, instance_name: &str, limit: usize) -> Result<Vec<StoredBuild>> {
        let rows = sqlx::query(&sqlite_sql(LIST))
            .bind(instance_name)
            .bind(row_limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error(format!("listing the builds of instance {instance_name:?}")))?;
        rows.iter().map(|row| build_from_row(row, false)).collect()
    }

    async fn unfinished(&self) -> Result<Vec<StoredBuild>> {
        let rows = sqlx::query(&sqlite_sql(UNFINISHED))
            .bind(BuildState::Running.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("listing running builds"))?;
        rows.iter().map(|row| build_from_row(row, true)).collect()
    }

    async fn delete_finished_before(&self, ms: i64) -> Result<u64> {
        let what = || format!("deleting builds finished before {ms} ms");
        let mut tx = self.pool.begin().await.map_err(db_error(what()))?;
        sqlx::query(&sqlite_sql(EXPIRE_EVENTS)).bind(ms).execute(&mut *tx).await.map_err(db_error(what()))?;
        let result =
            sqlx::query(&sqlite_sql(EXPIRE_BUILDS)).bind(ms).execute(&mut *tx).await.map_err(db_error(what()))?;
        tx.commit().await.map_err(db_error(what()))?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteBuildStore::open(&dir.path().join("builds.db")).await.unwrap();
        crate::build_store_tests::run(&store).await;
    }

    /// The embedded scheduler keeps operations and builds in one file; each
    /// store finds the other's migrations applied.
    #[tokio::test]
    async fn shares_a_file_with_the_operation_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler.db");
        let builds = SqliteBuildStore::open(&path).await.unwrap();
        let operations = crate::SqliteOperationStore::open(&path).await.unwrap();
        crate::build_store_tests::run(&builds).await;
        crate::operation_store_tests::run(&operations).await;
    }
}
