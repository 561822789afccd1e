use std::time::{Duration, Instant};

use memobuild_proto::{Digest, Error, Result};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

/// After Redis fails, it is left alone this long (requests go to the
/// metadata instead of waiting on a server that is down).
const BACKOFF_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// The hot existence index in Redis: one key per blob known to be stored,
/// `{prefix}{digest}`, expiring after `ttl`. Only ever a cache of the blob
/// metadata: flushing or restarting Redis loses nothing but speed, and a
/// Redis that is down makes calls fail fast so callers fall back.
pub struct RedisIndex {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    prefix: String,
    ttl: Duration,
    resting_until: Mutex<Option<Instant>>,
}

impl RedisIndex {
    /// An index at `url` (`redis://host:port/db`). Connects on first use, so
    /// a server that starts while Redis is down still starts.
    pub fn new(url: &str, prefix: impl Into<String>, ttl: Duration) -> Result<Self> {
        let client =
            redis::Client::open(url).map_err(|e| Error::invalid_argument(format!("Redis URL {url:?}: {e}")))?;
        Ok(RedisIndex {
            client,
            connection: OnceCell::new(),
            prefix: prefix.into(),
            ttl,
            resting_until: Mutex::new(None),
        })
    }

    fn key(&self, digest: &Digest) -> String {
        format!("{}{digest}", self.prefix)
    }

    async fn connection(&self) -> Result<ConnectionManager> {
        if let Some(until) = *self.resting_until.lock() {
            if Instant::now() < until {
                return Err(Error::unavailable("Redis failed a moment ago; not asking it yet"));
            }
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        let connection = self
            .connection
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .map_err(|e| self.failed("connecting", e))?;
        Ok(connection.clone())
    }

    fn failed(&self, what: &str, e: redis::RedisError) -> Error {
        *self.resting_until.lock() = Some(Instant::now() + BACKOFF_AFTER_FAILURE);
        Error::unavailable(format!("Redis existence index ({}): {what}: {e}", self.prefix))
    }

    fn succeeded<T>(&self, result: redis::RedisResult<T>, what: &str) -> Result<T> {
        match result {
            Ok(value) => {
                *self.resting_until.lock() = None;
                Ok(value)
            }
            Err(e) => Err(self.failed(what, e)),
        }
    }

    /// For each of `digests`, whether Redis knows it as stored.
    pub async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection().await?;
        let keys: Vec<String> = digests.iter().map(|d| self.key(d)).collect();
        let values: redis::RedisResult<Vec<Option<Vec<u8>>>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut connection).await;
        Ok(self.succeeded(values, "looking up blobs")?.iter().map(Option::is_some).collect())
    }

    /// Remembers `digests` as stored, each for `ttl`.
    pub async fn insert(&self, digests: &[Digest]) -> Result<()> {
        if digests.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection().await?;
        let mut pipe = redis::pipe();
        for digest in digests {
            pipe.cmd("SET").arg(self.key(digest)).arg(1u8).arg("EX").arg(self.ttl.as_secs().max(1)).ignore();
        }
        let done: redis::RedisResult<()> = pipe.query_async(&mut connection).await;
        self.succeeded(done, "remembering blobs")
    }

    /// Forgets the blob.
    pub async fn remove(&self, digest: &Digest) -> Result<()> {
        let mut connection = self.connection().await?;
        let done: redis::RedisResult<()> = redis::cmd("DEL").arg(self.key(digest)).query_async(&mut connection).await;
        self.succeeded(done, "forgetting a blob")
    }
}
