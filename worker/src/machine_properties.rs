//! What this machine is, as REAPI platform properties (the names of the
//! REAPI platform lexicon): `ISA`, `cores` and `memory-mb`.

/// The properties that describe this machine; a fact that cannot be read
/// is left out.
pub fn machine_properties() -> Vec<(String, String)> {
    let mut properties = vec![("ISA".to_string(), isa(std::env::consts::ARCH).to_string())];
    if let Ok(cores) = std::thread::available_parallelism() {
        properties.push(("cores".into(), cores.to_string()));
    }
    if let Some(kib) = std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(mem_total_kib) {
        properties.push(("memory-mb".into(), (kib / 1024).to_string()));
    }
    properties
}

/// The lexicon's ISA name of a Rust target architecture.
fn isa(arch: &str) -> &str {
    match arch {
        "x86_64" => "x86-64",
        "x86" => "x86-32",
        "aarch64" => "armv8-a",
        other => other,
    }
}

/// `MemTotal` of `/proc/meminfo`, in KiB.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_lexicon_names() {
        assert_eq!(isa("x86_64"), "x86-64");
        assert_eq!(isa("aarch64"), "armv8-a");
        assert_eq!(mem_total_kib("MemTotal:       24576000 kB\nMemFree: 1 kB\n"), Some(24576000));
        assert_eq!(mem_total_kib("garbage"), None);
        let names: Vec<String> = machine_properties().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["ISA", "cores", "memory-mb"]);
    }
}
