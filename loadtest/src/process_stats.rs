//! What another process on this machine costs: resident memory (now and
//! at its peak) from `/proc/PID/status` and CPU time from `/proc/PID/stat` (Linux only).

use anyhow::Context;

/// Clock ticks per second of the `utime`/`stime` fields. `sysconf(_SC_CLK_TCK)`
/// is 100 on every Linux architecture this runs on.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds of process `pid`'s children that have exited and been
/// waited for (`cutime + cstime`): the commands a worker ran.
pub fn children_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = stat_children_cpu_ticks(&text).with_context(|| format!("{path}: unexpected format"))?;
    Ok(ticks as f64 / CLOCK_TICKS_PER_SECOND)
}

/// `VmRSS` of process `pid`, in KiB.
pub fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status_field_kib(&text, "VmRSS").with_context(|| format!("{path} has no VmRSS line"))
}

/// `VmHWM` of process `pid` (the most resident memory it has had), in KiB.
pub fn peak_resident_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status_field_kib(&text, "VmHWM").with_context(|| format!("{path} has no VmHWM line"))
}

/// User plus system CPU seconds process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = stat_cpu_ticks(&text).with_context(|| format!("{path}: unexpected format"))?;
    Ok(ticks as f64 / CLOCK_TICKS_PER_SECOND)
}

/// The value of a `Name:   1234 kB` line of `/proc/PID/status`, in KiB.
pub fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let mut words = rest.split_whitespace();
        let value = words.next()?.parse().ok()?;
        matches!(words.next(), Some("kB") | None).then_some(value)
    })
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    Some(stat_field(stat, 14)? + stat_field(stat, 15)?)
}

/// `cutime + cstime` (fields 16 and 17) of a `/proc/PID/stat` line.
pub fn stat_children_cpu_ticks(stat: &str) -> Option<u64> {
    Some(stat_field(stat, 16)? + stat_field(stat, 17)?)
}

/// Numeric field `n` (1-based, as in proc(5)) of a `/proc/PID/stat` line,
/// counted from the last `)` since the command name may hold spaces.
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // The first field after the name is field 3 (state).
    after_name.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_vm_rss_in_kib() {
        let status = "Name:\tmemobuild\nVmPeak:\t  900000 kB\nVmRSS:\t   51234 kB\nRssAnon:\t 40000 kB\n";
        assert_eq!(status_field_kib(status, "VmRSS"), Some(51234));
        assert_eq!(status_field_kib(status, "VmPeak"), Some(900000));
        assert_eq!(status_field_kib(status, "VmHWM"), None);
        // A prefix of another field's name is not that field.
        assert_eq!(status_field_kib("VmRSSx:\t1 kB\n", "VmRSS"), None);
    }

    #[test]
    fn counts_stat_fields_from_the_last_parenthesis() {
        let stat = "4242 (memo (build) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(1290));
        assert_eq!(stat_children_cpu_ticks(stat), Some(0));
        let with_children = "7 (w) S 1 7 7 0 -1 0 0 0 0 0 10 20 300 40 20 0 1 0";
        assert_eq!(stat_children_cpu_ticks(with_children), Some(340));
        assert_eq!(stat_cpu_ticks("4242 (short) S 1"), None);
        assert_eq!(stat_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(resident_kib(pid).unwrap() > 0);
        assert!(peak_resident_kib(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(children_cpu_seconds(pid).unwrap() >= 0.0);
    }
}
