use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use memobuild_cas::{single_chunk, BlobStore, BlobStream};
use memobuild_proto::reapi::{
    Directory, DirectoryNode, FileNode, OutputDirectory, OutputFile, OutputSymlink, SymlinkNode, Tree,
};
use memobuild_proto::{Digest, DigestFunction, Error, Result, ResultExt};
use prost::Message;

use crate::relative_path::RelativePath;

/// Chunk size for hashing and uploading files.
const CHUNK: usize = 1 << 20;
/// How many blobs are uploaded at once.
const UPLOAD_CONCURRENCY: usize = 8;
/// Symlinks followed while locating one output's parent directory.
const MAX_SYMLINK_HOPS: usize = 40;
/// How deep an output directory may nest.
const MAX_DEPTH: usize = 512;

/// Which `Command` field asked for an output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutputKind {
    /// `output_paths`: whatever is found.
    Path,
    /// Legacy `output_files`.
    File,
    /// Legacy `output_directories`.
    Directory,
}

/// One output the command declared.
#[derive(Clone, Debug)]
pub(crate) struct Output {
    /// As the command wrote it, relative to the working directory; results
    /// report it this way.
    pub path: String,
    /// Inside the input root.
    pub resolved: RelativePath,
    pub kind: OutputKind,
}

/// Where an uploaded blob's bytes are.
enum BlobSource {
    File(PathBuf),
    Memory(Bytes),
}

/// The outputs of a finished command, hashed, and the blobs to upload for
/// them. Never follows a symlink out of the input root: a symlink that is an
/// output (or inside an output directory) is reported as a symlink; an output
/// whose parent is reached only through a symlink leading out of the root,
/// or a missing output, is simply absent.
pub(crate) struct OutputCapture {
    function: DigestFunction,
    /// Whether to upload each output directory as a `Tree`, as `Directory`
    /// blobs, or both (`Command.output_directory_format`).
    trees: bool,
    directories: bool,
    pub files: Vec<OutputFile>,
    pub output_directories: Vec<OutputDirectory>,
    pub symlinks: Vec<OutputSymlink>,
    pub file_symlinks: Vec<OutputSymlink>,
    pub directory_symlinks: Vec<OutputSymlink>,
    blobs: HashMap<Digest, BlobSource>,
}

impl OutputCapture {
    pub fn new(function: DigestFunction, output_directory_format: i32) -> Self {
        use memobuild_proto::reapi::command::OutputDirectoryFormat;
        let format =
            OutputDirectoryFormat::try_from(output_directory_format).unwrap_or(OutputDirectoryFormat::TreeOnly);
        OutputCapture {
            function,
            trees: format != OutputDirectoryFormat::DirectoryOnly,
            directories: format != OutputDirectoryFormat::TreeOnly,
            files: Vec::new(),
            output_directories: Vec::new(),
            symlinks: Vec::new(),
            file_symlinks: Vec::new(),
            directory_symlinks: Vec::new(),
            blobs: HashMap::new(),
        }
    }

    /// Captures every output under `root`. Blocking.
    pub fn capture_outputs(&mut self, root: &Path, outputs: &[Output]) -> Result<()> {
        for output in outputs {
            self.capture(root, output).with_context(|| format!("capturing output {:?}", output.path))?;
        }
        Ok(())
    }

