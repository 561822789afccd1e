//! COPY, ADD and WORKDIR without a container: the new layer is planned from
//! the context (or another stage's mounted filesystem, or fetched remote
//! sources) and the parent filesystem (for symlinks on the destination
//! path, existing directories and `--chown` names; read through an
//! [`FsView`], usually the parent's layer indexes), then written by
//! [`LayerPlan`].

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use memobuild_frontend::{http_file_name, BuildContext, ContextEntry, DockerIgnore, ParentsPath, SourceDefinition};
use memobuild_oci::{read_file_capabilities, FsKind};
use memobuild_proto::{Error, Result, ResultExt};

use super::archive::{safe_member_path, Archive, MAX_ARCHIVE_MEMBER};
use super::chmod::Chmod;
use super::fs_view::{FsView, HostDir};
use super::layer_plan::{Content, Entry, LayerPlan, Meta};
use super::planned_view::PlannedView;
use super::rootfs::{lookup_user, resolve_in_root};

/// Where the sources of a COPY live.
pub enum SourceRoot<'a> {
    /// The build context: the scanned entries and the directory they are in.
    Context { dir: &'a Path, context: &'a BuildContext },
    /// Another stage's or an image's filesystem, mounted.
    Filesystem(&'a Path),
}

/// A COPY/ADD, with its arguments expanded (from the step definition).
pub struct CopyRequest<'a> {
    pub add: bool,
    pub sources: &'a [SourceDefinition],
    pub dest: &'a str,
    pub chown: Option<&'a str>,
    pub chmod: Option<&'a str>,
    pub excludes: &'a [String],
    pub unpack: Option<bool>,
    pub parents: bool,
    /// Remote sources on the host (a file, or a checkout's directory), by
    /// URL as the remote source module keys them.
    pub fetched: &'a HashMap<String, PathBuf>,
    pub keep_git_dir: bool,
}

/// Plans the layer of a COPY/ADD onto the filesystem mounted at `parent`.
pub fn plan_copy(
    request: &CopyRequest<'_>,
    source: &SourceRoot<'_>,
    parent: &dyn FsView,
    mtime: u64,
) -> Result<LayerPlan> {
    let owner = match request.chown {
        Some(spec) => Some(lookup_user(parent, spec).context("--chown")?),
        None => None,
    };
    let chmod = request.chmod.map(Chmod::parse).transpose()?;
    let exclude = DockerIgnore::from_patterns(request.excludes).map_err(Error::invalid_argument)?;
    let mut copier = Copier::new(owner, chmod, exclude, mtime);

    let mut items: Vec<Item> = Vec::new();
    for def in request.sources {
        match def {
            SourceDefinition::Path { path, matches } => {
                let found = match source {
                    SourceRoot::Context { context, .. } => matches
                        .iter()
                        .map(|(p, _)| Ok((p.clone(), resolve_context(context, p)?)))
                        .collect::<Result<Vec<_>>>()?,
                    SourceRoot::Filesystem(root) => {
                        let found = glob_in_root(root, path)?;
                        if found.is_empty() {
                            return Err(Error::not_found(format!(
                                "source {path:?} not found in the --from filesystem"
                            )));
                        }
                        found
                    }
                };
                let parents = request
                    .parents
                    .then(|| ParentsPath::parse(path))
                    .transpose()
                    .map_err(|e| Error::invalid_argument(format!("COPY source {e}")))?;
                for (matched, path) in found {
                    let kept = parents.as_ref().map(|p| p.kept_part(&matched)).filter(|rel| !rel.is_empty());
                    let name = base_name(&matched).to_string();
                    let kept = kept.map(|rel| Kept { matched, rel });
                    items.push(Item::Source(Matched { path, name, kept }));
                }
            }
            SourceDefinition::Heredoc { name, content, .. } => {
                items.push(Item::Inline { name: name.clone(), content: content.clone().into_bytes() })
            }
            SourceDefinition::Http { url, mtime, .. } => {
                items.push(Item::Download { name: http_file_name(url), host: fetched(request, url)?, mtime: *mtime })
            }
            SourceDefinition::Git { repository, .. } => {
                items.push(Item::Checkout(fetched(request, &repository.to_string())?))
            }
        }
    }
    let dest = resolved_dest(parent, request.dest)?;
    let request = &CopyRequest { dest: &dest, ..*request };
    for item in items {
        // Whether each source lands inside the destination is decided when
        // it is copied, as BuildKit decides it: a trailing `/`, or a
        // directory there now (made by an earlier source, too). Without
        // them, several sources each become the destination file in turn.
        let view = PlannedView { plan: &copier.plan, parent };
        let dest_is_dir = request.dest.ends_with('/') || is_dir_in(&view, request.dest)?;
        match item {
            Item::Inline { name, content } => {
                let target = if dest_is_dir { join(request.dest, &name) } else { request.dest.to_string() };
                let at = copier.place(parent, &target)?;
                let meta = copier.meta(0o644, 0, 0, false);
                copier.put(parent, &at, Entry::File(meta, Content::Bytes(content)))?;
            }
            Item::Source(item) => {
                copier.start_source();
                match source {
                    SourceRoot::Context { dir, context } => {
                        copier.context_item(request, dir, context, &item, parent, dest_is_dir)?
                    }
                    SourceRoot::Filesystem(root) => {
                        copier.filesystem_item(root, &item, parent, request.dest, dest_is_dir)?
                    }
                }
            }
            Item::Download { name, host, mtime } => {
                // Docker's rule for remote files: 0600 unless --chmod says.
                let target = if dest_is_dir { join(request.dest, &name) } else { request.dest.to_string() };
                let at = copier.place(parent, &target)?;
                let size = std::fs::metadata(&host).with_context(|| format!("reading {}", host.display()))?.len();
                let meta = Meta { mtime: mtime.unwrap_or(copier.mtime), ..copier.meta(0o600, 0, 0, false) };
                copier.put(
                    parent,
                    &at,
                    Entry::File(meta, Content::File { path: host, size, expect: None, capabilities: None }),
                )?;
            }
            Item::Checkout(root) => {
                let at = copier.place_dir(parent, request.dest)?;
                if !at.is_empty() && !is_dir_in(parent, request.dest)? {
                    copier.put(parent, &at, Entry::Directory(copier.meta(0o755, 0, 0, true)))?;
                }
                copier.walk(parent, &root, &at, "", HostFiles::Checkout { keep_git_dir: request.keep_git_dir })?;
            }
        }
    }
    Ok(copier.plan)
}

