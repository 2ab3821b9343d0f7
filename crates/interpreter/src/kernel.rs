//! One Jupyter kernel process and the executions on it. [`Kernel::start`] writes a connection
//! file (loopback TCP ports, a random key) into a private directory, starts the kernel with it,
//! connects a DEALER to its shell and control sockets and a SUB to its IOPub socket, and waits
//! until the kernel answers `kernel_info_request` and its IOPub messages arrive (ZeroMQ's
//! subscriptions take effect a moment after connecting). [`Kernel::execute`] sends an
//! `execute_request` and gives what the kernel publishes about it as [`Output`]s, ending once
//! the kernel is idle again and its `execute_reply` came (they come on different sockets, in
//! either order; an error only the reply reports becomes an [`Output::Error`]);
//! [`Kernel::interrupt`] asks it to stop the running code. A kernel that exits ends the
//! executions under way with [`Output::KernelExited`]. [`Kernel`] is either such a
//! [`JupyterKernel`] or a [`crate::pipe::PipeKernel`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::wire::{self, Message, Signer, WireError};
use crate::zmtp;

/// How long [`Kernel::start`] waits for a kernel to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The most stdout/stderr text an execution's outputs may hold while its reader is behind (the
/// interpreter's memory counts against the sandbox's): text past it is cut, with a note on
/// stderr, until the reader catches up. ipykernel batches a cell's output, so one message
/// larger than this is cut even for a fast reader.
pub const MAX_QUEUED_TEXT: usize = 32 << 20;

/// Where one execution's outputs go, with the bytes of text waiting in it.
pub(crate) struct Queue {
    tx: mpsc::UnboundedSender<Output>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Whether the reader was told.
    told: bool,
    /// IOPub said the kernel is idle after it (a pipe kernel: its stdout said it is done).
    pub(crate) idle: bool,
    /// Its `execute_reply` came (a pipe kernel: its stderr said it is done).
    pub(crate) replied: bool,
    /// An error was published for it on IOPub.
    errored: bool,
    /// The error its `execute_reply` reported, shown at its end unless IOPub showed one.
    reply_error: Option<Output>,
}

impl Queue {
    /// A queue and the [`Outputs`] that read it.
    pub(crate) fn new() -> (Queue, Outputs) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (
            Queue {
                tx,
                queued: Arc::clone(&queued),
                told: false,
                idle: false,
                replied: false,
                errored: false,
                reply_error: None,
            },
            Outputs { rx, queued },
        )
    }

    /// Passes `out` on; text the reader has no room for is cut (what fits goes on) and the
    /// reader told once.
    pub(crate) fn push(&mut self, mut out: Output) {
        use std::sync::atomic::Ordering;
        self.errored |= matches!(out, Output::Error { .. });
        let room = MAX_QUEUED_TEXT.saturating_sub(self.queued.load(Ordering::SeqCst));
        let mut cut = false;
        if let Output::Stdout { text, .. } | Output::Stderr { text, .. } = &mut out {
            if text.len() > room {
                let mut keep = room;
                while !text.is_char_boundary(keep) {
                    keep -= 1;
                }
                text.truncate(keep);
                cut = true;
            }
            self.queued.fetch_add(text.len(), Ordering::SeqCst);
        }
        let empty = matches!(&out, Output::Stdout { text, .. } | Output::Stderr { text, .. } if text.is_empty());
        if !empty {
            let _ = self.tx.send(out);
        }
        if cut && !self.told {
            self.told = true;
            let _ = self.tx.send(Output::Stderr {
                text: "[paddock: output cut: the code writes more than the client reads]\n".into(),
                timestamp: String::new(),
            });
        }
    }
}

