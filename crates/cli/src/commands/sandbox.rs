//! `paddock sandbox …`: the sandboxes of any Paddock (or E2B-compatible) API, from a terminal:
//! list, info, kill, pause, resume, metrics, logs, exec and shell. Talks only the public E2B REST
//! API (`X-API-Key`) and, for `exec` and `shell`, envd's Connect protocol through the sandbox
//! proxy, exactly as the SDKs do, so it works against a remote Paddock as well as a local one.
//! The envd client itself (Connect framing, headers, error mapping) is [`super::envd`]; this
//! module finds a sandbox's envd through the REST API ([`connect_envd`]) and runs `exec` on it,
//! and [`super::shell`] is the terminal side of `shell`.
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

use super::envd::{data_bytes, end_code, Envd, START};

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
            let envd = connect_envd(&api, &target, &id).await?;
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
            let envd = connect_envd(&api, &target, &id).await?;
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
pub(crate) fn error_message(text: &str) -> String {
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

/// Connects to the sandbox through the REST API (which resumes a paused sandbox, as the SDKs'
/// `connect` does) and returns its envd, with the access token the API handed out.
async fn connect_envd(api: &Api, target: &Target, id: &str) -> anyhow::Result<Envd> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
