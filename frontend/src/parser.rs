//! Turns logical lines into typed [`Instruction`]s.

use memobuild_proto::Result;

use crate::flag_set::{FlagKind, FlagSet};
use crate::go_duration::parse_go_duration;
use crate::words::{extract_flags, json_array, raw_words, split_keyword, whitespace_words, Word};
use crate::{
    ArgDeclaration, CheckRule, CommandLine, CopyInstruction, CopySource, FromInstruction, Healthcheck, Heredoc,
    Instruction, InstructionKind, KeyValue, LogicalLine, Mount, MountSpec, NetworkMode, RunInstruction, SecurityMode,
    SourceText, Warning,
};

/// An error at a byte offset of the logical line.
struct LineError {
    offset: usize,
    message: String,
}

type LineResult<T> = std::result::Result<T, LineError>;

fn at(offset: usize, message: impl Into<String>) -> LineError {
    LineError { offset, message: message.into() }
}

const KEYWORDS: [&str; 18] = [
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

/// Parses instructions of one Dockerfile.
pub struct Parser<'a> {
    source: &'a SourceText,
    escape: char,
}

impl<'a> Parser<'a> {
    pub fn new(source: &'a SourceText, escape: char) -> Self {
        Parser { source, escape }
    }

    /// Parses one logical line into an instruction.
    pub fn instruction(&self, line: &LogicalLine) -> Result<Instruction> {
        self.parse_from(line, 0).map_err(|e| self.source.error(line.location(self.source, e.offset), e.message))
    }

