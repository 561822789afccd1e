//! A build context as REAPI `Directory` Merkle trees, with a path index so
//! COPY/ADD sources can be looked up and digested.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use memobuild_proto::{protobuf, reapi, Digest, DigestFunction, DigestHasher, Error, Result};
use prost::Message;

use crate::{clean_path, ContextScope, DockerIgnore, IgnorePattern};

/// One path of the context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContextEntry {
    File { digest: Digest, mode: u32 },
    Symlink { target: String },
    Directory { digest: Digest, mode: u32 },
}

/// The content of one path, before directory digests are known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContextNode {
    File { digest: Digest, mode: u32 },
    Symlink { target: String },
    Directory { mode: u32 },
}

/// The build context: the root tree, every `Directory` message in it, and
/// an index from relative path (`""` is the root) to entry.
#[derive(Clone, Debug)]
pub struct BuildContext {
    root: Digest,
    directories: BTreeMap<Digest, reapi::Directory>,
    entries: BTreeMap<String, ContextEntry>,
    /// Files that are hard links of one another: each member of a group
    /// (two or more files) to the group's first path.
    hardlinks: BTreeMap<String, String>,
    /// What of the context directory was read.
    scope: ContextScope,
    /// The first path a lookup wanted from outside `scope`.
    outside: OnceLock<String>,
}

const DIR_MODE: u32 = 0o755;
/// The node property of a context file that is one of several hard links
/// of one file: its value is the first path of the group (relative to the
/// context root). COPY keeps such files linked, as BuildKit does.
pub const HARDLINK_PROPERTY: &str = "memobuild.hardlink";
/// The most entries a context rebuilt from a tree may hold.
const MAX_TREE_ENTRIES: usize = 1_000_000;

impl BuildContext {
    /// Builds the trees from relative paths (`/`-separated, no `.`/`..`)
    /// and their content. Missing parent directories are added (mode 0755).
    pub fn from_nodes(nodes: BTreeMap<String, ContextNode>) -> Result<Self> {
        Self::from_linked_nodes(nodes, BTreeMap::new())
    }

