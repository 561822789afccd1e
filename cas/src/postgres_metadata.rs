use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use memobuild_proto::{Digest, Error, Result};
use sqlx::postgres::PgPool;
use sqlx::Row;

use crate::action_index::ActionIndex;
use crate::blob_metadata::{
    digest_from_columns, BlobMetadata, BlobPins, EvictionCandidate, EvictionLock, WRITE_GRACE_MS,
};
use crate::postgres_pool::connect_postgres;
use crate::schema_migrations::SchemaMigrations;

/// The tables of blob metadata and action results.
static MIGRATIONS: SchemaMigrations = SchemaMigrations::new("cas", &sqlx::migrate!("migrations/postgres"));

/// How often the byte total is read back, to see other replicas' writes.
const TOTAL_REFRESH: Duration = Duration::from_secs(5);

/// [`BlobMetadata`] in PostgreSQL: one table shared by every CAS replica of
/// a cluster. Batches (access times, lookups, pins) are one statement each.
pub struct PostgresMetadata {
    pool: PgPool,
    /// This process's view of the summed size: moved by its own writes at
    /// once and read back from the table every few seconds.
    total_bytes: Arc<AtomicU64>,
}

fn db_error(what: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| {
        // Connection trouble, a server shutting down or out of resources
        // (SQLSTATE classes 08, 57, 53): worth retrying once it is back.
        let passing = match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|c| ["08", "57", "53"].iter().any(|p| c.starts_with(p))),
            _ => false,
        };
        match passing {
            true => Error::unavailable(format!("blob metadata (PostgreSQL): {what}: {e}")),
            false => Error::internal(format!("blob metadata (PostgreSQL): {what}: {e}")),
        }
    }
}

/// The `(function, hash, size)` columns of `digests`, as arrays for `UNNEST`.
fn columns(digests: impl IntoIterator<Item = Digest>) -> (Vec<i16>, Vec<Vec<u8>>, Vec<i64>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for digest in digests {
        out.0.push(digest.function().to_proto() as i16);
        out.1.push(digest.hash().to_vec());
        out.2.push(digest.size() as i64);
    }
    out
}

impl PostgresMetadata {
    /// Connects to `url` (in `schema` when given) and migrates.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self> {
        let pool = connect_postgres(url, schema, 8, "blob metadata").await?;
        MIGRATIONS.run_postgres(&pool, "blob metadata in PostgreSQL").await?;
        let total = Arc::new(AtomicU64::new(read_total(&pool).await?));
        tokio::spawn(refresh_total(pool.clone(), Arc::downgrade(&total)));
        Ok(PostgresMetadata { pool, total_bytes: total })
    }

    /// Adds the blob's row or moves its access time forward; `stored` marks
    /// its bytes as in the store, which is when its size starts to count.
    async fn insert(&self, digest: &Digest, shard: &str, now_ms: i64, stored: bool) -> Result<()> {
        let newly_stored: bool = sqlx::query_scalar(
            "WITH before AS (SELECT stored FROM blobs WHERE function = $1 AND hash = $2 AND size = $3)
             INSERT INTO blobs (function, hash, size, last_access, stored, shard) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (function, hash, size) DO UPDATE
                SET last_access = GREATEST(blobs.last_access, EXCLUDED.last_access),
                    stored = blobs.stored OR EXCLUDED.stored,
                    shard = EXCLUDED.shard
             RETURNING blobs.stored AND NOT COALESCE((SELECT stored FROM before), FALSE)",
        )
        .bind(digest.function().to_proto() as i16)
        .bind(&digest.hash()[..])
        .bind(digest.size() as i64)
        .bind(now_ms)
        .bind(stored)
        .bind(shard)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error("recording a blob"))?;
        if newly_stored {
            self.total_bytes.fetch_add(digest.size(), Ordering::SeqCst);
        }
        Ok(())
    }

    fn uncount(&self, bytes: u64) {
        let _ = self.total_bytes.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| Some(t.saturating_sub(bytes)));
    }
}

/// The advisory lock key of eviction: one evictor per schema.
const EVICTION_LOCK: &str = "memobuild cas eviction";

