//! Kernels driven over pipes with a line protocol of Paddock's own: Python (IPython's
//! `InteractiveShell` run by `python_kernel.py`: the same shell ipykernel runs, without
//! ZeroMQ's few milliseconds per execution), and the languages Debian has no Jupyter kernel
//! for: JavaScript and TypeScript on the sandbox's Node.js (`js_kernel.js`) and Bash (an
//! interactive `bash` with no prompt). The drivers are embedded, written into the
//! interpreter's private directory and run by `python3` or `node`.
//!
//! The kernel says what happens on stdout in lines that start with the record separator
//! (`\x1e`) followed by JSON (`{"id", "t": "stdout" | "stderr" | "result" | "display" |
//! "error" | "done" | ...}`); every other byte on its stdout or stderr (a program the code runs writing straight to them)
//! is output of the execution under way. An execution ends when the kernel says `done` (and,
//! for Bash and Python, when a marker came through stderr too, so nothing written to it before
//! is left behind). Requests: for Python and Node.js one JSON line `{"id", "code", "silent"}`; for Bash two
//! lines, `eval` of the base64 of the code with stdin from /dev/null, then the marker command,
//! so that SIGINT, which makes an interactive bash drop the line it runs, still lets the
//! marker run. Each kernel is its own process group: an interrupt is SIGINT to all of it (a
//! Bash command's children included), and dropping the kernel kills all of it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

use crate::kernel::{watch_exit, KernelError, Output, Outputs, Queue, Waiters};

/// The JavaScript/TypeScript driver.
const JS_KERNEL: &str = include_str!("js_kernel.js");
/// The Python driver.
const PYTHON_KERNEL: &str = include_str!("python_kernel.py");
/// Set up once in the Bash kernel: no prompts or history expansion, and the marker that ends
/// an execution (`__paddock_done <id> <silent>`, run right after the code, so `$?` is its
/// status).
const BASH_INIT: &str = r#"PS1= PS2= PS0= PS4= PROMPT_COMMAND=
set +H 2>/dev/null
__paddock_done() { local s=$?; printf '\036{"id":"%s","t":"done","status":%d,"silent":%s}\n' "$1" "$s" "$2"; printf '\036{"id":"%s","t":"stderr_done"}\n' "$1" >&2; }
printf '\036{"id":null,"t":"ready"}\n'; printf '\036{"id":null,"t":"ready"}\n' >&2
"#;
/// How long a pipe kernel has to say it is ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Output without a newline is passed on in pieces of at most this many bytes.
const MAX_LINE: usize = 64 << 10;
/// A line that starts like a protocol line is held whole up to this size (a display event
/// carries an image, base64), then passed on as output.
const MAX_EVENT: usize = 64 << 20;

/// Which driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// `python_kernel.py` (IPython's shell) on Python 3.
    Python,
    /// `js_kernel.js` on Node.js, for JavaScript (`typescript: false`) or TypeScript.
    Node {
        /// Transpile cells from TypeScript first.
        typescript: bool,
    },
    /// An interactive bash.
    Bash,
}

/// A running pipe kernel. Dropping it kills its process group.
pub struct PipeKernel {
    driver: Driver,
    stdin: tokio::sync::Mutex<tokio::process::ChildStdin>,
    running: Waiters<Queue>,
    /// The execution under way: where raw output goes.
    current: Arc<Mutex<Option<String>>>,
    exited: watch::Receiver<Option<String>>,
    kill: Option<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pid: Option<u32>,
    count: AtomicU64,
}

impl std::fmt::Debug for PipeKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeKernel")
            .field("driver", &self.driver)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// `name` in a directory of `PATH`.
pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Writes the driver file `name` with `contents` into `dir` (made 0700; the file 0600, replaced
/// whole so a kernel starting meanwhile reads either copy complete); returns its path.
fn write_driver(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, KernelError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |what: String| move |source| KernelError::Io { what, source };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("creating {}", dir.display())))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}", crate::wire::new_id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("writing {}", tmp.display())))?;
    f.write_all(contents.as_bytes())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("writing {}", path.display())))?;
    Ok(path)
}

