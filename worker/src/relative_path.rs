use std::fmt;
use std::path::{Path, PathBuf};

use memobuild_proto::{Error, Result};

/// A normalized path inside the input root: plain components only, never
/// `.`, `..` or empty ones, so joining it to the root never leaves the root
/// (as long as no component on disk is a symlink, which callers check).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct RelativePath {
    components: Vec<String>,
}

impl RelativePath {
    /// The root itself.
    pub fn root() -> Self {
        Self::default()
    }

    /// `Command.working_directory`, relative to the input root.
    pub fn working_directory(path: &str) -> Result<Self> {
        Self::root().resolve(path).map_err(|why| {
            Error::invalid_argument(format!("working directory {path:?}: {why}; it must stay inside the input root"))
        })
    }

    /// An output path of the command, relative to the working directory
    /// `self`; `..` may climb out of the working directory but never out of
    /// the input root.
    pub fn output(&self, path: &str) -> Result<Self> {
        if path.is_empty() {
            return Err(Error::invalid_argument("output path \"\": an output path may not be empty"));
        }
        let resolved = self.resolve(path).map_err(|why| {
            Error::invalid_argument(format!("output path {path:?}: {why}; it must stay inside the input root"))
        })?;
        if resolved.components.is_empty() {
            return Err(Error::invalid_argument(format!("output path {path:?} names the input root itself")));
        }
        Ok(resolved)
    }

    fn resolve(&self, path: &str) -> std::result::Result<Self, &'static str> {
        if path.starts_with('/') {
            return Err("the path is absolute");
        }
        if path.contains('\0') {
            return Err("the path contains a NUL byte");
        }
        let mut components = self.components.clone();
        for component in path.split('/') {
            match component {
                "" | "." => {}
                ".." => {
                    if components.pop().is_none() {
                        return Err("the path climbs out of the input root with ..");
                    }
                }
                name => components.push(name.to_string()),
            }
        }
        Ok(RelativePath { components })
    }

    /// `self/name`, for a name already checked with [`unsafe_name_reason`].
    pub fn child(&self, name: &str) -> Self {
        let mut components = self.components.clone();
        components.push(name.to_string());
        RelativePath { components }
    }

    pub fn components(&self) -> &[String] {
        &self.components
    }

    pub fn parent(&self) -> Option<Self> {
        let (_, parent) = self.components.split_last()?;
        Some(RelativePath { components: parent.to_vec() })
    }

    /// The path on disk under `root`.
    pub fn under(&self, root: &Path) -> PathBuf {
        let mut path = root.to_path_buf();
        path.extend(&self.components);
        path
    }
}

/// `a/b/c`, or `.` for the root.
impl fmt::Display for RelativePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.components.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&self.components.join("/"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_stay_inside_the_root() {
        let wd = RelativePath::working_directory("pkg/sub").unwrap();
        assert_eq!(wd.output("out/a.txt").unwrap().to_string(), "pkg/sub/out/a.txt");
        assert_eq!(wd.output("../x").unwrap().to_string(), "pkg/x");
        assert_eq!(wd.output("./y//z").unwrap().to_string(), "pkg/sub/y/z");
        for bad in ["../../../etc/passwd", "/etc/passwd", "", "../..", "a\0"] {
            let e = wd.output(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        let e = RelativePath::working_directory("../x").unwrap_err();
        assert!(e.message().contains("working directory \"../x\""), "{e}");
        assert_eq!(RelativePath::working_directory("").unwrap(), RelativePath::root());
        assert_eq!(wd.under(Path::new("/r")), PathBuf::from("/r/pkg/sub"));
    }
}