/// The destination as written, resolved through the parent filesystem's
/// symlinks, its last component too, as BuildKit's copy resolves it
/// before anything is copied: a file copied onto an existing symlink is
/// written where the link points (a dangling link's target is created),
/// and the link stays. Paths joined below it later (`/dst/name`) are not
/// followed at their last component: there a symlink is replaced.
fn resolved_dest(parent: &dyn FsView, dest: &str) -> Result<String> {
    let resolved = resolve_in_root(parent, dest)?;
    Ok(match (resolved.is_empty(), dest.ends_with('/')) {
        (true, _) => "/".to_string(),
        (false, true) => format!("/{resolved}/"),
        (false, false) => format!("/{resolved}"),
    })
}

/// A context path from the step definition, resolved.
fn resolve_context(context: &BuildContext, path: &str) -> Result<String> {
    context
        .resolve(path)
        .map_err(Error::invalid_argument)?
        .ok_or_else(|| Error::not_found(format!("{path:?} is no longer in the build context")))
}

/// Where a remote source was fetched to.
fn fetched(request: &CopyRequest<'_>, key: &str) -> Result<PathBuf> {
    request.fetched.get(key).cloned().ok_or_else(|| Error::internal(format!("ADD {key} was not fetched")))
}

/// Plans WORKDIR: the directory and its missing parents, unless it exists,
/// owned by the current USER as BuildKit does (and, as BuildKit, by root
/// when the image does not know that user: RUN reports it if it matters).
pub fn plan_workdir(path: &str, user: Option<&str>, parent: &dyn FsView, mtime: u64) -> Result<LayerPlan> {
    let owner = user.and_then(|user| lookup_user(parent, user).ok());
    let mut copier = Copier::new(owner, None, DockerIgnore::default(), mtime);
    if !is_dir_in(parent, path)? {
        let at = resolve_in_root(parent, path)?;
        copier.parents_of(parent, &format!("{at}/."))?;
    }
    Ok(copier.plan)
}

enum Item {
    Source(Matched),
    Inline {
        name: String,
        content: Vec<u8>,
    },
    /// A file fetched over HTTP(S), named after its URL.
    Download {
        name: String,
        host: PathBuf,
        mtime: Option<u64>,
    },
    /// A git checkout: its contents land in the destination directory.
    Checkout(PathBuf),
}

/// A path a source matched in the context or the `--from` filesystem.
struct Matched {
    /// Resolved.
    path: String,
    /// The last component as matched, before symlinks are followed: a
    /// symlink named as a source lands under its own name with what it
    /// points to, as in BuildKit.
    name: String,
    /// With `--parents`, where below the destination it lands.
    kept: Option<Kept>,
}

/// With `--parents`: a source path as matched, and its part that lands
/// below the destination (never empty).
struct Kept {
    matched: String,
    rel: String,
}

impl Matched {
    /// Where a file or symlink lands.
    fn file_target(&self, dest: &str, dest_is_dir: bool) -> String {
        match &self.kept {
            Some(kept) => join(dest, &kept.rel),
            None if dest_is_dir => join(dest, &self.name),
            None => dest.to_string(),
        }
    }

    /// Where a directory's contents land.
    fn dir_target(&self, dest: &str) -> String {
        self.kept.as_ref().map_or_else(|| dest.to_string(), |kept| join(dest, &kept.rel))
    }

    /// What `--exclude` patterns are matched against for a file: its name,
    /// or with `--parents` its kept path.
    fn exclude_name(&self) -> &str {
        self.kept.as_ref().map_or_else(|| self.name.as_str(), |kept| kept.rel.as_str())
    }

    /// What the paths below a directory are joined to before `--exclude`
    /// patterns are matched: nothing, or with `--parents` its kept path.
    fn exclude_base(&self) -> &str {
        self.kept.as_ref().map_or("", |kept| kept.rel.as_str())
    }
}

