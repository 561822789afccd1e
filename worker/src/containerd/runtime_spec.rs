use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memobuild_proto::{Error, Result};
use oci_spec::runtime::{
    get_default_maskedpaths, get_default_mounts, get_default_readonly_paths, Capabilities, Capability, LinuxBuilder,
    LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::seccomp_profile::default_seccomp;
use super::{ContainerPurpose, ContainerSpec, SpecMount, StepNetwork};
use memobuild_oci::ResolvedUser;

/// `PATH` when the step's environment has none (Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where the shared-memory tmpfs is mounted.
const SHM: &str = "/dev/shm";
const SYS: &str = "/sys";
/// cgroup v1's memory+swap limit; without it (no swap accounting) only
/// memory is limited, as Docker does.
const CGROUP_V1_MEMSW: &str = "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes";
/// The open-files limits of a step.
const NOFILE_SOFT: u64 = 1024;
const NOFILE_HARD: u64 = 1_048_576;
/// The umask a step runs with (Docker's).
const STEP_UMASK: u32 = 0o022;
/// Host files bound read-only into a step with host networking.
const HOST_NETWORK_FILES: [&str; 2] = [RESOLV_CONF, "/etc/hosts"];
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The processes (and threads) a step may have at once: a fork bomb stops
/// here, a parallel `make` or a JVM does not.
const PIDS_LIMIT: i64 = 16384;

/// The OCI runtime spec of a RUN step, and every path something is mounted
/// on in the container (absolute), which the layer leaves out.
pub(super) struct RuntimeSpec {
    pub(super) spec: Spec,
    pub(super) mount_targets: Vec<String>,
}

/// Docker's default capability set.
fn default_capabilities() -> Capabilities {
    [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::NetRaw,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ]
    .into_iter()
    .collect()
}

/// Every capability this worker holds (its bounding set), for insecure
/// steps: runc cannot give more.
fn all_capabilities() -> Capabilities {
    use Capability::*;
    // In the kernel's numbering.
    let by_number = [
        Chown,
        DacOverride,
        DacReadSearch,
        Fowner,
        Fsetid,
        Kill,
        Setgid,
        Setuid,
        Setpcap,
        LinuxImmutable,
        NetBindService,
        NetBroadcast,
        NetAdmin,
        NetRaw,
        IpcLock,
        IpcOwner,
        SysModule,
        SysRawio,
        SysChroot,
        SysPtrace,
        SysPacct,
        SysAdmin,
        SysBoot,
        SysNice,
        SysResource,
        SysTime,
        SysTtyConfig,
        Mknod,
        Lease,
        AuditWrite,
        AuditControl,
        Setfcap,
        MacOverride,
        MacAdmin,
        Syslog,
        WakeAlarm,
        BlockSuspend,
        AuditRead,
        Perfmon,
        Bpf,
        CheckpointRestore,
    ];
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    by_number.into_iter().enumerate().filter(|(bit, _)| bounding & (1 << bit) != 0).map(|(_, c)| c).collect()
}

fn spec_error(what: &str) -> impl Fn(oci_spec::OciSpecError) -> Error + '_ {
    move |e| Error::internal(format!("building the runtime spec ({what}): {e}"))
}

