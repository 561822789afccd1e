//! What each build did, kept per Dockerfile and target so `explain-cache`
//! can tell why a step missed: which file, which variable, which parent.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use memobuild_frontend::{BuildContext, ContextEntry, Origin, SourceDefinition, Step, StepDefinition};
use memobuild_oci::Layer;
use memobuild_proto::{Digest, DigestFunction, Result, ResultExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One filesystem step of a build.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    pub name: String,
    pub action: String,
    pub cached: bool,
    /// The parent filesystem's layers.
    pub parent: Vec<String>,
    pub definition: Value,
    /// Every context file the step reads, with its digest.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

impl StepRecord {
    pub fn new(
        step: &Step,
        name: &str,
        action: &Digest,
        parent: &[Layer],
        cached: bool,
        context: &BuildContext,
    ) -> Self {
        StepRecord {
            id: step.id.clone(),
            name: name.to_string(),
            action: action.to_string(),
            cached,
            parent: parent.iter().map(|l| l.blob.to_string()).collect(),
            definition: serde_json::to_value(&step.definition).unwrap_or(Value::Null),
            files: context_files(step, context),
        }
    }
}

/// The context files under every context path a COPY/ADD or bind mount reads.
fn context_files(step: &Step, context: &BuildContext) -> BTreeMap<String, String> {
    let roots: Vec<&str> = match &step.definition {
        StepDefinition::Copy { origin: Origin::Context, sources, .. } => sources
            .iter()
            .flat_map(|s| match s {
                SourceDefinition::Path { matches, .. } => matches.iter().map(|(p, _)| p.as_str()).collect(),
                _ => Vec::new(),
            })
            .collect(),
        StepDefinition::Run { mounts, .. } => mounts
            .iter()
            .filter(|m| m.origin == Some(Origin::Context))
            .filter_map(|m| m.mount.source.as_deref())
            .collect(),
        _ => Vec::new(),
    };
    let mut files = BTreeMap::new();
    for root in roots {
        let root = root.trim_matches('/');
        let prefix = if root.is_empty() { String::new() } else { format!("{root}/") };
        for (path, entry) in context.entries().range(root.to_string()..) {
            if path != root && !path.starts_with(&prefix) {
                break;
            }
            if let ContextEntry::File { digest, .. } = entry {
                files.insert(path.clone(), digest.hex());
            }
        }
    }
    files
}

/// One build of a Dockerfile and target.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BuildRecord {
    pub dockerfile: String,
    pub target: String,
    pub steps: Vec<StepRecord>,
}

impl BuildRecord {
    fn file(dir: &Path, dockerfile: &str, target: &str, generation: &str) -> PathBuf {
        let key = Digest::of(DigestFunction::Sha256, format!("{dockerfile}\n{target}").as_bytes());
        dir.join(format!("{}.{generation}.json", &key.hex()[..16]))
    }

    /// Saves this build as the latest; the one before becomes the previous.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let latest = Self::file(dir, &self.dockerfile, &self.target, "latest");
        if latest.exists() {
            std::fs::rename(&latest, Self::file(dir, &self.dockerfile, &self.target, "previous"))?;
        }
        let temp = latest.with_extension("tmp");
        std::fs::write(&temp, serde_json::to_vec_pretty(self).unwrap_or_default())?;
        std::fs::rename(&temp, &latest).with_context(|| format!("saving build record {}", latest.display()))
    }

    /// The latest and the previous build of `dockerfile` and `target`.
    pub fn load(dir: &Path, dockerfile: &str, target: &str) -> (Option<BuildRecord>, Option<BuildRecord>) {
        let read = |generation: &str| {
            let data = std::fs::read(Self::file(dir, dockerfile, target, generation)).ok()?;
            serde_json::from_slice(&data).ok()
        };
        (read("latest"), read("previous"))
    }
}