/// One execution's outputs, in order; the stream ends when the kernel is idle again.
pub struct Outputs {
    rx: mpsc::UnboundedReceiver<Output>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Outputs {
    /// The next output, or `None` once the execution ended.
    pub async fn recv(&mut self) -> Option<Output> {
        let out = self.rx.recv().await?;
        if let Output::Stdout { text, .. } | Output::Stderr { text, .. } = &out {
            self.queued
                .fetch_sub(text.len(), std::sync::atomic::Ordering::SeqCst);
        }
        Some(out)
    }

    /// The bytes of text waiting to be read.
    pub fn queued(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Why a kernel could not be started or asked.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Writing its connection file or starting its process failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A connection to the kernel failed.
    #[error("kernel socket: {0}")]
    Socket(#[source] std::io::Error),
    /// A message that is not one.
    #[error("kernel message: {0}")]
    Wire(#[from] WireError),
    /// It did not answer in time.
    #[error("the kernel did not answer within {0:?}")]
    Timeout(Duration),
    /// Its process ended.
    #[error("the kernel exited ({0})")]
    Exited(String),
}

/// What a kernel published about one execution, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The execution's number (`execute_input`).
    ExecutionCount(u64),
    /// Text the code wrote to stdout, and when (the kernel's ISO 8601 date).
    Stdout {
        /// The text.
        text: String,
        /// When the kernel sent it.
        timestamp: String,
    },
    /// Text the code wrote to stderr, and when.
    Stderr {
        /// The text.
        text: String,
        /// When the kernel sent it.
        timestamp: String,
    },
    /// A MIME bundle: the value of the last expression (`is_main`), or one displayed.
    Result {
        /// MIME type to value.
        data: Map<String, Value>,
        /// Its metadata.
        metadata: Map<String, Value>,
        /// Whether it is the execution's value (`execute_result`) rather than a display.
        is_main: bool,
    },
    /// The code raised.
    Error {
        /// Exception name.
        name: String,
        /// Its message.
        value: String,
        /// The traceback's lines.
        traceback: Vec<String>,
    },
    /// The kernel process ended before the execution did.
    KernelExited(String),
}

/// The ports and key of a kernel's connection file.
#[derive(Debug, Clone)]
struct Connection {
    shell: u16,
    iopub: u16,
    stdin: u16,
    control: u16,
    hb: u16,
    key: String,
}

impl Connection {
    /// Free loopback ports (bound and released; the kernel binds them next) and a new key.
    fn new() -> Result<Connection, KernelError> {
        let mut ports = Vec::new();
        let mut held = Vec::new();
        for _ in 0..5 {
            let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|source| {
                KernelError::Io {
                    what: "finding a free port".into(),
                    source,
                }
            })?;
            ports.push(l.local_addr().map(|a| a.port()).unwrap_or(0));
            held.push(l);
        }
        drop(held);
        Ok(Connection {
            shell: ports[0],
            iopub: ports[1],
            stdin: ports[2],
            control: ports[3],
            hb: ports[4],
            key: wire::new_id(),
        })
    }

    fn file(&self) -> Value {
        json!({
            "shell_port": self.shell, "iopub_port": self.iopub, "stdin_port": self.stdin,
            "control_port": self.control, "hb_port": self.hb, "ip": "127.0.0.1",
            "key": self.key, "transport": "tcp", "signature_scheme": "hmac-sha256",
            "kernel_name": "",
        })
    }
}

pub(crate) type Waiters<T> = Arc<Mutex<HashMap<String, T>>>;

/// How a kernel is asked to stop the code it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interrupt {
    /// An `interrupt_request` on the control socket (ipykernel).
    #[default]
    Message,
    /// SIGINT to its process (IRkernel's `interrupt_mode: signal`).
    Signal,
}

/// What differs between Jupyter kernels besides their command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quirks {
    /// How to interrupt it.
    pub interrupt: Interrupt,
    /// Its `display_data` is the value of the code (IRkernel shows a cell's visible value so,
    /// with no `execute_result`): shown as the main result.
    pub display_is_result: bool,
}

