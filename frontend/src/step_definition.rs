//! What a step does, canonically: the instruction kind with its arguments
//! expanded and everything it depends on spelled out (file digests, the
//! environment a RUN sees, the keys of stages it reads from). Serialized to
//! JSON it is the input of the step's planning key, and it is what an
//! executor is given to run the step.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{GitUrl, Healthcheck, Heredoc, Mount, NetworkMode, SecurityMode};

/// Where COPY/ADD or a mount reads from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Origin {
    /// The build context.
    Context,
    /// Another stage's final filesystem, by its key (the step's
    /// `depends_on` says which stage; the key alone keeps renaming or
    /// reordering stages from changing keys).
    Stage { key: String },
    /// An image reference (resolved to a digest at build time).
    Image { reference: String },
}

/// One COPY/ADD source after expansion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum SourceDefinition {
    /// A path or glob, with the context paths it matched and a digest of
    /// what each brings (content, modes, subtree; `--exclude` applied).
    /// For a stage or image origin `matches` is empty: the origin's key
    /// covers the content. Paths are resolved, except with `--parents`
    /// where they are as matched: the path names where the files land.
    Path { path: String, matches: Vec<(String, String)> },
    /// An inline heredoc file: its name and the digest of its (expanded)
    /// content.
    Heredoc {
        name: String,
        digest: String,
        /// The content itself, which the executor writes.
        content: String,
    },
    /// An ADD of a file over HTTP(S). `digest` (`sha256:HEX`) pins its
    /// content: the `--checksum`, else what the build fetched; `mtime` is
    /// the fetched `Last-Modified` time (never with `--checksum`, whose
    /// file is not fetched again once held).
    Http { url: String, digest: Option<String>, mtime: Option<u64> },
    /// An ADD of a git repository, pinned by the commit its ref resolved to
    /// once fetched.
    Git { repository: GitUrl, commit: Option<String> },
}

/// A RUN mount with its source pinned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountDefinition {
    pub mount: Mount,
    /// For bind mounts: where the files come from; the context digest of
    /// the mounted subtree, or the stage key. Cache, tmpfs, secret and ssh
    /// mounts do not add content to the key.
    pub origin: Option<Origin>,
    pub source_digest: Option<String>,
}

/// A heredoc passed to RUN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunHeredoc {
    pub name: String,
    pub content: String,
    pub expand: bool,
    pub file_descriptor: u32,
}

impl RunHeredoc {
    /// The heredoc a RUN executes as a file, as BuildKit does: `RUN <<NAME`
    /// alone (shell form) with one heredoc whose body starts with `#!`. Its
    /// body goes to [`RunHeredoc::script_path`] (mode 0755, read-only) and
    /// that path runs without a shell, so the kernel picks the interpreter
    /// from the shebang line (`#!/usr/bin/awk -f` gets the file after `-f`).
    pub fn executed_script<'a>(argv: &[String], heredocs: &'a [RunHeredoc]) -> Option<&'a RunHeredoc> {
        let (script, shell) = argv.split_last()?;
        let [only] = heredocs else { return None };
        let alone = !shell.is_empty() && Heredoc::parse_opener(script.trim()).is_some();
        (alone && only.content.starts_with("#!")).then_some(only)
    }

    /// Where an executed script is mounted in the RUN's container.
    pub fn script_path(&self) -> String {
        format!("/dev/pipes/{}", self.name)
    }
}

/// The canonical definition of one step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum StepDefinition {
    From {
        /// The image reference (`None` for `scratch` or a stage: a stage
        /// base is the step's parent key, see [`crate::Stage::base`]).
        image: Option<String>,
        /// The manifest digest the reference resolved to, once known.
        #[serde(skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
        platform: String,
    },
    Run {
        argv: Vec<String>,
        heredocs: Vec<RunHeredoc>,
        env: BTreeMap<String, String>,
        workdir: String,
        user: Option<String>,
        network: NetworkMode,
        security: SecurityMode,
        mounts: Vec<MountDefinition>,
    },
    Copy {
        add: bool,
        origin: Origin,
        sources: Vec<SourceDefinition>,
        /// Absolute (joined with WORKDIR); a trailing `/` is kept.
        dest: String,
        chown: Option<String>,
        chmod: Option<String>,
        link: bool,
        parents: bool,
        excludes: Vec<String>,
        keep_git_dir: bool,
        checksum: Option<String>,
        unpack: Option<bool>,
    },
    Workdir {
        path: String,
        /// The USER at this point: a directory WORKDIR creates is theirs.
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    Env {
        vars: Vec<(String, String)>,
    },
    Arg {
        args: Vec<(String, Option<String>)>,
    },
    Label {
        labels: Vec<(String, String)>,
    },
    Expose {
        ports: Vec<String>,
    },
    Volume {
        paths: Vec<String>,
    },
    User {
        user: String,
    },
    Cmd {
        argv: Vec<String>,
    },
    Entrypoint {
        argv: Vec<String>,
    },
    Stopsignal {
        signal: String,
    },
    Healthcheck {
        healthcheck: Healthcheck,
    },
    Shell {
        argv: Vec<String>,
    },
    Maintainer {
        name: String,
    },
    Onbuild {
        trigger: String,
    },
}

impl StepDefinition {
    /// Whether the step changes the root filesystem (and so moves the key
    /// chain forward). The others only change the image config; later steps
    /// that depend on that config say so in their own definitions.
    pub fn changes_filesystem(&self) -> bool {
        matches!(
            self,
            StepDefinition::From { .. }
                | StepDefinition::Run { .. }
                | StepDefinition::Copy { .. }
                | StepDefinition::Workdir { .. }
        )
    }
}
