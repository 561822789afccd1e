//! Dockerfile + context + options -> [`BuildGraph`]: splits the stages,
//! evaluates the global ARGs, runs the checks BuildKit runs on the whole
//! file (every stage's FROM, stage references, cycles, parse-time warnings),
//! parses the ONBUILD triggers of each stage's base, selects the stages the
//! target needs and plans each of them in dependency order.

use std::collections::{BTreeMap, BTreeSet};

use memobuild_proto::{Error, Result};

use crate::expander::Expander;
use crate::linter::Linter;
use crate::stage_planner::{PlannedStage, StagePlanner};
use crate::{
    check_image_source, BuildContext, BuildGraph, BuildOptions, CheckRule, Dockerfile, FromInstruction, Instruction,
    InstructionKind, Location, OnbuildTrigger, Reads, Scope, ShellLexer, Warning, CHECK_BUILD_ARG,
};

/// One stage as written.
pub struct StageSource<'a> {
    pub index: usize,
    pub from: &'a Instruction,
    pub from_instruction: &'a FromInstruction,
    pub body: Vec<&'a Instruction>,
    /// The ONBUILD triggers of its base, run before `body`; an error is
    /// reported when the stage is planned.
    pub triggers: Result<Vec<(OnbuildTrigger, Instruction)>>,
    /// The base as the global ARGs expand it.
    pub base_name: String,
    /// The `--platform` as the global ARGs expand it.
    pub platform: Option<String>,
    /// The variables the FROM read.
    pub from_reads: Reads,
}

impl StageSource<'_> {
    /// The name, or the index.
    fn label(&self) -> String {
        self.from_instruction.stage.clone().unwrap_or_else(|| self.index.to_string())
    }

    /// The name BuildKit gives the stage in messages: its own, or
    /// `stage-N`.
    pub fn stage_name(&self) -> String {
        self.from_instruction.stage.clone().unwrap_or_else(|| format!("stage-{}", self.index))
    }

    /// What the stage runs after its FROM: its base's triggers (each with
    /// its [`OnbuildTrigger`]), then its own instructions.
    pub fn instructions(&self) -> impl Iterator<Item = (&Instruction, Option<&OnbuildTrigger>)> {
        let triggers = self.triggers.iter().flatten().map(|(trigger, i)| (i, Some(trigger)));
        triggers.chain(self.body.iter().map(|i| (*i, None)))
    }
}

/// A stage's read of another stage, where it is written, and the context of
/// an ONBUILD trigger's read.
#[derive(Clone, Debug)]
struct Dependency {
    stage: usize,
    location: Location,
    trigger: Option<String>,
}

/// Plans a build graph.
pub struct Planner<'a> {
    dockerfile: &'a Dockerfile,
    context: &'a BuildContext,
    options: &'a BuildOptions,
}

impl<'a> Planner<'a> {
    pub fn new(dockerfile: &'a Dockerfile, context: &'a BuildContext, options: &'a BuildOptions) -> Self {
        Planner { dockerfile, context, options }
    }

