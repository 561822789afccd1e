//! Rough timings for the benchmarks: parsing and planning a
//! 10,000-line Dockerfile, and scanning a 2,000-file / 200 MB context cold
//! and again unchanged (stat cache). `cargo run --release -p
//! memobuild-frontend --example bench`.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use memobuild_frontend::{plan, BuildContext, BuildOptions, ContextScanner, DockerIgnore, Dockerfile};

fn main() {
    let mut text = String::from("ARG BASE=alpine\nFROM $BASE AS build\nFROM $BASE\nARG V=1\nWORKDIR /src\n");
    let mut lines = 4;
    let mut i = 0;
    while lines < 10_000 {
        let _ = write!(
            text,
            "RUN --mount=type=cache,target=/c echo {i} \\\n  && true\nCOPY --from=build /src/{i} /x/\nLABEL l{i}=\"${{V}}-{i}\"\n"
        );
        if i % 100 == 0 {
            let _ = writeln!(text, "ENV K{i}=v{i}");
            lines += 1;
        }
        lines += 4;
        i += 1;
    }
    let start = Instant::now();
    let df = Dockerfile::parse("Dockerfile", &text).unwrap();
    let parsed = start.elapsed();
    let start = Instant::now();
    let graph = plan(&df, &BuildContext::empty(), &BuildOptions::default()).unwrap();
    println!("parse {lines} lines: {parsed:?}; plan {} steps: {:?}", graph.steps().count(), start.elapsed());

    let dir = tempfile::tempdir().unwrap();
    let chunk = vec![7u8; 100 * 1024];
    for f in 0..2000 {
        let path = dir.path().join(format!("d{}/f{f}", f % 40));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut data = chunk.clone();
        data[..8].copy_from_slice(&(f as u64).to_le_bytes());
        std::fs::write(&path, &data).unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    let scanner = ContextScanner::new(dir.path(), DockerIgnore::default()).with_cache_dir(cache.path());
    let start = Instant::now();
    let (_, stats) = scanner.scan().unwrap();
    println!("cold scan of {} files / {} MB: {:?}", stats.files, stats.bytes_hashed >> 20, start.elapsed());
    let start = Instant::now();
    let (_, stats) = scanner.scan().unwrap();
    println!("unchanged scan: {:?} ({} files re-hashed)", start.elapsed(), stats.hashed);
}
