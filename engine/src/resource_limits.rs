/// What a RUN step's container may use: the resource flags of
/// `docker build` (`--memory`, `--memory-swap`, `--cpu-shares`,
/// `--cpu-period`, `--cpu-quota`, `--cpuset-cpus`, `--shm-size`), with
/// Docker's meaning. `None` leaves the runtime's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// Memory plus swap in bytes, `-1` for unlimited swap. Unset with a
    /// memory limit: twice the memory limit, as Docker.
    pub memory_swap: Option<i64>,
    /// Relative CPU weight (1024 is the default).
    pub cpu_shares: Option<u64>,
    /// CFS period in microseconds.
    pub cpu_period: Option<u64>,
    /// CFS quota in microseconds per period.
    pub cpu_quota: Option<i64>,
    /// The CPUs the step may run on, e.g. `0-3,5`.
    pub cpuset_cpus: Option<String>,
    /// Size of `/dev/shm` in bytes (64 MiB when unset).
    pub shm_size: Option<u64>,
}

impl ResourceLimits {
    /// As `memobuild.build.v1` carries them.
    pub fn to_proto(&self) -> memobuild_proto::build::ResourceLimits {
        memobuild_proto::build::ResourceLimits {
            memory: self.memory,
            memory_swap: self.memory_swap,
            cpu_shares: self.cpu_shares,
            cpu_period: self.cpu_period,
            cpu_quota: self.cpu_quota,
            cpuset_cpus: self.cpuset_cpus.clone(),
            shm_size: self.shm_size,
        }
    }

    pub fn from_proto(limits: &memobuild_proto::build::ResourceLimits) -> Self {
        ResourceLimits {
            memory: limits.memory,
            memory_swap: limits.memory_swap,
            cpu_shares: limits.cpu_shares,
            cpu_period: limits.cpu_period,
            cpu_quota: limits.cpu_quota,
            cpuset_cpus: limits.cpuset_cpus.clone(),
            shm_size: limits.shm_size,
        }
    }
}
