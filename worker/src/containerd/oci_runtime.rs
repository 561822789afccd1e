use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use memobuild_proto::{Error, Result};

/// containerd's type URL of the runc shim's options.
const OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";
/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The OCI runtime that containerd's runc shim starts RUN steps (and
/// `container-image` actions) with: `--oci-runtime`, `[worker] oci_runtime`.
///
/// crun starts a container faster than runc (it is C; runc is a Go program
/// started for create, as the container's init and for start), so it is
/// taken when it can run here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum OciRuntime {
    /// crun when it is on `PATH` and can manage this host's cgroups, else runc.
    #[default]
    Auto,
    /// runc, as the shim finds it.
    Runc,
    /// A runc-compatible binary (crun, youki), by path.
    Binary(PathBuf),
}

impl FromStr for OciRuntime {
    type Err = Error;

    /// `auto`, `runc`, a path, or a name looked up on `PATH` (`crun`).
    fn from_str(setting: &str) -> Result<Self> {
        match setting {
            "auto" => Ok(OciRuntime::Auto),
            "runc" => Ok(OciRuntime::Runc),
            "" => Err(Error::invalid_argument("the OCI runtime is empty: give auto, runc, crun or a path")),
            path if path.contains('/') => {
                // The shim runs it from a directory of its own.
                let path = std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path));
                match is_executable(&path) {
                    true => Ok(OciRuntime::Binary(path)),
                    false => Err(Error::invalid_argument(format!(
                        "the OCI runtime {} is not an executable file",
                        path.display()
                    ))),
                }
            }
            name => find_on_path(name).map(OciRuntime::Binary).ok_or_else(|| {
                Error::invalid_argument(format!("the OCI runtime {name:?} is not on PATH (give auto, runc or a path)"))
            }),
        }
    }
}

impl OciRuntime {
    /// The binary to run, `None` for the shim's own runc; `Auto` is decided
    /// here, once per containerd client.
    pub(super) fn binary(&self) -> Option<PathBuf> {
        match self {
            OciRuntime::Runc => None,
            OciRuntime::Binary(path) => Some(path.clone()),
            OciRuntime::Auto => {
                let crun = find_on_path("crun");
                let layout = CgroupLayout::read();
                let chosen = crun.filter(|_| layout.crun_can_manage());
                let runtime = chosen.as_deref().map_or_else(|| "runc".to_string(), |p| p.display().to_string());
                tracing::info!(%runtime, ?layout, "chose the OCI runtime of RUN steps (crun where it can run)");
                chosen
            }
        }
    }
}

/// The runc shim's options naming `binary`.
pub(super) fn shim_options(binary: &Path) -> prost_types::Any {
    /// The one field of `containerd.runc.v1.Options` MemoBuild sets.
    #[derive(Clone, PartialEq, prost::Message)]
    struct RuncOptions {
        #[prost(string, tag = "6")]
        binary_name: String,
    }
    let options = RuncOptions { binary_name: binary.to_string_lossy().into_owned() };
    prost_types::Any { type_url: OPTIONS_TYPE_URL.to_string(), value: prost::Message::encode_to_vec(&options) }
}

/// `name` in a directory of `PATH` (or `/usr/bin`, `/usr/local/bin`), as an
/// executable file. Relative directories of `PATH` are skipped: the path
/// found is run by other processes, from other directories.
pub(super) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How this host mounts its cgroups.
#[derive(Clone, Debug, PartialEq, Eq)]
enum CgroupLayout {
    /// cgroup v2 alone.
    Unified,
    /// cgroup v1 alone.
    Legacy,
    /// v1 with v2 beside it at `unified/`, which has these controllers.
    Hybrid { v2_controllers: String },
    /// No cgroup file system at the usual place.
    Unknown,
}

impl CgroupLayout {
    fn read() -> Self {
        use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, TMPFS_MAGIC};
        let root = Path::new(CGROUP_ROOT);
        match statfs(root).map(|s| s.filesystem_type()) {
            Ok(kind) if kind == CGROUP2_SUPER_MAGIC => CgroupLayout::Unified,
            Ok(kind) if kind == TMPFS_MAGIC => match statfs(&root.join("unified")).map(|s| s.filesystem_type()) {
                Ok(kind) if kind == CGROUP2_SUPER_MAGIC => CgroupLayout::Hybrid {
                    v2_controllers: std::fs::read_to_string(root.join("unified/cgroup.controllers"))
                        .map(|c| c.trim().to_string())
                        .unwrap_or_else(|_| "unknown".to_string()),
                },
                _ => CgroupLayout::Legacy,
            },
            _ => CgroupLayout::Unknown,
        }
    }

    /// crun refuses a hybrid layout whose v2 part has controllers.
    fn crun_can_manage(&self) -> bool {
        match self {
            CgroupLayout::Unified | CgroupLayout::Legacy => true,
            CgroupLayout::Hybrid { v2_controllers } => v2_controllers.is_empty(),
            CgroupLayout::Unknown => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_to_runtimes() {
        assert_eq!("auto".parse::<OciRuntime>().unwrap(), OciRuntime::Auto);
        assert_eq!("runc".parse::<OciRuntime>().unwrap(), OciRuntime::Runc);
        assert_eq!("/bin/sh".parse::<OciRuntime>().unwrap(), OciRuntime::Binary(PathBuf::from("/bin/sh")));
        // A relative path is made absolute: the shim runs it from elsewhere.
        let up = "../".repeat(std::env::current_dir().unwrap().components().count());
        let relative = format!("{up}bin/sh").parse::<OciRuntime>().unwrap();
        assert!(matches!(&relative, OciRuntime::Binary(p) if p.is_absolute() && p.ends_with("bin/sh")), "{relative:?}");
        assert_eq!("sh".parse::<OciRuntime>().unwrap().binary().map(|p| p.ends_with("sh")), Some(true));
        assert_eq!(OciRuntime::Runc.binary(), None);
    }

    #[test]
    fn bad_settings_name_the_problem() {
        let missing = "/nonexistent/crun".parse::<OciRuntime>().unwrap_err();
        assert!(missing.message().contains("/nonexistent/crun is not an executable file"), "{}", missing.message());
        let directory = "/usr/bin/".parse::<OciRuntime>().unwrap_err();
        assert!(directory.message().contains("not an executable file"), "{}", directory.message());
        let unknown = "no-such-runtime-here".parse::<OciRuntime>().unwrap_err();
        assert!(unknown.message().contains("\"no-such-runtime-here\" is not on PATH"), "{}", unknown.message());
        assert!("".parse::<OciRuntime>().is_err());
    }

    #[test]
    fn crun_is_chosen_only_where_it_manages_the_cgroups() {
        assert!(CgroupLayout::Unified.crun_can_manage());
        assert!(CgroupLayout::Legacy.crun_can_manage());
        assert!(CgroupLayout::Hybrid { v2_controllers: String::new() }.crun_can_manage());
        assert!(!CgroupLayout::Hybrid { v2_controllers: "hugetlb".into() }.crun_can_manage());
        assert!(!CgroupLayout::Unknown.crun_can_manage());
    }

    #[test]
    fn the_shim_options_carry_the_binary() {
        let options = shim_options(Path::new("/usr/bin/crun"));
        assert_eq!(options.type_url, "containerd.runc.v1.Options");
        // Field 6 (binary_name), length-delimited: tag byte 6 << 3 | 2.
        assert_eq!(options.value[0], 0x32);
        assert_eq!(&options.value[2..], b"/usr/bin/crun");
    }
}
