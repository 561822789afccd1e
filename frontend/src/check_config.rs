//! Which build checks run and whether they fail the build: the value of a
//! `# check=...` directive or of the `BUILDKIT_DOCKERFILE_CHECK` build
//! argument, e.g. `skip=JSONArgsRecommended,StageNameCasing;error=true`.

use std::collections::BTreeSet;

use crate::{CheckRule, Warning};

/// The build-arg that overrides the `# check=` directive, as with buildx.
pub const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckConfig {
    /// `skip=all`.
    pub skip_all: bool,
    /// `skip=RuleA,RuleB`.
    pub skip: BTreeSet<String>,
    /// `error=true`: any warning fails the build.
    pub error: bool,
}

impl CheckConfig {
    /// Parses up to three `;`-separated `key=value` options (`skip`,
    /// `error`, `experimental`), as BuildKit does.
    pub fn parse(text: &str) -> Result<CheckConfig, String> {
        let mut config = CheckConfig::default();
        let text = text.trim();
        if text.is_empty() {
            return Ok(config);
        }
        for part in text.splitn(3, ';') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!("invalid check option {part:?}"));
            };
            let value = value.trim();
            match key.trim() {
                "skip" if value == "all" => config.skip_all = true,
                "skip" => config.skip.extend(value.split(',').map(|r| r.trim().to_string())),
                // No experimental rule is implemented: nothing to enable.
                "experimental" => {}
                "error" => {
                    config.error = parse_go_bool(value)
                        .ok_or_else(|| format!("failed to parse check option {part:?}: invalid syntax"))?
                }
                other => return Err(format!("invalid check option {other:?}")),
            }
        }
        Ok(config)
    }

    /// Whether warnings of `rule` are reported.
    pub fn runs(&self, rule: CheckRule) -> bool {
        !self.skip_all && !self.skip.contains(rule.name())
    }

    /// With `error=true` and warnings left: BuildKit's error naming the
    /// rules, each warning on a line of its own.
    pub fn violation(&self, warnings: &[Warning]) -> Option<String> {
        if !self.error || warnings.is_empty() {
            return None;
        }
        let rules: BTreeSet<&str> = warnings.iter().map(|w| w.rule.name()).collect();
        let mut message =
            format!("lint violation found for rules: {}", rules.into_iter().collect::<Vec<_>>().join(", "));
        for warning in warnings {
            message.push_str(&format!("\n{warning}"));
        }
        Some(message)
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options() {
        let c = CheckConfig::parse("skip=JSONArgsRecommended, StageNameCasing;error=true").unwrap_or_default();
        assert!(c.error);
        assert!(!c.runs(CheckRule::StageNameCasing));
        assert!(c.runs(CheckRule::DuplicateStageName));
        assert!(CheckConfig::parse("skip=all").is_ok_and(|c| c.skip_all));
        assert_eq!(
            CheckConfig::parse("error=maybe"),
            Err("failed to parse check option \"error=maybe\": invalid syntax".into())
        );
        assert_eq!(CheckConfig::parse("skip"), Err("invalid check option \"skip\"".into()));
        assert_eq!(CheckConfig::parse("warn=x"), Err("invalid check option \"warn\"".into()));
    }
}
