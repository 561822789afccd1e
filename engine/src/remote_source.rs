//! Remote ADD sources: HTTP(S) files and git repositories, fetched once
//! before the final plan (as base images are) so that what was fetched pins
//! the steps that add it. Files go straight into the CAS, with notes (see
//! [`RemoteFileNote`]) so that a `--checksum` names a blob the CAS can be
//! asked for without any request, and so that a file the server says has
//! not changed (`304 Not Modified` to the `ETag` or `Last-Modified` it sent
//! before) is not downloaded again; git checkouts stay in a temporary
//! directory for the build.

use std::collections::{BTreeMap, HashMap};
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use memobuild_frontend::{BuildGraph, GitUrl, RemoteSource, SourceDefinition, StepDefinition};
use memobuild_proto::{Digest, DigestFunction, DigestHasher, Error, Result, ResultExt};
use tempfile::TempDir;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::EngineStores;
use memobuild_proto::build::BuildEvent;

use crate::remote_file_note::RemoteFileNote;
use crate::EventSender;

/// Largest file ADD downloads.
const MAX_DOWNLOAD: u64 = 16 << 30;

/// A remote source a graph names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    File { url: String, checksum: Option<String> },
    Git(GitUrl),
}

impl Remote {
    /// Its key in [`FetchedSources`]: what [`source_key`] gives.
    pub fn key(&self) -> String {
        match self {
            Remote::File { url, .. } => url.clone(),
            Remote::Git(url) => url.to_string(),
        }
    }
}

/// A remote source to fetch, and the first ADD that names it
/// (`DOCKERFILE:LINE`, for errors).
pub struct Wanted {
    pub source: Remote,
    pub at: String,
}

/// A fetched remote source.
pub enum Fetched {
    /// A file, in the CAS.
    File { digest: Digest, mtime: Option<u64> },
    /// A checkout kept for the build; `root` is the subdirectory asked for.
    Git { commit: String, root: PathBuf, _checkout: tempfile::TempDir },
}

/// Fetched sources by the key [`source_key`] gives.
pub type FetchedSources = HashMap<String, Fetched>;

/// How the planner and the fetched sources name a remote source: the URL of
/// a file, `REMOTE#REF:SUBDIR` of a repository.
pub fn source_key(source: &SourceDefinition) -> Option<String> {
    match source {
        SourceDefinition::Http { url, .. } => Some(url.clone()),
        SourceDefinition::Git { repository, .. } => Some(repository.to_string()),
        _ => None,
    }
}

/// The remote sources of ADD steps in `graph`, each once.
pub fn remote_sources(graph: &BuildGraph) -> Vec<Wanted> {
    let mut wanted: Vec<Wanted> = Vec::new();
    for step in graph.steps() {
        let StepDefinition::Copy { sources, checksum, .. } = &step.definition else { continue };
        for source in sources {
            let source = match source {
                SourceDefinition::Http { url, .. } => Remote::File { url: url.clone(), checksum: checksum.clone() },
                SourceDefinition::Git { repository, .. } => Remote::Git(repository.clone()),
                _ => continue,
            };
            if !wanted.iter().any(|w| w.source == source) {
                wanted.push(Wanted { source, at: format!("{}:{}", graph.dockerfile, step.location.line) });
            }
        }
    }
    wanted
}

