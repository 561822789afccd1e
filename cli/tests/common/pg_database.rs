//! A PostgreSQL database of one test's own on the machine's server
//! (`MEMOBUILD_TEST_POSTGRES`, else postgres://postgres:postgres@127.0.0.1:5432/test),
//! created with psql and dropped when done.
#![allow(clippy::unwrap_used, dead_code)]

use std::process::Command;

pub struct PgDatabase {
    /// `postgres://.../NAME`, for `--postgres`.
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgDatabase {
    pub fn create() -> PgDatabase {
        let server = std::env::var("MEMOBUILD_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".to_string());
        let (base, _) = server.rsplit_once('/').unwrap();
        let name = format!("mb_test_{}", uuid::Uuid::new_v4().simple());
        let database = PgDatabase { url: format!("{base}/{name}"), admin_url: format!("{base}/postgres"), name };
        database.psql(&format!("CREATE DATABASE {}", database.name));
        database
    }

    fn psql(&self, sql: &str) {
        let out = Command::new("psql")
            .args([&self.admin_url, "-v", "ON_ERROR_STOP=1", "-qc", sql])
            .output()
            .expect("psql (apt-get install postgresql-client)");
        assert!(
            out.status.success(),
            "psql {sql:?} on {} failed (is PostgreSQL running? see ENVIRONMENT.md): {}",
            self.admin_url,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([&self.admin_url, "-qc", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)])
            .output();
    }
}
