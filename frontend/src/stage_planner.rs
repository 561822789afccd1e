//! Plans one stage: walks its base's ONBUILD triggers and then its own
//! instructions with the ARG/ENV scope, expands what Docker expands, pins
//! every input (context digests, other stages' keys) into step definitions
//! and chains the keys.

use std::collections::BTreeMap;

use memobuild_proto::{Digest, DigestFunction, Result};

use crate::build_context::has_wildcard;
use crate::expander::Expander;
use crate::planner::StageSource;
use crate::port_spec::PortSpec;
use crate::{
    clean_path, BuildContext, CheckRule, CommandLine, CopyInstruction, CopySource, DockerIgnore, ImageConfig,
    Instruction, InstructionKind, Location, Mount, MountDefinition, MountType, NetworkMode, OnbuildTrigger, Origin,
    ParentsPath, Reads, RemoteSource, RunHeredoc, RunInstruction, Scope, SecurityMode, SourceDefinition, SourceKind,
    Stage, StageBase, Step, StepDefinition, Warning, PROXY_ARGS,
};

/// A planned stage plus the state a stage built `FROM` it inherits.
pub struct PlannedStage {
    pub stage: Stage,
    /// Position in planning order (dependencies first).
    pub order: usize,
    /// The variables a stage built `FROM` this one starts with: ENV and the
    /// ARGs declared here with their values (BuildKit carries both over).
    scope: Scope,
    workdir: String,
    user: Option<String>,
    shell: Vec<String>,
    workdir_set: bool,
    /// The build-check warnings of the stage.
    pub warnings: Vec<Warning>,
}

/// Where the stage last set CMD, ENTRYPOINT and HEALTHCHECK: only the last
/// of each counts (BuildKit's MultipleInstructionsDisallowed).
#[derive(Default)]
struct LastSet {
    cmd: Option<Location>,
    entrypoint: Option<Location>,
    healthcheck: Option<Location>,
}

/// What one instruction contributes.
struct Planned {
    definition: StepDefinition,
    reads: Reads,
    depends_on: Vec<usize>,
    uncached_env: BTreeMap<String, String>,
}

impl Planned {
    fn new(definition: StepDefinition, reads: Reads) -> Self {
        Planned { definition, reads, depends_on: Vec::new(), uncached_env: BTreeMap::new() }
    }
}

pub struct StagePlanner<'a> {
    ex: &'a Expander<'a>,
    context: &'a BuildContext,
    source: &'a StageSource<'a>,
    done: &'a BTreeMap<usize, PlannedStage>,
    scope: Scope,
    workdir: String,
    user: Option<String>,
    shell: Vec<String>,
    config: ImageConfig,
    cmd_inherited: bool,
    /// A WORKDIR was set in this Dockerfile (here or in the base stage).
    workdir_set: bool,
    last_set: LastSet,
    warnings: Vec<Warning>,
}

fn default_shell() -> Vec<String> {
    vec!["/bin/sh".to_string(), "-c".to_string()]
}

impl<'a> StagePlanner<'a> {
    pub fn new(
        ex: &'a Expander<'a>,
        context: &'a BuildContext,
        source: &'a StageSource<'a>,
        done: &'a BTreeMap<usize, PlannedStage>,
    ) -> Self {
        StagePlanner {
            ex,
            context,
            source,
            done,
            scope: Scope::default(),
            workdir: "/".to_string(),
            user: None,
            shell: default_shell(),
            config: ImageConfig::default(),
            cmd_inherited: false,
            workdir_set: false,
            last_set: LastSet::default(),
            warnings: Vec::new(),
        }
    }

    fn warn(&mut self, rule: CheckRule, message: String, at: Location) {
        self.warnings.push(Warning::new(rule, message, self.ex.source.name(), at));
    }

