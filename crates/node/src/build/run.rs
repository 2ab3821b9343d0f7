//! Running a recipe on a [`LocalNode`]: the base, one sandbox per file-changing step, the
//! cache, the finalize step. See the module docs of [`crate::build`].

use std::collections::VecDeque;
use std::path::Path;
use std::time::Instant;

use chrono::Utc;
use paddock_domain::{SandboxId, TemplateName};
use paddock_template::{
    base_key, cache_key, finalize_key, Base, BuildStep, BASE_STEP, FINALIZE_STEP,
};
use paddock_templates::{Template, TemplateConfig, TemplateMeta, TemplateSource};

use super::{BuildError, BuildLog, BuildRequest, Built, LogLevel, LogSink, CACHE_PREFIX};
use crate::envd_client::{EnvdClient, OutputStream, ProcessSpec};
use crate::{CreateRequest, LocalNode, TemplateInfo};

/// How many output lines a failed command's error repeats.
const TAIL_LINES: usize = 20;
/// Most layers a template may have (the runtime's limit on overlay lower layers).
const MAX_LAYERS: usize = paddock_sandbox::MAX_LAYERS;
/// Least memory (MiB) and CPUs a build step's sandbox gets, whatever the template asks for
/// its own sandboxes: package managers and compilers need more than a small sandbox has.
const BUILD_MIN_MEMORY_MB: u64 = 2048;
const BUILD_MIN_CPUS: u32 = 2;
/// Where a COPY step's archive is put in the step's sandbox.
const COPY_ARCHIVE_DIR: &str = "/tmp";
/// Environment of every step's commands (not of the template's sandboxes): installers do not
/// ask questions, and pip may install into Debian's system Python as E2B's images allow.
const BUILD_ENV: &[(&str, &str)] = &[
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("PIP_BREAK_SYSTEM_PACKAGES", "1"),
    ("PIP_ROOT_USER_ACTION", "ignore"),
];

