//! `memobuild prune`: keeps the state dir from growing forever, with the
//! flags of `docker builder prune`.
//!
//! Action-cache entries are the roots. The policy drops some of them (all,
//! those not used within a time, or the least recently used until the rest
//! fit a size); then every CAS blob that no remaining entry reaches goes. An
//! entry reaches its outputs, its Action and Command, and its input root
//! tree with the files in it, which are the parent layers: base layers stay
//! while steps built on them stay. A kept entry whose blobs are gone is a
//! miss ([`memobuild_cas::ActionCache`] checks), never a wrong hit.
//!
//! Then memobuild's containerd snapshots (unpacked layer chains) that no
//! remaining entry starts from or makes go too; while a layer's diff id is
//! unknown, every snapshot stays.
//!
//! The stores are opened for this process alone, so a prune never runs
//! while a build uses the state dir.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use indicatif::{HumanBytes, HumanDuration};
use memobuild_cas::{collect, output_digests, walk_tree, BlobStore, ByteRange, FilesystemStore, StoredBlob};
use memobuild_frontend::{parse_byte_size, parse_go_duration};
use memobuild_oci::{DiffIdMemo, DirectoryDiffIdMemo, Layer};
use memobuild_proto::reapi::{Action, ActionResult, Directory, Tree};
use memobuild_proto::{Digest, Error, Result, ResultExt};
use memobuild_worker::containerd::{Containerd, SYSTEM_SOCKET};
use prost::Message;

use super::local_state::{
    ACTION_CACHE_DIR, CACHE_MOUNTS_DIR, CAS_DIR, DIFF_IDS_DIR, LAYER_INDEXES_DIR, RECORDS_DIR, REMOTE_FILES_DIR,
    STAT_CACHE_DIR,
};
use memobuild_engine::{RemoteFileNote, StepLayers};

/// The largest entry, Action or output Tree read into memory.
const MAX_ENTRY_BYTES: u64 = 64 << 20;
/// The action cache of a `memobuild server` sharing the state dir (see
/// `ServerConfig::embedded`): its entries are kept, and what they reach.
const SERVER_ACTION_CACHE_DIR: &str = "ac";
/// Where a private containerd keeps its root (see `Containerd::start_private`).
const PRIVATE_CONTAINERD_DIR: &str = "containerd";
/// What `--all` empties besides the stores.
const CACHE_DIRS: [&str; 6] =
    [CACHE_MOUNTS_DIR, STAT_CACHE_DIR, REMOTE_FILES_DIR, DIFF_IDS_DIR, LAYER_INDEXES_DIR, RECORDS_DIR];

/// The flags of `docker builder prune` that memobuild takes.
#[derive(clap::Args, Clone, Debug)]
pub struct PruneArgs {
    /// Remove every cache entry and blob, and empty the cache mounts, the
    /// context and ADD caches, the build records and memobuild's containerd
    /// snapshots.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Keep the most recently used cache entries whose blobs fit in SIZE
    /// (e.g. 10gb, 512mb); remove the others.
    #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
    pub keep_storage: Option<u64>,
    /// until=DURATION: remove cache entries no build used within DURATION
    /// (e.g. 24h, 30m). With --keep-storage, only these may go.
    #[arg(long, value_name = "until=DURATION", value_parser = parse_filter)]
    pub filter: Option<Duration>,
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// List what is removed.
    #[arg(long)]
    pub verbose: bool,
    /// The state dir to prune [default: $XDG_STATE_HOME/memobuild].
    #[arg(long, env = "MEMOBUILD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// containerd's socket, to remove snapshots [default: as memobuild build finds it].
    #[arg(long, env = "CONTAINERD_ADDRESS")]
    pub containerd_address: Option<PathBuf>,
}

fn parse_filter(text: &str) -> std::result::Result<Duration, String> {
    match text.split_once('=') {
        Some(("until", duration)) => parse_go_duration(duration),
        _ => Err(format!("unsupported filter {text:?}: only until=DURATION (e.g. until=24h) is supported")),
    }
}

impl PruneArgs {
    pub fn policy(&self) -> PrunePolicy {
        PrunePolicy { all: self.all, unused_for: self.filter, keep_storage: self.keep_storage }
    }
}

/// Which cache entries go. With none of these, only blobs that no entry
/// reaches go.
#[derive(Clone, Debug, Default)]
pub struct PrunePolicy {
    /// Every entry, and every cache.
    pub all: bool,
    /// Entries not used for this long.
    pub unused_for: Option<Duration>,
    /// The least recently used entries, until what the others reach fits.
    pub keep_storage: Option<u64>,
}

