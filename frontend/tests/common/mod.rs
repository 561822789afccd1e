//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use memobuild_frontend::{plan_text, BuildContext, BuildGraph, BuildOptions, ContextNode, Platform};
use memobuild_proto::{Digest, DigestFunction};

/// An in-memory context: (path, content); paths ending in `/` are empty
/// directories, `name -> target` entries are symlinks.
pub fn context(files: &[(&str, &str)]) -> BuildContext {
    let mut nodes = BTreeMap::new();
    for (path, content) in files {
        if let Some(dir) = path.strip_suffix('/') {
            nodes.insert(dir.to_string(), ContextNode::Directory { mode: 0o755 });
        } else if let Some((name, target)) = path.split_once(" -> ") {
            nodes.insert(name.to_string(), ContextNode::Symlink { target: target.to_string() });
        } else {
            let mode = if path.ends_with(".sh") { 0o755 } else { 0o644 };
            nodes.insert(
                path.to_string(),
                ContextNode::File { digest: Digest::of(DigestFunction::Blake3, content.as_bytes()), mode },
            );
        }
    }
    BuildContext::from_nodes(nodes).unwrap()
}

/// Fixed platforms so keys do not depend on the test machine.
pub fn options(args: &[(&str, &str)]) -> BuildOptions {
    BuildOptions {
        build_args: args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        target: None,
        target_platform: Platform::new("linux", "amd64", None),
        build_platform: Platform::new("linux", "amd64", None),
        base_images: Default::default(),
        remote_sources: Default::default(),
        check: false,
        named_contexts: Default::default(),
    }
}

pub fn plan(dockerfile: &str, ctx: &BuildContext, options: &BuildOptions) -> BuildGraph {
    match plan_text("Dockerfile", dockerfile, ctx, options) {
        Ok(g) => g,
        Err(e) => panic!("{}", e.message()),
    }
}

/// Step id -> key hex.
pub fn keys(graph: &BuildGraph) -> BTreeMap<String, String> {
    graph.steps().map(|s| (s.id.clone(), s.key.hex())).collect()
}

/// The ids whose keys differ between two plans of the same Dockerfile.
pub fn changed(a: &BuildGraph, b: &BuildGraph) -> Vec<String> {
    let (ka, kb) = (keys(a), keys(b));
    assert_eq!(ka.keys().collect::<Vec<_>>(), kb.keys().collect::<Vec<_>>(), "same steps");
    ka.iter().filter(|(id, k)| kb[*id] != **k).map(|(id, _)| id.clone()).collect()
}

/// Message of a planning error.
pub fn plan_error(dockerfile: &str, ctx: &BuildContext, options: &BuildOptions) -> String {
    match plan_text("Dockerfile", dockerfile, ctx, options) {
        Ok(_) => panic!("expected an error for:\n{dockerfile}"),
        Err(e) => e.message().to_string(),
    }
}
