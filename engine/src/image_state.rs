//! A stage's state as it is built: its layers, its history, and at the end
//! the image config JSON exactly as Docker writes it.

use memobuild_frontend::{ImageConfig, Platform};
use memobuild_oci::Layer;
use serde_json::{json, Map, Value};

use crate::docker_healthcheck::DockerHealthcheck;

/// The PATH Docker gives images that set none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One history entry of the image config.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    pub created: String,
    pub created_by: String,
    pub empty_layer: bool,
    pub comment: Option<String>,
    /// `created` in seconds since the epoch, for the entries of this
    /// build's steps (`None` for a base image's).
    pub built_at: Option<u64>,
}

impl History {
    fn to_json(&self) -> Value {
        let mut entry = Map::new();
        // A base image's entry may have no time; "" is no RFC 3339 time.
        if !self.created.is_empty() {
            entry.insert("created".into(), json!(self.created));
        }
        entry.insert("created_by".into(), json!(self.created_by));
        if let Some(comment) = &self.comment {
            entry.insert("comment".into(), json!(comment));
        }
        if self.empty_layer {
            entry.insert("empty_layer".into(), json!(true));
        }
        Value::Object(entry)
    }
}

/// Layers and history so far.
#[derive(Clone, Debug, Default)]
pub struct ImageState {
    pub layers: Vec<Layer>,
    pub history: Vec<History>,
    /// In a dry run, past a step that would run: the layers are not known.
    pub unknown: bool,
}

impl ImageState {
    /// The image's `created` without `SOURCE_DATE_EPOCH`: the latest time
    /// of the build's own history entries, else the last entry's (a base
    /// image's); `None` when there is no history.
    pub fn created(&self) -> Option<String> {
        match self.history.iter().filter_map(|h| h.built_at).max() {
            Some(latest) => Some(rfc3339(latest)),
            None => self.history.iter().rev().map(|h| &h.created).find(|c| !c.is_empty()).cloned(),
        }
    }

    /// The image config JSON (`application/vnd.oci.image.config.v1+json`).
    pub fn config_json(&self, config: &ImageConfig, platform: &Platform, created: &str) -> Vec<u8> {
        let mut c = Map::new();
        let mut env = config.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, format!("PATH={DEFAULT_PATH}"));
        }
        c.insert("Env".into(), json!(env));
        if let Some(user) = config.user.as_ref().filter(|u| !u.is_empty()) {
            c.insert("User".into(), json!(user));
        }
        if let Some(workdir) = config.workdir.as_ref().filter(|w| !w.is_empty()) {
            c.insert("WorkingDir".into(), json!(workdir));
        }
        if let Some(entrypoint) = &config.entrypoint {
            c.insert("Entrypoint".into(), json!(entrypoint));
        }
        if let Some(cmd) = &config.cmd {
            c.insert("Cmd".into(), json!(cmd));
        }
        if !config.labels.is_empty() {
            c.insert("Labels".into(), json!(config.labels));
        }
        if !config.exposed_ports.is_empty() {
            let ports: Map<String, Value> = config
                .exposed_ports
                .iter()
                .map(|p| (if p.contains('/') { p.clone() } else { format!("{p}/tcp") }, json!({})))
                .collect();
            c.insert("ExposedPorts".into(), Value::Object(ports));
        }
        if !config.volumes.is_empty() {
            let volumes: Map<String, Value> = config.volumes.iter().map(|v| (v.clone(), json!({}))).collect();
            c.insert("Volumes".into(), Value::Object(volumes));
        }
        if let Some(signal) = &config.stop_signal {
            c.insert("StopSignal".into(), json!(signal));
        }
        if let Some(shell) = &config.shell {
            c.insert("Shell".into(), json!(shell));
        }
        if !config.onbuild.is_empty() {
            c.insert("OnBuild".into(), json!(config.onbuild));
        }
        if let Some(healthcheck) = &config.healthcheck {
            c.insert("Healthcheck".into(), json!(DockerHealthcheck::from(healthcheck)));
        }
        let mut image = Map::new();
        image.insert("architecture".into(), json!(platform.architecture));
        image.insert("os".into(), json!(platform.os));
        if let Some(variant) = &platform.variant {
            image.insert("variant".into(), json!(variant));
        }
        image.insert("created".into(), json!(created));
        if let Some(author) = &config.maintainer {
            image.insert("author".into(), json!(author));
        }
        image.insert("config".into(), Value::Object(c));
        let diff_ids: Vec<String> = self.layers.iter().map(Layer::diff_id_string).collect();
        image.insert("rootfs".into(), json!({"type": "layers", "diff_ids": diff_ids}));
        image.insert("history".into(), Value::Array(self.history.iter().map(History::to_json).collect()));
        // Serializing a tree of plain JSON values cannot fail.
        serde_json::to_vec(&Value::Object(image)).unwrap_or_default()
    }
}

/// Seconds since the epoch as RFC 3339 UTC (`2024-01-02T03:04:05Z`).
pub fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rem = seconds % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn an_image_is_as_old_as_its_latest_step() {
        let entry = |created: &str, built_at| History {
            created: created.into(),
            created_by: String::new(),
            empty_layer: false,
            comment: None,
            built_at,
        };
        let mut state = ImageState::default();
        assert_eq!(state.created(), None);
        state.history = vec![entry("2020-01-01T00:00:00.5Z", None), entry("", None)];
        assert_eq!(state.created().as_deref(), Some("2020-01-01T00:00:00.5Z"), "the base image's time");
        state.history.push(entry(&rfc3339(200), Some(200)));
        state.history.push(entry(&rfc3339(100), Some(100)));
        assert_eq!(state.created(), Some(rfc3339(200)));
    }

    #[test]
    fn config_as_docker_writes_it() {
        let config = ImageConfig {
            env: vec!["A=1".into()],
            exposed_ports: ["80".to_string(), "53/udp".to_string()].into(),
            cmd: Some(vec!["app".into()]),
            ..ImageConfig::default()
        };
        let state = ImageState {
            layers: vec![],
            history: vec![History {
                created: rfc3339(0),
                created_by: "CMD [\"app\"]".into(),
                empty_layer: true,
                comment: None,
                built_at: Some(0),
            }],
            unknown: false,
        };
        let json: Value =
            serde_json::from_slice(&state.config_json(&config, &Platform::new("linux", "amd64", None), &rfc3339(0)))
                .unwrap();
        assert_eq!(json["config"]["Env"], json!([format!("PATH={DEFAULT_PATH}"), "A=1"]));
        assert_eq!(json["config"]["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
        assert_eq!(json["rootfs"], json!({"type": "layers", "diff_ids": []}));
        assert_eq!(json["history"][0]["empty_layer"], json!(true));
    }
}