    pub fn plan(mut self) -> Result<PlannedStage> {
        let index = self.source.index;
        let from = self.source.from_instruction;
        let reads = self.source.from_reads.clone();
        let ex = self.ex;
        let image = self.source.base_name.clone();
        let platform = self.source.platform.clone().unwrap_or_else(|| ex.options.target_platform.to_string());
        let (base, parent_key, definition) = match ex.base_stage(&image, index) {
            Some(i) => {
                let parent = self.stage(i, from.image_location)?;
                self.scope = parent.scope.clone();
                self.workdir = parent.workdir.clone();
                self.user = parent.user.clone();
                self.shell = parent.shell.clone();
                self.workdir_set = parent.workdir_set;
                self.config = ImageConfig { onbuild: Vec::new(), ..parent.stage.config.clone() };
                self.cmd_inherited = self.config.cmd.is_some();
                let def = StepDefinition::From { image: None, digest: None, platform: platform.clone() };
                (StageBase::Stage { index: i }, Some(parent.stage.key), def)
            }
            None if image == "scratch" => {
                // BuildKit's empty image has WorkingDir "/" (and the default PATH).
                self.config.workdir = Some("/".to_string());
                let def = StepDefinition::From { image: None, digest: None, platform: platform.clone() };
                (StageBase::Scratch, None, def)
            }
            None => {
                let digest = ex.options.base_images.get(&image).map(|base| {
                    self.start_from_image(&base.config);
                    base.digest.clone()
                });
                let def = StepDefinition::From { image: Some(image.clone()), digest, platform: platform.clone() };
                (StageBase::Image { reference: image }, None, def)
            }
        };
        let mut steps = Vec::new();
        let mut depends_on = Vec::new();
        if let StageBase::Stage { index } = base {
            depends_on.push(index);
        }
        let key = Step::compute_key(&definition, &reads, parent_key.as_ref());
        let from_id = format!("{index}.0");
        steps.push(Step {
            id: from_id.clone(),
            location: self.source.from.location,
            instruction: self.source.from.text.clone(),
            definition,
            reads,
            depends_on: depends_on.clone(),
            parent: None,
            parent_key,
            key,
            uncached_env: BTreeMap::new(),
            trigger: None,
        });
        let (mut fs_key, mut fs_id) = (key, from_id);

        let source = self.source;
        // A base's trigger that does not parse fails the stage here.
        source.triggers.as_ref().map_err(Clone::clone)?;
        for (instruction, trigger) in source.instructions() {
            if trigger.is_none() {
                let stage_level = instruction.warnings.iter().filter(|w| !w.rule.whole_file());
                self.warnings.extend(stage_level.cloned());
            }
            let planned = self.instruction(instruction).map_err(|e| match trigger {
                Some(trigger) => e.context(trigger.context(ex.source.name(), source.from.location.line)),
                None => e,
            })?;
            let key = Step::compute_key(&planned.definition, &planned.reads, Some(&fs_key));
            let id = format!("{index}.{}", steps.len());
            for d in &planned.depends_on {
                if !depends_on.contains(d) {
                    depends_on.push(*d);
                }
            }
            let changes_fs = planned.definition.changes_filesystem();
            steps.push(Step {
                id: id.clone(),
                location: instruction.location,
                instruction: instruction.text.clone(),
                definition: planned.definition,
                reads: planned.reads,
                depends_on: planned.depends_on,
                parent: Some(fs_id.clone()),
                parent_key: Some(fs_key),
                key,
                uncached_env: planned.uncached_env,
                trigger: trigger.cloned(),
            });
            if changes_fs {
                fs_key = key;
                fs_id = id;
            }
        }
        self.config.env = self.scope.env().iter().map(|(k, v)| format!("{k}={v}")).collect();
        let image_key = Stage::compute_image_key(&fs_key, &self.config);
        Ok(PlannedStage {
            stage: Stage {
                index,
                name: from.stage.clone(),
                platform,
                base,
                depends_on,
                steps,
                key: fs_key,
                config: self.config,
                image_key,
            },
            order: self.done.len(),
            scope: self.scope,
            workdir: self.workdir,
            user: self.user,
            shell: self.shell,
            workdir_set: self.workdir_set,
            warnings: self.warnings,
        })
    }