/// How files on the host become layer entries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HostFiles {
    /// A mounted filesystem: owners, modes and times as they are.
    AsIs,
    /// A git checkout: owned by root, modes as git records them (0755 or
    /// 0644), the build's time; `.git` only when asked.
    Checkout { keep_git_dir: bool },
}

struct Copier {
    plan: LayerPlan,
    owner: Option<(u32, u32)>,
    chmod: Option<Chmod>,
    exclude: DockerIgnore,
    mtime: u64,
    /// Where the first file of each hard link group in the source being
    /// copied landed: files that are hard links of one another within one
    /// source path (a directory's tree) stay linked, as BuildKit's copy
    /// keeps them; across sources, and across the matches of a wildcard,
    /// they are separate files.
    context_links: HashMap<String, String>,
    host_links: HashMap<(u64, u64), String>,
}

impl Copier {
    fn new(owner: Option<(u32, u32)>, chmod: Option<Chmod>, exclude: DockerIgnore, mtime: u64) -> Self {
        Copier {
            plan: LayerPlan::default(),
            owner,
            chmod,
            exclude,
            mtime,
            context_links: HashMap::new(),
            host_links: HashMap::new(),
        }
    }

    /// Starts copying one source path: no file copied so far is linked to.
    fn start_source(&mut self) {
        self.context_links.clear();
        self.host_links.clear();
    }

    /// A context file of a directory being copied, landing at `at`: a hard
    /// link to the first file of its group copied from this directory, if
    /// any.
    fn context_file(&mut self, context: &BuildContext, path: &str, at: &str, file: Entry) -> Entry {
        let Some(first) = context.hardlink_group(path) else { return file };
        match self.context_links.get(first) {
            Some(landed) if landed != at => Entry::Hardlink(landed.clone()),
            Some(_) => file,
            None => {
                self.context_links.insert(first.to_string(), at.to_string());
                file
            }
        }
    }

    /// Plans a copied entry at `at`, refusing what BuildKit's copy refuses:
    /// a directory onto an existing non-directory (a symlink included), and
    /// a file or symlink onto an existing directory.
    fn put(&mut self, parent: &dyn FsView, at: &str, entry: Entry) -> Result<()> {
        let existing = PlannedView { plan: &self.plan, parent }.lstat(at)?;
        let is_dir = matches!(entry, Entry::Directory(_));
        match existing.map(|e| e.kind == FsKind::Directory) {
            Some(false) if is_dir => {
                return Err(Error::invalid_argument(format!(
                    "cannot copy a directory to /{at}: it exists and is not a directory"
                )))
            }
            Some(true) if !is_dir => {
                return Err(Error::invalid_argument(format!("cannot replace the directory /{at} with a file")))
            }
            _ => {}
        }
        self.plan.insert(at, entry);
        Ok(())
    }

    /// Metadata for a copied entry: `--chown`/`--chmod` win over the source's.
    fn meta(&self, mode: u32, uid: u64, gid: u64, is_dir: bool) -> Meta {
        let (uid, gid) = self.owner.map(|(u, g)| (u as u64, g as u64)).unwrap_or((uid, gid));
        let mode = match &self.chmod {
            Some(chmod) => chmod.apply(mode, is_dir),
            None => mode,
        };
        Meta { mode, uid, gid, mtime: self.mtime }
    }

    /// Resolves `target` through the parent filesystem's symlinks (all but
    /// the last component) and plans its missing parent directories.
    fn place(&mut self, parent: &dyn FsView, target: &str) -> Result<String> {
        let (dir, name) = split_last(target);
        let resolved_dir = resolve_in_root(parent, dir)?;
        let at = if resolved_dir.is_empty() { name.to_string() } else { format!("{resolved_dir}/{name}") };
        self.parents_of(parent, &at)?;
        Ok(at)
    }

    /// Like [`Copier::place`] for a destination directory: the directory
    /// itself, resolved (`""` for the root), with its parents planned.
    fn place_dir(&mut self, parent: &dyn FsView, dest: &str) -> Result<String> {
        let at = self.place(parent, &format!("{}/.", dest.trim_end_matches('/')))?;
        Ok(at.strip_suffix("/.").or_else(|| at.strip_suffix('.')).unwrap_or(&at).to_string())
    }

