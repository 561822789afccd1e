//! The build graph: the stages a target needs, their steps and keys.
//!
//! Keys here are *planning keys*: `key = BLAKE3(step definition + parent
//! key)`, where the parent is the last step of the stage that changed the
//! filesystem. They are what `memobuild graph` and `build --dry-run` show.
//! The action digest a step gets at build time is computed from the real
//! parent filesystem tree and Command (DESIGN.md, "The data model"); the
//! planning key changes whenever anything that can change that action
//! changes, as far as can be known without pulling base images.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use memobuild_proto::build as proto;
use memobuild_proto::{Digest, DigestFunction, DigestHasher};
use serde::{Serialize, Serializer};

use crate::{ImageConfig, Location, OnbuildTrigger, Reads, StepDefinition, Warning};

fn hex<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.hex())
}

fn opt_hex<S: Serializer>(d: &Option<Digest>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.hex()),
        None => s.serialize_none(),
    }
}

/// The planned build.
#[derive(Clone, Debug, Serialize)]
pub struct BuildGraph {
    pub dockerfile: String,
    /// Index of the target stage in `stages`' `index` numbering.
    pub target: usize,
    /// The build context's root tree digest.
    #[serde(serialize_with = "hex")]
    pub context: Digest,
    /// The stages the target needs, dependencies first.
    pub stages: Vec<Stage>,
    /// Build-check warnings, in Dockerfile order: those of the whole file
    /// and those of the stages planned.
    pub warnings: Vec<Warning>,
}

/// Where a stage starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum StageBase {
    Scratch,
    Image { reference: String },
    Stage { index: usize },
}

/// One stage.
#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    /// Position in the Dockerfile (0-based), as `--from=N` counts.
    pub index: usize,
    pub name: Option<String>,
    pub platform: String,
    pub base: StageBase,
    /// Indexes of stages this one reads from (base, COPY --from, mounts).
    pub depends_on: Vec<usize>,
    pub steps: Vec<Step>,
    /// Key of the last filesystem step: what COPY --from of this stage
    /// depends on.
    #[serde(serialize_with = "hex")]
    pub key: Digest,
    pub config: ImageConfig,
    /// Key of the stage as an image: `key` plus the image config.
    #[serde(serialize_with = "hex")]
    pub image_key: Digest,
}

/// One instruction of a stage.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// `"{stage index}.{step index}"`; step 0 is the FROM.
    pub id: String,
    pub location: Location,
    /// The instruction as written.
    pub instruction: String,
    pub definition: StepDefinition,
    /// ARG/ENV variables the step read while expanding its arguments (a RUN
    /// also reads its whole environment, listed in its definition).
    pub reads: Reads,
    /// Stage indexes this step reads from.
    pub depends_on: Vec<usize>,
    /// The filesystem step this one follows (`None` for FROM).
    pub parent: Option<String>,
    #[serde(serialize_with = "opt_hex")]
    pub parent_key: Option<Digest>,
    #[serde(serialize_with = "hex")]
    pub key: Digest,
    /// Environment given to a RUN but kept out of its key (the predefined
    /// proxy ARGs). Not serialized: proxy URLs may hold credentials.
    #[serde(skip)]
    pub uncached_env: BTreeMap<String, String>,
    /// Set when the step is an ONBUILD trigger of the stage's base (its
    /// `location` is then the FROM's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<OnbuildTrigger>,
}

impl Step {
    /// `BLAKE3("memobuild.step.v1" | parent key | definition | reads)`.
    pub fn compute_key(definition: &StepDefinition, reads: &Reads, parent: Option<&Digest>) -> Digest {
        #[derive(Serialize)]
        struct Keyed<'a> {
            definition: &'a StepDefinition,
            reads: &'a Reads,
        }
        let mut hasher = DigestHasher::new(DigestFunction::Blake3);
        hasher.update(b"memobuild.step.v1\n");
        hasher.update(parent.map(Digest::hex).unwrap_or_default().as_bytes());
        hasher.update(b"\n");
        // Serializing plain data with string keys cannot fail.
        let json = serde_json::to_vec(&Keyed { definition, reads }).unwrap_or_default();
        hasher.update(&json);
        hasher.finish()
    }
}

impl Stage {
    /// A label for messages and graphs: the name, or the index.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.index.to_string())
    }

    /// `BLAKE3("memobuild.image.v1" | key | config)`.
    pub fn compute_image_key(key: &Digest, config: &ImageConfig) -> Digest {
        let mut hasher = DigestHasher::new(DigestFunction::Blake3);
        hasher.update(b"memobuild.image.v1\n");
        hasher.update(key.hex().as_bytes());
        hasher.update(b"\n");
        hasher.update(&serde_json::to_vec(config).unwrap_or_default());
        hasher.finish()
    }
}

impl BuildGraph {
    /// The target stage.
    pub fn target_stage(&self) -> Option<&Stage> {
        self.stages.iter().find(|s| s.index == self.target)
    }

