//! The scheduler's databases: SQLite embedded, PostgreSQL in a cluster. Both
//! the operation store and the build store open them here, migrated; they may
//! share one file or one schema.

use std::path::Path;

use memobuild_cas::SchemaMigrations;
use memobuild_proto::Result;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

/// The scheduler's tables (operations, builds), tracked apart from the CAS
/// metadata's, so both may live in one database and schema.
static SQLITE_MIGRATIONS: SchemaMigrations = SchemaMigrations::new("scheduler", &sqlx::migrate!("migrations/sqlite"));
static POSTGRES_MIGRATIONS: SchemaMigrations =
    SchemaMigrations::new("scheduler", &sqlx::migrate!("migrations/postgres"));

/// Connections a PostgreSQL store keeps.
const POSTGRES_CONNECTIONS: u32 = 8;

/// Opens (creating) the SQLite file at `path` for `what` and migrates it.
pub(crate) async fn open_sqlite(path: &Path, what: &str) -> Result<SqlitePool> {
    let pool = memobuild_cas::open_sqlite(path, 2, what).await?;
    SQLITE_MIGRATIONS.run_sqlite(&pool, &format!("{what} {}", path.display())).await?;
    Ok(pool)
}

/// Connects to `url` (`postgres://...`) for `what` and migrates. With
/// `schema`, the tables live in that schema (created if needed), so several
/// schedulers or test runs can share one database.
pub(crate) async fn connect_postgres(url: &str, schema: Option<&str>, what: &str) -> Result<PgPool> {
    let pool = memobuild_cas::connect_postgres(url, schema, POSTGRES_CONNECTIONS, what).await?;
    POSTGRES_MIGRATIONS.run_postgres(&pool, &format!("the PostgreSQL {what}")).await?;
    Ok(pool)
}

/// SQLite numbers its parameters `?n`, PostgreSQL `$n`: the stores write
/// their SQL once, for PostgreSQL.
pub(crate) fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}