/// Explains, for each step of `latest` that was not a cache hit, what
/// changed since `previous`.
pub fn explain(latest: &BuildRecord, previous: Option<&BuildRecord>) -> String {
    let mut out = String::new();
    let before: BTreeMap<&str, &StepRecord> =
        previous.map(|p| p.steps.iter().map(|s| (s.id.as_str(), s)).collect()).unwrap_or_default();
    let mut missed: Vec<&StepRecord> = Vec::new();
    for step in &latest.steps {
        if step.cached {
            let _ = writeln!(out, "CACHED  {}", step.name);
            continue;
        }
        let _ = writeln!(out, "RAN     {}", step.name);
        let reasons = match before.get(step.id.as_str()) {
            None if previous.is_none() => vec!["no earlier build of this Dockerfile and target to compare with".into()],
            None => vec!["a new step".into()],
            Some(old) => reasons(step, old, &missed),
        };
        for reason in reasons {
            let _ = writeln!(out, "        - {reason}");
        }
        missed.push(step);
    }
    out
}

fn reasons(step: &StepRecord, old: &StepRecord, missed: &[&StepRecord]) -> Vec<String> {
    let mut why = Vec::new();
    diff_files(&old.files, &step.files, &mut why);
    diff_values("", &old.definition, &step.definition, &mut why);
    if old.parent != step.parent {
        let stage = step.id.split('.').next().unwrap_or("");
        match missed.iter().rev().find(|m| m.id.split('.').next() == Some(stage)) {
            Some(parent) => why.push(format!("its parent changed: {}", parent.name)),
            None => why.push("the base image or base stage changed".into()),
        }
    }
    if why.is_empty() {
        why.push("same inputs as before: the cache entry was gone (evicted) or --no-cache was given".into());
    }
    why
}

/// Lists what differs between two definitions in user terms: copied files
/// by path, environment variables by name, other fields by name.
fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff_values(&child, x, y, out),
                    (None, Some(y)) => out.push(format!("{} set to {}", label(&child), short(y))),
                    (Some(_), None) => out.push(format!("{} removed", label(&child))),
                    (None, None) => {}
                }
            }
        }
        // Files are compared one by one in `diff_files`.
        _ if path.ends_with("matches") || path.ends_with("source_digest") => {}
        _ if path.ends_with("origin.key") => out.push("the stage it copies from (--from) changed".into()),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_values(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ => out.push(format!("{} changed: {} -> {}", label(path), short(old), short(new))),
    }
}

fn diff_files(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>, out: &mut Vec<String>) {
    for (file, digest) in new {
        match old.get(file) {
            Some(d) if d == digest => {}
            Some(_) => out.push(format!("copied file changed: {file}")),
            None => out.push(format!("copied file added: {file}")),
        }
    }
    for file in old.keys().filter(|f| !new.contains_key(*f)) {
        out.push(format!("copied file removed: {file}"));
    }
}

fn label(path: &str) -> String {
    match path.strip_prefix("env.") {
        Some(var) => format!("environment variable {var}"),
        None => path.to_string(),
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(id: &str, cached: bool, parent: &[&str], definition: Value) -> StepRecord {
        let files = definition["sources"][0]["matches"]
            .as_array()
            .map(|m| {
                m.iter().map(|p| (p[0].as_str().unwrap_or("").into(), p[1].as_str().unwrap_or("").into())).collect()
            })
            .unwrap_or_default();
        StepRecord {
            files,
            id: id.into(),
            name: format!("step {id}"),
            action: String::new(),
            cached,
            parent: parent.iter().map(|p| p.to_string()).collect(),
            definition,
        }
    }

    #[test]
    fn names_the_file_the_variable_and_the_parent() {
        let copy = |digest: &str| json!({"kind": "copy", "sources": [{"matches": [["src/main.go", digest], ["go.mod", "1"]]}]});
        let run = |v: &str| json!({"kind": "run", "env": {"VERSION": v, "A": "1"}});
        let previous = BuildRecord {
            steps: vec![record("0.1", false, &["a"], copy("x")), record("0.2", false, &["a", "b"], run("1"))],
            ..BuildRecord::default()
        };
        let latest = BuildRecord {
            steps: vec![record("0.1", false, &["a"], copy("y")), record("0.2", false, &["a", "c"], run("2"))],
            ..BuildRecord::default()
        };
        let text = explain(&latest, Some(&previous));
        assert!(text.contains("copied file changed: src/main.go"), "{text}");
        assert!(!text.contains("go.mod"), "{text}");
        assert!(text.contains("environment variable VERSION changed: \"1\" -> \"2\""), "{text}");
        assert!(text.contains("its parent changed: step 0.1"), "{text}");
    }
}