/// The time now as the kernels' ISO 8601 dates are written.
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl PipeKernel {
    /// Starts `program` (`python3` for [`Driver::Python`], `node` for [`Driver::Node`], `bash`
    /// for [`Driver::Bash`]) in `cwd` with `env` added (the driver's file kept in `dir`, made
    /// 0700); returns once it said it is ready.
    pub async fn start(
        driver: Driver,
        program: &Path,
        cwd: &Path,
        env: &[(String, String)],
        dir: &Path,
    ) -> Result<PipeKernel, KernelError> {
        // A session of its own (no controlling terminal: an interactive bash in a background
        // group of one would stop itself), through util-linux's `setsid` (no fork: the child
        // is no group leader, so the pid stays the kernel's); else a process group of its own.
        let setsid = on_path("setsid");
        let mut cmd = match &setsid {
            Some(setsid) => {
                let mut c = tokio::process::Command::new(setsid);
                c.arg(program);
                c
            }
            None => {
                let mut c = tokio::process::Command::new(program);
                c.process_group(0);
                c
            }
        };
        match driver {
            Driver::Python => {
                cmd.arg(write_driver(dir, "python_kernel.py", PYTHON_KERNEL)?);
            }
            Driver::Node { typescript } => {
                cmd.arg(write_driver(dir, "js_kernel.js", JS_KERNEL)?)
                    .arg(if typescript {
                        "typescript"
                    } else {
                        "javascript"
                    });
            }
            Driver::Bash => {
                // No prompt from the first line on (PS1 from the environment is used).
                cmd.args(["--norc", "--noprofile", "--noediting", "-i"])
                    .env("PS1", "")
                    .env("PS2", "");
            }
        }
        let mut child = cmd
            .current_dir(cwd)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| KernelError::Io {
                what: format!("starting {}", program.display()),
                source,
            })?;
        let pid = child.id();
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        if driver == Driver::Bash {
            stdin
                .write_all(BASH_INIT.as_bytes())
                .await
                .map_err(KernelError::Socket)?;
        }

        let running: Waiters<Queue> = Arc::default();
        let current: Arc<Mutex<Option<String>>> = Arc::default();
        let (exited_tx, exited) = watch::channel(None);
        let (kill, kill_rx) = oneshot::channel::<()>();
        // Ready once each stream the kernel says so on has said it (so what bash prints on
        // stderr as it starts is never taken for an execution's output).
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(2);
        let readies = if driver == Driver::Bash { 2 } else { 1 };
        let mut tasks = Vec::new();
        tasks.push(watch_exit(child, kill_rx, Arc::clone(&running), exited_tx));
        let streams: [(Box<dyn tokio::io::AsyncRead + Unpin + Send>, bool); 2] =
            [(Box::new(stdout), false), (Box::new(stderr), true)];
        for (stream, is_stderr) in streams {
            let (running, current) = (Arc::clone(&running), Arc::clone(&current));
            let ready = ready_tx.clone();
            tasks.push(tokio::spawn(async move {
                read_stream(stream, |piece| match piece {
                    Piece::Event(ev) if ev.get("t").and_then(Value::as_str) == Some("ready") => {
                        let _ = ready.try_send(());
                    }
                    Piece::Event(ev) => event(&running, &current, driver, ev),
                    Piece::Text(text) => raw(&running, &current, is_stderr, text),
                })
                .await;
            }));
        }
        drop(ready_tx);
        let kernel = PipeKernel {
            driver,
            stdin: tokio::sync::Mutex::new(stdin),
            running,
            current,
            exited,
            kill: Some(kill),
            tasks,
            pid,
            count: AtomicU64::new(0),
        };
        let mut exited = kernel.exited.clone();
        let all_ready = async {
            for _ in 0..readies {
                ready_rx.recv().await?;
            }
            Some(())
        };
        tokio::select! {
            r = tokio::time::timeout(START_TIMEOUT, all_ready) => match r {
                Ok(Some(())) => Ok(kernel),
                Ok(None) => Err(KernelError::Exited(kernel.exited().unwrap_or_else(|| "its output closed".into()))),
                Err(_) => Err(KernelError::Timeout(START_TIMEOUT)),
            },
            _ = exited.wait_for(Option::is_some) => {
                Err(KernelError::Exited(kernel.exited().unwrap_or_default()))
            }
        }
    }

    /// Runs `code` (silently: no execution number, no result or error shown).
    pub async fn execute(&self, code: &str, silent: bool) -> Result<Outputs, KernelError> {
        if let Some(status) = self.exited() {
            return Err(KernelError::Exited(status));
        }
        let id = crate::wire::new_id();
        let (mut queue, outputs) = Queue::new();
        if matches!(self.driver, Driver::Node { .. }) {
            // Nothing comes through stderr to wait for.
            queue.replied = true;
        }
        if !silent {
            let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
            queue.push(Output::ExecutionCount(n));
        }
        let request = match self.driver {
            Driver::Python | Driver::Node { .. } => {
                let mut line = json!({"id": id, "code": code, "silent": silent}).to_string();
                line.push('\n');
                line
            }
            Driver::Bash => format!(
                "eval \"$(printf %s '{}' | base64 -d)\" < /dev/null\n__paddock_done {id} {}\n",
                base64::engine::general_purpose::STANDARD.encode(code),
                silent
            ),
        };
        let mut stdin = self.stdin.lock().await;
        self.running
            .lock()
            .expect("running lock")
            .insert(id.clone(), queue);
        *self.current.lock().expect("current lock") = Some(id.clone());
        let sent = async {
            stdin.write_all(request.as_bytes()).await?;
            stdin.flush().await
        }
        .await;
        if let Err(e) = sent {
            self.running.lock().expect("running lock").remove(&id);
            return Err(KernelError::Socket(e));
        }
        Ok(outputs)
    }

    /// SIGINT to the kernel's process group. Sent once no request is being written (waiting
    /// up to half a second), so the kernel holds the request the interrupt is for (a kernel
    /// that gets SIGINT between executions interrupts the request it has read or that waits in
    /// its pipe, and ignores it otherwise).
    pub fn interrupt(&self) -> Result<(), KernelError> {
        if let Some(status) = self.exited() {
            return Err(KernelError::Exited(status));
        }
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        let _writes_held = loop {
            match self.stdin.try_lock() {
                Ok(guard) => break Some(guard),
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(_) => break None,
            }
        };
        let pid = self
            .pid
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| KernelError::Exited("no process".into()))?;
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGINT,
        )
        .map_err(|e| KernelError::Io {
            what: "interrupting the kernel".into(),
            source: std::io::Error::from(e),
        })
    }

    /// Its process id (and process group).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Whether its process ended (and how).
    pub fn exited(&self) -> Option<String> {
        self.exited.borrow().clone()
    }
}

