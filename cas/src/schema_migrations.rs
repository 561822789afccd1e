//! Database migrations of one component, tracked under the component's name.
//!
//! sqlx's migrator records what it applied in one `_sqlx_migrations` table
//! per schema, so the CAS metadata and the scheduler's state (each with its
//! own migrations, both numbered from 1) could not share a schema: whichever
//! started second found "migration 1 was previously applied but has been
//! modified". Here each component's rows in `memobuild_migrations` carry the
//! component's name, and a schema holds any number of components.
//!
//! Databases migrated by earlier versions keep working: when a component has
//! no rows yet and `_sqlx_migrations` records its first migration (same
//! version, same checksum), those rows are adopted as the component's
//! history instead of running the migrations again. `_sqlx_migrations` is
//! left as it was.
//!
//! All of a run (lock, adoption, pending migrations) is one transaction: it
//! applies everything or nothing, and replicas starting together take turns.

use memobuild_proto::{Error, Result};
use sqlx::migrate::{Migration, Migrator};
use sqlx::postgres::{PgPool, Postgres};
use sqlx::sqlite::{Sqlite, SqlitePool};
use sqlx::{Executor, Transaction};

/// The migrations of one component (`cas`, `scheduler`).
pub struct SchemaMigrations {
    component: &'static str,
    migrator: &'static Migrator,
}

/// A migration recorded as applied.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    version: i64,
    description: String,
    checksum: Vec<u8>,
    success: bool,
}

impl SchemaMigrations {
    pub const fn new(component: &'static str, migrator: &'static Migrator) -> Self {
        SchemaMigrations { component, migrator }
    }

    /// Brings the schema the pool works in up to date. `what` names the
    /// database in errors.
    pub async fn run_postgres(&self, pool: &PgPool, what: &str) -> Result<()> {
        let ledger = Ledger::begin_postgres(pool).await.map_err(self.failed(what, "starting"))?;
        self.run(ledger, what).await
    }

    /// [`SchemaMigrations::run_postgres`] for a SQLite database.
    pub async fn run_sqlite(&self, pool: &SqlitePool, what: &str) -> Result<()> {
        let ledger = Ledger::begin_sqlite(pool).await.map_err(self.failed(what, "starting"))?;
        self.run(ledger, what).await
    }

    async fn run(&self, mut ledger: Ledger, what: &str) -> Result<()> {
        let mut applied =
            ledger.applied(self.component).await.map_err(self.failed(what, "reading memobuild_migrations"))?;
        if applied.is_empty() {
            let legacy = ledger.legacy().await.map_err(self.failed(what, "reading _sqlx_migrations"))?;
            applied = self.adopt(&legacy, what)?;
            for row in &applied {
                ledger.record(self.component, row).await.map_err(self.failed(what, "adopting _sqlx_migrations"))?;
            }
        }
        for migration in self.pending(&applied, what)? {
            let doing = format!("migration {} ({})", migration.version, migration.description);
            ledger.execute(&migration.sql).await.map_err(self.failed(what, &doing))?;
            ledger.record(self.component, &Applied::of(migration)).await.map_err(self.failed(what, &doing))?;
        }
        ledger.commit().await.map_err(self.failed(what, "committing"))
    }

