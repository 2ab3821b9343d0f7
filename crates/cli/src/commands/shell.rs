//! `paddock sandbox shell <id>`: an interactive terminal in a sandbox. This module owns the local
//! side of the session: the local terminal's raw mode (restored by a guard on every exit path:
//! return, error, panic, and the termination signals it catches), its size and size changes
//! (SIGWINCH → `Update`), keystrokes → `SendInput` (batched, one request in flight at a time, in
//! order), PTY output → stdout, and the exit code of the remote process. Without a terminal on
//! stdin it runs in pipe mode: no raw mode, stdin's bytes are typed into the PTY and its end is
//! typed as Ctrl-D, a terminal's end of input (which an interactive bash honours only at an
//! empty prompt: scripts piped into the shell should end with `exit`).
//!
//! On the wire it sends what the Python SDK's `sandbox.pty.create` / `send_stdin` / `resize` /
//! `kill` send (spec 3.4), through [`Envd`], the envd client `exec` uses as well. The process
//! gets no deadline; when this CLI ends for any other reason than the process's own end (a
//! signal, a broken connection), it kills the process, as a hang-up would.

use std::io::{IsTerminal, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use anyhow::{anyhow, Context};
use rustix::termios::{self, OptionalActions, Termios, Winsize};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use super::envd::{data_bytes, end_code, Envd, RpcError, START};

/// Unary RPC typing bytes into the process's terminal.
const SEND_INPUT: &str = paddock_envd_proto::rpc::PROCESS_SEND_INPUT;
/// Unary RPC resizing the process's terminal.
const UPDATE: &str = paddock_envd_proto::rpc::PROCESS_UPDATE;
/// Unary RPC signalling the process.
const SEND_SIGNAL: &str = paddock_envd_proto::rpc::PROCESS_SEND_SIGNAL;
/// Most bytes read from stdin at once.
const READ_CHUNK: usize = 16 * 1024;
/// Most bytes sent in one `SendInput` when queued keystrokes are batched.
const MAX_BATCH: usize = 64 * 1024;
/// Chunks of stdin waiting for `SendInput` before the reader blocks (backpressure for pipes).
const INPUT_QUEUE: usize = 16;
/// Ctrl-D: typed when stdin ends, as a terminal's end of input.
const EOT: u8 = 0x04;
/// Terminal size when no local terminal tells one.
const DEFAULT_SIZE: PtySize = PtySize { cols: 80, rows: 24 };
/// How long the process may take to report its end once envd refused input because it is gone.
const END_GRACE: Duration = Duration::from_secs(5);
/// Deadline of the kill sent when the session ends without the process's end.
const KILL_TIMEOUT: Duration = Duration::from_secs(3);

/// What `paddock sandbox shell` runs and as whom.
#[derive(Debug, Clone, Default)]
pub struct ShellOptions {
    /// User to run as; `None` sends no user (envd's default user), as the SDK does.
    pub user: Option<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Command line run by `bash -l -c` instead of the login shell; empty for the shell.
    pub command: Vec<String>,
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PtySize {
    cols: u16,
    rows: u16,
}

impl PtySize {
    /// The size a `TIOCGWINSZ` reported; `None` for a terminal that does not know its size.
    fn from_winsize(ws: &Winsize) -> Option<Self> {
        (ws.ws_col > 0 && ws.ws_row > 0).then_some(PtySize {
            cols: ws.ws_col,
            rows: ws.ws_row,
        })
    }

    /// The `PTY` message (`{"size": {"cols", "rows"}}`).
    fn pty(self) -> Value {
        json!({ "size": { "cols": self.cols, "rows": self.rows } })
    }
}

/// The size of the local terminal: that of the first of stdin, stdout and stderr that is one.
fn local_size() -> Option<PtySize> {
    let size = |fd: BorrowedFd<'_>| {
        termios::tcgetwinsize(fd)
            .ok()
            .and_then(|ws| PtySize::from_winsize(&ws))
    };
    size(std::io::stdin().as_fd())
        .or_else(|| size(std::io::stdout().as_fd()))
        .or_else(|| size(std::io::stderr().as_fd()))
}

/// A terminal in raw mode (no echo, no line editing, no signals from keys, no output
/// processing: Ctrl-C and friends are bytes for the remote terminal). Dropping it restores the
/// modes it found, which happens on every way out of [`run`], unwinding panics included.
struct RawMode<F: AsFd> {
    fd: F,
    saved: Termios,
}

impl<F: AsFd> RawMode<F> {
    fn enter(fd: F) -> std::io::Result<Self> {
        let saved = termios::tcgetattr(&fd)?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(&fd, OptionalActions::Now, &raw)?;
        Ok(RawMode { fd, saved })
    }
}

impl<F: AsFd> Drop for RawMode<F> {
    fn drop(&mut self) {
        // Nothing better to do on failure: the terminal is gone or no longer ours.
        let _ = termios::tcsetattr(&self.fd, OptionalActions::Now, &self.saved);
    }
}

/// The `StartRequest` of the session: the SDK's PTY request (`/bin/bash -i -l`, or the command
/// under `bash -l -c`), `TERM` from the local terminal (else `xterm-256color`), UTF-8 locale.
fn start_request(options: &ShellOptions, size: PtySize, term: Option<String>) -> Value {
    let args: Vec<String> = if options.command.is_empty() {
        vec!["-i".into(), "-l".into()]
    } else {
        vec!["-l".into(), "-c".into(), options.command.join(" ")]
    };
    let term = term
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "xterm-256color".into());
    let mut process = json!({
        "cmd": "/bin/bash",
        "args": args,
        "envs": { "TERM": term, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8" },
    });
    if let Some(cwd) = &options.cwd {
        process["cwd"] = json!(cwd);
    }
    json!({ "process": process, "pty": size.pty() })
}

/// `SendInputRequest` typing `bytes` into the terminal of `pid`.
fn input_request(pid: u32, bytes: &[u8]) -> Value {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    json!({ "process": { "pid": pid }, "input": { "pty": b64 } })
}

/// `UpdateRequest` resizing the terminal of `pid`.
fn resize_request(pid: u32, size: PtySize) -> Value {
    json!({ "process": { "pid": pid }, "pty": size.pty() })
}

/// Reads `reader` on a plain thread and queues what it reads, then Ctrl-D at its end. A thread
/// of its own because a blocking read cannot be cancelled: one in the runtime's blocking pool
/// would hold up the exit; this one simply dies with the process.
fn spawn_reader<R: Read + Send + 'static>(
    mut reader: R,
    tx: mpsc::Sender<Vec<u8>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("shell-stdin".into())
        .spawn(move || {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                let chunk = match reader.read(&mut buf) {
                    Ok(0) => vec![EOT],
                    Ok(n) => buf[..n].to_vec(),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // A terminal that went away (EIO): its input ended.
                    Err(_) => vec![EOT],
                };
                let last = chunk == [EOT];
                if tx.blocking_send(chunk).is_err() || last {
                    return;
                }
            }
        })
        .map(drop)
}