    fn parse_from(&self, line: &LogicalLine, start: usize) -> LineResult<Instruction> {
        let text = line.text.as_str();
        let (keyword, rel) = split_keyword(&text[start..]);
        let upper = keyword.to_ascii_uppercase();
        if !KEYWORDS.contains(&upper.as_str()) {
            return Err(at(start, format!("unknown instruction {keyword:?}")));
        }
        let (flags, args_start) = extract_flags(text, start + rel);
        let args = text[args_start..].trim_end();
        let kw = upper.as_str();
        let spec: &[(&'static str, FlagKind)] = match kw {
            "FROM" => &[("platform", FlagKind::String)],
            "RUN" => &[("mount", FlagKind::Strings), ("network", FlagKind::String), ("security", FlagKind::String)],
            "COPY" => &[
                ("from", FlagKind::String),
                ("chown", FlagKind::String),
                ("chmod", FlagKind::String),
                ("link", FlagKind::Bool),
                ("parents", FlagKind::Bool),
                ("exclude", FlagKind::Strings),
            ],
            "ADD" => &[
                ("chown", FlagKind::String),
                ("chmod", FlagKind::String),
                ("link", FlagKind::Bool),
                ("keep-git-dir", FlagKind::Bool),
                ("checksum", FlagKind::String),
                ("exclude", FlagKind::Strings),
                ("unpack", FlagKind::Bool),
            ],
            "HEALTHCHECK" => &[
                ("interval", FlagKind::String),
                ("timeout", FlagKind::String),
                ("start-period", FlagKind::String),
                ("start-interval", FlagKind::String),
                ("retries", FlagKind::String),
            ],
            _ => &[],
        };
        let flags = FlagSet::parse(kw, &flags, spec).map_err(|e| at(e.offset, e.message))?;
        let optional_args = matches!(kw, "CMD" | "ENTRYPOINT");
        if args.is_empty() && !optional_args {
            let why = if line.continued_to_eof {
                format!("line continuation at the end of the file leaves {kw} without arguments")
            } else {
                format!("{kw} requires at least one argument")
            };
            return Err(at(start, why));
        }
        let location = line.location(self.source, start);
        let mut warnings = Vec::new();
        let mut warn = |rule: CheckRule, message: String| {
            warnings.push(Warning::new(rule, message, self.source.name(), location));
        };
        if line.empty_continuation {
            warn(CheckRule::NoEmptyContinuation, "Empty continuation line".into());
        }
        let kind = match kw {
            "FROM" => InstructionKind::From(self.from(line, keyword, &flags, args, args_start, &mut warn)?),
            "RUN" => InstructionKind::Run(self.run(line, &flags, args)?),
            "CMD" => InstructionKind::Cmd(CommandLine::parse(args)),
            "ENTRYPOINT" => InstructionKind::Entrypoint(CommandLine::parse(args)),
            "LABEL" => InstructionKind::Label(self.name_values(kw, keyword, args, args_start, &mut warn)?),
            "ENV" => InstructionKind::Env(self.name_values(kw, keyword, args, args_start, &mut warn)?),
            "MAINTAINER" => {
                warn(
                    CheckRule::MaintainerDeprecated,
                    "Maintainer instruction is deprecated in favor of using label".into(),
                );
                InstructionKind::Maintainer(args.to_string())
            }
            "EXPOSE" => InstructionKind::Expose(texts(whitespace_words(args))),
            "ADD" | "COPY" => {
                let copy = self.copy(line, kw == "ADD", &flags, args, args_start)?;
                if kw == "ADD" {
                    InstructionKind::Add(copy)
                } else {
                    InstructionKind::Copy(copy)
                }
            }
            "VOLUME" => InstructionKind::Volume(self.volume(args, args_start)?),
            "USER" => InstructionKind::User(args.to_string()),
            "WORKDIR" => InstructionKind::Workdir(args.to_string()),
            "STOPSIGNAL" => InstructionKind::Stopsignal(args.to_string()),
            "ARG" => InstructionKind::Arg(self.args(args, args_start)?),
            "ONBUILD" => InstructionKind::Onbuild(Box::new(self.onbuild(line, args_start)?)),
            "HEALTHCHECK" => InstructionKind::Healthcheck(self.healthcheck(&flags, args, args_start)?),
            "SHELL" => {
                let argv = json_array(args).ok_or_else(|| {
                    at(
                        args_start,
                        "SHELL requires the arguments to be in JSON form: SHELL [\"executable\", \"parameters\"]",
                    )
                })?;
                if argv.is_empty() {
                    return Err(at(args_start, "SHELL requires at least one argument"));
                }
                InstructionKind::Shell(argv)
            }
            _ => return Err(at(start, format!("unknown instruction {keyword:?}"))),
        };
        Ok(Instruction { location, text: line.original(self.source), kind, warnings })
    }

    fn from(
        &self,
        line: &LogicalLine,
        keyword: &str,
        flags: &FlagSet,
        args: &str,
        args_start: usize,
        warn: &mut dyn FnMut(CheckRule, String),
    ) -> LineResult<FromInstruction> {
        let words = whitespace_words(args);
        let (stage, stage_location) = match words.as_slice() {
            [_] => (None, None),
            [_, as_word, name] if as_word.text.eq_ignore_ascii_case("as") => {
                if name.text.to_lowercase() != name.text {
                    warn(CheckRule::StageNameCasing, format!("Stage name '{}' should be lowercase", name.text));
                }
                let as_word = as_word.text.as_str();
                let mismatch = if keyword.to_lowercase() == keyword {
                    as_word.to_lowercase() != as_word
                } else {
                    keyword.to_uppercase() == keyword && as_word.to_uppercase() != as_word
                };
                if mismatch {
                    warn(CheckRule::FromAsCasing, format!("'{as_word}' and '{keyword}' keywords' casing do not match"));
                }
                let lower = name.text.to_ascii_lowercase();
                if !valid_stage_name(&lower) {
                    return Err(at(
                        args_start + name.offset,
                        format!(
                            "invalid stage name {:?}: it must start with a letter and hold only letters, digits, '-', '_' and '.'",
                            name.text
                        ),
                    ));
                }
                let loc = line.location(self.source, args_start + name.offset);
                (Some(lower), Some(loc))
            }
            _ => return Err(at(args_start, "FROM requires either one or three arguments: FROM image [AS name]")),
        };
        Ok(FromInstruction {
            image: words[0].text.clone(),
            image_location: line.location(self.source, args_start),
            stage,
            stage_location,
            platform: flags.string("platform").map(|(v, _)| v),
        })
    }

    fn run(&self, line: &LogicalLine, flags: &FlagSet, args: &str) -> LineResult<RunInstruction> {
        let mut mounts = Vec::new();
        for (raw, offset) in flags.strings("mount") {
            let from = Mount::raw_from(&raw).map_err(|e| at(offset, format!("--mount={raw}: {e}")))?;
            mounts.push(MountSpec { raw, from, location: line.location(self.source, offset) });
        }
        let network = match flags.string("network") {
            None => None,
            Some((v, offset)) => Some(match v.as_str() {
                "default" => NetworkMode::Default,
                "none" => NetworkMode::None,
                "host" => NetworkMode::Host,
                _ => return Err(at(offset, format!("unsupported network mode {v:?} (default, none or host)"))),
            }),
        };
        let security = match flags.string("security") {
            None => None,
            Some((v, offset)) => Some(match v.as_str() {
                "sandbox" => SecurityMode::Sandbox,
                "insecure" => SecurityMode::Insecure,
                _ => return Err(at(offset, format!("unsupported security mode {v:?} (sandbox or insecure)"))),
            }),
        };
        Ok(RunInstruction {
            command: CommandLine::parse(args),
            heredocs: line.heredocs.clone(),
            mounts,
            network,
            security,
        })
    }

    /// ENV and LABEL: `name=value ...` or the legacy `name value`.
    fn name_values(
        &self,
        kw: &str,
        written: &str,
        args: &str,
        args_start: usize,
        warn: &mut dyn FnMut(CheckRule, String),
    ) -> LineResult<Vec<KeyValue>> {
        let words = raw_words(args, self.escape);
        let Some(first) = words.first() else {
            return Err(at(args_start, format!("{kw} requires at least one argument")));
        };
        if !first.text.contains('=') {
            let Some((key, value)) = args.split_once(char::is_whitespace) else {
                return Err(at(args_start, format!("{kw} {args} has no value: write {kw} {args}=value")));
            };
            warn(
                CheckRule::LegacyKeyValueFormat,
                format!("\"{written} key=value\" should be used instead of legacy \"{written} key value\" format"),
            );
            return Ok(vec![KeyValue { key: key.to_string(), value: value.trim_start().to_string() }]);
        }
        words
            .into_iter()
            .map(|w| match w.text.split_once('=') {
                Some(("", _)) => Err(at(args_start + w.offset, format!("{kw} names can not be blank: {:?}", w.text))),
                Some((k, v)) => Ok(KeyValue { key: k.to_string(), value: v.to_string() }),
                None => {
                    Err(at(args_start + w.offset, format!("can't find = in {:?}: {kw} takes name=value pairs", w.text)))
                }
            })
            .collect()
    }

    fn args(&self, args: &str, args_start: usize) -> LineResult<Vec<ArgDeclaration>> {
        raw_words(args, self.escape)
            .into_iter()
            .map(|w| {
                let (name, default) = match w.text.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (w.text.clone(), None),
                };
                if name.is_empty() {
                    return Err(at(args_start + w.offset, "ARG names can not be blank"));
                }
                Ok(ArgDeclaration { name, default })
            })
            .collect()
    }

