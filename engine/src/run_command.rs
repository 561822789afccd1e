//! The argv a RUN executes, heredocs included.

use memobuild_frontend::{Heredoc, RunHeredoc};

/// With heredocs, a shell-form RUN gets their bodies appended to its
/// script, so the shell feeds them exactly as written (`<<-` and quoted
/// delimiters keep their meaning). `RUN <<EOF` alone runs the body as the
/// script; a body starting with `#!` runs under that interpreter.
pub fn run_argv(argv: &[String], heredocs: &[RunHeredoc]) -> Vec<String> {
    let Some((script, shell)) = argv.split_last() else { return argv.to_vec() };
    if heredocs.is_empty() || shell.is_empty() {
        return argv.to_vec();
    }
    let mut out = shell.to_vec();
    if let (Some(only), true) =
        (heredocs.first(), heredocs.len() == 1 && Heredoc::parse_opener(script.trim()).is_some())
    {
        match only.content.strip_prefix("#!") {
            Some(rest) => {
                let interpreter = rest.lines().next().unwrap_or("").trim();
                out.push(format!("{interpreter} <<'{0}'\n{1}{0}\n", only.name, terminated(&only.content)));
            }
            None => out.push(only.content.clone()),
        }
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
        assert_eq!(
            run_argv(&sh("<<EOF"), &[heredoc("EOF", "#!/usr/bin/env python3\nprint(1)\n")]),
            sh("/usr/bin/env python3 <<'EOF'\n#!/usr/bin/env python3\nprint(1)\nEOF\n")
        );
        assert_eq!(
            run_argv(&sh("cat <<A >/a && cat <<'B' >/b"), &[heredoc("A", "x"), heredoc("B", "y\n")]),
            sh("cat <<A >/a && cat <<'B' >/b\nx\nA\ny\nB\n")
        );
        assert_eq!(run_argv(&sh("true"), &[]), sh("true"));
    }
}
