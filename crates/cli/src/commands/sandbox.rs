//! `paddock sandbox …`: the sandboxes of any Paddock (or E2B-compatible) API, from a terminal:
//! list, info, kill, pause, resume, metrics, logs, exec and shell. Talks only the public E2B REST
//! API (`X-API-Key`) and, for `exec` and `shell`, envd's Connect protocol through the sandbox
//! proxy, exactly as the SDKs do, so it works against a remote Paddock as well as a local one.
//! This module also owns the CLI's envd client ([`Envd`]): the Connect envelope framing, the
//! headers the SDKs send, and the mapping of proxy/envd failures to clear errors; `exec` and
//! `shell` (see [`super::shell`], the terminal side) both use it.
//!
//! Where it connects: `--api-url` / `E2B_API_URL` (default `http://127.0.0.1:3000`),
//! `--sandbox-url` / `E2B_SANDBOX_URL` (default `http://127.0.0.1:3002`), and the key from
//! `--api-key` / `E2B_API_KEY` / `PADDOCK_API_KEY`, else `<data-dir>/api-key` of a local server
//! (`/var/lib/paddock` by default). Plain HTTP only for now.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Port envd listens on, as E2B's SDKs address it.
const ENVD_PORT: u16 = 49983;

/// Where the API is and how to authenticate.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// E2B REST API of the Paddock server.
    #[arg(long, env = "E2B_API_URL", default_value = "http://127.0.0.1:3000")]
    api_url: String,
    /// Sandbox proxy of the Paddock server (for `exec` and `shell`).
    #[arg(long, env = "E2B_SANDBOX_URL", default_value = "http://127.0.0.1:3002")]
    sandbox_url: String,
    /// API key (else E2B_API_KEY, PADDOCK_API_KEY, or `<data-dir>/api-key`).
    #[arg(long, hide_env_values = true)]
    api_key: Option<String>,
    /// Data dir of a local server, whose `api-key` file is used when no key is given.
    #[arg(long, default_value = "/var/lib/paddock")]
    data_dir: PathBuf,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `paddock sandbox` subcommands.
