//! `--secret`: values a RUN may read through `--mount=type=secret`, given
//! as in `docker buildx build` and read once when the build starts.

use std::collections::HashMap;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::str::FromStr;

use memobuild_proto::{Error, Result, ResultExt};

/// Where a secret's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// One `--secret` flag: `id=ID,src=PATH`, `id=ID,env=VAR`,
/// `type=env,id=ID,src=VAR`, or `id=ID` alone (the variable named ID).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSpec {
    pub id: String,
    pub source: SecretSource,
}

impl FromStr for SecretSpec {
    type Err = String;

    fn from_str(spec: &str) -> std::result::Result<SecretSpec, String> {
        let (mut id, mut kind, mut src, mut env) = (None, None, None, None);
        for field in spec.split(',').filter(|f| !f.is_empty()) {
            let (key, value) =
                field.split_once('=').ok_or_else(|| format!("--secret {spec:?}: {field:?} is not a key=value pair"))?;
            match key.to_ascii_lowercase().as_str() {
                "id" => id = Some(value.to_string()),
                "type" => match value {
                    "file" | "env" => kind = Some(value.to_string()),
                    other => return Err(format!("--secret {spec:?}: unsupported type {other:?} (file or env)")),
                },
                "src" | "source" => src = Some(value.to_string()),
                "env" => env = Some(value.to_string()),
                other => return Err(format!("--secret {spec:?}: unexpected key {other:?} (id, type, src or env)")),
            }
        }
        let id = id.filter(|i| !i.is_empty()).ok_or_else(|| format!("--secret {spec:?}: id= is required"))?;
        let source = match (kind.as_deref(), src, env) {
            (_, Some(_), Some(_)) => return Err(format!("--secret id={id}: give src or env, not both")),
            (Some("env"), Some(var), None) | (_, None, Some(var)) => SecretSource::Env(var),
            (_, Some(path), None) => SecretSource::File(PathBuf::from(path)),
            (Some("file"), None, None) => {
                return Err(format!("--secret id={id}: type=file needs src=PATH"));
            }
            // As buildx: the environment variable named like the secret.
            (_, None, None) => SecretSource::Env(id.clone()),
        };
        Ok(SecretSpec { id, source })
    }
}

/// The secrets of one build, by id. Values never leave this type except
/// into a RUN's mount or environment.
#[derive(Default)]
pub struct Secrets {
    values: HashMap<String, Vec<u8>>,
}

impl Secrets {
    /// Reads every secret; an error names the secret id and its file or
    /// variable, never the value.
    pub fn load(specs: &[SecretSpec]) -> Result<Secrets> {
        let mut values = HashMap::new();
        for spec in specs {
            let value = match &spec.source {
                SecretSource::File(path) => std::fs::read(path)
                    .with_context(|| format!("--secret id={}: reading {}", spec.id, path.display()))?,
                SecretSource::Env(var) => std::env::var_os(var)
                    .ok_or_else(|| {
                        Error::invalid_argument(format!(
                            "--secret id={}: environment variable {var} is not set",
                            spec.id
                        ))
                    })?
                    .into_vec(),
            };
            if values.insert(spec.id.clone(), value).is_some() {
                return Err(Error::invalid_argument(format!("--secret id={} is given more than once", spec.id)));
            }
        }
        Ok(Secrets { values })
    }

    /// Secrets given as values (a remote build's, from its request).
    pub fn from_values(values: impl IntoIterator<Item = (String, Vec<u8>)>) -> Secrets {
        Secrets { values: values.into_iter().collect() }
    }

    pub fn get(&self, id: &str) -> Option<&[u8]> {
        self.values.get(id).map(Vec::as_slice)
    }

    /// Every secret, to send with a remote build (never to store).
    pub fn values(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.values.iter().map(|(id, value)| (id.as_str(), value.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> std::result::Result<SecretSpec, String> {
        spec.parse()
    }

    #[test]
    fn buildx_forms() {
        let file = |id: &str, path: &str| SecretSpec { id: id.into(), source: SecretSource::File(path.into()) };
        let env = |id: &str, var: &str| SecretSpec { id: id.into(), source: SecretSource::Env(var.into()) };
        assert_eq!(parse("id=npm,src=/home/u/.npmrc"), Ok(file("npm", "/home/u/.npmrc")));
        assert_eq!(parse("id=npm,source=.npmrc,type=file"), Ok(file("npm", ".npmrc")));
        assert_eq!(parse("id=token,env=GH_TOKEN"), Ok(env("token", "GH_TOKEN")));
        assert_eq!(parse("type=env,id=token,src=GH_TOKEN"), Ok(env("token", "GH_TOKEN")));
        assert_eq!(parse("id=API_KEY"), Ok(env("API_KEY", "API_KEY")));
    }

    #[test]
    fn errors_name_the_problem() {
        for (spec, want) in [
            ("src=/x", "id= is required"),
            ("id=a,src=/x,env=B", "not both"),
            ("id=a,type=ssh", "unsupported type"),
            ("id=a,type=file", "needs src"),
            ("id=a,path=/x", "unexpected key \"path\""),
            ("id=a,src", "not a key=value pair"),
        ] {
            let e = parse(spec).expect_err(spec);
            assert!(e.contains(want), "{spec}: {e}");
        }
    }

    #[test]
    fn load_reads_files_and_never_shows_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t-value").expect("write");
        let specs = [SecretSpec { id: "tok".into(), source: SecretSource::File(path) }];
        let secrets = Secrets::load(&specs).expect("load");
        assert_eq!(secrets.get("tok"), Some(&b"s3cr3t-value"[..]));
        assert_eq!(secrets.get("other"), None);

        let missing = [SecretSpec { id: "gone".into(), source: SecretSource::File(dir.path().join("nope")) }];
        let e = Secrets::load(&missing).err().expect("missing file").to_string();
        assert!(e.contains("id=gone") && e.contains("nope"), "{e}");
        let unset = [SecretSpec { id: "v".into(), source: SecretSource::Env("MEMOBUILD_TEST_UNSET_VAR".into()) }];
        let e = Secrets::load(&unset).err().expect("unset variable").to_string();
        assert!(e.contains("id=v") && e.contains("MEMOBUILD_TEST_UNSET_VAR is not set"), "{e}");
        let twice = [specs[0].clone(), specs[0].clone()];
        let e = Secrets::load(&twice).err().expect("twice").to_string();
        assert!(e.contains("more than once"), "{e}");
    }
}