    fn failed<'a>(&'a self, what: &'a str, doing: &'a str) -> impl FnOnce(sqlx::Error) -> Error + 'a {
        move |e| Error::internal(format!("migrating {what} ({}): {doing}: {e}", self.component))
    }

    /// The up migrations, oldest first.
    fn migrations(&self) -> impl Iterator<Item = &'static Migration> {
        self.migrator.iter().filter(|m| !m.migration_type.is_down_migration())
    }

    /// The rows of an older version's `_sqlx_migrations` that are this
    /// component's history: all of them when the table records this
    /// component's first migration, else none (the table is another
    /// component's, or holds nothing yet).
    fn adopt(&self, legacy: &[Applied], what: &str) -> Result<Vec<Applied>> {
        let Some(first) = self.migrations().next() else { return Ok(Vec::new()) };
        let ours = legacy.iter().any(|row| row.version == first.version && row.checksum == *first.checksum);
        if !ours {
            return Ok(Vec::new());
        }
        if let Some(row) = legacy.iter().find(|row| !row.success) {
            return Err(Error::internal(format!(
                "migrating {what} ({}): _sqlx_migrations records migration {} ({}) as failed: repair the database by hand, then delete that row",
                self.component, row.version, row.description
            )));
        }
        Ok(legacy.to_vec())
    }

    /// The migrations not applied yet, after checking that the applied
    /// ones are the migrations this version knows.
    fn pending(&self, applied: &[Applied], what: &str) -> Result<Vec<&'static Migration>> {
        let newest = self.migrations().map(|m| m.version).max().unwrap_or(0);
        for row in applied {
            match self.migrations().find(|m| m.version == row.version) {
                Some(known) if *known.checksum == *row.checksum => {}
                Some(known) => {
                    return Err(Error::internal(format!(
                        "migrating {what} ({}): migration {} ({}) was applied with different SQL than this version of memobuild has",
                        self.component, known.version, known.description
                    )))
                }
                // A newer version migrated further (a rollback during an
                // upgrade): its migrations only add, so this one still runs.
                None if row.version > newest => {
                    tracing::warn!(component = self.component, version = row.version, description = %row.description, "the database has a migration newer than this version of memobuild");
                }
                None => {
                    return Err(Error::internal(format!(
                        "migrating {what} ({}): the database records migration {} ({}), which this version of memobuild does not have",
                        self.component, row.version, row.description
                    )))
                }
            }
        }
        Ok(self.migrations().filter(|m| !applied.iter().any(|row| row.version == m.version)).collect())
    }
}

impl Applied {
    fn of(migration: &Migration) -> Self {
        Applied {
            version: migration.version,
            description: migration.description.to_string(),
            checksum: migration.checksum.to_vec(),
            success: true,
        }
    }
}

/// The migrations table of one database, inside the transaction of a run.
enum Ledger {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

const POSTGRES_TABLE: &str = "CREATE TABLE IF NOT EXISTS memobuild_migrations (
    component TEXT NOT NULL,
    version BIGINT NOT NULL,
    description TEXT NOT NULL,
    checksum BYTEA NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)";

const SQLITE_TABLE: &str = "CREATE TABLE IF NOT EXISTS memobuild_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    description TEXT NOT NULL,
    checksum BLOB NOT NULL,
    installed_on TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (component, version)
)";

const APPLIED: &str =
    "SELECT version, description, checksum FROM memobuild_migrations WHERE component = $1 ORDER BY version";
const LEGACY: &str = "SELECT version, description, checksum, success FROM _sqlx_migrations ORDER BY version";
const RECORD: &str =
    "INSERT INTO memobuild_migrations (component, version, description, checksum) VALUES ($1, $2, $3, $4)";

type Row = (i64, String, Vec<u8>);
type LegacyRow = (i64, String, Vec<u8>, bool);

