//! Where a build's context and Dockerfile come from, as `docker build`
//! reads them: a directory, a git URL, or `-` for standard input. A git
//! URL (`https://host/repo.git#ref:subdir`, or BuildKit's `?ref=&subdir=`
//! form) is checked out here, its `.git` left out unless `keep-git-dir`.
//! `-f -` reads the Dockerfile from stdin; a context of `-` reads stdin as
//! a tar of the context (plain or compressed with gzip, bzip2, xz or zstd,
//! its Dockerfile inside), or else as the Dockerfile of an empty context.
//! Any other http(s) URL is downloaded and read as stdin would be.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use memobuild_engine::GitCheckout;
use memobuild_frontend::SourceKind;
use memobuild_worker::steps::archive::Archive;
use tempfile::TempDir;

/// The name errors give a Dockerfile read from stdin, as BuildKit's do.
const STDIN_DOCKERFILE: &str = "Dockerfile";

/// The context directory and the Dockerfile of a build.
pub struct BuildSource {
    /// Canonical.
    pub context_dir: PathBuf,
    /// As errors name it.
    pub dockerfile_name: String,
    pub dockerfile: String,
    /// The Dockerfile's path on disk; `None` when it came from stdin.
    pub dockerfile_path: Option<PathBuf>,
    /// Where a context from stdin or git was put, removed with this. Such
    /// a context is new each build, so it has no stat cache.
    pub temporary: Option<TempDir>,
}

impl BuildSource {
    /// The source named by the `CONTEXT` argument and `-f`.
    pub async fn read(context: &Path, file: Option<&Path>) -> anyhow::Result<Self> {
        let stdin = Path::new("-");
        let kind = SourceKind::of(&context.to_string_lossy()).map_err(|e| anyhow::anyhow!("build context: {e}"))?;
        match (context == stdin, file) {
            (true, Some(f)) if f == stdin => {
                bail!("the build context and the Dockerfile cannot both be read from stdin (-)")
            }
            (true, file) => tokio::task::block_in_place(|| Self::from_stdin(std::io::stdin().lock(), file)),
            (false, file) => {
                let (context_dir, temporary) = match kind {
                    SourceKind::Git(url) => {
                        let what = format!("build context {url}");
                        let checkout = GitCheckout::fetch_context(&url, &std::env::temp_dir(), &what)
                            .await
                            .map_err(super::anyhow_of)?;
                        (checkout.root, Some(checkout.dir))
                    }
                    SourceKind::Http => return Self::download(&context.to_string_lossy(), file).await,
                    SourceKind::Path => (canonical_context(context)?, None),
                };
                if file == Some(stdin) {
                    let text = tokio::task::block_in_place(|| read_stdin(std::io::stdin().lock()))?;
                    return Ok(Self::stdin_dockerfile(context_dir, text, temporary));
                }
                let (path, name) = match (file, &temporary) {
                    (_, Some(_)) => dockerfile_inside(&context_dir, file),
                    (Some(file), None) => (file.to_path_buf(), file.to_string_lossy().to_string()),
                    (None, None) => {
                        let path = context_dir.join("Dockerfile");
                        let name = path.to_string_lossy().to_string();
                        (path, name)
                    }
                };
                Self::with_dockerfile(context_dir, path, name, temporary)
            }
        }
    }

    /// A context of `-`: `input` holds a tar of the context, unpacked into
    /// a directory of its own (`file` names its Dockerfile inside), or the
    /// Dockerfile of an empty context.
    fn from_stdin(mut input: impl Read, file: Option<&Path>) -> anyhow::Result<Self> {
        let dir = context_dir()?;
        let spooled = dir.path().join("stdin");
        let mut spool = std::fs::File::create(&spooled).context("saving stdin")?;
        std::io::copy(&mut input, &mut spool).context("reading the build context from stdin")?;
        drop(spool);
        Self::from_spooled(dir, &spooled, file, "stdin")
    }

    /// A context URL that is not git's, as BuildKit reads it: the file it
    /// names is a context archive or else a Dockerfile, as on stdin.
    async fn download(url: &str, file: Option<&Path>) -> anyhow::Result<Self> {
        let dir = context_dir()?;
        let spooled = dir.path().join("download");
        let into = std::fs::File::create(&spooled).context("saving the download")?;
        memobuild_engine::download_context(url, into).await.map_err(super::anyhow_of)?;
        tokio::task::block_in_place(|| Self::from_spooled(dir, &spooled, file, url))
    }

