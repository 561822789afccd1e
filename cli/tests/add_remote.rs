//! `ADD` of remote sources end to end: files from an HTTP server the test
//! runs on loopback, repositories from `git daemon`; the images are checked
//! with umoci.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use harness::{fixture, sh, Build, Project, Unpacked};
use memobuild_proto::{Digest, DigestFunction};

/// `Last-Modified` of every served file: 2015-10-21T07:28:00Z.
const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
const LAST_MODIFIED_EPOCH: i64 = 1_445_412_480;

/// What the server answered to one request.
#[derive(Clone, Debug, PartialEq)]
struct Served {
    path: String,
    /// The `If-None-Match` the client sent.
    if_none_match: Option<String>,
    status: u16,
    body_bytes: usize,
}

/// What a [`FileServer`] holds and what it has answered since last asked.
#[derive(Default)]
struct Site {
    files: HashMap<String, Vec<u8>>,
    /// Whether files are served with an `ETag` and a `Last-Modified`.
    validators: bool,
    log: Vec<Served>,
}

/// A minimal HTTP/1.1 server: GET of a path it holds, 404 otherwise; with
/// validators, 304 to an `If-None-Match` naming the file's ETag.
struct FileServer {
    port: u16,
    site: Arc<Mutex<Site>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FileServer {
    fn start() -> FileServer {
        Self::serving(true)
    }

    /// A server that sends neither `ETag` nor `Last-Modified`.
    fn without_validators() -> FileServer {
        Self::serving(false)
    }

    fn serving(validators: bool) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let site = Arc::new(Mutex::new(Site { validators, ..Site::default() }));
        let stop = Arc::new(AtomicBool::new(false));
        let (served, stopping) = (site.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    serve(stream, &served);
                }
            }
        });
        FileServer { port, site, stop, thread: Some(thread) }
    }

    /// The requests answered since the last call.
    fn served(&self) -> Vec<Served> {
        std::mem::take(&mut self.site.lock().unwrap().log)
    }

    fn put(&self, path: &str, content: &str) {
        self.put_bytes(path, content.as_bytes().to_vec());
    }

    fn put_bytes(&self, path: &str, content: Vec<u8>) {
        self.site.lock().unwrap().files.insert(path.to_string(), content);
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Closes the port: later requests are refused.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The ETag the server gives `content`.
fn etag(content: &[u8]) -> String {
    format!("\"{}\"", &Digest::of(DigestFunction::Sha256, content).hex()[..16])
}

fn serve(mut stream: TcpStream, site: &Mutex<Site>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    let if_none_match = text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("if-none-match").then(|| value.trim().to_string())
    });
    let mut site = site.lock().unwrap();
    let (status, head, body) = match site.files.get(&path) {
        None => (404, "404 Not Found".to_string(), Vec::new()),
        Some(content) if !site.validators => (200, "200 OK".to_string(), content.clone()),
        Some(content) => {
            let etag = etag(content);
            let head = format!("ETag: {etag}\r\nLast-Modified: {LAST_MODIFIED}");
            match if_none_match.as_deref() == Some(etag.as_str()) {
                true => (304, format!("304 Not Modified\r\n{head}"), Vec::new()),
                false => (200, format!("200 OK\r\n{head}"), content.clone()),
            }
        }
    };
    site.log.push(Served { path, if_none_match, status, body_bytes: body.len() });
    drop(site);
    let length = if status == 304 { String::new() } else { format!("Content-Length: {}\r\n", body.len()) };
    let _ = write!(stream, "HTTP/1.1 {head}\r\n{length}Connection: close\r\n\r\n");
    let _ = stream.write_all(&body);
}

fn sha256(content: &str) -> String {
    format!("sha256:{}", Digest::of(DigestFunction::Sha256, content.as_bytes()).hex())
}

/// Builds into an OCI tar and unpacks it; `None` when the build failed.
fn build_image(project: &Project, args: &[&str]) -> (Build, Option<Unpacked>) {
    let out = project.path().join("image.tar");
    let _ = std::fs::remove_file(&out);
    let dest = format!("type=oci,dest={}", out.display());
    let mut all = vec!["-t", "remote:1", "--output", &dest];
    all.extend_from_slice(args);
    let build = project.build(&all);
    let image = build.ok().then(|| Unpacked::from_oci_tar(&out, "1"));
    (build, image)
}

