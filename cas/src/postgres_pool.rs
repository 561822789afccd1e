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
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&bootstrap)
            .await
            .map_err(|e| Error::unavailable(format!("{what}: creating schema {schema}: {e}")))?;
        bootstrap.close().await;
    }
    connect(options, max_connections).await
}