/// Queued input, taken in order and batched: everything already waiting goes in one request.
struct InputQueue {
    rx: mpsc::Receiver<Vec<u8>>,
    carry: Option<Vec<u8>>,
}

impl InputQueue {
    fn new(rx: mpsc::Receiver<Vec<u8>>) -> Self {
        InputQueue { rx, carry: None }
    }

    /// The next batch: the oldest chunk and those queued behind it, up to [`MAX_BATCH`] bytes.
    /// `None` once the reader is done and everything was taken. Cancel-safe (the one await is
    /// the channel's cancel-safe `recv`).
    async fn next_batch(&mut self) -> Option<Vec<u8>> {
        let mut batch = match self.carry.take() {
            Some(chunk) => chunk,
            None => self.rx.recv().await?,
        };
        while batch.len() < MAX_BATCH {
            match self.rx.try_recv() {
                Ok(chunk) if batch.len() + chunk.len() <= MAX_BATCH => {
                    batch.extend_from_slice(&chunk)
                }
                Ok(chunk) => {
                    self.carry = Some(chunk);
                    break;
                }
                Err(_) => break,
            }
        }
        Some(batch)
    }
}

/// The next SIGWINCH, or never without a terminal to watch.
async fn next_resize(winch: &mut Option<Signal>) -> Option<()> {
    match winch {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// Forwards keystrokes and size changes to the terminal of `pid`, one request at a time and in
/// the order they happened (a pending resize goes first). Ends `Ok` when there is nothing left
/// to forward, `Err` at the first request envd refuses.
async fn forward_input(
    envd: Envd,
    pid: u32,
    mut queue: InputQueue,
    mut winch: Option<Signal>,
    mut size: PtySize,
) -> Result<(), RpcError> {
    let mut input_open = true;
    loop {
        tokio::select! {
            biased;
            Some(()) = next_resize(&mut winch), if winch.is_some() => {
                if let Some(new) = local_size().filter(|new| *new != size) {
                    envd.unary(UPDATE, &resize_request(pid, new)).await?;
                    size = new;
                }
            }
            batch = queue.next_batch(), if input_open => match batch {
                Some(bytes) => {
                    envd.unary(SEND_INPUT, &input_request(pid, &bytes)).await?;
                }
                None => input_open = false,
            },
            else => return Ok(()),
        }
    }
}

/// Whether envd refused input because the process is gone or going (its end is on its way).
fn process_gone(e: &RpcError) -> bool {
    matches!(e.code(), Some("not_found" | "internal"))
}

/// The termination signals the session catches, so that none of them leaves the terminal raw
/// or the remote process orphaned.
struct TermSignals {
    hangup: Signal,
    interrupt: Signal,
    quit: Signal,
    terminate: Signal,
}

impl TermSignals {
    fn new() -> std::io::Result<Self> {
        Ok(TermSignals {
            hangup: signal(SignalKind::hangup())?,
            interrupt: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The number of the next caught signal.
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.hangup.recv() => SignalKind::hangup().as_raw_value(),
            _ = self.interrupt.recv() => SignalKind::interrupt().as_raw_value(),
            _ = self.quit.recv() => SignalKind::quit().as_raw_value(),
            _ = self.terminate.recv() => SignalKind::terminate().as_raw_value(),
        }
    }
}

/// How a session ended.
enum Outcome {
    /// The remote process ended with this exit code.
    Exited(u8),
    /// This CLI got a termination signal.
    Signalled(i32),
    /// Something broke.
    Failed(anyhow::Error),
}

/// Runs the session; `Ok(code)` is the remote process's exit code (128 + n when this CLI was
/// ended by signal n).
pub async fn run(envd: Envd, options: &ShellOptions) -> anyhow::Result<u8> {
    let stdin_tty = std::io::stdin().is_terminal();
    let size = local_size();
    // Caught before raw mode starts, so that no signal ends the process with the terminal raw.
    let mut signals = TermSignals::new().context("catching termination signals")?;
    let winch = match size {
        Some(_) => Some(signal(SignalKind::window_change()).context("watching SIGWINCH")?),
        None => None,
    };
    let size = size.unwrap_or(DEFAULT_SIZE);
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    let _raw = match stdin_tty {
        true => Some(RawMode::enter(std::io::stdin()).context("putting the terminal in raw mode")?),
        false => None,
    };
    // Reading starts now so that typeahead during the start is kept, in order.
    spawn_reader(std::io::stdin(), tx).context("starting the stdin reader")?;

    let request = start_request(options, size, std::env::var("TERM").ok());
    let started = async {
        let mut stream = envd
            .server_stream(START, options.user.as_deref(), &request)
            .await?;
        let first = stream.next_message().await?;
        let pid = first
            .as_ref()
            .and_then(|m| m.pointer("/event/start/pid"))
            .and_then(Value::as_u64)
            .and_then(|pid| u32::try_from(pid).ok())
            .ok_or_else(|| RpcError::Protocol(format!("expected a start event, got {first:?}")))?;
        Ok::<_, RpcError>((stream, pid))
    };
    let (mut stream, pid) = tokio::select! {
        started = started => started.context("starting the shell")?,
        signo = signals.recv() => return Ok(128u8.saturating_add(signo as u8)),
    };

    let worker = tokio::spawn(forward_input(
        envd.clone(),
        pid,
        InputQueue::new(rx),
        winch,
        size,
    ));
    let outcome = pump(&mut stream, &mut signals, worker).await;
    match outcome {
        Outcome::Exited(code) => Ok(code),
        Outcome::Signalled(signo) => {
            kill(&envd, pid).await;
            Ok(128u8.saturating_add(signo as u8))
        }
        Outcome::Failed(e) => {
            kill(&envd, pid).await;
            Err(e)
        }
    }
}

/// Copies the process's output to stdout until it ends, a termination signal arrives, or input
/// fails for another reason than the process being gone.
async fn pump(
    stream: &mut super::envd::MessageStream,
    signals: &mut TermSignals,
    mut worker: tokio::task::JoinHandle<Result<(), RpcError>>,
) -> Outcome {
    let mut out = tokio::io::stdout();
    let mut worker_live = true;
    // Set when envd refused input because the process is gone: its end must follow soon.
    let mut gone: Option<(RpcError, tokio::time::Instant)> = None;
    let outcome = loop {
        tokio::select! {
            message = stream.next_message() => match message {
                Ok(Some(message)) => match output(&message, &mut out).await {
                    Ok(Some(code)) => break Outcome::Exited(code),
                    Ok(None) => {}
                    Err(e) => break Outcome::Failed(e),
                },
                Ok(None) => {
                    let e = anyhow!("the shell's stream ended without its exit status");
                    break Outcome::Failed(match gone.take() {
                        Some((input, _)) => e.context(format!("sending input: {input}")),
                        None => e,
                    });
                }
                Err(e) => break Outcome::Failed(anyhow::Error::new(e).context("reading the shell's output")),
            },
            signo = signals.recv() => break Outcome::Signalled(signo),
            joined = &mut worker, if worker_live => {
                worker_live = false;
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if process_gone(&e) => {
                        gone = Some((e, tokio::time::Instant::now() + END_GRACE));
                    }
                    Ok(Err(e)) => break Outcome::Failed(anyhow::Error::new(e).context("sending input")),
                    Err(e) => break Outcome::Failed(anyhow!("the input task failed: {e}")),
                }
            }
            () = grace(gone.as_ref().map(|(_, at)| *at)) => {
                let (e, _) = gone.take().expect("the grace branch runs only with a deadline");
                break Outcome::Failed(anyhow::Error::new(e).context("sending input"));
            }
        }
    };
    worker.abort();
    outcome
}

/// Completes at `deadline`, or never without one.
async fn grace(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes the terminal output of one `StartResponse` to `out`; `Some(code)` at the end event.
async fn output(
    message: &Value,
    out: &mut (impl AsyncWriteExt + Unpin),
) -> anyhow::Result<Option<u8>> {
    let Some(event) = message.get("event") else {
        return Ok(None);
    };
    if let Some(data) = event.get("data") {
        for key in ["pty", "stdout", "stderr"] {
            if let Some(bytes) = data_bytes(data, key)? {
                out.write_all(&bytes).await.context("writing to stdout")?;
            }
        }
        out.flush().await.context("writing to stdout")?;
    }
    Ok(event.get("end").map(end_code))
}

/// Kills the remote process (best effort, bounded): a session that ends without the process's
/// own end must not leave a shell running with nobody attached.
async fn kill(envd: &Envd, pid: u32) {
    let request = json!({ "process": { "pid": pid }, "signal": "SIGNAL_SIGKILL" });
    let _ = tokio::time::timeout(KILL_TIMEOUT, envd.unary(SEND_SIGNAL, &request)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_request_is_the_sdks_pty_request() {
        let size = PtySize {
            cols: 101,
            rows: 33,
        };
        let req = start_request(&ShellOptions::default(), size, None);
        assert_eq!(
            req,
            json!({
                "process": {
                    "cmd": "/bin/bash",
                    "args": ["-i", "-l"],
                    "envs": {"TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
                },
                "pty": {"size": {"cols": 101, "rows": 33}},
            })
        );
        assert!(
            req.get("stdin").is_none(),
            "the SDK sends no stdin key with a pty"
        );

        let options = ShellOptions {
            user: Some("root".into()),
            cwd: Some("/tmp".into()),
            command: vec!["top".into(), "-d".into(), "1".into()],
        };
        let req = start_request(&options, size, Some("screen".into()));
        assert_eq!(req["process"]["args"], json!(["-l", "-c", "top -d 1"]));
        assert_eq!(req["process"]["cwd"], "/tmp");
        assert_eq!(req["process"]["envs"]["TERM"], "screen");
        let req = start_request(&options, size, Some(String::new()));
        assert_eq!(req["process"]["envs"]["TERM"], "xterm-256color");
    }

    #[test]
    fn input_and_resize_requests_address_the_pid() {
        assert_eq!(
            input_request(7, b"ls\r"),
            json!({"process": {"pid": 7}, "input": {"pty": "bHMN"}})
        );
        assert_eq!(
            resize_request(7, PtySize { cols: 80, rows: 24 }),
            json!({"process": {"pid": 7}, "pty": {"size": {"cols": 80, "rows": 24}}})
        );
    }

    #[test]
    fn unknown_sizes_are_none() {
        let ws = |ws_row, ws_col| Winsize {
            ws_row,
            ws_col,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        assert_eq!(
            PtySize::from_winsize(&ws(24, 80)),
            Some(PtySize { cols: 80, rows: 24 })
        );
        assert_eq!(PtySize::from_winsize(&ws(0, 0)), None);
        assert_eq!(PtySize::from_winsize(&ws(24, 0)), None);
    }

    #[tokio::test]
    async fn queued_input_is_batched_in_order_and_bounded() {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let mut queue = InputQueue::new(rx);
        tx.send(b"ab".to_vec()).await.expect("send");
        tx.send(b"c".to_vec()).await.expect("send");
        assert_eq!(queue.next_batch().await.as_deref(), Some(&b"abc"[..]));

        let big = vec![b'x'; MAX_BATCH - 1];
        tx.send(big.clone()).await.expect("send");
        tx.send(b"yz".to_vec()).await.expect("send");
        tx.send(b"!".to_vec()).await.expect("send");
        assert_eq!(queue.next_batch().await, Some(big));
        assert_eq!(queue.next_batch().await.as_deref(), Some(&b"yz!"[..]));
        drop(tx);
        assert_eq!(queue.next_batch().await, None);
    }

    #[tokio::test]
    async fn the_reader_forwards_everything_then_ctrl_d() {
        let (tx, mut rx) = mpsc::channel(INPUT_QUEUE);
        let input = std::io::Cursor::new(b"echo piped\nexit\n".to_vec());
        spawn_reader(input, tx).expect("spawn");
        let mut got = Vec::new();
        while let Some(chunk) = rx.recv().await {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, b"echo piped\nexit\n\x04");
    }

    #[test]
    fn raw_mode_is_restored_on_drop() {
        use rustix::termios::LocalModes;
        let master =
            rustix::pty::openpt(rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY)
                .expect("openpt");
        rustix::pty::grantpt(&master).expect("grantpt");
        rustix::pty::unlockpt(&master).expect("unlockpt");
        let name = rustix::pty::ptsname(&master, Vec::new()).expect("ptsname");
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().expect("utf-8 name"))
            .expect("open the pty's slave");
        let before = termios::tcgetattr(&slave).expect("tcgetattr");
        assert!(before
            .local_modes
            .contains(LocalModes::ICANON | LocalModes::ECHO));
        {
            let _raw = RawMode::enter(&slave).expect("raw mode");
            let raw = termios::tcgetattr(&slave).expect("tcgetattr");
            assert!(!raw
                .local_modes
                .intersects(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG));
        }
        let after = termios::tcgetattr(&slave).expect("tcgetattr");
        assert_eq!(after.local_modes, before.local_modes);
        assert_eq!(after.input_modes, before.input_modes);
        assert_eq!(after.output_modes, before.output_modes);
    }

    #[test]
    fn refused_input_for_a_gone_process_waits_for_its_end() {
        let connect = |code: &str| RpcError::Connect {
            code: code.into(),
            message: "m".into(),
        };
        assert!(process_gone(&connect("not_found")));
        assert!(process_gone(&connect("internal")));
        assert!(!process_gone(&connect("unauthenticated")));
        assert!(!process_gone(&RpcError::NotRunning("iabc".into())));
    }

    #[tokio::test]
    async fn queued_keystrokes_go_out_in_one_send_input_in_order() {
        use crate::commands::envd::mock;
        let (url, log) = mock::serve(mock::Answer {
            status: 200,
            content_type: "application/json",
            chunks: vec![b"{}".to_vec()],
        })
        .await;
        let envd = Envd::new(reqwest::Client::new(), &url, "iabc", Some("tok".into()));
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        for chunk in [&b"ec"[..], b"ho", b" 1\r"] {
            tx.send(chunk.to_vec()).await.expect("send");
        }
        drop(tx);
        forward_input(envd, 42, InputQueue::new(rx), None, DEFAULT_SIZE)
            .await
            .expect("forwarded");
        let log = log.lock().expect("log");
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!(log[0].line, "POST /process.Process/SendInput HTTP/1.1");
        assert_eq!(log[0].header("x-access-token"), Some("tok"));
        let body: Value = serde_json::from_slice(&log[0].body).expect("json");
        assert_eq!(body, input_request(42, b"echo 1\r"));
    }

    #[tokio::test]
    async fn refused_input_stops_the_forwarding_with_the_reason() {
        use crate::commands::envd::mock;
        let (url, log) = mock::serve(mock::Answer {
            status: 500,
            content_type: "application/json",
            chunks: vec![
                br#"{"code":"internal","message":"writing to the terminal: EIO"}"#.to_vec(),
            ],
        })
        .await;
        let envd = Envd::new(reqwest::Client::new(), &url, "iabc", None);
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        tx.send(b"x".to_vec()).await.expect("send");
        let err = forward_input(envd, 42, InputQueue::new(rx), None, DEFAULT_SIZE)
            .await
            .expect_err("refused");
        assert!(process_gone(&err), "{err}");
        assert_eq!(log.lock().expect("log").len(), 1);
        drop(tx);
    }

    #[tokio::test]
    async fn output_goes_out_and_the_end_gives_the_code() {
        let mut out = Vec::new();
        let data = json!({"event": {"data": {"pty": "aGkNCg=="}}});
        assert_eq!(output(&data, &mut out).await.expect("data"), None);
        assert_eq!(out, b"hi\r\n");
        let keepalive = json!({"event": {"keepalive": {}}});
        assert_eq!(output(&keepalive, &mut out).await.expect("keepalive"), None);
        let end =
            json!({"event": {"end": {"exitCode": 3, "exited": true, "status": "exit status 3"}}});
        assert_eq!(output(&end, &mut out).await.expect("end"), Some(3));
        let end = json!({"event": {"end": {"exited": true, "status": "exit status 0"}}});
        assert_eq!(output(&end, &mut out).await.expect("end"), Some(0));
        assert!(output(&json!({"event": {"data": {"pty": "!!"}}}), &mut out)
            .await
            .is_err());
    }
}
