//! `paddock template build`: builds a template from a Dockerfile on a Paddock server, through
//! E2B's template build API exactly as the SDKs use it (spec 2.4): the Dockerfile becomes steps
//! ([`paddock_template::dockerfile`]), each COPY source is hashed and, when the server does not
//! have it yet, uploaded as a gzipped tar ([`paddock_template::context`], byte-for-byte the
//! SDK's hash and layout), then the build is started and its status polled every 0.2 s, each
//! log line shown with the Dockerfile instruction its step came from.
//!
//! Where it connects and how it authenticates: see [`super::sandbox`] (`--api-url` /
//! `E2B_API_URL`, `--api-key` / `E2B_API_KEY` / `PADDOCK_API_KEY` / `<data-dir>/api-key`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use paddock_template::context;
use paddock_template::dockerfile::{self, Dockerfile};
use paddock_template::wire::WireStep;
use paddock_template::{BASE_STEP, FINALIZE_STEP};
use serde_json::{json, Value};

use super::sandbox::{json_or_error, Api, HttpError, Target};

/// How often the build status is polled (the SDKs' `logs_refresh_frequency`).
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Longest instruction shown in a step's header line.
const MAX_LABEL: usize = 100;

/// `paddock template build` arguments.
#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Name of the template to build (`name` or `name:tag`).
    #[arg(long)]
    name: String,
    /// The Dockerfile (default `<CONTEXT>/Dockerfile`).
    #[arg(short = 'f', long = "file", value_name = "DOCKERFILE")]
    file: Option<PathBuf>,
    /// Set a build-time variable (repeatable); `K` alone takes the value of the environment
    /// variable `K`.
    #[arg(long = "build-arg", value_name = "K=V")]
    build_args: Vec<String>,
    /// vCPUs of the template's sandboxes (and of the build's).
    #[arg(long)]
    cpu: Option<u32>,
    /// Memory of the template's sandboxes (and of the build's), in MiB.
    #[arg(long = "memory-mb")]
    memory_mb: Option<u32>,
    /// Rebuild every step, ignoring cached layers.
    #[arg(long)]
    no_cache: bool,
    /// Command that exits 0 once a new sandbox is ready (overrides HEALTHCHECK).
    #[arg(long, value_name = "CMD")]
    ready_cmd: Option<String>,
    /// The build context: the directory COPY sources are relative to.
    #[arg(default_value = ".")]
    context: PathBuf,
    #[command(flatten)]
    target: Target,
}

/// Runs `paddock template build`.
pub async fn run(args: BuildArgs) -> anyhow::Result<()> {
    let build_args = parse_build_args(&args.build_args, |k| std::env::var(k).ok())?;
    let dockerfile_path = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"));
    let text = std::fs::read_to_string(&dockerfile_path)
        .with_context(|| format!("reading {}", dockerfile_path.display()))?;
    let mut df = dockerfile::parse(&text, &build_args)?;
    for w in &df.warnings {
        eprintln!("warning: {w}");
    }
    df.ready_cmd = ready_cmd(args.ready_cmd.clone(), &df);
    let labels = StepLabels::new(&df);
    let json = args.target.json;
    let out = Output { json };

    // Hash every COPY source before asking the server for anything: a missing file fails here.
    let ctx = args.context.clone();
    let steps = std::mem::take(&mut df.steps);
    let (steps, uploads, ignore) =
        tokio::task::spawn_blocking(move || hash_copy_steps(&ctx, steps))
            .await
            .context("hashing the COPY sources")??;
    df.steps = steps;

    let api = Api::new(&args.target)?;
    let from_template = is_template(&api, &df.from).await?;
    out.line(&format!(
        "FROM {} is {}",
        df.from,
        if from_template {
            "a template of the server (fromTemplate)"
        } else {
            "an image (fromImage)"
        }
    ));

    let started = Instant::now();
    let mut body = json!({ "name": args.name });
    if let Some(cpu) = args.cpu {
        body["cpuCount"] = json!(cpu);
    }
    if let Some(mem) = args.memory_mb {
        body["memoryMB"] = json!(mem);
    }
    let requested = api
        .post("/v3/templates", &body)
        .await
        .context("requesting the build")?;
    let template_id = str_field(&requested, "templateID")?;
    let build_id = str_field(&requested, "buildID")?;
    let tid = encode_segment(&template_id);

    upload_files(&api, &tid, &args.context, &ignore, &uploads, &labels, &out).await?;

    let start = df.build_request(from_template, args.no_cache);
    api.post(
        &format!("/v2/templates/{tid}/builds/{build_id}"),
        &serde_json::to_value(&start)?,
    )
    .await
    .context("starting the build")?;

    let (last, entries) = poll(&api, &tid, &build_id, &labels, &out).await?;
    let status = last.get("status").and_then(Value::as_str).unwrap_or("");
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&final_json(&last, &entries))?
        );
    }
    if status == "ready" {
        if !json {
            println!(
                "{}",
                summary(
                    &args.name,
                    &template_id,
                    &build_id,
                    started.elapsed(),
                    &entries
                )
            );
        }
        return Ok(());
    }
    Err(anyhow!("{}", failure(&last, &labels)))
}

