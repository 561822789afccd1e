//! A filesystem step as a REAPI action: its digest is the step's cache key.
//!
//! The input root holds `step.json` (the [`StepSpec`]: the canonical
//! definition with expanded arguments, copied files' content digests,
//! heredocs and mounts, the layers it starts from and reads, and
//! `SOURCE_DATE_EPOCH`) and the layers themselves as files named by
//! position; the Command carries a RUN's argv and whole environment; the
//! platform property `memobuild.step` says what kind of step it is. So any
//! worker that can read the CAS can execute it. The result names the new
//! layer as the output file `layer.tar`; a step that changes nothing
//! (WORKDIR of an existing directory) has no output.

use std::time::SystemTime;

use bytes::Bytes;
use memobuild_cas::{ActionResults, BlobStore};
use memobuild_frontend::StepDefinition;
use memobuild_oci::Layer;
use memobuild_proto::protobuf::Timestamp;
use memobuild_proto::reapi::{
    self, platform::Property, Action, ActionResult, Command, Directory, ExecutedActionMetadata, FileNode, Platform,
};
use memobuild_proto::{Digest, DigestFunction, Error, Result};
use prost::Message;
use serde::{Deserialize, Serialize};

/// The output path of a step's layer.
pub const LAYER_OUTPUT: &str = "layer.tar";
/// The input root file that holds the [`StepSpec`].
pub const STEP_FILE: &str = "step.json";
/// The platform property that marks a step's action, with its kind.
pub const STEP_PROPERTY: &str = "memobuild.step";
/// How the input root names the parent filesystem's layers (then `NNNN`).
pub const STEP_PARENT_PREFIX: &str = "parent-";

/// The layers of a recorded step, by blob, as its input root and result
/// name them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepLayers {
    /// The parent filesystem's layers, bottom first.
    pub parent: Vec<Digest>,
    /// The (uncompressed) layer the step made.
    pub output: Option<Digest>,
}

impl StepLayers {
    /// Reads them from a step's input root and result; a file that is not a
    /// step's (a Bazel action's) names none.
    pub fn of(input_root: &Directory, result: &ActionResult) -> StepLayers {
        let digest = |d: Option<&reapi::Digest>| d.and_then(|d| Digest::from_proto(DigestFunction::Sha256, d).ok());
        // The root lists its files by name, so `parent-NNNN` come bottom first.
        let parent = input_root
            .files
            .iter()
            .filter(|f| f.name.starts_with(STEP_PARENT_PREFIX))
            .filter_map(|f| digest(f.digest.as_ref()))
            .collect();
        let output =
            result.output_files.iter().find(|f| f.path == LAYER_OUTPUT).and_then(|f| digest(f.digest.as_ref()));
        StepLayers { parent, output }
    }
}

/// What a filesystem step does, as its action carries it (`step.json` in
/// the input root): everything an executor needs besides the command and
/// the session, and exactly what its result depends on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    /// The canonical definition, with a RUN's network resolved.
    pub definition: StepDefinition,
    /// The filesystem the step starts from, bottom first.
    pub parent: Vec<Layer>,
    /// Other filesystems it reads (stages, images), in a fixed order.
    pub sources: Vec<Vec<Layer>>,
    /// `SOURCE_DATE_EPOCH`: it changes the layer's timestamps, so it is part
    /// of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<u64>,
    /// A RUN on the default network. That network has had outbound access
    /// since it became NAT (before, it was none): the flag keys these runs
    /// apart from the offline runs cached before, whose layers may differ.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub egress: bool,
    /// A step whose layer may hold file capabilities (a RUN, a COPY from
    /// another stage or image). Layers have kept them since this flag came
    /// in: it keys these steps apart from those cached before, whose layers
    /// lost them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub file_capabilities: bool,
}