fn meta(image: &Unpacked, path: &str) -> std::fs::Metadata {
    std::fs::symlink_metadata(image.rootfs().join(path.trim_start_matches('/'))).unwrap()
}

#[test]
fn http_files_are_named_owned_and_cached_by_content() {
    let server = FileServer::start();
    server.put("/files/tool.sh", "echo v1\n");
    let url = server.url("/files/tool.sh");
    let dockerfile = format!(
        "FROM {}\nADD {url} /dir/\nADD {url} /opt/renamed\nADD --chown=app:app --chmod=755 {url} /usr/local/bin/tool\n",
        fixture().base()
    );
    let project = Project::new(&[("Dockerfile", &dockerfile)]);

    let (first, image) = build_image(&project, &[]);
    let image = image.unwrap_or_else(|| panic!("{}", first.stderr()));
    assert_eq!(first.ran(), ["0.1", "0.2", "0.3"]);
    assert_eq!(image.read("/dir/tool.sh"), "echo v1\n");
    assert_eq!(image.read("/opt/renamed"), "echo v1\n");
    assert!(!image.exists("/opt/renamed/tool.sh"));
    let added = meta(&image, "/dir/tool.sh");
    assert_eq!((added.uid(), added.gid(), added.mode() & 0o7777), (0, 0, 0o600));
    assert_eq!(added.mtime(), LAST_MODIFIED_EPOCH, "mtime comes from Last-Modified");
    assert_eq!(meta(&image, "/opt/renamed").mode() & 0o7777, 0o600);
    let tool = meta(&image, "/usr/local/bin/tool");
    assert_eq!((tool.uid(), tool.gid(), tool.mode() & 0o7777), (1000, 1000, 0o755));

    let again = project.build(&[]);
    assert!(again.ok(), "{}", again.stderr());
    assert!(again.ran().is_empty(), "unchanged content is cached: {:?}", again.ran());
    assert_eq!(again.cached(), ["0.1", "0.2", "0.3"]);

    server.put("/files/tool.sh", "echo v2\n");
    let dry = project.build(&["--dry-run"]);
    assert!(dry.ok(), "{}", dry.stderr());
    assert_eq!(dry.ran(), ["0.1", "0.2", "0.3"], "--dry-run sees the new content");
    let (changed, image) = build_image(&project, &[]);
    let image = image.unwrap_or_else(|| panic!("{}", changed.stderr()));
    assert_eq!(changed.ran(), ["0.1", "0.2", "0.3"]);
    assert_eq!(image.read("/dir/tool.sh"), "echo v2\n");

    let missing =
        Project::new(&[("Dockerfile", &format!("FROM {}\nADD {} /x\n", fixture().base(), server.url("/nope")))]);
    let failed = missing.build(&[]);
    assert!(!failed.ok());
    assert!(
        failed.stderr().contains(&format!("ADD {}: the server answered 404", server.url("/nope"))),
        "{}",
        failed.stderr()
    );
}