/// What a prune removed.
#[derive(Debug, Default)]
pub struct PruneReport {
    pub bytes: u64,
    pub blobs: u64,
    pub entries: u64,
    pub snapshots: u64,
    /// One line per entry and blob removed, for `--verbose`.
    pub removed: Vec<String>,
    /// The chain ids of the snapshots the remaining entries use; `None`
    /// when unknown, and then no snapshot may go.
    pub live_chains: Option<HashSet<String>>,
}

impl PruneReport {
    /// `reclaimed 1.20 GiB: 340 blobs, 120 cache entries`.
    pub fn summary(&self) -> String {
        let mut text =
            format!("reclaimed {}: {} blobs, {} cache entries", HumanBytes(self.bytes), self.blobs, self.entries);
        if self.snapshots > 0 {
            text.push_str(&format!(", {} containerd snapshots", self.snapshots));
        }
        text
    }
}

/// Runs `memobuild prune` on `state_dir` (nothing to do when it does not exist).
pub async fn prune(args: &PruneArgs, state_dir: &Path) -> Result<PruneReport> {
    let Some(pruner) = Pruner::open(state_dir).await? else { return Ok(PruneReport::default()) };
    let mut report = pruner.prune(&args.policy(), SystemTime::now()).await?;
    if let Some(live) = &report.live_chains {
        report.snapshots = pruner.remove_snapshots(args.containerd_address.as_deref(), live).await?;
    }
    Ok(report)
}

/// An action-cache entry and the CAS blobs it reaches (`None`: the entry
/// is not a readable ActionResult, so it can only fail a build).
struct Entry {
    key: Digest,
    size: u64,
    last_used: SystemTime,
    reaches: Option<Vec<Digest>>,
    /// The layers of the step it records; `None` when they cannot be read.
    layers: Option<StepLayers>,
}

/// The chain ids of the snapshots that steps with these `layers` start
/// from or make: every prefix of parent layers and output. `None` when a
/// layer's diff id is unknown.
fn live_chains<'a>(
    layers: impl IntoIterator<Item = &'a StepLayers>,
    diff_id: impl Fn(&Digest) -> Option<Digest>,
) -> Option<HashSet<String>> {
    let mut live = HashSet::new();
    for step in layers {
        let stack: Option<Vec<Layer>> =
            step.parent.iter().chain(&step.output).map(|blob| diff_id(blob).map(Layer::uncompressed)).collect();
        live.extend(Layer::chain_ids(&stack?));
    }
    Some(live)
}

/// The entries `policy` drops (indices into `entries`).
fn entries_to_drop(
    entries: &[Entry],
    sizes: &HashMap<Digest, u64>,
    policy: &PrunePolicy,
    now: SystemTime,
) -> Vec<usize> {
    let mut drop: Vec<usize> = (0..entries.len()).filter(|&i| policy.all || entries[i].reaches.is_none()).collect();
    if policy.all {
        return drop;
    }
    let age = |entry: &Entry| now.duration_since(entry.last_used).unwrap_or_default();
    let mut candidates: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].reaches.is_some() && policy.unused_for.is_none_or(|d| age(&entries[i]) >= d))
        .collect();
    candidates.sort_by_key(|&i| entries[i].last_used);
    match policy.keep_storage {
        None if policy.unused_for.is_some() => drop.extend(candidates),
        None => {}
        Some(limit) => {
            // How many entries reach each blob, and what they reach together.
            let mut users: HashMap<Digest, usize> = HashMap::new();
            for digest in entries.iter().filter_map(|e| e.reaches.as_ref()).flatten() {
                *users.entry(*digest).or_default() += 1;
            }
            let size = |digest: &Digest| sizes.get(digest).copied().unwrap_or(0);
            let mut total: u64 = users.keys().map(size).sum();
            for i in candidates {
                if total <= limit {
                    break;
                }
                drop.push(i);
                for digest in entries[i].reaches.iter().flatten() {
                    if let Some(count) = users.get_mut(digest) {
                        *count -= 1;
                        if *count == 0 {
                            total -= size(digest);
                        }
                    }
                }
            }
        }
    }
    drop
}

/// A state dir held for a prune: its stores are open for this process alone.
pub struct Pruner {
    dir: PathBuf,
    cas: FilesystemStore,
    results: FilesystemStore,
    server_results: Option<FilesystemStore>,
}