/// Fetches `wanted`, reporting each as a step of its own.
pub async fn fetch_sources(state: &EngineStores, wanted: &[Wanted], events: &EventSender) -> Result<FetchedSources> {
    let mut fetched = FetchedSources::new();
    for Wanted { source, at } in wanted {
        let key = source.key();
        let checksum = match source {
            Remote::File { checksum, .. } => checksum.as_deref(),
            Remote::Git(_) => None,
        };
        if let Some(done) = fetched.get(&key) {
            if let (Some(sum), Fetched::File { digest, .. }) = (checksum, done) {
                verify(&key, sum, digest).context(at)?;
            }
            continue;
        }
        let step = format!("fetch {key}");
        let _ = events.send(BuildEvent::started(&step, format!("fetch {key}")));
        let result = match source {
            Remote::File { url, checksum } => fetch_file(state, url, checksum.as_deref()).await,
            Remote::Git(url) => fetch_git(state, url).await,
        };
        let source = match result.context(at) {
            Ok(source) => source,
            Err(e) => {
                let _ = events.send(BuildEvent::failed(&step, e.message().to_string()));
                return Err(e);
            }
        };
        let message = match &source {
            Fetched::File { digest, .. } => format!("sha256:{} ({} bytes)", digest.hex(), digest.size()),
            Fetched::Git { commit, .. } => format!("commit {commit}"),
        };
        let _ = events.send(BuildEvent::info(&step, message));
        let _ = events.send(BuildEvent::finished(&step));
        fetched.insert(key, source);
    }
    Ok(fetched)
}

/// What the planner needs from each fetched source.
pub fn pins(fetched: &FetchedSources) -> BTreeMap<String, RemoteSource> {
    fetched
        .iter()
        .map(|(key, source)| {
            let pin = match source {
                Fetched::File { digest, mtime } => {
                    RemoteSource::File { digest: format!("sha256:{}", digest.hex()), mtime: *mtime }
                }
                Fetched::Git { commit, .. } => RemoteSource::Git { commit: commit.clone() },
            };
            (key.clone(), pin)
        })
        .collect()
}

async fn fetch_file(state: &EngineStores, url: &str, checksum: Option<&str>) -> Result<Fetched> {
    let pinned = match checksum.and_then(|sum| sum.strip_prefix("sha256:")) {
        Some(hex) => stored(state, &RemoteFileNote::content_path(&state.remote_files_dir, hex))
            .await?
            .filter(|note| note.digest.hex() == hex),
        None => None,
    };
    let note = match pinned {
        Some(note) => note,
        None => refresh(state, url, checksum).await?,
    };
    // A file pinned by --checksum does not depend on the server's clock.
    let mtime = if checksum.is_some() { None } else { note.mtime };
    Ok(Fetched::File { digest: note.digest, mtime })
}

/// Asks the server for `url`, conditionally when a note of it has
/// validators and names a blob the CAS still has; a 200 is stored and
/// noted, whatever the note said.
async fn refresh(state: &EngineStores, url: &str, checksum: Option<&str>) -> Result<RemoteFileNote> {
    let dir = &state.remote_files_dir;
    let url_note = RemoteFileNote::url_path(dir, url);
    let known = stored(state, &url_note).await?.filter(RemoteFileNote::has_validators);
    let (file, note) = download(state, url, known).await?;
    if let Some(sum) = checksum {
        verify(url, sum, &note.digest)?;
    }
    let Some(file) = file else { return Ok(note) };
    let stream = ReaderStream::new(file).map_err(Error::from).boxed();
    state.cas.put(&note.digest, stream).await.with_context(|| format!("storing ADD {url}"))?;
    // Best effort: a file without a note is downloaded again.
    for path in [url_note, RemoteFileNote::content_path(dir, &note.digest.hex())] {
        if let Err(e) = note.save(&path) {
            tracing::debug!(error = %e, "cannot note ADD {url}");
        }
    }
    Ok(note)
}

/// The note at `path`, when the blob it names is still in the CAS.
async fn stored(state: &EngineStores, path: &Path) -> Result<Option<RemoteFileNote>> {
    let Some(note) = RemoteFileNote::load(path) else { return Ok(None) };
    Ok(state.cas.find_missing(&[note.digest]).await?.is_empty().then_some(note))
}

fn verify(url: &str, checksum: &str, digest: &Digest) -> Result<()> {
    let actual = format!("sha256:{}", digest.hex());
    if actual == checksum {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!("ADD {url}: checksum mismatch: expected {checksum}, got {actual}")))
    }
}