    /// A stage by Dockerfile index.
    pub fn stage(&self, index: usize) -> Option<&Stage> {
        self.stages.iter().find(|s| s.index == index)
    }

    /// Every step, stage by stage.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.stages.iter().flat_map(|s| s.steps.iter())
    }

    /// The `memobuild.build.v1.BuildGraph` message.
    pub fn to_proto(&self) -> proto::BuildGraph {
        let to_u32 = |i: &usize| *i as u32;
        proto::BuildGraph {
            dockerfile: self.dockerfile.clone(),
            target: self.target as u32,
            context_digest: self.context.hex(),
            stages: self
                .stages
                .iter()
                .map(|stage| proto::Stage {
                    index: stage.index as u32,
                    name: stage.name.clone().unwrap_or_default(),
                    platform: stage.platform.clone(),
                    base: match &stage.base {
                        StageBase::Scratch => "scratch".into(),
                        StageBase::Image { reference } => format!("image:{reference}"),
                        StageBase::Stage { index } => format!("stage:{index}"),
                    },
                    depends_on: stage.depends_on.iter().map(to_u32).collect(),
                    steps: stage
                        .steps
                        .iter()
                        .map(|step| proto::Step {
                            id: step.id.clone(),
                            line: step.location.line as u32,
                            instruction: step.instruction.clone(),
                            definition_json: serde_json::to_string(&step.definition).unwrap_or_default(),
                            changes_filesystem: step.definition.changes_filesystem(),
                            parent: step.parent.clone().unwrap_or_default(),
                            depends_on: step.depends_on.iter().map(to_u32).collect(),
                            key: step.key.hex(),
                        })
                        .collect(),
                    key: stage.key.hex(),
                    config_json: serde_json::to_string(&stage.config).unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// The warnings as a CLI prints them (to stderr, as buildx does): a
    /// count, then one `file:line:column: warning: Rule: message` line
    /// each, then where the rules are explained. Empty without warnings.
    pub fn warnings_text(&self) -> String {
        if self.warnings.is_empty() {
            return String::new();
        }
        let n = self.warnings.len();
        let mut out = format!("{n} warning{} found:\n", if n == 1 { "" } else { "s" });
        let mut rules = Vec::new();
        for warning in &self.warnings {
            let _ = writeln!(out, "{warning}");
            if !rules.contains(&warning.rule) {
                rules.push(warning.rule);
            }
        }
        for rule in rules {
            let _ = writeln!(out, "  {rule}: {}", rule.url());
        }
        out
    }

    /// JSON, pretty-printed.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Graphviz: one cluster per stage, filesystem chains as solid edges,
    /// config steps dashed, cross-stage reads in bold.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph build {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n");
        for stage in &self.stages {
            let _ = writeln!(out, "  subgraph \"cluster_{}\" {{", stage.index);
            let _ = writeln!(
                out,
                "    label=\"{}\";",
                dot_escape(&format!("stage {} ({})", stage.label(), stage.platform))
            );
            for step in &stage.steps {
                let first = step.instruction.lines().next().unwrap_or("");
                let label = format!("{}\n{}", truncate(first, 60), &step.key.hex()[..12]);
                let style = if step.definition.changes_filesystem() { "solid" } else { "dashed" };
                let _ = writeln!(out, "    \"{}\" [label=\"{}\", style={style}];", step.id, dot_escape(&label));
            }
            out.push_str("  }\n");
            for step in &stage.steps {
                if let Some(parent) = &step.parent {
                    let style = if step.definition.changes_filesystem() { "solid" } else { "dashed" };
                    let _ = writeln!(out, "  \"{parent}\" -> \"{}\" [style={style}];", step.id);
                }
                for dep in &step.depends_on {
                    if let Some(last) = self.stage(*dep).and_then(last_fs_step) {
                        let _ = writeln!(out, "  \"{}\" -> \"{}\" [style=bold];", last.id, step.id);
                    }
                }
            }
        }
        out.push_str("}\n");
        out
    }

    /// A plain-text plan: one line per step with its short key.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for stage in &self.stages {
            let deps: Vec<String> = stage.depends_on.iter().map(|d| d.to_string()).collect();
            let _ = writeln!(
                out,
                "stage {} [{}] {}{}",
                stage.index,
                stage.label(),
                stage.platform,
                if deps.is_empty() { String::new() } else { format!(" after {}", deps.join(",")) }
            );
            for step in &stage.steps {
                let first = step.instruction.lines().next().unwrap_or("").trim();
                let _ = writeln!(out, "  {:<5} {}  {}", step.id, &step.key.hex()[..12], truncate(first, 80));
            }
        }
        out
    }
}

fn last_fs_step(stage: &Stage) -> Option<&Step> {
    stage.steps.iter().rev().find(|s| s.definition.changes_filesystem())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
