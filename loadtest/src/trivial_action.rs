//! Distinct trivial actions: `/bin/true` in an empty input root, made
//! distinct by one environment variable so each has its own action digest.

use memobuild_proto::reapi::{command, platform, Action, Command, Directory, Platform};
use memobuild_proto::{Digest, DigestFunction};
use prost::Message;

/// The program every action runs.
pub const PROGRAM: &str = "/bin/true";

/// One action and the blobs the CAS must hold for it.
pub struct TrivialAction {
    pub digest: Digest,
    /// The Action and Command messages. The input root, an empty Directory,
    /// encodes to the empty blob, which every CAS holds, so it is not here.
    pub blobs: Vec<(Digest, Vec<u8>)>,
}

/// Action `index` of run `run`: `/bin/true` with environment
/// `LOADTEST_RUN=<run>`, `N=<index>`, `PATH=/usr/bin:/bin` (sorted by name,
/// as REAPI requires), an empty input root, `do_not_cache = false` and the
/// platform `properties` (e.g. a `container-image`).
pub fn trivial_action(
    function: DigestFunction,
    run: u64,
    index: usize,
    properties: &[(String, String)],
) -> TrivialAction {
    let variable = |name: &str, value: String| command::EnvironmentVariable { name: name.to_string(), value };
    let command = Command {
        arguments: vec![PROGRAM.to_string()],
        environment_variables: vec![
            variable("LOADTEST_RUN", format!("{run:016x}")),
            variable("N", index.to_string()),
            variable("PATH", "/usr/bin:/bin".to_string()),
        ],
        ..Default::default()
    };
    let command_bytes = command.encode_to_vec();
    let command_digest = Digest::of(function, &command_bytes);
    let input_root = Digest::of(function, &Directory::default().encode_to_vec());
    let action = Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(input_root.to_proto()),
        do_not_cache: false,
        platform: (!properties.is_empty()).then(|| Platform {
            properties: properties
                .iter()
                .map(|(name, value)| platform::Property { name: name.clone(), value: value.clone() })
                .collect(),
        }),
        ..Default::default()
    };
    let action_bytes = action.encode_to_vec();
    let digest = Digest::of(function, &action_bytes);
    TrivialAction { digest, blobs: vec![(digest, action_bytes), (command_digest, command_bytes)] }
}

/// Actions `0..count` of run `run`.
pub fn trivial_actions(
    function: DigestFunction,
    run: u64,
    count: usize,
    properties: &[(String, String)],
) -> Vec<TrivialAction> {
    (0..count).map(|i| trivial_action(function, run, i, properties)).collect()
}

/// Makes `count` trivial actions of run `run` and uploads their blobs through
/// `channel` (untimed set-up); returns their action digests.
pub async fn upload_trivial_actions(
    channel: crate::connection::Channel,
    instance_name: &str,
    function: DigestFunction,
    run: u64,
    count: usize,
    properties: &[(String, String)],
) -> anyhow::Result<Vec<Digest>> {
    let actions = trivial_actions(function, run, count, properties);
    let blobs: Vec<(Digest, &[u8])> =
        actions.iter().flat_map(|a| a.blobs.iter().map(|(d, data)| (*d, data.as_slice()))).collect();
    let largest = blobs.iter().map(|(_, data)| data.len() as u64).max().unwrap_or(0);
    let batch_limit = crate::upload::batch_limit(channel.clone(), instance_name, function, largest).await?;
    let mut cas = crate::connection::cas_client(channel);
    let mut uploader = crate::upload::Uploader { client: &mut cas, instance_name, function, batch_limit };
    let batches = uploader.upload(&blobs).await?;
    eprintln!(
        "uploaded {} actions ({} blobs) in {batches} BatchUpdateBlobs calls (untimed)",
        actions.len(),
        blobs.len()
    );
    Ok(actions.iter().map(|a| a.digest).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn actions_are_distinct_and_repeatable() {
        let actions = trivial_actions(DigestFunction::Sha256, 7, 500, &[]);
        let digests: HashSet<Digest> = actions.iter().map(|a| a.digest).collect();
        assert_eq!(digests.len(), 500);
        // The same run and index give the same action, so a second run hits the cache.
        assert_eq!(trivial_action(DigestFunction::Sha256, 7, 3, &[]).digest, actions[3].digest);
        assert_ne!(trivial_action(DigestFunction::Sha256, 8, 3, &[]).digest, actions[3].digest);
    }

    #[test]
    fn blobs_decode_to_the_trivial_command_in_an_empty_root() {
        let action = trivial_action(DigestFunction::Sha256, 1, 42, &[]);
        let (action_digest, action_bytes) = &action.blobs[0];
        assert_eq!(*action_digest, action.digest);
        let decoded = Action::decode(action_bytes.as_slice()).unwrap();
        assert!(!decoded.do_not_cache);
        assert_eq!(decoded.input_root_digest.unwrap().hash, Digest::empty(DigestFunction::Sha256).hex());
        let (command_digest, command_bytes) = &action.blobs[1];
        assert_eq!(decoded.command_digest.unwrap(), command_digest.to_proto());
        let command = Command::decode(command_bytes.as_slice()).unwrap();
        assert_eq!(command.arguments, vec![PROGRAM.to_string()]);
        let names: Vec<&str> = command.environment_variables.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["LOADTEST_RUN", "N", "PATH"]);
        assert_eq!(command.environment_variables[1].value, "42");
    }
}