    /// Plans the directories above `at`: existing ones keep their metadata,
    /// new ones are 0755 and owned by the `--chown` user (root by default).
    fn parents_of(&mut self, parent: &dyn FsView, at: &str) -> Result<()> {
        let mut prefix = String::new();
        let parts: Vec<&str> = at.split('/').filter(|p| !p.is_empty()).collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            prefix = if prefix.is_empty() { part.to_string() } else { format!("{prefix}/{part}") };
            if self.plan.contains(&prefix) {
                continue;
            }
            let entry = match parent.lstat(&prefix)? {
                Some(m) if m.kind == FsKind::Directory => {
                    Entry::Directory(Meta { mode: m.mode, uid: m.uid, gid: m.gid, mtime: m.mtime })
                }
                _ => {
                    let (uid, gid) = self.owner.unwrap_or((0, 0));
                    Entry::Directory(Meta { mode: 0o755, uid: uid as u64, gid: gid as u64, mtime: self.mtime })
                }
            };
            self.plan.insert(&prefix, entry);
        }
        Ok(())
    }

    /// `--parents`: plans the directories on the kept part of a source that
    /// the parent filesystem lacks, each with the metadata of the source
    /// directory it copies (`source_dir` reads it by its matched path).
    fn kept_parents(
        &mut self,
        parent: &dyn FsView,
        dest: &str,
        kept: &Kept,
        source_dir: impl Fn(&str) -> Result<Meta>,
    ) -> Result<()> {
        let matched: Vec<&str> = kept.matched.split('/').collect();
        let rel: Vec<&str> = kept.rel.split('/').collect();
        let above = matched.len().saturating_sub(rel.len());
        for depth in 1..rel.len() {
            let target = join(dest, &rel[..depth].join("/"));
            if is_dir_in(parent, &target)? {
                continue;
            }
            let at = self.place(parent, &target)?;
            if self.plan.contains(&at) {
                continue;
            }
            let source = source_dir(&matched[..above + depth].join("/"))?;
            let meta = Meta { mtime: source.mtime, ..self.meta(source.mode, source.uid, source.gid, true) };
            self.plan.insert(&at, Entry::Directory(meta));
        }
        Ok(())
    }

    fn context_item(
        &mut self,
        request: &CopyRequest<'_>,
        dir: &Path,
        context: &BuildContext,
        item: &Matched,
        parent: &dyn FsView,
        dest_is_dir: bool,
    ) -> Result<()> {
        let path = item.path.as_str();
        let entry = context
            .entry(path)
            .ok_or_else(|| Error::not_found(format!("{path:?} is no longer in the build context")))?;
        if let Some(kept) = &item.kept {
            let mtime = self.mtime;
            self.kept_parents(parent, request.dest, kept, |p| match context.entry(&resolve_context(context, p)?) {
                Some(ContextEntry::Directory { mode, .. }) => Ok(Meta { mode: *mode, uid: 0, gid: 0, mtime }),
                _ => Err(Error::not_found(format!("directory {p:?} is no longer in the build context"))),
            })?;
        }
        match entry {
            ContextEntry::File { digest, mode } => {
                let host = dir.join(path);
                let target = item.file_target(request.dest, dest_is_dir);
                if request.add && request.unpack != Some(false) {
                    if let Some(archive) = Archive::detect(&host)? {
                        return self.unpack(&archive, &host, parent, request.dest);
                    }
                }
                let at = self.place(parent, &target)?;
                let meta = self.meta(*mode, 0, 0, false);
                let content =
                    Content::File { path: host, size: digest.size(), expect: Some(*digest), capabilities: None };
                self.put(parent, &at, Entry::File(meta, content))?;
            }
            ContextEntry::Symlink { target } => {
                let at = self.place(parent, &item.file_target(request.dest, dest_is_dir))?;
                let meta = self.meta(0o777, 0, 0, false);
                self.put(parent, &at, Entry::Symlink(meta, target.clone()))?;
            }
            ContextEntry::Directory { mode, .. } => {
                let dest = item.dir_target(request.dest);
                let root = self.place_dir(parent, &dest)?;
                if !root.is_empty() && !is_dir_in(parent, &dest)? {
                    self.put(parent, &root, Entry::Directory(self.meta(*mode, 0, 0, true)))?;
                }
                let prefix = if path.is_empty() { String::new() } else { format!("{path}/") };
                for (p, e) in context.entries().range(prefix.clone()..) {
                    let Some(rel) = p.strip_prefix(&prefix) else { break };
                    if rel.is_empty() || self.exclude.is_excluded(&join_rel(item.exclude_base(), rel)) {
                        continue;
                    }
                    let at = if root.is_empty() { rel.to_string() } else { format!("{root}/{rel}") };
                    let entry = match e {
                        ContextEntry::File { digest, mode } => {
                            let content = Content::File {
                                path: dir.join(p),
                                size: digest.size(),
                                expect: Some(*digest),
                                capabilities: None,
                            };
                            self.context_file(context, p, &at, Entry::File(self.meta(*mode, 0, 0, false), content))
                        }
                        ContextEntry::Directory { mode, .. } => Entry::Directory(self.meta(*mode, 0, 0, true)),
                        ContextEntry::Symlink { target } => {
                            Entry::Symlink(self.meta(0o777, 0, 0, false), target.clone())
                        }
                    };
                    self.put(parent, &at, entry)?;
                }
            }
        }
        Ok(())
    }

    fn filesystem_item(
        &mut self,
        root: &Path,
        item: &Matched,
        parent: &dyn FsView,
        dest: &str,
        dest_is_dir: bool,
    ) -> Result<()> {
        let path = item.path.as_str();
        let host = root.join(path);
        let meta =
            std::fs::symlink_metadata(&host).with_context(|| format!("reading {path} in the --from filesystem"))?;
        if !meta.is_dir() && self.exclude.is_excluded(item.exclude_name()) {
            return Ok(());
        }
        if let Some(kept) = &item.kept {
            self.kept_parents(parent, dest, kept, |p| {
                let at = resolve_in_root(&HostDir(root), p)?;
                let m = std::fs::symlink_metadata(root.join(&at))
                    .with_context(|| format!("reading {p} in the --from filesystem"))?;
                Ok(Meta {
                    mode: m.mode() & 0o7777,
                    uid: m.uid() as u64,
                    gid: m.gid() as u64,
                    mtime: m.mtime().max(0) as u64,
                })
            })?;
        }
        if meta.is_dir() {
            let dest = item.dir_target(dest);
            let at = self.place_dir(parent, &dest)?;
            if !at.is_empty() && !is_dir_in(parent, &dest)? {
                let m = self.meta(meta.mode() & 0o7777, meta.uid() as u64, meta.gid() as u64, true);
                self.put(parent, &at, Entry::Directory(m))?;
            }
            return self.walk(parent, &host, &at, item.exclude_base(), HostFiles::AsIs);
        }
        let at = self.place(parent, &item.file_target(dest, dest_is_dir))?;
        self.filesystem_entry(parent, &host, &meta, &at, HostFiles::AsIs)
    }

    /// Plans what is below `dir` under `at`; `--exclude` is matched against
    /// paths below `rel`.
    fn walk(&mut self, parent: &dyn FsView, dir: &Path, at: &str, rel: &str, files: HostFiles) -> Result<()> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<std::io::Result<Vec<_>>>()?;
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let name = entry.file_name().to_string_lossy().to_string();
            if name == ".git" && files == (HostFiles::Checkout { keep_git_dir: false }) {
                continue;
            }
            let child_at = join_rel(at, &name);
            let child_rel = join_rel(rel, &name);
            let host = entry.path();
            let meta = std::fs::symlink_metadata(&host)?;
            let excluded = self.exclude.is_excluded(&child_rel);
            if !excluded {
                self.filesystem_entry(parent, &host, &meta, &child_at, files)?;
            }
            // An excluded directory may still hold paths a `!` pattern keeps.
            if meta.is_dir() && (!excluded || self.exclude.has_exclusions()) {
                self.walk(parent, &host, &child_at, &child_rel, files)?;
            }
        }
        Ok(())
    }

    fn filesystem_entry(
        &mut self,
        parent: &dyn FsView,
        host: &Path,
        meta: &std::fs::Metadata,
        at: &str,
        files: HostFiles,
    ) -> Result<()> {
        let is_dir = meta.is_dir();
        let m = match files {
            HostFiles::AsIs => Meta {
                mtime: meta.mtime().max(0) as u64,
                ..self.meta(meta.mode() & 0o7777, meta.uid() as u64, meta.gid() as u64, is_dir)
            },
            HostFiles::Checkout { .. } => {
                let mode = if is_dir || meta.mode() & 0o111 != 0 { 0o755 } else { 0o644 };
                self.meta(mode, 0, 0, is_dir)
            }
        };
        let entry = if is_dir {
            Entry::Directory(m)
        } else if meta.file_type().is_symlink() {
            Entry::Symlink(m, std::fs::read_link(host)?.to_string_lossy().to_string())
        } else if meta.is_file() {
            let capabilities = match files {
                HostFiles::AsIs => {
                    read_file_capabilities(host).with_context(|| format!("reading {}", host.display()))?
                }
                HostFiles::Checkout { .. } => None,
            };
            let content = Content::File { path: host.to_path_buf(), size: meta.len(), expect: None, capabilities };
            let file = Entry::File(m, content);
            if meta.nlink() < 2 {
                file
            } else {
                match self.host_links.entry((meta.dev(), meta.ino())) {
                    std::collections::hash_map::Entry::Occupied(first) if first.get() != at => {
                        Entry::Hardlink(first.get().clone())
                    }
                    std::collections::hash_map::Entry::Occupied(_) => file,
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(at.to_string());
                        file
                    }
                }
            }
        } else {
            // Devices, sockets and fifos are not copied, as Docker does not.
            return Ok(());
        };
        self.put(parent, at, entry)
    }

    /// Where an archive member below `root` lands, as unpacking puts it:
    /// its directory resolved through the symlinks of the parent filesystem
    /// and of the members unpacked so far, the directories it lacks created
    /// 0755, owned by root whatever `--chown` says, at the step's time. The
    /// member's own name is not followed (a member replaces a symlink).
    fn member_path(&mut self, parent: &dyn FsView, root: &str, rel: &str) -> Result<String> {
        let (rel_dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let mut dir = root.to_string();
        for part in rel_dir.split('/').filter(|p| !p.is_empty()) {
            let view = PlannedView { plan: &self.plan, parent };
            let next = resolve_in_root(&view, &join_rel(&dir, part))?;
            let existing = view.lstat(&next)?;
            if split_last(&next).0.trim_start_matches('/') != dir {
                // A symlink was followed: the directories above its target.
                self.parents_of(parent, &format!("{next}/."))?;
            }
            let meta = match existing {
                Some(e) if e.kind == FsKind::Directory => Meta { mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtime },
                _ => Meta { mode: 0o755, uid: 0, gid: 0, mtime: self.mtime },
            };
            self.plan.insert(&next, Entry::Directory(meta));
            dir = next;
        }
        Ok(join_rel(&dir, name))
    }

    /// ADD of a local archive: its members land under `dest`.
    fn unpack(&mut self, archive: &Archive, host: &Path, parent: &dyn FsView, dest: &str) -> Result<()> {
        let root = self.place_dir(parent, dest)?;
        let reader = archive.reader(std::fs::File::open(host)?)?;
        let name = host.display().to_string();
        let mut tar = tar::Archive::new(reader);
        for member in tar.entries().with_context(|| format!("reading archive {name}"))? {
            let mut member = member.with_context(|| format!("reading archive {name}"))?;
            let raw = member.path().with_context(|| format!("archive {name}"))?.to_string_lossy().to_string();
            let rel = safe_member_path(&raw).ok_or_else(|| {
                Error::invalid_argument(format!("archive {name}: member {raw:?} leaves the destination"))
            })?;
            if rel.is_empty() {
                continue;
            }
            let at = self.member_path(parent, &root, &rel)?;
            let header = member.header();
            // Members keep the archive's owners and modes: `--chown` and
            // `--chmod` apply only to the directories ADD creates above.
            let m = Meta {
                mode: header.mode().unwrap_or(0o644) & 0o7777,
                uid: header.uid().unwrap_or(0),
                gid: header.gid().unwrap_or(0),
                mtime: header.mtime().unwrap_or(self.mtime),
            };
            let kind = header.entry_type();
            let entry = if kind.is_dir() {
                // The archive's own entry wins over a directory planned
                // implicitly for an earlier member.
                self.plan.remove(&at);
                Entry::Directory(m)
            } else if kind.is_symlink() {
                let target = member.link_name()?.map(|l| l.to_string_lossy().to_string()).unwrap_or_default();
                Entry::Symlink(m, target)
            } else if kind.is_hard_link() {
                let target = member.link_name()?.map(|l| l.to_string_lossy().to_string()).unwrap_or_default();
                let target = safe_member_path(&target).ok_or_else(|| {
                    Error::invalid_argument(format!("archive {name}: hard link {raw:?} points outside it"))
                })?;
                let (target_dir, target_name) = target.rsplit_once('/').unwrap_or(("", &target));
                let view = PlannedView { plan: &self.plan, parent };
                Entry::Hardlink(join_rel(&resolve_in_root(&view, &join_rel(&root, target_dir))?, target_name))
            } else if kind.is_file() {
                let size = member.size();
                if size > MAX_ARCHIVE_MEMBER {
                    return Err(Error::resource_exhausted(format!(
                        "archive {name}: member {raw:?} is larger than {MAX_ARCHIVE_MEMBER} bytes"
                    )));
                }
                let mut data = Vec::with_capacity(size as usize);
                member.read_to_end(&mut data)?;
                Entry::File(m, Content::Bytes(data))
            } else {
                continue;
            };
            self.plan.insert(&at, entry);
        }
        Ok(())
    }
}