    pub fn plan(&self) -> Result<BuildGraph> {
        let source = self.dockerfile.source();
        let file = self.dockerfile.name.as_str();
        let check_arg = self.options.build_args.get(CHECK_BUILD_ARG).map(String::as_str);
        let mut linter = Linter::new(file, self.dockerfile.directives.check.as_deref(), check_arg)?;
        let mut global_args = Vec::new();
        let mut stages: Vec<StageSource<'a>> = Vec::new();
        for instruction in &self.dockerfile.instructions {
            match (&instruction.kind, stages.last_mut()) {
                (InstructionKind::From(from), _) => stages.push(StageSource {
                    index: stages.len(),
                    from: instruction,
                    from_instruction: from,
                    body: Vec::new(),
                    triggers: Ok(Vec::new()),
                    base_name: String::new(),
                    platform: None,
                    from_reads: Reads::new(),
                }),
                (_, Some(stage)) => stage.body.push(instruction),
                (InstructionKind::Arg(_), None) => global_args.push(instruction),
                (kind, None) => {
                    return Err(source.error(
                        instruction.location,
                        format!("{} before the first FROM: only ARG may come before FROM", kind.keyword()),
                    ))
                }
            }
            let whole_file = instruction.warnings.iter().filter(|w| w.rule.whole_file());
            linter.extend(whole_file.cloned());
        }
        if stages.is_empty() {
            let at = self.dockerfile.instructions.first().map(|i| i.location).unwrap_or(Location::new(1, 1));
            return Err(source.error(at, "the Dockerfile has no FROM instruction"));
        }
        check_stage_names(file, &stages, &mut linter);
        check_casing(file, &stages, &mut linter);

        let mut expander = Expander {
            source,
            lexer: ShellLexer::new(self.dockerfile.directives.escape),
            options: self.options,
            global: Scope::default(),
            stage_names: stages
                .iter()
                .map(|s| s.from_instruction.stage.clone().filter(|name| !self.options.named_contexts.contains(name)))
                .collect(),
        };
        expander.global = expander.global_scope(&global_args)?;
        self.check_default_bases(&expander, &global_args, &stages, &mut linter);
        for stage in stages.iter_mut() {
            expand_from(&expander, stage, &mut linter)?;
        }
        check_references(&expander, &stages)?;

        let triggers: Vec<_> = stages.iter().map(|s| self.triggers(&expander, s, &stages)).collect();
        for (stage, triggers) in stages.iter_mut().zip(triggers) {
            stage.triggers = triggers;
        }

        let target = match &self.options.target {
            None => stages.len() - 1,
            Some(name) => expander.stage_ref(name, false).ok_or_else(|| {
                let known: Vec<String> =
                    stages.iter().filter_map(|s| s.from_instruction.stage.clone()).map(|n| format!("{n:?}")).collect();
                Error::invalid_argument(format!(
                    "{}: target stage {name:?} could not be found (stages: {})",
                    source.name(),
                    if known.is_empty() { "none are named".to_string() } else { known.join(", ") }
                ))
            })?,
        };

        let deps: Vec<Vec<Dependency>> = stages.iter().map(|s| self.dependencies(&expander, s)).collect();
        let mut order = self.order(&expander, &stages, &deps, target)?;
        // BuildKit rejects a cycle anywhere in the file, needed or not.
        for index in 0..stages.len() {
            let needed = self.order(&expander, &stages, &deps, index)?;
            if self.options.check && self.options.target.is_none() {
                for i in needed {
                    if !order.contains(&i) {
                        order.push(i);
                    }
                }
            }
        }

        let mut planned: BTreeMap<usize, PlannedStage> = BTreeMap::new();
        for index in order {
            let stage = StagePlanner::new(&expander, self.context, &stages[index], &planned).plan()?;
            linter.extend(stage.warnings.iter().cloned());
            planned.insert(index, stage);
        }
        let warnings = linter.finish(file, self.options.check)?;
        // Dependencies first: the order they were planned in.
        let mut ordered: Vec<(usize, PlannedStage)> = planned.into_iter().collect();
        ordered.sort_by_key(|(_, p)| p.order);
        Ok(BuildGraph {
            dockerfile: self.dockerfile.name.clone(),
            target,
            context: self.context.root_digest(),
            stages: ordered.into_iter().map(|(_, p)| p.stage).collect(),
            warnings,
        })
    }

