//! Dockerfiles turned into build steps ([`parse`]), the way E2B's SDK maps them
//! (`Template().from_dockerfile(...)`), so `paddock template build` sends what the SDK would:
//! one stage; RUN, COPY/ADD of local files (one step per source), ENV, WORKDIR and USER as
//! steps; CMD and ENTRYPOINT combined into the start command and HEALTHCHECK CMD as the ready
//! command. As in the SDK the steps begin with `USER root` and `WORKDIR /` (Docker's defaults)
//! and end with `USER user` and `WORKDIR /home/user` (E2B's) unless the Dockerfile sets them.
//!
//! Variables follow Docker rather than the SDK (which keeps every `$VAR` as written and turns
//! ARGs into ENV steps): ARG and ENV values are substituted where Docker substitutes them
//! (FROM, COPY, ENV, WORKDIR, USER, ...), `--build-arg` values override ARG defaults, and RUN
//! steps get the ARGs in scope as exported variables (`export V=1; <command>`), so they are not
//! kept in the template. A variable the Dockerfile does not set (Docker would take it from the
//! base image) is kept as written in ENV values (`ENV PATH=/opt/bin:$PATH`, for the build to
//! expand, as the SDK sends it) and is empty elsewhere, with a warning.
//!
//! Each step keeps where it came from ([`StepSource`]) so build logs can name the instruction.
//! Instructions with no meaning for a template (EXPOSE, LABEL, ...) are skipped with a warning;
//! what cannot be honoured (multi-stage builds, heredocs, ADD of URLs or archives) is an error
//! naming the line. Computing the COPY steps' `filesHash` is [`crate::context`]'s job.

mod shell;
mod syntax;

use std::collections::{HashMap, HashSet};

use crate::wire::{BuildStartV2, WireStep};
use shell::Lex;
use syntax::{
    is_heredoc, json_args, parse_words, shell_join, shell_quote, split, Command, Instruction,
};

/// A Dockerfile as build steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dockerfile {
    /// The FROM reference (an image, or the name of a template), ARGs substituted.
    pub from: String,
    /// Line of the FROM instruction.
    pub from_line: usize,
    /// The steps, in order; COPY steps have no `filesHash` yet.
    pub steps: Vec<WireStep>,
    /// Where each step came from (same length and order as `steps`).
    pub sources: Vec<StepSource>,
    /// The command started in every sandbox (CMD and ENTRYPOINT combined as Docker does).
    pub start_cmd: Option<String>,
    /// The ready check (HEALTHCHECK CMD).
    pub ready_cmd: Option<String>,
    /// What was ignored or could change meaning, one line each, with its line number.
    pub warnings: Vec<String>,
}

/// The instruction a step was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSource {
    /// 1-based line where the instruction starts; `None` for the implicit default steps.
    pub line: Option<usize>,
    /// The instruction as written (continuation lines joined), or a description of an
    /// implicit step.
    pub instruction: String,
}

/// Why a Dockerfile cannot be turned into steps, with the line it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile line {line}: {kind}")]
pub struct DockerfileError {
    /// 1-based line of the instruction (the last line for a missing FROM).
    pub line: usize,
    /// What is wrong.
    pub kind: DockerfileErrorKind,
}

/// The kinds of [`DockerfileError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DockerfileErrorKind {
    /// Malformed: bad flags, quotes, substitutions or argument counts.
    #[error("{0}")]
    Syntax(String),
    /// Valid Docker, but not something a template build can do (what, and what to do instead).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// No FROM instruction.
    #[error("the Dockerfile has no FROM instruction")]
    NoFrom,
    /// An instruction Docker does not know either.
    #[error("unknown instruction {0}")]
    UnknownInstruction(String),
}

impl Dockerfile {
    /// The build request for these steps: `fromTemplate` when the FROM names a template,
    /// else `fromImage`; `force` rebuilds every step. COPY steps need their `filesHash` set
    /// first.
    pub fn build_request(&self, from_template: bool, force: bool) -> BuildStartV2 {
        let (from_image, from_template) = if from_template {
            (None, Some(self.from.clone()))
        } else {
            (Some(self.from.clone()), None)
        };
        BuildStartV2 {
            from_image,
            from_template,
            from_image_registry: None,
            force: Some(force),
            steps: Some(self.steps.clone()),
            start_cmd: self.start_cmd.clone(),
            ready_cmd: self.ready_cmd.clone(),
        }
    }
}