/// `memobuild prune ARGS` of `project`'s state dir.
fn prune(project: &Project, args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_memobuild"))
        .arg("prune")
        .arg("--state-dir")
        .arg(project.state_dir())
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "prune failed: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn unchanged_files_are_asked_for_with_their_etag_and_not_downloaded_again() {
    let server = FileServer::start();
    let v1 = "v1 ".repeat(10_000);
    server.put("/data.txt", &v1);
    let url = server.url("/data.txt");
    let project = Project::new(&[("Dockerfile", &format!("FROM {}\nADD {url} /data.txt\n", fixture().base()))]);
    let full = |body: &str, if_none_match: Option<String>| Served {
        path: "/data.txt".into(),
        if_none_match,
        status: 200,
        body_bytes: body.len(),
    };
    let not_modified = |body: &str| Served {
        path: "/data.txt".into(),
        if_none_match: Some(etag(body.as_bytes())),
        status: 304,
        body_bytes: 0,
    };

    let (first, image) = build_image(&project, &[]);
    let image = image.unwrap_or_else(|| panic!("{}", first.stderr()));
    assert_eq!(image.read("/data.txt"), v1);
    assert_eq!(server.served(), [full(&v1, None)]);

    let again = project.build(&[]);
    assert!(again.ok(), "{}", again.stderr());
    assert_eq!(again.cached(), ["0.1"]);
    assert_eq!(server.served(), [not_modified(&v1)], "a conditional request, answered without a body");

    // Run again, the step takes the file from the CAS, still without a body.
    let (rerun, image) = build_image(&project, &["--no-cache"]);
    let image = image.unwrap_or_else(|| panic!("{}", rerun.stderr()));
    assert_eq!(rerun.ran(), ["0.1"]);
    assert_eq!(image.read("/data.txt"), v1);
    assert_eq!(meta(&image, "/data.txt").mtime(), LAST_MODIFIED_EPOCH, "the mtime is remembered too");
    assert_eq!(server.served(), [not_modified(&v1)]);

    let v2 = "v2 ".repeat(5_000);
    server.put("/data.txt", &v2);
    let (changed, image) = build_image(&project, &[]);
    let image = image.unwrap_or_else(|| panic!("{}", changed.stderr()));
    assert_eq!(changed.ran(), ["0.1"], "new content runs the step again");
    assert_eq!(image.read("/data.txt"), v2);
    assert_eq!(server.served(), [full(&v2, Some(etag(v1.as_bytes())))]);

    // Once prune removed the file, it is downloaded again.
    prune(&project, &["--keep-storage", "0", "-f"]);
    let (pruned, image) = build_image(&project, &[]);
    let image = image.unwrap_or_else(|| panic!("{}", pruned.stderr()));
    assert_eq!(pruned.ran(), ["0.1"]);
    assert_eq!(image.read("/data.txt"), v2);
    assert_eq!(server.served(), [full(&v2, None)]);
}

#[test]
fn files_without_validators_are_downloaded_on_each_build() {
    let server = FileServer::without_validators();
    server.put("/plain.txt", "plain v1\n");
    let url = server.url("/plain.txt");
    let project = Project::new(&[("Dockerfile", &format!("FROM {}\nADD {url} /plain.txt\n", fixture().base()))]);
    let full =
        |body: &str| Served { path: "/plain.txt".into(), if_none_match: None, status: 200, body_bytes: body.len() };

    let (first, image) = build_image(&project, &[]);
    let image = image.unwrap_or_else(|| panic!("{}", first.stderr()));
    assert_eq!(image.read("/plain.txt"), "plain v1\n");
    assert_eq!(server.served(), [full("plain v1\n")]);

    let again = project.build(&[]);
    assert!(again.ok(), "{}", again.stderr());
    assert_eq!(again.cached(), ["0.1"], "the same content is cached");
    assert_eq!(server.served(), [full("plain v1\n")]);

    server.put("/plain.txt", "plain v2\n");
    let (changed, image) = build_image(&project, &[]);
    let image = image.unwrap_or_else(|| panic!("{}", changed.stderr()));
    assert_eq!(changed.ran(), ["0.1"]);
    assert_eq!(image.read("/plain.txt"), "plain v2\n");
    assert_eq!(server.served(), [full("plain v2\n")]);
}

#[test]
fn checksum_is_verified_and_lets_rebuilds_work_offline() {
    let mut server = FileServer::start();
    let content = "pinned content\n";
    server.put("/pinned.txt", content);
    let url = server.url("/pinned.txt");
    let wrong = sha256("something else\n");
    let project = Project::new(&[
        ("Dockerfile", &format!("FROM {}\nADD --checksum={} {url} /pinned.txt\n", fixture().base(), sha256(content))),
        ("Dockerfile.wrong", &format!("FROM {}\nADD --checksum={wrong} {url} /pinned.txt\n", fixture().base())),
    ]);

    let bad = project.build(&["-f", project.path().join("Dockerfile.wrong").to_str().unwrap()]);
    assert!(!bad.ok());
    let said = bad.stderr();
    let want = format!("Dockerfile.wrong:2: ADD {url}: checksum mismatch: expected {wrong}, got {}", sha256(content));
    assert!(said.contains(&want), "{said}");

    let (good, image) = build_image(&project, &[]);
    let image = image.unwrap_or_else(|| panic!("{}", good.stderr()));
    assert_eq!(image.read("/pinned.txt"), content);

    // With the server gone the file comes from the CAS: the step is cached,
    // and run again (--no-cache) it still has the file.
    server.stop();
    let offline = project.build(&[]);
    assert!(offline.ok(), "{}", offline.stderr());
    assert_eq!(offline.cached(), ["0.1"]);
    let (rerun, image) = build_image(&project, &["--no-cache"]);
    let image = image.unwrap_or_else(|| panic!("{}", rerun.stderr()));
    assert_eq!(rerun.ran(), ["0.1"]);
    assert_eq!(image.read("/pinned.txt"), content);
}

