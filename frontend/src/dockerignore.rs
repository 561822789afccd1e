//! `.dockerignore`: which context paths are left out of the build context.

use std::path::{Path, PathBuf};

use memobuild_proto::{Error, Result};

use crate::IgnorePattern;

/// The patterns of a `.dockerignore` file, in order; the last pattern that
/// matches a path (or one of its parent directories) decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerIgnore {
    patterns: Vec<IgnorePattern>,
    /// Where the patterns came from, for messages.
    pub origin: Option<PathBuf>,
}

impl DockerIgnore {
    /// Parses `.dockerignore` text: one pattern per line, `#` at the start of
    /// a line is a comment, blank lines are skipped, whitespace is trimmed.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let pattern = IgnorePattern::new(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            patterns.push(pattern);
        }
        Ok(DockerIgnore { patterns, origin: None })
    }

    /// Builds the matcher from a list of patterns.
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S]) -> std::result::Result<Self, String> {
        let patterns = patterns
            .iter()
            .filter(|p| !p.as_ref().trim().is_empty())
            .map(|p| IgnorePattern::new(p.as_ref()))
            .collect::<std::result::Result<_, _>>()?;
        Ok(DockerIgnore { patterns, origin: None })
    }

    /// Reads the ignore file for a build: `<dockerfile>.dockerignore` next to
    /// the Dockerfile if it exists, else `<context>/.dockerignore`, else none.
    pub fn load(context: &Path, dockerfile: Option<&Path>) -> Result<Self> {
        let mut candidates = Vec::new();
        if let Some(df) = dockerfile {
            let mut name = df.as_os_str().to_os_string();
            name.push(".dockerignore");
            candidates.push(PathBuf::from(name));
        }
        candidates.push(context.join(".dockerignore"));
        for path in candidates {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let mut ignore =
                        Self::parse(&text).map_err(|e| Error::invalid_argument(format!("{}: {e}", path.display())))?;
                    ignore.origin = Some(path);
                    return Ok(ignore);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::from(e).context(format!("reading {}", path.display()))),
            }
        }
        Ok(DockerIgnore::default())
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether some pattern is an exception (`!`), so an excluded directory
    /// may still hold included paths.
    pub fn has_exclusions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out.
    pub fn is_excluded(&self, path: &str) -> bool {
        let path = crate::ignore_pattern::clean_path(path);
        let parents: Vec<&str> = match path.rfind('/') {
            Some(i) => path[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut excluded = false;
        for pattern in &self.patterns {
            // An include only matters if not yet excluded, and vice versa.
            if pattern.exclusion != excluded {
                continue;
            }
            let mut matched = pattern.matches(&path);
            let mut prefix = String::new();
            for dir in &parents {
                if matched {
                    break;
                }
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(dir);
                matched = pattern.matches(&prefix);
            }
            if matched {
                excluded = !pattern.exclusion;
            }
        }
        excluded
    }
}