impl StepSpec {
    /// `run`, `copy` or `workdir`: the `memobuild.step` platform property.
    pub fn kind(&self) -> &'static str {
        match self.definition {
            StepDefinition::Run { .. } => "run",
            StepDefinition::Copy { .. } => "copy",
            _ => "workdir",
        }
    }

    /// Reads `step.json`; an error says what is wrong with it.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::invalid_argument(format!("{STEP_FILE} is not a step: {e}")))
    }

    fn to_json(&self) -> Bytes {
        // Plain data with string keys always serializes.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// A step's action, ready to look up, to record or to send to a worker.
pub struct StepAction {
    pub digest: Digest,
    pub command: Command,
    blobs: Vec<(Digest, Bytes)>,
}

fn encode<M: Message>(message: &M) -> (Digest, Bytes) {
    let bytes = Bytes::from(message.encode_to_vec());
    (Digest::of(DigestFunction::Sha256, &bytes), bytes)
}

impl StepAction {
    /// The action of a filesystem step; `argv` and `env` are a RUN's
    /// command and whole environment (empty for builtin steps).
    pub fn of_step(spec: &StepSpec, argv: Vec<String>, env: Vec<(String, String)>) -> Self {
        let sources: Vec<&[Layer]> = spec.sources.iter().map(Vec::as_slice).collect();
        Self::build(spec.kind(), spec.to_json(), &spec.parent, &sources, argv, env)
    }

    /// The builtin action that compresses `layer` to `media_type`.
    pub fn compress(layer: &Layer, media_type: &str) -> Self {
        Self::build("compress", Bytes::from(media_type.to_string()), std::slice::from_ref(layer), &[], vec![], vec![])
    }

    fn build(
        kind: &str,
        spec: Bytes,
        parent: &[Layer],
        sources: &[&[Layer]],
        argv: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Self {
        let spec_digest = Digest::of(DigestFunction::Sha256, &spec);
        let mut files =
            vec![FileNode { name: STEP_FILE.into(), digest: Some(spec_digest.to_proto()), ..FileNode::default() }];
        let mut add = |prefix: String, layers: &[Layer]| {
            for (i, layer) in layers.iter().enumerate() {
                files.push(FileNode {
                    name: format!("{prefix}{i:04}"),
                    digest: Some(layer.blob.to_proto()),
                    ..FileNode::default()
                });
            }
        };
        add(STEP_PARENT_PREFIX.to_string(), parent);
        for (n, source) in sources.iter().enumerate() {
            add(format!("source-{n:02}-"), source);
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let root = Directory { files, ..Directory::default() };
        let platform = Platform { properties: vec![Property { name: STEP_PROPERTY.into(), value: kind.into() }] };
        let arguments = if argv.is_empty() { vec!["memobuild-builtin".into(), kind.into()] } else { argv };
        let mut environment_variables: Vec<reapi::command::EnvironmentVariable> =
            env.into_iter().map(|(name, value)| reapi::command::EnvironmentVariable { name, value }).collect();
        environment_variables.sort_by(|a, b| a.name.cmp(&b.name));
        let command =
            Command { arguments, environment_variables, output_paths: vec![LAYER_OUTPUT.into()], ..Command::default() };
        let (root_digest, root_bytes) = encode(&root);
        let (command_digest, command_bytes) = encode(&command);
        let action = Action {
            command_digest: Some(command_digest.to_proto()),
            input_root_digest: Some(root_digest.to_proto()),
            platform: Some(platform),
            ..Action::default()
        };
        let (digest, action_bytes) = encode(&action);
        StepAction {
            digest,
            command,
            blobs: vec![
                (spec_digest, spec),
                (root_digest, root_bytes),
                (command_digest, command_bytes),
                (digest, action_bytes),
            ],
        }
    }

    /// Puts the action, its command, input root and `step.json` into `cas`
    /// (the layers it names are there already).
    pub async fn upload(&self, cas: &dyn BlobStore) -> Result<()> {
        let missing = cas.find_missing(&self.blobs.iter().map(|(d, _)| *d).collect::<Vec<_>>()).await?;
        for (digest, bytes) in self.blobs.iter().filter(|(d, _)| missing.contains(d)) {
            cas.put_bytes(digest, bytes.clone()).await?;
        }
        Ok(())
    }

    /// The cached result in `instance`, on a hit.
    pub async fn lookup(&self, cache: &dyn ActionResults, instance: &str) -> Result<Option<StepOutcome>> {
        let Some(result) = cache.get(instance, &self.digest).await? else { return Ok(None) };
        if result.exit_code != 0 {
            return Ok(None);
        }
        StepOutcome::of(&result).map(Some)
    }

    /// Records `result` as the step's result in `instance` (its layer must
    /// already be in the CAS), with the action's own blobs for REAPI tools.
    pub async fn record(
        &self,
        cas: &dyn BlobStore,
        cache: &dyn ActionResults,
        instance: &str,
        result: &ActionResult,
    ) -> Result<()> {
        self.upload(cas).await?;
        cache.update(instance, &self.digest, result).await
    }
}

/// What a step's action result says: the layer the step made and when it
/// was built. A cache hit keeps that time, so an unchanged build gives the
/// same image config (as BuildKit keeps its image id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepOutcome {
    /// The (uncompressed) layer; `None`: the step changed nothing.
    pub layer: Option<Layer>,
    /// When the step finished, in seconds since the epoch (the result's
    /// `worker_completed_timestamp`); `None` in results recorded without it.
    pub built_at: Option<u64>,
}

impl StepOutcome {
    pub fn of(result: &ActionResult) -> Result<StepOutcome> {
        let built_at = result
            .execution_metadata
            .as_ref()
            .and_then(|m| m.worker_completed_timestamp.as_ref())
            .and_then(|t| u64::try_from(t.seconds).ok());
        Ok(StepOutcome { layer: result_layer(result)?, built_at })
    }

    /// The action result that says this (no worker, no start time).
    pub fn result(&self) -> ActionResult {
        let mut result = layer_result(self.layer.as_ref());
        result.execution_metadata = self.built_at.map(|seconds| ExecutedActionMetadata {
            worker_completed_timestamp: Some(Timestamp {
                seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
                nanos: 0,
            }),
            ..ExecutedActionMetadata::default()
        });
        result
    }
}

/// The action result of a step that made `layer` (or nothing) on
/// `worker`, between `started` and `completed`.
pub fn dated_result(layer: Option<&Layer>, worker: &str, started: SystemTime, completed: SystemTime) -> ActionResult {
    let mut result = layer_result(layer);
    result.execution_metadata = Some(ExecutedActionMetadata {
        worker: worker.to_string(),
        worker_start_timestamp: Some(timestamp(started)),
        worker_completed_timestamp: Some(timestamp(completed)),
        ..ExecutedActionMetadata::default()
    });
    result
}

fn timestamp(time: SystemTime) -> Timestamp {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX), nanos: since.subsec_nanos() as i32 }
}

