//! Property tests: the front end never panics, whatever the input, and
//! substitution round-trips.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use memobuild_frontend::{plan, DockerIgnore, Dockerfile, ShellLexer};
use proptest::prelude::*;

/// Fragments that exercise every corner of the grammar.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("FROM ".to_string()),
        Just("FROM alpine AS a\n".to_string()),
        Just("FROM a\n".to_string()),
        Just("RUN ".to_string()),
        Just("COPY ".to_string()),
        Just("ADD ".to_string()),
        Just("ENV ".to_string()),
        Just("ARG ".to_string()),
        Just("LABEL ".to_string()),
        Just("ONBUILD ".to_string()),
        Just("HEALTHCHECK ".to_string()),
        Just("SHELL ".to_string()),
        Just("EXPOSE ".to_string()),
        Just("WORKDIR ".to_string()),
        Just("USER ".to_string()),
        Just("VOLUME ".to_string()),
        Just("STOPSIGNAL ".to_string()),
        Just("CMD ".to_string()),
        Just("--mount=type=cache,target=/x ".to_string()),
        Just("--mount=".to_string()),
        Just("--from=a ".to_string()),
        Just("--from=0 ".to_string()),
        Just("--exclude=* ".to_string()),
        Just("--interval=".to_string()),
        Just("--".to_string()),
        Just("<<EOF".to_string()),
        Just("<<-'E'".to_string()),
        Just("EOF".to_string()),
        Just("\n".to_string()),
        Just("\\\n".to_string()),
        Just("`\n".to_string()),
        Just("# escape=`\n".to_string()),
        Just("#".to_string()),
        Just("$".to_string()),
        Just("${".to_string()),
        Just("}".to_string()),
        Just(":-".to_string()),
        Just("[\"".to_string()),
        Just("\"]".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("=".to_string()),
        Just(" ".to_string()),
        Just("\t".to_string()),
        Just("../".to_string()),
        Just("*".to_string()),
        Just("[".to_string()),
        "[a-z0-9./]{1,6}",
        "\\PC{0,4}",
    ]
}

fn dockerfile_soup() -> impl Strategy<Value = String> {
    proptest::collection::vec(fragment(), 0..40).prop_map(|v| v.concat())
}

fn lookup(env: &HashMap<String, String>) -> impl FnMut(&str) -> Option<String> + '_ {
    move |name| env.get(name).cloned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = Dockerfile::parse("Dockerfile", &text);
    }

    #[test]
    fn parser_and_planner_never_panic_on_dockerfile_soup(text in dockerfile_soup()) {
        if let Ok(df) = Dockerfile::parse("Dockerfile", &text) {
            let ctx = common::context(&[("a", "1"), ("dir/b", "2"), ("link -> dir", "")]);
            let _ = plan(&df, &ctx, &common::options(&[("a", "1")]));
        }
    }

    #[test]
    fn errors_always_carry_a_location(text in dockerfile_soup()) {
        if let Err(e) = Dockerfile::parse("Dockerfile", &text) {
            prop_assert!(e.message().starts_with("Dockerfile:"), "{}", e.message());
        }
    }

    #[test]
    fn escaped_text_round_trips(text in "\\PC{0,40}", backtick in any::<bool>()) {
        let lexer = ShellLexer::new(if backtick { '`' } else { '\\' });
        let escaped = lexer.escape(&text);
        let env = HashMap::new();
        prop_assert_eq!(lexer.process_word(&escaped, &mut lookup(&env)).unwrap(), text);
    }

    #[test]
    fn variables_expand_to_their_value_verbatim(value in "\\PC{0,40}", name in "[A-Za-z_][A-Za-z0-9_]{0,8}") {
        let lexer = ShellLexer::new('\\');
        let env: HashMap<String, String> = [(name.clone(), value.clone())].into_iter().collect();
        let mut forms = vec![format!("${{{name}}}"), format!("\"${name}\""), format!("${{{name}-x}}")];
        if !value.is_empty() {
            forms.push(format!("${{{name}:-x}}"));
        }
        for form in forms {
            prop_assert_eq!(lexer.process_word(&form, &mut lookup(&env)).unwrap(), value.clone(), "{}", form);
        }
        let expect_plus = if value.is_empty() { String::new() } else { "alt".to_string() };
        prop_assert_eq!(lexer.process_word(&format!("${{{name}:+alt}}"), &mut lookup(&env)).unwrap(), expect_plus);
        prop_assert_eq!(lexer.process_word(&format!("${{{name}+alt}}"), &mut lookup(&env)).unwrap(), "alt");
    }

    #[test]
    fn defaults_apply_to_unset_variables(default in "\\PC{0,30}") {
        let lexer = ShellLexer::new('\\');
        let env = HashMap::new();
        let word = format!("${{unset:-{}}}", lexer.escape(&default).replace('}', "\\}"));
        prop_assert_eq!(lexer.process_word(&word, &mut lookup(&env)).unwrap(), default);
    }

    #[test]
    fn lexer_never_panics(text in "\\PC{0,60}") {
        let env: HashMap<String, String> = [("a".to_string(), "x y".to_string())].into_iter().collect();
        for escape in ['\\', '`'] {
            let lexer = ShellLexer::new(escape);
            let _ = lexer.process_word(&text, &mut lookup(&env));
            let _ = lexer.process_words(&text, &mut lookup(&env));
            let _ = lexer.process_heredoc(&text, &mut lookup(&env));
        }
    }

    #[test]
    fn dockerignore_never_panics(patterns in proptest::collection::vec("\\PC{0,12}", 0..6), path in "[a-z*?/.\\[\\]!]{0,20}") {
        if let Ok(ignore) = DockerIgnore::from_patterns(&patterns) {
            let _ = ignore.is_excluded(&path);
        }
        let _ = DockerIgnore::parse(&patterns.join("\n"));
    }

    #[test]
    fn unread_build_args_never_change_keys(name in "[A-Z]{3,8}", value in "\\PC{0,10}") {
        prop_assume!(!["TAG", "DIR"].contains(&name.as_str()));
        let df = "ARG TAG=1\nFROM alpine:$TAG\nARG DIR=/x\nWORKDIR $DIR\nCOPY a .\nRUN make\n";
        let ctx = common::context(&[("a", "1")]);
        let base = common::plan(df, &ctx, &common::options(&[]));
        let with = common::plan(df, &ctx, &common::options(&[(name.as_str(), value.as_str())]));
        prop_assert!(common::changed(&base, &with).is_empty());
    }
}
