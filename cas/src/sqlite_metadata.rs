use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use memobuild_proto::{Digest, DigestFunction, Error, Result};
use sqlx::sqlite::SqlitePool;
use sqlx::Row;

use crate::blob_metadata::BlobMetadata;
use crate::sqlite_pool::open_sqlite;

/// [`BlobMetadata`] in a SQLite database (WAL mode), for embedded use.
pub struct SqliteMetadata {
    pool: SqlitePool,
    total_bytes: AtomicU64,
}

fn db_error(what: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| Error::internal(format!("blob metadata: {what}: {e}"))
}

impl SqliteMetadata {
    /// Opens (creating and migrating if needed) the database at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        let pool = open_sqlite(path, 4, "blob metadata").await?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| Error::internal(format!("migrating blob metadata {}: {e}", path.display())))?;
        let total: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(size), 0) FROM blobs")
            .fetch_one(&pool)
            .await
            .map_err(db_error("summing sizes"))?;
        Ok(SqliteMetadata { pool, total_bytes: AtomicU64::new(total as u64) })
    }
}

fn function_code(function: DigestFunction) -> i64 {
    i64::from(function.to_proto())
}

#[async_trait]
impl BlobMetadata for SqliteMetadata {
    async fn record(&self, digest: &Digest, now_ms: i64) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO blobs (function, hash, size, last_access) VALUES (?, ?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(function_code(digest.function()))
        .bind(&digest.hash()[..])
        .bind(digest.size() as i64)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(db_error("recording a blob"))?
        .rows_affected();
        if inserted == 1 {
            self.total_bytes.fetch_add(digest.size(), Ordering::SeqCst);
            Ok(())
        } else {
            self.touch(&[(*digest, now_ms)]).await
        }
    }

    async fn touch(&self, accesses: &[(Digest, i64)]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error("starting a transaction"))?;
        for (digest, now_ms) in accesses {
            sqlx::query(
                "UPDATE blobs SET last_access = MAX(last_access, ?)
                 WHERE function = ? AND hash = ? AND size = ?",
            )
            .bind(now_ms)
            .bind(function_code(digest.function()))
            .bind(&digest.hash()[..])
            .bind(digest.size() as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_error("updating access times"))?;
        }
        tx.commit().await.map_err(db_error("committing access times"))
    }

    async fn remove(&self, digest: &Digest) -> Result<()> {
        let removed = sqlx::query("DELETE FROM blobs WHERE function = ? AND hash = ? AND size = ?")
            .bind(function_code(digest.function()))
            .bind(&digest.hash()[..])
            .bind(digest.size() as i64)
            .execute(&self.pool)
            .await
            .map_err(db_error("removing a blob"))?
            .rows_affected();
        if removed == 1 {
            self.total_bytes.fetch_sub(digest.size(), Ordering::SeqCst);
        }
        Ok(())
    }

    async fn least_recent(&self, limit: usize) -> Result<Vec<Digest>> {
        let rows = sqlx::query("SELECT function, hash, size FROM blobs ORDER BY last_access LIMIT ?")
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("listing blobs"))?;
        rows.iter()
            .map(|row| {
                let function = DigestFunction::from_proto(row.get::<i64, _>(0) as i32)?;
                let hash: Vec<u8> = row.get(1);
                let hash: [u8; 32] =
                    hash.try_into().map_err(|_| Error::internal("blob metadata: a stored hash is not 32 bytes"))?;
                Ok(Digest::new(function, hash, row.get::<i64, _>(2) as u64))
            })
            .collect()
    }

    fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn tracks_sizes_and_order_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let a = Digest::of(DigestFunction::Sha256, b"aaaa");
        let b = Digest::of(DigestFunction::Blake3, b"bb");
        {
            let meta = SqliteMetadata::open(&path).await.unwrap();
            meta.record(&a, 10).await.unwrap();
            meta.record(&b, 20).await.unwrap();
            meta.record(&a, 5).await.unwrap();
            assert_eq!(meta.total_bytes(), 6);
            meta.touch(&[(a, 30)]).await.unwrap();
            assert_eq!(meta.least_recent(10).await.unwrap(), vec![b, a]);
        }
        let meta = SqliteMetadata::open(&path).await.unwrap();
        assert_eq!(meta.total_bytes(), 6);
        meta.remove(&b).await.unwrap();
        meta.remove(&b).await.unwrap();
        assert_eq!(meta.total_bytes(), 4);
        assert_eq!(meta.least_recent(10).await.unwrap(), vec![a]);
    }
}
