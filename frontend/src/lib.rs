//! The Dockerfile front end of MemoBuild: Dockerfile text and a build
//! context in, a [`BuildGraph`] out. Pure: no network, no containers.
//!
//! # Pipeline
//!
//! 1. [`Dockerfile::parse`] reads the whole Dockerfile reference: parser
//!    directives (`syntax`, `escape`, `check`), comments, line
//!    continuations, heredocs, the JSON (exec) and shell forms and every
//!    instruction with its flags, into typed [`Instruction`]s that carry
//!    their [`Location`] and original text. Words are kept as written.
//! 2. [`DockerIgnore::load`] reads `<Dockerfile>.dockerignore` or
//!    `.dockerignore`; [`ContextScanner`] walks the context, BLAKE3-hashes
//!    files in parallel with a persistent stat cache ([`StatCache`]) and
//!    builds the REAPI `Directory` trees ([`BuildContext`]).
//! 3. [`plan`] (a [`Planner`]) splits stages, evaluates ARG scoping
//!    (global ARGs, per-stage re-declaration, `--build-arg`, the automatic
//!    platform ARGs), expands variables exactly where Docker does
//!    ([`ShellLexer`]), keeps only the stages `--target` needs, rejects
//!    cycles and chains the keys of every step.
//!
//! # Keys
//!
//! Each [`Step`] has a canonical [`StepDefinition`] (expanded arguments,
//! the digests of exactly the context files a COPY/ADD brings, the full
//! environment of a RUN, the keys of stages it reads) plus the variables it
//! read, and `key = BLAKE3(definition + parent key)`, where the parent is
//! the stage's last step that changed the filesystem. Config-only steps
//! (ENV, ARG, LABEL, CMD, ...) do not move that chain: their effect reaches
//! later steps only through what those steps read. So a `--build-arg` a
//! step never reads leaves its key alone, and one changed byte in a copied
//! file changes that COPY and everything after it, nothing else.
//!
//! These are *planning keys* (for `memobuild graph` and `--dry-run`). At
//! build time the REAPI action digest is computed from the real parent
//! filesystem tree and Command. A base image missing from
//! [`BuildOptions::base_images`] is known by reference only; one found there
//! pins its digest, starts the stage from its config and runs its ONBUILD
//! triggers ([`OnbuildTrigger`]) after the FROM, as a stage built `FROM`
//! another stage runs that stage's ONBUILD instructions.
//!
//! # Build checks
//!
//! Where BuildKit warns, the plan warns too: [`BuildGraph::warnings`] holds
//! [`Warning`]s named after BuildKit's build-check rules ([`CheckRule`]),
//! less those `# check=skip=...` (or the `BUILDKIT_DOCKERFILE_CHECK` build
//! argument) skips; with `error=true` any warning fails the plan. Rules
//! BuildKit checks while reading the file warn for every stage; the others
//! only for the stages the target needs, as do errors that BuildKit finds
//! while building a stage.
//!
//! # Errors
//!
//! Every error is a [`memobuild_proto::Error`] (`INVALID_ARGUMENT` for bad
//! input) whose message reads `Dockerfile:LINE:COL: message` followed by the
//! offending line and a caret. Nothing panics on any input.

mod build_context;
mod build_graph;
mod build_options;
mod byte_size;
mod check_config;
mod check_rule;
mod command_line;
mod context_reads;
mod context_scanner;
mod context_scope;
mod copy_instruction;
mod directives;
mod dockerfile;
mod dockerignore;
mod expander;
mod flag_set;
mod from_instruction;
mod git_url;
mod go_duration;
mod healthcheck;
mod heredoc;
mod ignore_pattern;
mod image_config;
mod image_reference;
mod instruction;
mod key_value;
mod line_reader;
mod linter;
mod location;
mod logical_line;
mod mount;
mod onbuild_trigger;
mod parents_path;
mod parser;
mod planner;
mod port_spec;
mod run_instruction;
mod scope;
mod shell_lexer;
mod source_kind;
mod source_text;
mod stage_planner;
mod stat_cache;
mod step_definition;
mod warning;
pub mod words;

pub use build_context::{BuildContext, ContextEntry, ContextNode, HARDLINK_PROPERTY};
pub use build_graph::{BuildGraph, Stage, StageBase, Step};
pub use build_options::{BaseImage, BuildOptions, RemoteSource, PROXY_ARGS};
pub use byte_size::parse_byte_size;
pub use check_config::{CheckConfig, CHECK_BUILD_ARG};
pub use check_rule::CheckRule;
pub use command_line::CommandLine;
pub use context_reads::context_scope;
pub use context_scanner::{ContextScanner, ScanStats};
pub use context_scope::{ContextScope, ScopePart};
pub use copy_instruction::{CopyInstruction, CopySource};
pub use directives::Directives;
pub use dockerfile::Dockerfile;
pub use dockerignore::DockerIgnore;
pub use from_instruction::FromInstruction;
pub use git_url::GitUrl;
pub use go_duration::parse_go_duration;
pub use healthcheck::Healthcheck;
pub use heredoc::{Heredoc, HeredocOpener};
pub use ignore_pattern::{clean_path, IgnorePattern};
pub use image_config::ImageConfig;
pub use image_reference::{check_image_reference, check_image_source};
pub use instruction::{Instruction, InstructionKind};
pub use key_value::{ArgDeclaration, KeyValue};
pub use line_reader::LineReader;
pub use location::Location;
pub use logical_line::LogicalLine;
pub use memobuild_proto::Platform;
pub use mount::{Mount, MountType, Sharing};
pub use onbuild_trigger::OnbuildTrigger;
pub use parents_path::ParentsPath;
pub use planner::Planner;
pub use run_instruction::{MountSpec, NetworkMode, RunInstruction, SecurityMode};
pub use scope::{Reads, Scope};
pub use shell_lexer::ShellLexer;
pub use source_kind::{http_file_name, SourceKind};
pub use source_text::SourceText;
pub use stat_cache::{FileStat, StatCache};
pub use step_definition::{MountDefinition, Origin, RunHeredoc, SourceDefinition, StepDefinition};
pub use warning::Warning;

use memobuild_proto::Result;

/// Plans the build graph of `dockerfile` over `context`.
pub fn plan(dockerfile: &Dockerfile, context: &BuildContext, options: &BuildOptions) -> Result<BuildGraph> {
    Planner::new(dockerfile, context, options).plan()
}

/// Parses and plans in one go, for callers that hold the Dockerfile text.
pub fn plan_text(name: &str, text: &str, context: &BuildContext, options: &BuildOptions) -> Result<BuildGraph> {
    plan(&Dockerfile::parse(name, text)?, context, options)
}
