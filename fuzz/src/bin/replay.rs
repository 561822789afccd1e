//! Runs a fuzz target's body on files (or every file in directories), for
//! reproducing crashes and for checking the corpora on stable Rust:
//! `cargo run --manifest-path fuzz/Cargo.toml --bin replay -- fuzz/corpus/dockerfile`.
//! The target is the corpus directory's name (`fuzz/corpus/<target>/...`),
//! or `--target=<name>` before the paths.

use std::path::Path;

fn target_of(path: &Path) -> Option<String> {
    let mut components = path.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
    components.by_ref().find(|c| c == "corpus")?;
    components.next()
}

fn body(target: &str) -> Option<fn(&[u8])> {
    Some(match target {
        "dockerfile" => memobuild_fuzz::check,
        "resource_name" => memobuild_fuzz::resource_name::check,
        "directory" => memobuild_fuzz::directory::check,
        "decompress" => memobuild_fuzz::decompress::check,
        _ => return None,
    })
}

fn run(path: &Path, check: fn(&[u8])) -> std::io::Result<usize> {
    if path.is_dir() {
        let mut n = 0;
        for entry in std::fs::read_dir(path)? {
            n += run(&entry?.path(), check)?;
        }
        return Ok(n);
    }
    check(&std::fs::read(path)?);
    Ok(1)
}

fn main() -> std::io::Result<()> {
    let mut forced = None;
    let mut total = 0;
    for arg in std::env::args().skip(1) {
        if let Some(name) = arg.strip_prefix("--target=") {
            forced = Some(name.to_string());
            continue;
        }
        let path = Path::new(&arg);
        let target = forced.clone().or_else(|| target_of(path)).unwrap_or_else(|| "dockerfile".into());
        let check = body(&target)
            .ok_or_else(|| std::io::Error::other(format!("no fuzz target {target:?} (for {})", path.display())))?;
        total += run(path, check)?;
    }
    eprintln!("replayed {total} inputs without a panic");
    Ok(())
}
