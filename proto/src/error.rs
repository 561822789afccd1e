//! The one error type of MemoBuild: a gRPC code, a human message and the
//! encoded rich-error details. It converts losslessly to and from
//! [`tonic::Status`], so an error keeps its code, text and details across
//! any number of service hops.

use std::fmt;

use bytes::Bytes;
use tonic::Code;
use tonic_types::{ErrorDetails, PreconditionViolation, StatusExt};

use crate::Digest;

/// The REAPI `PreconditionFailure` violation type for a missing blob.
pub const VIOLATION_MISSING: &str = "MISSING";

#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    code: Code,
    message: String,
    details: Bytes,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error { code, message: message.into(), details: Bytes::new() }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    pub fn out_of_range(message: impl Into<String>) -> Self {
        Self::new(Code::OutOfRange, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(Code::ResourceExhausted, message)
    }

    /// A blob was asked for and is not in the store.
    pub fn blob_not_found(digest: &Digest) -> Self {
        Self::not_found(format!("blob {} not found", digest.subject()))
    }

    /// FAILED_PRECONDITION with the REAPI `PreconditionFailure` detail: one
    /// `MISSING` violation per digest, subject `blobs/{digest_function/}{hash}/{size}`.
    pub fn missing_blobs(digests: &[Digest]) -> Self {
        let subjects: Vec<String> = digests.iter().map(Digest::subject).collect();
        let violations = subjects
            .iter()
            .map(|s| PreconditionViolation::new(VIOLATION_MISSING, s.clone(), "blob not in CAS"))
            .collect::<Vec<_>>();
        let message = format!("missing blobs: {}", subjects.join(", "));
        let status = tonic::Status::with_error_details(
            Code::FailedPrecondition,
            message,
            ErrorDetails::with_precondition_failure(violations),
        );
        Error::from(status)
    }

    pub fn code(&self) -> Code {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The subjects of `MISSING` precondition violations, if any.
    pub fn missing_subjects(&self) -> Vec<String> {
        let status = tonic::Status::from(self.clone());
        match status.get_details_precondition_failure() {
            Some(failure) => {
                failure.violations.into_iter().filter(|v| v.r#type == VIOLATION_MISSING).map(|v| v.subject).collect()
            }
            None => Vec::new(),
        }
    }

    /// As a `google.rpc.Status` message, details included (for protos that
    /// carry a status, such as ExecuteResponse).
    pub fn to_rpc_status(&self) -> crate::rpc::Status {
        use prost::Message;
        let details = crate::rpc::Status::decode(self.details.clone()).map(|s| s.details).unwrap_or_default();
        crate::rpc::Status { code: self.code as i32, message: self.message.clone(), details }
    }

    /// From a `google.rpc.Status` message; `None` when it is OK.
    pub fn from_rpc_status(status: &crate::rpc::Status) -> Option<Self> {
        use prost::Message;
        if status.code == 0 {
            return None;
        }
        let details = if status.details.is_empty() { Bytes::new() } else { status.encode_to_vec().into() };
        Some(Error { code: Code::from(status.code), message: status.message.clone(), details })
    }

    /// Prefixes the message with what was being done: `"{what}: {message}"`.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

/// Adds context to the error of a `Result`.
pub trait ResultExt<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(what))
    }

    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.into().context(what()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.message, self.code)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?}, {:?})", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::with_details(e.code, e.message, e.details)
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error { code: s.code(), message: s.message().to_string(), details: s.details().to_vec().into() }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => Code::NotFound,
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Code::ResourceExhausted,
            _ => Code::Internal,
        };
        Error::new(code, e.to_string())
    }
}

impl From<prost::DecodeError> for Error {
    fn from(e: prost::DecodeError) -> Self {
        Error::invalid_argument(format!("malformed protobuf: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DigestFunction;

    #[test]
    fn status_round_trip_is_lossless() {
        let digest = Digest::of(DigestFunction::Blake3, b"hello");
        let error = Error::missing_blobs(&[digest]).context("executing action");
        let back = Error::from(tonic::Status::from(error.clone()));
        assert_eq!(back, error);
        assert_eq!(back.code(), Code::FailedPrecondition);
        assert_eq!(back.missing_subjects(), vec![format!("blobs/{}", digest)]);
        assert!(back.message().starts_with("executing action: missing blobs: blobs/blake3/"));
    }

    #[test]
    fn rpc_status_round_trip_keeps_details() {
        let digest = Digest::of(DigestFunction::Sha256, b"input");
        let error = Error::missing_blobs(&[digest]);
        let status = error.to_rpc_status();
        assert_eq!(status.details.len(), 1);
        let back = Error::from_rpc_status(&status).unwrap();
        assert_eq!(back.missing_subjects(), vec![digest.subject()]);
        assert!(Error::from_rpc_status(&crate::rpc::Status::default()).is_none());
    }

    #[test]
    fn context_prefixes_message() {
        let e: Result<()> = Err(Error::not_found("blob x"));
        let e = e.context("reading input root").unwrap_err();
        assert_eq!(e.message(), "reading input root: blob x");
        assert_eq!(e.code(), Code::NotFound);
    }
}