/// Parses a Dockerfile. `build_args` override ARG defaults (`--build-arg K=V`).
pub fn parse(text: &str, build_args: &[(String, String)]) -> Result<Dockerfile, DockerfileError> {
    let (escape, instructions) = split(text)?;
    let last_line = text.lines().count().max(1);
    let mut c = Converter {
        escape,
        build_args,
        used_args: HashSet::new(),
        global_args: HashMap::new(),
        args: Vec::new(),
        env: Vec::new(),
        out: Dockerfile::default(),
        from_seen: false,
        user_set: false,
        workdir_set: false,
        cmd: None,
        entrypoint: None,
    };
    for ins in &instructions {
        c.instruction(ins)?;
    }
    if !c.from_seen {
        return Err(DockerfileError {
            line: last_line,
            kind: DockerfileErrorKind::NoFrom,
        });
    }
    c.finish();
    Ok(c.out)
}

fn syntax(line: usize, msg: impl Into<String>) -> DockerfileError {
    DockerfileError {
        line,
        kind: DockerfileErrorKind::Syntax(msg.into()),
    }
}

fn unsupported(line: usize, what: impl Into<String>) -> DockerfileError {
    DockerfileError {
        line,
        kind: DockerfileErrorKind::Unsupported(what.into()),
    }
}

/// Flag types of an instruction: name, whether it takes a value, whether it is honoured
/// (an ignored flag is accepted with a warning).
type FlagSpec = &'static [(&'static str, bool, bool)];

const RUN_FLAGS: FlagSpec = &[
    ("mount", true, false),
    ("network", true, false),
    ("security", true, false),
    ("device", true, false),
];
const COPY_FLAGS: FlagSpec = &[
    ("chown", true, true),
    ("chmod", true, true),
    ("from", true, true),
    ("link", false, false),
    ("exclude", true, false),
    ("parents", false, false),
];
const ADD_FLAGS: FlagSpec = &[
    ("chown", true, true),
    ("chmod", true, true),
    ("from", true, true),
    ("link", false, false),
    ("exclude", true, false),
    ("parents", false, false),
    ("keep-git-dir", false, false),
    ("checksum", true, false),
    ("unpack", false, false),
];
const FROM_FLAGS: FlagSpec = &[("platform", true, false)];
const HEALTHCHECK_FLAGS: FlagSpec = &[
    ("interval", true, false),
    ("timeout", true, false),
    ("start-period", true, false),
    ("start-interval", true, false),
    ("retries", true, false),
];

/// Archive extensions that Docker's ADD unpacks.
const ARCHIVE_SUFFIXES: &[&str] = &[
    ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz", ".tar.zst",
];

struct Converter<'a> {
    escape: char,
    build_args: &'a [(String, String)],
    used_args: HashSet<String>,
    /// ARGs declared before FROM (value if any).
    global_args: HashMap<String, Option<String>>,
    /// ARGs of the stage that have a value, in declaration order.
    args: Vec<(String, String)>,
    /// ENV variables set by the Dockerfile, in order.
    env: Vec<(String, String)>,
    out: Dockerfile,
    from_seen: bool,
    user_set: bool,
    workdir_set: bool,
    cmd: Option<Command>,
    entrypoint: Option<Command>,
}

