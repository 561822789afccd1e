//! RUN's network (issue #21), end to end with a real containerd: the
//! default network reaches a host outside the build (a network namespace
//! this test makes, serving HTTP and DNS) but not this host's loopback or
//! its own addresses; `none` reaches nothing and its failure gets a hint;
//! `host` needs `--allow network.host`; a worker's policy refuses what it
//! forbids before any step runs.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use common::TestServer;
use harness::{fixture, Project, Unpacked};
use memobuild_cli::config::ServerConfig;
use memobuild_worker::network::NetworkConfig;

/// What the outside host serves at `/hello`.
const HELLO: &str = "hello from outside";

/// Serves `/hello` over HTTP on port 8080 and answers every DNS A query
/// with its own address, on the address given as the first argument.
const OUTSIDE_SERVER: &str = r#"
import http.server, socket, struct, sys, threading
address = sys.argv[1]
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from outside"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
def dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, 53))
    while True:
        query, client = s.recvfrom(512)
        end = 12
        while query[end] != 0:
            end += query[end] + 1
        question = query[12:end + 5]
        qtype = struct.unpack(">H", query[end + 1:end + 3])[0]
        answers = 1 if qtype == 1 else 0
        reply = query[:2] + struct.pack(">HHHHH", 0x8180, 1, answers, 0, 0) + question
        if answers:
            reply += struct.pack(">HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
        s.sendto(reply, client)
threading.Thread(target=dns, daemon=True).start()
http.server.HTTPServer((address, 8080), Hello).serve_forever()
"#;

/// A host outside the build: a network namespace joined to this host by a
/// veth pair on a `/30` of its own, running [`OUTSIDE_SERVER`].
struct OutsideHost {
    namespace: String,
    /// This host's end of the pair.
    near: Ipv4Addr,
    /// The outside host's address.
    far: Ipv4Addr,
    server: Option<Child>,
}

impl OutsideHost {
    fn start() -> OutsideHost {
        static NEXT: AtomicU8 = AtomicU8::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let block = ((pid % 60) as u8) * 4 + n;
        let namespace = format!("mbt-out-{pid}-{n}");
        let veth = format!("mbto{}x{n}", pid % 100_000);
        let near = Ipv4Addr::new(10, 214, block, 1);
        let far = Ipv4Addr::new(10, 214, block, 2);
        let mut host = OutsideHost { namespace: namespace.clone(), near, far, server: None };
        ip(
            &[],
            &format!(
                "netns add {namespace}\n\
             link add {veth} type veth peer name eth0 netns {namespace}\n\
             addr add {near}/30 dev {veth}\n\
             link set {veth} up\n"
            ),
        );
        ip(&["-n", &namespace], &format!("addr add {far}/30 dev eth0\nlink set eth0 up\nlink set lo up\n"));
        let server = Command::new("ip")
            .args(["netns", "exec", &namespace, "python3", "-c", OUTSIDE_SERVER, &far.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        host.server = Some(server);
        host.wait_until_serving();
        host
    }

    fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let probe = Command::new("ip")
                .args(["netns", "exec", &self.namespace, "python3", "-c"])
                .arg(format!(
                    "import urllib.request; urllib.request.urlopen('http://{}:8080/hello', timeout=1)",
                    self.far
                ))
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if probe.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the outside host's server did not start");
    }

    fn address(&self) -> String {
        format!("{}:8080", self.far)
    }
}

impl Drop for OutsideHost {
    fn drop(&mut self) {
        if let Some(server) = &mut self.server {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.namespace]).status();
    }
}

/// `ip OPTIONS -batch -` with `commands`.
fn ip(options: &[&str], commands: &str) {
    let mut child = Command::new("ip").args(options).args(["-batch", "-"]).stdin(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(commands.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "ip -batch failed on:\n{commands}");
}

/// A TCP server on `address` that answers every connection with `secret`
/// and stops with the test.
fn secret_server(address: &str, secret: &'static str) -> u16 {
    let listener = TcpListener::bind(address).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{secret}", secret.len());
        }
    });
    port
}

fn project(steps: &str) -> Project {
    Project::new(&[("Dockerfile", &format!("FROM {}\n{steps}", fixture().base()))])
}

