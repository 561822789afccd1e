//! The bodies of the fuzz targets, shared by the libFuzzer targets and the
//! `replay` binary (which runs saved inputs on stable Rust). [`check`] is
//! the Dockerfile front end's; the others have a module each.

pub mod decompress;
pub mod directory;
pub mod resource_name;

use std::collections::BTreeMap;

use memobuild_frontend::{
    plan, BuildContext, BuildOptions, ContextNode, DockerIgnore, Dockerfile, Platform, ShellLexer,
};
use memobuild_proto::{Digest, DigestFunction};

fn context() -> BuildContext {
    let mut nodes = BTreeMap::new();
    for (path, data) in [("a", "1"), ("dir/b", "2"), ("dir/sub/c.txt", "3")] {
        nodes.insert(
            path.to_string(),
            ContextNode::File { digest: Digest::of(DigestFunction::Blake3, data.as_bytes()), mode: 0o644 },
        );
    }
    nodes.insert("link".into(), ContextNode::Symlink { target: "dir".into() });
    nodes.insert("out".into(), ContextNode::Symlink { target: "../..".into() });
    nodes.insert("empty".into(), ContextNode::Directory { mode: 0o755 });
    BuildContext::from_nodes(nodes).unwrap_or_else(|_| BuildContext::empty())
}

/// Runs one input through the parser, the planner, the lexer and the
/// `.dockerignore` matcher. Errors are fine; panics and hangs are bugs.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(dockerfile) = Dockerfile::parse("Dockerfile", &text) {
        let mut options = BuildOptions {
            target_platform: Platform::new("linux", "amd64", None),
            build_platform: Platform::new("linux", "arm64", Some("v8")),
            ..BuildOptions::default()
        };
        options.build_args.insert("A".into(), "1".into());
        let ctx = context();
        if let Ok(graph) = plan(&dockerfile, &ctx, &options) {
            let _ = graph.to_json();
            let _ = graph.to_dot();
            let _ = graph.to_text();
        }
    }
    for escape in ['\\', '`'] {
        let lexer = ShellLexer::new(escape);
        let mut lookup = |name: &str| (name == "A").then(|| "x y".to_string());
        let _ = lexer.process_word(&text, &mut lookup);
        let _ = lexer.process_words(&text, &mut lookup);
    }
    if let Ok(ignore) = DockerIgnore::parse(&text) {
        for path in ["a", "dir/b", "dir/sub/c.txt", "x/y/z"] {
            let _ = ignore.is_excluded(path);
        }
    }
}
