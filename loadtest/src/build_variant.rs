//! One remote build of a `builds` run: its Dockerfile, build arguments and
//! context, made so that its kind decides what the action cache holds.
//!
//! With a base image the Dockerfile is
//!
//! ```text
//! FROM BASE
//! ARG SALT
//! RUN echo "salt $SALT" > /salt
//! COPY shared.txt /data/shared.txt
//! COPY changed.txt /data/changed.txt
//! RUN wc -c /data/changed.txt > /data/size
//! ```
//!
//! Cached builds use one SALT and one `changed.txt`; changed builds give
//! `changed.txt` content of their own (one COPY and one RUN run again); cold
//! builds give SALT a value of their own (every step runs). Without a base
//! image there is no RUN (`FROM scratch`, the salt in a COPY destination),
//! so no step needs a container.

use std::collections::BTreeMap;

use anyhow::Context;
use memobuild_frontend::{BuildContext, ContextNode};
use memobuild_proto::{Digest, DigestFunction};
use prost::Message;

use crate::build_mix::BuildKind;

/// The Dockerfile's name in requests and in the server's messages.
pub const DOCKERFILE_NAME: &str = "Dockerfile";
/// The build argument cold builds make unique.
pub const SALT_ARG: &str = "SALT";
/// SALT and `changed.txt` of the builds that share every step.
const SHARED_SALT: &str = "memobuild-loadtest-shared";
const SHARED_CONTENT: &str = "memobuild-loadtest: the same in every cached build\n";
const FILE_MODE: u32 = 0o644;

/// The Dockerfile every build of a run uses.
pub fn dockerfile(base: Option<&str>) -> String {
    match base {
        Some(base) => format!(
            "FROM {base}\n\
             ARG {SALT_ARG}\n\
             RUN echo \"salt ${SALT_ARG}\" > /salt\n\
             COPY shared.txt /data/shared.txt\n\
             COPY changed.txt /data/changed.txt\n\
             RUN wc -c /data/changed.txt > /data/size\n"
        ),
        None => format!(
            "FROM scratch\n\
             ARG {SALT_ARG}\n\
             COPY shared.txt /salt/${SALT_ARG}/shared.txt\n\
             COPY changed.txt /data/changed.txt\n"
        ),
    }
}

/// What one build sends: its SALT, its context and the context's blobs.
pub struct BuildVariant {
    pub salt: String,
    pub context: BuildContext,
    /// Every blob of the context (files and Directory messages), by digest.
    pub blobs: Vec<(Digest, Vec<u8>)>,
}

impl BuildVariant {
    /// Build `index` of a run named by `seed`, of kind `kind`.
    pub fn new(kind: BuildKind, seed: u64, index: usize) -> anyhow::Result<Self> {
        let unique = format!("memobuild-loadtest run {seed:016x} build {index}");
        let (salt, changed) = match kind {
            BuildKind::Cached => (SHARED_SALT.to_string(), SHARED_CONTENT.to_string()),
            BuildKind::Changed => (SHARED_SALT.to_string(), format!("{unique}\n")),
            BuildKind::Cold => (unique.replace(' ', "-"), SHARED_CONTENT.to_string()),
        };
        let files =
            [("shared.txt", "memobuild-loadtest: shared by every build\n".to_string()), ("changed.txt", changed)];
        let mut nodes = BTreeMap::new();
        let mut blobs = Vec::new();
        for (path, content) in files {
            let digest = Digest::of(DigestFunction::Blake3, content.as_bytes());
            nodes.insert(path.to_string(), ContextNode::File { digest, mode: FILE_MODE });
            blobs.push((digest, content.into_bytes()));
        }
        let context = BuildContext::from_nodes(nodes).context("making the build context")?;
        blobs.extend(context.directories().iter().map(|(digest, d)| (*digest, d.encode_to_vec())));
        Ok(BuildVariant { salt, context, blobs })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kinds_share_what_they_should() {
        let cached =
            [BuildVariant::new(BuildKind::Cached, 1, 0).unwrap(), BuildVariant::new(BuildKind::Cached, 2, 9).unwrap()];
        assert_eq!(cached[0].context.root_digest(), cached[1].context.root_digest());
        assert_eq!(cached[0].salt, cached[1].salt);

        let changed = [
            BuildVariant::new(BuildKind::Changed, 1, 1).unwrap(),
            BuildVariant::new(BuildKind::Changed, 1, 2).unwrap(),
        ];
        assert_ne!(changed[0].context.root_digest(), changed[1].context.root_digest());
        assert_ne!(changed[0].context.root_digest(), cached[0].context.root_digest());
        assert_eq!(changed[0].salt, cached[0].salt);

        let cold =
            [BuildVariant::new(BuildKind::Cold, 1, 3).unwrap(), BuildVariant::new(BuildKind::Cold, 2, 3).unwrap()];
        assert_eq!(cold[0].context.root_digest(), cached[0].context.root_digest());
        assert_ne!(cold[0].salt, cold[1].salt);
        assert_ne!(cold[0].salt, cached[0].salt);
    }

    #[test]
    fn blobs_are_the_whole_tree() {
        let variant = BuildVariant::new(BuildKind::Changed, 7, 7).unwrap();
        // Two files and the root Directory.
        assert_eq!(variant.blobs.len(), 3);
        for (digest, data) in &variant.blobs {
            assert_eq!(*digest, Digest::of(DigestFunction::Blake3, data));
        }
        assert!(variant.blobs.iter().any(|(d, _)| *d == variant.context.root_digest()));
    }

    #[test]
    fn dockerfiles_read_the_salt() {
        assert!(dockerfile(Some("127.0.0.1:5000/base/busybox:1")).contains("RUN echo \"salt $SALT\""));
        assert!(dockerfile(None).starts_with("FROM scratch\n"));
        assert!(dockerfile(None).contains("/salt/$SALT/"));
    }
}
