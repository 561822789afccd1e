//! `memobuild build`, `memobuild explain-cache` and `memobuild prune`: the
//! flags, an embedded node (the engine's stores in the state dir and an
//! in-process step executor) and the progress views. The build itself is
//! the engine's ([`memobuild_engine::ImageBuild`]).

mod build_command;
mod build_source;
mod finish_steps;
mod flag_values;
mod local_state;
mod progress;
mod prune;
mod run_limits;

pub use build_command::{
    anyhow_of, cancel_on_signals, explain_cache, run, write_results, BuildArgs, BuildInputs, BuildOutcome, ContextPart,
};
pub use finish_steps::{finish_steps, FINISH_STEPS};
pub use progress::{render, ProgressMode, StepCounts};
pub use prune::{prune, PruneArgs, PruneReport};