    fn capture(&mut self, root: &Path, output: &Output) -> Result<()> {
        let Some(location) = locate(root, &output.resolved)? else {
            tracing::debug!(path = output.path, "output is absent");
            return Ok(());
        };
        let path = location.under(root);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            let target = read_link(&path)?;
            let symlink = OutputSymlink { path: output.path.clone(), target, node_properties: None };
            match output.kind {
                OutputKind::Path => self.symlinks.push(symlink),
                OutputKind::File => self.file_symlinks.push(symlink),
                OutputKind::Directory => self.directory_symlinks.push(symlink),
            }
        } else if file_type.is_file() {
            let digest = self.add_file(&path)?;
            self.files.push(OutputFile {
                path: output.path.clone(),
                digest: Some(digest.to_proto()),
                is_executable: meta.permissions().mode() & 0o100 != 0,
                contents: Vec::new(),
                node_properties: None,
            });
        } else if file_type.is_dir() {
            let mut children = Vec::new();
            let mut seen = HashSet::new();
            let root_dir = self.directory(&path, 0, &mut children, &mut seen)?;
            let root_data = Bytes::from(root_dir.encode_to_vec());
            let root_digest = Digest::of(self.function, &root_data);
            let mut result = OutputDirectory { path: output.path.clone(), ..Default::default() };
            if self.directories {
                self.blobs.entry(root_digest).or_insert(BlobSource::Memory(root_data));
                result.root_directory_digest = Some(root_digest.to_proto());
            }
            if self.trees {
                let tree = Tree { root: Some(root_dir), children: children.into_iter().map(|(_, d)| d).collect() };
                let data = Bytes::from(tree.encode_to_vec());
                let digest = Digest::of(self.function, &data);
                self.blobs.entry(digest).or_insert(BlobSource::Memory(data));
                result.tree_digest = Some(digest.to_proto());
            }
            self.output_directories.push(result);
        }
        Ok(())
    }

    /// The `Directory` for `path`, its subdirectories added to `children`
    /// (each distinct one once).
    fn directory(
        &mut self,
        path: &Path,
        depth: usize,
        children: &mut Vec<(Digest, Directory)>,
        seen: &mut HashSet<Digest>,
    ) -> Result<Directory> {
        if depth > MAX_DEPTH {
            return Err(Error::invalid_argument(format!("{} nests deeper than {MAX_DEPTH} levels", path.display())));
        }
        let mut directory = Directory::default();
        let entries = std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().into_string().map_err(|name| {
                Error::invalid_argument(format!("{}: the name {name:?} is not UTF-8", path.display()))
            })?;
            let child = entry.path();
            let meta = std::fs::symlink_metadata(&child)?;
            let file_type = meta.file_type();
            if file_type.is_symlink() {
                directory.symlinks.push(SymlinkNode { name, target: read_link(&child)?, node_properties: None });
            } else if file_type.is_file() {
                let digest = self.add_file(&child)?;
                directory.files.push(FileNode {
                    name,
                    digest: Some(digest.to_proto()),
                    is_executable: meta.permissions().mode() & 0o100 != 0,
                    node_properties: None,
                });
            } else if file_type.is_dir() {
                let sub = self.directory(&child, depth + 1, children, seen)?;
                let data = Bytes::from(sub.encode_to_vec());
                let digest = Digest::of(self.function, &data);
                if seen.insert(digest) {
                    if self.directories {
                        self.blobs.entry(digest).or_insert(BlobSource::Memory(data));
                    }
                    children.push((digest, sub));
                }
                directory.directories.push(DirectoryNode { name, digest: Some(digest.to_proto()) });
            }
            // Sockets, FIFOs and devices are not outputs.
        }
        directory.files.sort_by(|a, b| a.name.cmp(&b.name));
        directory.directories.sort_by(|a, b| a.name.cmp(&b.name));
        directory.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(directory)
    }

    /// Hashes the regular file at `path` (never through a symlink) and
    /// queues it for upload.
    pub fn add_file(&mut self, path: &Path) -> Result<Digest> {
        let mut file = std::fs::File::options()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
        if len == 0 {
            // Every CAS holds the empty blob: nothing to read or upload.
            return Ok(Digest::empty(self.function));
        }
        let mut hasher = self.function.hasher();
        let mut buf = vec![0u8; CHUNK.min(len as usize)];
        loop {
            let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let digest = hasher.finish();
        self.blobs.entry(digest).or_insert_with(|| BlobSource::File(path.to_path_buf()));
        Ok(digest)
    }

    /// Uploads the blobs the CAS lacks, files streamed from disk.
    pub async fn upload(&mut self, cas: &dyn BlobStore) -> Result<()> {
        let blobs = std::mem::take(&mut self.blobs);
        let digests: Vec<Digest> = blobs.keys().copied().collect();
        let missing = cas.find_missing(&digests).await.context("finding which outputs the CAS lacks")?;
        let blobs = &blobs;
        let uploads: Vec<_> = missing
            .into_iter()
            .map(|digest| async move {
                let stream = match blobs.get(&digest) {
                    Some(BlobSource::Memory(data)) => single_chunk(data.clone()),
                    Some(BlobSource::File(path)) => file_stream(path).await?,
                    None => return Err(Error::internal(format!("the CAS reported unknown blob {digest} missing"))),
                };
                cas.put(&digest, stream).await.with_context(|| format!("uploading output blob {}", digest.subject()))
            })
            .collect();
        futures::stream::iter(uploads)
            .buffer_unordered(UPLOAD_CONCURRENCY)
            .collect::<Vec<Result<()>>>()
            .await
            .into_iter()
            .collect()
    }
}

async fn file_stream(path: &Path) -> Result<BlobStream> {
    let file = tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
    let display = path.display().to_string();
    Ok(tokio_util::io::ReaderStream::with_capacity(file, CHUNK)
        .map(move |chunk| chunk.with_context(|| format!("reading {display}")))
        .boxed())
}

fn read_link(path: &Path) -> Result<String> {
    let target = std::fs::read_link(path).with_context(|| format!("reading symlink {}", path.display()))?;
    target.into_os_string().into_string().map_err(|target| {
        Error::invalid_argument(format!("symlink {} has a target that is not UTF-8: {target:?}", path.display()))
    })
}

/// Where `path` really is under `root`, its parent directories resolved
/// through any symlinks that stay inside the root; the last component is
/// not followed. `None` when a parent is missing, is not a directory, or is
/// reached only through a symlink that is absolute or climbs out of the root.
fn locate(root: &Path, path: &RelativePath) -> Result<Option<RelativePath>> {
    let Some((last, parents)) = path.components().split_last() else {
        return Ok(None);
    };
    let mut resolved: Vec<String> = Vec::new();
    let mut todo: Vec<String> = parents.iter().rev().cloned().collect();
    let mut hops = 0;
    while let Some(component) = todo.pop() {
        match component.as_str() {
            "" | "." => continue,
            ".." => {
                if resolved.pop().is_none() {
                    return Ok(None);
                }
                continue;
            }
            _ => {}
        }
        let mut current = root.to_path_buf();
        current.extend(&resolved);
        current.push(&component);
        let meta = match std::fs::symlink_metadata(&current) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::from(e).context(format!("inspecting {}", current.display()))),
        };
        if meta.file_type().is_symlink() {
            hops += 1;
            let target = read_link(&current)?;
            if hops > MAX_SYMLINK_HOPS || target.starts_with('/') {
                return Ok(None);
            }
            todo.extend(target.split('/').rev().map(str::to_string));
        } else if meta.is_dir() {
            resolved.push(component);
        } else {
            return Ok(None);
        }
    }
    let mut located = RelativePath::root();
    for component in resolved.iter().chain(std::iter::once(last)) {
        located = located.child(component);
    }
    Ok(Some(located))
}