    /// Starts from a base image's config: its ENV is in scope, its WORKDIR,
    /// USER and CMD/ENTRYPOINT carry on. Its ONBUILD triggers run (they are
    /// in the stage's source) and are not passed on.
    fn start_from_image(&mut self, config: &ImageConfig) {
        for pair in &config.env {
            let (name, value) = pair.split_once('=').unwrap_or((pair.as_str(), ""));
            self.scope.set_env(name, value.to_string());
        }
        if let Some(workdir) = config.workdir.as_ref().filter(|w| !w.is_empty()) {
            self.workdir = workdir.clone();
        }
        self.user = config.user.clone().filter(|u| !u.is_empty());
        if let Some(shell) = config.shell.as_ref().filter(|s| !s.is_empty()) {
            self.shell = shell.clone();
        }
        self.config = ImageConfig { onbuild: Vec::new(), ..config.clone() };
        self.cmd_inherited = self.config.cmd.is_some();
    }

    fn stage(&self, index: usize, at: Location) -> Result<&'a PlannedStage> {
        self.done.get(&index).ok_or_else(|| {
            self.ex.error(
                at,
                format!("stage {index} is used before it could be planned (its name depends on a variable this stage changes)"),
            )
        })
    }

    fn instruction(&mut self, instruction: &Instruction) -> Result<Planned> {
        let ex = self.ex;
        let at = instruction.location;
        let mut reads = Reads::new();
        let definition = match &instruction.kind {
            InstructionKind::Run(run) => return self.run(run, at),
            InstructionKind::Copy(copy) | InstructionKind::Add(copy) => return self.copy(copy, at),
            InstructionKind::Arg(decls) => {
                let args = ex.declare_args(&mut self.scope, &mut reads, decls, at, Some(&ex.global))?;
                for (name, _) in &args {
                    self.warn_secret("ARG", name, at);
                }
                StepDefinition::Arg { args }
            }
            InstructionKind::Env(pairs) => {
                let vars = ex.set_env(&mut self.scope, &mut reads, pairs, at)?;
                for (name, _) in &vars {
                    self.warn_secret("ENV", name, at);
                }
                StepDefinition::Env { vars }
            }
            InstructionKind::Label(pairs) => {
                let mut labels = Vec::new();
                for kv in pairs {
                    let k = ex.word(&self.scope, &mut reads, &kv.key, at)?;
                    let v = ex.word(&self.scope, &mut reads, &kv.value, at)?;
                    self.config.labels.insert(k.clone(), v.clone());
                    labels.push((k, v));
                }
                StepDefinition::Label { labels }
            }
            InstructionKind::Expose(ports) => {
                let mut out = Vec::new();
                for raw in ports {
                    for port in ex.words(&self.scope, &mut reads, raw, at)? {
                        let spec = PortSpec::parse(&port).map_err(|e| ex.error(at, e))?;
                        for (rule, message) in spec.warnings {
                            self.warn(rule, message, at);
                        }
                        self.config.exposed_ports.extend(spec.ports.iter().cloned());
                        out.extend(spec.ports);
                    }
                }
                StepDefinition::Expose { ports: out }
            }
            InstructionKind::Volume(paths) => {
                let mut out = Vec::new();
                for raw in paths {
                    let path = ex.word(&self.scope, &mut reads, raw, at)?;
                    if path.trim().is_empty() {
                        return Err(ex.error(at, "VOLUME specified can not be an empty string"));
                    }
                    self.config.volumes.insert(path.clone());
                    out.push(path);
                }
                StepDefinition::Volume { paths: out }
            }
            InstructionKind::User(raw) => {
                let user = ex.word(&self.scope, &mut reads, raw, at)?;
                self.user = Some(user.clone());
                self.config.user = Some(user.clone());
                StepDefinition::User { user }
            }
            InstructionKind::Workdir(raw) => {
                let path = ex.word(&self.scope, &mut reads, raw, at)?;
                if !self.workdir_set && !path.starts_with('/') {
                    let message =
                        format!("Relative workdir {path:?} can have unexpected results if the base image changes");
                    self.warn(CheckRule::WorkdirRelativePath, message, at);
                }
                self.workdir_set = true;
                let path = if path.starts_with('/') {
                    clean_path(&path)
                } else {
                    clean_path(&format!("{}/{path}", self.workdir))
                };
                self.workdir = path.clone();
                self.config.workdir = Some(path.clone());
                let user = self.config.user.clone().filter(|u| !u.is_empty());
                StepDefinition::Workdir { path, user }
            }
            InstructionKind::Stopsignal(raw) => {
                let signal = ex.word(&self.scope, &mut reads, raw, at)?;
                if !valid_signal(&signal) {
                    return Err(ex.error(at, format!("invalid signal {signal:?}")));
                }
                self.config.stop_signal = Some(signal.clone());
                StepDefinition::Stopsignal { signal }
            }
            InstructionKind::Cmd(command) => {
                self.check_command(instruction, command);
                let argv = self.argv(command);
                self.config.cmd = Some(argv.clone());
                self.cmd_inherited = false;
                StepDefinition::Cmd { argv }
            }
            InstructionKind::Entrypoint(command) => {
                self.check_command(instruction, command);
                let argv = self.argv(command);
                self.config.entrypoint = Some(argv.clone());
                if self.cmd_inherited {
                    self.config.cmd = None;
                    self.cmd_inherited = false;
                }
                StepDefinition::Entrypoint { argv }
            }
            InstructionKind::Healthcheck(healthcheck) => {
                self.check_used_once(instruction);
                self.config.healthcheck = Some(healthcheck.clone());
                StepDefinition::Healthcheck { healthcheck: healthcheck.clone() }
            }
            InstructionKind::Shell(argv) => {
                self.shell = argv.clone();
                self.config.shell = Some(argv.clone());
                StepDefinition::Shell { argv: argv.clone() }
            }
            InstructionKind::Maintainer(name) => {
                self.config.maintainer = Some(name.clone());
                StepDefinition::Maintainer { name: name.clone() }
            }
            InstructionKind::Onbuild(_) => {
                let trigger = OnbuildTrigger::text_of(instruction);
                self.config.onbuild.push(trigger.clone());
                StepDefinition::Onbuild { trigger }
            }
            InstructionKind::From(_) => return Err(ex.error(at, "FROM inside a stage body (internal error)")),
        };
        Ok(Planned::new(definition, reads))
    }

    /// CMD and ENTRYPOINT: JSONArgsRecommended for the shell form (unless
    /// a SHELL is set) and MultipleInstructionsDisallowed.
    fn check_command(&mut self, instruction: &Instruction, command: &CommandLine) {
        self.check_used_once(instruction);
        if matches!(command, CommandLine::Shell(s) if !s.trim().is_empty()) && self.config.shell.is_none() {
            let message = format!(
                "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                instruction.keyword_as_written()
            );
            self.warn(CheckRule::JsonArgsRecommended, message, instruction.location);
        }
    }

    /// MultipleInstructionsDisallowed, at the instruction that no longer
    /// counts.
    fn check_used_once(&mut self, instruction: &Instruction) {
        let slot = match instruction.kind {
            InstructionKind::Cmd(_) => &mut self.last_set.cmd,
            InstructionKind::Entrypoint(_) => &mut self.last_set.entrypoint,
            _ => &mut self.last_set.healthcheck,
        };
        if let Some(previous) = slot.replace(instruction.location) {
            let message = format!(
                "Multiple {} instructions should not be used in the same stage because only the last one will be used",
                instruction.keyword_as_written()
            );
            self.warn(CheckRule::MultipleInstructionsDisallowed, message, previous);
        }
    }

    /// SecretsUsedInArgOrEnv: a `_`-separated word of the name says it is
    /// a secret (and none says it is public).
    fn warn_secret(&mut self, instruction: &str, name: &str, at: Location) {
        const SECRET: [&str; 10] =
            ["apikey", "auth", "credential", "credentials", "key", "password", "pword", "passwd", "secret", "token"];
        const PUBLIC: [&str; 3] = ["public", "file", "version"];
        let words: Vec<String> = name.split('_').map(str::to_ascii_lowercase).collect();
        let has = |list: &[&str]| words.iter().any(|w| list.contains(&w.as_str()));
        if has(&SECRET) && !has(&PUBLIC) {
            let message = format!("Do not use ARG or ENV instructions for sensitive data ({instruction} {name:?})");
            self.warn(CheckRule::SecretsUsedInArgOrEnv, message, at);
        }
    }

    fn argv(&self, command: &CommandLine) -> Vec<String> {
        match command {
            CommandLine::Shell(s) if s.trim().is_empty() => Vec::new(),
            _ => command.argv(&self.shell),
        }
    }

    fn run(&mut self, run: &RunInstruction, at: Location) -> Result<Planned> {
        let ex = self.ex;
        let mut reads = Reads::new();
        let mut mounts = Vec::new();
        let mut depends_on = Vec::new();
        for spec in &run.mounts {
            let scope = &self.scope;
            let mut expand = |v: &str| {
                ex.lexer.process_word(v, &mut scope.recorder(&mut reads)).map_err(|e| format!("{e} in {v:?}"))
            };
            let mut mount = Mount::parse(&spec.raw, &mut expand)
                .map_err(|e| ex.error(spec.location, format!("--mount={}: {e}", spec.raw)))?;
            // The stage or image is the one the text names (BuildKit reads
            // `from=` before expanding anything).
            mount.from.clone_from(&spec.from);
            if mount.kind.mounts_at_target() {
                let target = mount.target.clone().unwrap_or_default();
                let absolute =
                    clean_path(&format!("{}/{target}", if target.starts_with('/') { "" } else { &self.workdir }));
                if absolute == "/" {
                    return Err(ex.error(spec.location, format!("--mount={}: invalid mount target \"/\"", spec.raw)));
                }
                mount.target = Some(absolute);
            }
            let (origin, source_digest) = match (mount.kind, &mount.from) {
                (MountType::Bind | MountType::Cache, Some(name)) => {
                    let target = mount.target.clone().unwrap_or_default();
                    let origin = self.origin(name, spec.location, Read::Mount { target: &target })?;
                    if let Some(i) = self.ex.stage_ref(name, false) {
                        depends_on.push(i);
                    }
                    (Some(origin), None)
                }
                (MountType::Bind, None) => {
                    let src = mount.source.clone().unwrap_or_default();
                    let resolved = self
                        .context
                        .resolve(&src)
                        .map_err(|e| ex.error(spec.location, format!("--mount source {e}")))?
                        .ok_or_else(|| {
                            ex.error(
                                spec.location,
                                format!(
                                    "--mount source {src:?} not found in the build context (is it in .dockerignore?)"
                                ),
                            )
                        })?;
                    let digest = self.context.selection_digest(&resolved, &DockerIgnore::default(), None);
                    (Some(Origin::Context), digest.map(|d| d.hex()))
                }
                _ => (None, None),
            };
            mounts.push(MountDefinition { mount, origin, source_digest });
        }
        // The whole environment is in the definition; `reads` only lists
        // what the flags expanded.
        let env = self.scope.run_env();
        let uncached_env = PROXY_ARGS
            .iter()
            .filter_map(|k| ex.options.build_args.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        let heredocs = run
            .heredocs
            .iter()
            .map(|h| RunHeredoc {
                name: h.name.clone(),
                content: h.content.clone(),
                expand: h.expand,
                file_descriptor: h.file_descriptor,
            })
            .collect();
        if run.command.is_empty() {
            return Err(ex.error(at, "RUN requires at least one argument"));
        }
        let definition = StepDefinition::Run {
            argv: run.command.argv(&self.shell),
            heredocs,
            env,
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            network: run.network.unwrap_or(NetworkMode::Default),
            security: run.security.unwrap_or(SecurityMode::Sandbox),
            mounts,
        };
        Ok(Planned { definition, reads, depends_on, uncached_env })
    }

    /// Where `--from=name` or `from=name` reads: a stage (COPY also takes
    /// its index) or an image. As in BuildKit, a stage must come before the
    /// one that reads it.
    fn origin(&self, name: &str, at: Location, read: Read<'_>) -> Result<Origin> {
        let copy = matches!(read, Read::Copy);
        match self.ex.stage_ref(name, copy) {
            Some(i) if i == self.source.index => {
                Err(self.ex.error(at, format!("{name:?} refers to the current stage: a stage cannot read from itself")))
            }
            Some(i) if i > self.source.index => Err(self.ex.error(
                at,
                match read {
                    Read::Copy => format!(
                        "cannot copy from stage {name:?}, it needs to be defined before current stage {:?}",
                        self.source.stage_name()
                    ),
                    Read::Mount { target } => format!(
                        "cannot mount from stage {name:?} to {target:?}, stage needs to be defined before current command"
                    ),
                },
            )),
            Some(i) => Ok(Origin::Stage { key: self.stage(i, at)?.stage.key.hex() }),
            None => Ok(Origin::Image { reference: name.to_string() }),
        }
    }

    fn copy(&mut self, copy: &CopyInstruction, at: Location) -> Result<Planned> {
        let ex = self.ex;
        let kw = if copy.add { "ADD" } else { "COPY" };
        let mut reads = Reads::new();
        let mut depends_on = Vec::new();
        let origin = match &copy.from {
            None => Origin::Context,
            Some(raw) => {
                let from_at = copy.from_location.unwrap_or(at);
                let origin = self.origin(raw, from_at, Read::Copy)?;
                if let Some(i) = ex.stage_ref(raw, true) {
                    depends_on.push(i);
                }
                origin
            }
        };
        let word = |text: &str, scope: &Scope, reads: &mut Reads| ex.word(scope, reads, text, at);
        let mut excludes = Vec::new();
        for e in &copy.excludes {
            excludes.push(word(e, &self.scope, &mut reads)?);
        }
        let exclude = DockerIgnore::from_patterns(&excludes).map_err(|e| ex.error(at, format!("--exclude: {e}")))?;
        // An empty --chown or --chmod (e.g. from an unset ARG) is no flag.
        let chown =
            copy.chown.as_ref().map(|c| word(c, &self.scope, &mut reads)).transpose()?.filter(|c| !c.is_empty());
        let chmod =
            copy.chmod.as_ref().map(|c| word(c, &self.scope, &mut reads)).transpose()?.filter(|c| !c.is_empty());
        if let Some(mode) = &chmod {
            check_chmod(mode).map_err(|e| ex.error(at, e))?;
        }
        let checksum = copy.checksum.as_ref().map(|c| word(c, &self.scope, &mut reads)).transpose()?;
        if let Some(sum) = checksum.as_deref().filter(|sum| !valid_checksum(sum)) {
            return Err(
                ex.error(at, format!("invalid ADD --checksum={sum}: expected sha256:<64 lowercase hex digits>"))
            );
        }
        let dest_raw = word(&copy.dest, &self.scope, &mut reads)?;
        let mut dest = absolute_dest(&self.workdir, &dest_raw);
        if copy.parents && !dest.ends_with('/') {
            // Sources keep their paths below it: always a directory.
            dest.push('/');
        }

        let mut sources = Vec::new();
        for (i, source) in copy.sources.iter().enumerate() {
            let src_at = copy.source_locations.get(i).copied().unwrap_or(at);
            match source {
                CopySource::Heredoc(h) => {
                    let content = if h.expand {
                        ex.lexer
                            .process_heredoc(&h.content, &mut self.scope.recorder(&mut reads))
                            .map_err(|e| ex.error(src_at, format!("heredoc {:?}: {e}", h.name)))?
                    } else {
                        h.content.clone()
                    };
                    sources.push(SourceDefinition::Heredoc {
                        name: h.name.clone(),
                        digest: Digest::of(DigestFunction::Blake3, content.as_bytes()).hex(),
                        content,
                    });
                }
                CopySource::Path(raw) => {
                    let path = ex.word(&self.scope, &mut reads, raw, src_at)?;
                    let instruction = if copy.add { "ADD" } else { "COPY" };
                    let kind = SourceKind::of(&path).map_err(|e| ex.error(src_at, format!("{instruction} {e}")))?;
                    if kind != SourceKind::Path && !copy.add {
                        return Err(ex.error(src_at, format!("COPY source {path:?} is a URL: only ADD can fetch URLs")));
                    }
                    sources.push(match kind {
                        SourceKind::Path => {
                            let parents = copy
                                .parents
                                .then(|| ParentsPath::parse(&path))
                                .transpose()
                                .map_err(|e| ex.error(src_at, format!("{kw} source {e}")))?;
                            let matches = match origin {
                                Origin::Context => {
                                    self.context_matches(kw, &path, &exclude, parents.as_ref(), src_at)?
                                }
                                _ => Vec::new(),
                            };
                            SourceDefinition::Path { path, matches }
                        }
                        SourceKind::Http => {
                            let (digest, mtime) = match (&checksum, ex.options.remote_sources.get(&path)) {
                                (Some(sum), _) => (Some(sum.clone()), None),
                                (None, Some(RemoteSource::File { digest, mtime })) => (Some(digest.clone()), *mtime),
                                (None, _) => (None, None),
                            };
                            SourceDefinition::Http { url: path, digest, mtime }
                        }
                        SourceKind::Git(repository) => {
                            let subdir = clean_path(&repository.subdir);
                            if subdir == ".." || subdir.starts_with("../") {
                                return Err(ex.error(
                                    src_at,
                                    format!(
                                        "ADD {path}: subdirectory {:?} is outside the repository",
                                        repository.subdir
                                    ),
                                ));
                            }
                            let commit = match ex.options.remote_sources.get(&repository.to_string()) {
                                Some(RemoteSource::Git { commit }) => Some(commit.clone()),
                                _ => None,
                            };
                            SourceDefinition::Git { repository, commit }
                        }
                    });
                }
            }
        }
        if checksum.is_some() && !matches!(sources.as_slice(), [SourceDefinition::Http { .. }]) {
            return Err(ex.error(at, "ADD --checksum can only be used with one HTTP(S) URL source"));
        }
        // `?keep-git-dir=true` on a git source says what `--keep-git-dir` does.
        let keep_git_dir = copy.keep_git_dir
            || sources.iter().any(|s| matches!(s, SourceDefinition::Git { repository, .. } if repository.keep_git_dir));
        let definition = StepDefinition::Copy {
            add: copy.add,
            origin,
            sources,
            dest,
            chown,
            chmod,
            link: copy.link,
            parents: copy.parents,
            excludes,
            keep_git_dir,
            checksum,
            unpack: copy.unpack,
        };
        Ok(Planned { definition, reads, depends_on, uncached_env: BTreeMap::new() })
    }

    /// The context paths a source names, with the digest of what each
    /// brings. A missing literal path is an error; a glob may match nothing.
    /// With `--parents` the paths are as matched (symlinks not followed yet,
    /// as they say where the files land) and `--exclude` applies to the
    /// kept part.
    fn context_matches(
        &self,
        kw: &str,
        path: &str,
        exclude: &DockerIgnore,
        parents: Option<&ParentsPath>,
        at: Location,
    ) -> Result<Vec<(String, String)>> {
        let ex = self.ex;
        let outside = |e: String| ex.error(at, format!("{kw} source {e}"));
        if clean_path(path).starts_with("..") {
            return Err(outside(format!("{path:?} is outside the build context")));
        }
        let candidates = if path.split('/').any(has_wildcard) {
            self.context.glob(path).map_err(outside)?
        } else if parents.is_some() {
            vec![clean_path(&format!("/{path}")).trim_start_matches('/').to_string()]
        } else {
            vec![path.to_string()]
        };
        let mut out = Vec::new();
        for candidate in candidates {
            let resolved = self.context.resolve(&candidate).map_err(outside)?.ok_or_else(|| {
                ex.error(
                    at,
                    format!(
                        "{kw} source {path:?} not found in the build context (missing, or excluded by .dockerignore)"
                    ),
                )
            })?;
            let kept = parents.map(|p| p.kept_part(&candidate)).filter(|k| !k.is_empty());
            if let Some(digest) = self.context.selection_digest(&resolved, exclude, kept.as_deref()) {
                // As matched: a symlink named as a source keeps its name (the
                // executor resolves it again).
                out.push((candidate, digest.hex()));
            }
        }
        Ok(out)
    }
}