    /// The context saved at `spooled` in `dir`, which came from `origin`:
    /// an archive is unpacked beside it, anything else is the Dockerfile of
    /// an empty context.
    fn from_spooled(dir: TempDir, spooled: &Path, file: Option<&Path>, origin: &str) -> anyhow::Result<Self> {
        let context_dir = dir.path().join("context");
        std::fs::create_dir(&context_dir).context("making a directory for the context")?;
        let Some(archive) = Archive::detect(spooled).map_err(super::anyhow_of)? else {
            if let Some(file) = file {
                bail!("-f {}: {origin} holds a Dockerfile, not a context archive to find it in", file.display());
            }
            let text = std::fs::read(spooled).with_context(|| format!("reading the Dockerfile from {origin}"))?;
            let text = String::from_utf8(text).with_context(|| format!("the Dockerfile from {origin} is not UTF-8"))?;
            let mut source = Self::stdin_dockerfile(context_dir, text, Some(dir));
            source.context_dir = source.context_dir.canonicalize().context("the context directory")?;
            return Ok(source);
        };
        let reader = archive.reader(std::fs::File::open(spooled)?).map_err(super::anyhow_of)?;
        let mut tar = tar::Archive::new(reader);
        tar.set_preserve_permissions(true);
        tar.unpack(&context_dir).with_context(|| format!("unpacking the build context from {origin}"))?;
        std::fs::remove_file(spooled).context("removing the saved archive")?;
        let context_dir = context_dir.canonicalize().context("the context directory")?;
        let (path, name) = dockerfile_inside(&context_dir, file);
        Self::with_dockerfile(context_dir, path, name, Some(dir))
    }

    /// The source whose Dockerfile is the file at `path`, named `name`.
    fn with_dockerfile(
        context_dir: PathBuf,
        path: PathBuf,
        name: String,
        temporary: Option<TempDir>,
    ) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading the Dockerfile {name}"))?;
        Ok(BuildSource { context_dir, dockerfile_name: name, dockerfile: text, dockerfile_path: Some(path), temporary })
    }

    fn stdin_dockerfile(context_dir: PathBuf, text: String, temporary: Option<TempDir>) -> Self {
        BuildSource {
            context_dir,
            dockerfile_name: STDIN_DOCKERFILE.to_string(),
            dockerfile: text,
            dockerfile_path: None,
            temporary,
        }
    }
}

/// A temporary directory for a context read from stdin or a URL.
fn context_dir() -> anyhow::Result<TempDir> {
    tempfile::Builder::new().prefix("memobuild-context-").tempdir().context("making a directory")
}

/// The Dockerfile `file` names in a context made for this build (from
/// stdin or git): relative to it, `Dockerfile` by default. Its path, and
/// the name errors give it.
fn dockerfile_inside(context_dir: &Path, file: Option<&Path>) -> (PathBuf, String) {
    let relative = file.unwrap_or(Path::new("Dockerfile"));
    (context_dir.join(relative.strip_prefix("/").unwrap_or(relative)), relative.to_string_lossy().to_string())
}

fn canonical_context(context: &Path) -> anyhow::Result<PathBuf> {
    context.canonicalize().with_context(|| format!("build context {}", context.display()))
}

fn read_stdin(mut input: impl Read) -> anyhow::Result<String> {
    let mut text = String::new();
    input.read_to_string(&mut text).context("reading the Dockerfile from stdin")?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Write;

    use super::*;

    fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, content) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o755);
            header.set_cksum();
            builder.append_data(&mut header, name, content.as_bytes()).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_tar_on_stdin_is_the_context_with_its_dockerfile() {
        let tar =
            tar_of(&[("Dockerfile", "FROM scratch\nCOPY app /\n"), ("app", "hello"), ("ci/Dockerfile", "FROM x\n")]);
        let source = BuildSource::from_stdin(&tar[..], None).unwrap();
        assert_eq!(source.dockerfile, "FROM scratch\nCOPY app /\n");
        assert_eq!(std::fs::read_to_string(source.context_dir.join("app")).unwrap(), "hello");
        assert!(!source.context_dir.join("stdin").exists());
        let named = BuildSource::from_stdin(&tar[..], Some(Path::new("ci/Dockerfile"))).unwrap();
        assert_eq!((named.dockerfile.as_str(), named.dockerfile_name.as_str()), ("FROM x\n", "ci/Dockerfile"));
    }

    #[test]
    fn a_compressed_tar_on_stdin_is_unpacked_too() {
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gzip.write_all(&tar_of(&[("Dockerfile", "FROM scratch\n")])).unwrap();
        let source = BuildSource::from_stdin(&gzip.finish().unwrap()[..], None).unwrap();
        assert_eq!(source.dockerfile, "FROM scratch\n");
    }

    #[test]
    fn anything_else_on_stdin_is_the_dockerfile_of_an_empty_context() {
        let source = BuildSource::from_stdin(&b"FROM scratch\n"[..], None).unwrap();
        assert_eq!((source.dockerfile.as_str(), source.dockerfile_name.as_str()), ("FROM scratch\n", "Dockerfile"));
        assert_eq!(std::fs::read_dir(&source.context_dir).unwrap().count(), 0);
        let dir = source.temporary.as_ref().unwrap().path().to_path_buf();
        drop(source);
        assert!(!dir.exists(), "the stdin context is removed with its source");
        let err = BuildSource::from_stdin(&b"FROM scratch\n"[..], Some(Path::new("other"))).err().unwrap();
        assert!(err.to_string().contains("stdin holds a Dockerfile"), "{err}");
    }

    #[tokio::test]
    async fn stdin_cannot_be_both() {
        let err = BuildSource::read(Path::new("-"), Some(Path::new("-"))).await.err().unwrap();
        assert!(err.to_string().contains("cannot both be read from stdin"), "{err}");
    }
}
