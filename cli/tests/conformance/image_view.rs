//! What a user sees of a built image, normalized so two builders' images
//! compare: the merged filesystem of its layers (whiteouts applied) minus
//! what its base image already had, and the config fields that matter.
//! Reads an OCI image layout (MemoBuild's `-o type=oci,tar=false`) or an
//! unpacked `docker save` archive.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The config fields compared (from the image config's `config` object).
pub const CONFIG_FIELDS: [&str; 12] = [
    "Env",
    "Cmd",
    "Entrypoint",
    "User",
    "WorkingDir",
    "ExposedPorts",
    "Volumes",
    "Labels",
    "StopSignal",
    "Healthcheck",
    "Shell",
    "OnBuild",
];

/// One built image, normalized.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageView {
    /// The base image the first layers are (by diff id), `none` otherwise.
    pub base: String,
    pub config: BTreeMap<String, Value>,
    /// Paths added or changed on top of the base: one line each.
    pub files: BTreeMap<String, String>,
    /// Base paths the image no longer has.
    pub removed: BTreeSet<String>,
}

/// A layer's files as its tar has them.
#[derive(Clone, Debug, PartialEq)]
struct Node {
    kind: String,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    digest: String,
    target: String,
    xattrs: BTreeMap<String, String>,
    /// For a hard link: the path it links to (the group's first member).
    link_of: Option<String>,
}

/// The merged filesystem of some layers.
#[derive(Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

/// Config and layer files of an image in `dir`.
pub struct ImageFiles {
    pub config: Value,
    pub layers: Vec<std::path::PathBuf>,
}

impl ImageFiles {
    pub fn read(dir: &Path) -> ImageFiles {
        if dir.join("manifest.json").is_file() {
            let manifest: Value = read_json(&dir.join("manifest.json"));
            let entry = &manifest[0];
            let config = read_json(&dir.join(entry["Config"].as_str().unwrap()));
            let layers = entry["Layers"].as_array().unwrap().iter().map(|l| dir.join(l.as_str().unwrap())).collect();
            return ImageFiles { config, layers };
        }
        ImageFiles::read_tag(dir, None)
    }

