//! A cluster of real, separate processes: `memobuild cas`, `memobuild
//! scheduler` and `memobuild worker`s, each logging to its own file under
//! the cluster's directory (tests grep those logs).
//!
//! Everything the cluster starts is stopped when it is dropped, and also
//! when the test process ends without dropping it (a cluster kept in a
//! static): a reaper process waits for the test process, then stops the
//! roles, the private containerds the workers started, their shims and
//! mounts, and removes the directory.
#![allow(clippy::unwrap_used, dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a role may take to start (a worker's private containerd included).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub workers: usize,
    pub slots: u32,
    /// `--lease-seconds` of the scheduler.
    pub lease_seconds: Option<u64>,
    /// `MEMOBUILD_LOG` of every role (their default when `None`).
    pub log_filter: Option<String>,
    /// `--postgres URL` of the scheduler (else SQLite in its state dir).
    pub postgres: Option<String>,
    /// The CAS on this config file (else embedded state in its state dir).
    pub cas_config: Option<CasConfig>,
    /// Added to the workers' environment (e.g. `MEMOBUILD_LOG_FORMAT`).
    pub worker_env: Vec<(String, String)>,
    /// Added to the scheduler's environment.
    pub scheduler_env: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            workers: 2,
            slots: 2,
            lease_seconds: None,
            log_filter: None,
            postgres: None,
            cas_config: None,
            worker_env: Vec::new(),
            scheduler_env: Vec::new(),
        }
    }
}

/// `memobuild cas --config PATH`, run with `env` added to its environment
/// (what the file's `${NAME}`s name).
#[derive(Clone, Debug)]
pub struct CasConfig {
    pub path: PathBuf,
    pub env: Vec<(String, String)>,
}

impl CasConfig {
    /// The value this config's environment gives `name`.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Starts `memobuild cas` on this config, gRPC and admin on loopback
    /// ports of its own, logging to `log`; returns it with its gRPC address.
    pub fn spawn(&self, log: PathBuf, log_filter: Option<&str>) -> (RoleProcess, String) {
        let path = self.path.to_str().unwrap();
        let args = ["cas", "--config", path, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
        let mut cas = RoleProcess::spawn_with_env(&args, &self.env, log, log_filter);
        let address = cas.listening_address();
        (cas, address)
    }
}

/// One role: the process, and the file its stderr goes to.
pub struct RoleProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl RoleProcess {
    /// Starts `memobuild ARGS` with stderr in `log`.
    fn spawn(args: &[&str], log: PathBuf, log_filter: Option<&str>) -> RoleProcess {
        Self::spawn_with_env(args, &[], log, log_filter)
    }

    /// Starts `memobuild ARGS` with `env` added and stderr in `log`.
    pub fn spawn_with_env(
        args: &[&str],
        env: &[(String, String)],
        log: PathBuf,
        log_filter: Option<&str>,
    ) -> RoleProcess {
        let file = File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_memobuild"));
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        if let Some(filter) = log_filter {
            command.env("MEMOBUILD_LOG", filter);
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("memobuild {args:?}: {e}"));
        RoleProcess { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).to_string()
    }