/// Downloads `url` into an anonymous file, hashing as it goes; returns the
/// file (rewound) and its note. With `known`, asks only for a file that
/// does not match its validators: when the server answers `304 Not
/// Modified` there is no file, and the note is `known`.
async fn download(
    state: &EngineStores,
    url: &str,
    known: Option<RemoteFileNote>,
) -> Result<(Option<tokio::fs::File>, RemoteFileNote)> {
    use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
    let what = format!("ADD {url}");
    let mut request = http_client(&what)?.get(url);
    if let Some(known) = &known {
        if let Some(etag) = &known.etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        if let Some(date) = &known.last_modified {
            request = request.header(IF_MODIFIED_SINCE, date);
        }
    }
    let response = request.send().await.map_err(|e| request_failed(&what, &e))?;
    if let (reqwest::StatusCode::NOT_MODIFIED, Some(known)) = (response.status(), known) {
        return Ok((None, known));
    }
    let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (etag, last_modified) = (header(ETAG), header(LAST_MODIFIED));
    let mtime = last_modified
        .as_deref()
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    std::fs::create_dir_all(&state.remote_files_dir)?;
    let file = tempfile::tempfile_in(&state.remote_files_dir)?;
    let (file, digest) = save_body(response, &what, file).await?;
    Ok((Some(file), RemoteFileNote { digest, mtime, etag, last_modified }))
}

/// Downloads the build context at `url` (`memobuild build
/// https://host/context.tar.gz`) into `file`.
pub async fn download_context(url: &str, file: std::fs::File) -> Result<()> {
    let what = format!("build context {url}");
    let response = http_client(&what)?.get(url).send().await.map_err(|e| request_failed(&what, &e))?;
    save_body(response, &what, file).await.map(|_| ())
}

/// The HTTP client of downloads; `what` names the download in errors.
fn http_client(what: &str) -> Result<reqwest::Client> {
    reqwest::Client::builder().connect_timeout(Duration::from_secs(30)).build().map_err(|e| request_failed(what, &e))
}

fn request_failed(what: &str, e: &dyn std::error::Error) -> Error {
    Error::unavailable(format!("{what}: {}", error_chain(e)))
}

/// Writes a successful response's body into `file`, up to
/// [`MAX_DOWNLOAD`] bytes, hashing it; returns the file rewound and the
/// body's digest.
async fn save_body(response: reqwest::Response, what: &str, file: std::fs::File) -> Result<(tokio::fs::File, Digest)> {
    let status = response.status();
    if !status.is_success() {
        return Err(Error::unavailable(format!("{what}: the server answered {status}")));
    }
    let length = response.content_length();
    let too_big = || Error::resource_exhausted(format!("{what}: larger than the {MAX_DOWNLOAD} bytes allowed"));
    if length.is_some_and(|n| n > MAX_DOWNLOAD) {
        return Err(too_big());
    }
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = DigestHasher::new(DigestFunction::Sha256);
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| request_failed(what, &e))?;
        if hasher.size() + chunk.len() as u64 > MAX_DOWNLOAD {
            return Err(too_big());
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    if let Some(expected) = length.filter(|n| *n != hasher.size()) {
        return Err(Error::unavailable(format!("{what}: got {} of {expected} bytes", hasher.size())));
    }
    file.flush().await?;
    file.seek(SeekFrom::Start(0)).await?;
    Ok((file, hasher.finish()))
}

async fn fetch_git(state: &EngineStores, url: &GitUrl) -> Result<Fetched> {
    std::fs::create_dir_all(&state.remote_files_dir)?;
    let checkout = GitCheckout::fetch(url, &state.remote_files_dir, &format!("ADD {url}")).await?;
    Ok(Fetched::Git { commit: checkout.commit, root: checkout.root, _checkout: checkout.dir })
}

/// A git repository checked out at the ref a [`GitUrl`] names.
pub struct GitCheckout {
    pub commit: String,
    /// The subdirectory the URL asks for, canonical.
    pub root: PathBuf,
    /// The whole checkout, removed with this.
    pub dir: TempDir,
}