    fn copy(
        &self,
        line: &LogicalLine,
        add: bool,
        flags: &FlagSet,
        args: &str,
        args_start: usize,
    ) -> LineResult<CopyInstruction> {
        let kw = if add { "ADD" } else { "COPY" };
        let (words, json): (Vec<Word>, bool) = match json_array(args) {
            Some(list) => (list.into_iter().map(|text| Word { text, offset: 0 }).collect(), true),
            None => (whitespace_words(args), false),
        };
        if words.len() < 2 {
            return Err(at(args_start, format!("{kw} requires at least two arguments: source(s) and destination")));
        }
        let mut heredocs = line.heredocs.iter();
        let mut sources = Vec::new();
        let mut source_locations = Vec::new();
        for word in &words[..words.len() - 1] {
            let heredoc = (!json)
                .then(|| Heredoc::parse_opener(&word.text))
                .flatten()
                .and_then(|opener| heredocs.find(|h| h.name == opener.name).cloned());
            sources.push(match heredoc {
                Some(h) => CopySource::Heredoc(h),
                None => CopySource::Path(word.text.clone()),
            });
            source_locations.push(line.location(self.source, args_start + word.offset));
        }
        let dest = words[words.len() - 1].text.clone();
        let (from, from_location) = match flags.string("from") {
            Some((v, offset)) => (Some(v), Some(line.location(self.source, offset))),
            None => (None, None),
        };
        Ok(CopyInstruction {
            add,
            sources,
            source_locations,
            dest,
            from,
            from_location,
            chown: flags.string("chown").map(|(v, _)| v),
            chmod: flags.string("chmod").map(|(v, _)| v),
            link: flags.bool("link"),
            parents: flags.bool("parents"),
            excludes: flags.strings("exclude").into_iter().map(|(v, _)| v).collect(),
            keep_git_dir: flags.bool("keep-git-dir"),
            checksum: flags.string("checksum").map(|(v, _)| v),
            unpack: flags.opt_bool("unpack"),
        })
    }

