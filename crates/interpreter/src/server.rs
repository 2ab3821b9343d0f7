//! E2B's code-interpreter API (what `e2b_code_interpreter` and `@e2b/code-interpreter` call on
//! port 49999) over [`Kernel`]s: `GET /health`, `POST /execute` (a stream of JSON lines),
//! `POST /contexts`, `GET /contexts`, `POST /contexts/{id}/restart`, `DELETE /contexts/{id}`.
//!
//! A context is one kernel of one language with its working directory; `/execute` without a
//! context uses the language's default context (made on first use; [`Interpreter::start`]
//! makes Python's ahead). Executions on one context run one after another, each holding the
//! context until its kernel is idle again; the response's headers go out at once and its
//! lines as they come, with a `keepalive` line after [`KEEPALIVE`] of silence (a client that
//! went away is noticed when one cannot be written, and the kernel is interrupted), and always
//! `end_of_execution` last. Per-execution env vars are set before the code and put back after
//! it by silent executions. A kernel that dies is started again in the same context, and the
//! executions it took with it end with E2B's `ContextRestarting` error.
//!
//! Lines are JSON with every non-ASCII character escaped (the JS SDK decodes each network
//! chunk on its own, so a character split between chunks would be garbled otherwise).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};

use crate::kernel::{Interrupt, JupyterKernel, Kernel, KernelError, Output, Quirks};
use crate::pipe::{Driver, PipeKernel};

/// How long an execution's stream may be silent before a `keepalive` line.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// The largest request body taken.
pub const MAX_BODY: usize = 16 << 20;

/// How one language's kernel is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSpec {
    /// Its command: a Jupyter kernel's (`{connection_file}` stands for its file), or a pipe
    /// kernel's program.
    pub argv: Vec<String>,
    /// Env vars it gets besides [`Config::env`].
    pub env: Vec<(String, String)>,
    /// How a Jupyter kernel differs from ipykernel.
    pub quirks: Quirks,
    /// `Some` for a pipe kernel ([`crate::pipe`]) with this driver.
    pub pipe: Option<Driver>,
}

impl KernelSpec {
    fn new(argv: &[&str]) -> KernelSpec {
        KernelSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            quirks: Quirks::default(),
            pipe: None,
        }
    }

    fn pipe(driver: Driver, program: &std::path::Path) -> KernelSpec {
        KernelSpec {
            pipe: Some(driver),
            ..KernelSpec::new(&[&program.to_string_lossy()])
        }
    }
}

/// How the interpreter starts kernels.
#[derive(Debug, Clone)]
pub struct Config {
    /// Each language's kernel.
    pub kernels: HashMap<String, KernelSpec>,
    /// The working directory of contexts that name none.
    pub default_cwd: PathBuf,
    /// Where connection files are kept (made 0700).
    pub run_dir: PathBuf,
    /// Env vars every kernel gets besides the server's own.
    pub env: Vec<(String, String)>,
    /// envd's HTTP API (`http://127.0.0.1:49983`): the sandbox's env vars are read from its
    /// `GET /envs` before a context's first execution (a warm sandbox's interpreter starts
    /// before the create that sets them). `None`: the server's own environment is the
    /// sandbox's.
    pub envd_url: Option<String>,
}

/// How Python's kernel runs (`--python-kernel pipe|jupyter`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PythonKernel {
    /// IPython's shell over pipes ([`crate::pipe`], `python_kernel.py`): what ipykernel runs,
    /// without ZeroMQ; a round trip about 3 ms shorter.
    #[default]
    Pipe,
    /// ipykernel over Jupyter's messaging protocol (for code that needs the Jupyter kernel
    /// itself, e.g. widgets' comms).
    Jupyter,
}

