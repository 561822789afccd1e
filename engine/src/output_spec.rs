//! `--output` as buildx spells it: `type=oci,dest=out.tar`,
//! `type=oci,dest=DIR,tar=false`, `type=docker,dest=out.tar`,
//! `type=local,dest=DIR`, `type=registry`, or a bare `DIR` (local).

use std::path::PathBuf;
use std::str::FromStr;

use memobuild_oci::Compression;

use crate::export::ExportRequest;

/// One requested output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSpec {
    /// An OCI image layout, as a tar or a directory.
    Oci { dest: PathBuf, tar: bool, compression: Compression },
    /// A `docker save` archive (`docker load` reads it).
    Docker { dest: PathBuf, compression: Compression },
    /// Loaded into Docker with `docker load` (`--load`, `type=docker` without dest).
    Load { compression: Compression },
    /// The final filesystem, written to a directory.
    Local { dest: PathBuf },
    /// Pushed to every `-t` tag.
    Registry { compression: Compression },
}

impl OutputSpec {
    /// What the engine must export for this output (a filesystem needs
    /// only the layers, which every build returns).
    pub fn export_request(&self) -> Option<ExportRequest> {
        match self {
            OutputSpec::Oci { compression, .. }
            | OutputSpec::Docker { compression, .. }
            | OutputSpec::Load { compression } => Some(ExportRequest::Image(*compression)),
            OutputSpec::Registry { compression } => Some(ExportRequest::Registry(*compression)),
            OutputSpec::Local { .. } => None,
        }
    }
}

impl FromStr for OutputSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if !text.contains('=') {
            return Ok(OutputSpec::Local { dest: PathBuf::from(text) });
        }
        let mut kind = None;
        let mut dest = None;
        let mut tar = true;
        let mut compression = Compression::Gzip;
        for field in text.split(',') {
            let (key, value) =
                field.split_once('=').ok_or_else(|| format!("--output {text:?}: {field:?} is not KEY=VALUE"))?;
            match key.trim() {
                "type" => kind = Some(value.to_string()),
                "dest" => dest = Some(PathBuf::from(value)),
                "tar" => {
                    tar = value
                        .parse()
                        .map_err(|_| format!("--output {text:?}: tar must be true or false, not {value:?}"))?
                }
                "compression" => {
                    compression = value.parse().map_err(|_| {
                        format!("--output {text:?}: compression must be gzip, zstd or uncompressed, not {value:?}")
                    })?
                }
                // Accepted for compatibility; names come from -t.
                "name" | "push" | "oci-mediatypes" | "force-compression" | "compression-level" => {}
                other => return Err(format!("--output {text:?}: unknown option {other:?}")),
            }
        }
        let need_dest = |kind: &str| dest.clone().ok_or_else(|| format!("--output type={kind} needs dest=PATH"));
        match kind.as_deref() {
            Some("oci") => Ok(OutputSpec::Oci { dest: need_dest("oci")?, tar, compression }),
            Some("docker") => Ok(match dest {
                Some(dest) => OutputSpec::Docker { dest, compression },
                None => OutputSpec::Load { compression },
            }),
            Some("local") => Ok(OutputSpec::Local { dest: need_dest("local")? }),
            Some("registry") | Some("image") => Ok(OutputSpec::Registry { compression }),
            Some(other) => Err(format!("--output type={other} is not supported: use oci, docker, local or registry")),
            None => Err(format!("--output {text:?} needs type=oci|docker|local|registry")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn buildx_spellings() {
        assert_eq!(
            "type=oci,dest=out.tar".parse::<OutputSpec>().unwrap(),
            OutputSpec::Oci { dest: "out.tar".into(), tar: true, compression: Compression::Gzip }
        );
        assert_eq!(
            "type=oci,dest=dir,tar=false,compression=zstd".parse::<OutputSpec>().unwrap(),
            OutputSpec::Oci { dest: "dir".into(), tar: false, compression: Compression::Zstd }
        );
        assert_eq!("out".parse::<OutputSpec>().unwrap(), OutputSpec::Local { dest: "out".into() });
        assert_eq!(
            "type=registry".parse::<OutputSpec>().unwrap(),
            OutputSpec::Registry { compression: Compression::Gzip }
        );
        assert_eq!("type=docker".parse::<OutputSpec>().unwrap(), OutputSpec::Load { compression: Compression::Gzip });
        assert!("type=oci".parse::<OutputSpec>().unwrap_err().contains("needs dest"));
        assert!("type=tarball,dest=x".parse::<OutputSpec>().unwrap_err().contains("not supported"));
        assert!("type=oci,dest=x,colour=red".parse::<OutputSpec>().unwrap_err().contains("unknown option"));
    }
}
