//! What another process on this machine costs: resident memory from
//! `/proc/PID/status` and CPU time from `/proc/PID/stat` (Linux only).

use anyhow::Context;

/// Clock ticks per second of the `utime`/`stime` fields. `sysconf(_SC_CLK_TCK)`
/// is 100 on every Linux architecture this runs on.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// `VmRSS` of process `pid`, in KiB.
pub fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status_field_kib(&text, "VmRSS").with_context(|| format!("{path} has no VmRSS line"))
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
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
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
        assert_eq!(stat_cpu_ticks("4242 (short) S 1"), None);
        assert_eq!(stat_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(resident_kib(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
    }
}
