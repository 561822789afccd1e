//! BuildKit's build-check rules, by the names `# check=skip=...`,
//! `BUILDKIT_DOCKERFILE_CHECK` and `--check` use.

use std::fmt;

use serde::{Serialize, Serializer};

/// One build-check rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckRule {
    StageNameCasing,
    FromAsCasing,
    NoEmptyContinuation,
    ConsistentInstructionCasing,
    DuplicateStageName,
    ReservedStageName,
    JsonArgsRecommended,
    MaintainerDeprecated,
    UndefinedArgInFrom,
    WorkdirRelativePath,
    MultipleInstructionsDisallowed,
    LegacyKeyValueFormat,
    RedundantTargetPlatform,
    SecretsUsedInArgOrEnv,
    InvalidDefaultArgInFrom,
    FromPlatformFlagConstDisallowed,
    ExposeProtoCasing,
    ExposeInvalidFormat,
}

impl CheckRule {
    /// The rule's name, as BuildKit spells it.
    pub fn name(self) -> &'static str {
        match self {
            CheckRule::StageNameCasing => "StageNameCasing",
            CheckRule::FromAsCasing => "FromAsCasing",
            CheckRule::NoEmptyContinuation => "NoEmptyContinuation",
            CheckRule::ConsistentInstructionCasing => "ConsistentInstructionCasing",
            CheckRule::DuplicateStageName => "DuplicateStageName",
            CheckRule::ReservedStageName => "ReservedStageName",
            CheckRule::JsonArgsRecommended => "JSONArgsRecommended",
            CheckRule::MaintainerDeprecated => "MaintainerDeprecated",
            CheckRule::UndefinedArgInFrom => "UndefinedArgInFrom",
            CheckRule::WorkdirRelativePath => "WorkdirRelativePath",
            CheckRule::MultipleInstructionsDisallowed => "MultipleInstructionsDisallowed",
            CheckRule::LegacyKeyValueFormat => "LegacyKeyValueFormat",
            CheckRule::RedundantTargetPlatform => "RedundantTargetPlatform",
            CheckRule::SecretsUsedInArgOrEnv => "SecretsUsedInArgOrEnv",
            CheckRule::InvalidDefaultArgInFrom => "InvalidDefaultArgInFrom",
            CheckRule::FromPlatformFlagConstDisallowed => "FromPlatformFlagConstDisallowed",
            CheckRule::ExposeProtoCasing => "ExposeProtoCasing",
            CheckRule::ExposeInvalidFormat => "ExposeInvalidFormat",
        }
    }

    /// The page that explains the rule.
    pub fn url(self) -> String {
        let mut slug = String::new();
        for (i, c) in self.name().replace("JSON", "Json").chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                slug.push('-');
            }
            slug.push(c.to_ascii_lowercase());
        }
        format!("https://docs.docker.com/go/dockerfile/rule/{slug}/")
    }

    /// Whether BuildKit reports the rule while reading the whole file (so
    /// for every stage), rather than while building a stage the target
    /// needs.
    pub fn whole_file(self) -> bool {
        matches!(
            self,
            CheckRule::StageNameCasing
                | CheckRule::FromAsCasing
                | CheckRule::NoEmptyContinuation
                | CheckRule::ConsistentInstructionCasing
                | CheckRule::DuplicateStageName
                | CheckRule::ReservedStageName
                | CheckRule::MaintainerDeprecated
                | CheckRule::UndefinedArgInFrom
                | CheckRule::RedundantTargetPlatform
                | CheckRule::InvalidDefaultArgInFrom
                | CheckRule::FromPlatformFlagConstDisallowed
        )
    }
}

impl fmt::Display for CheckRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for CheckRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_docs() {
        assert_eq!(
            CheckRule::JsonArgsRecommended.url(),
            "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/"
        );
        assert_eq!(
            CheckRule::DuplicateStageName.url(),
            "https://docs.docker.com/go/dockerfile/rule/duplicate-stage-name/"
        );
    }
}