/// `--build-arg` values as pairs; `K` alone takes `K`'s value from the environment (skipped
/// when unset, as Docker does).
fn parse_build_args(
    raw: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for a in raw {
        let (k, v) = match a.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (a.as_str(), env(a)),
        };
        if k.is_empty() {
            bail!("--build-arg {a:?}: expected KEY=VALUE");
        }
        if let Some(v) = v {
            out.push((k.to_string(), v));
        }
    }
    Ok(out)
}

/// The ready command sent: the flag, else the Dockerfile's HEALTHCHECK, else none. (The SDK's
/// `from_dockerfile` waits 20 s when there is no HEALTHCHECK; E2B runs that wait once, at
/// build time, but Paddock runs the ready check at every create, so a fixed sleep would make
/// every sandbox of the template 20 s slower. Without one, creates answer once the start
/// command has started.)
fn ready_cmd(flag: Option<String>, df: &Dockerfile) -> Option<String> {
    flag.filter(|c| !c.trim().is_empty())
        .or_else(|| df.ready_cmd.clone())
}

/// A COPY step's archive to upload if the server lacks it.
#[derive(Debug, Clone)]
struct Upload {
    /// 1-based step.
    step: usize,
    src: String,
    hash: String,
}

/// Sets every COPY step's `filesHash` (sources relative to `ctx`, `.dockerignore` applied);
/// returns the steps, the archives to offer and the ignore patterns.
fn hash_copy_steps(ctx: &Path, mut steps: Vec<WireStep>) -> HashedSteps {
    let ignore = context::read_dockerignore(ctx)?;
    let mut uploads = Vec::new();
    for (i, step) in steps.iter_mut().enumerate() {
        if step.kind != "COPY" {
            continue;
        }
        let args = step.args.clone().unwrap_or_default();
        let (Some(src), Some(dest)) = (args.first(), args.get(1)) else {
            continue;
        };
        let hash = context::files_hash(ctx, src, dest, &ignore, false)
            .with_context(|| format!("step {} (COPY {src} {dest})", i + 1))?;
        step.files_hash = Some(hash.clone());
        uploads.push(Upload {
            step: i + 1,
            src: src.clone(),
            hash,
        });
    }
    Ok((steps, uploads, ignore))
}

type HashedSteps = anyhow::Result<(Vec<WireStep>, Vec<Upload>, Vec<String>)>;

/// Whether FROM names a template of the server rather than an image: refs with a registry host
/// or a digest are images; anything else is a template when `GET /templates/aliases/{name}`
/// knows its name (403 = another team's, still a template), an image on 404.
async fn is_template(api: &Api, from: &str) -> anyhow::Result<bool> {
    let Some(name) = template_candidate(from) else {
        return Ok(false);
    };
    match api
        .get(&format!("/templates/aliases/{}", encode_segment(name)), &[])
        .await
    {
        Ok(_) => Ok(true),
        Err(e) => match e.downcast_ref::<HttpError>() {
            Some(HttpError { status: 404, .. }) => Ok(false),
            Some(HttpError { status: 403, .. }) => Ok(true),
            _ => Err(e.context(format!("checking whether {from} is a template"))),
        },
    }
}