/// Bare repositories served by `git daemon`, each with a work tree that
/// pushes to it; `repo` is there from the start.
struct GitServer {
    dir: tempfile::TempDir,
    port: u16,
    daemon: Child,
}

impl GitServer {
    fn start() -> GitServer {
        let dir = tempfile::tempdir().unwrap();
        let served = dir.path().join("served");
        std::fs::create_dir_all(&served).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // git-daemon itself: `git daemon` runs it as a child, which killing
        // `git` would leave behind.
        let exec_path = sh("git", &["--exec-path"]);
        let daemon = Command::new(Path::new(exec_path.trim()).join("git-daemon"))
            .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", served.display()))
            .arg(&served)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "git daemon did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let server = GitServer { dir, port, daemon };
        server.add_repo("repo");
        server
    }

    /// A new served repository `name` and its work tree, whose origin is
    /// the served one (so submodules can be added at relative URLs).
    fn add_repo(&self, name: &str) {
        let bare = self.served(name);
        git(self.dir.path(), &["init", "--quiet", "--bare", "-b", "main", bare.to_str().unwrap()]);
        let work = self.work_of(name);
        git(self.dir.path(), &["init", "--quiet", "-b", "main", work.to_str().unwrap()]);
        git(&work, &["remote", "add", "origin", &self.url_of(name, "")]);
    }

    fn served(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join("served").join(format!("{name}.git"))
    }

    fn work_of(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join("work").join(name)
    }

    /// Writes files (`*.sh` executable), commits them on main and pushes
    /// main (and `tag`).
    fn commit(&self, files: &[(&str, &str)], tag: Option<&str>) {
        self.commit_in("repo", files, tag);
    }