    /// Waits until a line of the log satisfies `found`; returns that line.
    /// Fails when the process exits or the time is up.
    pub fn wait_for_line(&mut self, what: &str, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(line) = self.log_text().lines().find(|l| found(l)) {
                return line.to_string();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited ({status}) before {what}:\n{}", self.log.display(), self.log_text());
            }
            assert!(Instant::now() < deadline, "{} not seen in {}:\n{}", what, self.log.display(), self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin (`/metrics`, `/healthz`) address the role logs once it listens.
    pub fn admin_address(&mut self) -> String {
        let line = self.wait_for_line("admin listening", |l| l.contains("admin listening"));
        // A text line ends `address=A`; a JSON line holds `"address":"A"`.
        match line.split_once("\"address\":\"") {
            Some((_, rest)) => rest.split('"').next().unwrap().to_string(),
            None => line.rsplit("address=").next().unwrap().trim().to_string(),
        }
    }

    /// The gRPC address the role logs once it listens.
    pub fn listening_address(&mut self) -> String {
        let line = self.wait_for_line("memobuild listening", |l| l.contains("memobuild listening"));
        line.rsplit("address=").next().unwrap().trim().to_string()
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.child.try_wait().unwrap().is_none() {
            let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
            let deadline = Instant::now() + grace;
            while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct ProcessCluster {
    /// Holds `cas/`, `scheduler/`, `worker-N/` state dirs and `logs/`.
    pub dir: PathBuf,
    pub cas: RoleProcess,
    pub cas_address: String,
    pub scheduler: RoleProcess,
    pub scheduler_address: String,
    /// `None` once killed.
    pub workers: Vec<Option<RoleProcess>>,
    options: ClusterOptions,
    reaper: Option<Child>,
}

impl ProcessCluster {
    /// Starts the roles and waits until every worker has connected.
    pub fn start(options: ClusterOptions) -> ProcessCluster {
        let dir = tempfile::Builder::new().prefix("mb-cluster-").tempdir().unwrap().keep();
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let filter = options.log_filter.as_deref();
        let (cas, cas_address) = match &options.cas_config {
            Some(config) => config.spawn(dir.join("logs/cas.log"), filter),
            None => {
                let cas_state = dir.join("cas");
                let mut cas = RoleProcess::spawn(
                    &[
                        "cas",
                        "--listen",
                        "127.0.0.1:0",
                        "--admin-listen",
                        "127.0.0.1:0",
                        "--state-dir",
                        cas_state.to_str().unwrap(),
                    ],
                    dir.join("logs/cas.log"),
                    filter,
                );
                let address = cas.listening_address();
                (cas, address)
            }
        };
        let mut scheduler = Self::spawn_scheduler(&dir, &cas_address, "127.0.0.1:0", &options, "scheduler.log");
        let scheduler_address = scheduler.listening_address();
        let mut cluster = ProcessCluster {
            dir,
            cas,
            cas_address,
            scheduler,
            scheduler_address,
            workers: Vec::new(),
            options,
            reaper: None,
        };
        for index in 0..cluster.options.workers {
            let worker = cluster.spawn_worker(index);
            cluster.workers.push(Some(worker));
        }
        cluster.reaper = Some(cluster.spawn_reaper());
        for index in 0..cluster.workers.len() {
            let name = cluster.worker_name(index).unwrap();
            cluster.scheduler.wait_for_line(&format!("worker {name} connected"), |l| {
                l.contains("worker connected") && l.contains(&format!("worker={name} "))
            });
        }
        cluster
    }

    fn spawn_scheduler(
        dir: &Path,
        cas_address: &str,
        listen: &str,
        options: &ClusterOptions,
        log: &str,
    ) -> RoleProcess {
        let state = dir.join("scheduler");
        let cas = format!("grpc://{cas_address}");
        let lease = options.lease_seconds.map(|s| s.to_string());
        let mut args = vec![
            "scheduler",
            "--listen",
            listen,
            "--admin-listen",
            "127.0.0.1:0",
            "--cas",
            &cas,
            "--state-dir",
            state.to_str().unwrap(),
        ];
        if let Some(lease) = &lease {
            args.extend(["--lease-seconds", lease]);
        }
        if let Some(url) = &options.postgres {
            args.extend(["--postgres", url]);
        }
        // A CAS on PostgreSQL metadata: the scheduler pins in it, as a cluster's does.
        let metadata = options.cas_config.as_ref().map(|c| (c.var("DATABASE_URL"), c.var("DATABASE_SCHEMA")));
        if let Some((Some(url), Some(schema))) = &metadata {
            args.extend(["--cas-metadata", url, "--cas-metadata-schema", schema]);
        }
        let log = dir.join("logs").join(log);
        RoleProcess::spawn_with_env(&args, &options.scheduler_env, log, options.log_filter.as_deref())
    }

    /// SIGKILLs the scheduler and starts it again on the same address and
    /// state dir (logging to a new file).
    pub fn restart_scheduler(&mut self) {
        self.scheduler.kill();
        let restarts = self.logs().iter().filter(|l| l.to_string_lossy().contains("scheduler")).count();
        self.scheduler = Self::spawn_scheduler(
            &self.dir,
            &self.cas_address,
            &self.scheduler_address,
            &self.options,
            &format!("scheduler-{restarts}.log"),
        );
        let address = self.scheduler.listening_address();
        assert_eq!(address, self.scheduler_address, "the scheduler came back on its address");
    }

    fn spawn_worker(&self, index: usize) -> RoleProcess {
        let state = self.worker_dir(index);
        let scheduler = format!("grpc://{}", self.scheduler_address);
        let cas = format!("grpc://{}", self.cas_address);
        let slots = self.options.slots.to_string();
        let args = [
            "worker",
            "--scheduler",
            &scheduler,
            "--cas",
            &cas,
            "--state-dir",
            state.to_str().unwrap(),
            "--slots",
            &slots,
            "--admin-listen",
            "127.0.0.1:0",
        ];
        let log = self.dir.join(format!("logs/worker-{index}.log"));
        RoleProcess::spawn_with_env(&args, &self.options.worker_env, log, self.options.log_filter.as_deref())
    }

    /// `grpc://SCHEDULER`, what clients are given.
    pub fn endpoint(&self) -> String {
        format!("grpc://{}", self.scheduler_address)
    }

    pub fn worker_dir(&self, index: usize) -> PathBuf {
        self.dir.join(format!("worker-{index}"))
    }

    /// `HOST:PID`, the name worker `index` registers under.
    pub fn worker_name(&self, index: usize) -> Option<String> {
        self.workers[index].as_ref().map(|w| format!("{}:{}", hostname(), w.pid()))
    }

    pub fn worker_names(&self) -> Vec<String> {
        (0..self.workers.len()).filter_map(|i| self.worker_name(i)).collect()
    }

    /// The index of the live worker registered as `name`.
    pub fn worker_index(&self, name: &str) -> Option<usize> {
        (0..self.workers.len()).find(|i| self.worker_name(*i).as_deref() == Some(name))
    }

    /// SIGKILLs worker `index`.
    pub fn kill_worker(&mut self, index: usize) {
        self.workers[index].take().expect("worker already killed").kill();
    }

    /// Every log the roles wrote (a restarted role's earlier ones too).
    pub fn logs(&self) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> =
            std::fs::read_dir(self.dir.join("logs")).unwrap().map(|e| e.unwrap().path()).collect();
        logs.sort();
        logs
    }

    /// A process that cleans up after the test process if it ends without
    /// dropping this cluster; it exits on its own once the directory is gone.
    fn spawn_reaper(&self) -> Child {
        let mut pids: Vec<String> = self.workers.iter().flatten().map(|w| w.pid().to_string()).collect();
        pids.push(self.scheduler.pid().to_string());
        pids.push(self.cas.pid().to_string());
        let script = format!(
            r#"test_pid=$1; dir=$2; shift 2
while kill -0 "$test_pid" 2>/dev/null && [ -d "$dir" ]; do sleep 1; done
[ -d "$dir" ] || exit 0
{CLEANUP}"#
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("reaper")
            .arg(std::process::id().to_string())
            .arg(&self.dir)
            .args(pids)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh")
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        // Workers first: a worker stopped gracefully stops its private containerd.
        for worker in self.workers.iter_mut().flatten() {
            worker.stop(Duration::from_secs(15));
        }
        self.scheduler.stop(Duration::from_secs(5));
        self.cas.stop(Duration::from_secs(5));
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("dir=$1; shift\n{CLEANUP}"))
            .arg("cleanup")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // It sees the directory gone within a second.
        if let Some(mut reaper) = self.reaper.take() {
            let _ = reaper.wait();
        }
    }
}

/// With `$dir` and the role pids in `$@`: stops the roles (SIGTERM, then
/// SIGKILL), then what a SIGKILLed worker leaves behind (its private
/// containerd, containerd shims naming the directory, mounts under it), and
/// removes the directory.
const CLEANUP: &str = r#"
if [ $# -gt 0 ]; then
  kill -TERM "$@" 2>/dev/null
  i=0
  while [ $i -lt 150 ]; do
    alive=
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && break
    sleep 0.1; i=$((i+1))
  done
  kill -KILL "$@" 2>/dev/null
fi
for f in $(find "$dir" -name containerd.pid 2>/dev/null); do
  p=$(cat "$f"); [ -n "$p" ] && kill -TERM "$p" 2>/dev/null
done
sleep 0.5
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  [ "$pid" = "$$" ] && continue
  if tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -qF -- "$dir/"; then kill -KILL "$pid" 2>/dev/null; fi
done
awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
rm -rf "$dir"
"#;

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap()
}