/// A running Jupyter kernel. Dropping it kills the process.
pub struct JupyterKernel {
    session: String,
    signer: Signer,
    shell: tokio::sync::Mutex<zmtp::Writer>,
    control: tokio::sync::Mutex<zmtp::Writer>,
    /// Executions under way, by request id: where their outputs go.
    running: Waiters<Queue>,
    /// Requests waiting for their shell or control reply, by request id.
    replies: Waiters<oneshot::Sender<Message>>,
    /// The exit of the process, once it ended.
    exited: watch::Receiver<Option<String>>,
    kill: Option<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pid: Option<u32>,
    dir: PathBuf,
    interrupt: Interrupt,
}

impl std::fmt::Debug for JupyterKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JupyterKernel")
            .field("pid", &self.pid)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError::Io { what, source }
}

impl JupyterKernel {
    /// Starts `argv` (where an argument `{connection_file}` becomes the connection file's
    /// path) in `cwd` with `env` added, its connection file kept in `dir` (made 0700).
    pub async fn start(
        argv: &[String],
        cwd: &Path,
        env: &[(String, String)],
        dir: &Path,
    ) -> Result<JupyterKernel, KernelError> {
        JupyterKernel::start_with(argv, cwd, env, dir, Quirks::default()).await
    }

    /// [`JupyterKernel::start`] for a kernel with `quirks`.
    pub async fn start_with(
        argv: &[String],
        cwd: &Path,
        env: &[(String, String)],
        dir: &Path,
        quirks: Quirks,
    ) -> Result<JupyterKernel, KernelError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let display_is_result = quirks.display_is_result;
        let conn = Connection::new()?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("creating {}", dir.display())))?;
        let file = dir.join(format!("kernel-{}.json", wire::new_id()));
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .map_err(io(format!("writing {}", file.display())))?;
            f.write_all(conn.file().to_string().as_bytes())
                .map_err(io(format!("writing {}", file.display())))?;
        }
        let (program, args) = argv.split_first().ok_or_else(|| KernelError::Io {
            what: "starting the kernel".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
        })?;
        let file_arg = file.to_string_lossy().into_owned();
        let mut child = tokio::process::Command::new(program)
            .args(args.iter().map(|a| {
                if a == "{connection_file}" {
                    file_arg.clone()
                } else {
                    a.clone()
                }
            }))
            .current_dir(cwd)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("starting {program}")))?;
        let pid = child.id();

        let signer = Signer::new(conn.key.as_bytes());
        let at = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        // Each port is bound when the kernel gets to it: connect when it did.
        let connect = |port: u16, kind: &'static str| {
            let addr = at(port);
            async move {
                loop {
                    match zmtp::connect(addr, kind).await {
                        Ok(c) => return Ok(c),
                        Err(e) if tokio::time::Instant::now() >= deadline => {
                            return Err(KernelError::Socket(e))
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
        };
        let (shell_r, shell) = tokio::select! {
            c = connect(conn.shell, "DEALER") => c?,
            status = child.wait() => {
                return Err(KernelError::Exited(
                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                ))
            }
        };
        let (control_r, control) = connect(conn.control, "DEALER").await?;
        let (mut iopub, mut iopub_w) = connect(conn.iopub, "SUB").await?;
        iopub_w.subscribe(b"").await.map_err(KernelError::Socket)?;

        let running: Waiters<Queue> = Arc::default();
        let replies: Waiters<oneshot::Sender<Message>> = Arc::default();
        let (exited_tx, exited) = watch::channel(None);
        let (kill, kill_rx) = oneshot::channel::<()>();
        let mut tasks = Vec::new();
        // The process: its exit ends every execution under way.
        tasks.push(watch_exit(child, kill_rx, Arc::clone(&running), exited_tx));
        // IOPub: outputs to their executions, which end when the kernel is idle again.
        tasks.push(tokio::spawn({
            let (running, replies, signer) =
                (Arc::clone(&running), Arc::clone(&replies), signer.clone());
            async move {
                // Kept open: the subscription lasts as long as the connection.
                let _subscribed = iopub_w;
                while let Ok(frames) = iopub.recv().await {
                    let msg = match wire::decode(&signer, &frames) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "dropped a kernel message");
                            continue;
                        }
                    };
                    let Some(parent) = msg.parent_id().map(str::to_string) else {
                        continue;
                    };
                    // Seen on IOPub: the subscription works (see `start`).
                    if let Some(tx) = replies
                        .lock()
                        .expect("replies lock")
                        .remove(&format!("iopub:{parent}"))
                    {
                        let _ = tx.send(msg.clone());
                    }
                    let idle = msg.msg_type() == "status"
                        && msg.content.get("execution_state").and_then(Value::as_str)
                            == Some("idle");
                    let mut map = running.lock().expect("running lock");
                    let done = match map.get_mut(&parent) {
                        Some(q) => {
                            if let Some(out) = output(&msg, display_is_result) {
                                q.push(out);
                            }
                            q.idle |= idle;
                            q.idle && q.replied
                        }
                        None => false,
                    };
                    if done {
                        end(&mut map, &parent);
                    }
                }
            }
        }));

        // Shell and control: replies to whoever waits for them; an execution's reply marks it
        // replied (and ends it if the kernel was idle already).
        for mut reader in [shell_r, control_r] {
            let (replies, running, signer) =
                (Arc::clone(&replies), Arc::clone(&running), signer.clone());
            tasks.push(tokio::spawn(async move {
                while let Ok(frames) = reader.recv().await {
                    match wire::decode(&signer, &frames) {
                        Ok(msg) if msg.msg_type() == "execute_reply" => {
                            let Some(parent) = msg.parent_id() else {
                                continue;
                            };
                            let mut map = running.lock().expect("running lock");
                            let done = match map.get_mut(parent) {
                                Some(q) => {
                                    q.replied = true;
                                    q.reply_error = reply_error(&msg.content);
                                    q.idle
                                }
                                None => false,
                            };
                            if done {
                                end(&mut map, parent);
                            }
                        }
                        Ok(msg) => {
                            let waiter = msg
                                .parent_id()
                                .and_then(|p| replies.lock().expect("replies lock").remove(p));
                            if let Some(tx) = waiter {
                                let _ = tx.send(msg);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "dropped a kernel reply"),
                    }
                }
            }));
        }

        let kernel = JupyterKernel {
            session: wire::new_id(),
            signer,
            shell: tokio::sync::Mutex::new(shell),
            control: tokio::sync::Mutex::new(control),
            running,
            replies,
            exited,
            kill: Some(kill),
            tasks,
            pid,
            dir: dir.to_path_buf(),
            interrupt: quirks.interrupt,
        };
        kernel.wait_ready(deadline).await?;
        Ok(kernel)
    }

    /// Until a `kernel_info_request` is answered on the shell and its status seen on IOPub.
    async fn wait_ready(&self, deadline: tokio::time::Instant) -> Result<(), KernelError> {
        loop {
            if let Some(status) = self.exited.borrow().clone() {
                return Err(KernelError::Exited(status));
            }
            let msg = Message::new(&self.session, "kernel_info_request", json!({}));
            let (seen_tx, seen) = oneshot::channel();
            self.replies
                .lock()
                .expect("replies lock")
                .insert(format!("iopub:{}", msg.header.msg_id), seen_tx);
            let id = msg.header.msg_id.clone();
            let answered =
                tokio::time::timeout(Duration::from_millis(500), self.request(&self.shell, msg))
                    .await;
            self.replies.lock().expect("replies lock").remove(&id);
            let seen = tokio::time::timeout(Duration::from_millis(500), seen).await;
            self.replies
                .lock()
                .expect("replies lock")
                .remove(&format!("iopub:{id}"));
            if matches!(answered, Ok(Ok(_))) && matches!(seen, Ok(Ok(_))) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(KernelError::Timeout(START_TIMEOUT));
            }
        }
    }

    /// Sends `msg` on `socket` and waits for its reply there.
    async fn request(
        &self,
        socket: &tokio::sync::Mutex<zmtp::Writer>,
        msg: Message,
    ) -> Result<Message, KernelError> {
        let (tx, rx) = oneshot::channel();
        let id = msg.header.msg_id.clone();
        self.replies
            .lock()
            .expect("replies lock")
            .insert(id.clone(), tx);
        let sent = socket
            .lock()
            .await
            .send(&wire::encode(&self.signer, &msg))
            .await;
        if let Err(e) = sent {
            self.replies.lock().expect("replies lock").remove(&id);
            return Err(KernelError::Socket(e));
        }
        rx.await.map_err(|_| {
            KernelError::Exited(self.exited().unwrap_or_else(|| "connection lost".into()))
        })
    }

    /// Runs `code`; its outputs arrive on the receiver, which ends when the kernel is idle
    /// again (or with [`Output::KernelExited`]). One execution at a time per kernel: a second
    /// waits for the shell until the first's request was sent.
    pub async fn execute(&self, code: &str) -> Result<Outputs, KernelError> {
        self.run(code, false).await
    }

    /// Runs `code` without it counting as an execution (no history, no execution count):
    /// housekeeping such as setting a working directory or env vars.
    pub async fn execute_silent(&self, code: &str) -> Result<Outputs, KernelError> {
        self.run(code, true).await
    }

    async fn run(&self, code: &str, silent: bool) -> Result<Outputs, KernelError> {
        if let Some(status) = self.exited.borrow().clone() {
            return Err(KernelError::Exited(status));
        }
        let msg = Message::new(
            &self.session,
            "execute_request",
            json!({
                "code": code, "silent": silent, "store_history": !silent,
                // One execution at a time per kernel: nothing is ever queued behind an error
                // to abort, and ipykernel's abort window after one can swallow the next
                // request when it comes quickly.
                "user_expressions": {}, "allow_stdin": false, "stop_on_error": false,
            }),
        );
        let (queue, outputs) = Queue::new();
        self.running
            .lock()
            .expect("running lock")
            .insert(msg.header.msg_id.clone(), queue);
        let sent = self
            .shell
            .lock()
            .await
            .send(&wire::encode(&self.signer, &msg))
            .await;
        if let Err(e) = sent {
            self.running
                .lock()
                .expect("running lock")
                .remove(&msg.header.msg_id);
            return Err(KernelError::Socket(e));
        }
        Ok(outputs)
    }

    /// Asks the kernel to interrupt the code it runs (`interrupt_request` on control).
    pub async fn interrupt(&self) -> Result<(), KernelError> {
        if self.interrupt == Interrupt::Signal {
            let pid = self
                .pid
                .and_then(|p| i32::try_from(p).ok())
                .ok_or_else(|| {
                    KernelError::Exited(self.exited().unwrap_or_else(|| "no process".into()))
                })?;
            if self.exited().is_some() {
                return Err(KernelError::Exited(self.exited().unwrap_or_default()));
            }
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            )
            .map_err(|e| KernelError::Io {
                what: "interrupting the kernel".into(),
                source: std::io::Error::from(e),
            })?;
            return Ok(());
        }
        let msg = Message::new(&self.session, "interrupt_request", json!({}));
        tokio::time::timeout(Duration::from_secs(5), self.request(&self.control, msg))
            .await
            .map_err(|_| KernelError::Timeout(Duration::from_secs(5)))??;
        Ok(())
    }

    /// The kernel's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Whether its process ended (and how).
    pub fn exited(&self) -> Option<String> {
        self.exited.borrow().clone()
    }
}

