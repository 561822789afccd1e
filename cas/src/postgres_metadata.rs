use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use memobuild_proto::{Digest, Error, Result};
use sqlx::postgres::PgPool;
use sqlx::Row;

use crate::blob_metadata::{digest_from_columns, BlobMetadata};
use crate::postgres_pool::connect_postgres;

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
    move |e| match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
            Error::unavailable(format!("blob metadata (PostgreSQL): {what}: {e}"))
        }
        _ => Error::internal(format!("blob metadata (PostgreSQL): {what}: {e}")),
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
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| Error::internal(format!("migrating blob metadata in PostgreSQL: {e}")))?;
        let total = Arc::new(AtomicU64::new(read_total(&pool).await?));
        tokio::spawn(refresh_total(pool.clone(), Arc::downgrade(&total)));
        Ok(PostgresMetadata { pool, total_bytes: total })
    }

    /// Adds the blob's row or moves its access time forward; `stored` marks
    /// its bytes as in the store, which is when its size starts to count.
    async fn insert(&self, digest: &Digest, now_ms: i64, stored: bool) -> Result<()> {
        let newly_stored: bool = sqlx::query_scalar(
            "WITH before AS (SELECT stored FROM blobs WHERE function = $1 AND hash = $2 AND size = $3)
             INSERT INTO blobs (function, hash, size, last_access, stored) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (function, hash, size) DO UPDATE
                SET last_access = GREATEST(blobs.last_access, EXCLUDED.last_access),
                    stored = blobs.stored OR EXCLUDED.stored
             RETURNING blobs.stored AND NOT COALESCE((SELECT stored FROM before), FALSE)",
        )
        .bind(digest.function().to_proto() as i16)
        .bind(&digest.hash()[..])
        .bind(digest.size() as i64)
        .bind(now_ms)
        .bind(stored)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error("recording a blob"))?;
        if newly_stored {
            self.total_bytes.fetch_add(digest.size(), Ordering::SeqCst);
        }
        Ok(())
    }
}

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

#[async_trait]
impl BlobMetadata for PostgresMetadata {
    async fn record(&self, digest: &Digest, now_ms: i64) -> Result<()> {
        self.insert(digest, now_ms, false).await
    }

    async fn mark_stored(&self, digest: &Digest, now_ms: i64) -> Result<()> {
        self.insert(digest, now_ms, true).await
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
        rows.iter().map(|row| digest_from_columns(row.get::<i16, _>(0).into(), row.get(1), row.get(2))).collect()
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
            let _ = self
                .total_bytes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| Some(t.saturating_sub(digest.size())));
        }
        Ok(())
    }

    async fn pin(&self, holder: &str, digests: &[Digest]) -> Result<()> {
        let (functions, hashes, sizes) = columns(digests.iter().copied());
        sqlx::query(
            "INSERT INTO blob_pins (holder, function, hash, size)
             SELECT $1, * FROM UNNEST($2::SMALLINT[], $3::BYTEA[], $4::BIGINT[])
             ON CONFLICT DO NOTHING",
        )
        .bind(holder)
        .bind(functions)
        .bind(hashes)
        .bind(sizes)
        .execute(&self.pool)
        .await
        .map_err(db_error("pinning blobs"))?;
        Ok(())
    }

    async fn unpin(&self, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM blob_pins WHERE holder = $1")
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
             ORDER BY b.last_access LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("listing blobs"))?;
        rows.iter().map(|row| digest_from_columns(row.get::<i16, _>(0).into(), row.get(1), row.get(2))).collect()
    }

    fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_services;

    /// Metadata in a fresh schema of the real PostgreSQL; the schema name is
    /// returned for a second connection (another replica).
    pub async fn fresh() -> (PostgresMetadata, String) {
        let schema = test_services::unique("cas_test_");
        (PostgresMetadata::connect(&test_services::postgres_url(), Some(&schema)).await.unwrap(), schema)
    }

    #[tokio::test]
    async fn conformance_against_real_postgres() {
        let (meta, schema) = fresh().await;
        crate::metadata_conformance::run(&meta).await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&meta.pool).await.unwrap();
    }

    #[tokio::test]
    async fn replicas_see_each_others_blobs_and_pins() {
        let (one, schema) = fresh().await;
        let two = PostgresMetadata::connect(&test_services::postgres_url(), Some(&schema)).await.unwrap();
        let a = Digest::of(memobuild_proto::DigestFunction::Sha256, b"shared");
        let b = Digest::of(memobuild_proto::DigestFunction::Sha256, b"other");
        one.mark_stored(&a, 1).await.unwrap();
        two.mark_stored(&b, 2).await.unwrap();
        assert_eq!(two.find_stored(&[a]).await.unwrap(), vec![a]);
        one.pin("build-1", &[a]).await.unwrap();
        assert_eq!(two.least_recent(10).await.unwrap(), vec![b]);
        assert_eq!(read_total(&two.pool).await.unwrap(), a.size() + b.size());
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&one.pool).await.unwrap();
    }
}
