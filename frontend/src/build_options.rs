//! What a build is asked for, besides the Dockerfile and the context.

use std::collections::{BTreeMap, BTreeSet};

use crate::{ImageConfig, Platform};

/// A base image as the build resolved it: what a stage built `FROM` it
/// starts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseImage {
    /// The manifest digest the reference resolved to (`sha256:...`).
    pub digest: String,
    /// The image's config: ENV, WORKDIR, USER, CMD, ...; its ONBUILD
    /// triggers run after the FROM and are not passed on.
    pub config: ImageConfig,
}

/// A remote ADD source as the build fetched it: what pins the steps that
/// add it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteSource {
    /// A file over HTTP(S): its content digest (`sha256:HEX`) and its
    /// `Last-Modified` time, if the server sent one.
    File { digest: String, mtime: Option<u64> },
    /// A git repository: the commit its ref resolved to.
    Git { commit: String },
}

/// `--build-arg`, `--target` and the platforms of a build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildOptions {
    /// `--build-arg K=V`: overrides ARG defaults (for declared ARGs only,
    /// except the predefined proxy ARGs, which RUN always sees).
    pub build_args: BTreeMap<String, String>,
    /// `--target STAGE`; the last stage when `None`.
    pub target: Option<String>,
    /// `--platform`: TARGETPLATFORM and the default FROM platform.
    pub target_platform: Platform,
    /// Where the build runs: BUILDPLATFORM.
    pub build_platform: Platform,
    /// Base images resolved so far, by reference as written after
    /// expansion. A stage whose base is missing here starts empty and its
    /// key holds only the reference (enough for `memobuild graph`).
    pub base_images: BTreeMap<String, BaseImage>,
    /// Remote ADD sources fetched so far: HTTP(S) files by URL, git
    /// repositories by [`crate::GitUrl`] as displayed. A source missing here
    /// is planned unpinned (without `--checksum`, its key holds only the URL).
    pub remote_sources: BTreeMap<String, RemoteSource>,
    /// `--check` (buildx's `--call=check`): plan for the build checks only.
    /// Without a `--target` every stage is planned, and `# check=error=true`
    /// does not fail the plan: the caller reports the warnings and fails.
    pub check: bool,
    /// The names `--build-context` gives (lowercase): a stage of such a
    /// name is replaced, so FROM and `--from` that name read the image the
    /// context resolves to, never the stage.
    pub named_contexts: BTreeSet<String>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            build_args: BTreeMap::new(),
            target: None,
            target_platform: Platform::host(),
            build_platform: Platform::host(),
            base_images: BTreeMap::new(),
            remote_sources: BTreeMap::new(),
            check: false,
            named_contexts: BTreeSet::new(),
        }
    }
}

/// The predefined proxy ARGs: usable in RUN without an ARG instruction, and
/// left out of cache keys.
pub const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

impl BuildOptions {
    /// The automatic platform ARGs, available in the global scope (and in a
    /// stage after `ARG NAME`).
    pub fn platform_args(&self) -> Vec<(String, String)> {
        let t = &self.target_platform;
        let b = &self.build_platform;
        vec![
            ("TARGETPLATFORM".into(), t.to_string()),
            ("TARGETOS".into(), t.os.clone()),
            ("TARGETARCH".into(), t.architecture.clone()),
            ("TARGETVARIANT".into(), t.variant.clone().unwrap_or_default()),
            ("BUILDPLATFORM".into(), b.to_string()),
            ("BUILDOS".into(), b.os.clone()),
            ("BUILDARCH".into(), b.architecture.clone()),
            ("BUILDVARIANT".into(), b.variant.clone().unwrap_or_default()),
        ]
    }
}