/// A RUN step's GET of `/hello` from `address` (HOST:PORT) with busybox's
/// `nc`, the answer and nc's exit code written to `file`. (busybox's wget
/// crashes when a connection fails.)
fn fetch_into(address: &str, file: &str) -> String {
    let (host, port) = address.rsplit_once(':').unwrap();
    format!(
        "(printf 'GET /hello HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {host} {port} > {file} 2>&1; echo \" exit=$?\" >> {file})"
    )
}

/// What `fetch_into` wrote when the connection failed: no body, and nc's
/// own failure (not a crash).
fn assert_unreached(file: &str, seen: &str, secret: &str) {
    assert!(!seen.contains(secret) && seen.ends_with(" exit=1\n"), "{file}: {seen}");
}

#[test]
fn the_default_network_reaches_outside_but_not_this_host() {
    let outside = OutsideHost::start();
    let loopback = secret_server("127.0.0.1:0", "loopback secret");
    let own = secret_server("0.0.0.0:0", "own port secret");
    let project = project(&format!(
        "RUN {} && {} && {} && cat /proc/net/dev > /interfaces\n\
         RUN --network=none {}\n",
        fetch_into(&outside.address(), "/outside"),
        fetch_into(&format!("127.0.0.1:{loopback}"), "/loopback"),
        fetch_into(&format!("{}:{own}", outside.near), "/own-port"),
        fetch_into(&outside.address(), "/none"),
    ));
    let image = project.built_image(&[]);
    let reached = image.read("/outside");
    assert!(reached.ends_with(&format!("{HELLO} exit=0\n")), "{reached}");
    for (file, secret) in [("/loopback", "loopback secret"), ("/own-port", "own port secret"), ("/none", HELLO)] {
        assert_unreached(file, &image.read(file), secret);
    }
    assert!(image.read("/interfaces").contains("eth0"), "the default network has an interface besides lo");
}

#[test]
fn a_run_without_a_network_that_wanted_one_gets_a_hint() {
    let project = project("RUN --network=none nc -w 2 192.0.2.1 80 < /dev/null\n");
    let build = project.build(&[]);
    assert!(!build.ok());
    let stderr = build.stderr();
    assert!(stderr.contains("Dockerfile:2"), "{stderr}");
    assert!(stderr.contains("Network is unreachable"), "{stderr}");
    assert!(stderr.contains("hint: this RUN had no network (--network none or RUN --network=none)"), "{stderr}");

    let other_failure = crate::project("RUN --network=none cat /no/such/file\n").build(&[]);
    assert!(!other_failure.ok());
    assert!(!other_failure.stderr().contains("hint:"), "{}", other_failure.stderr());
}

#[test]
fn the_host_network_needs_the_entitlement() {
    // With --network host every RUN needs it, the first one is named; with
    // RUN --network=host, that step.
    for (dockerfile_run, flags, line) in [
        ("RUN cat /proc/net/dev > /net\n", &["--network", "host"][..], "Dockerfile:2: RUN echo first"),
        ("RUN --network=host cat /proc/net/dev > /net\n", &[], "Dockerfile:3: RUN --network=host"),
    ] {
        let project = project(&format!("RUN echo first > /first\n{dockerfile_run}"));
        let refused = project.build(flags);
        assert!(!refused.ok());
        let stderr = refused.stderr();
        assert!(stderr.contains(line), "{stderr}");
        assert!(stderr.contains("--allow network.host"), "{stderr}");
        assert!(refused.ran().is_empty(), "refused before any step ran: {:?}", refused.ran());

        let mut allowed = flags.to_vec();
        allowed.extend(["--allow", "network.host"]);
        let image = project.built_image(&allowed);
        assert!(image.read("/net").contains("eth0"), "the host's interfaces");
    }
    let unknown = project("RUN true\n").build(&["--allow", "security.everything"]);
    assert!(!unknown.ok());
    assert!(
        unknown.stderr().contains("the entitlements are network.host and security.insecure"),
        "{}",
        unknown.stderr()
    );
}