/// Builds the spec for container `container_id`, whose root filesystem is
/// mounted at `rootfs`.
pub(super) fn runtime_spec(
    spec: &ContainerSpec,
    user: &ResolvedUser,
    container_id: &str,
    rootfs: &Path,
) -> Result<RuntimeSpec> {
    if spec.argv.is_empty() {
        return Err(Error::invalid_argument(format!("step {}: empty command", spec.id_hint)));
    }
    let cwd = if spec.cwd.is_empty() { "/" } else { spec.cwd.as_str() };
    if !cwd.starts_with('/') {
        return Err(Error::invalid_argument(format!(
            "step {}: working directory {cwd:?} is not absolute",
            spec.id_hint
        )));
    }

    let mut env = spec.env.clone();
    let has = |env: &[String], key: &str| env.iter().any(|e| e.split_once('=').is_some_and(|(k, _)| k == key));
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={}", user.home));
    }

    let capabilities = match (spec.purpose, spec.insecure) {
        (ContainerPurpose::Action, _) => Capabilities::new(),
        (ContainerPurpose::Step, true) => all_capabilities(),
        (ContainerPurpose::Step, false) => default_capabilities(),
    };
    // As Docker: a non-root user starts without effective or permitted
    // capabilities (setuid binaries give them back only in insecure mode,
    // no_new_privs stops them otherwise).
    let (effective, permitted) = if user.uid == 0 {
        (capabilities.clone(), capabilities.clone())
    } else {
        (Capabilities::new(), Capabilities::new())
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(capabilities)
        .effective(effective)
        .permitted(permitted)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(spec_error("capabilities"))?;
    // Docker's umask, never the one this process (or containerd) inherited:
    // it decides the modes of every file the step creates.
    let user_spec = UserBuilder::default()
        .uid(user.uid)
        .gid(user.gid)
        .umask(STEP_UMASK)
        .additional_gids(user.additional_gids.clone())
        .build()
        .map_err(spec_error("user"))?;
    // 1024:1048576 as Docker, but never above what runc itself may raise
    // it to (it inherits this process's hard limit, when containerd is ours).
    let hard = host_nofile_hard_limit().unwrap_or(NOFILE_HARD).min(NOFILE_HARD);
    let rlimit = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(NOFILE_SOFT.min(hard))
        .hard(hard)
        .build()
        .map_err(spec_error("rlimits"))?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user_spec)
        .args(spec.argv.clone())
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(vec![rlimit])
        .no_new_privileges(!spec.insecure)
        .build()
        .map_err(spec_error("process"))?;

    let mut mounts: Vec<Mount> = get_default_mounts();
    // A user namespace may mount sysfs only in a network namespace of its
    // own: in a joined one (or the host's) it gets the host's, read-only,
    // as Docker does.
    if spec.user_namespace.is_some() && spec.network != StepNetwork::Isolated {
        let host_sys = bind_or_mount("bind", Path::new(SYS), SYS, &["rbind", "nosuid", "noexec", "nodev", "ro"])?;
        // In its place: the cgroup mount below it comes after.
        for sys in mounts.iter_mut().filter(|m| m.destination() == Path::new(SYS)) {
            *sys = host_sys.clone();
        }
    }
    if let Some(size) = spec.limits.shm_size {
        let shm = mounts.iter_mut().find(|m| m.destination() == Path::new(SHM));
        if let Some(shm) = shm {
            let mut options: Vec<String> = shm.options().clone().unwrap_or_default();
            options.retain(|o| !o.starts_with("size="));
            options.push(format!("size={size}"));
            shm.set_options(Some(options));
        }
    }
    for mount in &spec.mounts {
        let target = mount.target();
        if !target.starts_with('/') || target == "/" {
            return Err(Error::invalid_argument(format!(
                "step {}: mount target {target:?} must be an absolute path below /",
                spec.id_hint
            )));
        }
        let (typ, source, options): (&str, PathBuf, Vec<&str>) = match mount {
            SpecMount::Bind { source, readonly, .. } | SpecMount::View { source, readonly, .. } => {
                ("bind", source.clone(), vec!["rbind", if *readonly { "ro" } else { "rw" }])
            }
            SpecMount::Tmpfs { .. } => ("tmpfs", PathBuf::from("tmpfs"), vec!["nosuid", "nodev", "mode=1777"]),
            SpecMount::Cache { source, .. } => ("bind", source.clone(), vec!["rbind", "rw"]),
        };
        mounts.push(bind_or_mount(typ, &source, target, &options)?);
    }
    // A file the step's own mounts provide (a generated /etc/hosts) stays.
    let network_files: Vec<(&Path, &str)> = match &spec.network {
        StepNetwork::Isolated => Vec::new(),
        StepNetwork::Joined { resolv_conf, .. } => vec![(resolv_conf.as_path(), RESOLV_CONF)],
        StepNetwork::Host => HOST_NETWORK_FILES.iter().map(|f| (Path::new(*f), *f)).collect(),
    };
    for (source, target) in network_files {
        if source.exists() && !spec.mounts.iter().any(|m| m.target() == target) {
            mounts.push(bind_or_mount("bind", source, target, &["rbind", "ro"])?);
        }
    }
    let mount_targets = mounts.iter().map(|m| m.destination().to_string_lossy().into_owned()).collect();

    let mut namespaces =
        [LinuxNamespaceType::Pid, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts, LinuxNamespaceType::Mount]
            .into_iter()
            .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(spec_error("namespaces"))?;
    let network = match &spec.network {
        StepNetwork::Isolated => Some(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).build()),
        StepNetwork::Joined { netns, .. } => {
            Some(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).path(netns.clone()).build())
        }
        StepNetwork::Host => None,
    };
    if let Some(network) = network {
        namespaces.push(network.map_err(spec_error("network namespace"))?);
    }
    if spec.user_namespace.is_some() {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .build()
                .map_err(spec_error("user namespace"))?,
        );
    }

    let deny_all =
        LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().map_err(spec_error("devices"))?;
    let pids = LinuxPidsBuilder::default().limit(PIDS_LIMIT).build().map_err(spec_error("pids"))?;
    let mut resources = LinuxResourcesBuilder::default().devices(vec![deny_all]).pids(pids);
    let limits = &spec.limits;
    if let Some(memory) = limits.memory {
        let limit = i64::try_from(memory).unwrap_or(i64::MAX);
        // As Docker: swap defaults to as much as the memory, and is left
        // alone where the kernel cannot limit it.
        let swap = limits.memory_swap.unwrap_or_else(|| limit.saturating_mul(2));
        let mut memory = LinuxMemoryBuilder::default().limit(limit);
        if swap_limit_supported() {
            memory = memory.swap(swap);
        }
        resources = resources.memory(memory.build().map_err(spec_error("memory"))?);
    }
    if limits.cpu_shares.is_some()
        || limits.cpu_period.is_some()
        || limits.cpu_quota.is_some()
        || limits.cpuset_cpus.is_some()
    {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(shares) = limits.cpu_shares {
            cpu = cpu.shares(shares);
        }
        if let Some(period) = limits.cpu_period {
            cpu = cpu.period(period);
        }
        if let Some(quota) = limits.cpu_quota {
            cpu = cpu.quota(quota);
        }
        if let Some(cpus) = &limits.cpuset_cpus {
            cpu = cpu.cpus(cpus.clone());
        }
        resources = resources.cpu(cpu.build().map_err(spec_error("cpu"))?);
    }
    let mut linux = LinuxBuilder::default();
    if let Some(map) = spec.user_namespace {
        let mapping =
            |host: u32| LinuxIdMappingBuilder::default().container_id(0u32).host_id(host).size(map.size).build();
        linux = linux
            .uid_mappings(vec![mapping(map.uid).map_err(spec_error("uid map"))?])
            .gid_mappings(vec![mapping(map.gid).map_err(spec_error("gid map"))?]);
    }
    let linux = linux
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(format!("/memobuild/{container_id}")))
        .resources(resources.build().map_err(spec_error("resources"))?);
    let linux = if spec.insecure {
        linux
    } else {
        linux
            .masked_paths(get_default_maskedpaths())
            .readonly_paths(get_default_readonly_paths())
            .seccomp(default_seccomp()?)
    };
    let linux = linux.build().map_err(spec_error("linux"))?;

    let hostname = if spec.hostname.is_empty() { "memobuild".to_string() } else { spec.hostname.clone() };
    let spec = SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(RootBuilder::default().path(rootfs).readonly(false).build().map_err(spec_error("root"))?)
        .hostname(hostname)
        .mounts(mounts)
        .linux(linux)
        .annotations(HashMap::new())
        .build()
        .map_err(spec_error("spec"))?;
    Ok(RuntimeSpec { spec, mount_targets })
}

