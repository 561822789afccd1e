use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use memobuild_proto::{Digest, DigestFunction, Error, Result};
use sqlx::sqlite::SqlitePool;
use sqlx::Row;

use crate::blob_metadata::{digest_from_columns, BlobMetadata};
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
        let total: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(size), 0) FROM blobs WHERE stored = 1")
            .fetch_one(&pool)
            .await
            .map_err(db_error("summing sizes"))?;
        Ok(SqliteMetadata { pool, total_bytes: AtomicU64::new(total as u64) })
    }

    /// Adds the blob's row or moves its access time forward; `stored` marks
    /// its bytes as in the store, which is when its size starts to count.
    async fn insert(&self, digest: &Digest, now_ms: i64, stored: bool) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO blobs (function, hash, size, last_access, stored) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(function_code(digest.function()))
        .bind(&digest.hash()[..])
        .bind(digest.size() as i64)
        .bind(now_ms)
        .bind(stored)
        .execute(&self.pool)
        .await
        .map_err(db_error("recording a blob"))?
        .rows_affected();
        if inserted == 1 {
            if stored {
                self.total_bytes.fetch_add(digest.size(), Ordering::SeqCst);
            }
            return Ok(());
        }
        if stored {
            let marked =
                sqlx::query("UPDATE blobs SET stored = 1 WHERE function = ? AND hash = ? AND size = ? AND stored = 0")
                    .bind(function_code(digest.function()))
                    .bind(&digest.hash()[..])
                    .bind(digest.size() as i64)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("marking a blob stored"))?
                    .rows_affected();
            if marked == 1 {
                self.total_bytes.fetch_add(digest.size(), Ordering::SeqCst);
            }
        }
        self.touch(&[(*digest, now_ms)]).await
    }
}

fn function_code(function: DigestFunction) -> i64 {
    i64::from(function.to_proto())
}

#[async_trait]
impl BlobMetadata for SqliteMetadata {
    async fn record(&self, digest: &Digest, now_ms: i64) -> Result<()> {
        self.insert(digest, now_ms, false).await
    }

    async fn mark_stored(&self, digest: &Digest, now_ms: i64) -> Result<()> {
        self.insert(digest, now_ms, true).await
    }

    async fn find_stored(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut conn = self.pool.acquire().await.map_err(db_error("connecting"))?;
        let mut stored = Vec::new();
        for digest in digests {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM blobs WHERE function = ? AND hash = ? AND size = ? AND stored = 1")
                    .bind(function_code(digest.function()))
                    .bind(&digest.hash()[..])
                    .bind(digest.size() as i64)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_error("looking up stored blobs"))?;
            if found.is_some() {
                stored.push(*digest);
            }
        }
        Ok(stored)
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
        let removed: Option<bool> =
            sqlx::query_scalar("DELETE FROM blobs WHERE function = ? AND hash = ? AND size = ? RETURNING stored")
                .bind(function_code(digest.function()))
                .bind(&digest.hash()[..])
                .bind(digest.size() as i64)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error("removing a blob"))?;
        if removed == Some(true) {
            self.total_bytes.fetch_sub(digest.size(), Ordering::SeqCst);
        }
        Ok(())
    }

    async fn pin(&self, holder: &str, digests: &[Digest]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error("starting a transaction"))?;
        for digest in digests {
            sqlx::query(
                "INSERT INTO blob_pins (holder, function, hash, size) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(holder)
            .bind(function_code(digest.function()))
            .bind(&digest.hash()[..])
            .bind(digest.size() as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_error("pinning blobs"))?;
        }
        tx.commit().await.map_err(db_error("committing pins"))
    }

    async fn unpin(&self, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM blob_pins WHERE holder = ?")
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(db_error("unpinning blobs"))?;
        Ok(())
    }

    async fn least_recent(&self, limit: usize) -> Result<Vec<Digest>> {
        let rows = sqlx::query(
            "SELECT b.function, b.hash, b.size FROM blobs b
             WHERE NOT EXISTS (SELECT 1 FROM blob_pins p
                               WHERE p.function = b.function AND p.hash = b.hash AND p.size = b.size)
             ORDER BY b.last_access LIMIT ?",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("listing blobs"))?;
        rows.iter().map(|row| digest_from_columns(row.get(0), row.get(1), row.get(2))).collect()
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
            assert_eq!(meta.total_bytes(), 0, "a declared size is not a stored byte");
            meta.mark_stored(&a, 5).await.unwrap();
            meta.mark_stored(&b, 20).await.unwrap();
            meta.mark_stored(&a, 5).await.unwrap();
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

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        crate::metadata_conformance::run(&SqliteMetadata::open(&dir.path().join("meta.db")).await.unwrap()).await;
    }
}
