//! Runs the fuzz target's body on files (or every file in directories),
//! for reproducing crashes and for checking the corpus on stable Rust:
//! `cargo run --manifest-path fuzz/Cargo.toml --bin replay -- fuzz/corpus/dockerfile`.

use std::path::Path;

fn run(path: &Path) -> std::io::Result<usize> {
    if path.is_dir() {
        let mut n = 0;
        for entry in std::fs::read_dir(path)? {
            n += run(&entry?.path())?;
        }
        return Ok(n);
    }
    memobuild_fuzz::check(&std::fs::read(path)?);
    Ok(1)
}

fn main() -> std::io::Result<()> {
    let mut total = 0;
    for arg in std::env::args().skip(1) {
        total += run(Path::new(&arg))?;
    }
    eprintln!("replayed {total} inputs without a panic");
    Ok(())
}
