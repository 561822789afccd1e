use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use memobuild_proto::{Digest, DigestFunction, Error, Result};
use sqlx::sqlite::{Sqlite, SqlitePool};
use sqlx::{QueryBuilder, Row};

use crate::action_index::ActionIndex;
use crate::blob_metadata::{
    digest_from_columns, BlobMetadata, BlobPins, EvictionCandidate, EvictionLock, WRITE_GRACE_MS,
};
use crate::schema_migrations::SchemaMigrations;
use crate::sqlite_pool::open_sqlite;
use crate::sqlite_writer::SqliteWriter;

/// [`BlobMetadata`] (and the [`ActionIndex`]) in a SQLite database (WAL
/// mode), for embedded use: one process evicts at a time within this
/// process (an embedded node is one process).
/// The tables of blob metadata and action results.
static MIGRATIONS: SchemaMigrations = SchemaMigrations::new("cas", &sqlx::migrate!("migrations/sqlite"));

pub struct SqliteMetadata {
    pool: SqlitePool,
    /// Pins and unpins, written for every action.
    writer: SqliteWriter,
    total_bytes: AtomicU64,
    evicting: Arc<tokio::sync::Mutex<()>>,
}

fn db_error(what: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| Error::internal(format!("blob metadata: {what}: {e}"))
}

impl SqliteMetadata {
    /// Opens (creating and migrating if needed) the database at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        let pool = open_sqlite(path, 4, "blob metadata").await?;
        MIGRATIONS.run_sqlite(&pool, &format!("blob metadata {}", path.display())).await?;
        let total = read_total(&pool).await?;
        let writer = SqliteWriter::open(&pool, "blob metadata").await?;
        Ok(SqliteMetadata { pool, writer, total_bytes: AtomicU64::new(total), evicting: Arc::default() })
    }

    /// Adds the blob's row or moves its access time forward; `stored` marks
    /// its bytes as in the store, which is when its size starts to count.
    /// A blob is usually recorded when its write starts and marked stored
    /// when it ends: that second call is one statement.
    async fn insert(&self, digest: &Digest, shard: &str, now_ms: i64, stored: bool) -> Result<()> {
        if stored && self.mark_recorded(digest, shard, now_ms).await? {
            return Ok(());
        }
        let inserted = sqlx::query(
            "INSERT INTO blobs (function, hash, size, last_access, stored, shard) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(function_code(digest.function()))
        .bind(&digest.hash()[..])
        .bind(digest.size() as i64)
        .bind(now_ms)
        .bind(stored)
        .bind(shard)
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
        // Another write may have recorded it since the first statement.
        if stored && self.mark_recorded(digest, shard, now_ms).await? {
            return Ok(());
        }
        let statement = "UPDATE blobs SET last_access = MAX(last_access, ?), shard = ?
             WHERE function = ? AND hash = ? AND size = ?";
        self.update_row(statement, digest, shard, now_ms).await.map_err(db_error("recording a blob"))?;
        Ok(())
    }

    /// Marks a recorded, not yet stored blob stored (its size counts from
    /// now) and moves its access time forward; false when there is no such
    /// row.
    async fn mark_recorded(&self, digest: &Digest, shard: &str, now_ms: i64) -> Result<bool> {
        let statement = "UPDATE blobs SET stored = 1, last_access = MAX(last_access, ?), shard = ?
             WHERE function = ? AND hash = ? AND size = ? AND stored = 0";
        let marked =
            self.update_row(statement, digest, shard, now_ms).await.map_err(db_error("marking a blob stored"))?;
        if marked == 1 {
            self.total_bytes.fetch_add(digest.size(), Ordering::SeqCst);
        }
        Ok(marked == 1)
    }

    /// Runs `statement` on the blob's row, binding the access time, the
    /// shard and the digest; returns how many rows it changed.
    async fn update_row(&self, statement: &str, digest: &Digest, shard: &str, now_ms: i64) -> sqlx::Result<u64> {
        let done = sqlx::query(statement)
            .bind(now_ms)
            .bind(shard)
            .bind(function_code(digest.function()))
            .bind(&digest.hash()[..])
            .bind(digest.size() as i64)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    fn uncount(&self, bytes: u64) {
        let _ = self.total_bytes.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| Some(t.saturating_sub(bytes)));
    }
}