impl Config {
    /// Python's kernel run by `python` (IPython's shell over pipes), contexts in `cwd`, files
    /// in `run_dir`.
    pub fn python(python: &str, cwd: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Config {
        Config::python_with(PythonKernel::Pipe, python, cwd, run_dir)
    }

    /// [`Config::python`] with the kernel of `kind`. ipykernel runs with IPython's SQLite
    /// history off (`In`, `Out` and execution counts stay): no database write and no saving
    /// thread per execution, 0.2 to 2 ms of a round trip here (the pipe kernel turns it off
    /// itself).
    pub fn python_with(
        kind: PythonKernel,
        python: &str,
        cwd: impl Into<PathBuf>,
        run_dir: impl Into<PathBuf>,
    ) -> Config {
        let spec = match kind {
            PythonKernel::Pipe => KernelSpec::pipe(Driver::Python, std::path::Path::new(python)),
            PythonKernel::Jupyter => KernelSpec::new(&[
                python,
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}",
                "--HistoryManager.enabled=False",
            ]),
        };
        Config {
            kernels: HashMap::from([("python".to_string(), spec)]),
            default_cwd: cwd.into(),
            run_dir: run_dir.into(),
            env: Vec::new(),
            envd_url: None,
        }
    }
}

impl Config {
    /// [`Config::python`] and every other kernel this system has: JavaScript on Node.js (and
    /// TypeScript when Node.js finds Debian's `typescript` module) and Bash, as pipe kernels;
    /// R with IRkernel when `R` is on `PATH`.
    pub fn standard(
        python_kernel: PythonKernel,
        python: &str,
        cwd: impl Into<PathBuf>,
        run_dir: impl Into<PathBuf>,
    ) -> Config {
        let mut config = Config::python_with(python_kernel, python, cwd, run_dir);
        if let Some(node) = crate::pipe::program(Driver::Node { typescript: false }) {
            let spec = KernelSpec::pipe(Driver::Node { typescript: false }, &node);
            config.kernels.insert("javascript".into(), spec);
            if typescript_installed() {
                let spec = KernelSpec::pipe(Driver::Node { typescript: true }, &node);
                config.kernels.insert("typescript".into(), spec);
            }
        }
        if let Some(bash) = crate::pipe::program(Driver::Bash) {
            config
                .kernels
                .insert("bash".into(), KernelSpec::pipe(Driver::Bash, &bash));
        }
        if let Some(r) = crate::pipe::on_path("R") {
            let r = r.to_string_lossy().into_owned();
            let mut spec = KernelSpec::new(&[
                &r,
                "--slave",
                "-e",
                "IRkernel::main()",
                "--args",
                "{connection_file}",
            ]);
            spec.quirks.interrupt = Interrupt::Signal;
            spec.quirks.display_is_result = true;
            config.kernels.insert("r".into(), spec);
        }
        config
    }
}

/// Whether Node.js finds the `typescript` module in its system paths (Debian's
/// `node-typescript` installs it in /usr/share/nodejs).
fn typescript_installed() -> bool {
    [
        "/usr/share/nodejs",
        "/usr/lib/nodejs",
        "/usr/local/lib/node_modules",
    ]
    .iter()
    .any(|d| {
        std::path::Path::new(d)
            .join("typescript/package.json")
            .is_file()
    })
}

