//! `paddock sandbox …`: the sandboxes of any Paddock (or E2B-compatible) API, from a terminal:
//! list, info, kill, pause, resume, metrics, logs and exec. Talks only the public E2B REST API
//! (`X-API-Key`) and, for `exec`, envd's Connect protocol through the sandbox proxy, exactly as
//! the SDKs do, so it works against a remote Paddock as well as a local one.
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
    /// Sandbox proxy of the Paddock server (for `exec`).
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
    json: bool,
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
            return exec(
                &api,
                &target,
                &id,
                &user,
                cwd.as_deref(),
                &command.join(" "),
            )
            .await;
        }
    }
    Ok(0)
}

/// A REST client for one API with its key.
struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    fn new(target: &Target) -> anyhow::Result<Self> {
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

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
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

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
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

/// The JSON body of a success (`null` when empty), or an error with the API's message.
async fn json_or_error(resp: reqwest::Response) -> anyhow::Result<Value> {
    let status = resp.status();
    let text = resp.text().await.context("reading the answer")?;
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
            .unwrap_or(text);
        bail!("{} {}", status.as_u16(), message.trim());
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

/// `Start` through the proxy: streams stdout/stderr to ours and returns the exit code (128 +
/// signal for a process killed by one, 1 when the stream ends without an end event).
async fn exec(
    api: &Api,
    target: &Target,
    id: &str,
    user: &str,
    cwd: Option<&str>,
    command: &str,
) -> anyhow::Result<u8> {
    // Connect gives the envd access token (and resumes a paused sandbox, as the SDKs do).
    let sandbox = api
        .post(&format!("/v2/sandboxes/{id}/connect"), &json!({}))
        .await?;
    let token = sandbox
        .get("envdAccessToken")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut process = json!({ "cmd": "/bin/bash", "args": ["-l", "-c", command], "envs": {} });
    if let Some(cwd) = cwd {
        process["cwd"] = json!(cwd);
    }
    let msg = json!({ "process": process, "stdin": false });
    let payload = serde_json::to_vec(&msg).context("encoding the request")?;
    let mut body = Vec::with_capacity(payload.len() + 5);
    body.push(0u8);
    body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    body.extend_from_slice(&payload);

    let url = format!(
        "{}/process.Process/Start",
        target.sandbox_url.trim_end_matches('/')
    );
    let mut req = api
        .http
        .post(&url)
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .header("E2b-Sandbox-Id", id)
        .header("E2b-Sandbox-Port", ENVD_PORT.to_string())
        .header("Authorization", format!("Basic {}", basic_user(user)))
        .body(body);
    if let Some(token) = &token {
        req = req.header("X-Access-Token", token);
    }
    let mut resp = req.send().await.with_context(|| format!("POST {url}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        bail!("starting the command: {} {}", status.as_u16(), text.trim());
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut code: Option<u8> = None;
    while let Some(chunk) = resp.chunk().await.context("reading the output")? {
        buf.extend_from_slice(&chunk);
        while buf.len() >= 5 {
            let flags = buf[0];
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 5 + len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..5 + len).skip(5).collect();
            let value: Value = serde_json::from_slice(&frame).context("a malformed frame")?;
            if flags & 0x02 != 0 {
                // End of stream: an error, if any, is in `error`.
                if let Some(err) = value.get("error") {
                    bail!(
                        "{}",
                        err.get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("stream error")
                    );
                }
                continue;
            }
            if let Some(c) = handle_event(&value)? {
                code = Some(c);
            }
        }
    }
    Ok(code.unwrap_or(1))
}

/// Handles one `StartResponse` event: output goes to stdout/stderr; `end` gives the exit code.
fn handle_event(value: &Value) -> anyhow::Result<Option<u8>> {
    use base64::Engine as _;
    let Some(event) = value.get("event") else {
        return Ok(None);
    };
    if let Some(data) = event.get("data") {
        let b64 = base64::engine::general_purpose::STANDARD;
        if let Some(out) = data.get("stdout").and_then(Value::as_str) {
            let bytes = b64.decode(out).context("stdout is not base64")?;
            let mut o = std::io::stdout().lock();
            o.write_all(&bytes)?;
            o.flush()?;
        }
        if let Some(err) = data.get("stderr").and_then(Value::as_str) {
            let bytes = b64.decode(err).context("stderr is not base64")?;
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
        let exit = end.get("exitCode").and_then(Value::as_i64).unwrap_or(0);
        let code = match exit {
            0..=255 => exit as u8,
            // A death by signal is reported as -1 with "signal: …" in `error`.
            _ => 128 + signal_of(end.get("status").and_then(Value::as_str).unwrap_or("")),
        };
        return Ok(Some(code));
    }
    Ok(None)
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
