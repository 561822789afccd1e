//! `RUN <<EOF` whose body starts with `#!`: as in BuildKit, the body is a
//! file (mode 0755) bound read-only at `/dev/pipes/<NAME>`, and the step
//! runs that file, so the shebang line picks the interpreter and its
//! argument (`#!/usr/bin/awk -f`). `/dev` is the container's own tmpfs:
//! the script never lands in a layer.

use std::os::unix::fs::PermissionsExt;

use memobuild_frontend::{RunHeredoc, StepDefinition};
use memobuild_proto::{Result, ResultExt};

use crate::containerd::SpecMount;

pub struct HeredocScript {
    dir: tempfile::TempDir,
    target: String,
}

impl HeredocScript {
    /// The script file of a RUN that executes one; `None` for any other step.
    pub fn create(definition: &StepDefinition) -> Result<Option<HeredocScript>> {
        let StepDefinition::Run { argv, heredocs, .. } = definition else { return Ok(None) };
        let Some(script) = RunHeredoc::executed_script(argv, heredocs) else { return Ok(None) };
        let dir = tempfile::tempdir().context("creating a directory for a RUN heredoc script")?;
        let path = dir.path().join("script");
        std::fs::write(&path, &script.content).with_context(|| format!("writing heredoc {:?}", script.name))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making heredoc {:?} executable", script.name))?;
        Ok(Some(HeredocScript { dir, target: script.script_path() }))
    }

    pub fn mount(&self) -> SpecMount {
        SpecMount::Bind { source: self.dir.path().join("script"), target: self.target.clone(), readonly: true }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use memobuild_frontend::{NetworkMode, SecurityMode};

    use super::*;

    fn run(script: &str, content: &str) -> StepDefinition {
        StepDefinition::Run {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            heredocs: vec![RunHeredoc {
                name: "EOF".into(),
                content: content.into(),
                expand: true,
                file_descriptor: 0,
            }],
            env: BTreeMap::new(),
            workdir: "/".into(),
            user: None,
            network: NetworkMode::Default,
            security: SecurityMode::Sandbox,
            mounts: Vec::new(),
        }
    }

    #[test]
    fn a_shebang_heredoc_is_an_executable_file_at_dev_pipes() {
        let body = "#!/usr/bin/awk -f\nBEGIN { print 1 }\n";
        let script = HeredocScript::create(&run("<<EOF", body)).unwrap().expect("a script");
        let SpecMount::Bind { source, target, readonly } = script.mount() else { panic!("a bind mount") };
        assert_eq!((target.as_str(), readonly), ("/dev/pipes/EOF", true));
        assert_eq!(std::fs::read_to_string(&source).unwrap(), body);
        assert_eq!(std::fs::metadata(&source).unwrap().permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn other_heredocs_run_through_the_shell() {
        assert!(HeredocScript::create(&run("<<EOF", "echo hi\n")).unwrap().is_none());
        assert!(HeredocScript::create(&run("cat <<EOF", "#!/bin/sh\n")).unwrap().is_none());
    }
}