/// The code that sets env vars `set` and removes `unset` in a kernel of `language` (run
/// silently before and after an execution); `None` when there is nothing to do or the language
/// has no way (its kernel keeps the environment it started with).
fn env_code(language: &str, set: &[(String, String)], unset: &[String]) -> Option<String> {
    if set.is_empty() && unset.is_empty() {
        return None;
    }
    let json_set = || {
        Value::Object(
            set.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    };
    let json_unset = || Value::Array(unset.iter().cloned().map(Value::String).collect());
    match language {
        "python" => Some(format!(
            "__import__('os').environ.update({})\n[__import__('os').environ.pop(k, None) for k in {}]",
            json_set(),
            json_unset()
        )),
        "javascript" | "typescript" => Some(format!(
            "Object.assign(process.env, {});\nfor (const k of {}) delete process.env[k];",
            json_set(),
            json_unset()
        )),
        "r" => {
            // JSON's string escapes are R's.
            let q = |s: &str| Value::String(s.to_string()).to_string();
            let mut code = String::new();
            if !set.is_empty() {
                let pairs: Vec<String> = set.iter().map(|(k, v)| format!("{}={}", q(k), q(v))).collect();
                code.push_str(&format!("invisible(Sys.setenv({}))\n", pairs.join(", ")));
            }
            if !unset.is_empty() {
                let keys: Vec<String> = unset.iter().map(|k| q(k)).collect();
                code.push_str(&format!("invisible(Sys.unsetenv(c({})))\n", keys.join(", ")));
            }
            Some(code)
        }
        "bash" => {
            let ident = |k: &str| {
                !k.is_empty()
                    && !k.starts_with(|c: char| c.is_ascii_digit())
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            };
            let mut code = String::new();
            for (k, v) in set.iter().filter(|(k, _)| ident(k)) {
                code.push_str(&format!("export {k}='{}'\n", v.replace('\'', "'\\''")));
            }
            for k in unset.iter().filter(|k| ident(k)) {
                code.push_str(&format!("unset {k}\n"));
            }
            (!code.is_empty()).then_some(code)
        }
        _ => None,
    }
}

/// A language as E2B names it: empty is Python, `js` and `ts` are JavaScript and TypeScript.
pub fn normalize_language(raw: Option<&str>) -> String {
    let l = raw.unwrap_or_default().trim().to_lowercase();
    match l.as_str() {
        "" => "python".into(),
        "js" => "javascript".into(),
        "ts" => "typescript".into(),
        _ => l,
    }
}

/// One context: a kernel of a language in a working directory.
struct Context {
    id: String,
    language: String,
    cwd: String,
    /// The kernel (replaced when restarted), taken for the whole of an execution; `None`
    /// until the first execution for a context made ahead without one (JavaScript's default).
    kernel: tokio::sync::Mutex<Option<Arc<Kernel>>>,
    /// The sandbox's env vars, once given to the kernel (again after a restart).
    sandbox_env: Mutex<Option<Map<String, Value>>>,
}

struct Inner {
    config: Config,
    /// Every context, in the order made.
    contexts: Mutex<Vec<Arc<Context>>>,
    /// Each language's default context.
    defaults: Mutex<HashMap<String, String>>,
    /// One default context made at a time per language.
    making_default: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The interpreter: its contexts and the HTTP API over them. Cheap to clone.
#[derive(Clone)]
pub struct Interpreter {
    inner: Arc<Inner>,
}

/// Why a context could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// No kernel is configured for the language.
    #[error("Failed to create context: no kernel for language '{0}'")]
    UnknownLanguage(String),
    /// Its kernel did not start.
    #[error("Failed to create context: {0}")]
    Kernel(#[from] KernelError),
    /// The working directory could not be set.
    #[error("Failed to set working directory")]
    Cwd,
}

/// A new context id (a random UUID, as Jupyter's kernel ids are).
fn new_context_id() -> String {
    let mut b = rand::random::<[u8; 16]>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A Python string literal of `s` (JSON's escapes are Python's).
fn py_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

impl Interpreter {
    /// An interpreter with Python's default context already started (so the first execution
    /// does not wait for a kernel).
    pub async fn start(config: Config) -> Result<Interpreter, ContextError> {
        let interpreter = Interpreter {
            inner: Arc::new(Inner {
                config,
                contexts: Mutex::new(Vec::new()),
                defaults: Mutex::new(HashMap::new()),
                making_default: Mutex::new(HashMap::new()),
            }),
        };
        interpreter.default_context("python").await?;
        // JavaScript's default context too, as E2B's server has one from the start; its
        // kernel starts with its first execution (Node.js is quick to start, and a sandbox
        // that never runs JavaScript pays neither its memory nor its start).
        if interpreter.inner.config.kernels.contains_key("javascript") {
            interpreter.default_context("javascript").await?;
        }
        Ok(interpreter)
    }

    async fn start_kernel(&self, language: &str, cwd: &str) -> Result<Kernel, ContextError> {
        let spec = self
            .inner
            .config
            .kernels
            .get(language)
            .ok_or_else(|| ContextError::UnknownLanguage(language.to_string()))?;
        let cwd_path = std::path::Path::new(cwd);
        let start_in = if cwd_path.is_dir() {
            cwd_path
        } else {
            self.inner.config.default_cwd.as_path()
        };
        let env: Vec<(String, String)> = self
            .inner
            .config
            .env
            .iter()
            .chain(&spec.env)
            .cloned()
            .collect();
        let kernel = match spec.pipe {
            Some(driver) => Kernel::Pipe(
                PipeKernel::start(
                    driver,
                    std::path::Path::new(&spec.argv[0]),
                    start_in,
                    &env,
                    &self.inner.config.run_dir,
                )
                .await?,
            ),
            None => Kernel::Jupyter(
                JupyterKernel::start_with(
                    &spec.argv,
                    start_in,
                    &env,
                    &self.inner.config.run_dir,
                    spec.quirks,
                )
                .await?,
            ),
        };
        Ok(kernel)
    }

    /// Makes a context of `language` in `cwd` (the default cwd when empty); answers its id,
    /// language and cwd.
    pub async fn create_context(
        &self,
        language: &str,
        cwd: Option<&str>,
    ) -> Result<(String, String, String), ContextError> {
        let ctx = self.new_context(language, cwd, true).await?;
        Ok((ctx.id.clone(), ctx.language.clone(), ctx.cwd.clone()))
    }

    /// A kernel of `language` in `cwd`, ready for code (Python's with its formatters).
    async fn start_ready(&self, language: &str, cwd: &str) -> Result<Kernel, ContextError> {
        let kernel = self.start_kernel(language, cwd).await?;
        if language == "python" && !prepare_python(&kernel, cwd).await {
            return Err(ContextError::Cwd);
        }
        Ok(kernel)
    }

    /// Makes a context; its kernel now (`start`) or at its first execution.
    async fn new_context(
        &self,
        language: &str,
        cwd: Option<&str>,
        start: bool,
    ) -> Result<Arc<Context>, ContextError> {
        if !self.inner.config.kernels.contains_key(language) {
            return Err(ContextError::UnknownLanguage(language.to_string()));
        }
        let cwd = match cwd {
            Some(c) if !c.is_empty() => c.to_string(),
            _ => self.inner.config.default_cwd.to_string_lossy().into_owned(),
        };
        let kernel = match start {
            true => Some(Arc::new(self.start_ready(language, &cwd).await?)),
            false => None,
        };
        let ctx = Arc::new(Context {
            id: new_context_id(),
            language: language.to_string(),
            cwd,
            kernel: tokio::sync::Mutex::new(kernel),
            sandbox_env: Mutex::new(None),
        });
        self.inner
            .contexts
            .lock()
            .expect("contexts lock")
            .push(Arc::clone(&ctx));
        Ok(ctx)
    }

    fn context(&self, id: &str) -> Option<Arc<Context>> {
        self.inner
            .contexts
            .lock()
            .expect("contexts lock")
            .iter()
            .find(|c| c.id == id)
            .cloned()
    }

    /// The default context of `language`, made if it has none yet.
    async fn default_context(&self, language: &str) -> Result<Arc<Context>, ContextError> {
        let known = || {
            let id = self
                .inner
                .defaults
                .lock()
                .expect("defaults lock")
                .get(language)
                .cloned()?;
            self.context(&id)
        };
        if let Some(ctx) = known() {
            return Ok(ctx);
        }
        let lock = Arc::clone(
            self.inner
                .making_default
                .lock()
                .expect("making lock")
                .entry(language.to_string())
                .or_default(),
        );
        let _one = lock.lock().await;
        if let Some(ctx) = known() {
            return Ok(ctx);
        }
        // Python's starts its kernel now (it takes a second; a warm sandbox has it ready), the
        // others at their first execution.
        let ctx = self
            .new_context(language, None, language == "python")
            .await?;
        self.inner
            .defaults
            .lock()
            .expect("defaults lock")
            .insert(language.to_string(), ctx.id.clone());
        Ok(ctx)
    }

    /// The HTTP API.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/health", get(health))
            .route("/execute", post(execute))
            .route("/contexts", post(create).get(list))
            .route("/contexts/{id}/restart", post(restart))
            .route("/contexts/{id}", delete(remove))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .layer(axum::middleware::from_fn(cors))
            .with_state(self.clone())
    }

    /// Starts `ctx`'s kernel again (its state is gone; the id, language and cwd stay).
    async fn restart_context(&self, ctx: &Context) -> Result<(), ContextError> {
        let fresh = self.start_ready(&ctx.language, &ctx.cwd).await?;
        *ctx.kernel.lock().await = Some(Arc::new(fresh));
        *ctx.sandbox_env.lock().expect("env lock") = None;
        Ok(())
    }

    /// The sandbox's env vars: envd's `GET /envs` (with the caller's access token), or the
    /// server's own environment without envd.
    async fn sandbox_env(&self, token: Option<&str>) -> Map<String, Value> {
        let Some(url) = &self.inner.config.envd_url else {
            return std::env::vars()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
        };
        match fetch_envs(url, token).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the sandbox's env vars from envd");
                Map::new()
            }
        }
    }
}