    fn volume(&self, args: &str, args_start: usize) -> LineResult<Vec<String>> {
        let list = match json_array(args) {
            Some(list) => list,
            None => texts(whitespace_words(args)),
        };
        if list.is_empty() || list.iter().any(|v| v.trim().is_empty()) {
            return Err(at(args_start, "VOLUME specified can not be an empty string"));
        }
        Ok(list)
    }

    fn onbuild(&self, line: &LogicalLine, args_start: usize) -> LineResult<Instruction> {
        let (keyword, _) = split_keyword(&line.text[args_start..]);
        match keyword.to_ascii_uppercase().as_str() {
            "ONBUILD" => Err(at(args_start, "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")),
            "FROM" | "MAINTAINER" => Err(at(args_start, format!("{keyword} isn't allowed as an ONBUILD trigger"))),
            _ => self.parse_from(line, args_start),
        }
    }

    fn healthcheck(&self, flags: &FlagSet, args: &str, args_start: usize) -> LineResult<Healthcheck> {
        let (kind, rest) = split_keyword(args);
        match kind.to_ascii_uppercase().as_str() {
            "NONE" => {
                if rest < args.len() {
                    return Err(at(args_start + rest, "HEALTHCHECK NONE takes no arguments"));
                }
                Ok(Healthcheck::None)
            }
            "CMD" => {
                let command = CommandLine::parse(&args[rest..]);
                if command.is_empty() {
                    return Err(at(args_start, "HEALTHCHECK CMD needs a command"));
                }
                let duration = |name: &str| -> LineResult<Option<u64>> {
                    let Some((v, offset)) = flags.string(name) else {
                        return Ok(None);
                    };
                    let d = parse_go_duration(&v).map_err(|e| at(offset, format!("--{name}: {e}")))?;
                    if !d.is_zero() && d.as_nanos() < 1_000_000 {
                        return Err(at(offset, format!("--{name}={v} cannot be less than 1ms")));
                    }
                    Ok(Some(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
                };
                let retries = match flags.string("retries") {
                    None => None,
                    Some((v, offset)) => {
                        let n: i64 = v.parse().map_err(|_| at(offset, format!("--retries={v} is not a number")))?;
                        if n < 0 {
                            return Err(at(offset, format!("--retries cannot be negative ({n})")));
                        }
                        Some(u32::try_from(n).map_err(|_| at(offset, format!("--retries={v} is too large")))?)
                    }
                };
                Ok(Healthcheck::Cmd {
                    command,
                    interval_ns: duration("interval")?,
                    timeout_ns: duration("timeout")?,
                    start_period_ns: duration("start-period")?,
                    start_interval_ns: duration("start-interval")?,
                    retries,
                })
            }
            _ => Err(at(args_start, format!("unknown type {kind:?} in HEALTHCHECK (try CMD or NONE)"))),
        }
    }
}

fn texts(words: Vec<Word>) -> Vec<String> {
    words.into_iter().map(|w| w.text).collect()
}

/// `^[a-z][a-z0-9-_.]*$`, Docker's rule for stage names.
pub fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}