impl Ledger {
    async fn begin_postgres(pool: &PgPool) -> sqlx::Result<Self> {
        let mut transaction = pool.begin().await?;
        // One run per schema at a time, whichever component.
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtext('memobuild migrations ' || COALESCE(current_schema(), '')))",
        )
        .execute(&mut *transaction)
        .await?;
        sqlx::query(POSTGRES_TABLE).execute(&mut *transaction).await?;
        Ok(Ledger::Postgres(transaction))
    }

    /// The transaction holds the database's write lock from its start.
    async fn begin_sqlite(pool: &SqlitePool) -> sqlx::Result<Self> {
        let mut transaction = pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(SQLITE_TABLE).execute(&mut *transaction).await?;
        Ok(Ledger::Sqlite(transaction))
    }

    /// What `component` has applied.
    async fn applied(&mut self, component: &str) -> sqlx::Result<Vec<Applied>> {
        let rows: Vec<Row> = match self {
            Ledger::Postgres(t) => sqlx::query_as(APPLIED).bind(component).fetch_all(&mut **t).await?,
            Ledger::Sqlite(t) => sqlx::query_as(&APPLIED.replace('$', "?")).bind(component).fetch_all(&mut **t).await?,
        };
        Ok(rows
            .into_iter()
            .map(|(version, description, checksum)| Applied { version, description, checksum, success: true })
            .collect())
    }

    /// The rows of `_sqlx_migrations`, if the schema has that table.
    async fn legacy(&mut self) -> sqlx::Result<Vec<Applied>> {
        let rows: Vec<LegacyRow> = match self {
            Ledger::Postgres(t) => {
                let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(&mut **t)
                    .await?;
                match exists {
                    true => sqlx::query_as(LEGACY).fetch_all(&mut **t).await?,
                    false => Vec::new(),
                }
            }
            Ledger::Sqlite(t) => {
                let exists: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
                )
                .fetch_one(&mut **t)
                .await?;
                match exists {
                    0 => Vec::new(),
                    _ => sqlx::query_as(LEGACY).fetch_all(&mut **t).await?,
                }
            }
        };
        Ok(rows
            .into_iter()
            .map(|(version, description, checksum, success)| Applied { version, description, checksum, success })
            .collect())
    }

    async fn record(&mut self, component: &str, row: &Applied) -> sqlx::Result<()> {
        match self {
            Ledger::Postgres(t) => {
                let query = sqlx::query(RECORD).bind(component).bind(row.version);
                query.bind(&row.description).bind(&row.checksum).execute(&mut **t).await?;
            }
            Ledger::Sqlite(t) => {
                let sql = RECORD.replace('$', "?");
                let query = sqlx::query(&sql).bind(component).bind(row.version);
                query.bind(&row.description).bind(&row.checksum).execute(&mut **t).await?;
            }
        }
        Ok(())
    }

    /// Runs a migration's SQL: several statements at once.
    async fn execute(&mut self, sql: &str) -> sqlx::Result<()> {
        match self {
            // (Not `raw_sql`: its future is not Send for every lifetime.)
            Ledger::Postgres(t) => t.execute(sql).await.map(drop),
            Ledger::Sqlite(t) => t.execute(sql).await.map(drop),
        }
    }

    async fn commit(self) -> sqlx::Result<()> {
        match self {
            Ledger::Postgres(t) => t.commit().await,
            Ledger::Sqlite(t) => t.commit().await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sqlx::migrate::MigrationType;
    use std::borrow::Cow;

    fn migration(version: i64, sql: &'static str) -> Migration {
        Migration::new(version, Cow::Borrowed("m"), MigrationType::Simple, Cow::Borrowed(sql), false)
    }

    fn migrations() -> &'static SchemaMigrations {
        let list = vec![migration(1, "CREATE TABLE a (x INT)"), migration(2, "CREATE TABLE b (x INT)")];
        let migrator = Box::leak(Box::new(Migrator { migrations: Cow::Owned(list), ..Migrator::DEFAULT }));
        Box::leak(Box::new(SchemaMigrations::new("test", migrator)))
    }

    #[test]
    fn another_components_history_is_not_adopted() {
        let other = Applied::of(&migration(1, "CREATE TABLE other (x INT)"));
        assert_eq!(migrations().adopt(&[other], "db").unwrap(), Vec::new());
    }

    #[test]
    fn its_own_history_is_adopted_and_only_the_rest_runs() {
        let ours = migrations();
        let first = Applied::of(ours.migrations().next().unwrap());
        let adopted = ours.adopt(std::slice::from_ref(&first), "db").unwrap();
        assert_eq!(adopted, vec![first]);
        let pending: Vec<i64> = ours.pending(&adopted, "db").unwrap().iter().map(|m| m.version).collect();
        assert_eq!(pending, vec![2]);
    }

    #[test]
    fn a_failed_or_changed_migration_stops_the_run_naming_it() {
        let ours = migrations();
        let mut failed = Applied::of(ours.migrations().next().unwrap());
        failed.success = false;
        let message = ours.adopt(&[failed], "blob metadata").unwrap_err().to_string();
        assert!(message.contains("migration 1 (m) as failed"), "{message}");
        let changed = Applied::of(&migration(2, "CREATE TABLE b (y INT)"));
        let message = ours.pending(&[changed], "blob metadata").unwrap_err().to_string();
        assert!(message.contains("migration 2 (m) was applied with different SQL"), "{message}");
    }

    #[test]
    fn a_newer_versions_migration_is_tolerated_an_unknown_older_one_is_not() {
        let ours = migrations();
        let newer = Applied::of(&migration(3, "CREATE TABLE c (x INT)"));
        assert!(ours.pending(&[newer], "db").is_ok());
        let mut gone = Applied::of(&migration(0, "CREATE TABLE z (x INT)"));
        gone.version = 0;
        assert!(ours.pending(&[gone], "db").is_err());
    }
}