/// The action result of a step that made `layer` (or nothing).
pub fn layer_result(layer: Option<&Layer>) -> ActionResult {
    let output_files = layer
        .map(|layer| reapi::OutputFile {
            path: LAYER_OUTPUT.into(),
            digest: Some(layer.blob.to_proto()),
            ..reapi::OutputFile::default()
        })
        .into_iter()
        .collect();
    ActionResult { output_files, exit_code: 0, ..ActionResult::default() }
}

/// The layer a step's result names (`None`: the step changed nothing).
pub fn result_layer(result: &ActionResult) -> Result<Option<Layer>> {
    match result.output_files.iter().find(|f| f.path == LAYER_OUTPUT) {
        Some(file) => {
            let digest = Digest::from_proto_field(DigestFunction::Sha256, file.digest.as_ref(), "layer digest")?;
            Ok(Some(Layer::uncompressed(digest)))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn layer(data: &[u8]) -> Layer {
        Layer::uncompressed(Digest::of(DigestFunction::Sha256, data))
    }

    fn spec(path: &str, parent: &[Layer], epoch: Option<u64>) -> StepSpec {
        StepSpec {
            definition: StepDefinition::Workdir { path: path.into(), user: None },
            parent: parent.to_vec(),
            sources: Vec::new(),
            source_date_epoch: epoch,
            egress: false,
            file_capabilities: false,
        }
    }

    fn action(path: &str, parent: &[Layer], env: &[(&str, &str)]) -> Digest {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        StepAction::of_step(&spec(path, parent, None), vec!["/bin/sh".into(), "-c".into(), "true".into()], env).digest
    }

    #[test]
    fn a_run_with_egress_has_a_key_of_its_own() {
        let offline = spec("/w", &[], None);
        let online = StepSpec { egress: true, ..offline.clone() };
        assert_ne!(
            StepAction::of_step(&offline, vec![], vec![]).digest,
            StepAction::of_step(&online, vec![], vec![]).digest
        );
        assert!(!String::from_utf8_lossy(&offline.to_json()).contains("egress"), "other keys are unchanged");
    }

    #[test]
    fn the_key_follows_exactly_the_inputs() {
        let base = [layer(b"a"), layer(b"b")];
        let same = action("/a", &base, &[("A", "1"), ("B", "2")]);
        assert_eq!(same, action("/a", &base, &[("B", "2"), ("A", "1")]), "env order does not matter");
        assert_ne!(same, action("/b", &base, &[("A", "1"), ("B", "2")]));
        assert_ne!(same, action("/a", &base[..1], &[("A", "1"), ("B", "2")]));
        assert_ne!(same, action("/a", &[layer(b"a"), layer(b"c")], &[("A", "1"), ("B", "2")]));
        assert_ne!(same, action("/a", &base, &[("A", "1")]));
        let epoch = StepAction::of_step(&spec("/a", &base, Some(1)), vec![], vec![]).digest;
        assert_ne!(epoch, StepAction::of_step(&spec("/a", &base, None), vec![], vec![]).digest);
    }

    #[test]
    fn a_result_says_when_its_step_was_built() {
        let made = layer(b"a");
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_900);
        let result = dated_result(Some(&made), "w1", at, at);
        let outcome = StepOutcome::of(&result).unwrap();
        assert_eq!(outcome, StepOutcome { layer: Some(made.clone()), built_at: Some(1_700_000_000) });
        assert_eq!(StepOutcome::of(&outcome.result()).unwrap(), outcome);
        let undated = StepOutcome::of(&layer_result(Some(&made))).unwrap();
        assert_eq!(undated, StepOutcome { layer: Some(made), built_at: None });
    }

    #[test]
    fn the_spec_survives_its_file() {
        let spec = spec("/a", &[layer(b"a")], Some(7));
        assert_eq!(StepSpec::from_json(&spec.to_json()).unwrap(), spec);
        assert!(StepSpec::from_json(b"{}").unwrap_err().message().contains("step.json is not a step"));
    }
}