/// `sha256:` and 64 lowercase hex digits.
fn valid_checksum(sum: &str) -> bool {
    sum.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Joins a relative COPY destination to WORKDIR, keeping a trailing `/`
/// (which makes it a directory).
fn absolute_dest(workdir: &str, dest: &str) -> String {
    let dir = dest.ends_with('/') || dest == "." || dest.ends_with("/.") || dest.is_empty();
    let joined = if dest.starts_with('/') { clean_path(dest) } else { clean_path(&format!("{workdir}/{dest}")) };
    if dir && joined != "/" {
        format!("{joined}/")
    } else {
        joined
    }
}

fn valid_signal(signal: &str) -> bool {
    if let Ok(n) = signal.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let name = signal.strip_prefix("SIG").unwrap_or(signal);
    const NAMES: [&str; 31] = [
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL", "PIPE", "POLL",
        "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1",
        "USR2", "WINCH",
    ];
    if NAMES.contains(&name) || ["XCPU", "XFSZ", "VTALRM"].contains(&name) {
        return true;
    }
    let rt = |base: &str, sign: char| {
        name.strip_prefix(base).is_some_and(|rest| {
            rest.is_empty() || rest.strip_prefix(sign).is_some_and(|n| n.parse::<u8>().is_ok_and(|n| n <= 30))
        })
    };
    rt("RTMIN", '+') || rt("RTMAX", '-')
}

/// What a stage reads another stage for.
#[derive(Clone, Copy)]
enum Read<'t> {
    Copy,
    Mount { target: &'t str },
}

/// `--chmod`: octal up to 07777 (`755`, `0644`) or symbolic (`u+x,go-w`).
fn check_chmod(mode: &str) -> std::result::Result<(), String> {
    let octal_error =
        || format!("invalid chmod parameter: '{mode}'. it should be octal string and between 0 and 07777");
    if mode.bytes().all(|b| b.is_ascii_digit()) {
        return match u32::from_str_radix(mode, 8) {
            Ok(m) if m <= 0o7777 => Ok(()),
            _ => Err(octal_error()),
        };
    }
    let symbolic = mode.split(',').all(|clause| {
        let who = clause.bytes().take_while(|b| b"ugoa".contains(b)).count();
        let rest = &clause.as_bytes()[who..];
        !rest.is_empty() && b"+-=".contains(&rest[0]) && rest[1..].iter().all(|b| b"rwxXst".contains(b))
    });
    if symbolic {
        Ok(())
    } else {
        Err(format!("invalid chmod parameter: '{mode}': use an octal mode like 0755 or a symbolic one like u+x"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_modes() {
        for ok in ["SIGTERM", "KILL", "9", "SIGRTMIN+3"] {
            assert!(valid_signal(ok), "{ok}");
        }
        for bad in ["SIGFOO", "0", "99", "SIGRTMIN+99"] {
            assert!(!valid_signal(bad), "{bad}");
        }
        for ok in ["755", "0644", "00755", "7777", "u+x", "go-w,u=rwx"] {
            assert_eq!(check_chmod(ok), Ok(()), "{ok}");
        }
        for bad in ["999", "17777", "x+y", "u"] {
            assert!(check_chmod(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dest_joins_workdir() {
        assert_eq!(absolute_dest("/app", "."), "/app/");
        assert_eq!(absolute_dest("/app", "bin/"), "/app/bin/");
        assert_eq!(absolute_dest("/app", "x"), "/app/x");
        assert_eq!(absolute_dest("/app", "/etc/x"), "/etc/x");
        assert_eq!(absolute_dest("/", "./"), "/");
    }
}
