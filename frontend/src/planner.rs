//! Dockerfile + context + options -> [`BuildGraph`]: splits the stages,
//! evaluates the global ARGs, parses the ONBUILD triggers of each stage's
//! base, finds what each stage reads from, selects the stages the target
//! needs, rejects cycles, and plans each needed stage in dependency order.

use std::collections::BTreeMap;

use memobuild_proto::{Error, Result};

use crate::expander::Expander;
use crate::stage_planner::{PlannedStage, StagePlanner};
use crate::{
    BuildContext, BuildGraph, BuildOptions, Dockerfile, FromInstruction, Instruction, InstructionKind, Location, Mount,
    OnbuildTrigger, Reads, Scope, ShellLexer,
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
}

impl StageSource<'_> {
    /// The name, or the index.
    fn label(&self) -> String {
        self.from_instruction.stage.clone().unwrap_or_else(|| self.index.to_string())
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
        }
        if stages.is_empty() {
            let at = self.dockerfile.instructions.first().map(|i| i.location).unwrap_or(Location::new(1, 1));
            return Err(source.error(at, "the Dockerfile has no FROM instruction"));
        }

        // Stage names must be unique.
        let mut names: BTreeMap<&str, &Instruction> = BTreeMap::new();
        for stage in &stages {
            if let Some(name) = stage.from_instruction.stage.as_deref() {
                if let Some(first) = names.insert(name, stage.from) {
                    let at = stage.from_instruction.stage_location.unwrap_or(stage.from.location);
                    return Err(source.error(
                        at,
                        format!("duplicate stage name {name:?}: already used at line {}", first.location.line),
                    ));
                }
            }
        }

        let mut global = Scope::default();
        for (name, value) in self.options.platform_args() {
            global.declare_arg(&name, Some(value));
        }
        let mut expander = Expander {
            source,
            lexer: ShellLexer::new(self.dockerfile.directives.escape),
            options: self.options,
            global: Scope::default(),
            stage_names: stages.iter().map(|s| s.from_instruction.stage.clone()).collect(),
        };
        for instruction in &global_args {
            if let InstructionKind::Arg(decls) = &instruction.kind {
                let mut reads = Reads::new();
                expander.declare_args(&mut global, &mut reads, decls, instruction.location, None)?;
            }
        }
        expander.global = global;

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
        let order = self.order(&expander, &stages, &deps, target)?;

        let mut planned: BTreeMap<usize, PlannedStage> = BTreeMap::new();
        for index in order {
            let stage = StagePlanner::new(&expander, self.context, &stages[index], &planned).plan()?;
            planned.insert(index, stage);
        }
        // Dependencies first: the order they were planned in.
        let mut ordered: Vec<(usize, PlannedStage)> = planned.into_iter().collect();
        ordered.sort_by_key(|(_, p)| p.order);
        Ok(BuildGraph {
            dockerfile: self.dockerfile.name.clone(),
            target,
            context: self.context.root_digest(),
            stages: ordered.into_iter().map(|(_, p)| p.stage).collect(),
        })
    }

    /// The ONBUILD triggers of `stage`'s base: those of a base image in the
    /// build options, or an earlier stage's own ONBUILD instructions. A FROM
    /// that does not expand has none here (its error is reported when the
    /// stage is planned).
    fn triggers(
        &self,
        ex: &Expander<'_>,
        stage: &StageSource<'_>,
        stages: &[StageSource<'_>],
    ) -> Result<Vec<(OnbuildTrigger, Instruction)>> {
        let from = stage.from_instruction;
        let Ok(image) = ex.word(&ex.global, &mut Reads::new(), &from.image, from.image_location) else {
            return Ok(Vec::new());
        };
        let (base, texts) = match ex.base_stage(&image, stage.index) {
            Some(i) => {
                let texts = stages[i]
                    .body
                    .iter()
                    .filter(|i| matches!(i.kind, InstructionKind::Onbuild(_)))
                    .map(|i| OnbuildTrigger::text_of(i))
                    .collect();
                (format!("stage {}", stages[i].label()), texts)
            }
            None => match self.options.base_images.get(&image) {
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

    /// The stages `stage` reads from, found by expanding its FROM, COPY
    /// --from and RUN --mount from= (its base's triggers' too) with its own
    /// ARG/ENV scope (expansion errors are reported later, when the stage is
    /// planned).
    fn dependencies(&self, ex: &Expander<'_>, stage: &StageSource<'_>) -> Vec<Dependency> {
        let mut deps = Vec::new();
        let mut reads = Reads::new();
        let from = stage.from_instruction;
        if let Ok(base) = ex.word(&ex.global, &mut reads, &from.image, from.image_location) {
            if let Some(i) = ex.base_stage(&base, stage.index) {
                deps.push(Dependency { stage: i, location: from.image_location, trigger: None });
            }
        }
        let mut scope = Scope::default();
        for (instruction, trigger) in stage.instructions() {
            let trigger = trigger.map(|t| t.context(&self.dockerfile.name, stage.from.location.line));
            match &instruction.kind {
                InstructionKind::Arg(decls) => {
                    let _ = ex.declare_args(&mut scope, &mut reads, decls, instruction.location, Some(&ex.global));
                }
                InstructionKind::Env(pairs) => {
                    let _ = ex.set_env(&mut scope, &mut reads, pairs, instruction.location);
                }
                InstructionKind::Copy(copy) | InstructionKind::Add(copy) => {
                    if let Some(raw) = &copy.from {
                        let at = copy.from_location.unwrap_or(instruction.location);
                        if let Some(i) =
                            ex.word(&scope, &mut reads, raw, at).ok().and_then(|name| ex.stage_ref(&name, true))
                        {
                            deps.push(Dependency { stage: i, location: at, trigger: trigger.clone() });
                        }
                    }
                }
                InstructionKind::Run(run) => {
                    for spec in &run.mounts {
                        let mut expand = |v: &str| {
                            ex.lexer.process_word(v, &mut scope.recorder(&mut reads)).map_err(|e| e.to_string())
                        };
                        if let Some(i) = Mount::parse(&spec.raw, &mut expand)
                            .ok()
                            .and_then(|m| m.from)
                            .and_then(|name| ex.stage_ref(&name, true))
                        {
                            deps.push(Dependency { stage: i, location: spec.location, trigger: trigger.clone() });
                        }
                    }
                }
                _ => {}
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
