use async_trait::async_trait;
use memobuild_proto::Result;

use crate::operation_record::OperationRecord;

/// Durable operation state, so queued and running work and finished
/// results survive a scheduler restart. Embedded: SQLite; cluster: PostgreSQL.
#[async_trait]
pub trait OperationStore: Send + Sync + 'static {
    /// Inserts or updates records, in one transaction.
    async fn save(&self, records: &[OperationRecord]) -> Result<()>;

    /// Forgets operations.
    async fn delete(&self, names: &[String]) -> Result<()>;

    /// Every stored operation.
    async fn load(&self) -> Result<Vec<OperationRecord>>;

    /// Forgets completed operations last updated before `ms`.
    async fn delete_completed_before(&self, ms: i64) -> Result<u64>;
}

/// Binds a record's columns to a query of [`crate::operation_record::UPSERT`]
/// (`bind`), or to a row of a multi-row upsert (`push_bind`).
macro_rules! bind_columns {
    ($query:expr, $c:expr) => {
        bind_columns!($query, $c, bind)
    };
    ($query:expr, $c:expr, $bind:ident) => {
        $query
            .$bind($c.name)
            .$bind($c.instance_name)
            .$bind($c.digest_function)
            .$bind($c.action_hash)
            .$bind($c.action_size)
            .$bind($c.client)
            .$bind($c.priority)
            .$bind($c.skip_cache_lookup)
            .$bind($c.stage)
            .$bind($c.attempts)
            .$bind($c.worker)
            .$bind($c.queued_at_ms)
            .$bind($c.updated_at_ms)
            .$bind($c.response)
    };
}

/// Reads a row selected with [`crate::operation_record::LOAD`].
macro_rules! row_columns {
    ($row:expr) => {
        crate::operation_record::Columns {
            name: $row.try_get(0)?,
            instance_name: $row.try_get(1)?,
            digest_function: $row.try_get(2)?,
            action_hash: $row.try_get(3)?,
            action_size: $row.try_get(4)?,
            client: $row.try_get(5)?,
            priority: $row.try_get(6)?,
            skip_cache_lookup: $row.try_get(7)?,
            stage: $row.try_get(8)?,
            attempts: $row.try_get(9)?,
            worker: $row.try_get(10)?,
            queued_at_ms: $row.try_get(11)?,
            updated_at_ms: $row.try_get(12)?,
            response: $row.try_get(13)?,
        }
    };
}

/// Decodes rows selected with [`crate::operation_record::LOAD`].
macro_rules! records_from_rows {
    ($rows:expr) => {
        $rows
            .iter()
            .map(|row| {
                let columns = (|| -> Result<_, sqlx::Error> { Ok(row_columns!(row)) })()
                    .map_err(db_error("reading an operation"))?;
                OperationRecord::from_columns(columns)
            })
            .collect()
    };
}

pub(crate) use {bind_columns, records_from_rows, row_columns};

/// A database error as ours, naming what was being done.
pub(crate) fn db_error(what: &'static str) -> impl Fn(sqlx::Error) -> memobuild_proto::Error {
    move |e| memobuild_proto::Error::unavailable(format!("operation store: {what}: {e}"))
}
