use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use super::HealthCheck;

/// A database answers `SELECT 1` (one connection, opened on demand).
pub enum DatabaseCheck {
    Postgres { what: String, pool: PgPool },
    Sqlite { what: String, path: PathBuf, pool: SqlitePool },
}

const ACQUIRE: Duration = Duration::from_secs(2);

impl DatabaseCheck {
    /// PostgreSQL at `url`; `what` says what it holds (e.g. `scheduler state`).
    pub fn postgres(what: &str, url: &str) -> Result<Self, String> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE)
            .connect_lazy(url)
            .map_err(|e| format!("{what}: PostgreSQL URL: {e}"))?;
        Ok(DatabaseCheck::Postgres { what: what.into(), pool })
    }

    /// The SQLite database at `path`, opened read-only.
    pub fn sqlite(what: &str, path: PathBuf) -> Self {
        let options = SqliteConnectOptions::new().filename(&path).read_only(true);
        let pool = SqlitePoolOptions::new().max_connections(1).acquire_timeout(ACQUIRE).connect_lazy_with(options);
        DatabaseCheck::Sqlite { what: what.into(), path, pool }
    }
}

#[async_trait]
impl HealthCheck for DatabaseCheck {
    fn name(&self) -> String {
        match self {
            DatabaseCheck::Postgres { what, .. } => format!("postgres ({what})"),
            DatabaseCheck::Sqlite { what, .. } => format!("sqlite ({what})"),
        }
    }

    async fn check(&self) -> Result<String, String> {
        match self {
            DatabaseCheck::Postgres { pool, .. } => {
                sqlx::query("SELECT 1").execute(pool).await.map_err(|e| format!("PostgreSQL: {e}"))?;
                Ok("answers".into())
            }
            DatabaseCheck::Sqlite { path, pool, .. } => {
                sqlx::query("SELECT count(*) FROM sqlite_master")
                    .execute(pool)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(format!("{} answers", path.display()))
            }
        }
    }
}