/// The name to look up as a template alias (the ref without its tag), or `None` for refs that
/// can only be images (`registry.example.com/x`, `localhost:5000/x`, `x@sha256:...`).
fn template_candidate(from: &str) -> Option<&str> {
    if from.contains('@') {
        return None;
    }
    if let Some((first, _)) = from.split_once('/') {
        if first.contains('.') || first.contains(':') || first == "localhost" {
            return None;
        }
    }
    let name = match from.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => from,
    };
    (!name.is_empty()).then_some(name)
}

/// Percent-encodes one path segment (as the SDKs' `encode_path_param`).
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn str_field(v: &Value, key: &str) -> anyhow::Result<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the server's answer has no {key}: {v}"))
}

/// Asks the server for each COPY archive and uploads those it lacks.
async fn upload_files(
    api: &Api,
    tid: &str,
    ctx: &Path,
    ignore: &[String],
    uploads: &[Upload],
    labels: &StepLabels,
    out: &Output,
) -> anyhow::Result<()> {
    let mut done: HashSet<&str> = HashSet::new();
    for u in uploads {
        let prefix = labels.prefix(&u.step.to_string());
        if !done.insert(&u.hash) {
            continue;
        }
        let link = api
            .get(&format!("/templates/{tid}/files/{}", u.hash), &[])
            .await
            .with_context(|| format!("{prefix} asking for the upload link of {}", u.src))?;
        let present = link
            .get("present")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let url = link.get("url").and_then(Value::as_str);
        let Some(url) = url.filter(|_| !present) else {
            out.line(&format!("{prefix} files of {} already uploaded", u.src));
            continue;
        };
        let (ctx2, src, ignore) = (ctx.to_path_buf(), u.src.clone(), ignore.to_vec());
        let file = tokio::task::spawn_blocking(move || {
            context::tar_context(&ctx2, &src, &ignore, false, true)
        })
        .await?
        .with_context(|| format!("{prefix} archiving {}", u.src))?;
        let size = file.metadata()?.len();
        let mut req = api.http.put(url);
        if let Some(headers) = link.get("headers").and_then(Value::as_object) {
            for (k, v) in headers {
                if !k.eq_ignore_ascii_case("content-length") {
                    if let Some(v) = v.as_str() {
                        req = req.header(k.as_str(), v);
                    }
                }
            }
        }
        let resp = req
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::from(tokio::fs::File::from_std(file)))
            .send()
            .await
            .with_context(|| format!("{prefix} uploading {}", u.src))?;
        json_or_error(resp)
            .await
            .with_context(|| format!("{prefix} uploading {}", u.src))?;
        out.line(&format!(
            "{prefix} uploaded {} ({})",
            u.src,
            human_size(size)
        ));
    }
    Ok(())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Polls the status until `ready` or `error`, then drains the log. Returns the last status and
/// every log entry.
async fn poll(
    api: &Api,
    tid: &str,
    build_id: &str,
    labels: &StepLabels,
    out: &Output,
) -> anyhow::Result<(Value, Vec<Value>)> {
    let path = format!("/templates/{tid}/builds/{build_id}/status");
    let mut entries: Vec<Value> = Vec::new();
    let mut shown = Shown::default();
    let fetch = |entries_so_far: usize| {
        let offset = entries_so_far.to_string();
        let path = path.clone();
        async move {
            api.get(&path, &[("logsOffset", offset.as_str())])
                .await
                .context("polling the build status")
        }
    };
    loop {
        let status = fetch(entries.len()).await?;
        let page = log_entries(&status);
        for e in &page {
            shown.show(e, labels, out);
        }
        entries.extend(page);
        match status.get("status").and_then(Value::as_str) {
            Some("ready") | Some("error") => {
                // The status answers at most a page of entries: fetch until none are left.
                loop {
                    let tail = fetch(entries.len()).await?;
                    let page = log_entries(&tail);
                    if page.is_empty() {
                        break;
                    }
                    for e in &page {
                        shown.show(e, labels, out);
                    }
                    entries.extend(page);
                }
                return Ok((status, entries));
            }
            Some("building") | Some("waiting") => tokio::time::sleep(POLL_EVERY).await,
            other => bail!("unexpected build status {other:?}: {status}"),
        }
    }
}