    /// Like [`BuildContext::from_nodes`], with files that are hard links of
    /// one another: each member of a group to the group's first path (the
    /// first path to itself). Members must be files of the same content and
    /// mode; a group of one is no group.
    pub fn from_linked_nodes(
        nodes: BTreeMap<String, ContextNode>,
        hardlinks: BTreeMap<String, String>,
    ) -> Result<Self> {
        let hardlinks = checked_hardlinks(&nodes, hardlinks)?;
        let mut nodes = nodes;
        let paths: Vec<String> = nodes.keys().cloned().collect();
        for path in paths.into_iter().filter(|p| !p.is_empty()) {
            if path.starts_with('/') || clean_path(&path) != path {
                return Err(Error::invalid_argument(format!("context path {path:?} is not a clean relative path")));
            }
            let mut parent = parent_of(&path);
            while let Some(p) = parent {
                nodes.entry(p.to_string()).or_insert(ContextNode::Directory { mode: DIR_MODE });
                parent = parent_of(p);
            }
        }
        let root_mode = match nodes.remove("") {
            Some(ContextNode::Directory { mode }) => mode,
            _ => DIR_MODE,
        };
        // Children of each directory, keyed by name (sorted bytewise).
        let mut children: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        children.insert(String::new(), BTreeMap::new());
        for (path, node) in &nodes {
            let parent = parent_of(path).unwrap_or("");
            let name = path.rsplit('/').next().unwrap_or(path);
            children.entry(parent.to_string()).or_default().insert(name.to_string(), path.clone());
            if matches!(node, ContextNode::Directory { .. }) {
                children.entry(path.clone()).or_default();
            }
        }
        let mut directories = BTreeMap::new();
        let mut entries: BTreeMap<String, ContextEntry> = BTreeMap::new();
        // Deepest directories first, so children digests are known.
        let mut dirs: Vec<&String> = children.keys().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(depth(d)));
        for dir in dirs {
            let mut message = reapi::Directory {
                node_properties: Some(mode_properties(if dir.is_empty() {
                    root_mode
                } else {
                    match nodes.get(dir.as_str()) {
                        Some(ContextNode::Directory { mode }) => *mode,
                        _ => DIR_MODE,
                    }
                })),
                ..Default::default()
            };
            for (name, path) in &children[dir] {
                match &nodes[path] {
                    ContextNode::File { digest, mode } => {
                        let mut properties = mode_properties(*mode);
                        if let Some(first) = hardlinks.get(path) {
                            properties
                                .properties
                                .push(reapi::NodeProperty { name: HARDLINK_PROPERTY.into(), value: first.clone() });
                        }
                        message.files.push(reapi::FileNode {
                            name: name.clone(),
                            digest: Some(digest.to_proto()),
                            is_executable: mode & 0o111 != 0,
                            node_properties: Some(properties),
                        });
                        entries.insert(path.clone(), ContextEntry::File { digest: *digest, mode: *mode });
                    }
                    ContextNode::Symlink { target } => {
                        message.symlinks.push(reapi::SymlinkNode {
                            name: name.clone(),
                            target: target.clone(),
                            node_properties: None,
                        });
                        entries.insert(path.clone(), ContextEntry::Symlink { target: target.clone() });
                    }
                    ContextNode::Directory { .. } => {
                        let Some(ContextEntry::Directory { digest, .. }) = entries.get(path) else {
                            return Err(Error::internal(format!("directory {path} not digested")));
                        };
                        message
                            .directories
                            .push(reapi::DirectoryNode { name: name.clone(), digest: Some(digest.to_proto()) });
                    }
                }
            }
            let digest = Digest::of(DigestFunction::Blake3, &message.encode_to_vec());
            let mode = match nodes.get(dir.as_str()) {
                Some(ContextNode::Directory { mode }) => *mode,
                _ => root_mode,
            };
            entries.insert(dir.clone(), ContextEntry::Directory { digest, mode });
            directories.insert(digest, message);
        }
        let root = match entries.get("") {
            Some(ContextEntry::Directory { digest, .. }) => *digest,
            _ => return Err(Error::internal("context root not digested")),
        };
        Ok(BuildContext { root, directories, entries, hardlinks, scope: ContextScope::Whole, outside: OnceLock::new() })
    }

    /// Rebuilds a context from its root digest and `Directory` messages (as a
    /// client uploads them to the CAS). Names must be single path
    /// components; the digests are recomputed, so a tree that does not hash
    /// to `root` is refused.
    pub fn from_tree(root: &Digest, directories: &BTreeMap<Digest, reapi::Directory>) -> Result<Self> {
        let mut nodes = BTreeMap::new();
        let mut hardlinks = BTreeMap::new();
        let mut pending = vec![(String::new(), *root)];
        while let Some((path, digest)) = pending.pop() {
            let directory = directories
                .get(&digest)
                .ok_or_else(|| Error::not_found(format!("context directory {} is missing", digest.subject())))?;
            if nodes.len() > MAX_TREE_ENTRIES {
                return Err(Error::invalid_argument(format!(
                    "the build context has more than {MAX_TREE_ENTRIES} entries"
                )));
            }
            nodes
                .insert(path.clone(), ContextNode::Directory { mode: unix_mode(&directory.node_properties, DIR_MODE) });
            let child = |name: &str| -> Result<String> {
                if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
                    return Err(Error::invalid_argument(format!(
                        "context entry {name:?} in {path:?} is not a file name"
                    )));
                }
                Ok(if path.is_empty() { name.to_string() } else { format!("{path}/{name}") })
            };
            for file in &directory.files {
                let digest = Digest::from_proto_field(root.function(), file.digest.as_ref(), "context file digest")?;
                let mode = unix_mode(&file.node_properties, if file.is_executable { 0o755 } else { 0o644 });
                let path = child(&file.name)?;
                let first =
                    file.node_properties.iter().flat_map(|p| &p.properties).find(|p| p.name == HARDLINK_PROPERTY);
                if let Some(first) = first {
                    hardlinks.insert(path.clone(), first.value.clone());
                }
                nodes.insert(path, ContextNode::File { digest, mode });
            }
            for link in &directory.symlinks {
                nodes.insert(child(&link.name)?, ContextNode::Symlink { target: link.target.clone() });
            }
            for dir in &directory.directories {
                let digest =
                    Digest::from_proto_field(root.function(), dir.digest.as_ref(), "context directory digest")?;
                pending.push((child(&dir.name)?, digest));
            }
        }
        let context = Self::from_linked_nodes(nodes, hardlinks)?;
        if context.root != *root {
            return Err(Error::invalid_argument(format!(
                "the build context tree does not hash to its root {}",
                root.subject()
            )));
        }
        Ok(context)
    }

    /// An empty context.
    pub fn empty() -> Self {
        // An empty node map always builds.
        Self::from_nodes(BTreeMap::new()).unwrap_or_else(|_| BuildContext {
            root: Digest::empty(DigestFunction::Blake3),
            directories: BTreeMap::new(),
            entries: BTreeMap::new(),
            hardlinks: BTreeMap::new(),
            scope: ContextScope::Whole,
            outside: OnceLock::new(),
        })
    }

    /// The same context, saying that it holds only `scope` of its
    /// directory: a lookup outside it finds nothing and is remembered.
    pub fn with_scope(mut self, scope: ContextScope) -> Self {
        self.scope = scope;
        self
    }

    pub fn scope(&self) -> &ContextScope {
        &self.scope
    }

    /// The first path a lookup wanted from outside the scope: what was
    /// planned with this context must be planned again with all of it.
    pub fn outside_scope(&self) -> Option<&str> {
        self.outside.get().map(String::as_str)
    }

    /// Whether the scope has what a lookup needs of `path`; if not, `path`
    /// is remembered as wanted from outside the scope.
    fn in_scope(&self, path: &str, need: Need) -> bool {
        let known = match need {
            Need::Entry => self.scope.knows(path),
            Need::Everything => self.scope.holds(path),
            Need::Matches(element) => self.scope.lists(path, element),
        };
        if !known {
            let _ = self.outside.set(path.to_string());
        }
        known
    }

    /// The digest of the root `Directory`.
    pub fn root_digest(&self) -> Digest {
        self.root
    }

    /// Every `Directory` message of the tree, by digest.
    pub fn directories(&self) -> &BTreeMap<Digest, reapi::Directory> {
        &self.directories
    }

    /// The entry at a clean relative path (`""` for the root).
    pub fn entry(&self, path: &str) -> Option<&ContextEntry> {
        self.entries.get(path)
    }

    /// Every entry, by path.
    pub fn entries(&self) -> &BTreeMap<String, ContextEntry> {
        &self.entries
    }

    /// For a file that is one of several hard links of one file, the first
    /// path of its group (the same for every member).
    pub fn hardlink_group(&self, path: &str) -> Option<&str> {
        self.hardlinks.get(path).map(String::as_str)
    }

    /// Resolves a source path the way COPY reads it: relative to the
    /// context root (a leading `/` too), following symlinks inside the
    /// context. `Ok(None)` if it does not exist; an error if the path or a
    /// symlink on the way leads out of the context.
    pub fn resolve(&self, path: &str) -> std::result::Result<Option<String>, String> {
        let cleaned = clean_path(&format!("/{path}"));
        if clean_path(path).starts_with("..") {
            return Err(format!("{path:?} is outside the build context"));
        }
        let mut pending: Vec<String> = components(&cleaned);
        pending.reverse();
        let mut current: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(component) = pending.pop() {
            current.push(component);
            let joined = current.join("/");
            if !self.in_scope(&joined, Need::Entry) {
                return Ok(None);
            }
            match self.entries.get(&joined) {
                None => return Ok(None),
                Some(ContextEntry::File { .. }) if !pending.is_empty() => return Ok(None),
                Some(ContextEntry::Symlink { target }) => {
                    hops += 1;
                    if hops > 40 {
                        return Err(format!("too many levels of symlinks resolving {path:?}"));
                    }
                    if target.starts_with('/') {
                        return Err(format!(
                            "{path:?}: symlink {joined:?} points to the absolute path {target:?}, outside the build context"
                        ));
                    }
                    current.pop();
                    let base = current.join("/");
                    let next = clean_path(&join(&base, target));
                    let next = if next == "." { "" } else { next.as_str() };
                    if next == ".." || next.starts_with("../") {
                        return Err(format!(
                            "{path:?}: symlink {joined:?} -> {target:?} points outside the build context"
                        ));
                    }
                    current.clear();
                    let mut expanded = components(next);
                    expanded.reverse();
                    pending.extend(expanded);
                }
                Some(_) => {}
            }
        }
        Ok(Some(current.join("/")))
    }

    /// Expands a COPY source that may hold wildcards (`*`, `?`, `[...]`, per
    /// path element, as Go's filepath.Match) into matching context paths.
    pub fn glob(&self, pattern: &str) -> std::result::Result<Vec<String>, String> {
        let cleaned = clean_path(&format!("/{pattern}"));
        let mut found: BTreeSet<String> = BTreeSet::from([String::new()]);
        for component in components(&cleaned) {
            let mut next = BTreeSet::new();
            for base in &found {
                let dir = match self.resolve(base)? {
                    Some(d) => d,
                    None => continue,
                };
                if !has_wildcard(&component) {
                    next.insert(join(base, &component));
                    continue;
                }
                if !self.in_scope(&dir, Need::Matches(&component)) {
                    continue;
                }
                let matcher = IgnorePattern::glob(&component)?;
                for name in self.children(&dir) {
                    if matcher.matches(name) {
                        next.insert(join(base, name));
                    }
                }
            }
            found = next;
        }
        Ok(found.into_iter().filter(|p| self.resolve(p).ok().flatten().is_some()).collect())
    }

    /// The names in directory `dir`.
    pub fn children<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        let len = prefix.len();
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .map(move |(p, _)| &p[len..])
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
    }

    /// A digest of what copying `path` (resolved) brings, leaving out what
    /// `exclude` matches: paths relative to `path`, or its name for a file;
    /// with `under` (`COPY --parents`), relative to where `path` lands.
    pub fn selection_digest(&self, path: &str, exclude: &DockerIgnore, under: Option<&str>) -> Option<Digest> {
        if !self.in_scope(path, Need::Everything) {
            return None;
        }
        let entry = self.entries.get(path)?;
        match entry {
            ContextEntry::Directory { digest, .. } if exclude.is_empty() => Some(*digest),
            ContextEntry::Directory { mode, .. } => {
                let mut hasher = DigestHasher::new(DigestFunction::Blake3);
                hasher.update(format!("dir {mode:o}\0").as_bytes());
                let prefix = if path.is_empty() { String::new() } else { format!("{path}/") };
                for (p, e) in self.entries.range(prefix.clone()..) {
                    let Some(rel) = p.strip_prefix(&prefix) else { break };
                    if rel.is_empty() || exclude.is_excluded(&join(under.unwrap_or_default(), rel)) {
                        continue;
                    }
                    hasher.update(rel.as_bytes());
                    hasher.update(describe(e).as_bytes());
                    if let Some(first) = self.hardlinks.get(p) {
                        hasher.update(format!("\0hardlink {first}\n").as_bytes());
                    }
                }
                Some(hasher.finish())
            }
            _ => {
                let name = under.unwrap_or_else(|| path.rsplit('/').next().unwrap_or(path));
                if exclude.is_excluded(name) {
                    return None;
                }
                let mut hasher = DigestHasher::new(DigestFunction::Blake3);
                hasher.update(describe(entry).as_bytes());
                Some(hasher.finish())
            }
        }
    }
}