async fn read_total(pool: &SqlitePool) -> Result<u64> {
    let total: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(size), 0) FROM blobs WHERE stored = 1")
        .fetch_one(pool)
        .await
        .map_err(db_error("summing sizes"))?;
    Ok(total.max(0) as u64)
}

/// One statement pinning each digest for its holder (five parameters each).
fn pin_query<'a>(pins: &'a [(&'a str, Digest)], until_ms: i64) -> QueryBuilder<'a, Sqlite> {
    let mut query = QueryBuilder::new("INSERT INTO blob_pins (holder, function, hash, size, until_ms) ");
    query.push_values(pins, |mut row, (holder, digest)| {
        row.push_bind(*holder)
            .push_bind(function_code(digest.function()))
            .push_bind(&digest.hash()[..])
            .push_bind(digest.size() as i64)
            .push_bind(until_ms);
    });
    query.push(" ON CONFLICT DO UPDATE SET until_ms = MAX(until_ms, excluded.until_ms)");
    query
}

fn function_code(function: DigestFunction) -> i64 {
    i64::from(function.to_proto())
}

#[async_trait]
impl BlobPins for SqliteMetadata {
    async fn pin(&self, pins: &[(&str, &[Digest])], until_ms: i64) -> Result<()> {
        let pairs: Vec<(&str, Digest)> =
            pins.iter().flat_map(|(holder, digests)| digests.iter().map(move |d| (*holder, *d))).collect();
        self.writer
            .execute_chunked(&pairs, 5, |chunk| pin_query(chunk, until_ms))
            .await
            .map_err(db_error("pinning blobs"))
    }

    async fn renew(&self, holders: &[String], until_ms: i64) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error("starting a transaction"))?;
        for holder in holders {
            sqlx::query("UPDATE blob_pins SET until_ms = MAX(until_ms, ?) WHERE holder = ?")
                .bind(until_ms)
                .bind(holder)
                .execute(&mut *tx)
                .await
                .map_err(db_error("renewing pins"))?;
        }
        tx.commit().await.map_err(db_error("committing renewed pins"))
    }

    async fn unpin(&self, holders: &[String]) -> Result<()> {
        self.writer
            .execute_chunked(holders, 1, |chunk| {
                let mut query = QueryBuilder::new("DELETE FROM blob_pins WHERE holder IN (");
                let mut list = query.separated(", ");
                for holder in chunk {
                    list.push_bind(holder.as_str());
                }
                query.push(")");
                query
            })
            .await
            .map_err(db_error("unpinning blobs"))
    }
}

#[async_trait]
impl BlobMetadata for SqliteMetadata {
    async fn record(&self, digest: &Digest, shard: &str, now_ms: i64) -> Result<()> {
        self.insert(digest, shard, now_ms, false).await
    }