/// Expands `pattern` (absolute in the image) against the filesystem at
/// `root`, wildcards per path element; returns each match as matched and
/// resolved, as relative paths.
fn glob_in_root(root: &Path, pattern: &str) -> Result<Vec<(String, String)>> {
    let mut found = vec![(String::new(), String::new())];
    for part in pattern.split('/').filter(|p| !p.is_empty() && *p != ".") {
        let mut next = Vec::new();
        for (matched, base) in &found {
            let dir = resolve_in_root(&HostDir(root), base)?;
            if !part.contains(['*', '?', '[']) {
                next.push((join_rel(matched, part), join_rel(&dir, part)));
                continue;
            }
            let matcher = memobuild_frontend::IgnorePattern::glob(part).map_err(Error::invalid_argument)?;
            let Ok(entries) = std::fs::read_dir(root.join(&dir)) else { continue };
            let mut names: Vec<String> =
                entries.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
            names.sort();
            next.extend(
                names.into_iter().filter(|n| matcher.matches(n)).map(|n| (join_rel(matched, &n), join_rel(&dir, &n))),
            );
        }
        found = next;
    }
    let mut resolved = Vec::new();
    for (matched, path) in found {
        let at = resolve_in_root(&HostDir(root), &path)?;
        if std::fs::symlink_metadata(root.join(&at)).is_ok() {
            resolved.push((matched, at));
        }
    }
    Ok(resolved)
}