/// The hard link groups of a context, checked: every member and every
/// group's first path is a file, members have their first path's content
/// and mode, and groups of one are dropped.
fn checked_hardlinks(
    nodes: &BTreeMap<String, ContextNode>,
    hardlinks: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
    for (path, first) in &hardlinks {
        let file = |p: &str| match nodes.get(p) {
            Some(ContextNode::File { digest, mode }) => Ok((*digest, *mode)),
            _ => Err(Error::invalid_argument(format!(
                "context hard link {path:?}: {p:?} is not a file of the build context"
            ))),
        };
        if file(path)? != file(first)? || hardlinks.get(first) != Some(first) {
            return Err(Error::invalid_argument(format!(
                "context hard link {path:?} -> {first:?}: not a group of the same file"
            )));
        }
        *sizes.entry(first.clone()).or_default() += 1;
    }
    Ok(hardlinks.into_iter().filter(|(_, first)| sizes.get(first).is_some_and(|n| *n > 1)).collect())
}

fn describe(entry: &ContextEntry) -> String {
    match entry {
        ContextEntry::File { digest, mode } => format!("\0file {mode:o} {digest}\n"),
        ContextEntry::Symlink { target } => format!("\0symlink {target}\n"),
        ContextEntry::Directory { mode, .. } => format!("\0dir {mode:o}\n"),
    }
}

