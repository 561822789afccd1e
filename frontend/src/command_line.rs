//! The exec (JSON) and shell forms of RUN, CMD, ENTRYPOINT and HEALTHCHECK.

use serde::{Deserialize, Serialize};

/// A command as written: `["exe", "arg"]` or `exe arg`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandLine {
    /// JSON form: run directly, no shell, no variable expansion.
    Exec(Vec<String>),
    /// Shell form: run with the stage's SHELL (`/bin/sh -c` by default).
    Shell(String),
}

impl CommandLine {
    /// The exec form if `text` is a JSON array of strings, else the shell
    /// form of `text` as written.
    pub fn parse(text: &str) -> Self {
        match crate::words::json_array(text) {
            Some(argv) => CommandLine::Exec(argv),
            None => CommandLine::Shell(text.to_string()),
        }
    }

    /// The argv that runs this command under `shell`.
    pub fn argv(&self, shell: &[String]) -> Vec<String> {
        match self {
            CommandLine::Exec(argv) => argv.clone(),
            CommandLine::Shell(script) => {
                let mut argv = shell.to_vec();
                argv.push(script.clone());
                argv
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            CommandLine::Exec(argv) => argv.is_empty(),
            CommandLine::Shell(s) => s.trim().is_empty(),
        }
    }
}