impl Converter<'_> {
    /// The variables known now: the stage's ARGs, overridden by ENV (as in Docker).
    fn vars(&self) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = self.args.iter().cloned().collect();
        m.extend(self.env.iter().cloned());
        m
    }

    /// Processes a word with the known variables. Docker takes a variable the Dockerfile does
    /// not set from the base image's environment, which is not known here: it becomes `""`,
    /// with a warning.
    fn word(&mut self, ins: &Instruction, w: &str) -> Result<String, DockerfileError> {
        self.process(ins, w, false)
    }

    /// An ENV value: a variable the Dockerfile does not set is kept as written (`$PATH`), for
    /// the build to expand from the image's environment, as the E2B SDK sends it.
    fn env_word(&mut self, ins: &Instruction, w: &str) -> Result<String, DockerfileError> {
        self.process(ins, w, true)
    }

    fn process(
        &mut self,
        ins: &Instruction,
        w: &str,
        keep_unset: bool,
    ) -> Result<String, DockerfileError> {
        let vars = self.vars();
        let (text, unset) = Lex {
            escape: self.escape,
            env: &vars,
            keep_unset,
        }
        .process(w)
        .map_err(|e| syntax(ins.line, e))?;
        if !keep_unset {
            for name in unset {
                let msg = format!(
                    "${name} is not set by the Dockerfile; substituted as empty (Docker would \
                     take it from the base image's environment)"
                );
                let full = format!("line {}: {msg}", ins.line);
                if !self.out.warnings.contains(&full) {
                    self.out.warnings.push(full);
                }
            }
        }
        Ok(text)
    }

    fn build_arg(&mut self, name: &str) -> Option<String> {
        let v = self
            .build_args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone());
        if v.is_some() {
            self.used_args.insert(name.to_string());
        }
        v
    }

    fn warn(&mut self, line: usize, msg: impl std::fmt::Display) {
        self.out.warnings.push(format!("line {line}: {msg}"));
    }

    fn push(&mut self, kind: &str, args: Vec<String>, line: Option<usize>, text: String) {
        self.out.steps.push(WireStep {
            kind: kind.into(),
            args: Some(args),
            ..WireStep::default()
        });
        self.out.sources.push(StepSource {
            line,
            instruction: text,
        });
    }

    /// Checks flags against `spec`: unknown or duplicate flags are errors, ignored ones a
    /// warning. Returns the honoured flags' values.
    fn flags(
        &mut self,
        ins: &Instruction,
        spec: FlagSpec,
    ) -> Result<HashMap<&'static str, String>, DockerfileError> {
        let mut values = HashMap::new();
        let mut seen = HashSet::new();
        for flag in &ins.flags {
            let body = flag.strip_prefix("--").unwrap_or(flag);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(spec_name, takes_value, honoured)) =
                spec.iter().find(|(n, _, _)| *n == name)
            else {
                return Err(syntax(ins.line, format!("unknown flag: --{name}")));
            };
            if !seen.insert(spec_name) {
                return Err(syntax(
                    ins.line,
                    format!("duplicate flag specified: --{name}"),
                ));
            }
            let value = match (takes_value, value) {
                (true, Some(v)) => v.to_string(),
                (true, None) => {
                    return Err(syntax(
                        ins.line,
                        format!("missing a value on flag: --{name}"),
                    ))
                }
                (false, None | Some("") | Some("true")) => "true".into(),
                (false, Some("false")) => "false".into(),
                (false, Some(v)) => {
                    return Err(syntax(
                        ins.line,
                        format!("expecting boolean value for flag --{name}, not: {v}"),
                    ))
                }
            };
            if honoured {
                values.insert(spec_name, value);
            } else {
                self.warn(ins.line, format!("{} flag --{name} is ignored", ins.name));
            }
        }
        Ok(values)
    }

    fn instruction(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        if !self.from_seen && ins.name != "FROM" && ins.name != "ARG" {
            return Err(syntax(
                ins.line,
                format!("{} before the FROM instruction", ins.name),
            ));
        }
        match ins.name.as_str() {
            "FROM" => self.from(ins),
            "ARG" => self.arg(ins),
            "RUN" => self.run(ins),
            "COPY" => self.copy(ins, COPY_FLAGS),
            "ADD" => self.copy(ins, ADD_FLAGS),
            "ENV" => self.env(ins),
            "WORKDIR" | "USER" => {
                self.flags(ins, &[])?;
                if ins.rest.is_empty() {
                    return Err(syntax(
                        ins.line,
                        format!("{} requires an argument", ins.name),
                    ));
                }
                let value = self.word(ins, &ins.rest)?;
                if ins.name == "USER" {
                    self.user_set = true;
                } else {
                    self.workdir_set = true;
                }
                self.push(&ins.name, vec![value], Some(ins.line), ins.text.clone());
                Ok(())
            }
            "CMD" | "ENTRYPOINT" => {
                self.flags(ins, &[])?;
                let c = Command::parse(&ins.rest);
                if ins.name == "CMD" {
                    self.cmd = Some(c);
                } else {
                    self.entrypoint = Some(c);
                }
                Ok(())
            }
            "HEALTHCHECK" => self.healthcheck(ins),
            "EXPOSE" | "LABEL" | "VOLUME" | "STOPSIGNAL" | "MAINTAINER" => {
                self.warn(
                    ins.line,
                    format!("{} is ignored (no meaning for a template)", ins.name),
                );
                Ok(())
            }
            "SHELL" => {
                self.warn(
                    ins.line,
                    "SHELL is ignored: RUN steps always run with /bin/bash -c",
                );
                Ok(())
            }
            "ONBUILD" => {
                self.warn(
                    ins.line,
                    "ONBUILD is ignored (templates are not built upon by Docker)",
                );
                Ok(())
            }
            other => Err(DockerfileError {
                line: ins.line,
                kind: DockerfileErrorKind::UnknownInstruction(other.to_string()),
            }),
        }
    }

    fn from(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        if self.from_seen {
            return Err(unsupported(ins.line, "a second FROM (multi-stage builds)"));
        }
        self.flags(ins, FROM_FLAGS)?;
        let words: Vec<&str> = ins.rest.split_whitespace().collect();
        let image = match words.as_slice() {
            [image] => *image,
            [image, as_kw, _] if as_kw.eq_ignore_ascii_case("as") => *image,
            _ => {
                return Err(syntax(
                    ins.line,
                    "FROM requires either one or three arguments (IMAGE [AS NAME])",
                ))
            }
        };
        // FROM sees only the ARGs declared before it; an unset one is empty, as in Docker.
        let globals: HashMap<String, String> = self
            .global_args
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        let from = Lex {
            escape: self.escape,
            env: &globals,
            keep_unset: false,
        }
        .process_word(image)
        .map_err(|e| syntax(ins.line, e))?;
        if from.is_empty() {
            return Err(syntax(ins.line, "FROM names no image"));
        }
        if from == "scratch" {
            return Err(unsupported(
                ins.line,
                "FROM scratch (a template needs a Linux userland to run in)",
            ));
        }
        self.from_seen = true;
        self.out.from = from;
        self.out.from_line = ins.line;
        // Docker's defaults for the instructions that follow.
        self.push(
            "USER",
            vec!["root".into()],
            None,
            "USER root (Docker's default)".into(),
        );
        self.push(
            "WORKDIR",
            vec!["/".into()],
            None,
            "WORKDIR / (Docker's default)".into(),
        );
        Ok(())
    }

    fn arg(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        self.flags(ins, &[])?;
        let words = parse_words(&ins.rest, self.escape);
        if words.is_empty() {
            return Err(syntax(ins.line, "ARG requires at least one argument"));
        }
        for w in words {
            let (raw_name, default) = match w.split_once('=') {
                Some((n, d)) => (n.to_string(), Some(d.to_string())),
                None => (w.clone(), None),
            };
            let name = self.word(ins, &raw_name)?;
            if name.is_empty() {
                return Err(syntax(ins.line, "ARG names can not be blank"));
            }
            let default = match default {
                Some(d) => Some(self.word(ins, &d)?),
                None => None,
            };
            let given = self.build_arg(&name);
            if !self.from_seen {
                self.global_args.insert(name, given.or(default));
                continue;
            }
            let value = given
                .or(default)
                .or_else(|| self.global_args.get(&name).cloned().flatten());
            self.args.retain(|(k, _)| *k != name);
            if let Some(v) = value {
                self.args.push((name, v));
            }
        }
        Ok(())
    }

    fn run(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        self.flags(ins, RUN_FLAGS)?;
        let command = match json_args(&ins.rest) {
            Some(words) if words.is_empty() => {
                return Err(syntax(ins.line, "RUN requires at least one argument"))
            }
            Some(words) => shell_join(&words),
            None => {
                if ins.rest.is_empty() {
                    return Err(syntax(ins.line, "RUN requires at least one argument"));
                }
                if ins.rest.split_whitespace().any(is_heredoc) {
                    return Err(unsupported(
                        ins.line,
                        "a heredoc (<<EOF) in RUN; put the script in a file and COPY it",
                    ));
                }
                ins.rest.clone()
            }
        };
        // ARGs are environment variables of RUN steps, unless an ENV of the same name
        // overrides them (Docker's rule); they are not kept in the template.
        let env_names: HashSet<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        let args: Vec<String> = self
            .args
            .iter()
            .filter(|(k, _)| !env_names.contains(k.as_str()))
            .map(|(k, v)| format!("{k}={}", shell_quote(v)))
            .collect();
        let command = if args.is_empty() {
            command
        } else {
            format!("export {}; {command}", args.join(" "))
        };
        self.push("RUN", vec![command], Some(ins.line), ins.text.clone());
        Ok(())
    }

    fn copy(&mut self, ins: &Instruction, spec: FlagSpec) -> Result<(), DockerfileError> {
        let flags = self.flags(ins, spec)?;
        if flags.contains_key("from") {
            return Err(unsupported(
                ins.line,
                format!("{} --from (multi-stage builds)", ins.name),
            ));
        }
        let raw: Vec<String> = match json_args(&ins.rest) {
            Some(words) => words,
            None => ins.rest.split_whitespace().map(str::to_string).collect(),
        };
        if raw.len() < 2 {
            return Err(syntax(
                ins.line,
                format!("{} requires at least two arguments (SRC... DEST)", ins.name),
            ));
        }
        if raw.iter().any(|w| is_heredoc(w)) {
            return Err(unsupported(
                ins.line,
                format!(
                    "a heredoc (<<EOF) in {}; write the file and COPY it",
                    ins.name
                ),
            ));
        }
        let owner = match flags.get("chown") {
            Some(c) => self.word(ins, c)?,
            None => String::new(),
        };
        let mode = match flags.get("chmod") {
            None => String::new(),
            Some(c) => {
                let vars = self.vars();
                let resolved = Lex {
                    escape: self.escape,
                    env: &vars,
                    keep_unset: false,
                }
                .process_word(c)
                .map_err(|e| syntax(ins.line, e))?;
                let octal = (3..=4).contains(&resolved.len())
                    && resolved.bytes().all(|b| (b'0'..=b'7').contains(&b));
                if !octal {
                    return Err(syntax(
                        ins.line,
                        format!("invalid --chmod value {c:?}: expected an octal mode such as 0755"),
                    ));
                }
                let m = u32::from_str_radix(&resolved, 8)
                    .map_err(|e| syntax(ins.line, format!("invalid --chmod value {c:?}: {e}")))?;
                format!("{m:04o}")
            }
        };
        let (srcs, dest) = raw.split_at(raw.len() - 1);
        let dest = self.word(ins, &dest[0])?;
        if srcs.len() > 1 && !dest.ends_with('/') {
            return Err(syntax(
                ins.line,
                format!(
                    "when using {} with more than one source, the destination must be a \
                     directory and end with a /",
                    ins.name
                ),
            ));
        }
        for raw_src in srcs {
            let src = self.word(ins, raw_src)?;
            if ins.name == "ADD" {
                check_add_source(ins.line, &src)?;
            }
            check_source(ins.line, &src)?;
            self.push(
                "COPY",
                vec![src, dest.clone(), owner.clone(), mode.clone()],
                Some(ins.line),
                ins.text.clone(),
            );
        }
        Ok(())
    }

    fn env(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        self.flags(ins, &[])?;
        let words = parse_words(&ins.rest, self.escape);
        if words.is_empty() {
            return Err(syntax(ins.line, "ENV requires at least one argument"));
        }
        let pairs: Vec<(String, String)> = if !words[0].contains('=') {
            // Legacy `ENV KEY value with spaces`.
            let Some((key, value)) = ins.rest.split_once(char::is_whitespace) else {
                return Err(syntax(
                    ins.line,
                    "ENV must have two arguments (ENV KEY VALUE)",
                ));
            };
            vec![(key.to_string(), value.trim_start().to_string())]
        } else {
            let mut pairs = Vec::new();
            for w in &words {
                let Some((k, v)) = w.split_once('=') else {
                    return Err(syntax(
                        ins.line,
                        format!("can't find = in {w:?}; must be of the form name=value"),
                    ));
                };
                pairs.push((k.to_string(), v.to_string()));
            }
            pairs
        };
        // Every value sees the variables as they were before this instruction.
        let mut processed = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let key = self.word(ins, &k)?;
            if key.is_empty() {
                return Err(syntax(ins.line, "ENV names can not be blank"));
            }
            processed.push((key, self.env_word(ins, &v)?));
        }
        let mut args = Vec::with_capacity(processed.len() * 2);
        for (k, v) in processed {
            self.env.retain(|(name, _)| *name != k);
            self.env.push((k.clone(), v.clone()));
            args.push(k);
            args.push(v);
        }
        self.push("ENV", args, Some(ins.line), ins.text.clone());
        Ok(())
    }

    fn healthcheck(&mut self, ins: &Instruction) -> Result<(), DockerfileError> {
        self.flags(ins, HEALTHCHECK_FLAGS)?;
        let (kind, rest) = match ins.rest.split_once(char::is_whitespace) {
            Some((k, r)) => (k, r.trim()),
            None => (ins.rest.as_str(), ""),
        };
        match kind.to_ascii_uppercase().as_str() {
            "NONE" if rest.is_empty() => {
                self.out.ready_cmd = None;
                Ok(())
            }
            "CMD" => {
                let c = Command::parse(rest);
                let cmd = if c.exec {
                    // `["CMD-SHELL", "cmd"]` is the shell form spelled as JSON.
                    match c.args.split_first() {
                        Some((first, tail)) if first == "CMD-SHELL" => tail.join(" "),
                        Some((first, tail)) if first == "CMD" => shell_join(tail),
                        _ => shell_join(&c.args),
                    }
                } else {
                    c.args.join(" ")
                };
                if cmd.trim().is_empty() {
                    return Err(syntax(ins.line, "HEALTHCHECK CMD requires a command"));
                }
                self.out.ready_cmd = Some(cmd);
                Ok(())
            }
            _ => Err(syntax(
                ins.line,
                "HEALTHCHECK expects CMD <command> or NONE",
            )),
        }
    }

    /// Start command, E2B's default user and workdir, unused build arguments.
    fn finish(&mut self) {
        // Docker's rules: an exec-form ENTRYPOINT gets CMD appended (a shell-form CMD as
        // `/bin/sh -c <cmd>`), a shell-form ENTRYPOINT ignores CMD.
        let command = match (&self.entrypoint, &self.cmd) {
            (Some(e), cmd) if e.exec => {
                let mut words = e.args.clone();
                match cmd {
                    Some(c) if c.exec => words.extend(c.args.iter().cloned()),
                    Some(c) if !c.args.is_empty() => {
                        words.extend(["/bin/sh".into(), "-c".into(), c.args[0].clone()])
                    }
                    _ => {}
                }
                (!words.is_empty()).then(|| shell_join(&words))
            }
            (Some(e), _) => e.args.first().cloned(),
            (None, Some(c)) if c.exec => (!c.args.is_empty()).then(|| shell_join(&c.args)),
            (None, Some(c)) => c.args.first().cloned(),
            (None, None) => None,
        };
        self.out.start_cmd = command.filter(|c| !c.trim().is_empty());
        if !self.user_set {
            self.push(
                "USER",
                vec!["user".into()],
                None,
                "USER user (E2B's default)".into(),
            );
        }
        if !self.workdir_set {
            self.push(
                "WORKDIR",
                vec!["/home/user".into()],
                None,
                "WORKDIR /home/user (E2B's default)".into(),
            );
        }
        let mut unused: Vec<&str> = self
            .build_args
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !self.used_args.contains(*k))
            .collect();
        unused.sort_unstable();
        unused.dedup();
        if !unused.is_empty() {
            self.out.warnings.push(format!(
                "build arguments not consumed by any ARG: {}",
                unused.join(", ")
            ));
        }
    }
}

/// COPY sources stay inside the context (the SDK's `validate_relative_path`).
fn check_source(line: usize, src: &str) -> Result<(), DockerfileError> {
    if src.starts_with('/') {
        return Err(syntax(
            line,
            format!("source {src:?} is absolute; sources are relative to the build context"),
        ));
    }
    let n = crate::context::normpath(src);
    if n == ".." || n.starts_with("../") {
        return Err(syntax(
            line,
            format!("source {src:?} leaves the build context"),
        ));
    }
    Ok(())
}

/// ADD of what Docker fetches or unpacks.
fn check_add_source(line: usize, src: &str) -> Result<(), DockerfileError> {
    let scheme = src.split_once("://").is_some_and(|(s, _)| {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    });
    if scheme || src.starts_with("git@") {
        return Err(unsupported(
            line,
            format!("ADD of a URL ({src}); download it in a RUN step (curl, git clone)"),
        ));
    }
    let lower = src.to_ascii_lowercase();
    if ARCHIVE_SUFFIXES.iter().any(|s| lower.ends_with(s)) {
        return Err(unsupported(
            line,
            format!(
                "ADD of an archive ({src}), which Docker unpacks; COPY it and unpack it in a \
                 RUN step"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
