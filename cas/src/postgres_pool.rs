use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::time::Duration;

use memobuild_proto::{Error, Result};

/// Connects to PostgreSQL at `url`. With `schema`, every connection works in
/// that schema (created if needed), so several stores or test runs can share
/// one database. `what` names the database in errors.
pub async fn connect_postgres(url: &str, schema: Option<&str>, max_connections: u32, what: &str) -> Result<PgPool> {
    let mut options: PgConnectOptions =
        url.parse().map_err(|e| Error::invalid_argument(format!("{what}: PostgreSQL URL: {e}")))?;
    let connect = |options: PgConnectOptions, max: u32| async move {
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| Error::unavailable(format!("{what}: connecting to PostgreSQL: {e}")))
    };
    if let Some(schema) = schema {
        if schema.is_empty() || !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::invalid_argument(format!("{what}: schema name {schema:?}: use letters, digits and _")));
        }
        options = options.options([("search_path", schema)]);
        let bootstrap = connect(options.clone(), 1).await?;
        create_schema(&bootstrap, schema)
            .await
            .map_err(|e| Error::unavailable(format!("{what}: creating schema {schema}: {e}")))?;
        bootstrap.close().await;
    }
    connect(options, max_connections).await
}

/// `CREATE SCHEMA IF NOT EXISTS` is not safe against itself: two replicas
/// starting together both see no schema and one fails on the catalog's
/// unique index. One at a time, under a transaction advisory lock.
async fn create_schema(pool: &PgPool, schema: &str) -> std::result::Result<(), sqlx::Error> {
    let mut transaction = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("memobuild create schema {schema}"))
        .execute(&mut *transaction)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).execute(&mut *transaction).await?;
    transaction.commit().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_services;

    /// Replicas starting at once on a new schema all connect.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_connects_create_the_schema_once() {
        let url = test_services::postgres_url();
        let schema = test_services::unique("pool_test_");
        let connects = (0..8).map(|_| connect_postgres(&url, Some(&schema), 1, "test"));
        for pool in futures::future::join_all(connects).await {
            pool.unwrap().close().await;
        }
        let pool = connect_postgres(&url, None, 1, "cleanup").await.unwrap();
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap();
    }
}
