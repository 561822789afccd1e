//! Collects the build-check warnings of one plan, minus the rules the
//! check configuration skips.

use memobuild_proto::{Error, Result};

use crate::{CheckConfig, Warning, CHECK_BUILD_ARG};

pub struct Linter {
    config: CheckConfig,
    warnings: Vec<Warning>,
}

impl Linter {
    /// The configuration of a build: the `BUILDKIT_DOCKERFILE_CHECK` build
    /// argument if given, else the `# check=` directive.
    pub fn new(file: &str, directive: Option<&str>, build_arg: Option<&str>) -> Result<Linter> {
        let text = build_arg.or(directive).unwrap_or("");
        let config = CheckConfig::parse(text).map_err(|e| {
            let source = if build_arg.is_some() { CHECK_BUILD_ARG } else { "the check directive" };
            Error::invalid_argument(format!("{file}: failed to parse check options ({source}): {e}"))
        })?;
        Ok(Linter { config, warnings: Vec::new() })
    }

    pub fn warn(&mut self, warning: Warning) {
        if self.config.runs(warning.rule) && !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    pub fn extend(&mut self, warnings: impl IntoIterator<Item = Warning>) {
        for warning in warnings {
            self.warn(warning);
        }
    }

    /// The warnings in Dockerfile order; with `error=true` and any left,
    /// BuildKit's "lint violation" error (unless `report_only`, as for
    /// `--check`, which reports the warnings themselves).
    pub fn finish(mut self, file: &str, report_only: bool) -> Result<Vec<Warning>> {
        self.warnings.sort_by_key(|w| w.location);
        match self.config.violation(&self.warnings) {
            Some(message) if !report_only => Err(Error::invalid_argument(format!("{file}: {message}"))),
            _ => Ok(self.warnings),
        }
    }
}
