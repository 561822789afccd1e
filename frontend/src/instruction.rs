//! The typed instructions of a Dockerfile.

use serde::Serialize;

use crate::{
    ArgDeclaration, CommandLine, CopyInstruction, FromInstruction, Healthcheck, KeyValue, Location, RunInstruction,
    Warning,
};

/// One instruction: where it is, its original text, and what it says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Instruction {
    pub location: Location,
    /// The physical lines as written, heredoc bodies included.
    pub text: String,
    pub kind: InstructionKind,
    /// Build-check warnings found while reading it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

impl Instruction {
    /// The keyword as written (`from`, `Run`, ...).
    pub fn keyword_as_written(&self) -> &str {
        self.text.split_whitespace().next().unwrap_or("")
    }
}

/// What an instruction says. Words are kept as written: quotes and
/// variables are resolved when the stage is planned, because that needs the
/// ARG and ENV values in scope at that point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstructionKind {
    From(FromInstruction),
    Run(RunInstruction),
    Cmd(CommandLine),
    Label(Vec<KeyValue>),
    Maintainer(String),
    Expose(Vec<String>),
    Env(Vec<KeyValue>),
    Add(CopyInstruction),
    Copy(CopyInstruction),
    Entrypoint(CommandLine),
    Volume(Vec<String>),
    User(String),
    Workdir(String),
    Arg(Vec<ArgDeclaration>),
    Onbuild(Box<Instruction>),
    Stopsignal(String),
    Healthcheck(Healthcheck),
    Shell(Vec<String>),
}

impl InstructionKind {
    /// The instruction keyword in upper case.
    pub fn keyword(&self) -> &'static str {
        match self {
            InstructionKind::From(_) => "FROM",
            InstructionKind::Run(_) => "RUN",
            InstructionKind::Cmd(_) => "CMD",
            InstructionKind::Label(_) => "LABEL",
            InstructionKind::Maintainer(_) => "MAINTAINER",
            InstructionKind::Expose(_) => "EXPOSE",
            InstructionKind::Env(_) => "ENV",
            InstructionKind::Add(_) => "ADD",
            InstructionKind::Copy(_) => "COPY",
            InstructionKind::Entrypoint(_) => "ENTRYPOINT",
            InstructionKind::Volume(_) => "VOLUME",
            InstructionKind::User(_) => "USER",
            InstructionKind::Workdir(_) => "WORKDIR",
            InstructionKind::Arg(_) => "ARG",
            InstructionKind::Onbuild(_) => "ONBUILD",
            InstructionKind::Stopsignal(_) => "STOPSIGNAL",
            InstructionKind::Healthcheck(_) => "HEALTHCHECK",
            InstructionKind::Shell(_) => "SHELL",
        }
    }
}