/// envd's `GET /envs`.
async fn fetch_envs(url: &str, token: Option<&str>) -> Result<Map<String, Value>, String> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let mut req = axum::http::Request::get(format!("{url}/envs"));
    if let Some(t) = token {
        req = req.header("X-Access-Token", t);
    }
    let req = req
        .body(http_body_util::Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| "envd did not answer".to_string())?
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("envd answered {}", resp.status()));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => Ok(m.into_iter().filter(|(_, v)| v.is_string()).collect()),
        _ => Err("envd's /envs is not an object".into()),
    }
}

/// The display formatters that fill E2B's `data`, `json` and `chart` fields (and show PIL
/// images), run in every Python kernel before user code.
const PYTHON_SETUP: &str = include_str!("python_setup.py");

/// Gets a new Python kernel ready: the formatters, then the working directory `cwd`; false if
/// the directory could not be entered.
async fn prepare_python(kernel: &Kernel, cwd: &str) -> bool {
    if silent_failed(kernel, PYTHON_SETUP).await {
        tracing::warn!("the Python display formatters could not be installed");
    }
    let code = format!(
        "import os as __paddock_os\n__paddock_os.chdir({})\ndel __paddock_os",
        py_str(cwd)
    );
    !silent_failed(kernel, &code).await
}

