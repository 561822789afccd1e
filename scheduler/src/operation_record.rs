use memobuild_proto::reapi::{execution_stage, ExecuteResponse};
use memobuild_proto::{Digest, DigestFunction, Error, Result};
use prost::Message;

/// Where an operation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Queued,
    Executing,
    Completed,
}

impl Stage {
    pub fn to_proto(self) -> execution_stage::Value {
        match self {
            Stage::Queued => execution_stage::Value::Queued,
            Stage::Executing => execution_stage::Value::Executing,
            Stage::Completed => execution_stage::Value::Completed,
        }
    }

    fn code(self) -> i64 {
        self.to_proto() as i64
    }

    fn from_code(code: i64) -> Result<Self> {
        match i32::try_from(code).ok().and_then(|c| execution_stage::Value::try_from(c).ok()) {
            Some(execution_stage::Value::Queued) => Ok(Stage::Queued),
            Some(execution_stage::Value::Executing) => Ok(Stage::Executing),
            Some(execution_stage::Value::Completed) => Ok(Stage::Completed),
            _ => Err(Error::internal(format!("stored operation has unknown stage {code}"))),
        }
    }
}

/// What survives a scheduler restart about one operation.
#[derive(Clone, Debug, PartialEq)]
pub struct OperationRecord {
    pub name: String,
    pub instance_name: String,
    pub action_digest: Digest,
    /// Who asked, for fairness between clients.
    pub client: String,
    pub priority: i32,
    pub skip_cache_lookup: bool,
    pub stage: Stage,
    /// Times the action was handed to a worker.
    pub attempts: u32,
    pub worker: Option<String>,
    pub queued_at_ms: i64,
    pub updated_at_ms: i64,
    /// Set once completed.
    pub response: Option<ExecuteResponse>,
}

/// A record as database columns, in the order [`LOAD`] selects them.
pub(crate) struct Columns {
    pub name: String,
    pub instance_name: String,
    pub digest_function: i64,
    pub action_hash: Vec<u8>,
    pub action_size: i64,
    pub client: String,
    pub priority: i64,
    pub skip_cache_lookup: i64,
    pub stage: i64,
    pub attempts: i64,
    pub worker: Option<String>,
    pub queued_at_ms: i64,
    pub updated_at_ms: i64,
    pub response: Option<Vec<u8>>,
}

/// Every stored operation, oldest first.
pub(crate) const LOAD: &str = "SELECT name, instance_name, digest_function, action_hash, action_size, client, \
     priority, skip_cache_lookup, stage, attempts, worker, queued_at_ms, updated_at_ms, response \
     FROM operations ORDER BY queued_at_ms";

/// Forgets operations in stage `$1` (completed) last updated before `$2`.
pub(crate) const EXPIRE: &str = "DELETE FROM operations WHERE stage = $1 AND updated_at_ms < $2";

/// The start of an upsert of operations: the columns, in the order of [`Columns`].
macro_rules! insert_operations {
    () => {
        "INSERT INTO operations (name, instance_name, digest_function, action_hash, action_size, \
         client, priority, skip_cache_lookup, stage, attempts, worker, queued_at_ms, updated_at_ms, response) "
    };
}

/// The end of an upsert of operations: what a saved operation may change.
macro_rules! update_operations {
    () => {
        " ON CONFLICT (name) DO UPDATE SET stage = excluded.stage, attempts = excluded.attempts, \
         worker = excluded.worker, updated_at_ms = excluded.updated_at_ms, response = excluded.response"
    };
}

/// The upsert of one operation, with `$n` placeholders.
pub(crate) const UPSERT: &str = concat!(
    insert_operations!(),
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    update_operations!()
);
/// An upsert of several operations is [`INSERT_OPERATIONS`], their `VALUES`
/// and [`UPDATE_OPERATIONS`].
pub(crate) const INSERT_OPERATIONS: &str = insert_operations!();
pub(crate) const UPDATE_OPERATIONS: &str = update_operations!();
/// The columns of [`Columns`].
pub(crate) const COLUMNS: usize = 14;

impl OperationRecord {
    pub(crate) fn to_columns(&self) -> Columns {
        Columns {
            name: self.name.clone(),
            instance_name: self.instance_name.clone(),
            digest_function: i64::from(self.action_digest.function().to_proto()),
            action_hash: self.action_digest.hash().to_vec(),
            action_size: self.action_digest.size() as i64,
            client: self.client.clone(),
            priority: i64::from(self.priority),
            skip_cache_lookup: i64::from(self.skip_cache_lookup),
            stage: self.stage.code(),
            attempts: i64::from(self.attempts),
            worker: self.worker.clone(),
            queued_at_ms: self.queued_at_ms,
            updated_at_ms: self.updated_at_ms,
            response: self.response.as_ref().map(Message::encode_to_vec),
        }
    }

    pub(crate) fn from_columns(c: Columns) -> Result<Self> {
        let corrupt = |what: &str| Error::internal(format!("stored operation {}: bad {what}", c.name));
        let function = DigestFunction::from_proto(c.digest_function as i32)?;
        let hash: [u8; 32] = c.action_hash.as_slice().try_into().map_err(|_| corrupt("action hash"))?;
        let response = match &c.response {
            Some(bytes) => Some(ExecuteResponse::decode(bytes.as_slice()).map_err(|_| corrupt("response"))?),
            None => None,
        };
        Ok(OperationRecord {
            action_digest: Digest::new(function, hash, c.action_size as u64),
            instance_name: c.instance_name,
            client: c.client,
            priority: i32::try_from(c.priority).map_err(|_| corrupt("priority"))?,
            skip_cache_lookup: c.skip_cache_lookup != 0,
            stage: Stage::from_code(c.stage)?,
            attempts: u32::try_from(c.attempts).map_err(|_| corrupt("attempts"))?,
            worker: c.worker,
            queued_at_ms: c.queued_at_ms,
            updated_at_ms: c.updated_at_ms,
            response,
            name: c.name,
        })
    }
}