fn is_dir_in(root: &dyn FsView, path: &str) -> Result<bool> {
    let at = resolve_in_root(root, path)?;
    Ok(matches!(root.lstat(&at)?, Some(entry) if entry.kind == FsKind::Directory))
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

fn join_rel(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn split_last(path: &str) -> (&str, &str) {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((dir, name)) => (if dir.is_empty() { "/" } else { dir }, name),
        None => ("/", trimmed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir_belongs_to_the_user_or_to_root_when_the_image_does_not_know_them() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/passwd"), "app:x:1000:1001::/home/app:/bin/sh\n").unwrap();
        let owner = |user: Option<&str>| {
            let plan = plan_workdir("/w/x", user, &HostDir(root.path()), 0).unwrap();
            let Some(Entry::Directory(meta)) = plan.entry("w/x") else { panic!("no directory w/x planned") };
            (meta.uid, meta.gid)
        };
        assert_eq!(owner(Some("app")), (1000, 1001));
        assert_eq!(owner(Some("1234")), (1234, 1234));
        assert_eq!(owner(Some("ghost")), (0, 0));
        assert_eq!(owner(None), (0, 0));
    }

    /// A COPY planned on the parent's layer index is the one planned on
    /// the parent mounted: symlinks on the destination, existing
    /// directories' modes, owners and times, and `--chown` names.
    #[test]
    fn the_layer_index_plans_what_the_mounted_parent_plans() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        std::fs::create_dir_all(p.join("usr/lib/kept")).unwrap();
        std::fs::create_dir_all(p.join("etc")).unwrap();
        std::fs::write(p.join("etc/passwd"), "app:x:1000:1001::/home/app:/bin/sh\n").unwrap();
        std::fs::write(p.join("etc/group"), "staff:x:50:\n").unwrap();
        std::fs::set_permissions(p.join("usr/lib"), std::fs::Permissions::from_mode(0o701)).unwrap();
        symlink("usr/lib", p.join("lib")).unwrap();
        symlink("/usr/lib/kept", p.join("abs")).unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        tar.follow_symlinks(false);
        tar.append_dir_all(".", p).unwrap();
        let index = std::sync::Arc::new(memobuild_oci::LayerIndex::from_tar(&tar.into_inner().unwrap()[..]).unwrap());
        let indexed = super::super::layer_stack_view::LayerStackView::new(vec![index]);

        let source = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(source.path().join("out")).unwrap();
        std::fs::write(source.path().join("out/bin"), "binary").unwrap();
        let fetched = HashMap::new();
        let sources = [SourceDefinition::Path { path: "/out/bin".into(), matches: Vec::new() }];
        for (dest, chown) in [("/lib/sub/", Some("app:staff")), ("/abs/x", None), ("/srv/new/", Some("42"))] {
            let request = CopyRequest {
                add: false,
                sources: &sources,
                dest,
                chown,
                chmod: None,
                excludes: &[],
                unpack: None,
                parents: false,
                fetched: &fetched,
                keep_git_dir: false,
            };
            let from = SourceRoot::Filesystem(source.path());
            let mounted = plan_copy(&request, &from, &HostDir(p), 7).unwrap().describe();
            assert_eq!(plan_copy(&request, &from, &indexed, 7).unwrap().describe(), mounted, "COPY to {dest}");
            assert!(!indexed.incomplete());
        }
        for user in [Some("app"), None] {
            let mounted = plan_workdir("/lib/w", user, &HostDir(p), 7).unwrap().describe();
            assert_eq!(plan_workdir("/lib/w", user, &indexed, 7).unwrap().describe(), mounted);
        }
    }

    fn request<'a>(
        sources: &'a [SourceDefinition],
        dest: &'a str,
        fetched: &'a HashMap<String, PathBuf>,
    ) -> CopyRequest<'a> {
        CopyRequest {
            add: false,
            sources,
            dest,
            chown: None,
            chmod: None,
            excludes: &[],
            unpack: None,
            parents: false,
            fetched,
            keep_git_dir: false,
        }
    }

    fn paths(sources: &[&str]) -> Vec<SourceDefinition> {
        sources.iter().map(|p| SourceDefinition::Path { path: p.to_string(), matches: Vec::new() }).collect()
    }

    /// What a plan has at `path`: `file MODE UID:GID`, `dir ...`,
    /// `symlink -> T`, `hardlink -> T`.
    fn planned(plan: &LayerPlan, path: &str) -> Option<String> {
        Some(match plan.entry(path)? {
            Entry::Directory(m) => format!("dir {:o} {}:{}", m.mode, m.uid, m.gid),
            Entry::File(m, _) => format!("file {:o} {}:{}", m.mode, m.uid, m.gid),
            Entry::Symlink(_, target) => format!("symlink -> {target}"),
            Entry::Hardlink(target) => format!("hardlink -> {target}"),
        })
    }

    /// As BuildKit: the destination as written is followed through a
    /// symlink, its last component too (a dangling link's target is
    /// created); a name joined below it is replaced, not followed.
    #[test]
    fn copy_onto_an_existing_symlink_writes_where_it_points() {
        use std::os::unix::fs::symlink;
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        std::fs::write(p.join("target"), "old").unwrap();
        symlink("/target", p.join("link")).unwrap();
        symlink("/made/here", p.join("dangling")).unwrap();
        std::fs::create_dir(p.join("realdir")).unwrap();
        symlink("/realdir", p.join("dirlink")).unwrap();
        std::fs::write(p.join("target2"), "old").unwrap();
        symlink("target2", p.join("rel")).unwrap();
        std::fs::create_dir(p.join("d")).unwrap();
        symlink("/target", p.join("d/a.txt")).unwrap();
        let source = tempfile::tempdir().unwrap();
        std::fs::write(source.path().join("a.txt"), "new").unwrap();
        let fetched = HashMap::new();
        let sources = paths(&["/a.txt"]);
        let copy = |dest: &str| {
            let from = SourceRoot::Filesystem(source.path());
            plan_copy(&request(&sources, dest, &fetched), &from, &HostDir(p), 7).unwrap()
        };
        let plan = copy("/link");
        assert_eq!(planned(&plan, "target").as_deref(), Some("file 644 0:0"));
        assert_eq!(planned(&plan, "link"), None);
        let plan = copy("/dangling");
        assert_eq!(planned(&plan, "made").as_deref(), Some("dir 755 0:0"));
        assert_eq!(planned(&plan, "made/here").as_deref(), Some("file 644 0:0"));
        assert_eq!(planned(&plan, "dangling"), None);
        assert_eq!(planned(&copy("/dirlink"), "realdir/a.txt").as_deref(), Some("file 644 0:0"));
        assert_eq!(planned(&copy("/rel"), "target2").as_deref(), Some("file 644 0:0"));
        let plan = copy("/d/");
        assert_eq!(planned(&plan, "d/a.txt").as_deref(), Some("file 644 0:0"));
        assert_eq!(planned(&plan, "target"), None);
    }

    /// Files that are hard links of one another in one copied directory
    /// stay linked; named as separate sources they are separate files.
    #[test]
    fn hard_links_within_one_source_stay_linked() {
        let source = tempfile::tempdir().unwrap();
        let s = source.path();
        std::fs::create_dir_all(s.join("d/sub")).unwrap();
        std::fs::write(s.join("d/sub/a"), "same").unwrap();
        std::fs::hard_link(s.join("d/sub/a"), s.join("d/b")).unwrap();
        std::fs::hard_link(s.join("d/sub/a"), s.join("d/c")).unwrap();
        let parent = tempfile::tempdir().unwrap();
        let fetched = HashMap::new();
        let from = SourceRoot::Filesystem(s);

        let sources = paths(&["/d"]);
        let plan = plan_copy(&request(&sources, "/copied/", &fetched), &from, &HostDir(parent.path()), 7).unwrap();
        // Walked in name order: `b` comes first and the others link to it.
        assert_eq!(planned(&plan, "copied/b").as_deref(), Some("file 644 0:0"));
        assert_eq!(planned(&plan, "copied/c").as_deref(), Some("hardlink -> copied/b"));
        assert_eq!(planned(&plan, "copied/sub/a").as_deref(), Some("hardlink -> copied/b"));

        let sources = paths(&["/d/b", "/d/c"]);
        let plan = plan_copy(&request(&sources, "/two/", &fetched), &from, &HostDir(parent.path()), 7).unwrap();
        assert_eq!(planned(&plan, "two/b").as_deref(), Some("file 644 0:0"));
        assert_eq!(planned(&plan, "two/c").as_deref(), Some("file 644 0:0"));
    }

    /// ADD of a local archive, as Docker 20.10's BuildKit unpacks it: the
    /// members keep the archive's owners and modes whatever `--chown` and
    /// `--chmod` say (those apply to the directories ADD creates above);
    /// a directory a member needs that the archive does not list is 0755,
    /// root's, at the step's time; a directory listed after its contents
    /// gets the archive's metadata.
    #[test]
    fn archive_members_keep_their_metadata_and_implicit_directories_are_root_0755() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, mode: u32, owner: u64, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_size(data.len() as u64);
            header.set_mode(mode);
            header.set_uid(owner);
            header.set_gid(owner + 1);
            header.set_mtime(1_600_000_000);
            header.set_cksum();
            builder.append_data(&mut header, path, data).unwrap();
        };
        add("implicit/parent/file", tar::EntryType::Regular, 0o600, 5, b"deep");
        add("late/x", tar::EntryType::Regular, 0o644, 0, b"x");
        add("late/", tar::EntryType::Directory, 0o700, 7, b"");
        let context_dir = tempfile::tempdir().unwrap();
        std::fs::write(context_dir.path().join("a.tar"), builder.into_inner().unwrap()).unwrap();
        let (context, _) =
            memobuild_frontend::ContextScanner::new(context_dir.path(), DockerIgnore::default()).scan().unwrap();
        let parent = tempfile::tempdir().unwrap();
        let fetched = HashMap::new();
        let sources =
            [SourceDefinition::Path { path: "a.tar".into(), matches: vec![("a.tar".into(), Default::default())] }];
        let request =
            CopyRequest { add: true, chown: Some("42:43"), chmod: Some("0640"), ..request(&sources, "/r/", &fetched) };
        let from = SourceRoot::Context { dir: context_dir.path(), context: &context };
        let plan = plan_copy(&request, &from, &HostDir(parent.path()), 7).unwrap();
        assert_eq!(planned(&plan, "r").as_deref(), Some("dir 755 42:43"));
        for dir in ["r/implicit", "r/implicit/parent"] {
            assert_eq!(planned(&plan, dir).as_deref(), Some("dir 755 0:0"), "{dir}");
            let Some(Entry::Directory(meta)) = plan.entry(dir) else { unreachable!() };
            assert_eq!(meta.mtime, 7, "{dir}");
        }
        assert_eq!(planned(&plan, "r/implicit/parent/file").as_deref(), Some("file 600 5:6"));
        assert_eq!(planned(&plan, "r/late").as_deref(), Some("dir 700 7:8"));
        assert_eq!(planned(&plan, "r/late/x").as_deref(), Some("file 644 0:1"));
    }
}