/// Runs `code` silently on `kernel`; whether it raised (or the kernel went).
async fn silent_failed(kernel: &Kernel, code: &str) -> bool {
    let Ok(mut rx) = kernel.execute_silent(code).await else {
        return true;
    };
    let mut failed = false;
    while let Some(o) = rx.recv().await {
        failed |= matches!(o, Output::Error { .. } | Output::KernelExited(_));
    }
    failed
}

/// `v` as JSON with every non-ASCII character escaped, and a newline.
fn line(v: &Value) -> Bytes {
    let text = serde_json::to_string(v).expect("JSON serializes");
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out.push('\n');
    Bytes::from(out)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn json_response(v: Value) -> Response {
    let body = line(&v);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.slice(..body.len() - 1),
    )
        .into_response()
}

/// FastAPI's validation error for field `field`.
fn unprocessable(field: &str, msg: &str) -> Response {
    let body = json!({"detail": [{"type": "invalid", "loc": ["body", field], "msg": msg}]});
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Told when the connection a request came on is closed by the client ([`serve`] gives each
/// request one), so an execution whose client left is interrupted at once rather than at the
/// next keepalive.
#[derive(Clone)]
pub struct ConnectionClosed(pub watch::Receiver<bool>);

/// The most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `interpreter`'s API on `listener` (HTTP/1.1, as E2B's server), at most
/// [`MAX_CONNECTIONS`] at once, each watched for the client closing it: a readable socket with
/// nothing to read means the peer is gone.
pub async fn serve(
    listener: tokio::net::TcpListener,
    interpreter: Interpreter,
) -> std::io::Result<()> {
    let router = interpreter.router();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (closed_tx, closed_rx) = watch::channel(false);
        let watcher = stream.into_std().and_then(|s| {
            let clone = s.try_clone()?;
            Ok((tokio::net::TcpStream::from_std(s)?, clone))
        });
        let (stream, watched) = match watcher {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "a connection could not be watched");
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(ConnectionClosed(closed_rx))),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let watch = tokio::spawn(watch_close(watched, closed_tx));
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true);
            let _ = http
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            watch.abort();
        });
    }
}

/// Sets `closed` once the peer of `socket` (a second handle on a served connection) has
/// closed it. Unread data (a next request) is left to the server; the check waits a little
/// before looking again.
async fn watch_close(socket: std::net::TcpStream, closed: watch::Sender<bool>) {
    let Ok(socket) = socket
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(socket))
    else {
        return;
    };
    let mut byte = [0u8; 1];
    loop {
        match socket.peek(&mut byte).await {
            Ok(0) | Err(_) => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let _ = closed.send(true);
}

/// CORS as E2B's server answers it (any origin, no credentials), so the JS SDK works from a
/// browser: a preflight is answered here, other answers get `access-control-allow-origin: *`.
async fn cors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let origin = req.headers().contains_key(header::ORIGIN);
    if origin && req.method() == axum::http::Method::OPTIONS {
        let asked = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned();
        let mut resp = text(StatusCode::OK, "OK");
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::HeaderValue::from_static("DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            header::HeaderValue::from_static("600"),
        );
        if let Some(asked) = asked {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
        }
        return resp;
    }
    let mut resp = next.run(req).await;
    if origin {
        resp.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::HeaderValue::from_static("*"),
        );
    }
    resp
}