async fn read_total(pool: &PgPool) -> Result<u64> {
    let total: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(size), 0)::BIGINT FROM blobs WHERE stored")
        .fetch_one(pool)
        .await
        .map_err(db_error("summing sizes"))?;
    Ok(total.max(0) as u64)
}

/// Reads the total back until the metadata is dropped.
async fn refresh_total(pool: PgPool, total: Weak<AtomicU64>) {
    loop {
        tokio::time::sleep(TOTAL_REFRESH).await;
        let Some(total) = total.upgrade() else { return };
        match read_total(&pool).await {
            Ok(bytes) => total.store(bytes, Ordering::SeqCst),
            Err(e) => tracing::warn!(error = %e, "reading the CAS byte total back failed"),
        }
    }
}

fn digests_of(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<Digest>> {
    rows.iter().map(|row| digest_from_columns(row.get::<i16, _>(0).into(), row.get(1), row.get(2))).collect()
}

#[async_trait]
impl BlobPins for PostgresMetadata {
    async fn pin(&self, pins: &[(&str, &[Digest])], until_ms: i64) -> Result<()> {
        let holders: Vec<&str> =
            pins.iter().flat_map(|(holder, digests)| std::iter::repeat_n(*holder, digests.len())).collect();
        let (functions, hashes, sizes) = columns(pins.iter().flat_map(|(_, digests)| digests.iter().copied()));
        let mut tx = self.pool.begin().await.map_err(db_error("pinning blobs"))?;
        // Share-locks the blobs' rows: an evictor removing one of them
        // (under FOR UPDATE) either finished first, or waits and then sees
        // this pin. In key order, as the evictor locks, so neither deadlocks.
        sqlx::query(
            "SELECT 1 FROM blobs b
             JOIN UNNEST($1::SMALLINT[], $2::BYTEA[], $3::BIGINT[]) AS t(function, hash, size)
               ON b.function = t.function AND b.hash = t.hash AND b.size = t.size
             ORDER BY b.function, b.hash, b.size
             FOR SHARE OF b",
        )
        .bind(&functions)
        .bind(&hashes)
        .bind(&sizes)
        .execute(&mut *tx)
        .await
        .map_err(db_error("pinning blobs"))?;
        sqlx::query(
            "INSERT INTO blob_pins (holder, function, hash, size, until_ms)
             SELECT t.holder, t.function, t.hash, t.size, $5
             FROM UNNEST($1::TEXT[], $2::SMALLINT[], $3::BYTEA[], $4::BIGINT[]) AS t(holder, function, hash, size)
             ON CONFLICT (holder, function, hash, size) DO UPDATE
                SET until_ms = GREATEST(blob_pins.until_ms, EXCLUDED.until_ms)",
        )
        .bind(holders)
        .bind(functions)
        .bind(hashes)
        .bind(sizes)
        .bind(until_ms)
        .execute(&mut *tx)
        .await
        .map_err(db_error("pinning blobs"))?;
        tx.commit().await.map_err(db_error("committing pins"))
    }

    async fn renew(&self, holders: &[String], until_ms: i64) -> Result<()> {
        if holders.is_empty() {
            return Ok(());
        }
        sqlx::query("UPDATE blob_pins SET until_ms = GREATEST(until_ms, $2) WHERE holder = ANY($1)")
            .bind(holders)
            .bind(until_ms)
            .execute(&self.pool)
            .await
            .map_err(db_error("renewing pins"))?;
        Ok(())
    }

    async fn unpin(&self, holders: &[String]) -> Result<()> {
        sqlx::query("DELETE FROM blob_pins WHERE holder = ANY($1)")
            .bind(holders)
            .execute(&self.pool)
            .await
            .map_err(db_error("unpinning blobs"))?;
        Ok(())
    }
}

#[async_trait]
impl BlobMetadata for PostgresMetadata {
    async fn record(&self, digest: &Digest, shard: &str, now_ms: i64) -> Result<()> {
        self.insert(digest, shard, now_ms, false).await
    }

    async fn mark_stored(&self, digest: &Digest, shard: &str, now_ms: i64) -> Result<()> {
        self.insert(digest, shard, now_ms, true).await
    }

    async fn find_stored(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let (functions, hashes, sizes) = columns(digests.iter().copied());
        let rows = sqlx::query(
            "SELECT b.function, b.hash, b.size FROM blobs b
             JOIN UNNEST($1::SMALLINT[], $2::BYTEA[], $3::BIGINT[]) AS t(function, hash, size)
               ON b.function = t.function AND b.hash = t.hash AND b.size = t.size
             WHERE b.stored",
        )
        .bind(functions)
        .bind(hashes)
        .bind(sizes)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("looking up stored blobs"))?;
        digests_of(&rows)
    }

    async fn touch(&self, accesses: &[(Digest, i64)]) -> Result<()> {
        if accesses.is_empty() {
            return Ok(());
        }
        let (functions, hashes, sizes) = columns(accesses.iter().map(|(d, _)| *d));
        let times: Vec<i64> = accesses.iter().map(|(_, t)| *t).collect();
        sqlx::query(
            "UPDATE blobs b SET last_access = GREATEST(b.last_access, t.at)
             FROM UNNEST($1::SMALLINT[], $2::BYTEA[], $3::BIGINT[], $4::BIGINT[]) AS t(function, hash, size, at)
             WHERE b.function = t.function AND b.hash = t.hash AND b.size = t.size",
        )
        .bind(functions)
        .bind(hashes)
        .bind(sizes)
        .bind(times)
        .execute(&self.pool)
        .await
        .map_err(db_error("updating access times"))?;
        Ok(())
    }

    async fn remove(&self, digest: &Digest) -> Result<()> {
        let removed: Option<bool> =
            sqlx::query_scalar("DELETE FROM blobs WHERE function = $1 AND hash = $2 AND size = $3 RETURNING stored")
                .bind(digest.function().to_proto() as i16)
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
             WHERE (b.stored OR b.last_access < $3)
               AND NOT EXISTS (SELECT 1 FROM blob_pins p
                               WHERE p.function = b.function AND p.hash = b.hash AND p.size = b.size
                                 AND p.until_ms > $2)
             ORDER BY b.last_access LIMIT $1",
        )
        .bind(limit as i64)
        .bind(now_ms)
        .bind(now_ms.saturating_sub(WRITE_GRACE_MS))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("listing blobs"))?;
        let digests = digests_of(&rows)?;
        Ok(digests
            .into_iter()
            .zip(&rows)
            .map(|(digest, row)| EvictionCandidate { digest, last_access: row.get(3) })
            .collect())
    }

    async fn remove_unpinned(&self, candidates: &[EvictionCandidate], now_ms: i64) -> Result<Vec<(Digest, bool)>> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let (functions, hashes, sizes) = columns(candidates.iter().map(|c| c.digest));
        let seen: Vec<i64> = candidates.iter().map(|c| c.last_access).collect();
        let mut tx = self.pool.begin().await.map_err(db_error("evicting blobs"))?;
        // Rows locked first (key order, as pins lock them), so the DELETE's
        // snapshot, taken after, sees every pin committed before.
        sqlx::query(
            "SELECT 1 FROM blobs b
             JOIN UNNEST($1::SMALLINT[], $2::BYTEA[], $3::BIGINT[]) AS t(function, hash, size)
               ON b.function = t.function AND b.hash = t.hash AND b.size = t.size
             ORDER BY b.function, b.hash, b.size
             FOR UPDATE OF b",
        )
        .bind(&functions)
        .bind(&hashes)
        .bind(&sizes)
        .execute(&mut *tx)
        .await
        .map_err(db_error("evicting blobs"))?;
        // In the same transaction, so a writer that finds no row after it
        // commits finds the deletion mark.
        let rows = sqlx::query(
            "WITH gone AS (
                DELETE FROM blobs b
                USING UNNEST($1::SMALLINT[], $2::BYTEA[], $3::BIGINT[], $4::BIGINT[]) AS t(function, hash, size, seen)
                WHERE b.function = t.function AND b.hash = t.hash AND b.size = t.size AND b.last_access <= t.seen
                  AND NOT EXISTS (SELECT 1 FROM blob_pins p
                                  WHERE p.function = b.function AND p.hash = b.hash AND p.size = b.size
                                    AND p.until_ms > $5)
                RETURNING b.function, b.hash, b.size, b.stored
             ), marked AS (
                INSERT INTO blob_deletions (function, hash, size, since_ms)
                SELECT function, hash, size, $5 FROM gone
                ON CONFLICT (function, hash, size) DO UPDATE SET since_ms = EXCLUDED.since_ms
             )
             SELECT function, hash, size, stored FROM gone",
        )
        .bind(functions)
        .bind(hashes)
        .bind(sizes)
        .bind(seen)
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error("evicting blobs"))?;
        tx.commit().await.map_err(db_error("committing an eviction"))?;
        let digests = digests_of(&rows)?;
        let removed: Vec<(Digest, bool)> = digests.into_iter().zip(&rows).map(|(d, row)| (d, row.get(3))).collect();
        self.uncount(removed.iter().filter(|(_, stored)| *stored).map(|(d, _)| d.size()).sum());
        Ok(removed)
    }

    async fn deleted(&self, digests: &[Digest], stale_ms: i64) -> Result<()> {
        let (functions, hashes, sizes) = columns(digests.iter().copied());
        sqlx::query(
            "DELETE FROM blob_deletions d
             WHERE d.since_ms < $4
                OR (d.function, d.hash, d.size) IN
                   (SELECT * FROM UNNEST($1::SMALLINT[], $2::BYTEA[], $3::BIGINT[]))",
        )
        .bind(functions)
        .bind(hashes)
        .bind(sizes)
        .bind(stale_ms)
        .execute(&self.pool)
        .await
        .map_err(db_error("ending deletions"))?;
        Ok(())
    }

    async fn being_deleted(&self, digest: &Digest, stale_ms: i64) -> Result<bool> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM blob_deletions WHERE function = $1 AND hash = $2 AND size = $3 AND since_ms >= $4",
        )
        .bind(digest.function().to_proto() as i16)
        .bind(&digest.hash()[..])
        .bind(digest.size() as i64)
        .bind(stale_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error("looking up deletions"))?;
        Ok(found.is_some())
    }

    async fn drop_expired_pins(&self, now_ms: i64) -> Result<u64> {
        let dropped = sqlx::query("DELETE FROM blob_pins WHERE until_ms <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(db_error("dropping expired pins"))?;
        Ok(dropped.rows_affected())
    }

    async fn try_lock_eviction(&self) -> Result<Option<EvictionLock>> {
        // A transaction-level lock: released at commit or rollback, which
        // dropping the transaction does, and with the session if the
        // process dies.
        let mut tx = self.pool.begin().await.map_err(db_error("taking the eviction lock"))?;
        // Advisory locks are database-wide: the key names the schema, so
        // deployments sharing a database in separate schemas never wait on
        // each other.
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1 || current_schema()))")
            .bind(EVICTION_LOCK)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error("taking the eviction lock"))?;
        Ok(locked.then(|| EvictionLock::new(tx)))
    }

    async fn stored_bytes(&self) -> Result<u64> {
        let total = read_total(&self.pool).await?;
        self.total_bytes.store(total, Ordering::SeqCst);
        Ok(total)
    }

    async fn stored_bytes_by_shard(&self) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT shard, COALESCE(SUM(size), 0)::BIGINT FROM blobs WHERE stored GROUP BY shard ORDER BY shard",
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
impl ActionIndex for PostgresMetadata {
    async fn get_entry(&self, key: &Digest) -> Result<Option<Bytes>> {
        let value: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT result FROM action_results WHERE function = $1 AND hash = $2 AND size = $3")
                .bind(key.function().to_proto() as i16)
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
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (function, hash, size) DO UPDATE
                SET result = EXCLUDED.result, updated_ms = EXCLUDED.updated_ms, last_access = EXCLUDED.last_access",
        )
        .bind(key.function().to_proto() as i16)
        .bind(&key.hash()[..])
        .bind(key.size() as i64)
        .bind(value)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(db_error("storing an action result"))?;
        Ok(())
    }

    async fn delete_entry(&self, key: &Digest) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM action_results WHERE function = $1 AND hash = $2 AND size = $3")
            .bind(key.function().to_proto() as i16)
            .bind(&key.hash()[..])
            .bind(key.size() as i64)
            .execute(&self.pool)
            .await
            .map_err(db_error("deleting an action result"))?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn find_entries(&self, keys: &[Digest]) -> Result<Vec<Digest>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (functions, hashes, sizes) = columns(keys.iter().copied());
        let rows = sqlx::query(
            "SELECT a.function, a.hash, a.size FROM action_results a
             JOIN UNNEST($1::SMALLINT[], $2::BYTEA[], $3::BIGINT[]) AS t(function, hash, size)
               ON a.function = t.function AND a.hash = t.hash AND a.size = t.size",
        )
        .bind(functions)
        .bind(hashes)
        .bind(sizes)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("looking up action results"))?;
        digests_of(&rows)
    }

    async fn touch_entry(&self, key: &Digest, now_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE action_results SET last_access = GREATEST(last_access, $4)
             WHERE function = $1 AND hash = $2 AND size = $3",
        )
        .bind(key.function().to_proto() as i16)
        .bind(&key.hash()[..])
        .bind(key.size() as i64)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(db_error("recording the use of an action result"))?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_services;
    use memobuild_proto::DigestFunction;

    /// Metadata in a fresh schema of the real PostgreSQL; the schema name is
    /// returned for a second connection (another replica).
    pub async fn fresh() -> (PostgresMetadata, String) {
        let schema = test_services::unique("cas_test_");
        (PostgresMetadata::connect(&test_services::postgres_url(), Some(&schema)).await.unwrap(), schema)
    }

    impl PostgresMetadata {
        /// Drops a test's schema.
        pub async fn drop_schema(&self, schema: &str) {
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&self.pool).await.unwrap();
        }
    }

    #[tokio::test]
    async fn conformance_against_real_postgres() {
        let (meta, schema) = fresh().await;
        crate::metadata_conformance::run(&meta).await;
        meta.drop_schema(&schema).await;
    }

    #[tokio::test]
    async fn replicas_see_each_others_blobs_pins_and_totals() {
        let (one, schema) = fresh().await;
        let two = PostgresMetadata::connect(&test_services::postgres_url(), Some(&schema)).await.unwrap();
        let a = Digest::of(DigestFunction::Sha256, b"shared");
        let b = Digest::of(DigestFunction::Sha256, b"other");
        one.mark_stored(&a, "s1", 1).await.unwrap();
        two.mark_stored(&b, "s2", 2).await.unwrap();
        assert_eq!(two.find_stored(&[a]).await.unwrap(), vec![a]);
        one.pin(&[("build-1", &[a])], i64::MAX).await.unwrap();
        let listed: Vec<Digest> = two.least_recent(10, 3).await.unwrap().iter().map(|c| c.digest).collect();
        assert_eq!(listed, vec![b]);
        assert_eq!(two.stored_bytes().await.unwrap(), a.size() + b.size());
        assert_eq!(two.total_bytes(), a.size() + b.size(), "reading the total brings the view up to date");
        one.drop_schema(&schema).await;
    }

    /// One evictor at a time over one schema, whatever other schemas do; the
    /// lock goes with its holder.
    #[tokio::test]
    async fn one_replica_holds_the_eviction_lock_at_a_time() {
        let (one, schema) = fresh().await;
        let two = PostgresMetadata::connect(&test_services::postgres_url(), Some(&schema)).await.unwrap();
        let held = one.try_lock_eviction().await.unwrap().expect("a free lock is taken");
        assert!(two.try_lock_eviction().await.unwrap().is_none(), "a second evictor is refused");
        assert!(one.try_lock_eviction().await.unwrap().is_none(), "also from the same replica");
        let (elsewhere, other_schema) = fresh().await;
        let other = elsewhere.try_lock_eviction().await.unwrap();
        assert!(other.is_some(), "a deployment in another schema of the same database evicts on its own");
        drop(other);
        elsewhere.drop_schema(&other_schema).await;
        drop(held);
        // The transaction's rollback runs as its connection goes back to the pool.
        let mut taken = None;
        for _ in 0..500 {
            taken = two.try_lock_eviction().await.unwrap();
            if taken.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(taken.is_some(), "a dropped lock is free again");
        one.drop_schema(&schema).await;
    }
}
