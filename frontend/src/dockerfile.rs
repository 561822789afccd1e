//! A parsed Dockerfile.

use memobuild_proto::Result;
use serde::Serialize;

use crate::parser::Parser;
use crate::{Directives, Instruction, LineReader, SourceText};

/// A Dockerfile: its directives and instructions, in order.
#[derive(Clone, Debug, Serialize)]
pub struct Dockerfile {
    pub name: String,
    pub directives: Directives,
    pub instructions: Vec<Instruction>,
    #[serde(skip)]
    source: SourceText,
}

impl Dockerfile {
    /// Parses `text`; `name` is used in error messages (`Dockerfile:3:1: ...`).
    /// Only syntax is checked here; stage-level rules are checked when a
    /// build graph is planned.
    pub fn parse(name: &str, text: &str) -> Result<Dockerfile> {
        let source = SourceText::new(name, text);
        let (directives, lines) = LineReader::new(&source)?.read_all()?;
        let parser = Parser::new(&source, directives.escape);
        let instructions = lines.iter().map(|l| parser.instruction(l)).collect::<Result<Vec<_>>>()?;
        Ok(Dockerfile { name: name.to_string(), directives, instructions, source })
    }

    /// The source, to render errors found later.
    pub fn source(&self) -> &SourceText {
        &self.source
    }
}
