//! Variable expansion bound to one Dockerfile: the lexer with its escape
//! character, the build options, the global ARG scope and the stage names.

use memobuild_proto::{Error, Result};

use crate::{
    ArgDeclaration, BuildOptions, Instruction, InstructionKind, KeyValue, Location, Reads, Scope, ShellLexer,
    SourceText,
};

/// Expands words and applies ARG/ENV to scopes, with errors located in the
/// Dockerfile.
pub struct Expander<'a> {
    pub source: &'a SourceText,
    pub lexer: ShellLexer,
    pub options: &'a BuildOptions,
    /// ARGs declared before the first FROM (and the automatic platform ARGs).
    pub global: Scope,
    /// Stage names by index (lowercase).
    pub stage_names: Vec<Option<String>>,
}

impl<'a> Expander<'a> {
    pub fn error(&self, location: Location, message: impl AsRef<str>) -> Error {
        self.source.error(location, message)
    }

    /// One word: quotes removed, variables expanded from `scope`.
    pub fn word(&self, scope: &Scope, reads: &mut Reads, text: &str, at: Location) -> Result<String> {
        self.lexer
            .process_word(text, &mut scope.recorder(reads))
            .map_err(|e| self.error(at, format!("{e} in {text:?}")))
    }

    /// Several words, split after expansion.
    pub fn words(&self, scope: &Scope, reads: &mut Reads, text: &str, at: Location) -> Result<Vec<String>> {
        self.lexer
            .process_words(text, &mut scope.recorder(reads))
            .map_err(|e| self.error(at, format!("{e} in {text:?}")))
    }

    /// Applies `ARG` declarations to `scope`: a `--build-arg` wins, then the
    /// default (expanded), then the global ARG of the same name. `global` is
    /// `None` when declaring the global ARGs themselves.
    pub fn declare_args(
        &self,
        scope: &mut Scope,
        reads: &mut Reads,
        decls: &[ArgDeclaration],
        at: Location,
        global: Option<&Scope>,
    ) -> Result<Vec<(String, Option<String>)>> {
        // In a stage, all defaults of one ARG instruction are expanded with
        // the scope from before it (as Docker expands a whole instruction);
        // global ARGs are evaluated one by one.
        let before = global.map(|_| scope.clone());
        let mut out = Vec::new();
        for decl in decls {
            let value = if let Some(v) = self.options.build_args.get(&decl.name) {
                Some(v.clone())
            } else if let Some(default) = &decl.default {
                let from = before.as_ref().unwrap_or(scope);
                Some(self.word(from, reads, default, at)?)
            } else {
                global.and_then(|g| g.arg(&decl.name).cloned().flatten())
            };
            scope.declare_arg(&decl.name, value.clone());
            out.push((decl.name.clone(), value));
        }
        Ok(out)
    }

    /// The global scope: the automatic platform ARGs, then the ARGs
    /// declared before the first FROM.
    pub fn global_scope(&self, global_args: &[&Instruction]) -> Result<Scope> {
        let mut global = Scope::default();
        for (name, value) in self.options.platform_args() {
            global.declare_arg(&name, Some(value));
        }
        for instruction in global_args {
            if let InstructionKind::Arg(decls) = &instruction.kind {
                self.declare_args(&mut global, &mut Reads::new(), decls, instruction.location, None)?;
            }
        }
        Ok(global)
    }

    /// Applies `ENV` to `scope`; all pairs are expanded with the values from
    /// before the instruction, as Docker does.
    pub fn set_env(
        &self,
        scope: &mut Scope,
        reads: &mut Reads,
        pairs: &[KeyValue],
        at: Location,
    ) -> Result<Vec<(String, String)>> {
        let before = scope.clone();
        let mut out = Vec::new();
        for kv in pairs {
            let key = self.word(&before, reads, &kv.key, at)?;
            if key.is_empty() {
                return Err(self.error(at, "ENV names can not be blank"));
            }
            let value = self.word(&before, reads, &kv.value, at)?;
            scope.set_env(&key, value.clone());
            out.push((key, value));
        }
        Ok(out)
    }

    /// The stage a FROM in stage `current` is based on: the last earlier
    /// stage of that exact name (`FROM node AS node` is the image `node`;
    /// BuildKit matches the name as written, so `FROM Build` is an image).
    pub fn base_stage(&self, name: &str, current: usize) -> Option<usize> {
        self.stage_names[..current.min(self.stage_names.len())].iter().rposition(|n| n.as_deref() == Some(name))
    }

    /// The stage a `--from`/`from=`/`--target` name refers to: the last
    /// stage of that name (case-insensitive; with duplicate names the later
    /// stage wins) or, for `COPY --from`, a stage index.
    pub fn stage_ref(&self, name: &str, allow_index: bool) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        if let Some(i) = self.stage_names.iter().rposition(|n| n.as_deref() == Some(lower.as_str())) {
            return Some(i);
        }
        if allow_index && !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
            return name.parse::<usize>().ok().filter(|i| *i < self.stage_names.len());
        }
        None
    }
}
