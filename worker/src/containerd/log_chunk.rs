use bytes::Bytes;

/// A piece of a running step's output, as it arrives (not split at lines).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogChunk {
    Stdout(Bytes),
    Stderr(Bytes),
}