impl Drop for JupyterKernel {
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        for t in &self.tasks[1..] {
            t.abort();
        }
    }
}

/// Watches a kernel's process: its exit (or `kill`) is sent on `exited` and ends every
/// execution under way with [`Output::KernelExited`].
pub(crate) fn watch_exit(
    mut child: tokio::process::Child,
    kill: oneshot::Receiver<()>,
    running: Waiters<Queue>,
    exited: watch::Sender<Option<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let status = tokio::select! {
            s = child.wait() => s.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
            _ = kill => {
                let _ = child.kill().await;
                "killed".to_string()
            }
        };
        let _ = exited.send(Some(status.clone()));
        let ended: Vec<_> = running.lock().expect("running lock").drain().collect();
        for (_, mut q) in ended {
            q.push(Output::KernelExited(status.clone()));
        }
    })
}

/// Ends execution `parent` (idle and replied: everything IOPub had for it came before its
/// idle status): the reply's error is shown if IOPub showed none (a kernel may report an
/// error only there; either order of the two gives one error line).
fn end(map: &mut HashMap<String, Queue>, parent: &str) {
    if let Some(mut q) = map.remove(parent) {
        if let Some(err) = q.reply_error.take().filter(|_| !q.errored) {
            q.push(err);
        }
    }
}

