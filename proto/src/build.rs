//! `memobuild.build.v1` (`proto/memobuild/build/v1/build.proto`): a planned
//! build as data (what `memobuild graph --format proto` writes), the
//! BuildService that runs builds on a cluster, and the events a build
//! reports.

include!(concat!(env!("OUT_DIR"), "/memobuild.build.v1.rs"));

use build_event::Kind;

impl BuildEvent {
    fn of(kind: Kind) -> Self {
        BuildEvent { sequence: 0, kind: Some(kind) }
    }

    pub fn started(step: &str, name: impl Into<String>) -> Self {
        Self::of(Kind::Started(StepStarted { step: step.into(), name: name.into() }))
    }

    pub fn cached(step: &str) -> Self {
        Self::of(Kind::Cached(StepCached { step: step.into() }))
    }

    pub fn info(step: &str, message: impl Into<String>) -> Self {
        Self::of(Kind::Info(StepInfo { step: step.into(), message: message.into() }))
    }

    pub fn log(step: &str, stream: step_log::Stream, data: impl Into<Vec<u8>>) -> Self {
        Self::of(Kind::Log(StepLog { step: step.into(), stream: stream as i32, data: data.into() }))
    }

    pub fn done(step: &str, seconds: f64) -> Self {
        Self::of(Kind::Done(StepDone { step: step.into(), seconds }))
    }

    pub fn finished(step: &str) -> Self {
        Self::of(Kind::Finished(StepFinished { step: step.into() }))
    }

    pub fn failed(step: &str, message: impl Into<String>) -> Self {
        Self::of(Kind::Failed(StepFailed { step: step.into(), message: message.into() }))
    }

    pub fn warning(rule: &str, message: impl Into<String>, file: &str, line: u32) -> Self {
        Self::of(Kind::Warning(StepWarning { rule: rule.into(), message: message.into(), file: file.into(), line }))
    }

    /// Whether this event ends its build's stream.
    pub fn is_last(&self) -> bool {
        matches!(self.kind, Some(Kind::Result(_)) | Some(Kind::BuildFailed(_)))
    }
}

impl BlobDigest {
    pub fn of(digest: &crate::Digest) -> Self {
        BlobDigest { hash: digest.hex(), size_bytes: digest.size() as i64 }
    }

    /// The digest, hashed with `function`; an error names `field`.
    pub fn digest(&self, function: crate::DigestFunction, field: &str) -> crate::Result<crate::Digest> {
        use crate::ResultExt;
        crate::Digest::parse(function, &self.hash, self.size_bytes).with_context(|| field.to_string())
    }
}