impl Drop for PipeKernel {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
            // What its code started goes with it (the group is the kernel's own).
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        for t in &self.tasks[1..] {
            t.abort();
        }
    }
}

/// A piece of a kernel's output stream.
enum Piece {
    /// A protocol line.
    Event(Map<String, Value>),
    /// Anything else.
    Text(String),
}

/// Reads `stream` to its end, cutting it into protocol lines and text.
async fn read_stream(mut stream: impl tokio::io::AsyncRead + Unpin, mut on: impl FnMut(Piece)) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = buf.drain(..=end).collect();
            // Output without a final newline runs into the marker written after it. The
            // marker starts at the line's last separator: a protocol line's JSON never holds
            // one (JSON escapes control characters), while the output before it may.
            if let Some(at) = line.iter().rposition(|&b| b == 0x1e).filter(|&at| at > 0) {
                let rest = line.split_off(at);
                on(Piece::Text(String::from_utf8_lossy(&line).into_owned()));
                line = rest;
            }
            on(piece(line));
        }
        // A long line without its newline yet: pass on the complete UTF-8 before its last
        // separator (from there on it may be a protocol line the kernel is still writing),
        // unless it grew past any line the kernel writes.
        if buf.len() >= MAX_LINE {
            let limit = match buf.iter().rposition(|&b| b == 0x1e) {
                Some(at) if buf.len() < MAX_EVENT => at,
                _ => buf.len(),
            };
            let valid = match std::str::from_utf8(&buf[..limit]) {
                Ok(_) => limit,
                Err(e) => e.valid_up_to().max(usize::from(limit > 0)),
            };
            if valid > 0 {
                let text: Vec<u8> = buf.drain(..valid).collect();
                on(Piece::Text(String::from_utf8_lossy(&text).into_owned()));
            }
        }
    }
    if !buf.is_empty() {
        on(piece(std::mem::take(&mut buf)));
    }
}

