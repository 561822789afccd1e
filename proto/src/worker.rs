//! `memobuild.worker.v1`: how workers and the scheduler talk. A worker dials
//! the scheduler and holds one bidirectional stream: it announces itself,
//! reports results and heartbeats; the scheduler assigns and cancels work.

use crate::{protobuf, reapi, rpc};

/// An offered property value that satisfies any requested value of its
/// name: the worker interprets the value itself (`container-image=*`).
pub const ANY_VALUE: &str = "*";

/// Worker -> scheduler.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkerMessage {
    #[prost(oneof = "worker_message::Kind", tags = "1, 2, 3, 4")]
    pub kind: Option<worker_message::Kind>,
}

pub mod worker_message {
    // Messages are short-lived; boxing the large variant buys nothing.
    #[allow(clippy::large_enum_variant)]
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// First message of a stream.
        #[prost(message, tag = "1")]
        Hello(super::Hello),
        #[prost(message, tag = "2")]
        Finished(super::Finished),
        #[prost(message, tag = "3")]
        Heartbeat(super::Heartbeat),
        #[prost(message, tag = "4")]
        Output(super::Output),
    }
}

/// A worker introduces itself.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// Unique and stable for the worker process, e.g. `host:pid`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// What the worker offers; actions' platform properties are matched
    /// against these. A name may come with several values, or [`ANY_VALUE`].
    #[prost(message, repeated, tag = "2")]
    pub properties: Vec<reapi::platform::Property>,
    /// How many actions it runs at once.
    #[prost(uint32, tag = "3")]
    pub slots: u32,
    /// Operations it is still running from before a reconnect.
    #[prost(string, repeated, tag = "4")]
    pub running: Vec<String>,
}

/// An assigned action ended: a result, or a status explaining why there is none.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Finished {
    #[prost(string, tag = "1")]
    pub operation: String,
    #[prost(message, optional, tag = "2")]
    pub result: Option<reapi::ActionResult>,
    /// OK, or why the action could not be run (missing inputs, timeout, ...).
    #[prost(message, optional, tag = "3")]
    pub status: Option<rpc::Status>,
}

/// Renews the leases of the operations a worker is running.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Heartbeat {
    #[prost(string, repeated, tag = "1")]
    pub running: Vec<String>,
}

/// Output of a running action, as it comes (Dockerfile steps send it, so
/// builds can show their logs live).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Output {
    #[prost(string, tag = "1")]
    pub operation: String,
    #[prost(enumeration = "crate::build::step_log::Stream", tag = "2")]
    pub stream: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

/// Scheduler -> worker.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SchedulerMessage {
    #[prost(oneof = "scheduler_message::Kind", tags = "1, 2")]
    pub kind: Option<scheduler_message::Kind>,
}

pub mod scheduler_message {
    // Messages are short-lived; boxing the large variant buys nothing.
    #[allow(clippy::large_enum_variant)]
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Assign(super::Assign),
        #[prost(message, tag = "2")]
        Cancel(super::Cancel),
    }
}

/// Run this action.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Assign {
    #[prost(string, tag = "1")]
    pub operation: String,
    #[prost(string, tag = "2")]
    pub instance_name: String,
    #[prost(message, optional, tag = "3")]
    pub action_digest: Option<reapi::Digest>,
    #[prost(enumeration = "reapi::digest_function::Value", tag = "4")]
    pub digest_function: i32,
    /// The effective timeout (the action's, capped by the scheduler).
    #[prost(message, optional, tag = "5")]
    pub timeout: Option<protobuf::Duration>,
    /// How often the worker must heartbeat to keep the lease.
    #[prost(message, optional, tag = "6")]
    pub lease: Option<protobuf::Duration>,
    /// When the action was queued, for ExecutedActionMetadata.
    #[prost(message, optional, tag = "7")]
    pub queued: Option<protobuf::Timestamp>,
    /// For a Dockerfile step: what its build gives it besides the action.
    #[prost(message, optional, tag = "8")]
    pub session: Option<StepSession>,
    /// The W3C traceparent of the request that queued the action (an
    /// Execute's caller, or a build's step), so the worker's span joins
    /// that trace; empty when there is none.
    #[prost(string, tag = "9")]
    pub trace_parent: String,
}

/// What the steps of one build get besides their actions: values kept out
/// of keys (secrets, `/etc/hosts` entries, limits) and where inputs the
/// action pins by digest are. Held in memory only, never stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StepSession {
    /// The build context's root Directory (BLAKE3).
    #[prost(message, optional, tag = "1")]
    pub context: Option<crate::build::BlobDigest>,
    #[prost(message, repeated, tag = "2")]
    pub secrets: Vec<crate::build::Secret>,
    /// `HOST:IP` entries.
    #[prost(string, repeated, tag = "3")]
    pub hosts: Vec<String>,
    #[prost(message, optional, tag = "4")]
    pub limits: Option<crate::build::ResourceLimits>,
    /// Files `ADD URL` fetched (SHA-256), by URL.
    #[prost(map = "string, message", tag = "5")]
    pub downloads: std::collections::HashMap<String, crate::build::BlobDigest>,
    /// The time of new files when the step sets no `SOURCE_DATE_EPOCH`.
    #[prost(uint64, tag = "6")]
    pub timestamp: u64,
    /// Environment kept out of the step's key (proxy variables).
    #[prost(map = "string, string", tag = "7")]
    pub uncached_env: std::collections::HashMap<String, String>,
    /// The build the step belongs to (the first, when builds share it), for logs and traces.
    #[prost(string, tag = "8")]
    pub build_id: String,
    /// The W3C traceparent of the span that queued the step, when tracing is on.
    #[prost(string, tag = "9")]
    pub trace_parent: String,
}

/// Stop running this action.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Cancel {
    #[prost(string, tag = "1")]
    pub operation: String,
}

include!(concat!(env!("OUT_DIR"), "/memobuild.worker.v1.WorkerApi.rs"));