fn log_entries(status: &Value) -> Vec<Value> {
    status
        .get("logEntries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Where progress goes: stdout, or stderr when stdout is for `--json`.
struct Output {
    json: bool,
}

impl Output {
    fn line(&self, s: &str) {
        if self.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }
}

/// Which step's header was printed last.
#[derive(Default)]
struct Shown {
    step: Option<String>,
}

impl Shown {
    fn show(&mut self, entry: &Value, labels: &StepLabels, out: &Output) {
        let step = entry
            .get("step")
            .and_then(Value::as_str)
            .map(str::to_string);
        let message = entry.get("message").and_then(Value::as_str).unwrap_or("");
        let level = entry.get("level").and_then(Value::as_str).unwrap_or("info");
        let mut header = None;
        if let Some(s) = &step {
            if self.step.as_deref() != Some(s.as_str()) {
                header = labels.header(s);
                if let Some(h) = &header {
                    out.line(h);
                }
                self.step = Some(s.clone());
            }
        }
        let line = labels.line(step.as_deref(), level, message);
        // The server announces a step with the step's title: not again when it reads the same
        // as the Dockerfile's instruction just shown.
        if header.as_deref() != Some(line.as_str()) {
            out.line(&line);
        }
    }
}

/// Maps the server's step names (`base`, `1`..`N`, `finalize`) to the Dockerfile.
struct StepLabels {
    from: String,
    /// One per step: the instruction (one line, shortened) and its line.
    steps: Vec<(String, Option<usize>)>,
}

impl StepLabels {
    fn new(df: &Dockerfile) -> StepLabels {
        StepLabels {
            from: df.from.clone(),
            steps: df
                .sources
                .iter()
                .map(|s| (one_line(&s.instruction), s.line))
                .collect(),
        }
    }

    fn index(&self, step: &str) -> Option<usize> {
        let n: usize = step.parse().ok()?;
        (1..=self.steps.len()).contains(&n).then_some(n)
    }

    /// `[3/7]`, `[base]`, `[finalize]`, `[other]`.
    fn prefix(&self, step: &str) -> String {
        match self.index(step) {
            Some(n) => format!("[{n}/{}]", self.steps.len()),
            None => format!("[{step}]"),
        }
    }

    /// The line shown when a step starts: `[3/7] RUN pip install ...`.
    fn header(&self, step: &str) -> Option<String> {
        if step == BASE_STEP {
            return Some(format!("[{BASE_STEP}] FROM {}", self.from));
        }
        if step == FINALIZE_STEP {
            return Some(format!(
                "[{FINALIZE_STEP}] start and ready commands, publishing the template"
            ));
        }
        let n = self.index(step)?;
        Some(format!("{} {}", self.prefix(step), self.steps[n - 1].0))
    }

    /// One log entry: prefixed with its step unless the server already did.
    fn line(&self, step: Option<&str>, level: &str, message: &str) -> String {
        let level = match level {
            "warn" => "warning: ",
            "error" => "error: ",
            _ => "",
        };
        match step {
            None => format!("{level}{message}"),
            Some(s) => {
                let prefix = self.prefix(s);
                if message.starts_with(&prefix) {
                    format!("{level}{message}")
                } else {
                    format!("{prefix} {level}{message}")
                }
            }
        }
    }

    /// `step 3/7 (line 9: RUN pip install ...)`, for failures.
    fn describe(&self, step: &str) -> String {
        match self.index(step) {
            Some(n) => {
                let (text, line) = &self.steps[n - 1];
                match line {
                    Some(l) => format!("step {n}/{} (line {l}: {text})", self.steps.len()),
                    None => format!("step {n}/{} ({text})", self.steps.len()),
                }
            }
            None if step == BASE_STEP => format!("step {BASE_STEP} (FROM {})", self.from),
            None => format!("step {step}"),
        }
    }
}

/// An instruction on one line, whitespace runs collapsed, shortened to [`MAX_LABEL`].
fn one_line(s: &str) -> String {
    let collapsed = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= MAX_LABEL {
        return collapsed;
    }
    let cut: String = collapsed.chars().take(MAX_LABEL - 3).collect();
    format!("{cut}...")
}

/// Steps the server reported as taken from the cache (`CACHED ...` lines).
fn cached_steps(entries: &[Value]) -> usize {
    let mut steps = HashSet::new();
    for e in entries {
        let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
        let step = e.get("step").and_then(Value::as_str).unwrap_or("");
        // Skip a leading `[3/7]` (the step's own prefix).
        let msg = match msg.strip_prefix('[').and_then(|m| m.split_once(']')) {
            Some((_, rest)) => rest.trim_start(),
            None => msg,
        };
        if msg.to_ascii_lowercase().starts_with("cached") {
            steps.insert(step.to_string());
        }
    }
    steps.len()
}

fn summary(
    name: &str,
    template_id: &str,
    build_id: &str,
    took: Duration,
    entries: &[Value],
) -> String {
    let cached = cached_steps(entries);
    let mut s = format!(
        "built template {name} (template {template_id}, build {build_id}) in {:.1} s",
        took.as_secs_f64()
    );
    match cached {
        0 => {}
        1 => s.push_str(", 1 step cached"),
        n => s.push_str(&format!(", {n} steps cached")),
    }
    s
}

/// The error of a failed build: its reason and the step it names.
fn failure(status: &Value, labels: &StepLabels) -> String {
    let reason = status.get("reason");
    let message = reason
        .and_then(|r| r.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("the build failed");
    match reason.and_then(|r| r.get("step")).and_then(Value::as_str) {
        Some(step) => format!("build failed at {}: {message}", labels.describe(step)),
        None => format!("build failed: {message}"),
    }
}

/// The last status with every log entry of the build (not only the last page).
fn final_json(last: &Value, entries: &[Value]) -> Value {
    let mut v = last.clone();
    if let Some(obj) = v.as_object_mut() {
        let logs: Vec<Value> = entries
            .iter()
            .map(|e| e.get("message").cloned().unwrap_or(Value::Null))
            .collect();
        obj.insert("logEntries".into(), Value::Array(entries.to_vec()));
        obj.insert("logs".into(), Value::Array(logs));
    }
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        build: BuildArgs,
    }

    fn labels() -> StepLabels {
        let df = dockerfile::parse(
            "FROM python:3.12\nWORKDIR /app\nRUN pip install \\\n    flask\nCOPY . .\n",
            &[],
        )
        .unwrap();
        StepLabels::new(&df)
    }

    #[test]
    fn step_labels_name_the_dockerfile_instruction() {
        let l = labels();
        // USER root, WORKDIR / (implicit), WORKDIR /app, RUN, COPY, USER user (implicit).
        assert_eq!(l.steps.len(), 6);
        assert_eq!(l.prefix("4"), "[4/6]");
        assert_eq!(l.header("4").unwrap(), "[4/6] RUN pip install flask");
        assert_eq!(l.header("1").unwrap(), "[1/6] USER root (Docker's default)");
        assert_eq!(l.header("base").unwrap(), "[base] FROM python:3.12");
        assert!(l.header("finalize").unwrap().starts_with("[finalize]"));
        assert_eq!(l.header("7"), None);
        assert_eq!(l.prefix("7"), "[7]");
        assert_eq!(
            l.line(Some("4"), "info", "Collecting flask"),
            "[4/6] Collecting flask"
        );
        assert_eq!(
            l.line(Some("4"), "info", "[4/6] RUN pip install flask"),
            "[4/6] RUN pip install flask"
        );
        assert_eq!(l.line(Some("5"), "error", "boom"), "[5/6] error: boom");
        assert_eq!(l.line(None, "warn", "x"), "warning: x");
        assert_eq!(l.describe("4"), "step 4/6 (line 3: RUN pip install flask)");
        assert_eq!(l.describe("base"), "step base (FROM python:3.12)");
        let long = one_line(&format!("RUN {}", "x ".repeat(100)));
        assert_eq!(long.chars().count(), MAX_LABEL);
        assert!(long.ends_with("..."));
    }

    #[test]
    fn failures_and_summaries() {
        let l = labels();
        let status = json!({"status": "error", "reason": {"message": "exit code 1", "step": "4"}});
        assert_eq!(
            failure(&status, &l),
            "build failed at step 4/6 (line 3: RUN pip install flask): exit code 1"
        );
        assert_eq!(
            failure(&json!({"status": "error"}), &l),
            "build failed: the build failed"
        );
        let entries = vec![
            json!({"step": "3", "message": "CACHED [3/6] WORKDIR /app", "level": "info"}),
            json!({"step": "4", "message": "[4/6] CACHED RUN pip install flask", "level": "info"}),
            json!({"step": "5", "message": "copying", "level": "info"}),
        ];
        assert_eq!(cached_steps(&entries), 2);
        let s = summary("app", "tid", "bid", Duration::from_millis(1500), &entries);
        assert_eq!(
            s,
            "built template app (template tid, build bid) in 1.5 s, 2 steps cached"
        );
        let last = json!({"status": "ready", "logEntries": [], "logs": [], "buildID": "bid"});
        let v = final_json(&last, &entries);
        assert_eq!(v["logEntries"].as_array().unwrap().len(), 3);
        assert_eq!(v["logs"][2], "copying");
        assert_eq!(v["buildID"], "bid");
    }

    #[test]
    fn build_args_and_ready_command() {
        let env = |k: &str| (k == "FROM_ENV").then(|| "e".to_string());
        let raw = ["A=1", "B=x=y", "C=", "FROM_ENV", "UNSET"].map(String::from);
        assert_eq!(
            parse_build_args(&raw, env).unwrap(),
            [("A", "1"), ("B", "x=y"), ("C", ""), ("FROM_ENV", "e")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(parse_build_args(&["=v".to_string()], env).is_err());

        let df = dockerfile::parse("FROM x\nCMD serve\n", &[]).unwrap();
        assert_eq!(ready_cmd(None, &df), None);
        assert_eq!(ready_cmd(Some("true".into()), &df).as_deref(), Some("true"));
        let df = dockerfile::parse("FROM x\nCMD serve\nHEALTHCHECK CMD check\n", &[]).unwrap();
        assert_eq!(ready_cmd(None, &df).as_deref(), Some("check"));
        let df = dockerfile::parse("FROM x\n", &[]).unwrap();
        assert_eq!(ready_cmd(None, &df), None);
    }

    #[test]
    fn parses_the_command_line() {
        let cli = Cli::try_parse_from([
            "build",
            "--name",
            "app:v1",
            "-f",
            "docker/Dockerfile.dev",
            "--build-arg",
            "A=1",
            "--build-arg",
            "B=2",
            "--cpu",
            "2",
            "--memory-mb",
            "1024",
            "--no-cache",
            "--ready-cmd",
            "curl -f localhost",
            "--api-url",
            "http://10.0.0.1:3000",
            "--json",
            "ctx",
        ])
        .unwrap()
        .build;
        assert_eq!(cli.name, "app:v1");
        assert_eq!(cli.file, Some(PathBuf::from("docker/Dockerfile.dev")));
        assert_eq!(cli.build_args, ["A=1", "B=2"]);
        assert_eq!((cli.cpu, cli.memory_mb), (Some(2), Some(1024)));
        assert!(cli.no_cache && cli.target.json);
        assert_eq!(cli.ready_cmd.as_deref(), Some("curl -f localhost"));
        assert_eq!(cli.context, PathBuf::from("ctx"));

        let cli = Cli::try_parse_from(["build", "--name", "app"])
            .unwrap()
            .build;
        assert_eq!(cli.context, PathBuf::from("."));
        assert!(cli.file.is_none() && !cli.no_cache);
        assert!(Cli::try_parse_from(["build"]).is_err());
        assert!(Cli::try_parse_from(["build", "--name", "a", "--cpu", "two"]).is_err());
    }

    #[test]
    fn from_references() {
        assert_eq!(template_candidate("base"), Some("base"));
        assert_eq!(template_candidate("my-tpl:v2"), Some("my-tpl"));
        assert_eq!(template_candidate("python:3.12"), Some("python"));
        assert_eq!(template_candidate("e2bdev/base"), Some("e2bdev/base"));
        assert_eq!(template_candidate("team/snap:default"), Some("team/snap"));
        assert_eq!(template_candidate("ghcr.io/a/b:1"), None);
        assert_eq!(template_candidate("localhost:5000/x"), None);
        assert_eq!(template_candidate("debian@sha256:abc"), None);
        assert_eq!(encode_segment("team/snap:default"), "team%2Fsnap%3Adefault");
        assert_eq!(encode_segment("a-b_c.d~"), "a-b_c.d~");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