fn piece(line: Vec<u8>) -> Piece {
    if line.first() == Some(&0x1e) {
        if let Ok(Value::Object(m)) = serde_json::from_slice(&line[1..]) {
            return Piece::Event(m);
        }
    }
    Piece::Text(String::from_utf8_lossy(&line).into_owned())
}

/// Raw output: the running execution's.
fn raw(running: &Waiters<Queue>, current: &Mutex<Option<String>>, stderr: bool, text: String) {
    let Some(id) = current.lock().expect("current lock").clone() else {
        tracing::debug!(stderr, text = %text.trim_end(), "kernel output outside an execution");
        return;
    };
    let timestamp = now();
    let out = if stderr {
        Output::Stderr { text, timestamp }
    } else {
        Output::Stdout { text, timestamp }
    };
    if let Some(q) = running.lock().expect("running lock").get_mut(&id) {
        q.push(out);
    }
}

/// A protocol line from the kernel.
fn event(
    running: &Waiters<Queue>,
    current: &Mutex<Option<String>>,
    driver: Driver,
    ev: Map<String, Value>,
) {
    let Some(id) = ev.get("id").and_then(Value::as_str).map(str::to_string) else {
        return;
    };
    let text = |k: &str| {
        ev.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut map = running.lock().expect("running lock");
    let Some(q) = map.get_mut(&id) else {
        return;
    };
    match ev.get("t").and_then(Value::as_str).unwrap_or_default() {
        "stdout" => q.push(Output::Stdout {
            text: text("text"),
            timestamp: now(),
        }),
        "stderr" => q.push(Output::Stderr {
            text: text("text"),
            timestamp: now(),
        }),
        kind @ ("result" | "display") => q.push(Output::Result {
            data: ev
                .get("data")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            metadata: Map::new(),
            is_main: kind == "result",
        }),
        "error" => q.push(Output::Error {
            name: text("name"),
            value: text("value"),
            traceback: vec![text("traceback")],
        }),
        "done" => {
            let status = ev.get("status").and_then(Value::as_i64).unwrap_or(0);
            let silent = ev.get("silent").and_then(Value::as_bool).unwrap_or(false);
            if driver == Driver::Bash && status != 0 && !silent {
                q.push(Output::Error {
                    name: "ExitCode".into(),
                    value: status.to_string(),
                    traceback: vec![format!("the last command exited with status {status}")],
                });
            }
            q.idle = true;
        }
        "stderr_done" => q.replied = true,
        _ => {}
    }
    if q.idle && q.replied {
        let mut cur = current.lock().expect("current lock");
        if cur.as_deref() == Some(id.as_str()) {
            *cur = None;
        }
        drop(cur);
        map.remove(&id);
    }
}

/// The kernels of [`Driver`]s as this system has them: `python3`, `node` (or `nodejs`) and
/// `bash` on `PATH`.
pub(crate) fn program(driver: Driver) -> Option<PathBuf> {
    match driver {
        Driver::Python => on_path("python3"),
        Driver::Node { .. } => on_path("node").or_else(|| on_path("nodejs")),
        Driver::Bash => on_path("bash"),
    }
}

/// Outputs a test (or a caller) collects until the execution ends.
#[cfg(test)]
async fn collect(mut outputs: Outputs) -> Vec<Output> {
    let mut all = Vec::new();
    while let Some(o) = outputs.recv().await {
        all.push(o);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `read_stream` makes of `input`: texts joined, events in order.
    async fn pieces(input: &[u8]) -> (String, Vec<Map<String, Value>>) {
        let (mut text, mut events) = (String::new(), Vec::new());
        read_stream(input, |p| match p {
            Piece::Text(t) => text.push_str(&t),
            Piece::Event(e) => events.push(e),
        })
        .await;
        (text, events)
    }

    #[tokio::test]
    async fn separators_in_output_never_swallow_the_marker_after_it() {
        let (text, events) = pieces(b"a\x1eb\x1e{\"id\":\"x\",\"t\":\"done\"}\n").await;
        assert_eq!(text, "a\x1eb");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["t"], "done");
    }

    #[tokio::test]
    async fn a_big_event_after_text_without_a_newline_stays_whole() {
        let blob = "A".repeat(300_000);
        let mut input = b"Plot: ".to_vec();
        input.extend_from_slice(
            format!(
                "\x1e{{\"id\":\"x\",\"t\":\"display\",\"data\":{{\"image/png\":\"{blob}\"}}}}\n"
            )
            .as_bytes(),
        );
        // And a long line of output without a newline is passed on in pieces, whole.
        input.extend_from_slice("z".repeat(200_000).as_bytes());
        let (text, events) = pieces(&input).await;
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0]["data"]["image/png"].as_str().map(str::len),
            Some(300_000)
        );
        assert_eq!(text, format!("Plot: {}", "z".repeat(200_000)));
    }

    fn texts(outs: &[Output], stderr: bool) -> String {
        outs.iter()
            .filter_map(|o| match (o, stderr) {
                (Output::Stdout { text, .. }, false) | (Output::Stderr { text, .. }, true) => {
                    Some(text.as_str())
                }
                _ => None,
            })
            .collect()
    }

    fn result(outs: &[Output]) -> Option<String> {
        outs.iter().find_map(|o| match o {
            Output::Result { data, .. } => data
                .get("text/plain")
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        })
    }

    fn error(outs: &[Output]) -> Option<(String, String)> {
        outs.iter().find_map(|o| match o {
            Output::Error { name, value, .. } => Some((name.clone(), value.clone())),
            _ => None,
        })
    }

    #[tokio::test]
    async fn bash_keeps_state_separates_streams_and_reports_exit_codes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bash = program(Driver::Bash).expect("bash");
        let k = PipeKernel::start(
            Driver::Bash,
            &bash,
            dir.path(),
            &[],
            &dir.path().join("run"),
        )
        .await
        .expect("bash starts");
        let outs = collect(
            k.execute("N=6; echo $((N * 7)); echo oops >&2", false)
                .await
                .expect("run"),
        )
        .await;
        assert_eq!(outs[0], Output::ExecutionCount(1));
        assert_eq!(texts(&outs, false), "42\n");
        assert_eq!(texts(&outs, true), "oops\n");
        assert_eq!(error(&outs), None);
        let outs = collect(k.execute("echo $N; pwd; cat", false).await.expect("run")).await;
        assert_eq!(
            texts(&outs, false),
            format!("6\n{}\n", dir.path().display()),
            "state kept, started in cwd, stdin is not the protocol's"
        );
        let outs = collect(
            k.execute("ls /nonexistent-paddock", false)
                .await
                .expect("run"),
        )
        .await;
        assert_eq!(error(&outs), Some(("ExitCode".into(), "2".into())));
        let outs = collect(k.execute("false", true).await.expect("run")).await;
        assert!(outs.is_empty(), "silent: {outs:?}");
        let outs = collect(
            k.execute("echo 'a \"quoted\" $HOME'\nprintf 'no newline'", false)
                .await
                .expect("run"),
        )
        .await;
        assert_eq!(texts(&outs, false), "a \"quoted\" $HOME\nno newline");
    }

    #[tokio::test]
    async fn bash_is_interrupted_and_carries_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bash = program(Driver::Bash).expect("bash");
        let k = PipeKernel::start(
            Driver::Bash,
            &bash,
            dir.path(),
            &[],
            &dir.path().join("run"),
        )
        .await
        .expect("bash starts");
        for code in [
            "sleep 30; echo not-reached",
            "while true; do :; done; echo not-reached",
        ] {
            let started = std::time::Instant::now();
            let outs = k.execute(code, false).await.expect("run");
            tokio::time::sleep(Duration::from_millis(300)).await;
            k.interrupt().expect("interrupt");
            let outs = tokio::time::timeout(Duration::from_secs(10), collect(outs))
                .await
                .expect("ends after the interrupt");
            assert!(
                !texts(&outs, false).contains("not-reached"),
                "{code}: {outs:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(10));
        }
        let outs = collect(k.execute("echo alive", false).await.expect("run")).await;
        assert_eq!(texts(&outs, false), "alive\n");
    }

    #[tokio::test]
    async fn python_runs_ipython_with_state_streams_results_errors_and_interrupts() {
        // IPython comes with ipykernel: the Python scripts/test.sh installs it for.
        let Some(python) = std::env::var_os("PADDOCK_TEST_PYTHON") else {
            eprintln!(
                "skipped: set PADDOCK_TEST_PYTHON to a python with IPython (scripts/test.sh does)"
            );
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let k = PipeKernel::start(
            Driver::Python,
            Path::new(&python),
            dir.path(),
            &[],
            &dir.path().join("run"),
        )
        .await
        .expect("python starts");
        let run = |code: &'static str| {
            let k = &k;
            async move { collect(k.execute(code, false).await.expect("run")).await }
        };
        // Output printed before the result comes before it; stderr is complete at the end.
        let outs =
            run("import sys\na = 20\nprint('hi')\nprint('e', file=sys.stderr)\na + 22").await;
        assert_eq!(texts(&outs, false), "hi\n");
        assert_eq!(texts(&outs, true), "e\n");
        assert_eq!(result(&outs).as_deref(), Some("42"));
        let at = |f: fn(&Output) -> bool| outs.iter().position(f).expect("present");
        assert!(
            at(|o| matches!(o, Output::Stdout { .. })) < at(|o| matches!(o, Output::Result { .. }))
        );
        assert_eq!(result(&run("a * 2").await).as_deref(), Some("40"));
        // A trailing semicolon hides the result; display() shows on the way, not as the result.
        assert_eq!(result(&run("a;").await), None);
        let outs =
            run("from IPython.display import display, HTML\ndisplay(HTML('<b>x</b>'))\n5").await;
        let shown: Vec<(Option<Value>, bool)> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Result { data, is_main, .. } => {
                    Some((data.get("text/html").cloned(), *is_main))
                }
                _ => None,
            })
            .collect();
        assert_eq!(shown, vec![(Some(json!("<b>x</b>")), false), (None, true)]);
        // Bytes (PIL's _repr_png_) travel as base64, NaN as null, as in Jupyter's messages.
        let outs = run("class P:\n    def _repr_png_(self): return b'png!'\nfrom IPython.display import JSON\ndisplay(P())\ndisplay(JSON({'a': float('nan')}))").await;
        let data: Vec<&Map<String, Value>> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Result { data, .. } => Some(data),
                _ => None,
            })
            .collect();
        assert_eq!(data.len(), 2, "{outs:?}");
        assert_eq!(data[0]["image/png"], json!("cG5nIQ=="));
        assert_eq!(data[1]["application/json"], json!({"a": null}));
        // Errors as IPython shows them; the shell carries on.
        let outs = run("1/0").await;
        assert_eq!(
            error(&outs),
            Some(("ZeroDivisionError".into(), "division by zero".into()))
        );
        assert_eq!(
            error(&run("x +").await).map(|e| e.0).as_deref(),
            Some("SyntaxError")
        );
        // What the code starts writes straight to the streams; stdin is /dev/null, never the
        // requests' pipe.
        let outs = run("import os\nos.system('echo from-shell')\n!echo bang\ninput()").await;
        // (`!` runs through a terminal, as in ipykernel: its lines end in CRLF.)
        assert_eq!(texts(&outs, false), "from-shell\nbang\r\n");
        assert_eq!(error(&outs).map(|e| e.0).as_deref(), Some("EOFError"));
        // Silent: nothing shown, the state changed.
        let outs = collect(k.execute("b = 5", true).await.expect("run")).await;
        assert!(outs.is_empty(), "silent: {outs:?}");
        assert_eq!(result(&run("b").await).as_deref(), Some("5"));
        // An interrupt ends the execution with KeyboardInterrupt; the state is kept.
        let outs = k
            .execute("import time\nwhile True: time.sleep(0.01)", false)
            .await
            .expect("run");
        tokio::time::sleep(Duration::from_millis(500)).await;
        k.interrupt().expect("interrupt");
        let outs = tokio::time::timeout(Duration::from_secs(10), collect(outs))
            .await
            .expect("ends after the interrupt");
        assert_eq!(
            error(&outs).map(|e| e.0).as_deref(),
            Some("KeyboardInterrupt")
        );
        // An interrupt between executions is ignored.
        k.interrupt().expect("interrupt");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(result(&run("a + b").await).as_deref(), Some("25"));
        // os._exit ends the kernel: the execution ends with it.
        let outs = run("import os\nos._exit(3)").await;
        assert!(
            outs.iter().any(|o| matches!(o, Output::KernelExited(_))),
            "{outs:?}"
        );
    }

    #[tokio::test]
    async fn node_runs_javascript_with_state_results_errors_and_interrupts() {
        let Some(node) = program(Driver::Node { typescript: false }) else {
            eprintln!("no node on PATH: skipped");
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = Driver::Node { typescript: false };
        let k = PipeKernel::start(driver, &node, dir.path(), &[], &dir.path().join("run"))
            .await
            .expect("node starts");
        let outs = collect(
            k.execute("const a = 20; console.log('hi', {b: 1}); a + 22", false)
                .await
                .expect("run"),
        )
        .await;
        assert_eq!(texts(&outs, false), "hi { b: 1 }\n");
        assert_eq!(result(&outs).as_deref(), Some("42"));
        let outs = collect(k.execute("a * 2", false).await.expect("run")).await;
        assert_eq!(result(&outs).as_deref(), Some("40"), "top-level const kept");
        let outs = collect(
            k.execute("display({'text/html': '<b>x</b>'}); display([1]); 5", false)
                .await
                .expect("run"),
        )
        .await;
        let shown: Vec<(Value, bool)> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Result { data, is_main, .. } => {
                    Some((Value::Object(data.clone()), *is_main))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                (json!({"text/html": "<b>x</b>"}), false),
                (json!({"text/plain": "[ 1 ]"}), false),
                (json!({"text/plain": "5"}), true),
            ]
        );
        let outs = collect(k.execute("'str'", false).await.expect("run")).await;
        assert_eq!(result(&outs).as_deref(), Some("'str'"));
        let outs = collect(
            k.execute("throw new TypeError('bad')", false)
                .await
                .expect("run"),
        )
        .await;
        assert_eq!(error(&outs), Some(("TypeError".into(), "bad".into())));
        let outs = collect(k.execute("x +", false).await.expect("run")).await;
        assert_eq!(error(&outs).map(|e| e.0).as_deref(), Some("SyntaxError"));
        let outs = collect(
            k.execute(
                "const v = await new Promise(r => setTimeout(() => r(7), 10));\nv * 6",
                false,
            )
            .await
            .expect("run"),
        )
        .await;
        assert_eq!(
            result(&outs).as_deref(),
            Some("42"),
            "top-level await: {outs:?}"
        );
        let outs = collect(k.execute("v", false).await.expect("run")).await;
        assert_eq!(
            result(&outs).as_deref(),
            Some("7"),
            "kept after an await cell"
        );
        let outs = collect(
            k.execute("process.stdout.write('raw'); console.error('e')", false)
                .await
                .expect("run"),
        )
        .await;
        assert_eq!(texts(&outs, false), "raw");
        assert_eq!(texts(&outs, true), "e\n");
        let outs = collect(
            k.execute("process.env.PADDOCK_X = 'y'", true)
                .await
                .expect("run"),
        )
        .await;
        assert!(outs.is_empty(), "silent: {outs:?}");

        let outs = k.execute("while (true) {}", false).await.expect("run");
        tokio::time::sleep(Duration::from_millis(300)).await;
        k.interrupt().expect("interrupt");
        let outs = tokio::time::timeout(Duration::from_secs(10), collect(outs))
            .await
            .expect("ends after the interrupt");
        assert!(error(&outs).is_some(), "{outs:?}");
        let outs = collect(
            k.execute("process.env.PADDOCK_X", false)
                .await
                .expect("run"),
        )
        .await;
        assert_eq!(result(&outs).as_deref(), Some("'y'"), "alive, state kept");
        drop(k);
    }
}
