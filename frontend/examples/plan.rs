//! Prints the plan of a Dockerfile: `cargo run -p memobuild-frontend
//! --example plan -- CONTEXT [DOCKERFILE] [--target T] [--build-arg K=V]
//! [--format text|json|dot]`.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use memobuild_frontend::{plan_text, BuildOptions, ContextScanner, DockerIgnore};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut options = BuildOptions::default();
    let mut format = "text".to_string();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--target" => options.target = args.next(),
            "--build-arg" => {
                let kv = args.next().unwrap_or_default();
                let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
                options.build_args.insert(k.to_string(), v.to_string());
            }
            "--format" => format = args.next().unwrap_or_default(),
            _ => positional.push(a),
        }
    }
    let context = PathBuf::from(positional.first().cloned().unwrap_or_else(|| ".".into()));
    let dockerfile = positional.get(1).map(PathBuf::from).unwrap_or_else(|| context.join("Dockerfile"));
    let text = std::fs::read_to_string(&dockerfile)?;
    let ignore = DockerIgnore::load(&context, Some(&dockerfile))?;
    let (ctx, _) = ContextScanner::new(&context, ignore).scan()?;
    let name = dockerfile.file_name().and_then(|n| n.to_str()).unwrap_or("Dockerfile");
    match plan_text(name, &text, &ctx, &options) {
        Ok(graph) => match format.as_str() {
            "json" => println!("{}", graph.to_json()),
            "dot" => println!("{}", graph.to_dot()),
            _ => print!("{}", graph.to_text()),
        },
        Err(e) => {
            eprintln!("{}", e.message());
            std::process::exit(1);
        }
    }
    Ok(())
}