    /// InvalidDefaultArgInFrom: a base that is not a valid reference when
    /// the global ARGs keep their defaults (no `--build-arg`).
    fn check_default_bases(
        &self,
        ex: &Expander<'_>,
        global_args: &[&Instruction],
        stages: &[StageSource<'_>],
        linter: &mut Linter,
    ) {
        let options = BuildOptions { build_args: BTreeMap::new(), ..self.options.clone() };
        let mut defaults = Expander {
            source: ex.source,
            lexer: ShellLexer::new(self.dockerfile.directives.escape),
            options: &options,
            global: Scope::default(),
            stage_names: ex.stage_names.clone(),
        };
        let Ok(global) = defaults.global_scope(global_args) else {
            return;
        };
        defaults.global = global;
        for stage in stages {
            let from = stage.from_instruction;
            let Ok(base) = defaults.word(&defaults.global, &mut Reads::new(), &from.image, from.image_location) else {
                return;
            };
            if check_image_source(&base).is_err() {
                linter.warn(Warning::new(
                    CheckRule::InvalidDefaultArgInFrom,
                    format!("Default value for ARG {} results in empty or invalid base image name", from.image),
                    ex.source.name(),
                    stage.from.location,
                ));
            }
        }
    }

    /// The ONBUILD triggers of `stage`'s base: those of a base image in the
    /// build options, or an earlier stage's own ONBUILD instructions.
    fn triggers(
        &self,
        ex: &Expander<'_>,
        stage: &StageSource<'_>,
        stages: &[StageSource<'_>],
    ) -> Result<Vec<(OnbuildTrigger, Instruction)>> {
        let image = &stage.base_name;
        let (base, texts) = match ex.base_stage(image, stage.index) {
            Some(i) => {
                let texts = stages[i]
                    .body
                    .iter()
                    .filter(|i| matches!(i.kind, InstructionKind::Onbuild(_)))
                    .map(|i| OnbuildTrigger::text_of(i))
                    .collect();
                (format!("stage {}", stages[i].label()), texts)
            }
            None => match self.options.base_images.get(image) {
                Some(image_base) => (format!("image {image}"), image_base.config.onbuild.clone()),
                None => return Ok(Vec::new()),
            },
        };
        let at = stage.from.location;
        texts
            .into_iter()
            .map(|text| {
                let trigger = OnbuildTrigger { text, base: base.clone() };
                match trigger.parse(self.dockerfile.directives.escape, at) {
                    Ok(instruction) => Ok((trigger, instruction)),
                    Err(e) => Err(e.context(trigger.context(&self.dockerfile.name, at.line))),
                }
            })
            .collect()
    }

    /// The stages `stage` reads from: its base, COPY --from and RUN
    /// --mount from= (its base's triggers' too), names as written (BuildKit
    /// expands no variable there).
    fn dependencies(&self, ex: &Expander<'_>, stage: &StageSource<'_>) -> Vec<Dependency> {
        let mut deps = Vec::new();
        let from = stage.from_instruction;
        if let Some(i) = ex.base_stage(&stage.base_name, stage.index) {
            deps.push(Dependency { stage: i, location: from.image_location, trigger: None });
        }
        for (instruction, trigger) in stage.instructions() {
            let trigger = trigger.map(|t| t.context(&self.dockerfile.name, stage.from.location.line));
            for (name, at, allow_index) in stage_reads(instruction) {
                if let Some(i) = ex.stage_ref(name, allow_index) {
                    deps.push(Dependency { stage: i, location: at, trigger: trigger.clone() });
                }
            }
        }
        deps
    }

    /// The stages `target` needs, dependencies first; a cycle is an error
    /// at the reference that closes it.
    fn order(
        &self,
        ex: &Expander<'_>,
        stages: &[StageSource<'_>],
        deps: &[Vec<Dependency>],
        target: usize,
    ) -> Result<Vec<usize>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        let label = |i: usize| stages[i].label();
        let mut marks = vec![Mark::New; stages.len()];
        let mut order = Vec::new();
        // Iterative DFS: (stage, next dependency to visit), plus the path.
        let mut stack: Vec<(usize, usize)> = vec![(target, 0)];
        marks[target] = Mark::Active;
        while let Some(&mut (stage, ref mut next)) = stack.last_mut() {
            match deps[stage].get(*next) {
                Some(dep) => {
                    *next += 1;
                    match marks[dep.stage] {
                        Mark::Done => {}
                        Mark::Active => {
                            let start = stack.iter().position(|(s, _)| *s == dep.stage).unwrap_or(0);
                            let mut cycle: Vec<String> = stack[start..].iter().map(|(s, _)| label(*s)).collect();
                            cycle.push(label(dep.stage));
                            let e = ex.error(
                                dep.location,
                                format!("circular dependency between stages: {}", cycle.join(" -> ")),
                            );
                            return Err(match &dep.trigger {
                                Some(trigger) => e.context(trigger),
                                None => e,
                            });
                        }
                        Mark::New => {
                            marks[dep.stage] = Mark::Active;
                            stack.push((dep.stage, 0));
                        }
                    }
                }
                None => {
                    marks[stage] = Mark::Done;
                    order.push(stage);
                    stack.pop();
                }
            }
        }
        Ok(order)
    }
}

/// The stage (or image) names an instruction reads from, as written, where,
/// and whether a stage index is allowed (COPY --from only).
fn stage_reads(instruction: &Instruction) -> Vec<(&str, Location, bool)> {
    match &instruction.kind {
        InstructionKind::Copy(copy) | InstructionKind::Add(copy) => copy
            .from
            .as_deref()
            .map(|name| (name, copy.from_location.unwrap_or(instruction.location), true))
            .into_iter()
            .collect(),
        InstructionKind::Run(run) => {
            run.mounts.iter().filter_map(|m| m.from.as_deref().map(|name| (name, m.location, false))).collect()
        }
        _ => Vec::new(),
    }
}

/// Expands a stage's FROM with the global ARGs, as BuildKit does for every
/// stage: a base that is blank or not a valid reference, or a platform that
/// is empty, rejects the whole file. Warns UndefinedArgInFrom,
/// RedundantTargetPlatform and FromPlatformFlagConstDisallowed.
fn expand_from(ex: &Expander<'_>, stage: &mut StageSource<'_>, linter: &mut Linter) -> Result<()> {
    let from = stage.from_instruction;
    let at = stage.from.location;
    let warn = |linter: &mut Linter, rule: CheckRule, message: String| {
        linter.warn(Warning::new(rule, message, ex.source.name(), at));
    };
    let undeclared = |linter: &mut Linter, reads: &Reads| {
        for (name, value) in reads {
            if value.is_none() && ex.global.arg(name).is_none() {
                warn(linter, CheckRule::UndefinedArgInFrom, format!("FROM argument '{name}' is not declared"));
            }
        }
    };
    let mut reads = Reads::new();
    let image = ex.word(&ex.global, &mut reads, &from.image, from.image_location)?;
    undeclared(linter, &reads);
    if image.is_empty() {
        return Err(ex.error(from.image_location, format!("base name ({}) should not be blank", from.image)));
    }
    if image != "scratch" && ex.base_stage(&image, stage.index).is_none() {
        check_image_source(&image)
            .map_err(|e| ex.error(from.image_location, format!("failed to parse stage name {image:?}: {e}")))?;
    }
    if let Some(raw) = &from.platform {
        let mut platform_reads = Reads::new();
        let platform = ex.word(&ex.global, &mut platform_reads, raw, at)?;
        undeclared(linter, &platform_reads);
        if platform.is_empty() {
            return Err(ex.error(at, format!("empty platform value from expression {raw}")));
        }
        let target_platform = ex.global.get("TARGETPLATFORM");
        let only_target_platform = platform_reads.len() == 1 && platform_reads.contains_key("TARGETPLATFORM");
        if only_target_platform && target_platform.as_deref() == Some(platform.as_str()) {
            let message =
                format!("Setting platform to predefined {raw} in FROM is redundant as this is the default behavior");
            warn(linter, CheckRule::RedundantTargetPlatform, message);
        }
        if platform_reads.is_empty() {
            if let Ok(p) = platform.parse::<crate::Platform>() {
                let name = from.stage.as_deref().unwrap_or("");
                if !name.contains(p.os.as_str()) && !name.contains(p.architecture.as_str()) {
                    warn(
                        linter,
                        CheckRule::FromPlatformFlagConstDisallowed,
                        format!("FROM --platform flag should not use constant value {platform:?}"),
                    );
                }
            }
        }
        reads.extend(platform_reads);
        stage.platform = Some(platform);
    }
    stage.base_name = image;
    stage.from_reads = reads;
    Ok(())
}

/// What BuildKit checks of every stage's COPY --from and mount from= while
/// reading the file: no variables, a stage index that exists, and an image
/// reference that parses when the name is not a stage's.
fn check_references(ex: &Expander<'_>, stages: &[StageSource<'_>]) -> Result<()> {
    for instruction in stages.iter().flat_map(|s| s.body.iter()) {
        for (name, at, allow_index) in stage_reads(instruction) {
            if allow_index && ex.lexer.process_word(name, &mut |_| None).as_deref() != Ok(name) {
                return Err(ex.error(
                    at,
                    "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
                ));
            }
            if allow_index {
                if let Ok(index) = name.parse::<i64>() {
                    if usize::try_from(index).map_or(true, |i| i >= stages.len()) {
                        return Err(ex.error(at, format!("invalid stage index {index}")));
                    }
                    continue;
                }
            }
            if ex.stage_ref(name, false).is_none() {
                check_image_source(name)
                    .map_err(|e| ex.error(at, format!("failed to parse stage name {name:?}: {e}")))?;
            }
        }
    }
    Ok(())
}

/// DuplicateStageName (the later stage wins) and ReservedStageName.
fn check_stage_names(file: &str, stages: &[StageSource<'_>], linter: &mut Linter) {
    let mut seen = BTreeSet::new();
    for stage in stages {
        let Some(name) = stage.from_instruction.stage.as_deref() else {
            continue;
        };
        let at = stage.from.location;
        if matches!(name, "context" | "scratch") {
            let message = format!("Stage name should not use the same name as reserved stage {name:?}");
            linter.warn(Warning::new(CheckRule::ReservedStageName, message, file, at));
        }
        if !seen.insert(name) {
            let message = format!("Duplicate stage name {name:?}, stage names should be unique");
            linter.warn(Warning::new(CheckRule::DuplicateStageName, message, file, at));
        }
    }
}

/// ConsistentInstructionCasing: every keyword of the stages in the case
/// most of them are written in.
fn check_casing(file: &str, stages: &[StageSource<'_>], linter: &mut Linter) {
    let instructions: Vec<&Instruction> =
        stages.iter().flat_map(|s| std::iter::once(s.from).chain(s.body.iter().copied())).collect();
    let (mut lower, mut upper) = (0, 0);
    for keyword in instructions.iter().map(|i| i.keyword_as_written()) {
        if keyword == keyword.to_lowercase() {
            lower += 1;
        } else if keyword == keyword.to_uppercase() {
            upper += 1;
        }
    }
    let majority_lower = lower > upper;
    for instruction in instructions {
        let keyword = instruction.keyword_as_written();
        let casing = match majority_lower {
            true if keyword != keyword.to_lowercase() => "lowercase",
            false if keyword != keyword.to_uppercase() => "uppercase",
            _ => continue,
        };
        let message = format!("Command '{keyword}' should match the case of the command majority ({casing})");
        linter.warn(Warning::new(CheckRule::ConsistentInstructionCasing, message, file, instruction.location));
    }
}
