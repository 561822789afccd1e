//! A filesystem step as a REAPI action: its digest is the step's cache key.
//!
//! The input root holds the parent filesystem's layers (and the layers of
//! any stage the step reads from) as files named by position; the Command
//! carries the argv and environment, and platform properties say what kind
//! of step it is and pin the digest of its canonical definition (expanded
//! arguments, copied files' content digests, heredocs, mounts). The result
//! names the new layer as the output file `layer.tar`; a step that changes
//! nothing (WORKDIR of an existing directory) has no output.

use bytes::Bytes;
use memobuild_cas::{ActionResults, BlobStore};
use memobuild_oci::Layer;
use memobuild_proto::reapi::{self, platform::Property, Action, ActionResult, Command, Directory, FileNode, Platform};
use memobuild_proto::{Digest, DigestFunction, Result};
use prost::Message;

/// The output path of a step's layer.
const LAYER_OUTPUT: &str = "layer.tar";
/// How the input root names the parent filesystem's layers (then `NNNN`).
const PARENT_PREFIX: &str = "parent-";

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
            .filter(|f| f.name.starts_with(PARENT_PREFIX))
            .filter_map(|f| digest(f.digest.as_ref()))
            .collect();
        let output =
            result.output_files.iter().find(|f| f.path == LAYER_OUTPUT).and_then(|f| digest(f.digest.as_ref()));
        StepLayers { parent, output }
    }
}

/// What goes into a step's action.
pub struct StepInputs<'a> {
    /// `run`, `copy`, `workdir`, `compress`.
    pub kind: &'static str,
    /// Digest of the step's canonical definition.
    pub definition: Digest,
    /// For RUN: the command and its whole environment.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The filesystem the step starts from.
    pub parent: &'a [Layer],
    /// Other filesystems it reads, in a fixed order.
    pub sources: Vec<&'a [Layer]>,
}

/// A step's action, ready to look up or to record.
pub struct StepAction {
    pub digest: Digest,
    blobs: Vec<(Digest, Bytes)>,
}

fn encode<M: Message>(message: &M) -> (Digest, Bytes) {
    let bytes = Bytes::from(message.encode_to_vec());
    (Digest::of(DigestFunction::Sha256, &bytes), bytes)
}

impl StepAction {
    pub fn new(inputs: StepInputs<'_>) -> Self {
        let mut files = Vec::new();
        let mut add = |prefix: String, layers: &[Layer]| {
            for (i, layer) in layers.iter().enumerate() {
                files.push(FileNode {
                    name: format!("{prefix}{i:04}"),
                    digest: Some(layer.blob.to_proto()),
                    ..FileNode::default()
                });
            }
        };
        add(PARENT_PREFIX.to_string(), inputs.parent);
        for (n, source) in inputs.sources.iter().enumerate() {
            add(format!("source-{n:02}-"), source);
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let root = Directory { files, ..Directory::default() };
        let platform = Platform {
            properties: vec![
                Property { name: "memobuild.definition".into(), value: inputs.definition.to_string() },
                Property { name: "memobuild.step".into(), value: inputs.kind.into() },
            ],
        };
        let arguments =
            if inputs.argv.is_empty() { vec!["memobuild-builtin".into(), inputs.kind.into()] } else { inputs.argv };
        let mut environment_variables: Vec<reapi::command::EnvironmentVariable> =
            inputs.env.into_iter().map(|(name, value)| reapi::command::EnvironmentVariable { name, value }).collect();
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
            blobs: vec![(root_digest, root_bytes), (command_digest, command_bytes), (digest, action_bytes)],
        }
    }

    /// The cached result: `Some(layer or None)` on a hit.
    pub async fn lookup(&self, cache: &dyn ActionResults) -> Result<Option<Option<Layer>>> {
        let Some(result) = cache.get("", &self.digest).await? else { return Ok(None) };
        if result.exit_code != 0 {
            return Ok(None);
        }
        match result.output_files.iter().find(|f| f.path == LAYER_OUTPUT) {
            Some(file) => {
                let digest = Digest::from_proto_field(DigestFunction::Sha256, file.digest.as_ref(), "layer digest")?;
                Ok(Some(Some(Layer::uncompressed(digest))))
            }
            None => Ok(Some(None)),
        }
    }

    /// Records the step's result (its layer must already be in the CAS),
    /// with the action, command and input root for REAPI tools.
    pub async fn record(&self, cas: &dyn BlobStore, cache: &dyn ActionResults, layer: Option<&Layer>) -> Result<()> {
        for (digest, bytes) in &self.blobs {
            cas.put_bytes(digest, bytes.clone()).await?;
        }
        let output_files = layer
            .map(|layer| reapi::OutputFile {
                path: LAYER_OUTPUT.into(),
                digest: Some(layer.blob.to_proto()),
                ..reapi::OutputFile::default()
            })
            .into_iter()
            .collect();
        let result = ActionResult { output_files, exit_code: 0, ..ActionResult::default() };
        cache.update("", &self.digest, &result).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(data: &[u8]) -> Layer {
        Layer::uncompressed(Digest::of(DigestFunction::Sha256, data))
    }

    fn action(definition: &[u8], parent: &[Layer], env: &[(&str, &str)]) -> Digest {
        StepAction::new(StepInputs {
            kind: "run",
            definition: Digest::of(DigestFunction::Blake3, definition),
            argv: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            parent,
            sources: Vec::new(),
        })
        .digest
    }

    #[test]
    fn the_key_follows_exactly_the_inputs() {
        let base = [layer(b"a"), layer(b"b")];
        let same = action(b"def", &base, &[("A", "1"), ("B", "2")]);
        assert_eq!(same, action(b"def", &base, &[("B", "2"), ("A", "1")]), "env order does not matter");
        assert_ne!(same, action(b"def2", &base, &[("A", "1"), ("B", "2")]));
        assert_ne!(same, action(b"def", &base[..1], &[("A", "1"), ("B", "2")]));
        assert_ne!(same, action(b"def", &[layer(b"a"), layer(b"c")], &[("A", "1"), ("B", "2")]));
        assert_ne!(same, action(b"def", &base, &[("A", "1")]));
    }
}