async fn health() -> Response {
    json_response(json!("OK"))
}

/// A request body field that is not what it should be (answered 422).
struct Invalid(&'static str, &'static str);

impl IntoResponse for Invalid {
    fn into_response(self) -> Response {
        unprocessable(self.0, self.1)
    }
}

/// The body as a JSON object.
fn object(body: &Bytes) -> Result<Map<String, Value>, Invalid> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Invalid("body", "Input should be a valid JSON object")),
    }
}

/// A field that must be a string or null.
fn opt_str<'a>(m: &'a Map<String, Value>, field: &'static str) -> Result<Option<&'a str>, Invalid> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Invalid(field, "Input should be a valid string")),
    }
}

async fn execute(
    State(it): State<Interpreter>,
    closed: Option<axum::Extension<ConnectionClosed>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let token = headers
        .get("x-access-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let m = match object(&body) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let code = match m.get("code") {
        Some(Value::String(s)) => s.clone(),
        _ => return unprocessable("code", "Input should be a valid string"),
    };
    let (context_id, language) = match (opt_str(&m, "context_id"), opt_str(&m, "language")) {
        (Ok(c), Ok(l)) => (c.filter(|s| !s.is_empty()), l.filter(|s| !s.is_empty())),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    let env_vars: Vec<(String, String)> = match m.get("env_vars") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(vars)) => {
            let mut out = Vec::new();
            for (k, v) in vars {
                match v {
                    Value::String(s) => out.push((k.clone(), s.clone())),
                    _ => return unprocessable("env_vars", "Input should be a valid string"),
                }
            }
            out
        }
        Some(_) => return unprocessable("env_vars", "Input should be a valid dictionary"),
    };
    if context_id.is_some() && language.is_some() {
        return text(
            StatusCode::BAD_REQUEST,
            "Only one of context_id or language can be provided",
        );
    }
    let ctx = match (context_id, language) {
        (Some(id), _) => match it.context(id) {
            Some(c) => c,
            None => return text(StatusCode::NOT_FOUND, format!("Context {id} not found")),
        },
        (None, l) => match it.default_context(&normalize_language(l)).await {
            Ok(c) => c,
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let closed = closed.map(|axum::Extension(c)| c.0);
    tokio::spawn(run_execution(it, ctx, code, env_vars, token, closed, tx));
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .expect("a valid response")
}

/// One execution's stream: waits for the context, sets the env vars, relays the kernel's
/// outputs as lines (keepalives in silences), puts the env vars back, ends the stream.
async fn run_execution(
    it: Interpreter,
    ctx: Arc<Context>,
    code: String,
    env_vars: Vec<(String, String)>,
    token: Option<String>,
    closed: Option<watch::Receiver<bool>>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    // Without a connection to watch (served some other way), a client that left is noticed
    // when a keepalive cannot be written.
    let (_never_tx, never) = watch::channel(false);
    let mut closed = closed.unwrap_or(never);
    let mut kernel_slot = ctx.kernel.lock().await;
    let kernel = match &*kernel_slot {
        Some(k) => Arc::clone(k),
        None => match it.start_ready(&ctx.language, &ctx.cwd).await {
            Ok(k) => Arc::clone(kernel_slot.insert(Arc::new(k))),
            Err(e) => {
                let _ = tx
                    .send(Ok(line(&json!({"type": "error", "name": "KernelError",
                        "value": e.to_string(), "traceback": ""}))))
                    .await;
                let _ = tx
                    .send(Ok(Bytes::from_static(
                        b"{\"type\": \"end_of_execution\"}\n",
                    )))
                    .await;
                return;
            }
        },
    };
    let language = ctx.language.as_str();
    let known = ctx.sandbox_env.lock().expect("env lock").clone();
    let sandbox_env = match known {
        Some(env) => env,
        None => {
            let env = it.sandbox_env(token.as_deref()).await;
            if it.inner.config.envd_url.is_some() {
                let pairs: Vec<(String, String)> = env
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect();
                if let Some(code) = env_code(language, &pairs, &[]) {
                    let _ = silent_failed(&kernel, &code).await;
                }
            }
            *ctx.sandbox_env.lock().expect("env lock") = Some(env.clone());
            env
        }
    };
    if let Some(code) = env_code(language, &env_vars, &[]) {
        let _ = silent_failed(&kernel, &code).await;
    }
    let mut client_gone = false;
    let mut died = None;
    match kernel.execute(&code).await {
        Err(e) => {
            died = Some(e.to_string());
        }
        Ok(mut outputs) => loop {
            let next = tokio::select! {
                next = tokio::time::timeout(KEEPALIVE, outputs.recv()) => next,
                () = async {
                    let _ = closed.wait_for(|c| *c).await;
                }, if !client_gone => {
                    client_gone = true;
                    let _ = kernel.interrupt().await;
                    continue;
                }
            };
            let out = match next {
                Err(_) => {
                    if !client_gone
                        && tx
                            .send(Ok(line(&json!({"type": "keepalive"}))))
                            .await
                            .is_err()
                    {
                        client_gone = true;
                        let _ = kernel.interrupt().await;
                    }
                    continue;
                }
                Ok(None) => break,
                Ok(Some(o)) => o,
            };
            if let Output::KernelExited(why) = &out {
                died = Some(why.clone());
                break;
            }
            if client_gone {
                continue;
            }
            let Some(v) = wire_line(out) else { continue };
            if tx.send(Ok(line(&v))).await.is_err() {
                // The client went away: stop what it started.
                client_gone = true;
                let _ = kernel.interrupt().await;
            }
        },
    }
    if let Some(why) = died {
        tracing::warn!(context = %ctx.id, reason = %why, "a kernel died; starting it again");
        drop(kernel_slot);
        if let Err(e) = it.restart_context(&ctx).await {
            tracing::warn!(context = %ctx.id, error = %e, "the kernel could not be started again");
        }
        let _ = tx
            .send(Ok(line(
                &json!({"type": "error", "name": "ContextRestarting",
                "value": "Context was restarted", "traceback": ""}),
            )))
            .await;
    } else if !env_vars.is_empty() {
        // Back to what the sandbox's environment says (or unset).
        let restore: Vec<(String, String)> = env_vars
            .iter()
            .filter_map(|(k, _)| Some((k.clone(), sandbox_env.get(k)?.as_str()?.to_string())))
            .collect();
        let unset: Vec<String> = env_vars
            .iter()
            .filter(|(k, _)| !sandbox_env.contains_key(k))
            .map(|(k, _)| k.clone())
            .collect();
        if let Some(code) = env_code(language, &restore, &unset) {
            let _ = silent_failed(&kernel, &code).await;
        }
        drop(kernel_slot);
    }
    let _ = tx
        .send(Ok(Bytes::from_static(
            b"{\"type\": \"end_of_execution\"}\n",
        )))
        .await;
}

/// A kernel output as its `/execute` line.
fn wire_line(out: Output) -> Option<Value> {
    Some(match out {
        Output::ExecutionCount(n) => json!({"type": "number_of_executions", "execution_count": n}),
        Output::Stdout { text, timestamp } => {
            json!({"type": "stdout", "text": text, "timestamp": timestamp})
        }
        Output::Stderr { text, timestamp } => {
            json!({"type": "stderr", "text": text, "timestamp": timestamp})
        }
        Output::Error {
            name,
            value,
            traceback,
        } => {
            json!({"type": "error", "name": name, "value": value, "traceback": traceback.concat()})
        }
        Output::Result { data, is_main, .. } => result_line(data, is_main),
        Output::KernelExited(_) => return None,
    })
}

/// A MIME bundle as E2B's `result` line: known types by their field, the rest in `extra`.
fn result_line(data: Map<String, Value>, is_main: bool) -> Value {
    const FIELDS: [(&str, &str); 13] = [
        ("text/plain", "text"),
        ("text/html", "html"),
        ("text/markdown", "markdown"),
        ("image/svg+xml", "svg"),
        ("image/png", "png"),
        ("image/jpeg", "jpeg"),
        ("application/pdf", "pdf"),
        ("text/latex", "latex"),
        ("application/json", "json"),
        ("application/javascript", "javascript"),
        ("e2b/data", "data"),
        ("e2b/chart", "chart"),
        ("", ""),
    ];
    let mut out = Map::new();
    out.insert("type".into(), json!("result"));
    let mut extra = Map::new();
    let mut known: Map<String, Value> = Map::new();
    for (mime, v) in data {
        match FIELDS.iter().find(|(m, _)| *m == mime && !m.is_empty()) {
            Some((_, field)) => {
                let v = if *field == "text" {
                    Value::String(strip_quotes(v.as_str().unwrap_or_default()))
                } else {
                    v
                };
                known.insert(field.to_string(), v);
            }
            None => {
                extra.insert(mime, v);
            }
        }
    }
    for (_, field) in FIELDS.iter().filter(|(m, _)| !m.is_empty()) {
        if let Some(v) = known.remove(*field) {
            out.insert(field.to_string(), v);
        }
    }
    out.insert("extra".into(), Value::Object(extra));
    out.insert("is_main_result".into(), json!(is_main));
    Value::Object(out)
}

/// A `text/plain` value without the quotes of a string's repr, as E2B shows it.
fn strip_quotes(s: &str) -> String {
    let quoted = s.len() >= 2
        && ((s.starts_with('\'') && s.ends_with('\'')) || (s.starts_with('"') && s.ends_with('"')));
    if quoted {
        s[1..s.len() - 1].to_string()
    } else {
        s.to_string()
    }
}

async fn create(State(it): State<Interpreter>, body: Bytes) -> Response {
    let m = match object(&body) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let (language, cwd) = match (opt_str(&m, "language"), opt_str(&m, "cwd")) {
        (Ok(l), Ok(c)) => (normalize_language(l), c.map(str::to_string)),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    match it.create_context(&language, cwd.as_deref()).await {
        Ok((id, language, cwd)) => {
            json_response(json!({"id": id, "language": language, "cwd": cwd}))
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn list(State(it): State<Interpreter>) -> Response {
    let all: Vec<Value> = it
        .inner
        .contexts
        .lock()
        .expect("contexts lock")
        .iter()
        .map(|c| json!({"id": c.id, "language": c.language, "cwd": c.cwd}))
        .collect();
    json_response(Value::Array(all))
}

async fn restart(State(it): State<Interpreter>, Path(id): Path<String>) -> Response {
    let Some(ctx) = it.context(&id) else {
        return text(StatusCode::NOT_FOUND, format!("Context {id} not found"));
    };
    match it.restart_context(&ctx).await {
        Ok(()) => json_response(Value::Null),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Failed to restart context {id}"),
        ),
    }
}

async fn remove(State(it): State<Interpreter>, Path(id): Path<String>) -> Response {
    let removed = {
        let mut all = it.inner.contexts.lock().expect("contexts lock");
        let before = all.len();
        all.retain(|c| c.id != id);
        before != all.len()
    };
    if !removed {
        return text(StatusCode::NOT_FOUND, format!("Context {id} not found"));
    }
    it.inner
        .defaults
        .lock()
        .expect("defaults lock")
        .retain(|_, v| *v != id);
    json_response(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_ascii_json_and_results_map_mime_types() {
        let l = line(&json!({"text": "héllo 😀"}));
        assert!(l.is_ascii());
        assert_eq!(l.last(), Some(&b'\n'));
        let back: Value = serde_json::from_slice(&l).expect("json");
        assert_eq!(back["text"], "héllo 😀");

        let mut data = Map::new();
        data.insert("text/plain".into(), json!("'hello'"));
        data.insert("image/png".into(), json!("iVBOR"));
        data.insert("application/vnd.plotly.v1+json".into(), json!({"a": 1}));
        let r = result_line(data, true);
        assert_eq!(r["text"], "hello");
        assert_eq!(r["png"], "iVBOR");
        assert_eq!(
            r["extra"],
            json!({"application/vnd.plotly.v1+json": {"a": 1}})
        );
        assert_eq!(r["is_main_result"], true);
        assert_eq!(r.as_object().expect("object").len(), 5, "{r}");
        assert_eq!(strip_quotes("\"it's\""), "it's");
        assert_eq!(strip_quotes("[1] \"x\""), "[1] \"x\"");
        assert_eq!(normalize_language(Some(" JS ")), "javascript");
        assert_eq!(normalize_language(None), "python");
        let id = new_context_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }
}
