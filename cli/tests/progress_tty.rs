//! The live progress view, as a user sees it on a terminal: `memobuild
//! build` runs under script(1), which gives it a pseudo-terminal.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use std::process::Command;

use harness::{fixture, Project};

/// Runs `memobuild build` with default progress on a pseudo-terminal and
/// returns (success, everything it drew).
fn build_on_a_terminal(project: &Project) -> (bool, String) {
    let command = format!(
        "{} build --state-dir {} {}",
        env!("CARGO_BIN_EXE_memobuild"),
        project.state_dir().display(),
        project.path().display()
    );
    let out = Command::new("script").args(["-qefc", &command, "/dev/null"]).env("TERM", "xterm").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The text without terminal escape sequences.
fn plain_text(drawn: &str) -> String {
    let mut text = String::new();
    let mut chars = drawn.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            text.push(c);
        }
    }
    text
}

#[test]
fn a_terminal_gets_the_live_view_with_cached_marks_and_failure_tails() {
    let project = Project::new(&[("input.txt", "one\n")]);
    project.write(
        "Dockerfile",
        &format!(
            "FROM {}\nCOPY input.txt /input.txt\nRUN echo step-output-line && sleep 1 && cp /input.txt /copy.txt\n",
            fixture().base()
        ),
    );
    let (ok, drawn) = build_on_a_terminal(&project);
    let text = plain_text(&drawn);
    assert!(ok, "{text}");
    // A live view redraws lines in place; plain progress never moves the cursor.
    assert!(drawn.contains("\u{1b}["), "no terminal drawing:\n{drawn}");
    assert!(text.contains("RUN echo step-output-line"), "{text}");
    assert!(text.contains("step-output-line"), "the RUN's output is shown:\n{text}");
    assert!(text.contains("DONE"), "{text}");
    assert!(text.contains("2 steps ran, 0 cached"), "{text}");

    let (ok, drawn) = build_on_a_terminal(&project);
    let text = plain_text(&drawn);
    assert!(ok, "{text}");
    assert!(text.contains("CACHED"), "{text}");
    assert!(text.contains("0 steps ran, 2 cached"), "{text}");

    project.write("Dockerfile", &format!("FROM {}\nRUN echo last-words-before-failing && exit 3\n", fixture().base()));
    let (ok, drawn) = build_on_a_terminal(&project);
    let text = plain_text(&drawn);
    assert!(!ok, "{text}");
    assert!(text.contains("ERROR"), "{text}");
    assert!(text.contains("> last-words-before-failing"), "the failing step's last lines:\n{text}");
    assert!(text.contains("exit code: 3"), "{text}");
}