impl GitCheckout {
    /// Fetches `url`'s ref (shallow when the server allows) and checks it
    /// out, submodules included, in a new directory under `parent`; `what`
    /// begins the errors (`ADD URL`).
    pub async fn fetch(url: &GitUrl, parent: &Path, what: &str) -> Result<GitCheckout> {
        let checkout = tempfile::Builder::new().prefix("git-").tempdir_in(parent)?;
        let dir = checkout.path();
        git(what, dir, &["init", "--quiet"]).await?;
        // As origin, so that submodules at relative URLs resolve against it.
        git(what, dir, &["remote", "add", "origin", &url.remote]).await?;
        let reference = match (url.reference.as_str(), url.checksum.as_str()) {
            ("", "") => "HEAD",
            ("", checksum) => checksum,
            (reference, _) => reference,
        };
        let shallow = git(what, dir, &["fetch", "--quiet", "--depth=1", "--no-tags", "origin", reference]).await;
        let target = match shallow {
            Ok(_) => "FETCH_HEAD",
            // Servers may refuse a commit that no ref names: fetch every
            // branch and tag, then look for it.
            Err(_) if is_commit_like(reference) => {
                let all = ["fetch", "--quiet", "--tags", "origin", "+refs/heads/*:refs/remotes/origin/*"];
                git(what, dir, &all).await?;
                reference
            }
            Err(e) => return Err(e),
        };
        git(what, dir, &["-c", "advice.detachedHead=false", "checkout", "--quiet", target]).await?;
        // Submodules as BuildKit checks them out: all of them, recursively,
        // shallow; none from this host's file system (`file://` or a path),
        // which a repository could otherwise use to read the builder's files.
        if url.submodules {
            let submodules = [
                "-c",
                "protocol.file.allow=user",
                "submodule",
                "update",
                "--quiet",
                "--init",
                "--recursive",
                "--depth=1",
            ];
            git(what, dir, &submodules).await?;
        }
        let commit = git(what, dir, &["rev-parse", "HEAD"]).await?.trim().to_string();
        if !commit.starts_with(&url.checksum) {
            return Err(Error::new(
                tonic::Code::FailedPrecondition,
                format!("{what}: the ref is at commit {commit}, not the checksum {}", url.checksum),
            ));
        }
        let top = dir.canonicalize()?;
        let root = top.join(&url.subdir).canonicalize().ok().filter(|r| r.starts_with(&top) && r.is_dir()).ok_or_else(
            || Error::not_found(format!("{what}: {:?} is not a directory in commit {commit}", url.subdir)),
        )?;
        Ok(GitCheckout { commit, root, dir: checkout })
    }

    /// [`GitCheckout::fetch`] for a build context: its `.git` is left out
    /// unless the URL keeps it (`keep-git-dir=true`), as BuildKit does.
    pub async fn fetch_context(url: &GitUrl, parent: &Path, what: &str) -> Result<GitCheckout> {
        let checkout = Self::fetch(url, parent, what).await?;
        if !url.keep_git_dir {
            std::fs::remove_dir_all(checkout.dir.path().join(".git"))
                .map_err(|e| Error::internal(format!("{what}: removing .git: {e}")))?;
        }
        Ok(checkout)
    }
}

fn is_commit_like(reference: &str) -> bool {
    (7..=40).contains(&reference.len()) && reference.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Runs `git ARGS` in `dir`; its stdout, or an error (beginning with
/// `what`) with what git said.
async fn git(what: &str, dir: &Path, args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::new(
                tonic::Code::FailedPrecondition,
                format!("{what}: git is not installed (git sources are fetched with the git command)"),
            ))
        }
        Err(e) => return Err(Error::internal(format!("{what}: running git: {e}"))),
    };
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        return Err(Error::not_found(format!("{what}: git {} failed: {}", args.join(" "), said.trim())));
    }
    Ok(String::from_utf8_lossy(&output.stdout).to_string())
}

/// An error and its causes, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_like_refs() {
        assert!(is_commit_like("0123abc"));
        assert!(is_commit_like(&"a".repeat(40)));
        assert!(!is_commit_like("main"));
        assert!(!is_commit_like("abc"));
        assert!(!is_commit_like(&"a".repeat(41)));
    }
}
