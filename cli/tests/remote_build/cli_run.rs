//! One `memobuild remote ...` process, its output captured as it comes so
//! a test can act in the middle of a build (kill the CLI, a worker, cancel).
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::progress_log::Progress;

/// No remote command of these tests takes longer (the slowest step sleeps
/// a few seconds); past it the test fails instead of hanging.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// How a client reaches one cluster: the endpoint and a state dir of its
/// own for the stat cache.
pub struct Client {
    pub endpoint: String,
    pub state: tempfile::TempDir,
}

impl Client {
    pub fn new(endpoint: &str) -> Client {
        Client { endpoint: endpoint.to_string(), state: tempfile::tempdir().unwrap() }
    }

    /// `memobuild remote build --endpoint E --progress plain --state-dir S ARGS CONTEXT`.
    pub fn start_build(&self, context: &Path, args: &[&str], env: &[(&str, &str)]) -> CliRun {
        let mut all: Vec<String> = ["build", "--endpoint", &self.endpoint, "--progress", "plain", "--state-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        all.push(self.state.path().display().to_string());
        all.extend(args.iter().map(|s| s.to_string()));
        all.push(context.display().to_string());
        CliRun::start(&all, env)
    }

    pub fn build(&self, context: &Path, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        self.start_build(context, args, env).finish()
    }

    /// `remote build` told the endpoint by `MEMOBUILD_ENDPOINT` instead of `--endpoint`.
    pub fn build_with_env_endpoint(&self, context: &Path, args: &[&str]) -> CliOutput {
        let mut all: Vec<String> =
            ["build", "--progress", "plain", "--state-dir"].iter().map(|s| s.to_string()).collect();
        all.push(self.state.path().display().to_string());
        all.extend(args.iter().map(|s| s.to_string()));
        all.push(context.display().to_string());
        CliRun::start(&all, &[("MEMOBUILD_ENDPOINT", &self.endpoint)]).finish()
    }

    /// `memobuild remote attach ID --endpoint E --progress plain`.
    pub fn attach(&self, id: &str) -> CliOutput {
        self.command(&["attach", id, "--endpoint", &self.endpoint, "--progress", "plain"])
    }

    pub fn cancel(&self, id: &str) -> CliOutput {
        self.command(&["cancel", id, "--endpoint", &self.endpoint])
    }

    /// `memobuild remote ls`, as (id, state, dockerfile) rows.
    pub fn ls(&self) -> Vec<(String, String, String)> {
        let out = self.command(&["ls", "--endpoint", &self.endpoint]);
        assert!(out.ok(), "remote ls failed:\n{}", out.stderr);
        out.stdout
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                Some((fields.next()?.to_string(), fields.next()?.to_string(), fields.collect::<Vec<_>>().join(" ")))
            })
            .collect()
    }

    /// The id of the one build `remote ls` shows for the Dockerfile in `context`.
    pub fn build_of(&self, context: &Path) -> (String, String) {
        let dockerfile = context.canonicalize().unwrap().join("Dockerfile").display().to_string();
        let rows: Vec<_> = self.ls().into_iter().filter(|(_, _, file)| *file == dockerfile).collect();
        assert_eq!(rows.len(), 1, "remote ls should show one build of {dockerfile}: {rows:?}");
        let (id, state, _) = rows.into_iter().next().unwrap();
        (id, state)
    }

    fn command(&self, args: &[&str]) -> CliOutput {
        let all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        CliRun::start(&all, &[]).finish()
    }
}

/// A running `memobuild remote ARGS`.
pub struct CliRun {
    child: Child,
    stderr: Arc<(Mutex<String>, Condvar)>,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    pub args: Vec<String>,
}

impl CliRun {
    fn start(args: &[String], env: &[(&str, &str)]) -> CliRun {
        let mut command = Command::new(env!("CARGO_BIN_EXE_memobuild"));
        command.arg("remote").args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.env_remove("SOURCE_DATE_EPOCH").env_remove("MEMOBUILD_ENDPOINT");
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stderr = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let reader = BufReader::new(child.stderr.take().unwrap());
        let shared = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let (text, changed) = &*shared;
                let mut text = text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
                changed.notify_all();
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        CliRun { child, stderr, stdout: Some(stdout), stderr_reader: Some(stderr_reader), args: args.to_vec() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_so_far(&self) -> String {
        self.stderr.0.lock().unwrap().clone()
    }

    /// Waits until the progress shows what `found` looks for; returns it.
    /// Fails if the CLI exits first or the time is up.
    pub fn wait_for<T>(&mut self, what: &str, found: impl Fn(&Progress) -> Option<T>) -> T {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let text = self.stderr_so_far();
            if let Some(value) = found(&Progress::parse(&text)) {
                return value;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // The last lines may still be in the pipe.
                if let Some(reader) = self.stderr_reader.take() {
                    reader.join().unwrap();
                }
                let text = self.stderr_so_far();
                if let Some(value) = found(&Progress::parse(&text)) {
                    return value;
                }
                panic!("`memobuild remote {}` exited ({status}) before {what}:\n{text}", self.args.join(" "));
            }
            assert!(Instant::now() < deadline, "{what} not seen in time:\n{text}");
            let (lock, changed) = &*self.stderr;
            let guard = lock.lock().unwrap();
            let _ = changed.wait_timeout(guard, Duration::from_millis(100)).unwrap();
        }
    }

    /// SIGKILL.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to exit (failing the test past
    /// [`COMMAND_TIMEOUT`]).
    pub fn finish(self) -> CliOutput {
        self.finish_within(COMMAND_TIMEOUT)
    }

    pub fn finish_within(mut self, timeout: Duration) -> CliOutput {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "`memobuild remote {}` did not finish within {timeout:?}:\n{}",
                    self.args.join(" "),
                    self.stderr_so_far()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().unwrap();
        }
        let stdout = self.stdout.take().unwrap().join().unwrap();
        CliOutput { status, stdout, stderr: self.stderr_so_far(), args: self.args.clone() }
    }
}

impl Drop for CliRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a finished `memobuild remote ...` left.
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub args: Vec<String>,
}

impl CliOutput {
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// Fails the test with the whole output unless the command succeeded.
    pub fn assert_ok(&self) -> &Self {
        assert!(self.ok(), "`memobuild remote {}` failed ({}):\n{}", self.args.join(" "), self.status, self.stderr);
        self
    }

    pub fn progress(&self) -> Progress {
        Progress::parse(&self.stderr)
    }

    /// The last line on stdout: the digest or id the command printed.
    pub fn printed(&self) -> String {
        self.stdout.lines().last().unwrap_or_default().trim().to_string()
    }
}
