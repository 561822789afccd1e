//! The resource flags of `docker build`, applied to every RUN step. They
//! are not part of any cache key: a step built with other limits is a hit.

use anyhow::bail;
use memobuild_engine::ResourceLimits;
use memobuild_frontend::parse_byte_size;

/// Docker's smallest memory limit.
const MIN_MEMORY: u64 = 6 << 20;

/// `-m/--memory`, `--memory-swap`, `-c/--cpu-shares`, `--cpu-period`,
/// `--cpu-quota`, `--cpuset-cpus`, `--shm-size`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RunLimitArgs {
    /// Memory limit of each RUN step, e.g. 512m (b, k, m, g suffixes).
    #[arg(short = 'm', long = "memory", value_name = "BYTES", value_parser = parse_byte_size)]
    pub memory: Option<u64>,
    /// Memory plus swap of each RUN step; -1 for unlimited swap [default: twice --memory].
    #[arg(long = "memory-swap", value_name = "BYTES", value_parser = parse_memory_swap, allow_hyphen_values = true)]
    pub memory_swap: Option<i64>,
    /// CPU shares (relative weight, default 1024) of each RUN step.
    #[arg(short = 'c', long = "cpu-shares", value_parser = clap::value_parser!(u64).range(2..=262_144))]
    pub cpu_shares: Option<u64>,
    /// CPU CFS period of each RUN step, in microseconds.
    #[arg(long = "cpu-period", value_parser = clap::value_parser!(u64).range(1_000..=1_000_000))]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota of each RUN step, in microseconds per period.
    #[arg(long = "cpu-quota", value_parser = clap::value_parser!(i64).range(1_000..))]
    pub cpu_quota: Option<i64>,
    /// The CPUs RUN steps may use, e.g. 0-3 or 0,1.
    #[arg(long = "cpuset-cpus", value_name = "CPUS", value_parser = parse_cpuset)]
    pub cpuset_cpus: Option<String>,
    /// Size of /dev/shm in RUN steps [default: 64m].
    #[arg(long = "shm-size", value_name = "BYTES", value_parser = parse_byte_size)]
    pub shm_size: Option<u64>,
}

impl RunLimitArgs {
    /// The limits, checked against each other as Docker does.
    pub fn resource_limits(&self) -> anyhow::Result<ResourceLimits> {
        if let Some(memory) = self.memory.filter(|m| *m < MIN_MEMORY) {
            bail!("--memory {memory}: the minimum is 6m");
        }
        if let Some(swap) = self.memory_swap {
            let Some(memory) = self.memory else { bail!("--memory-swap needs --memory") };
            if swap != -1 && u64::try_from(swap).is_ok_and(|s| s < memory) {
                bail!("--memory-swap {swap} is less than --memory {memory}: it counts memory plus swap");
            }
        }
        if self.shm_size == Some(0) {
            bail!("--shm-size must be more than 0");
        }
        Ok(ResourceLimits {
            memory: self.memory,
            memory_swap: self.memory_swap,
            cpu_shares: self.cpu_shares,
            cpu_period: self.cpu_period,
            cpu_quota: self.cpu_quota,
            cpuset_cpus: self.cpuset_cpus.clone(),
            shm_size: self.shm_size,
        })
    }
}

/// A size, or `-1` for unlimited.
fn parse_memory_swap(text: &str) -> Result<i64, String> {
    if text.trim() == "-1" {
        return Ok(-1);
    }
    let bytes = parse_byte_size(text)?;
    i64::try_from(bytes).map_err(|_| format!("size {text:?} is too large"))
}

/// A CPU list as the kernel takes it: `0-3,5`.
fn parse_cpuset(text: &str) -> Result<String, String> {
    let invalid = || format!("invalid CPU list {text:?} (e.g. 0-3 or 0,1)");
    for item in text.split(',') {
        let (first, last) = item.split_once('-').unwrap_or((item, item));
        let first: u32 = first.parse().map_err(|_| invalid())?;
        let last: u32 = last.parse().map_err(|_| invalid())?;
        if first > last {
            return Err(invalid());
        }
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        limits: RunLimitArgs,
    }

    fn limits(args: &[&str]) -> Result<ResourceLimits, String> {
        let flags =
            Flags::try_parse_from(std::iter::once("build").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        flags.limits.resource_limits().map_err(|e| e.to_string())
    }

    #[test]
    fn flags_become_limits() {
        let all = limits(&[
            "-m",
            "64m",
            "--memory-swap",
            "1g",
            "-c",
            "512",
            "--cpu-period",
            "100000",
            "--cpu-quota",
            "50000",
            "--cpuset-cpus",
            "0-1,3",
            "--shm-size",
            "16m",
        ])
        .unwrap();
        assert_eq!(
            all,
            ResourceLimits {
                memory: Some(64 << 20),
                memory_swap: Some(1 << 30),
                cpu_shares: Some(512),
                cpu_period: Some(100_000),
                cpu_quota: Some(50_000),
                cpuset_cpus: Some("0-1,3".into()),
                shm_size: Some(16 << 20),
            }
        );
        assert_eq!(limits(&["--memory", "1.5g", "--memory-swap", "-1"]).unwrap().memory_swap, Some(-1));
        assert_eq!(limits(&[]).unwrap(), ResourceLimits::default());
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (args, flag) in [
            (&["--memory", "64x"][..], "--memory"),
            (&["--memory", "1m"], "--memory"),
            (&["--memory-swap", "1g"], "--memory-swap"),
            (&["-m", "64m", "--memory-swap", "32m"], "--memory-swap"),
            (&["--cpu-shares", "1"], "--cpu-shares"),
            (&["--cpu-period", "500"], "--cpu-period"),
            (&["--cpu-quota", "10"], "--cpu-quota"),
            (&["--cpuset-cpus", "3-1"], "--cpuset-cpus"),
            (&["--cpuset-cpus", "a"], "--cpuset-cpus"),
            (&["--shm-size", "0"], "--shm-size"),
        ] {
            let err = limits(args).unwrap_err();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}