    fn commit_in(&self, name: &str, files: &[(&str, &str)], tag: Option<&str>) {
        let work = self.work_of(name);
        for (path, content) in files {
            let full = work.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, content).unwrap();
            if path.ends_with(".sh") {
                sh("chmod", &["755", full.to_str().unwrap()]);
            }
        }
        git(&work, &["add", "-A"]);
        git(&work, &["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "change"]);
        let remote = self.served(name);
        let mut push = vec!["push", "--quiet", "--force", remote.to_str().unwrap(), "main"];
        if let Some(tag) = tag {
            git(&work, &["tag", tag]);
            push.push(tag);
        }
        git(&work, &push);
    }

    /// Adds `url` as a submodule at `path` of `name`'s work tree (committed
    /// with the next `commit_in`).
    fn add_submodule(&self, name: &str, url: &str, path: &str) {
        let add = ["-c", "protocol.file.allow=always", "submodule", "add", "--quiet", url, path];
        git(&self.work_of(name), &add);
    }

    fn url(&self, fragment: &str) -> String {
        self.url_of("repo", fragment)
    }

    /// `name`'s URL, `#fragment` after it unless empty.
    fn url_of(&self, name: &str, fragment: &str) -> String {
        let url = format!("git://127.0.0.1:{}/{name}.git", self.port);
        if fragment.is_empty() {
            url
        } else {
            format!("{url}#{fragment}")
        }
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn git(dir: &Path, args: &[&str]) {
    sh("git", &[&["-C", dir.to_str().unwrap()], args].concat());
}

#[test]
fn git_sources_are_checked_out_and_keyed_by_commit() {
    let server = GitServer::start();
    let files = [("README.md", "v1 readme\n"), ("docs/guide.txt", "guide v1\n"), ("bin/run.sh", "echo run\n")];
    server.commit(&files, Some("v1"));
    let dockerfile = format!(
        "FROM {}\nADD {} /src/\nADD {} /docs\nADD --keep-git-dir {} /kept\n",
        fixture().base(),
        server.url("v1"),
        server.url("main:docs"),
        server.url("v1"),
    );
    let project = Project::new(&[("Dockerfile", &dockerfile)]);

    let (first, image) = build_image(&project, &[]);
    let image = image.unwrap_or_else(|| panic!("{}", first.stderr()));
    assert_eq!(image.read("/src/README.md"), "v1 readme\n");
    assert_eq!(image.read("/src/docs/guide.txt"), "guide v1\n");
    let run = meta(&image, "/src/bin/run.sh");
    assert_eq!((run.uid(), run.gid(), run.mode() & 0o7777), (0, 0, 0o755));
    assert_eq!(meta(&image, "/src/README.md").mode() & 0o7777, 0o644);
    assert!(!image.exists("/src/.git"), "no .git without --keep-git-dir");
    assert_eq!(image.read("/docs/guide.txt"), "guide v1\n");
    assert!(!image.exists("/docs/README.md"), "only the subdirectory");
    assert!(image.exists("/kept/.git"));
    assert_eq!(image.read("/kept/README.md"), "v1 readme\n");

    let again = project.build(&[]);
    assert!(again.ok(), "{}", again.stderr());
    assert!(again.ran().is_empty(), "{:?}", again.ran());

    // A new commit on main: only the step that adds main runs (and those after it).
    server.commit(&[("docs/guide.txt", "guide v2\n")], None);
    let (moved, image) = build_image(&project, &[]);
    let image = image.unwrap_or_else(|| panic!("{}", moved.stderr()));
    assert_eq!(moved.ran(), ["0.2", "0.3"]);
    assert_eq!(moved.cached(), ["0.1"]);
    assert_eq!(image.read("/docs/guide.txt"), "guide v2\n");
    assert_eq!(image.read("/src/docs/guide.txt"), "guide v1\n");

    let bad_ref =
        Project::new(&[("Dockerfile", &format!("FROM {}\nADD {} /x\n", fixture().base(), server.url("nope")))]);
    let failed = bad_ref.build(&[]);
    assert!(!failed.ok());
    assert!(failed.stderr().contains(&format!("ADD {}", server.url("nope"))), "{}", failed.stderr());
    assert!(failed.stderr().contains("couldn't find remote ref nope"), "{}", failed.stderr());
}

#[test]
fn git_submodules_are_checked_out_recursively() {
    let server = GitServer::start();
    for name in ["lib", "deep"] {
        server.add_repo(name);
    }
    server.commit_in("deep", &[("deep.txt", "deep v1\n")], None);
    server.add_submodule("lib", &server.url_of("deep", ""), "inner");
    server.commit_in("lib", &[("lib.txt", "lib v1\n")], None);
    // At a URL relative to the superproject's, as repositories often have them.
    server.add_submodule("repo", "../lib.git", "vendor/lib");
    server.commit(&[("README.md", "top\n")], None);
    let dockerfile = format!(
        "FROM {}\nADD {} /src/\nADD {} /part\n",
        fixture().base(),
        server.url("main"),
        server.url("main:vendor")
    );
    let project = Project::new(&[("Dockerfile", &dockerfile)]);

    let (build, image) = build_image(&project, &[]);
    let image = image.unwrap_or_else(|| panic!("{}", build.stderr()));
    assert_eq!(image.read("/src/README.md"), "top\n");
    assert_eq!(image.read("/src/vendor/lib/lib.txt"), "lib v1\n");
    assert_eq!(image.read("/src/vendor/lib/inner/deep.txt"), "deep v1\n", "submodules of submodules too");
    assert!(image.read("/src/.gitmodules").contains("../lib.git"));
    assert_eq!(meta(&image, "/src/vendor/lib/inner").mode() & 0o7777, 0o755);
    for git_dir in ["/src/.git", "/src/vendor/lib/.git", "/src/vendor/lib/inner/.git"] {
        assert!(!image.exists(git_dir), "{git_dir}: no .git without --keep-git-dir");
    }
    assert_eq!(image.read("/part/lib/inner/deep.txt"), "deep v1\n", "a subdirectory holding a submodule");

    // A submodule on this host's file system is not read, as in BuildKit.
    server.add_repo("local");
    server.commit_in("local", &[("secret.txt", "builder's file\n")], None);
    server.add_submodule("repo", server.served("local").to_str().unwrap(), "local");
    server.commit(&[("README.md", "top v2\n")], None);
    let failed = project.build(&[]);
    assert!(!failed.ok());
    let stderr = failed.stderr();
    assert!(stderr.contains(&format!("ADD {}", server.url("main"))), "{stderr}");
    assert!(stderr.contains("transport 'file' not allowed"), "{stderr}");
}

/// BuildKit's query form of git URLs (Dockerfile 1.18): `tag`, `branch`,
/// `checksum`, `subdir`, `submodules` and `keep-git-dir`.
#[test]
fn git_url_queries_pick_the_ref_pin_the_commit_and_skip_submodules() {
    let server = GitServer::start();
    server.add_repo("lib");
    server.commit_in("lib", &[("lib.txt", "lib\n")], None);
    server.add_submodule("repo", "../lib.git", "vendor/lib");
    server.commit(&[("docs/guide.txt", "guide v1\n")], Some("v1"));
    let v1 = sh("git", &["-C", server.work_of("repo").to_str().unwrap(), "rev-parse", "HEAD"]).trim().to_string();
    server.commit(&[("docs/guide.txt", "guide v2\n")], None);
    let remote = server.url("");
    let dockerfile = format!(
        "FROM {}\nADD {remote}?tag=v1&subdir=docs /v1\nADD {remote}?branch=main&submodules=false /main\n\
         ADD {remote}?checksum={short}&keep-git-dir=true /pinned\n",
        fixture().base(),
        short = &v1[..12],
    );
    let project = Project::new(&[("Dockerfile", &dockerfile)]);
    let (build, image) = build_image(&project, &[]);
    let image = image.unwrap_or_else(|| panic!("{}", build.stderr()));
    assert_eq!(image.read("/v1/guide.txt"), "guide v1\n");
    assert_eq!(image.read("/main/docs/guide.txt"), "guide v2\n");
    assert!(image.exists("/main/vendor/lib") && !image.exists("/main/vendor/lib/lib.txt"), "no submodules");
    assert_eq!(image.read("/pinned/docs/guide.txt"), "guide v1\n");
    assert_eq!(image.read("/pinned/vendor/lib/lib.txt"), "lib\n");
    assert!(image.exists("/pinned/.git"), "keep-git-dir=true keeps .git");

    // A ref that is not at the pinned commit fails, naming both.
    let wrong = format!("FROM {}\nADD {remote}?branch=main&checksum={short} /x\n", fixture().base(), short = &v1[..12]);
    let failed = Project::new(&[("Dockerfile", &wrong)]).build(&[]);
    assert!(!failed.ok());
    assert!(failed.stderr().contains(&format!("not the checksum {}", &v1[..12])), "{}", failed.stderr());

    // An unknown key is refused before any step runs, naming the line.
    let unknown = format!("FROM {}\nADD {remote}?depth=1 /x\n", fixture().base());
    let refused = Project::new(&[("Dockerfile", &unknown)]).build(&[]);
    assert!(!refused.ok());
    assert!(refused.stderr().contains("unknown git URL query key \"depth\""), "{}", refused.stderr());
    assert!(refused.stderr().contains("Dockerfile:2"), "{}", refused.stderr());
}

#[test]
fn a_git_url_is_a_build_context() {
    let server = GitServer::start();
    let dockerfile = format!("FROM {}\nCOPY . /src/\n", fixture().base());
    server.commit(&[("app/Dockerfile", &dockerfile), ("app/hello.txt", "v1\n"), ("README.md", "top\n")], Some("v1"));
    server.commit(&[("app/hello.txt", "v2\n")], None);
    let project = Project::new(&[]);
    let out = project.path().join("image.tar");
    let dest = format!("type=oci,dest={}", out.display());

    // A tag and a subdirectory: the context is that directory at that tag.
    let build = project.build_from_stdin(&["-t", "img:1", "-o", &dest, &server.url("v1:app")], b"");
    assert!(build.ok(), "{}", build.stderr());
    let image = Unpacked::from_oci_tar(&out, "1");
    assert_eq!(image.read("/src/hello.txt"), "v1\n");
    assert!(!image.exists("/src/README.md"));

    // The whole repository at main, its Dockerfile named inside it; no .git.
    let url = server.url("main");
    let build = project.build_from_stdin(&["-t", "img:1", "-o", &dest, "-f", "app/Dockerfile", &url], b"");
    assert!(build.ok(), "{}", build.stderr());
    let image = Unpacked::from_oci_tar(&out, "1");
    assert_eq!(image.read("/src/app/hello.txt"), "v2\n");
    assert_eq!(image.read("/src/README.md"), "top\n");
    assert!(!image.exists("/src/.git"), "the checkout's .git stays out of the context");

    let missing = server.url("no-such-ref");
    let build = project.build_from_stdin(&["-o", &dest, &missing], b"");
    assert!(!build.ok());
    assert!(build.stderr().contains(&format!("build context {missing}")), "{}", build.stderr());

    // A git URL as a named context, its .git left out too.
    project.write("Dockerfile", &format!("FROM {}\nCOPY --from=src / /named/\n", fixture().base()));
    let named = format!("src={}", server.url("v1"));
    let build = project.build(&["-t", "img:1", "-o", &dest, "--build-context", &named]);
    assert!(build.ok(), "{}", build.stderr());
    let image = Unpacked::from_oci_tar(&out, "1");
    assert_eq!(image.read("/named/app/hello.txt"), "v1\n");
    assert!(!image.exists("/named/.git"));
}

/// A context URL that is not git's is downloaded, as BuildKit does: an
/// archive is the context (its Dockerfile inside, or the one `-f` names),
/// anything else is the Dockerfile of an empty context; a missing one is
/// an error naming the URL and the server's answer.
#[test]
fn an_http_url_is_a_build_context() {
    let server = FileServer::without_validators();
    let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    let files = [
        ("Dockerfile", format!("FROM {}\nCOPY app.txt /app.txt\n", fixture().base())),
        ("docker/Other", format!("FROM {}\nCOPY app.txt /other.txt\n", fixture().base())),
        ("app.txt", "from the archive\n".to_string()),
    ];
    for (name, content) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, name, content.as_bytes()).unwrap();
    }
    server.put_bytes("/ctx.tar.gz", archive.into_inner().unwrap().finish().unwrap());
    server.put("/Dockerfile", &format!("FROM {}\nRUN echo plain > /plain.txt\n", fixture().base()));
    let project = Project::new(&[]);
    let out = project.path().join("image.tar");
    let dest = format!("type=oci,dest={}", out.display());

    let build = project.build_from_stdin(&["-t", "img:1", "-o", &dest, &server.url("/ctx.tar.gz")], b"");
    assert!(build.ok(), "{}", build.stderr());
    assert_eq!(Unpacked::from_oci_tar(&out, "1").read("/app.txt"), "from the archive\n");
    let args = ["-t", "img:1", "-o", &dest, "-f", "docker/Other", &server.url("/ctx.tar.gz")];
    let build = project.build_from_stdin(&args, b"");
    assert!(build.ok(), "{}", build.stderr());
    assert_eq!(Unpacked::from_oci_tar(&out, "1").read("/other.txt"), "from the archive\n");

    let build = project.build_from_stdin(&["-t", "img:1", "-o", &dest, &server.url("/Dockerfile")], b"");
    assert!(build.ok(), "{}", build.stderr());
    assert_eq!(Unpacked::from_oci_tar(&out, "1").read("/plain.txt"), "plain\n");

    let missing = server.url("/missing.tar.gz");
    let build = project.build_from_stdin(&["-o", &dest, &missing], b"");
    assert!(!build.ok());
    let stderr = build.stderr();
    assert!(stderr.contains(&format!("build context {missing}")) && stderr.contains("404"), "{stderr}");
}