/// The hard `RLIMIT_NOFILE` of this process, from `/proc/self/limits`.
fn host_nofile_hard_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let fields: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
    match fields.get(1)? {
        &"unlimited" => None,
        hard => hard.parse().ok(),
    }
}

/// Whether the kernel limits swap: always on cgroup v2, on v1 only with
/// swap accounting.
fn swap_limit_supported() -> bool {
    let v1 = Path::new("/sys/fs/cgroup/memory").is_dir();
    !v1 || Path::new(CGROUP_V1_MEMSW).exists()
}

fn bind_or_mount(typ: &str, source: &Path, target: &str, options: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(target)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_error("mounts"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd::{IdMap, ResourceLimits};

    #[test]
    fn spec_has_the_namespaces_mounts_and_user() {
        let spec = ContainerSpec {
            id_hint: "t".into(),
            argv: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            cwd: "/work".into(),
            mounts: vec![SpecMount::Tmpfs { target: "/tmp/t".into() }],
            limits: ResourceLimits {
                memory: Some(64 << 20),
                cpu_quota: Some(150_000),
                cpu_period: Some(100_000),
                cpu_shares: Some(512),
                cpuset_cpus: Some("0".into()),
                shm_size: Some(16 << 20),
                ..Default::default()
            },
            ..Default::default()
        };
        let user = ResolvedUser { uid: 1000, gid: 100, additional_gids: vec![10], home: "/home/u".into() };
        let built = runtime_spec(&spec, &user, "c1", Path::new("/rootfs")).expect("spec");
        let json = serde_json::to_value(&built.spec).expect("json");
        assert_eq!(json["process"]["user"]["uid"], 1000);
        assert_eq!(json["process"]["user"]["umask"], 0o022, "whatever umask the builder has");
        assert_eq!(json["process"]["cwd"], "/work");
        assert!(json["process"]["env"].as_array().expect("env").iter().any(|e| e == "HOME=/home/u"));
        assert_eq!(json["root"]["readonly"], false);
        assert_eq!(json["linux"]["cgroupsPath"], "/memobuild/c1");
        let resources = &json["linux"]["resources"];
        assert_eq!(resources["cpu"]["quota"], 150_000);
        assert_eq!(resources["cpu"]["period"], 100_000);
        assert_eq!(resources["cpu"]["shares"], 512);
        assert_eq!(resources["cpu"]["cpus"], "0");
        assert_eq!(resources["memory"]["limit"], 64 << 20);
        if swap_limit_supported() {
            assert_eq!(resources["memory"]["swap"], 128 << 20, "twice the memory, as Docker");
        }
        let shm = json["mounts"].as_array().expect("mounts").iter().find(|m| m["destination"] == SHM).expect("shm");
        let options: Vec<&str> =
            shm["options"].as_array().expect("options").iter().filter_map(|o| o.as_str()).collect();
        assert!(options.contains(&"size=16777216"), "{options:?}");
        assert!(!options.contains(&"size=65536k"), "{options:?}");
        let namespaces: Vec<&str> =
            json["linux"]["namespaces"].as_array().expect("ns").iter().filter_map(|n| n["type"].as_str()).collect();
        assert!(namespaces.contains(&"network"), "{namespaces:?}");
        assert!(built.mount_targets.iter().any(|t| t == "/tmp/t"));
        assert!(built.mount_targets.iter().any(|t| t == "/proc"));
    }

    #[test]
    fn a_user_namespace_maps_ids_and_binds_sysfs_in_a_joined_network() {
        let map = IdMap { uid: 100000, gid: 200000, size: 65536 };
        let spec = |network| ContainerSpec {
            id_hint: "t".into(),
            argv: vec!["true".into()],
            network,
            user_namespace: Some(map),
            ..Default::default()
        };
        let user = ResolvedUser { uid: 0, gid: 0, additional_gids: vec![], home: "/root".into() };
        let json = |spec: &ContainerSpec| {
            serde_json::to_value(&runtime_spec(spec, &user, "c3", Path::new("/rootfs")).expect("spec").spec)
                .expect("json")
        };
        let sys = |json: &serde_json::Value| {
            json["mounts"].as_array().expect("mounts").iter().find(|m| m["destination"] == SYS).expect("/sys")["type"]
                .clone()
        };
        let own = json(&spec(StepNetwork::Isolated));
        assert_eq!(
            own["linux"]["uidMappings"][0],
            serde_json::json!({"containerID": 0, "hostID": 100000, "size": 65536})
        );
        assert_eq!(own["linux"]["gidMappings"][0]["hostID"], 200000);
        assert!(own["linux"]["namespaces"].as_array().expect("ns").iter().any(|n| n["type"] == "user"));
        assert_eq!(sys(&own), "sysfs", "its own network namespace: a sysfs of its own");
        let joined = json(&spec(StepNetwork::Joined { netns: "/run/netns/n".into(), resolv_conf: "/r".into() }));
        assert_eq!(sys(&joined), "bind", "a joined network namespace: the host's /sys, read-only");
    }

    #[test]
    fn a_hosts_file_of_the_step_replaces_the_hosts_own() {
        let spec = ContainerSpec {
            id_hint: "t".into(),
            argv: vec!["true".into()],
            network: StepNetwork::Host,
            mounts: vec![SpecMount::Bind {
                source: "/tmp/generated-hosts".into(),
                target: "/etc/hosts".into(),
                readonly: true,
            }],
            ..Default::default()
        };
        let user = ResolvedUser { uid: 0, gid: 0, additional_gids: vec![], home: "/root".into() };
        let json = serde_json::to_value(&runtime_spec(&spec, &user, "c2", Path::new("/rootfs")).expect("spec").spec)
            .expect("json");
        let hosts: Vec<&serde_json::Value> =
            json["mounts"].as_array().expect("mounts").iter().filter(|m| m["destination"] == "/etc/hosts").collect();
        assert_eq!(hosts.len(), 1, "{hosts:?}");
        assert_eq!(hosts[0]["source"], "/tmp/generated-hosts");
    }
}
