use std::fmt;

use async_trait::async_trait;
use memobuild_proto::{Error, Result};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::build_record::{BuildState, StoredBuild};

/// The most rows one `list` or `events_after` call returns.
pub const MAX_BUILD_PAGE: usize = 1000;

/// Durable state of remote builds and their event logs, so a scheduler
/// restarted mid-build resumes its builds and `Watch` replays their events.
/// Embedded: SQLite; cluster: PostgreSQL.
#[async_trait]
pub trait BuildStore: Send + Sync + 'static {
    /// Stores a new build; ALREADY_EXISTS if its id is taken.
    async fn create(&self, build: &StoredBuild) -> Result<()>;

    /// Appends encoded events under their sequence numbers, in one
    /// transaction. A sequence number already stored for the build keeps its
    /// first event, so a retried append is harmless. NOT_FOUND for an unknown build.
    async fn append_events(&self, build_id: &str, events: &[(u64, Vec<u8>)]) -> Result<()>;

    /// Up to `limit` (at most [`MAX_BUILD_PAGE`]) events numbered above `after`,
    /// in ascending order; none for an unknown build.
    async fn events_after(&self, build_id: &str, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>>;

    /// Records a running build's outcome. A build already finished keeps its
    /// first outcome (a late cancel does not overwrite a success).
    /// NOT_FOUND for an unknown build; INVALID_ARGUMENT for `Running`.
    async fn finish(&self, build_id: &str, state: BuildState, finished_ms: i64, message: &str) -> Result<()>;

    async fn get(&self, build_id: &str) -> Result<Option<StoredBuild>>;

    /// Up to `limit` (at most [`MAX_BUILD_PAGE`]) builds of an instance, newest
    /// first, with their `request` left empty.
    async fn list(&self, instance_name: &str, limit: usize) -> Result<Vec<StoredBuild>>;

    /// Every running build with its request, oldest first, to resume after a restart.
    async fn unfinished(&self) -> Result<Vec<StoredBuild>>;

    /// Forgets builds that finished before `ms`, and their events; returns
    /// how many builds.
    async fn delete_finished_before(&self, ms: i64) -> Result<u64>;
}

/// Inserts a build unless its id exists: `$1..$9` in [`StoredBuild`] field order.
pub(crate) const INSERT_BUILD: &str =
    "INSERT INTO builds (id, instance_name, dockerfile_name, target, state, created_ms, finished_ms, message, request) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING";

/// Whether build `$1` exists.
pub(crate) const BUILD_EXISTS: &str = "SELECT 1 FROM builds WHERE id = $1";

/// Stores event `$3` as number `$2` of build `$1` unless that number is taken.
pub(crate) const INSERT_EVENT: &str = "INSERT INTO build_events (build_id, sequence, event) VALUES ($1, $2, $3) \
     ON CONFLICT (build_id, sequence) DO NOTHING";

/// Up to `$3` events of build `$1` numbered above `$2`, ascending.
pub(crate) const EVENTS_AFTER: &str =
    "SELECT sequence, event FROM build_events WHERE build_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3";

/// Finishes build `$1` with state `$2`, time `$3` and message `$4` if it is in state `$5` (running).
pub(crate) const FINISH: &str =
    "UPDATE builds SET state = $2, finished_ms = $3, message = $4 WHERE id = $1 AND state = $5";

/// Build `$1`, columns as [`build_from_row`] reads them.
pub(crate) const GET: &str = "SELECT id, instance_name, dockerfile_name, target, state, created_ms, finished_ms, \
     message, request FROM builds WHERE id = $1";

/// Up to `$2` builds of instance `$1`, newest first, without their request.
pub(crate) const LIST: &str = "SELECT id, instance_name, dockerfile_name, target, state, created_ms, finished_ms, \
     message FROM builds WHERE instance_name = $1 ORDER BY created_ms DESC, id DESC LIMIT $2";

/// Builds in state `$1` (running), oldest first.
pub(crate) const UNFINISHED: &str = "SELECT id, instance_name, dockerfile_name, target, state, created_ms, \
     finished_ms, message, request FROM builds WHERE state = $1 ORDER BY created_ms, id";

/// Forgets the events of builds finished before `$1`; run before [`EXPIRE_BUILDS`].
pub(crate) const EXPIRE_EVENTS: &str =
    "DELETE FROM build_events WHERE build_id IN (SELECT id FROM builds WHERE finished_ms < $1)";

/// Forgets builds finished before `$1`.
pub(crate) const EXPIRE_BUILDS: &str = "DELETE FROM builds WHERE finished_ms < $1";

/// A row limit as the databases take it.
pub(crate) fn row_limit(limit: usize) -> i64 {
    limit.min(MAX_BUILD_PAGE) as i64
}

/// An event's sequence number as stored.
pub(crate) fn stored_sequence(build_id: &str, sequence: u64) -> Result<i64> {
    i64::try_from(sequence)
        .map_err(|_| Error::out_of_range(format!("build {build_id}: event sequence {sequence} is too large")))
}

/// A stored sequence number and event.
pub(crate) fn event_from_row<'r, R>(build_id: &str, row: &'r R) -> Result<(u64, Vec<u8>)>
where
    R: Row,
    usize: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let corrupt = |e: sqlx::Error| Error::internal(format!("build store: reading an event of build {build_id}: {e}"));
    let sequence: i64 = row.try_get(0).map_err(corrupt)?;
    let sequence = u64::try_from(sequence)
        .map_err(|_| Error::internal(format!("build store: build {build_id} has event sequence {sequence}")))?;
    Ok((sequence, row.try_get(1).map_err(corrupt)?))
}

/// A build selected with the columns of [`GET`]; without `with_request` the
/// row has no request column and the request is left empty.
pub(crate) fn build_from_row<'r, R>(row: &'r R, with_request: bool) -> Result<StoredBuild>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get(0).map_err(|e| Error::internal(format!("build store: reading a build id: {e}")))?;
    let corrupt = |e: sqlx::Error| Error::internal(format!("build store: reading build {id}: {e}"));
    let state: String = row.try_get(4).map_err(corrupt)?;
    Ok(StoredBuild {
        instance_name: row.try_get(1).map_err(corrupt)?,
        dockerfile_name: row.try_get(2).map_err(corrupt)?,
        target: row.try_get(3).map_err(corrupt)?,
        state: state.parse().map_err(|e: Error| e.context(format!("build store: reading build {id}")))?,
        created_ms: row.try_get(5).map_err(corrupt)?,
        finished_ms: row.try_get(6).map_err(corrupt)?,
        message: row.try_get(7).map_err(corrupt)?,
        request: if with_request { row.try_get(8).map_err(corrupt)? } else { Vec::new() },
        id,
    })
}

/// Checks a `finish` before it touches the database.
pub(crate) fn check_finish(build_id: &str, state: BuildState) -> Result<()> {
    if state.is_finished() {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!("build {build_id}: cannot finish in state {state}")))
    }
}

/// The error for a build id that is taken.
pub(crate) fn already_exists(build_id: &str) -> Error {
    Error::new(tonic::Code::AlreadyExists, format!("build {build_id} already exists"))
}

/// The error for an unknown build.
pub(crate) fn not_found(build_id: &str) -> Error {
    Error::not_found(format!("build {build_id} not found"))
}

/// A database error as ours, naming what was being done.
pub(crate) fn db_error(what: impl fmt::Display) -> impl Fn(sqlx::Error) -> Error {
    move |e| Error::unavailable(format!("build store: {what}: {e}"))
}