    async fn mark_stored(&self, digest: &Digest, shard: &str, now_ms: i64) -> Result<()> {
        self.insert(digest, shard, now_ms, true).await
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
            self.uncount(digest.size());
        }
        Ok(())
    }

    async fn least_recent(&self, limit: usize, now_ms: i64) -> Result<Vec<EvictionCandidate>> {
        let rows = sqlx::query(
            "SELECT b.function, b.hash, b.size, b.last_access FROM blobs b
             WHERE (b.stored = 1 OR b.last_access < ?)
               AND NOT EXISTS (SELECT 1 FROM blob_pins p
                               WHERE p.function = b.function AND p.hash = b.hash AND p.size = b.size
                                 AND p.until_ms > ?)
             ORDER BY b.last_access LIMIT ?",
        )
        .bind(now_ms.saturating_sub(WRITE_GRACE_MS))
        .bind(now_ms)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("listing blobs"))?;
        rows.iter()
            .map(|row| {
                let digest = digest_from_columns(row.get(0), row.get(1), row.get(2))?;
                Ok(EvictionCandidate { digest, last_access: row.get(3) })
            })
            .collect()
    }

    async fn remove_unpinned(&self, candidates: &[EvictionCandidate], now_ms: i64) -> Result<Vec<(Digest, bool)>> {
        // SQLite runs one writer at a time: each statement is atomic
        // against a pin's insert.
        let mut tx = self.pool.begin().await.map_err(db_error("starting a transaction"))?;
        let mut removed = Vec::new();
        for candidate in candidates {
            let digest = candidate.digest;
            let stored: Option<bool> = sqlx::query_scalar(
                "DELETE FROM blobs AS b WHERE function = ? AND hash = ? AND size = ? AND last_access <= ?
                   AND NOT EXISTS (SELECT 1 FROM blob_pins p
                                   WHERE p.function = b.function AND p.hash = b.hash AND p.size = b.size
                                     AND p.until_ms > ?)
                 RETURNING stored",
            )
            .bind(function_code(digest.function()))
            .bind(&digest.hash()[..])
            .bind(digest.size() as i64)
            .bind(candidate.last_access)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error("evicting blobs"))?;
            if let Some(stored) = stored {
                sqlx::query(
                    "INSERT INTO blob_deletions (function, hash, size, since_ms) VALUES (?, ?, ?, ?)
                     ON CONFLICT DO UPDATE SET since_ms = excluded.since_ms",
                )
                .bind(function_code(digest.function()))
                .bind(&digest.hash()[..])
                .bind(digest.size() as i64)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(db_error("marking evicted blobs"))?;
                removed.push((digest, stored));
            }
        }
        tx.commit().await.map_err(db_error("committing an eviction"))?;
        self.uncount(removed.iter().filter(|(_, stored)| *stored).map(|(d, _)| d.size()).sum());
        Ok(removed)
    }

    async fn deleted(&self, digests: &[Digest], stale_ms: i64) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error("starting a transaction"))?;
        for digest in digests {
            sqlx::query("DELETE FROM blob_deletions WHERE function = ? AND hash = ? AND size = ?")
                .bind(function_code(digest.function()))
                .bind(&digest.hash()[..])
                .bind(digest.size() as i64)
                .execute(&mut *tx)
                .await
                .map_err(db_error("ending deletions"))?;
        }
        sqlx::query("DELETE FROM blob_deletions WHERE since_ms < ?")
            .bind(stale_ms)
            .execute(&mut *tx)
            .await
            .map_err(db_error("ending deletions"))?;
        tx.commit().await.map_err(db_error("ending deletions"))
    }

    async fn being_deleted(&self, digest: &Digest, stale_ms: i64) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM blob_deletions WHERE function = ? AND hash = ? AND size = ? AND since_ms >= ?",
        )
        .bind(function_code(digest.function()))
        .bind(&digest.hash()[..])
        .bind(digest.size() as i64)
        .bind(stale_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error("looking up deletions"))?;
        Ok(found.is_some())
    }

    async fn drop_expired_pins(&self, now_ms: i64) -> Result<u64> {
        let dropped = sqlx::query("DELETE FROM blob_pins WHERE until_ms <= ?")
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(db_error("dropping expired pins"))?;
        Ok(dropped.rows_affected())
    }

    async fn try_lock_eviction(&self) -> Result<Option<EvictionLock>> {
        Ok(self.evicting.clone().try_lock_owned().ok().map(EvictionLock::new))
    }

    async fn stored_bytes(&self) -> Result<u64> {
        let total = read_total(&self.pool).await?;
        self.total_bytes.store(total, Ordering::SeqCst);
        Ok(total)
    }

    async fn stored_bytes_by_shard(&self) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT shard, COALESCE(SUM(size), 0) FROM blobs WHERE stored = 1 GROUP BY shard ORDER BY shard",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("summing sizes per shard"))?;
        Ok(rows.into_iter().map(|(shard, bytes)| (shard, bytes.max(0) as u64)).collect())
    }

    fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ActionIndex for SqliteMetadata {
    async fn get_entry(&self, key: &Digest) -> Result<Option<Bytes>> {
        let value: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT result FROM action_results WHERE function = ? AND hash = ? AND size = ?")
                .bind(function_code(key.function()))
                .bind(&key.hash()[..])
                .bind(key.size() as i64)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error("reading an action result"))?;
        Ok(value.map(Bytes::from))
    }

    async fn put_entry(&self, key: &Digest, value: &[u8], now_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO action_results (function, hash, size, result, updated_ms, last_access)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT DO UPDATE
                SET result = excluded.result, updated_ms = excluded.updated_ms, last_access = excluded.last_access",
        )
        .bind(function_code(key.function()))
        .bind(&key.hash()[..])
        .bind(key.size() as i64)
        .bind(value)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(db_error("storing an action result"))?;
        Ok(())
    }

    async fn delete_entry(&self, key: &Digest) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM action_results WHERE function = ? AND hash = ? AND size = ?")
            .bind(function_code(key.function()))
            .bind(&key.hash()[..])
            .bind(key.size() as i64)
            .execute(&self.pool)
            .await
            .map_err(db_error("deleting an action result"))?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn find_entries(&self, keys: &[Digest]) -> Result<Vec<Digest>> {
        let mut found = Vec::new();
        for key in keys {
            let present: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM action_results WHERE function = ? AND hash = ? AND size = ?")
                    .bind(function_code(key.function()))
                    .bind(&key.hash()[..])
                    .bind(key.size() as i64)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error("looking up action results"))?;
            if present.is_some() {
                found.push(*key);
            }
        }
        Ok(found)
    }

    async fn touch_entry(&self, key: &Digest, now_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE action_results SET last_access = MAX(last_access, ?) WHERE function = ? AND hash = ? AND size = ?",
        )
        .bind(now_ms)
        .bind(function_code(key.function()))
        .bind(&key.hash()[..])
        .bind(key.size() as i64)
        .execute(&self.pool)
        .await
        .map_err(db_error("recording the use of an action result"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn listed(candidates: Vec<EvictionCandidate>) -> Vec<Digest> {
        candidates.into_iter().map(|c| c.digest).collect()
    }

    #[tokio::test]
    async fn tracks_sizes_and_order_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let a = Digest::of(DigestFunction::Sha256, b"aaaa");
        let b = Digest::of(DigestFunction::Blake3, b"bb");
        {
            let meta = SqliteMetadata::open(&path).await.unwrap();
            meta.record(&a, "", 10).await.unwrap();
            meta.record(&b, "", 20).await.unwrap();
            assert_eq!(meta.total_bytes(), 0, "a declared size is not a stored byte");
            meta.mark_stored(&a, "", 5).await.unwrap();
            meta.mark_stored(&b, "", 20).await.unwrap();
            meta.mark_stored(&a, "", 5).await.unwrap();
            assert_eq!(meta.total_bytes(), 6);
            meta.touch(&[(a, 30)]).await.unwrap();
            assert_eq!(listed(meta.least_recent(10, 0).await.unwrap()), vec![b, a]);
        }
        let meta = SqliteMetadata::open(&path).await.unwrap();
        assert_eq!(meta.total_bytes(), 6);
        meta.remove(&b).await.unwrap();
        meta.remove(&b).await.unwrap();
        assert_eq!(meta.total_bytes(), 4);
        assert_eq!(listed(meta.least_recent(10, 0).await.unwrap()), vec![a]);
    }

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        crate::metadata_conformance::run(&SqliteMetadata::open(&dir.path().join("meta.db")).await.unwrap()).await;
    }
}