/// `memobuild remote build` against `server`, writing the image to the project.
fn remote_build(server: &TestServer, project: &Project, args: &[&str]) -> Output {
    let oci = project.path().join("image.tar");
    let mut command = Command::new(env!("CARGO_BIN_EXE_memobuild"));
    command
        .args(["remote", "build", "--endpoint", &format!("grpc://{}", server.addr), "--progress", "plain"])
        .arg("--state-dir")
        .arg(project.state_dir())
        .args(["-t", "img:1", "-o", &format!("type=oci,dest={}", oci.display())])
        .args(args)
        .arg(project.path());
    command.output().unwrap()
}

async fn server_with(dir: &Path, network: NetworkConfig) -> TestServer {
    let mut config = ServerConfig::embedded(dir);
    config.worker.as_mut().unwrap().network = network;
    TestServer::start_with(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_worker_resolves_names_through_its_resolver_config() {
    let outside = OutsideHost::start();
    let dir = tempfile::tempdir().unwrap();
    let resolv_conf = dir.path().join("resolv.conf");
    std::fs::write(&resolv_conf, format!("nameserver {}\nsearch build.test\n", outside.far)).unwrap();
    let network = NetworkConfig { resolv_conf, ..NetworkConfig::default() };
    let server = server_with(&dir.path().join("server"), network).await;
    // busybox's nslookup asks the nameserver of /etc/resolv.conf itself.
    let project = project(
        "RUN cat /etc/resolv.conf > /resolv && ls -l /etc/resolv.conf > /resolv-mode && \
         (nslookup files.build.test > /lookup 2>&1 || true)\n",
    );
    let output = tokio::task::block_in_place(|| remote_build(&server, &project, &[]));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let image = Unpacked::from_oci_tar(&project.path().join("image.tar"), "1");
    let lookup = image.read("/lookup");
    assert!(lookup.contains(&format!("Address: {}", outside.far)), "{lookup}");
    let resolv = image.read("/resolv");
    assert!(
        image.read("/resolv-mode").starts_with("-rw-r--r--"),
        "readable by any user: {}",
        image.read("/resolv-mode")
    );
    assert!(resolv.starts_with("nameserver 10.213."), "the worker's forwarder: {resolv}");
    assert!(resolv.contains("search build.test"), "{resolv}");
    server.stop().await;
}

/// The address a RUN step's `/etc/hosts` gives `gw.internal`.
const GW_ADDRESS: &str = "$(awk '$2 == \"gw.internal\" {print $1}' /etc/hosts)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_gateway_is_the_gateway_of_the_workers_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), NetworkConfig { host: true, ..NetworkConfig::default() }).await;
    let own = secret_server("0.0.0.0:0", "own port secret");
    let project = project(&format!(
        "RUN ip route | awk '$1 == \"default\" {{print $3}}' > /route && grep gw.internal /etc/hosts > /default && {}\n\
         RUN --network=none grep gw.internal /etc/hosts > /none\n\
         RUN --network=host grep gw.internal /etc/hosts > /host && {}\n",
        fetch_into(&format!("{GW_ADDRESS}:{own}"), "/from-default"),
        fetch_into(&format!("{GW_ADDRESS}:{own}"), "/from-host"),
    ));
    let flags = ["--add-host", "gw.internal:host-gateway", "--allow", "network.host"];
    let output = tokio::task::block_in_place(|| remote_build(&server, &project, &flags));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let image = Unpacked::from_oci_tar(&project.path().join("image.tar"), "1");
    let gateway = image.read("/route").trim().to_string();
    assert!(gateway.starts_with("10.213.") && gateway.ends_with(".1"), "the bridge's gateway: {gateway}");
    for file in ["/default", "/none", "/host"] {
        assert_eq!(image.read(file), format!("{gateway}\tgw.internal\n"), "{file}");
    }
    // The default network keeps steps off the worker's host, its gateway
    // included; with the host's network the address is the host's own.
    assert_unreached("/from-default", &image.read("/from-default"), "own port secret");
    let reached = image.read("/from-host");
    assert!(reached.ends_with("own port secret exit=0\n"), "{reached}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_policy_refuses_what_it_forbids_before_any_step_runs() {
    let outside = OutsideHost::start();
    let dir = tempfile::tempdir().unwrap();
    let hermetic = NetworkConfig { egress: false, ..NetworkConfig::default() };
    let server = server_with(dir.path(), hermetic).await;
    let project = project(&format!("RUN echo first > /first\nRUN {}\n", fetch_into(&outside.address(), "/outside")));
    let refused = tokio::task::block_in_place(|| remote_build(&server, &project, &[]));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("Dockerfile:2"), "{stderr}");
    assert!(stderr.contains("network policy forbids egress ([worker.network] egress = false)"), "{stderr}");
    assert!(stderr.contains("0 steps ran, 0 cached"), "no step ran: {stderr}");

    let host = tokio::task::block_in_place(|| {
        remote_build(&server, &project, &["--network", "host", "--allow", "network.host"])
    });
    assert!(!host.status.success());
    assert!(
        String::from_utf8_lossy(&host.stderr).contains("host = false"),
        "{}",
        String::from_utf8_lossy(&host.stderr)
    );

    let offline = tokio::task::block_in_place(|| remote_build(&server, &project, &["--network", "none"]));
    assert!(offline.status.success(), "{}", String::from_utf8_lossy(&offline.stderr));
    let image = Unpacked::from_oci_tar(&project.path().join("image.tar"), "1");
    assert_unreached("/outside", &image.read("/outside"), HELLO);

    // No default network, so no gateway for host-gateway to name.
    let gateway = tokio::task::block_in_place(|| {
        remote_build(&server, &project, &["--network", "none", "--no-cache", "--add-host", "gw:host-gateway"])
    });
    assert!(!gateway.status.success());
    let stderr = String::from_utf8_lossy(&gateway.stderr);
    assert!(stderr.contains("--add-host NAME:host-gateway names the gateway of RUN's default network"), "{stderr}");
    assert!(stderr.contains("egress = false"), "{stderr}");
    assert!(stderr.contains("Dockerfile:2"), "{stderr}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_networks_are_not_reached() {
    let outside = OutsideHost::start();
    let dir = tempfile::tempdir().unwrap();
    let blocked = format!("{}/30", Ipv4Addr::from(u32::from(outside.far) & !3)).parse().unwrap();
    let network = NetworkConfig { blocked: vec![blocked], ..NetworkConfig::default() };
    let server = server_with(dir.path(), network).await;
    let project = project(&format!("RUN {}\n", fetch_into(&outside.address(), "/outside")));
    let output = tokio::task::block_in_place(|| remote_build(&server, &project, &[]));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let image = Unpacked::from_oci_tar(&project.path().join("image.tar"), "1");
    assert_unreached("/outside", &image.read("/outside"), HELLO);
    server.stop().await;
}

/// `[worker] userns_remap`: a cluster worker's RUN steps run in its user
/// namespace (on the default network, whose namespace the worker made), and
/// the image keeps the owners a step set; a bad map stops the worker,
/// naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_worker_runs_steps_in_its_user_namespace() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::embedded(&dir.path().join("server"));
    config.worker.as_mut().unwrap().userns_remap = Some("300000:70000".into());
    let server = TestServer::start_with(config).await;
    let project = project("RUN cat /proc/self/uid_map > /uidmap && mkdir /made && chown 1000:1000 /made\n");
    let output = tokio::task::block_in_place(|| remote_build(&server, &project, &[]));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let image = Unpacked::from_oci_tar(&project.path().join("image.tar"), "1");
    assert_eq!(image.read("/uidmap").split_whitespace().collect::<Vec<_>>(), ["0", "300000", "70000"]);
    let made = std::fs::symlink_metadata(image.rootfs().join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (1000, 1000));

    let refused = Command::new(env!("CARGO_BIN_EXE_memobuild"))
        .args(["worker", "--userns-remap", "5:70000"])
        .args(["--scheduler", &format!("grpc://{}", server.addr), "--cas", &format!("grpc://{}", server.addr)])
        .arg("--state-dir")
        .arg(dir.path().join("worker"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("userns_remap") && stderr.contains("at or above the size"), "{stderr}");
    server.stop().await;
}