    /// The image of an OCI layout tagged `tag` (the first one if `None`).
    pub fn read_tag(dir: &Path, tag: Option<&str>) -> ImageFiles {
        let index: Value = read_json(&dir.join("index.json"));
        let manifests = index["manifests"].as_array().unwrap();
        let chosen = manifests
            .iter()
            .find(|m| tag.is_none_or(|t| m["annotations"]["org.opencontainers.image.ref.name"] == t))
            .unwrap_or_else(|| panic!("{}: no image tagged {tag:?}", dir.display()));
        let mut manifest = read_json(&blob(dir, chosen));
        // An index of one platform: follow it to the manifest.
        while manifest.get("manifests").is_some() {
            manifest = read_json(&blob(dir, &manifest["manifests"][0]));
        }
        let config = read_json(&blob(dir, &manifest["config"]));
        let layers = manifest["layers"].as_array().unwrap().iter().map(|l| blob(dir, l)).collect();
        ImageFiles { config, layers }
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.config["rootfs"]["diff_ids"]
            .as_array()
            .map(|ids| ids.iter().filter_map(|d| d.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    pub fn tree(&self) -> Tree {
        let mut tree = Tree::default();
        for layer in &self.layers {
            tree.apply(layer);
        }
        tree
    }
}

fn blob(dir: &Path, descriptor: &Value) -> std::path::PathBuf {
    let digest = descriptor["digest"].as_str().unwrap();
    let (algorithm, hex) = digest.split_once(':').unwrap();
    dir.join("blobs").join(algorithm).join(hex)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// A layer blob, decompressed by what its first bytes say.
fn layer_reader(path: &Path) -> Box<dyn Read> {
    let mut head = [0u8; 4];
    let mut file = std::fs::File::open(path).unwrap();
    let n = file.read(&mut head).unwrap();
    let file = std::fs::File::open(path).unwrap();
    match &head[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(file)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::new(file).unwrap()),
        _ => Box::new(file),
    }
}

/// `./a/b/` -> `/a/b`.
fn clean(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    format!("/{}", parts.join("/"))
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn is_below(path: &str, dir: &str) -> bool {
    dir == "/" && path != "/" || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

impl Tree {
    fn remove_below(&mut self, dir: &str, with_dir: bool) {
        let doomed: Vec<String> =
            self.nodes.keys().filter(|p| is_below(p, dir) || with_dir && p.as_str() == dir).cloned().collect();
        for path in doomed {
            self.nodes.remove(&path);
        }
    }

    /// Applies one layer: its whiteouts to the layers below, then its entries.
    fn apply(&mut self, layer: &Path) {
        let mut archive = tar::Archive::new(layer_reader(layer));
        let mut added: Vec<(String, Node)> = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = clean(&entry.path().unwrap().to_string_lossy());
            let name = path.rsplit('/').next().unwrap_or("").to_string();
            if name == ".wh..wh..opq" {
                self.remove_below(parent_of(&path), false);
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                let parent = parent_of(&path);
                let victim = if parent == "/" { format!("/{hidden}") } else { format!("{parent}/{hidden}") };
                self.remove_below(&victim, true);
                continue;
            }
            let header = entry.header().clone();
            let mut xattrs = BTreeMap::new();
            if let Ok(Some(pax)) = entry.pax_extensions() {
                for ext in pax.flatten() {
                    if let (Some(key), Ok(value)) =
                        (ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")), ext.value())
                    {
                        xattrs.insert(key.to_string(), value.to_string());
                    }
                }
            }
            let kind = header.entry_type();
            let mut node = Node {
                kind: String::new(),
                mode: header.mode().unwrap_or(0) & 0o7777,
                uid: header.uid().unwrap_or(0),
                gid: header.gid().unwrap_or(0),
                size: 0,
                digest: String::new(),
                target: String::new(),
                xattrs,
                link_of: None,
            };
            if kind.is_dir() {
                node.kind = "dir".into();
            } else if kind.is_symlink() {
                node.kind = "symlink".into();
                node.mode = 0o777;
                node.target = entry.link_name().unwrap().map(|l| l.to_string_lossy().to_string()).unwrap_or_default();
            } else if kind.is_hard_link() {
                let target = clean(&entry.link_name().unwrap().unwrap().to_string_lossy());
                let linked = added
                    .iter()
                    .rev()
                    .find(|(p, _)| *p == target)
                    .map(|(_, n)| n.clone())
                    .or_else(|| self.nodes.get(&target).cloned())
                    .unwrap_or_else(|| panic!("{}: hard link {path} to missing {target}", layer.display()));
                let first = linked.link_of.clone().unwrap_or(target);
                node = Node { link_of: Some(first), ..linked };
            } else if kind.is_file() {
                let mut content = Vec::new();
                entry.read_to_end(&mut content).unwrap();
                node.kind = "file".into();
                node.size = content.len() as u64;
                node.digest = hex::encode(Sha256::digest(&content));
            } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
                node.kind = format!(
                    "{:?}({},{})",
                    kind,
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0)
                )
                .to_lowercase();
            } else {
                continue;
            }
            added.push((path, node));
        }
        for (path, node) in added {
            // A non-directory replaces whatever was there, with its contents.
            if node.kind != "dir" {
                self.remove_below(&path, true);
            }
            self.nodes.insert(path, node);
        }
    }

    /// Each path as one line: kind, mode, owner, then what the kind has.
    fn lines(&self) -> BTreeMap<String, String> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (path, node) in &self.nodes {
            if let Some(first) = &node.link_of {
                groups.entry(first.clone()).or_insert_with(|| vec![first.clone()]).push(path.clone());
            }
        }
        let mut group_of: BTreeMap<&str, String> = BTreeMap::new();
        for members in groups.values() {
            let mut sorted: Vec<&String> = members.iter().filter(|m| self.nodes.contains_key(*m)).collect();
            sorted.sort();
            sorted.dedup();
            if sorted.len() > 1 {
                let joined = sorted.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
                for m in &sorted {
                    group_of.insert(m.as_str(), joined.clone());
                }
            }
        }
        self.nodes
            .iter()
            .filter(|(path, _)| path.as_str() != "/")
            .map(|(path, n)| {
                let mut line = format!("{} {:04o} {}:{}", n.kind, n.mode, n.uid, n.gid);
                match n.kind.as_str() {
                    "file" => line.push_str(&format!(" size={} sha256={}", n.size, &n.digest[..16])),
                    "symlink" => line.push_str(&format!(" -> {}", n.target)),
                    _ => {}
                }
                for (k, v) in &n.xattrs {
                    line.push_str(&format!(" xattr:{k}={v:?}"));
                }
                if let Some(group) = group_of.get(path.as_str()) {
                    line.push_str(&format!(" hardlinks={group}"));
                }
                (path.clone(), line)
            })
            .collect()
    }
}

/// A base image's diff ids and files, to take away from a built image.
pub struct BaseImage {
    pub name: String,
    pub diff_ids: Vec<String>,
    pub files: BTreeMap<String, String>,
}

impl BaseImage {
    pub fn read(name: &str, layout: &Path) -> BaseImage {
        let image = ImageFiles::read_tag(layout, Some(name));
        BaseImage { name: name.to_string(), diff_ids: image.diff_ids(), files: image.tree().lines() }
    }
}

impl ImageView {
    /// Normalizes the image in `dir` (OCI layout or unpacked docker save).
    pub fn read(dir: &Path, bases: &[BaseImage]) -> ImageView {
        let image = ImageFiles::read(dir);
        let diff_ids = image.diff_ids();
        let files = image.tree().lines();
        let base = bases
            .iter()
            .filter(|b| !b.diff_ids.is_empty() && diff_ids.starts_with(&b.diff_ids))
            .max_by_key(|b| b.diff_ids.len());
        let (base_name, base_files) = match base {
            Some(b) => (b.name.clone(), b.files.clone()),
            None => ("none".to_string(), BTreeMap::new()),
        };
        let removed = base_files.keys().filter(|p| !files.contains_key(*p)).cloned().collect();
        let files = files.into_iter().filter(|(p, line)| base_files.get(p) != Some(line)).collect();
        ImageView { base: base_name, config: config_fields(&image.config), files, removed }
    }
}

/// The compared config fields; absent, null and empty are the same.
fn config_fields(config: &Value) -> BTreeMap<String, Value> {
    let inner = &config["config"];
    CONFIG_FIELDS
        .iter()
        .filter_map(|field| {
            let value = inner.get(*field)?;
            let empty = match value {
                Value::Null => true,
                Value::String(s) => s.is_empty(),
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                _ => false,
            };
            (!empty).then(|| (field.to_string(), value.clone()))
        })
        .collect()
}
