//! HEALTHCHECK in an image config, as Docker writes it: `Test` plus
//! durations in nanoseconds, zero or absent meaning the default.

use memobuild_frontend::{CommandLine, Healthcheck};
use serde::{Deserialize, Serialize};

/// The `Healthcheck` object of an image config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerHealthcheck {
    /// `["NONE"]`, `["CMD", argv...]` or `["CMD-SHELL", script]`; empty:
    /// inherit.
    #[serde(default)]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
}

impl From<&Healthcheck> for DockerHealthcheck {
    fn from(healthcheck: &Healthcheck) -> Self {
        match healthcheck {
            Healthcheck::None => DockerHealthcheck { test: vec!["NONE".into()], ..Default::default() },
            Healthcheck::Cmd { command, interval_ns, timeout_ns, start_period_ns, start_interval_ns, retries } => {
                let test = match command {
                    CommandLine::Exec(argv) => std::iter::once("CMD".to_string()).chain(argv.iter().cloned()).collect(),
                    CommandLine::Shell(script) => vec!["CMD-SHELL".to_string(), script.clone()],
                };
                let ns = |value: &Option<u64>| value.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
                DockerHealthcheck {
                    test,
                    interval: ns(interval_ns),
                    timeout: ns(timeout_ns),
                    start_period: ns(start_period_ns),
                    start_interval: ns(start_interval_ns),
                    retries: retries.map(i64::from),
                }
            }
        }
    }
}

impl DockerHealthcheck {
    /// The health check this describes; `None` for an empty or unknown
    /// `Test` (nothing to carry on).
    pub fn to_healthcheck(&self) -> Option<Healthcheck> {
        let (kind, rest) = self.test.split_first()?;
        let command = match kind.as_str() {
            "NONE" => return Some(Healthcheck::None),
            "CMD" => CommandLine::Exec(rest.to_vec()),
            "CMD-SHELL" => CommandLine::Shell(rest.join(" ")),
            _ => return None,
        };
        let ns = |value: Option<i64>| value.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0);
        Some(Healthcheck::Cmd {
            command,
            interval_ns: ns(self.interval),
            timeout_ns: ns(self.timeout),
            start_period_ns: ns(self.start_period),
            start_interval_ns: ns(self.start_interval),
            retries: self.retries.and_then(|r| u32::try_from(r).ok()).filter(|r| *r > 0),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_docker_json() {
        let json = serde_json::json!({
            "Test": ["CMD-SHELL", "wget -q -O- localhost || exit 1"],
            "Interval": 30_000_000_000i64,
            "Timeout": 5_000_000_000i64,
            "Retries": 3,
        });
        let docker: DockerHealthcheck = serde_json::from_value(json.clone()).unwrap();
        let healthcheck = docker.to_healthcheck().unwrap();
        assert_eq!(
            healthcheck,
            Healthcheck::Cmd {
                command: CommandLine::Shell("wget -q -O- localhost || exit 1".into()),
                interval_ns: Some(30_000_000_000),
                timeout_ns: Some(5_000_000_000),
                start_period_ns: None,
                start_interval_ns: None,
                retries: Some(3),
            }
        );
        assert_eq!(serde_json::to_value(DockerHealthcheck::from(&healthcheck)).unwrap(), json);

        let none: DockerHealthcheck = serde_json::from_value(serde_json::json!({"Test": ["NONE"]})).unwrap();
        assert_eq!(none.to_healthcheck(), Some(Healthcheck::None));
        let exec: DockerHealthcheck =
            serde_json::from_value(serde_json::json!({"Test": ["CMD", "/bin/true", "x"], "Interval": 0})).unwrap();
        assert!(matches!(
            exec.to_healthcheck(),
            Some(Healthcheck::Cmd { command: CommandLine::Exec(argv), interval_ns: None, .. }) if argv == ["/bin/true", "x"]
        ));
        assert_eq!(DockerHealthcheck::default().to_healthcheck(), None);
    }
}
