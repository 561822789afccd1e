//! The argv a RUN executes, heredocs included.

use memobuild_frontend::{Heredoc, RunHeredoc};

/// With heredocs, a shell-form RUN gets their bodies appended to its
/// script, so the shell feeds them exactly as written (`<<-` and quoted
/// delimiters keep their meaning). `RUN <<EOF` alone runs the body as the
/// script; a body starting with `#!` is a file the worker mounts at
/// [`RunHeredoc::script_path`], and that file is what runs.
pub fn run_argv(argv: &[String], heredocs: &[RunHeredoc]) -> Vec<String> {
    let Some((script, shell)) = argv.split_last() else { return argv.to_vec() };
    if heredocs.is_empty() || shell.is_empty() {
        return argv.to_vec();
    }
    if let Some(executed) = RunHeredoc::executed_script(argv, heredocs) {
        return vec![executed.script_path()];
    }
    let mut out = shell.to_vec();
    if let (Some(only), true) =
        (heredocs.first(), heredocs.len() == 1 && Heredoc::parse_opener(script.trim()).is_some())
    {
        out.push(only.content.clone());
        return out;
    }
    let mut full = script.clone();
    full.push('\n');
    for heredoc in heredocs {
        full.push_str(&terminated(&heredoc.content));
        full.push_str(&heredoc.name);
        full.push('\n');
    }
    out.push(full);
    out
}

fn terminated(content: &str) -> String {
    if content.is_empty() || content.ends_with('\n') {
        content.to_string()
    } else {
        format!("{content}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heredoc(name: &str, content: &str) -> RunHeredoc {
        RunHeredoc { name: name.into(), content: content.into(), expand: true, file_descriptor: 0 }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn heredoc_forms() {
        assert_eq!(run_argv(&sh("<<EOF"), &[heredoc("EOF", "echo hi\n")]), sh("echo hi\n"));
        // BuildKit runs a shebang script as a file, not through the shell.
        assert_eq!(
            run_argv(&sh("<<EOF"), &[heredoc("EOF", "#!/usr/bin/awk -f\nBEGIN { print 1 }\n")]),
            vec!["/dev/pipes/EOF".to_string()]
        );
        assert_eq!(run_argv(&sh("<<-PY"), &[heredoc("PY", "#!/usr/bin/env python3\n")]), vec!["/dev/pipes/PY"]);
        // Only `RUN <<EOF` alone: after a command, the shell feeds the body.
        assert_eq!(run_argv(&sh("cat <<EOF"), &[heredoc("EOF", "#!/bin/sh\n")]), sh("cat <<EOF\n#!/bin/sh\nEOF\n"));
        assert_eq!(
            run_argv(&sh("cat <<A >/a && cat <<'B' >/b"), &[heredoc("A", "x"), heredoc("B", "y\n")]),
            sh("cat <<A >/a && cat <<'B' >/b\nx\nA\ny\nB\n")
        );
        assert_eq!(run_argv(&sh("true"), &[]), sh("true"));
    }
}