/// The error an `execute_reply` reports (`status: "error"`), if any.
fn reply_error(content: &Value) -> Option<Output> {
    if content.get("status").and_then(Value::as_str) != Some("error") {
        return None;
    }
    Some(error_of(content))
}

/// The `ename`, `evalue` and `traceback` of an `error` message or an error reply.
fn error_of(content: &Value) -> Output {
    let text = |k: &str| {
        content
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Output::Error {
        name: text("ename"),
        value: text("evalue"),
        traceback: content
            .get("traceback")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// What an IOPub message says about its execution, if anything.
fn output(msg: &Message, display_is_result: bool) -> Option<Output> {
    let c = &msg.content;
    let text = |k: &str| {
        c.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let map = |k: &str| {
        c.get(k)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    match msg.msg_type() {
        "execute_input" => c
            .get("execution_count")
            .and_then(Value::as_u64)
            .map(Output::ExecutionCount),
        "stream" if text("name") == "stderr" => Some(Output::Stderr {
            text: text("text"),
            timestamp: msg.header.date.clone(),
        }),
        "stream" => Some(Output::Stdout {
            text: text("text"),
            timestamp: msg.header.date.clone(),
        }),
        "execute_result" | "display_data" => Some(Output::Result {
            data: map("data"),
            metadata: map("metadata"),
            is_main: msg.msg_type() == "execute_result" || display_is_result,
        }),
        "error" => Some(error_of(c)),
        _ => None,
    }
}

/// A kernel of either kind: a Jupyter kernel spoken to over ZeroMQ, or one driven over pipes
/// ([`crate::pipe`]: JavaScript and TypeScript on Node.js, Bash).
#[derive(Debug)]
pub enum Kernel {
    /// A Jupyter kernel (ipykernel, IRkernel).
    Jupyter(JupyterKernel),
    /// A pipe kernel.
    Pipe(crate::pipe::PipeKernel),
}

impl Kernel {
    /// A Jupyter kernel: see [`JupyterKernel::start`].
    pub async fn start(
        argv: &[String],
        cwd: &Path,
        env: &[(String, String)],
        dir: &Path,
    ) -> Result<Kernel, KernelError> {
        JupyterKernel::start(argv, cwd, env, dir)
            .await
            .map(Kernel::Jupyter)
    }

    /// Runs `code`; see [`JupyterKernel::execute`].
    pub async fn execute(&self, code: &str) -> Result<Outputs, KernelError> {
        match self {
            Kernel::Jupyter(k) => k.execute(code).await,
            Kernel::Pipe(k) => k.execute(code, false).await,
        }
    }

    /// Runs `code` without it counting as an execution.
    pub async fn execute_silent(&self, code: &str) -> Result<Outputs, KernelError> {
        match self {
            Kernel::Jupyter(k) => k.execute_silent(code).await,
            Kernel::Pipe(k) => k.execute(code, true).await,
        }
    }

    /// Asks it to stop the code it runs.
    pub async fn interrupt(&self) -> Result<(), KernelError> {
        match self {
            Kernel::Jupyter(k) => k.interrupt().await,
            Kernel::Pipe(k) => k.interrupt(),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Kernel::Jupyter(k) => k.pid(),
            Kernel::Pipe(k) => k.pid(),
        }
    }

    /// Whether its process ended (and how).
    pub fn exited(&self) -> Option<String> {
        match self {
            Kernel::Jupyter(k) => k.exited(),
            Kernel::Pipe(k) => k.exited(),
        }
    }
}