fn mode_properties(mode: u32) -> reapi::NodeProperties {
    reapi::NodeProperties {
        properties: Vec::new(),
        mtime: None,
        unix_mode: Some(protobuf::UInt32Value { value: mode & 0o7777 }),
    }
}

fn unix_mode(properties: &Option<reapi::NodeProperties>, default: u32) -> u32 {
    properties.as_ref().and_then(|p| p.unix_mode.as_ref()).map(|m| m.value & 0o7777).unwrap_or(default)
}

fn parent_of(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    Some(path.rfind('/').map(|i| &path[..i]).unwrap_or(""))
}

fn depth(path: &str) -> usize {
    if path.is_empty() {
        0
    } else {
        path.matches('/').count() + 1
    }
}

fn components(path: &str) -> Vec<String> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_string).collect()
}

fn join(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

/// What a lookup needs of a context's scope.
enum Need<'a> {
    /// The path's own entry (or that there is none).
    Entry,
    /// The path with everything under it.
    Everything,
    /// The path's entries that this path element (a pattern) matches.
    Matches(&'a str),
}

/// Whether a path element holds Go filepath.Match wildcards.
pub fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '[', '\\'])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file(data: &[u8], mode: u32) -> ContextNode {
        ContextNode::File { digest: Digest::of(DigestFunction::Blake3, data), mode }
    }

    #[test]
    fn a_context_survives_the_trip_through_its_tree() {
        let nodes = BTreeMap::from([
            ("a.txt".to_string(), file(b"a", 0o644)),
            ("bin/run".to_string(), file(b"#!/bin/sh", 0o755)),
            ("bin/link".to_string(), ContextNode::Symlink { target: "run".into() }),
            ("empty".to_string(), ContextNode::Directory { mode: 0o700 }),
        ]);
        let context = BuildContext::from_nodes(nodes).unwrap();
        let rebuilt = BuildContext::from_tree(&context.root_digest(), context.directories()).unwrap();
        assert_eq!(rebuilt.entries(), context.entries());
        assert_eq!(rebuilt.root_digest(), context.root_digest());
    }

    #[test]
    fn a_tree_with_a_bad_name_or_a_missing_directory_is_refused() {
        let context = BuildContext::from_nodes(BTreeMap::from([("d/x".to_string(), file(b"x", 0o644))])).unwrap();
        let mut directories = context.directories().clone();
        let root = directories.get_mut(&context.root_digest()).unwrap();
        root.directories[0].name = "..".into();
        let error = BuildContext::from_tree(&context.root_digest(), &directories).unwrap_err();
        assert!(error.message().contains("not a file name"), "{}", error.message());

        let mut directories = context.directories().clone();
        directories.retain(|d, _| *d == context.root_digest());
        let error = BuildContext::from_tree(&context.root_digest(), &directories).unwrap_err();
        assert!(error.message().contains("is missing"), "{}", error.message());
    }
}