#[derive(Subcommand, Debug)]
pub enum SandboxCommand {
    /// List sandboxes (running by default).
    List {
        /// States to list, comma-separated (`running`, `paused`).
        #[arg(long, default_value = "running")]
        state: String,
        /// Only sandboxes whose metadata has KEY=VALUE (repeatable).
        #[arg(long = "metadata", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Show one sandbox.
    Info {
        /// Sandbox id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Kill sandboxes.
    Kill {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Pause a running sandbox (its processes stop where they are).
    Pause {
        /// Sandbox id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Resume a paused sandbox (connect).
    Resume {
        /// Sandbox id.
        id: String,
        /// Seconds the sandbox stays alive from now.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[command(flatten)]
        target: Target,
    },
    /// CPU, memory and disk samples of a sandbox.
    Metrics {
        /// Sandbox id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Logs of a sandbox (lifecycle, envd, process starts and ends).
    Logs {
        /// Sandbox id.
        id: String,
        /// Most entries to show.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Run a command in a sandbox through envd and stream its output; exits with its code.
    Exec {
        /// Sandbox id.
        id: String,
        /// User to run as.
        #[arg(long, default_value = "user")]
        user: String,
        /// Working directory.
        #[arg(long)]
        cwd: Option<String>,
        /// The command line (run by `bash -l -c`, as the SDKs' `commands.run` does).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Open an interactive terminal in a sandbox (a login shell, or CMD after `--`); exits with
    /// the remote process's exit code.
    Shell {
        /// Sandbox id.
        id: String,
        /// User to run as (envd's default user, `user`, when not given).
        #[arg(long)]
        user: Option<String>,
        /// Working directory.
        #[arg(long)]
        cwd: Option<String>,
        /// Command line to run instead of `/bin/bash -i -l` (run by `bash -l -c`).
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
}

/// Runs one subcommand; `Ok(code)` is the process exit code.
pub async fn run(cmd: SandboxCommand) -> anyhow::Result<u8> {
    match cmd {
        SandboxCommand::List {
            state,
            metadata,
            target,
        } => {
            let api = Api::new(&target)?;
            list(&api, &state, &metadata, target.json).await?;
        }
        SandboxCommand::Info { id, target } => {
            let api = Api::new(&target)?;
            let info = api.get(&format!("/sandboxes/{id}"), &[]).await?;
            print_json_or(&info, target.json, || describe(&info));
        }
        SandboxCommand::Kill { ids, target } => {
            let api = Api::new(&target)?;
            let mut failed = false;
            for id in ids {
                match api.delete(&format!("/sandboxes/{id}")).await {
                    Ok(()) => println!("killed {id}"),
                    Err(e) => {
                        eprintln!("error: {id}: {e:#}");
                        failed = true;
                    }
                }
            }
            return Ok(u8::from(failed));
        }
        SandboxCommand::Pause { id, target } => {
            let api = Api::new(&target)?;
            api.post(&format!("/sandboxes/{id}/pause"), &json!({}))
                .await?;
            println!("paused {id}");
        }
        SandboxCommand::Resume {
            id,
            timeout,
            target,
        } => {
            let api = Api::new(&target)?;
            let body = json!({ "timeout": timeout });
            let out = api
                .post(&format!("/v2/sandboxes/{id}/connect"), &body)
                .await?;
            print_json_or(&out, target.json, || format!("resumed {id}"));
        }
        SandboxCommand::Metrics { id, target } => {
            let api = Api::new(&target)?;
            let samples = api.get(&format!("/sandboxes/{id}/metrics"), &[]).await?;
            print_json_or(&samples, target.json, || metrics_table(&samples));
        }
        SandboxCommand::Logs { id, limit, target } => {
            let api = Api::new(&target)?;
            let limit = limit.to_string();
            let out = api
                .get(
                    &format!("/sandboxes/{id}/logs"),
                    &[("limit", limit.as_str())],
                )
                .await?;
            print_json_or(&out, target.json, || logs_text(&out));
        }
        SandboxCommand::Exec {
            id,
            user,
            cwd,
            command,
            target,
        } => {
            let api = Api::new(&target)?;
            let envd = Envd::connect(&api, &target, &id).await?;
            return exec(&envd, &user, cwd.as_deref(), &command.join(" ")).await;
        }
        SandboxCommand::Shell {
            id,
            user,
            cwd,
            command,
            target,
        } => {
            let api = Api::new(&target)?;
            let envd = Envd::connect(&api, &target, &id).await?;
            let options = super::shell::ShellOptions { user, cwd, command };
            // An interactive session keeps its sandbox alive: connect again every minute,
            // which moves the end time to at least five minutes from then.
            let keepalive = tokio::spawn(async move {
                let mut tick = tokio::time::interval(SHELL_KEEPALIVE_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    // A failure shows in the session itself (the sandbox is gone).
                    let _ = api
                        .post(
                            &format!("/v2/sandboxes/{id}/connect"),
                            &json!({ "timeout": SHELL_KEEPALIVE_TIMEOUT_SECS }),
                        )
                        .await;
                }
            });
            let code = super::shell::run(envd, &options).await;
            keepalive.abort();
            return code;
        }
    }
    Ok(0)
}

/// How often `shell` extends its sandbox's life while the session runs.
const SHELL_KEEPALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// The timeout each keep-alive connect asks for, in seconds.
const SHELL_KEEPALIVE_TIMEOUT_SECS: u64 = 300;

/// A REST client for one API with its key.
pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) key: String,
}

impl Api {
    pub(crate) fn new(target: &Target) -> anyhow::Result<Self> {
        let key = match &target.api_key {
            Some(k) => k.clone(),
            None => ["E2B_API_KEY", "PADDOCK_API_KEY"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|k| !k.is_empty()))
                .or_else(|| {
                    std::fs::read_to_string(target.data_dir.join("api-key"))
                        .ok()
                        .map(|k| k.trim().to_string())
                })
                .ok_or_else(|| {
                    anyhow!(
                        "no API key: pass --api-key, set E2B_API_KEY, or run where {} holds \
                         the server's api-key",
                        target.data_dir.display()
                    )
                })?,
        };
        if !target.api_url.starts_with("http://") {
            bail!(
                "--api-url {:?}: only http:// URLs are supported by this CLI for now",
                target.api_url
            );
        }
        Ok(Api {
            http: reqwest::Client::new(),
            base: target.api_url.trim_end_matches('/').to_string(),
            key,
        })
    }

    pub(crate) async fn get(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .header("X-API-Key", &self.key)
            .send()
            .await
            .with_context(|| format!("GET {}{path}", self.base))?;
        json_or_error(resp).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("X-API-Key", &self.key)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {}{path}", self.base))?;
        json_or_error(resp).await
    }

    async fn delete(&self, path: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .delete(format!("{}{path}", self.base))
            .header("X-API-Key", &self.key)
            .send()
            .await
            .with_context(|| format!("DELETE {}{path}", self.base))?;
        json_or_error(resp).await.map(drop)
    }
}

/// A REST call answered with an error status: the status and the API's message.
#[derive(Debug, thiserror::Error)]
#[error("{status} {message}")]
pub(crate) struct HttpError {
    pub(crate) status: u16,
    pub(crate) message: String,
}

/// The `message` of a JSON error body, else the body itself, trimmed.
fn error_message(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| text.to_string())
        .trim()
        .to_string()
}

/// The JSON body of a success (`null` when empty), or an [`HttpError`] with the API's message.
pub(crate) async fn json_or_error(resp: reqwest::Response) -> anyhow::Result<Value> {
    let status = resp.status();
    let text = resp.text().await.context("reading the answer")?;
    if !status.is_success() {
        return Err(HttpError {
            status: status.as_u16(),
            message: error_message(&text),
        }
        .into());
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).with_context(|| format!("the answer is not JSON: {text:.200}"))
}

async fn list(api: &Api, state: &str, metadata: &[String], json: bool) -> anyhow::Result<()> {
    let mut query = vec![("state", state.to_string()), ("limit", "100".to_string())];
    if !metadata.is_empty() {
        for kv in metadata {
            if !kv.contains('=') {
                bail!("--metadata {kv:?}: expected KEY=VALUE");
            }
        }
        query.push(("metadata", metadata.join("&")));
    }
    let mut all = Vec::new();
    loop {
        let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = api
            .http
            .get(format!("{}/v2/sandboxes", api.base))
            .query(&pairs)
            .header("X-API-Key", &api.key)
            .send()
            .await
            .context("GET /v2/sandboxes")?;
        let next = resp
            .headers()
            .get("x-next-token")
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        let page = json_or_error(resp).await?;
        all.extend(page.as_array().cloned().unwrap_or_default());
        match next {
            Some(token) => {
                query.retain(|(k, _)| *k != "nextToken");
                query.push(("nextToken", token));
            }
            None => break,
        }
    }
    let all = Value::Array(all);
    print_json_or(&all, json, || sandbox_table(&all));
    Ok(())
}

fn print_json_or(value: &Value, json: bool, text: impl FnOnce() -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        );
    } else {
        let t = text();
        if !t.is_empty() {
            println!("{t}");
        }
    }
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

fn sandbox_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    vec![
                        field(s, "sandboxID").to_string(),
                        field(s, "templateID").to_string(),
                        field(s, "state").to_string(),
                        field(s, "startedAt").to_string(),
                        field(s, "endAt").to_string(),
                        s.get("metadata")
                            .and_then(Value::as_object)
                            .map(|m| {
                                m.iter()
                                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        return "no sandboxes".into();
    }
    table(
        &[
            "SANDBOX ID",
            "TEMPLATE",
            "STATE",
            "STARTED",
            "ENDS",
            "METADATA",
        ],
        &rows,
    )
}

fn describe(info: &Value) -> String {
    let mut out = String::new();
    for key in [
        "sandboxID",
        "templateID",
        "state",
        "startedAt",
        "endAt",
        "cpuCount",
        "memoryMB",
        "diskSizeMB",
        "envdVersion",
    ] {
        let v = match info.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "-".into(),
        };
        out.push_str(&format!("{key:<12} {v}\n"));
    }
    if let Some(m) = info.get("metadata").and_then(Value::as_object) {
        for (k, v) in m {
            out.push_str(&format!("metadata     {k}={}\n", v.as_str().unwrap_or("")));
        }
    }
    out.trim_end().to_string()
}

fn metrics_table(samples: &Value) -> String {
    let num = |s: &Value, k: &str| s.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let mib = |b: f64| format!("{:.1}", b / (1024.0 * 1024.0));
    let rows: Vec<Vec<String>> = samples
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    vec![
                        field(s, "timestamp").to_string(),
                        format!("{:.1}", num(s, "cpuUsedPct")),
                        format!("{}", num(s, "cpuCount")),
                        mib(num(s, "memUsed")),
                        mib(num(s, "memTotal")),
                        mib(num(s, "diskUsed")),
                        mib(num(s, "diskTotal")),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        return "no samples yet".into();
    }
    table(
        &[
            "TIME", "CPU %", "CPUS", "MEM MiB", "MEM MAX", "DISK MiB", "DISK MAX",
        ],
        &rows,
    )
}

fn logs_text(out: &Value) -> String {
    let entries = out
        .get("logEntries")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
        .or_else(|| out.get("logs").and_then(Value::as_array));
    let Some(entries) = entries else {
        return "no logs".into();
    };
    let mut text = String::new();
    for e in entries {
        let ts = field(e, "timestamp");
        let line = e
            .get("message")
            .or_else(|| e.get("line"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let level = e.get("level").and_then(Value::as_str).unwrap_or("");
        let fields = e
            .get("fields")
            .and_then(Value::as_object)
            .map(|f| {
                f.iter()
                    .map(|(k, v)| {
                        format!(
                            " {k}={}",
                            v.as_str().map(str::to_string).unwrap_or(v.to_string())
                        )
                    })
                    .collect::<String>()
            })
            .unwrap_or_default();
        text.push_str(&format!("{ts} {level:<5} {line}{fields}\n"));
    }
    text.trim_end().to_string()
}

/// Left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

// ---------------------------------------------------------------------------------------------
// envd through the sandbox proxy, over Connect with the JSON codec (spec 3.3), as the SDKs call
// it. Shared by `exec` and `shell`.

/// `process.Process/Start`: a server stream of `ProcessEvent`s.
pub(crate) const START: &str = "process.Process/Start";
/// Connect envelope flag: the payload is compressed (never negotiated, so refused).
const FLAG_COMPRESSED: u8 = 0x01;
/// Connect envelope flag: the end-of-stream message (`{}` or `{"error": …}`).
const FLAG_END_STREAM: u8 = 0x02;
/// Largest envelope accepted (envd's data events carry at most 32 KiB of bytes).
const MAX_ENVELOPE: usize = 16 << 20;
/// Deadline of a unary call, as the SDKs' default request timeout.
const UNARY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A Connect stream that cannot be split into envelopes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// A compressed envelope although no compression was negotiated.
    #[error("a compressed Connect envelope (no compression was negotiated)")]
    Compressed,
    /// An envelope longer than [`MAX_ENVELOPE`].
    #[error("a Connect envelope of {0} bytes (the limit is {MAX_ENVELOPE})")]
    TooLarge(usize),
    /// The body ended in the middle of an envelope.
    #[error("the stream ended inside a Connect envelope ({0} bytes left over)")]
    Truncated(usize),
}

/// One message envelope: a flag byte (0), the payload's length (4 bytes, big-endian), the payload.
fn envelope(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(0u8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a byte stream into Connect envelopes, wherever the chunks happen to cut it.
#[derive(Debug, Default)]
struct EnvelopeDecoder {
    buf: Vec<u8>,
}

impl EnvelopeDecoder {
    /// Appends bytes read from the body.
    fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete envelope as `(flags, payload)`; `None` until one is fully buffered.
    fn next_envelope(&mut self) -> Result<Option<(u8, Vec<u8>)>, FrameError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        if flags & FLAG_COMPRESSED != 0 {
            return Err(FrameError::Compressed);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_ENVELOPE {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Ok(Some((flags, payload)))
    }

    /// Checks that the body ended between envelopes.
    fn finish(&self) -> Result<(), FrameError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(FrameError::Truncated(n)),
        }
    }
}

/// Why a call to envd failed, in terms a user can act on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RpcError {
    /// The proxy does not know the sandbox: killed, timed out, or never started.
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    /// The sandbox is known but nothing answers on envd's port.
    #[error("sandbox {0} is running but its envd does not answer")]
    EnvdUnreachable(String),
    /// envd refused the access token (a plain HTTP 401, not a Connect error).
    #[error("envd refused the access token: {0}")]
    AccessDenied(String),
    /// A Connect error; `code` is the snake_case Connect code (`not_found`, `unauthenticated`…).
    #[error("{code}: {message}")]
    Connect {
        /// Connect error code.
        code: String,
        /// envd's message.
        message: String,
    },
    /// Another HTTP error status.
    #[error("HTTP {status}: {message}")]
    Http {
        /// HTTP status.
        status: u16,
        /// The body's `message`, else the body.
        message: String,
    },
    /// A message that is not what the protocol promises.
    #[error("a malformed answer from envd: {0}")]
    Protocol(String),
    /// The stream could not be split into envelopes.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The connection failed.
    #[error("talking to envd: {0}")]
    Transport(#[from] reqwest::Error),
}

impl RpcError {
    /// The Connect code, for errors envd answered with.
    pub(crate) fn code(&self) -> Option<&str> {
        match self {
            RpcError::Connect { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Classifies an error status of an envd call made through the proxy of sandbox `id`.
    fn from_status(id: &str, status: u16, body: &str) -> Self {
        let code = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_string));
        let message = error_message(body);
        match (status, code) {
            (_, Some(code)) => RpcError::Connect { code, message },
            (502, None) if message.contains("was not found") => RpcError::NotRunning(id.into()),
            (502, None) if message.contains("port is not open") => {
                RpcError::EnvdUnreachable(id.into())
            }
            (401, None) => RpcError::AccessDenied(message),
            (status, None) => RpcError::Http { status, message },
        }
    }

    /// The error carried by an end-of-stream message, if any.
    fn from_end_of_stream(end: &Value) -> Option<Self> {
        let err = end.get("error")?;
        let text = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let code = Some(text("code"))
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "unknown".into());
        Some(RpcError::Connect {
            code,
            message: text("message"),
        })
    }
}

/// envd of one sandbox, reached through the sandbox proxy with the headers the SDKs send.
#[derive(Debug, Clone)]
pub(crate) struct Envd {
    http: reqwest::Client,
    base: String,
    sandbox_id: String,
    token: Option<String>,
}

impl Envd {
    /// Connects to the sandbox through the REST API (which resumes a paused sandbox, as the
    /// SDKs' `connect` does) and returns its envd, with the access token the API handed out.
    async fn connect(api: &Api, target: &Target, id: &str) -> anyhow::Result<Self> {
        let sandbox = api
            .post(&format!("/v2/sandboxes/{id}/connect"), &json!({}))
            .await
            .map_err(|e| connect_error(id, e))?;
        let token = sandbox
            .get("envdAccessToken")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Envd::new(api.http.clone(), &target.sandbox_url, id, token))
    }

    /// envd of sandbox `id` behind the sandbox proxy at `sandbox_url`.
    pub(crate) fn new(
        http: reqwest::Client,
        sandbox_url: &str,
        id: &str,
        token: Option<String>,
    ) -> Self {
        Envd {
            http,
            base: sandbox_url.trim_end_matches('/').to_string(),
            sandbox_id: id.to_string(),
            token,
        }
    }

    /// A request for `method` (`process.Process/Start`…) with the Connect and sandbox headers,
    /// the access token, and the user in Basic credentials when one is given.
    fn request(
        &self,
        method: &str,
        content_type: &str,
        user: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(format!("{}/{method}", self.base))
            .header("Content-Type", content_type)
            .header("Connect-Protocol-Version", "1")
            .header("E2b-Sandbox-Id", &self.sandbox_id)
            .header("E2b-Sandbox-Port", ENVD_PORT.to_string());
        if let Some(token) = &self.token {
            req = req.header("X-Access-Token", token);
        }
        if let Some(user) = user {
            req = req.header("Authorization", format!("Basic {}", basic_user(user)));
        }
        req
    }

    /// A unary call (`SendInput`, `Update`, `SendSignal`…, without a user, as the SDKs send
    /// them): envd's JSON answer.
    pub(crate) async fn unary(&self, method: &str, message: &Value) -> Result<Value, RpcError> {
        let body = serde_json::to_vec(message).map_err(|e| RpcError::Protocol(e.to_string()))?;
        let resp = self
            .request(method, "application/json", None)
            .header("Connect-Timeout-Ms", UNARY_TIMEOUT.as_millis().to_string())
            .timeout(UNARY_TIMEOUT)
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(RpcError::from_status(
                &self.sandbox_id,
                status.as_u16(),
                &text,
            ));
        }
        if text.trim().is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_str(&text).map_err(|e| RpcError::Protocol(format!("{e}: {text:.200}")))
    }

    /// Opens a server stream (`Start`) with one request message, keepalives every 50 s and no
    /// deadline (the process lives as long as it wants).
    pub(crate) async fn server_stream(
        &self,
        method: &str,
        user: Option<&str>,
        message: &Value,
    ) -> Result<MessageStream, RpcError> {
        let payload = serde_json::to_vec(message).map_err(|e| RpcError::Protocol(e.to_string()))?;
        let resp = self
            .request(method, "application/connect+json", user)
            .header("Keepalive-Ping-Interval", "50")
            .body(envelope(&payload))
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(RpcError::from_status(
                &self.sandbox_id,
                status.as_u16(),
                &text,
            ));
        }
        Ok(MessageStream {
            resp,
            decoder: EnvelopeDecoder::default(),
            finished: false,
        })
    }
}

/// Turns a failed REST connect into the error a user can act on.
fn connect_error(id: &str, e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<HttpError>() {
        Some(HttpError { status: 404, .. }) => anyhow!("sandbox {id} not found"),
        Some(HttpError {
            status: 401 | 403,
            message,
        }) => anyhow!(
            "authentication failed: {message} (check --api-key, E2B_API_KEY or PADDOCK_API_KEY)"
        ),
        Some(HttpError {
            status: 409,
            message,
        }) => anyhow!("sandbox {id} is not running: {message}"),
        _ => e.context(format!("connecting to sandbox {id}")),
    }
}

/// The messages of a Connect server stream, in order.
pub(crate) struct MessageStream {
    resp: reqwest::Response,
    decoder: EnvelopeDecoder,
    finished: bool,
}

impl MessageStream {
    /// The next message; `Ok(None)` once the stream ended cleanly (end-of-stream `{}`, or the
    /// body ending between envelopes, which the Python SDK tolerates too). An end-of-stream
    /// error comes back as [`RpcError::Connect`]. Cancel-safe: state changes only after an
    /// await completed, so dropping the future loses nothing.
    pub(crate) async fn next_message(&mut self) -> Result<Option<Value>, RpcError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if let Some((flags, payload)) = self.decoder.next_envelope()? {
                let value: Value = serde_json::from_slice(&payload)
                    .map_err(|e| RpcError::Protocol(format!("a message that is not JSON: {e}")))?;
                if flags & FLAG_END_STREAM == 0 {
                    return Ok(Some(value));
                }
                self.finished = true;
                return match RpcError::from_end_of_stream(&value) {
                    Some(err) => Err(err),
                    None => Ok(None),
                };
            }
            match self.resp.chunk().await? {
                Some(chunk) => self.decoder.push(&chunk),
                None => {
                    self.finished = true;
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }
}

/// `Start` through the proxy: streams stdout/stderr to ours and returns the exit code (128 +
/// signal for a process killed by one, 1 when the stream ends without an end event).
async fn exec(envd: &Envd, user: &str, cwd: Option<&str>, command: &str) -> anyhow::Result<u8> {
    let mut process = json!({ "cmd": "/bin/bash", "args": ["-l", "-c", command], "envs": {} });
    if let Some(cwd) = cwd {
        process["cwd"] = json!(cwd);
    }
    let msg = json!({ "process": process, "stdin": false });
    let mut stream = envd
        .server_stream(START, Some(user), &msg)
        .await
        .context("starting the command")?;
    let mut code: Option<u8> = None;
    while let Some(value) = stream.next_message().await.context("reading the output")? {
        if let Some(c) = handle_event(&value)? {
            code = Some(c);
        }
    }
    Ok(code.unwrap_or(1))
}

/// The bytes of `data.<key>` (`stdout`, `stderr`, `pty`) of a `DataEvent`, if present.
pub(crate) fn data_bytes(data: &Value, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
    use base64::Engine as _;
    let Some(b64) = data.get(key).and_then(Value::as_str) else {
        return Ok(None);
    };
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map(Some)
        .with_context(|| format!("{key} is not base64"))
}

/// Handles one `StartResponse` event: output goes to stdout/stderr; `end` gives the exit code.
fn handle_event(value: &Value) -> anyhow::Result<Option<u8>> {
    let Some(event) = value.get("event") else {
        return Ok(None);
    };
    if let Some(data) = event.get("data") {
        if let Some(bytes) = data_bytes(data, "stdout")? {
            let mut o = std::io::stdout().lock();
            o.write_all(&bytes)?;
            o.flush()?;
        }
        if let Some(bytes) = data_bytes(data, "stderr")? {
            let mut e = std::io::stderr().lock();
            e.write_all(&bytes)?;
            e.flush()?;
        }
    }
    if let Some(end) = event.get("end") {
        if let Some(err) = end.get("error").and_then(Value::as_str) {
            if !err.is_empty() && end.get("exitCode").and_then(Value::as_i64).unwrap_or(0) <= 0 {
                eprintln!("paddock: {err}");
            }
        }
        return Ok(Some(end_code(end)));
    }
    Ok(None)
}

/// The exit code an `EndEvent` stands for: the process's own, or 128 + signal for a process
/// killed by one (reported as -1 with "signal: …" in `status`).
pub(crate) fn end_code(end: &Value) -> u8 {
    match end.get("exitCode").and_then(Value::as_i64).unwrap_or(0) {
        exit @ 0..=255 => exit as u8,
        _ => 128 + signal_of(end.get("status").and_then(Value::as_str).unwrap_or("")),
    }
}

/// The signal number in "signal: killed"-style statuses (9 when unknown).
fn signal_of(status: &str) -> u8 {
    match status.trim_start_matches("signal: ") {
        "hangup" => 1,
        "interrupt" => 2,
        "terminated" => 15,
        _ => 9,
    }
}

/// `user:` in base64, the Basic credentials envd reads the user from.
fn basic_user(user: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:"))
}

/// A scripted HTTP/1.1 server standing in for the sandbox proxy and envd in unit tests.
#[cfg(test)]
pub(crate) mod mock {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// One request as received: the request line, lower-cased headers and the body.
    #[derive(Debug, Clone)]
    pub(crate) struct Request {
        pub line: String,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Request {
        pub(crate) fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// The canned answer to every request: status, content type, and the body in the chunks
    /// it is written in (chunked transfer encoding, one HTTP chunk each).
    #[derive(Debug, Clone)]
    pub(crate) struct Answer {
        pub status: u16,
        pub content_type: &'static str,
        pub chunks: Vec<Vec<u8>>,
    }

    /// Serves `answer` to every request on a fresh port; returns its base URL and the log of
    /// requests.
    pub(crate) async fn serve(answer: Answer) -> (String, Arc<Mutex<Vec<Request>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let requests = log.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (answer, log) = (answer.clone(), log.clone());
                tokio::spawn(async move {
                    let (read, mut write) = conn.into_split();
                    let mut read = BufReader::new(read);
                    while let Some(request) = read_request(&mut read).await {
                        log.lock().expect("log").push(request);
                        let mut out = format!(
                            "HTTP/1.1 {} X\r\ncontent-type: {}\r\ntransfer-encoding: chunked\r\n\r\n",
                            answer.status, answer.content_type
                        )
                        .into_bytes();
                        if write.write_all(&out).await.is_err() {
                            return;
                        }
                        for chunk in answer.chunks.iter().filter(|c| !c.is_empty()) {
                            out = format!("{:x}\r\n", chunk.len()).into_bytes();
                            out.extend_from_slice(chunk);
                            out.extend_from_slice(b"\r\n");
                            if write.write_all(&out).await.is_err() || write.flush().await.is_err()
                            {
                                return;
                            }
                        }
                        if write.write_all(b"0\r\n\r\n").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, requests)
    }

    async fn read_request(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Request> {
        let mut line = String::new();
        read.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            read.read_line(&mut h).await.ok().filter(|n| *n > 0)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':')?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        read.read_exact(&mut body).await.ok()?;
        Some(Request {
            line: line.trim_end().to_string(),
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of_stream(payload: &[u8]) -> Vec<u8> {
        let mut end = envelope(payload);
        end[0] = FLAG_END_STREAM;
        end
    }

    #[tokio::test]
    async fn a_server_stream_yields_its_messages_then_the_trailer_error() {
        let mut body = envelope(br#"{"event":{"start":{"pid":7}}}"#);
        body.extend(envelope(br#"{"event":{"keepalive":{}}}"#));
        body.extend(end_of_stream(
            br#"{"error":{"code":"deadline_exceeded","message":"too slow"}}"#,
        ));
        let (url, log) = mock::serve(mock::Answer {
            status: 200,
            content_type: "application/connect+json",
            chunks: body.chunks(3).map(<[u8]>::to_vec).collect(),
        })
        .await;
        let envd = Envd::new(reqwest::Client::new(), &url, "iabc", Some("tok".into()));
        let request = json!({"process": {"cmd": "true"}});
        let mut stream = envd
            .server_stream(START, Some("root"), &request)
            .await
            .expect("open");
        let next = stream.next_message().await.expect("start");
        assert_eq!(next, Some(json!({"event": {"start": {"pid": 7}}})));
        let next = stream.next_message().await.expect("keepalive");
        assert_eq!(next, Some(json!({"event": {"keepalive": {}}})));
        let err = stream
            .next_message()
            .await
            .expect_err("the trailer's error");
        assert_eq!(err.to_string(), "deadline_exceeded: too slow");
        assert_eq!(stream.next_message().await.expect("finished"), None);

        let sent = log.lock().expect("log")[0].clone();
        assert_eq!(sent.line, "POST /process.Process/Start HTTP/1.1");
        for (name, value) in [
            ("content-type", "application/connect+json"),
            ("connect-protocol-version", "1"),
            ("e2b-sandbox-id", "iabc"),
            ("e2b-sandbox-port", "49983"),
            ("x-access-token", "tok"),
            ("authorization", "Basic cm9vdDo="),
            ("keepalive-ping-interval", "50"),
        ] {
            assert_eq!(sent.header(name), Some(value), "{name}");
        }
        assert!(sent.header("connect-timeout-ms").is_none(), "no deadline");
        assert_eq!(
            sent.body,
            envelope(&serde_json::to_vec(&request).expect("json"))
        );
    }

    #[tokio::test]
    async fn a_stream_cut_inside_an_envelope_is_an_error() {
        let mut body = envelope(br#"{"event":{"start":{"pid":7}}}"#);
        body.truncate(body.len() - 2);
        let (url, _log) = mock::serve(mock::Answer {
            status: 200,
            content_type: "application/connect+json",
            chunks: vec![body],
        })
        .await;
        let envd = Envd::new(reqwest::Client::new(), &url, "iabc", None);
        let mut stream = envd
            .server_stream(START, None, &json!({}))
            .await
            .expect("open");
        let err = stream.next_message().await.expect_err("truncated");
        assert!(
            matches!(err, RpcError::Frame(FrameError::Truncated(_))),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unary_calls_send_json_without_a_user_and_map_errors() {
        let (url, log) = mock::serve(mock::Answer {
            status: 404,
            content_type: "application/json",
            chunks: vec![br#"{"code":"not_found","message":"pid 42 not found"}"#.to_vec()],
        })
        .await;
        let envd = Envd::new(reqwest::Client::new(), &url, "iabc", None);
        let msg = json!({"process": {"pid": 42}});
        let err = envd
            .unary("process.Process/Update", &msg)
            .await
            .expect_err("not found");
        assert_eq!(err.code(), Some("not_found"));
        let sent = log.lock().expect("log")[0].clone();
        assert_eq!(sent.line, "POST /process.Process/Update HTTP/1.1");
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(sent.header("connect-timeout-ms"), Some("60000"));
        assert!(sent.header("authorization").is_none());
        assert!(sent.header("x-access-token").is_none());
        assert_eq!(
            serde_json::from_slice::<Value>(&sent.body).expect("json"),
            msg
        );

        let (url, _log) = mock::serve(mock::Answer {
            status: 502,
            content_type: "application/json",
            chunks: vec![
                br#"{"sandboxId":"iabc","message":"The sandbox was not found","code":502}"#
                    .to_vec(),
            ],
        })
        .await;
        let envd = Envd::new(reqwest::Client::new(), &url, "iabc", None);
        let err = envd
            .unary("process.Process/Update", &msg)
            .await
            .expect_err("502");
        assert_eq!(err.to_string(), "sandbox iabc is not running");
    }

    #[test]
    fn events_give_output_and_exit_codes() {
        let end =
            json!({"event": {"end": {"exitCode": 3, "exited": true, "status": "exit status 3"}}});
        assert_eq!(handle_event(&end).expect("end"), Some(3));
        let killed = json!({"event": {"end": {"exitCode": -1, "status": "signal: killed", "error": "signal: killed"}}});
        assert_eq!(handle_event(&killed).expect("end"), Some(137));
        let start = json!({"event": {"start": {"pid": 7}}});
        assert_eq!(handle_event(&start).expect("start"), None);
        assert!(handle_event(&json!({"event": {"data": {"stdout": "!!"}}})).is_err());
    }

    #[test]
    fn envelopes_are_split_wherever_the_chunks_cut() {
        let mut stream = envelope(br#"{"a":1}"#);
        let mut end = envelope(b"{}");
        end[0] = FLAG_END_STREAM;
        stream.extend_from_slice(&end);
        for cut in 0..stream.len() {
            let mut d = EnvelopeDecoder::default();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                d.push(part);
                while let Some(frame) = d.next_envelope().expect("well-formed") {
                    got.push(frame);
                }
            }
            d.finish().expect("ends between envelopes");
            assert_eq!(
                got,
                vec![
                    (0, br#"{"a":1}"#.to_vec()),
                    (FLAG_END_STREAM, b"{}".to_vec())
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn bad_envelopes_are_refused() {
        let mut d = EnvelopeDecoder::default();
        d.push(&[FLAG_COMPRESSED, 0, 0, 0, 1, b'x']);
        assert_eq!(d.next_envelope(), Err(FrameError::Compressed));
        let mut d = EnvelopeDecoder::default();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            d.next_envelope(),
            Err(FrameError::TooLarge(u32::MAX as usize))
        );
        let mut d = EnvelopeDecoder::default();
        d.push(&[0, 0, 0, 0, 9, b'{']);
        assert_eq!(d.next_envelope(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated(6)));
    }

    #[test]
    fn rpc_failures_are_classified() {
        let e = RpcError::from_status(
            "iabc",
            502,
            r#"{"sandboxId":"iabc","message":"The sandbox was not found","code":502}"#,
        );
        assert_eq!(e.to_string(), "sandbox iabc is not running");
        let e = RpcError::from_status(
            "iabc",
            502,
            r#"{"sandboxId":"iabc","message":"The sandbox is running but port is not open","port":49983,"code":502}"#,
        );
        assert!(matches!(e, RpcError::EnvdUnreachable(_)), "{e}");
        let e = RpcError::from_status("iabc", 401, r#"{"code":401,"message":"bad token"}"#);
        assert_eq!(e.to_string(), "envd refused the access token: bad token");
        let e = RpcError::from_status(
            "iabc",
            401,
            r#"{"code":"unauthenticated","message":"user nobody2 not found"}"#,
        );
        assert_eq!(e.code(), Some("unauthenticated"));
        assert_eq!(e.to_string(), "unauthenticated: user nobody2 not found");
        let e = RpcError::from_status("iabc", 500, "boom");
        assert_eq!(e.to_string(), "HTTP 500: boom");

        let end = json!({"error": {"code": "not_found", "message": "pid 9 not found"}});
        let e = RpcError::from_end_of_stream(&end).expect("an error");
        assert_eq!(e.code(), Some("not_found"));
        assert!(RpcError::from_end_of_stream(&json!({})).is_none());
    }

    #[test]
    fn connect_failures_name_the_cause() {
        let http = |status, message: &str| {
            anyhow::Error::new(HttpError {
                status,
                message: message.into(),
            })
        };
        let e = connect_error("iabc", http(404, "sandbox iabc not found"));
        assert_eq!(e.to_string(), "sandbox iabc not found");
        let e = connect_error("iabc", http(401, "invalid API key"));
        assert!(
            e.to_string()
                .starts_with("authentication failed: invalid API key"),
            "{e}"
        );
        let e = connect_error("iabc", http(409, "sandbox is pausing"));
        assert_eq!(
            e.to_string(),
            "sandbox iabc is not running: sandbox is pausing"
        );
        let e = connect_error("iabc", http(500, "disk full"));
        assert_eq!(
            format!("{e:#}"),
            "connecting to sandbox iabc: 500 disk full"
        );
    }

    #[test]
    fn basic_credentials_name_the_user() {
        assert_eq!(basic_user("root"), "cm9vdDo=");
    }

    #[test]
    fn tables_align_and_render_samples_and_logs() {
        let t = table(&["A", "LONG"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1");
        let samples = json!([{"timestamp": "t", "cpuUsedPct": 12.34, "cpuCount": 2, "memUsed": 1048576,
            "memTotal": 536870912, "diskUsed": 0, "diskTotal": 1073741824}]);
        let m = metrics_table(&samples);
        assert!(
            m.contains("12.3") && m.contains("512.0") && m.contains("1024.0"),
            "{m}"
        );
        assert_eq!(metrics_table(&json!([])), "no samples yet");
        let logs = json!({"logs": [{"timestamp": "t1", "line": "hello"}], "logEntries": [
            {"timestamp": "t1", "level": "info", "message": "process started", "fields": {"pid": "3"}}]});
        assert_eq!(logs_text(&logs), "t1 info  process started pid=3");
        assert_eq!(logs_text(&json!({"logs": []})), "");
    }
}