impl Pruner {
    /// Takes the state dir's stores; `None` when there is no state dir.
    /// Fails while a build (or a server) uses them.
    pub async fn open(dir: &Path) -> Result<Option<Pruner>> {
        if !dir.exists() {
            return Ok(None);
        }
        let open = |name: &str| {
            let path = dir.join(name);
            async move {
                FilesystemStore::open(path, false).await.map_err(|e| {
                    let e = match e.code() {
                        tonic::Code::Unavailable => e.context("a build is using the state dir; prune when it is done"),
                        _ => e,
                    };
                    e.context(format!("pruning {}", dir.display()))
                })
            }
        };
        let cas = open(CAS_DIR).await?;
        let results = open(ACTION_CACHE_DIR).await?;
        let server_results = match dir.join(SERVER_ACTION_CACHE_DIR).exists() {
            true => Some(open(SERVER_ACTION_CACHE_DIR).await?),
            false => None,
        };
        Ok(Some(Pruner { dir: dir.to_path_buf(), cas, results, server_results }))
    }

    /// Drops the entries `policy` picks, then every blob and note that no
    /// remaining entry reaches; with `all`, empties the caches too.
    pub async fn prune(&self, policy: &PrunePolicy, now: SystemTime) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let blobs = self.cas.list().await?;
        let sizes: HashMap<Digest, u64> = blobs.iter().map(|b| (b.digest, b.size)).collect();
        let entries = self.entries(&self.results).await?;
        let dropped = entries_to_drop(&entries, &sizes, policy, now);
        for &i in &dropped {
            let entry = &entries[i];
            self.results.delete(&entry.key).await?;
            report.entries += 1;
            report.bytes += entry.size;
            let age = HumanDuration(now.duration_since(entry.last_used).unwrap_or_default());
            report.removed.push(format!("cache entry {} (last used {age} ago)", entry.key));
        }
        let dropped: HashSet<usize> = dropped.into_iter().collect();
        let server_entries = match &self.server_results {
            Some(server) => self.entries(server).await?,
            None => Vec::new(),
        };
        let remaining_entries: Vec<&Entry> =
            (0..entries.len()).filter(|i| !dropped.contains(i)).map(|i| &entries[i]).chain(&server_entries).collect();
        let keep: HashSet<Digest> =
            remaining_entries.iter().filter_map(|e| e.reaches.as_ref()).flatten().copied().collect();
        // Steps make uncompressed layers; pulls remember compressed ones' diff ids.
        let made: HashSet<Digest> =
            entries.iter().chain(&server_entries).filter_map(|e| e.layers.as_ref()?.output).collect();
        let memo = DirectoryDiffIdMemo::new(self.dir.join(DIFF_IDS_DIR));
        // A base layer pulled uncompressed has no memo: its blob is its diff id.
        let unknown: HashSet<Digest> = remaining_entries
            .iter()
            .flat_map(|e| e.layers.iter().flat_map(|l| &l.parent))
            .filter(|blob| !made.contains(*blob) && memo.get(blob).is_none())
            .copied()
            .collect();
        let mut plain = HashSet::new();
        for blob in unknown {
            if self.is_uncompressed_tar(&blob).await? {
                plain.insert(blob);
            }
        }
        let diff_id =
            |blob: &Digest| memo.get(blob).or_else(|| (made.contains(blob) || plain.contains(blob)).then_some(*blob));
        let layers: Option<Vec<&StepLayers>> = remaining_entries.iter().map(|e| e.layers.as_ref()).collect();
        // `--all` empties every cache, snapshots included, as it always has.
        report.live_chains = match policy.all {
            true => Some(HashSet::new()),
            false => layers.and_then(|layers| live_chains(layers, diff_id)),
        };
        let mut remaining = HashSet::new();
        for blob in &blobs {
            if keep.contains(&blob.digest) {
                remaining.insert(blob.digest.hex());
                continue;
            }
            self.cas.delete(&blob.digest).await?;
            report.blobs += 1;
            report.bytes += blob.size;
            report.removed.push(format!("blob {} ({})", blob.digest, HumanBytes(blob.size)));
        }
        // Diff ids and layer indexes are named by their blob's hex digest;
        // ADD notes name theirs inside.
        for dir in [DIFF_IDS_DIR, LAYER_INDEXES_DIR] {
            report.bytes += remove_notes(&self.dir.join(dir), |path| {
                path.file_name().and_then(|n| n.to_str()).is_some_and(|n| remaining.contains(n))
            })?;
        }
        report.bytes += remove_notes(&self.dir.join(REMOTE_FILES_DIR), |path| {
            RemoteFileNote::load(path).is_some_and(|note| remaining.contains(&note.digest.hex()))
        })?;
        if policy.all {
            for name in CACHE_DIRS {
                report.bytes += empty_dir(&self.dir.join(name))?;
            }
        }
        Ok(report)
    }

    /// Removes memobuild's committed containerd snapshots not named in
    /// `keep`, connecting as a build does; nothing to do when no containerd
    /// was ever started here.
    pub async fn remove_snapshots(&self, address: Option<&Path>, keep: &HashSet<String>) -> Result<u64> {
        let none_used =
            address.is_none() && !Path::new(SYSTEM_SOCKET).exists() && !self.dir.join(PRIVATE_CONTAINERD_DIR).exists();
        if none_used {
            return Ok(0);
        }
        let containerd = Containerd::connect_or_start(address, &self.dir).await?;
        let removed = containerd.remove_committed_snapshots_except(keep).await;
        let stopped = containerd.shutdown().await;
        let removed = removed?;
        stopped?;
        Ok(removed)
    }

    /// The entries of an action-cache store, with what each reaches.
    async fn entries(&self, store: &FilesystemStore) -> Result<Vec<Entry>> {
        let mut input_roots = HashMap::new();
        let mut entries = Vec::new();
        for StoredBlob { digest, size, last_used } in store.list().await? {
            let (reaches, layers) = match size > MAX_ENTRY_BYTES {
                true => (None, None),
                false => {
                    let data = store.get_bytes(&digest).await?;
                    self.reach(&digest, data, &mut input_roots).await?
                }
            };
            entries.push(Entry { key: digest, size, last_used, reaches, layers });
        }
        Ok(entries)
    }

    /// What the entry stored under `action` reaches (`None` when `data` is
    /// not an ActionResult), and the layers of its step (`None` when its
    /// input root cannot be read).
    async fn reach(
        &self,
        action: &Digest,
        data: Bytes,
        input_roots: &mut HashMap<Digest, Vec<Digest>>,
    ) -> Result<(Option<Vec<Digest>>, Option<StepLayers>)> {
        let Ok(result) = ActionResult::decode(data) else { return Ok((None, None)) };
        let function = action.function();
        let mut trees = Vec::new();
        for dir in &result.output_directories {
            let Some(digest) = dir.tree_digest.as_ref().and_then(|d| Digest::from_proto(function, d).ok()) else {
                continue;
            };
            if let Some(tree) = self.small_blob(&digest).await?.and_then(|data| Tree::decode(data).ok()) {
                trees.push(tree);
            }
        }
        let Ok(mut reached) = output_digests(&result, &trees, action) else { return Ok((None, None)) };
        let mut layers = None;
        reached.push(*action);
        if let Some(found) = self.small_blob(action).await?.and_then(|data| Action::decode(data).ok()) {
            reached.extend(found.command_digest.and_then(|d| Digest::from_proto(function, &d).ok()));
            if let Some(root) = found.input_root_digest.and_then(|d| Digest::from_proto(function, &d).ok()) {
                let directory = self.small_blob(&root).await?.and_then(|data| Directory::decode(data).ok());
                layers = directory.map(|directory| StepLayers::of(&directory, &result));
                let tree = match input_roots.get(&root) {
                    Some(tree) => tree.clone(),
                    None => {
                        let tree = self.tree_blobs(root).await;
                        input_roots.insert(root, tree.clone());
                        tree
                    }
                };
                reached.extend(tree);
            }
        }
        reached.sort();
        reached.dedup();
        Ok((Some(reached), layers))
    }

    /// The directories and files of the tree under `root`, as far as they
    /// can be read.
    async fn tree_blobs(&self, root: Digest) -> Vec<Digest> {
        let directories = match walk_tree(&self.cas, root).await {
            Ok(directories) => directories,
            Err(e) => {
                if e.code() != tonic::Code::NotFound {
                    tracing::warn!(%root, error = %e, "cannot read an input tree; keeping only its root");
                }
                return vec![root];
            }
        };
        let mut blobs = vec![root];
        for directory in &directories {
            let children = directory.directories.iter().map(|d| d.digest.as_ref());
            let files = directory.files.iter().map(|f| f.digest.as_ref());
            for digest in children.chain(files).flatten() {
                blobs.extend(Digest::from_proto(root.function(), digest).ok());
            }
        }
        blobs
    }

    /// Whether the stored layer `blob` is a tar as is, not gzip or zstd
    /// (told by its first bytes); false when it is not stored.
    async fn is_uncompressed_tar(&self, blob: &Digest) -> Result<bool> {
        const GZIP: [u8; 2] = [0x1f, 0x8b];
        const ZSTD: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
        let head = match self.cas.get(blob, ByteRange::new(0, Some(4))).await {
            Ok(stream) => collect(stream).await?,
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(!head.is_empty() && !head.starts_with(&GZIP) && !head.starts_with(&ZSTD))
    }

    /// A CAS blob, `None` when absent or too large to be an Action or Tree.
    async fn small_blob(&self, digest: &Digest) -> Result<Option<Bytes>> {
        if digest.size() > MAX_ENTRY_BYTES {
            return Ok(None);
        }
        match self.cas.get_bytes(digest).await {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.code() == tonic::Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Removes the files in `dir` that `keep` does not take for notes of a
/// remaining blob; returns the bytes freed.
fn remove_notes(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<u64> {
    let mut freed = 0;
    for entry in read_dir(dir)? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        let path = entry.path();
        if !metadata.is_file() || keep(&path) {
            continue;
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        freed += metadata.len();
    }
    Ok(freed)
}

/// Removes everything inside `dir`; returns the bytes freed.
fn empty_dir(dir: &Path) -> Result<u64> {
    let mut freed = 0;
    for entry in read_dir(dir)? {
        let path = entry?.path();
        freed += disk_usage(&path);
        let removed = match path.symlink_metadata()?.is_dir() {
            true => std::fs::remove_dir_all(&path),
            false => std::fs::remove_file(&path),
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(freed)
}

/// The entries of `dir`; none when it does not exist.
fn read_dir(dir: &Path) -> Result<Vec<std::io::Result<std::fs::DirEntry>>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::from(e).context(format!("reading {}", dir.display()))),
    }
}

/// Bytes of the files under `path`, not following symlinks; best effort.
fn disk_usage(path: &Path) -> u64 {
    let Ok(metadata) = path.symlink_metadata() else { return 0 };
    if !metadata.is_dir() {
        return metadata.len();
    }
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries.flatten().map(|entry| disk_usage(&entry.path())).sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::build::local_state::{LocalState, StepSettings};
    use memobuild_engine::{StepAction, StepSpec};
    use memobuild_frontend::StepDefinition;
    use memobuild_oci::Layer;
    use memobuild_proto::DigestFunction;

    const HOUR: Duration = Duration::from_secs(3600);
    /// ADDed URLs whose file is the base layer (kept) and the orphan (pruned).
    const KEPT_URL: &str = "https://example.com/kept";
    const GONE_URL: &str = "https://example.com/gone";

    fn digest(name: &str) -> Digest {
        Digest::of(DigestFunction::Sha256, name.as_bytes())
    }

    fn entry(name: &str, age: Duration, now: SystemTime, reaches: Option<&[&str]>) -> Entry {
        let reaches = reaches.map(|names| names.iter().map(|n| digest(n)).collect());
        Entry { key: digest(name), size: 1, last_used: now - age, reaches, layers: None }
    }

    #[test]
    fn the_policy_picks_entries_by_last_use_and_by_what_they_reach() {
        let now = SystemTime::now();
        // Oldest first; b and c are shared by neighbours, u is unreadable.
        let entries = [
            entry("u", Duration::ZERO, now, None),
            entry("new", HOUR / 2, now, Some(&["c", "d"])),
            entry("old", 3 * HOUR, now, Some(&["a", "b"])),
            entry("mid", 2 * HOUR, now, Some(&["b", "c"])),
        ];
        let sizes: HashMap<Digest, u64> =
            [("a", 100), ("b", 10), ("c", 10), ("d", 100)].iter().map(|(n, s)| (digest(n), *s)).collect();
        let pick = |policy: PrunePolicy| entries_to_drop(&entries, &sizes, &policy, now);
        let policy = |all, unused_for, keep_storage| PrunePolicy { all, unused_for, keep_storage };

        assert_eq!(pick(policy(false, None, None)), vec![0], "only the unreadable entry goes by default");
        assert_eq!(pick(policy(true, None, None)), vec![0, 1, 2, 3]);
        assert_eq!(pick(policy(false, Some(HOUR), None)), vec![0, 2, 3]);
        assert_eq!(pick(policy(false, Some(4 * HOUR), None)), vec![0]);
        // 220 bytes reached; dropping "old" frees only a (b is still reached).
        assert_eq!(pick(policy(false, None, Some(120))), vec![0, 2]);
        assert_eq!(pick(policy(false, None, Some(119))), vec![0, 2, 3]);
        assert_eq!(pick(policy(false, None, Some(220))), vec![0]);
        assert_eq!(pick(policy(false, None, Some(0))), vec![0, 2, 3, 1]);
        assert_eq!(pick(policy(false, Some(HOUR), Some(0))), vec![0, 2, 3], "recent entries stay");
    }

    /// A state dir as builds leave it: two chained steps on a base layer,
    /// plus a blob nothing reaches and notes of blobs.
    struct Fixture {
        dir: tempfile::TempDir,
        base: Digest,
        steps: Vec<(StepAction, Digest)>,
        orphan: Digest,
    }

    async fn put(state: &LocalState, data: impl AsRef<[u8]>) -> Digest {
        let data = Bytes::copy_from_slice(data.as_ref());
        let digest = Digest::of(DigestFunction::Sha256, &data);
        state.stores.cas.put_bytes(&digest, data).await.unwrap();
        digest
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let state = LocalState::open(dir.path(), &StepSettings::default()).await.unwrap();
        // Pulled compressed (gzip's magic first): its diff id is in the memo.
        let base = put(&state, b"\x1f\x8b base layer").await;
        let mut parent = vec![Layer::uncompressed(base)];
        let mut steps = Vec::new();
        for n in 1..=2 {
            let layer = put(&state, &format!("layer of step {n}")).await;
            let spec = StepSpec {
                definition: StepDefinition::Workdir { path: format!("/step-{n}"), user: None },
                parent: parent.clone(),
                sources: Vec::new(),
                source_date_epoch: None,
                egress: false,
                file_capabilities: false,
            };
            let action = StepAction::of_step(&spec, Vec::new(), Vec::new());
            let stores = &state.stores;
            let result = memobuild_engine::layer_result(Some(&Layer::uncompressed(layer)));
            action.record(&*stores.cas, &*stores.actions, "", &result).await.unwrap();
            parent.push(Layer::uncompressed(layer));
            steps.push((action, layer));
        }
        let orphan = put(&state, "a pulled image config").await;
        let notes = [(DIFF_IDS_DIR, orphan), (DIFF_IDS_DIR, base), (REMOTE_FILES_DIR, digest("gone"))];
        for (name, digest) in notes {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join(digest.hex()), "note").unwrap();
        }
        for (url, digest) in [(KEPT_URL, base), (GONE_URL, orphan)] {
            let note = RemoteFileNote { digest, mtime: None, etag: Some("\"e\"".into()), last_modified: None };
            note.save(&RemoteFileNote::url_path(&state.stores.remote_files_dir, url)).unwrap();
            note.save(&RemoteFileNote::content_path(&state.stores.remote_files_dir, &digest.hex())).unwrap();
        }
        Fixture { dir, base, steps, orphan }
    }

    impl Fixture {
        async fn prune(&self, policy: PrunePolicy, now: SystemTime) -> PruneReport {
            Pruner::open(self.dir.path()).await.unwrap().unwrap().prune(&policy, now).await.unwrap()
        }

        /// The layer of each step on a lookup, as the next build sees it.
        async fn hits(&self) -> Vec<Option<Digest>> {
            let state = LocalState::open(self.dir.path(), &StepSettings::default()).await.unwrap();
            let mut hits = Vec::new();
            for (action, _) in &self.steps {
                hits.push(
                    action
                        .lookup(&*state.stores.actions, "")
                        .await
                        .unwrap()
                        .and_then(|hit| hit.layer)
                        .map(|layer| layer.blob),
                );
            }
            hits
        }

        async fn blobs(&self) -> HashSet<Digest> {
            let cas = FilesystemStore::open_shared(self.dir.path().join(CAS_DIR), false).await.unwrap();
            cas.list().await.unwrap().into_iter().map(|b| b.digest).collect()
        }

        fn has(&self, dir: &str, digest: &Digest) -> bool {
            self.dir.path().join(dir).join(digest.hex()).exists()
        }

        /// Whether the ADD notes of `url` and of its content `digest` are there.
        fn has_add_notes(&self, url: &str, digest: &Digest) -> (bool, bool) {
            let dir = self.dir.path().join(REMOTE_FILES_DIR);
            let content = RemoteFileNote::content_path(&dir, &digest.hex());
            (RemoteFileNote::url_path(&dir, url).exists(), content.exists())
        }
    }

    #[tokio::test]
    async fn by_default_only_what_no_entry_reaches_goes() {
        let f = fixture().await;
        let layers: Vec<Option<Digest>> = f.steps.iter().map(|(_, layer)| Some(*layer)).collect();
        let report = f.prune(PrunePolicy::default(), SystemTime::now()).await;
        assert_eq!((report.entries, report.blobs), (0, 1), "{report:?}");
        assert_eq!(report.removed, vec![format!("blob {} (21 B)", f.orphan)]);
        assert_eq!(f.hits().await, layers, "both steps still hit");
        let blobs = f.blobs().await;
        assert!(blobs.contains(&f.base) && !blobs.contains(&f.orphan));
        assert!(f.has(DIFF_IDS_DIR, &f.base), "the note of a kept blob stays");
        assert!(!f.has(DIFF_IDS_DIR, &f.orphan) && !f.has(REMOTE_FILES_DIR, &digest("gone")));
        assert_eq!(f.has_add_notes(KEPT_URL, &f.base), (true, true), "the ADD notes of a kept blob stay");
        assert_eq!(f.has_add_notes(GONE_URL, &f.orphan), (false, false), "the ADD notes of a removed blob go");
    }

    #[tokio::test]
    async fn the_entries_of_a_server_on_the_same_state_dir_keep_their_blobs() {
        use memobuild_cas::{ActionCache, ActionResults};
        use memobuild_proto::reapi::OutputFile;
        let f = fixture().await;
        {
            let state = LocalState::open(f.dir.path(), &StepSettings::default()).await.unwrap();
            let results =
                FilesystemStore::open_shared(f.dir.path().join(SERVER_ACTION_CACHE_DIR), false).await.unwrap();
            let server = ActionCache::new(std::sync::Arc::new(results), state.stores.cas.clone());
            let output = OutputFile { path: "out".into(), digest: Some(f.orphan.to_proto()), ..OutputFile::default() };
            let result = ActionResult { output_files: vec![output], ..ActionResult::default() };
            server.update("bazel", &digest("a bazel action"), &result).await.unwrap();
        }
        let report = f.prune(PrunePolicy { all: true, ..PrunePolicy::default() }, SystemTime::now()).await;
        assert_eq!((report.entries, report.blobs), (2, 10), "{report:?}");
        assert_eq!(f.blobs().await, HashSet::from([f.orphan]));
    }

    #[tokio::test]
    async fn entries_unused_for_the_duration_go_with_everything_they_alone_reach() {
        let f = fixture().await;
        let until = PrunePolicy { unused_for: Some(HOUR), ..PrunePolicy::default() };
        let report = f.prune(until.clone(), SystemTime::now()).await;
        assert_eq!((report.entries, report.blobs), (0, 1), "only the orphan goes: {report:?}");
        assert_eq!(f.hits().await.iter().flatten().count(), 2);
        let report = f.prune(until, SystemTime::now() + 2 * HOUR).await;
        assert_eq!((report.entries, report.blobs), (2, 10), "{report:?}");
        assert_eq!(f.hits().await, vec![None, None]);
        assert!(f.blobs().await.is_empty());
    }

    #[tokio::test]
    async fn all_empties_the_stores_and_the_caches() {
        let f = fixture().await;
        for dir in [CACHE_MOUNTS_DIR, STAT_CACHE_DIR, RECORDS_DIR] {
            std::fs::create_dir_all(f.dir.path().join(dir).join("sub")).unwrap();
            std::fs::write(f.dir.path().join(dir).join("sub/file"), "0123456789").unwrap();
        }
        let report = f.prune(PrunePolicy { all: true, ..PrunePolicy::default() }, SystemTime::now()).await;
        assert_eq!((report.entries, report.blobs), (2, 11), "{report:?}");
        assert!(report.bytes > 30, "{report:?}");
        assert!(report.summary().starts_with("reclaimed "), "{}", report.summary());
        assert!(f.blobs().await.is_empty());
        for dir in CACHE_DIRS {
            let left = read_dir(&f.dir.path().join(dir)).unwrap();
            assert!(left.is_empty(), "{dir} is not empty");
        }
        assert_eq!(f.hits().await, vec![None, None]);
    }

    #[test]
    fn the_live_chains_are_every_prefix_of_each_remaining_steps_layers() {
        let (base, one, two) = (digest("base.tar.gz"), digest("one"), digest("two"));
        let base_diff = digest("base.tar");
        let diff_id = |blob: &Digest| match *blob == base {
            true => Some(base_diff),
            false => [one, two].contains(blob).then_some(*blob),
        };
        let steps = [
            StepLayers { parent: vec![base], output: Some(one) },
            StepLayers { parent: vec![base, one], output: Some(two) },
            StepLayers { parent: vec![base, one, two], output: None },
        ];
        let stack =
            |blobs: &[Digest]| Layer::chain_ids(&blobs.iter().map(|d| Layer::uncompressed(*d)).collect::<Vec<_>>());
        let all: HashSet<String> = stack(&[base_diff, one, two]).into_iter().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(live_chains(&steps, diff_id), Some(all.clone()));
        assert_eq!(live_chains(&steps[..1], diff_id), Some(stack(&[base_diff, one]).into_iter().collect()));
        assert!(!live_chains(&steps[..1], diff_id).unwrap().contains(&stack(&[base, one])[1]), "by diff id, not blob");
        assert_eq!(live_chains(&[], diff_id), Some(HashSet::new()));
        let unknown = StepLayers { parent: vec![digest("a layer nobody knows")], output: Some(one) };
        assert_eq!(live_chains(steps.iter().chain([&unknown]), diff_id), None, "an unknown diff id keeps everything");
    }

    #[tokio::test]
    async fn the_remaining_steps_name_their_snapshots() {
        let f = fixture().await;
        let base_diff = digest("the base layer, uncompressed");
        DirectoryDiffIdMemo::new(f.dir.path().join(DIFF_IDS_DIR)).put(&f.base, &base_diff);
        let layers = [base_diff, f.steps[0].1, f.steps[1].1].map(Layer::uncompressed);
        let report = f.prune(PrunePolicy::default(), SystemTime::now()).await;
        assert_eq!(report.live_chains, Some(Layer::chain_ids(&layers).into_iter().collect()));
        let until = PrunePolicy { unused_for: Some(HOUR), ..PrunePolicy::default() };
        let report = f.prune(until, SystemTime::now() + 2 * HOUR).await;
        assert_eq!(report.live_chains, Some(HashSet::new()), "no step remains: {report:?}");
    }

    #[tokio::test]
    async fn a_base_layer_of_unknown_diff_id_keeps_every_snapshot() {
        let f = fixture().await;
        std::fs::remove_file(f.dir.path().join(DIFF_IDS_DIR).join(f.base.hex())).unwrap();
        let report = f.prune(PrunePolicy::default(), SystemTime::now()).await;
        assert_eq!(report.live_chains, None, "{report:?}");
    }

    #[tokio::test]
    async fn a_base_layer_pulled_uncompressed_is_its_own_diff_id() {
        let f = fixture().await;
        let state = LocalState::open(f.dir.path(), &StepSettings::default()).await.unwrap();
        let plain = put(&state, "a tar, as is").await;
        drop(state);
        let pruner = Pruner::open(f.dir.path()).await.unwrap().unwrap();
        assert!(pruner.is_uncompressed_tar(&plain).await.unwrap());
        assert!(!pruner.is_uncompressed_tar(&f.base).await.unwrap(), "gzip");
        assert!(!pruner.is_uncompressed_tar(&digest("not stored")).await.unwrap());
    }

    #[tokio::test]
    async fn a_build_holding_the_state_dir_keeps_prune_out() {
        let f = fixture().await;
        let build = LocalState::open(f.dir.path(), &StepSettings::default()).await.unwrap();
        let e = Pruner::open(f.dir.path()).await.err().unwrap();
        assert!(e.message().contains("a build is using the state dir"), "{e}");
        assert!(e.message().contains(&f.dir.path().display().to_string()), "{e}");
        drop(build);
        assert_eq!(f.blobs().await.len(), 11, "nothing was removed");
        assert!(Pruner::open(f.dir.path()).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn no_state_dir_is_nothing_to_prune() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Pruner::open(&dir.path().join("never-built")).await.unwrap().is_none());
        assert!(!dir.path().join("never-built").exists());
    }

    #[test]
    fn filters_as_docker_writes_them() {
        assert_eq!(parse_filter("until=24h"), Ok(24 * HOUR));
        assert_eq!(parse_filter("until=30m"), Ok(HOUR / 2));
        assert!(parse_filter("label=x").unwrap_err().contains("only until=DURATION"));
        assert!(parse_filter("until=soon").is_err());
    }
}