/// Unpacks a COPY archive and copies the matches of `$SRC` to `$DEST` with Docker's rules
/// (a trailing `/`, several matches or an existing directory make `$DEST` a directory; a
/// directory's contents are copied), owned by `$OWNER` (as is a destination directory the copy
/// creates), files with mode `$MODE` if set.
const COPY_SCRIPT: &str = r#"set -euo pipefail
ctx=$(mktemp -d /tmp/.paddock-ctx.XXXXXX)
trap 'rm -rf -- "$ctx" "$ARCHIVE"' EXIT
tar -x $TAR_FLAGS -f "$ARCHIVE" -C "$ctx" --no-same-owner --no-same-permissions 2>&1 || tar -x $TAR_FLAGS -f "$ARCHIVE" -C "$ctx"
dest=$DEST
case "$dest" in /*) ;; *) dest="${WORKDIR%/}/$dest" ;; esac
cd "$ctx"
shopt -s nullglob dotglob
IFS=$'\n'
matches=( $SRC )
unset IFS
if [ ${#matches[@]} -eq 0 ]; then
  echo "COPY: nothing matches '$SRC' in the uploaded files" >&2
  exit 1
fi
newdir=0
[ -e "$dest" ] || newdir=1
todir=0
case "$DEST" in */) todir=1 ;; esac
[ ${#matches[@]} -gt 1 ] && todir=1
[ -d "$dest" ] && todir=1
copied=()
for m in "${matches[@]}"; do
  if [ -d "$m" ] && [ ! -L "$m" ]; then
    mkdir -p -- "$dest"
    for c in "$m"/*; do
      cp -a -- "$c" "$dest/"
      copied+=("$dest/$(basename -- "$c")")
    done
  elif [ "$todir" = 1 ]; then
    mkdir -p -- "$dest"
    cp -a -- "$m" "$dest/"
    copied+=("$dest/$(basename -- "$m")")
  else
    mkdir -p -- "$(dirname -- "$dest")"
    cp -a -- "$m" "$dest"
    copied+=("$dest")
  fi
done
[ ${#copied[@]} -eq 0 ] && exit 0
chown -R -h -- "$OWNER" "${copied[@]}"
# A destination directory the copy made belongs to the owner too (its parents stay root's).
if [ "$newdir" = 1 ] && [ -d "$dest" ] && [ ! -L "$dest" ]; then
  chown -- "$OWNER" "$dest"
fi
if [ -n "$MODE" ]; then
  find "${copied[@]}" -type f -exec chmod "$MODE" {} +
fi
echo "copied ${#copied[@]} item(s) to $dest"
"#;

/// Creates `$DIR` (owned by `$OWNER` when it is new).
const WORKDIR_SCRIPT: &str = r#"set -eu
if [ ! -d "$DIR" ]; then
  mkdir -p -- "$DIR"
  chown -- "$OWNER" "$DIR"
fi
"#;

/// Sends log lines; a closed receiver is ignored (the build goes on).
struct Logger {
    sink: LogSink,
}

impl Logger {
    fn log(&self, level: LogLevel, step: &str, message: impl Into<String>) {
        let _ = self.sink.send(BuildLog {
            timestamp: Utc::now(),
            level,
            step: step.to_string(),
            message: message.into(),
        });
    }

    fn info(&self, step: &str, message: impl Into<String>) {
        self.log(LogLevel::Info, step, message)
    }
}

fn fail(step: &str, message: impl Into<String>) -> BuildError {
    BuildError {
        step: step.to_string(),
        message: message.into(),
    }
}

/// The hidden template that caches the state named by `key`.
fn cache_name(key: &str) -> TemplateName {
    TemplateName::parse(&format!("{CACHE_PREFIX}{}", &key[..40]))
        .expect("a cache name is a valid template name")
}

/// The build's state between steps.
struct State {
    /// The template the next step starts from.
    template: Template,
    /// Its cache key.
    key: String,
    /// ENV, USER, WORKDIR so far (and the base's start and ready commands).
    config: TemplateConfig,
    /// A step asked for a rebuild: nothing after it comes from the cache.
    forced: bool,
}

impl State {
    fn user(&self) -> String {
        self.config.user.clone().unwrap_or_else(|| "user".into())
    }

    fn workdir(&self) -> String {
        self.config.workdir.clone().unwrap_or_else(|| {
            if self.user() == "root" {
                "/root".into()
            } else {
                format!("/home/{}", self.user())
            }
        })
    }
}

/// Runs `req` on `node` (see [`crate::build`]).
pub(crate) async fn build(
    node: &LocalNode,
    req: BuildRequest,
    sink: LogSink,
) -> Result<Built, BuildError> {
    let log = Logger { sink };
    let started = Instant::now();
    let recipe = &req.recipe;
    let total = recipe.steps.len();

    // The base.
    let (base, base_label) = match &recipe.base {
        Base::Template(name) => {
            log.info(BASE_STEP, format!("FROM template {name}"));
            let n = TemplateName::parse(name)
                .map_err(|_| fail(BASE_STEP, format!("invalid template name {name:?}")))?;
            let t = node
                .templates()
                .get(&n)
                .map_err(|e| fail(BASE_STEP, e.to_string()))?
                .ok_or_else(|| fail(BASE_STEP, format!("template '{name}' not found")))?;
            (t, format!("template:{name}"))
        }
        Base::Image(reference) => {
            log.info(BASE_STEP, format!("FROM {reference}"));
            check_archive_dir(reference, req.images_dir.as_deref())?;
            let progress = |line: &str| log.info(BASE_STEP, line);
            let t = node
                .templates()
                .resolve_image(reference, &progress)
                .await
                .map_err(|e| fail(BASE_STEP, e.to_string()))?;
            (t, format!("image:{reference}"))
        }
    };
    let layer_ids: Vec<String> = base.layers.iter().map(|l| layer_id(l)).collect();
    let mut state = State {
        key: base_key(&recipe.base, &layer_ids),
        config: base.config.clone(),
        template: base,
        forced: recipe.force,
    };
    if recipe.force {
        log.info(BASE_STEP, "skip_cache: every step is built again");
    }

    let mut cached_steps = 0;
    let mut built_steps = 0;
    for (i, step) in recipe.steps.iter().enumerate() {
        let label = (i + 1).to_string();
        let t0 = Instant::now();
        state.forced |= step.force;
        state.key = cache_key(&state.key, &step.step);
        let title = format!("[{}/{total}] {}", i + 1, step.step.describe());
        if !step.step.changes_files() {
            log.info(&label, title.clone());
        }
        match &step.step {
            BuildStep::Env { vars } => {
                for (k, v) in vars {
                    // `ENV PATH=/opt/bin:$PATH` extends the build's value, as in Docker.
                    let v = &expand_env(v, &state);
                    match state.config.env.iter_mut().find(|(key, _)| key == k) {
                        Some(entry) => entry.1 = v.clone(),
                        None => state.config.env.push((k.clone(), v.clone())),
                    }
                }
                continue;
            }
            BuildStep::User { name } => {
                state.config.user = Some(name.clone());
                continue;
            }
            BuildStep::Workdir { path } => {
                let dir = if path.starts_with('/') {
                    path.clone()
                } else {
                    format!("{}/{path}", state.workdir().trim_end_matches('/'))
                };
                state.config.workdir = Some(dir);
            }
            BuildStep::Run { .. } | BuildStep::Copy { .. } => {}
        }
        let name = cache_name(&state.key);
        if !state.forced {
            if let Some(t) = node
                .templates()
                .get(&name)
                .map_err(|e| fail(&label, e.to_string()))?
            {
                log.info(&label, format!("CACHED {title}"));
                state.template = t;
                cached_steps += 1;
                continue;
            }
        }
        log.info(&label, title);
        if state.template.layers.len() >= MAX_LAYERS {
            return Err(fail(
                &label,
                format!(
                    "the template would have more than {MAX_LAYERS} layers; merge RUN steps \
                     (run_cmd([...]) joins commands with &&)"
                ),
            ));
        }
        let kind = match step.step {
            BuildStep::Copy { .. } => "copy",
            _ => "run",
        };
        state.template = tracing::Instrument::instrument(
            run_step(node, &req, &state, &step.step, &name, &label, &log),
            paddock_telemetry::span!("build.step", kind, step = %label),
        )
        .await?;
        paddock_telemetry::BUILD_STEP.observe(&[kind], t0.elapsed());
        built_steps += 1;
        log.info(
            &label,
            format!("done in {:.1} s", t0.elapsed().as_secs_f64()),
        );
    }

    // Finalize: the start state, the start and ready commands, the name.
    let mut config = state.config.clone();
    if recipe.start_cmd.is_some() || recipe.ready_cmd.is_some() {
        config.start_cmd = recipe.start_cmd.clone();
        config.ready_cmd = recipe.ready_cmd.clone();
    }
    let key = finalize_key(&state.key, &config);
    let final_cache = cache_name(&key);
    let meta = |name: TemplateName, config: TemplateConfig| TemplateMeta {
        name,
        resources: req.resources,
        created_at: Utc::now(),
        source: TemplateSource::Build {
            base: base_label.clone(),
            key: key.clone(),
        },
        config,
    };
    let checked = !state.forced
        && node
            .templates()
            .get(&final_cache)
            .map_err(|e| fail(FINALIZE_STEP, e.to_string()))?
            .is_some();
    if !checked {
        // The final state is cached too; with a start command, only once it has passed.
        publish(
            node,
            &state.template.layers,
            meta(final_cache.clone(), config.clone()),
        )
        .await?;
        if let Some(start) = &config.start_cmd {
            log.info(
                FINALIZE_STEP,
                format!("checking the start command in a new sandbox: {start}"),
            );
            if let Some(ready) = &config.ready_cmd {
                log.info(FINALIZE_STEP, format!("ready check: {ready}"));
            }
            if let Err(e) = check_start(node, &final_cache, &req).await {
                let _ = node.delete_template(&final_cache).await;
                return Err(fail(FINALIZE_STEP, e));
            }
            log.info(
                FINALIZE_STEP,
                "the start command runs and the ready check passed",
            );
        }
    }
    let published = publish(node, &state.template.layers, meta(req.name.clone(), config)).await?;
    log.info(
        FINALIZE_STEP,
        format!(
            "template '{}' ready: {} layers, {} steps built, {} cached, {:.1} s",
            req.name,
            published.layers.len(),
            built_steps,
            cached_steps,
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(Built {
        layer_ids: published.layers.iter().map(|l| layer_id(l)).collect(),
        template: TemplateInfo {
            name: published.name,
            resources: published.resources,
        },
        cached_steps,
        built_steps,
    })
}

/// Substitutes `$NAME` and `${NAME}` in an ENV value with the build's variables so far (then
/// envd's defaults: `PATH`, `HOME`, `USER`); unknown names become empty, as in Docker; `\$`
/// is a literal `$`.
fn expand_env(value: &str, state: &State) -> String {
    let lookup = |name: &str| -> String {
        if let Some((_, v)) = state.config.env.iter().rev().find(|(k, _)| k == name) {
            return v.clone();
        }
        match name {
            "PATH" => paddock_envd_proto::DEFAULT_PATH.to_string(),
            "HOME" => {
                let user = state.user();
                if user == "root" {
                    "/root".into()
                } else {
                    format!("/home/{user}")
                }
            }
            "USER" => state.user(),
            _ => String::new(),
        }
    };
    let chars: Vec<char> = value.chars().collect();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    while i < chars.len() {
        match chars[i] {
            '\\' if chars.get(i + 1) == Some(&'$') => {
                out.push('$');
                i += 2;
            }
            '$' if chars.get(i + 1) == Some(&'{') => {
                match chars[i + 2..].iter().position(|&c| c == '}') {
                    Some(len) => {
                        let name: String = chars[i + 2..i + 2 + len].iter().collect();
                        out.push_str(&lookup(&name));
                        i += len + 3;
                    }
                    None => {
                        out.push('$');
                        i += 1;
                    }
                }
            }
            '$' if chars
                .get(i + 1)
                .is_some_and(|&c| is_name(c) && !c.is_ascii_digit()) =>
            {
                let len = chars[i + 1..].iter().take_while(|&&c| is_name(c)).count();
                let name: String = chars[i + 1..i + 1 + len].iter().collect();
                out.push_str(&lookup(&name));
                i += len + 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Refuses an image archive outside `images_dir` (symlinks resolved).
fn check_archive_dir(reference: &str, images_dir: Option<&Path>) -> Result<(), BuildError> {
    let Some(dir) = images_dir else {
        return Ok(());
    };
    let Ok(paddock_templates::images::ImageRef::Archive { path }) =
        paddock_templates::images::ImageRef::parse(reference)
    else {
        return Ok(());
    };
    let refused = || {
        fail(
            BASE_STEP,
            format!(
                "image archives must be in {} on the server (put the `docker save` or OCI \
                 archive there); {} is not",
                dir.display(),
                path.display()
            ),
        )
    };
    let dir = std::fs::canonicalize(dir).map_err(|_| refused())?;
    let real = std::fs::canonicalize(&path).map_err(|e| {
        if path.starts_with(&dir) {
            fail(
                BASE_STEP,
                format!("cannot read image archive {}: {e}", path.display()),
            )
        } else {
            refused()
        }
    })?;
    if real.starts_with(&dir) {
        Ok(())
    } else {
        Err(refused())
    }
}

fn layer_id(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string()
}

/// Publishes a template over `layers` (see [`TemplateStore::publish`]) off the async threads.
///
/// [`TemplateStore::publish`]: paddock_templates::TemplateStore::publish
async fn publish(
    node: &LocalNode,
    layers: &[std::path::PathBuf],
    meta: TemplateMeta,
) -> Result<Template, BuildError> {
    // Another build may be publishing the same name right now (two builds of the same
    // recipe share their cached final state): wait for it and publish after it.
    let deadline = Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let store = node.templates().clone();
        let (layers, m) = (layers.to_vec(), meta.clone());
        match tokio::task::spawn_blocking(move || store.publish(&layers, &m)).await {
            Ok(Ok(t)) => return Ok(t),
            Ok(Err(paddock_templates::TemplateError::Busy(_))) if Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => return Err(fail(FINALIZE_STEP, e.to_string())),
            Err(e) => return Err(fail(FINALIZE_STEP, format!("the publish task failed: {e}"))),
        }
    }
}

/// A random access token for a build sandbox's envd.
fn token() -> String {
    SandboxId::generate().to_string() + &SandboxId::generate().to_string()
}

/// A COPY step's uploaded archive, opened: it is streamed into the build sandbox from the file,
/// never read into memory (uploads may be gigabytes).
struct Archive {
    /// The archive, positioned at its start.
    file: tokio::fs::File,
    /// Its size when opened.
    len: u64,
    /// Whether it is gzipped (by its magic bytes).
    gzip: bool,
}

impl Archive {
    async fn open(path: &Path) -> std::io::Result<Archive> {
        use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
        let mut file = tokio::fs::File::open(path).await?;
        let meta = file.metadata().await?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        let mut magic = [0u8; 2];
        let gzip = meta.len() >= 2 && {
            file.read_exact(&mut magic).await?;
            file.seek(std::io::SeekFrom::Start(0)).await?;
            magic == [0x1f, 0x8b]
        };
        Ok(Archive {
            file,
            len: meta.len(),
            gzip,
        })
    }
}

/// Runs one file-changing step in a new sandbox on `state.template` and keeps the result as
/// template `name`.
async fn run_step(
    node: &LocalNode,
    req: &BuildRequest,
    state: &State,
    step: &BuildStep,
    name: &TemplateName,
    label: &str,
    log: &Logger,
) -> Result<Template, BuildError> {
    // Read the archive first: a missing upload fails before a sandbox starts.
    let archive = match step {
        BuildStep::Copy { files_hash, .. } => {
            let path = req.files_dir.join(files_hash);
            let archive = Archive::open(&path).await.map_err(|e| {
                fail(
                    label,
                    format!("the files of this COPY ({files_hash}) were not uploaded: {e}"),
                )
            })?;
            Some(archive)
        }
        _ => None,
    };
    let id = SandboxId::generate();
    let access_token = token();
    let mut env: std::collections::HashMap<String, String> =
        state.config.env.iter().cloned().collect();
    for (k, v) in BUILD_ENV {
        env.entry(k.to_string()).or_insert_with(|| v.to_string());
    }
    let created = node
        .create(CreateRequest {
            id: id.clone(),
            template: state.template.name.clone(),
            env_vars: env,
            access_token: access_token.clone(),
            resources: Some(paddock_domain::Resources {
                memory_mb: req.resources.memory_mb.max(BUILD_MIN_MEMORY_MB),
                cpu_count: req.resources.cpu_count.max(BUILD_MIN_CPUS),
                ..req.resources
            }),
            network: Default::default(),
            start_cmd: false,
        })
        .await;
    if let Err(e) = created {
        return Err(fail(label, format!("cannot start the build sandbox: {e}")));
    }
    let result = async {
        let endpoint = node
            .endpoint(&id)
            .ok_or_else(|| fail(label, "the build sandbox vanished"))?;
        let envd = EnvdClient::new(endpoint.envd_socket, Some(access_token));
        let spec = step_process(&envd, state, step, archive, label).await?;
        let mut tail = Tail::default();
        let exit = {
            let mut on_output = |_: OutputStream, chunk: &[u8]| {
                for line in tail.push(chunk) {
                    log.info(label, line);
                }
            };
            envd.run(&spec, &mut on_output).await
        };
        if let Some(rest) = tail.flush() {
            log.info(label, rest);
        }
        let exit = exit.map_err(|e| fail(label, format!("cannot run the step: {e}")))?;
        if !exit.success() {
            let what = match step {
                BuildStep::Run { command, .. } => format!("command `{command}`"),
                other => other.describe(),
            };
            let code = if exit.exit_code >= 0 {
                format!("exit code {}", exit.exit_code)
            } else {
                exit.status.clone()
            };
            let lines: Vec<&str> = tail.lines.iter().map(String::as_str).collect();
            return Err(fail(
                label,
                format!(
                    "{what} failed with {code}{}{}",
                    if lines.is_empty() { "" } else { ":\n" },
                    lines.join("\n")
                ),
            ));
        }
        // A forced rebuild replaces the cached state (an unforced build never deletes one:
        // another build may be running on it).
        if state.forced {
            let _ = node.delete_template(name).await;
        }
        if let Err(e) = node.snapshot(&id, name).await {
            // Another build of the same step (same key, so the same files) may have kept its
            // result first, or be keeping it right now: use that one.
            let busy = matches!(
                e,
                crate::LocalError::Template(paddock_templates::TemplateError::Busy(_))
            );
            let deadline = Instant::now() + std::time::Duration::from_secs(300);
            loop {
                if let Ok(Some(t)) = node.templates().get(name) {
                    log.info(
                        label,
                        "another build made this step meanwhile; using its layer",
                    );
                    return Ok(t);
                }
                if !busy || Instant::now() >= deadline {
                    return Err(fail(label, format!("cannot keep the step's files: {e}")));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        node.templates()
            .get(name)
            .map_err(|e| fail(label, e.to_string()))?
            .ok_or_else(|| fail(label, "the step's layer vanished"))
    }
    .await;
    if let Err(e) = node.kill(&id).await {
        tracing::warn!(sandbox_id = %id, error = %e, "cannot remove a build sandbox");
    }
    result
}

/// The process a step runs (a COPY's archive is uploaded first).
async fn step_process(
    envd: &EnvdClient,
    state: &State,
    step: &BuildStep,
    archive: Option<Archive>,
    label: &str,
) -> Result<ProcessSpec, BuildError> {
    let workdir = state.workdir();
    let mut spec = match step {
        BuildStep::Run { command, user } => {
            let user = user.clone().unwrap_or_else(|| state.user());
            let mut spec = ProcessSpec::shell(command, &user);
            spec.cwd = Some(workdir.clone());
            spec
        }
        BuildStep::Copy {
            src,
            dest,
            owner,
            mode,
            files_hash,
        } => {
            let archive =
                archive.ok_or_else(|| fail(label, "the files of this COPY were not opened"))?;
            let gzip = archive.gzip;
            let path = format!("{COPY_ARCHIVE_DIR}/.paddock-copy-{files_hash}.tar");
            envd.upload_file(&path, "root", archive.file, archive.len)
                .await
                .map_err(|e| fail(label, format!("cannot upload the files: {e}")))?;
            let mut spec = ProcessSpec::shell(COPY_SCRIPT, "root");
            spec.cwd = Some("/".into());
            spec.envs = vec![
                ("ARCHIVE".into(), path),
                ("TAR_FLAGS".into(), if gzip { "-z" } else { "" }.into()),
                ("SRC".into(), src.clone()),
                ("DEST".into(), dest.clone()),
                ("WORKDIR".into(), workdir.clone()),
                (
                    "OWNER".into(),
                    owner.clone().unwrap_or_else(|| state.user()),
                ),
                (
                    "MODE".into(),
                    mode.map(|m| format!("{m:o}")).unwrap_or_default(),
                ),
            ];
            spec
        }
        BuildStep::Workdir { .. } => {
            let mut spec = ProcessSpec::shell(WORKDIR_SCRIPT, "root");
            spec.cwd = Some("/".into());
            spec.envs = vec![
                ("DIR".into(), workdir.clone()),
                ("OWNER".into(), state.user()),
            ];
            spec
        }
        BuildStep::Env { .. } | BuildStep::User { .. } => {
            return Err(fail(label, "this step changes no files"))
        }
    };
    spec.tag = Some(format!("build-step-{label}"));
    Ok(spec)
}

/// Splits output into lines and keeps the last [`TAIL_LINES`].
#[derive(Default)]
struct Tail {
    partial: Vec<u8>,
    lines: VecDeque<String>,
}

impl Tail {
    /// Adds a chunk; returns the lines it completed.
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            if text.trim().is_empty() {
                continue;
            }
            self.remember(&text);
            out.push(text);
        }
        // A very long line without a newline is cut rather than buffered forever.
        if self.partial.len() > 64 * 1024 {
            let text = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            self.remember(&text);
            out.push(text);
        }
        out
    }

    /// The unterminated rest of the output, if any.
    fn flush(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            return None;
        }
        let text = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        if text.trim().is_empty() {
            return None;
        }
        self.remember(&text);
        Some(text)
    }

    fn remember(&mut self, line: &str) {
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_string());
    }
}

/// Starts one sandbox of the finished template the way a user's create does (start command,
/// ready check) and removes it again.
async fn check_start(
    node: &LocalNode,
    template: &TemplateName,
    req: &BuildRequest,
) -> Result<(), String> {
    let id = SandboxId::generate();
    let created = node
        .create(CreateRequest {
            id: id.clone(),
            template: template.clone(),
            env_vars: Default::default(),
            access_token: token(),
            resources: Some(req.resources),
            network: Default::default(),
            start_cmd: true,
        })
        .await;
    let _ = node.kill(&id).await;
    created.map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_splits_lines_and_keeps_the_last() {
        let mut t = Tail::default();
        assert_eq!(t.push(b"a\nb"), vec!["a".to_string()]);
        assert_eq!(t.push(b"c\r\n\n"), vec!["bc".to_string()]);
        for i in 0..30 {
            t.push(format!("line {i}\n").as_bytes());
        }
        assert_eq!(t.push(b"end"), Vec::<String>::new());
        assert_eq!(t.flush().as_deref(), Some("end"));
        assert_eq!(t.lines.len(), TAIL_LINES);
        assert_eq!(t.lines.back().map(String::as_str), Some("end"));
        assert_eq!(t.lines.front().map(String::as_str), Some("line 11"));
    }

    #[test]
    fn env_values_expand_like_docker() {
        let state = State {
            template: Template {
                name: TemplateName::parse("base").expect("name"),
                layers: vec!["/x".into()],
                resources: Default::default(),
                created_at: Utc::now(),
                source: TemplateSource::Build {
                    base: String::new(),
                    key: String::new(),
                },
                config: TemplateConfig::default(),
            },
            key: String::new(),
            config: TemplateConfig {
                env: vec![("A".into(), "one".into())],
                user: Some("root".into()),
                ..TemplateConfig::default()
            },
            forced: false,
        };
        assert_eq!(
            expand_env("/opt/bin:$PATH", &state),
            format!("/opt/bin:{}", paddock_envd_proto::DEFAULT_PATH)
        );
        assert_eq!(expand_env("${A}-$A-$NOPE-x", &state), "one-one--x");
        assert_eq!(expand_env("\\$A $HOME $1 ${A", &state), "$A /root $1 ${A");
    }

    #[test]
    fn cache_names_are_template_names() {
        let key = "0123456789abcdef".repeat(4);
        assert_eq!(
            cache_name(&key).as_str(),
            format!("buildcache-{}", &key[..40])
        );
    }
}
