//! `memobuild graph`: a Dockerfile's build graph, without building.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use memobuild_frontend::{plan_text, BuildGraph, BuildOptions, ContextScanner, DockerIgnore};

/// How the graph is printed.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum GraphFormat {
    /// One line per step with its key.
    Text,
    Json,
    /// Graphviz.
    Dot,
    /// The binary `memobuild.build.v1.BuildGraph` message.
    Proto,
}

/// Plans the build of `context` with `dockerfile` (default `CONTEXT/Dockerfile`).
/// The context scan keeps its stat cache under `cache_dir`. Build-check
/// warnings are written to stderr (they are in the graph too, and in its
/// JSON form).
pub fn plan(
    context: &Path,
    dockerfile: Option<&Path>,
    target: Option<String>,
    build_args: BTreeMap<String, String>,
    cache_dir: &Path,
) -> anyhow::Result<BuildGraph> {
    let dockerfile: PathBuf = dockerfile.map(Path::to_path_buf).unwrap_or_else(|| context.join("Dockerfile"));
    let text = std::fs::read_to_string(&dockerfile).with_context(|| format!("reading {}", dockerfile.display()))?;
    let ignore = DockerIgnore::load(context, Some(&dockerfile)).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    let (scanned, _) = ContextScanner::new(context, ignore)
        .with_cache_dir(cache_dir)
        .scan()
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    let options = BuildOptions { build_args, target, ..BuildOptions::default() };
    let name = dockerfile.to_string_lossy();
    // The message already names the file, line and column, with a caret.
    let graph = plan_text(&name, &text, &scanned, &options).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    std::io::stderr().write_all(graph.warnings_text().as_bytes())?;
    Ok(graph)
}

pub fn render(graph: &BuildGraph, format: GraphFormat) -> Vec<u8> {
    match format {
        GraphFormat::Text => graph.to_text().into_bytes(),
        GraphFormat::Json => graph.to_json().into_bytes(),
        GraphFormat::Dot => graph.to_dot().into_bytes(),
        GraphFormat::Proto => prost::Message::encode_to_vec(&graph.to_proto()),
    }
}
