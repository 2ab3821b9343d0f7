//! One process started by envd: its identity, input side (stdin pipe or terminal), the fan-out of
//! its events to attached streams, and its retained end. Lifecycle: created by `spawn.rs`,
//! output pumped by [`pump`] until both outputs close and the reaper reports the exit, then
//! [`Process::finish`] stores the end event, which `Connect` replays for 30 s.

use std::sync::{Arc, Mutex};

use nix::sys::signal::{killpg, Signal as NixSignal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use super::messages::{Base64, DataEvent, EndEvent, ProcessConfig, ProcessEvent, PtySize};
use super::pty::{PtyMaster, PTY_CHUNK};
use super::reaper::ExitStatus;
use crate::connect::{Code, ConnectError};

/// Largest chunk read from a stdout/stderr pipe (spec: ≤ 32 KiB).
pub const PIPE_CHUNK: usize = 32 * 1024;

/// Queue depth of one attached stream; a slow client back-pressures the process.
const SUBSCRIBER_QUEUE: usize = 32;

/// The input side of a process.
pub enum Input {
    /// `stdin: false`: stdin is `/dev/null`.
    Disabled,
    /// A stdin pipe (`None` once closed).
    Pipe(tokio::sync::Mutex<Option<pipe::Sender>>),
    /// A terminal.
    Pty(Arc<PtyMaster>),
}

/// The output side, consumed by [`pump`].
pub enum Output {
    /// stdout and stderr pipes.
    Pipes(pipe::Receiver, pipe::Receiver),
    /// The terminal master.
    Pty(Arc<PtyMaster>),
}

#[derive(Default)]
struct Fanout {
    subscribers: Vec<mpsc::Sender<ProcessEvent>>,
    end: Option<EndEvent>,
}

/// What an attaching stream gets.
pub enum Subscription {
    /// Live events; the channel closes after the end event.
    Live(mpsc::Receiver<ProcessEvent>),
    /// The process already ended.
    Ended(EndEvent),
}

/// A process started by envd.
pub struct Process {
    /// Process id (also its process group id).
    pub pid: u32,
    /// Optional tag.
    pub tag: Option<String>,
    /// The configuration as requested.
    pub config: ProcessConfig,
    /// Input side.
    pub input: Input,
    fanout: Mutex<Fanout>,
    ended: tokio::sync::watch::Sender<bool>,
}

impl Process {
    /// A new, running process.
    pub fn new(pid: u32, tag: Option<String>, config: ProcessConfig, input: Input) -> Self {
        Process {
            pid,
            tag,
            config,
            input,
            fanout: Mutex::new(Fanout::default()),
            ended: tokio::sync::watch::Sender::new(false),
        }
    }

    fn fanout(&self) -> std::sync::MutexGuard<'_, Fanout> {
        self.fanout.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a stream.
    pub fn subscribe(&self) -> Subscription {
        let mut f = self.fanout();
        if let Some(end) = &f.end {
            return Subscription::Ended(end.clone());
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        f.subscribers.push(tx);
        Subscription::Live(rx)
    }

    /// The end event, once the process has ended.
    pub fn end(&self) -> Option<EndEvent> {
        self.fanout().end.clone()
    }

    /// Resolves once the process has ended (at once if it already has).
    pub async fn wait_ended(&self) {
        let mut rx = self.ended.subscribe();
        let _ = rx.wait_for(|ended| *ended).await;
    }

    /// Whether the process is still running (or its output still open).
    pub fn is_running(&self) -> bool {
        self.fanout().end.is_none()
    }

    /// Delivers an event to every attached stream, dropping streams that went away.
    /// Without subscribers the event is discarded (output is produced only while attached).
    async fn publish(&self, event: ProcessEvent) {
        let subs: Vec<_> = self.fanout().subscribers.clone();
        if subs.is_empty() {
            return;
        }
        let mut gone = Vec::new();
        for tx in &subs {
            if tx.send(event.clone()).await.is_err() {
                gone.push(tx.clone());
            }
        }
        if !gone.is_empty() {
            self.fanout()
                .subscribers
                .retain(|s| !gone.iter().any(|g| g.same_channel(s)));
        }
    }

    /// Stores the end event and hands it to every attached stream, closing their channels.
    pub async fn finish(&self, end: EndEvent) {
        let subs = {
            let mut f = self.fanout();
            f.end = Some(end.clone());
            std::mem::take(&mut f.subscribers)
        };
        self.ended.send_replace(true);
        for tx in subs {
            let _ = tx.send(ProcessEvent::End(end.clone())).await;
        }
    }

    /// Sends a signal to the process group, unless the process already ended.
    pub fn signal_group(&self, signal: NixSignal) -> Result<(), ConnectError> {
        if !self.is_running() {
            return Ok(());
        }
        let group = Pid::from_raw(self.pid as i32);
        // SIGKILL is repeated until the group is empty: members forking while the first signal
        // is delivered (a fork bomb) can otherwise leave survivors that keep the sandbox at its
        // pids limit. The group id cannot be reused while any member is alive.
        let rounds = if signal == NixSignal::SIGKILL {
            KILL_ROUNDS
        } else {
            1
        };
        for _ in 0..rounds {
            match killpg(group, signal) {
                Ok(()) => std::thread::yield_now(),
                Err(nix::errno::Errno::ESRCH) => return Ok(()),
                Err(e) => {
                    return Err(ConnectError::internal(format!(
                        "sending {signal} to process {}: {e}",
                        self.pid
                    )))
                }
            }
        }
        Ok(())
    }

    /// Writes to stdin (`pty == false`) or to the terminal (`pty == true`).
    pub async fn write_input(&self, data: &[u8], pty: bool) -> Result<(), ConnectError> {
        match (&self.input, pty) {
            (Input::Pipe(stdin), false) => {
                let mut guard = stdin.lock().await;
                let Some(w) = guard.as_mut() else {
                    return Err(ConnectError::internal(format!(
                        "stdin of process {} is closed",
                        self.pid
                    )));
                };
                tokio::io::AsyncWriteExt::write_all(w, data)
                    .await
                    .map_err(|e| {
                        ConnectError::internal(format!(
                            "writing to stdin of process {}: {e}",
                            self.pid
                        ))
                    })
            }
            (Input::Pty(master), true) => master.write_all(data).await.map_err(|e| {
                ConnectError::internal(format!(
                    "writing to the terminal of process {}: {e}",
                    self.pid
                ))
            }),
            (Input::Pty(_), false) => Err(ConnectError::internal(format!(
                "process {} runs in a terminal: send pty input",
                self.pid
            ))),
            (Input::Pipe(_), true) => Err(ConnectError::internal(format!(
                "process {} has no terminal: send stdin input",
                self.pid
            ))),
            (Input::Disabled, _) => Err(ConnectError::internal(format!(
                "stdin of process {} is disabled",
                self.pid
            ))),
        }
    }

    /// Closes the stdin pipe (idempotent).
    pub async fn close_stdin(&self) -> Result<(), ConnectError> {
        match &self.input {
            Input::Pipe(stdin) => {
                stdin.lock().await.take();
                Ok(())
            }
            Input::Disabled => Ok(()),
            Input::Pty(_) => Err(ConnectError::new(
                Code::Unknown,
                format!(
                    "process {} runs in a terminal: stdin cannot be closed",
                    self.pid
                ),
            )),
        }
    }

    /// Resizes the terminal.
    pub fn resize(&self, size: PtySize) -> Result<(), ConnectError> {
        match &self.input {
            Input::Pty(master) => master.resize(size).map_err(|e| {
                ConnectError::internal(format!(
                    "resizing the terminal of process {}: {e}",
                    self.pid
                ))
            }),
            _ => Err(ConnectError::internal(format!(
                "process {} has no terminal",
                self.pid
            ))),
        }
    }
}

/// Most times SIGKILL is sent to a process group before giving up on stragglers.
const KILL_ROUNDS: usize = 1000;

/// The end event for an exit status, with Go's `ProcessState.String()` texts.
pub fn end_event(status: ExitStatus) -> EndEvent {
    match status {
        ExitStatus::Exited(0) => EndEvent {
            exited: true,
            status: "exit status 0".into(),
            ..Default::default()
        },
        ExitStatus::Exited(code) => {
            let text = format!("exit status {code}");
            EndEvent {
                exit_code: code,
                exited: true,
                status: text.clone(),
                error: Some(text),
            }
        }
        ExitStatus::Signaled(sig, core) => {
            let mut text = format!("signal: {}", signal_text(sig));
            if core {
                text.push_str(" (core dumped)");
            }
            EndEvent {
                exit_code: -1,
                exited: false,
                status: text.clone(),
                error: Some(text),
            }
        }
    }
}

/// Go's names of Linux signals (`syscall.Signal.String()`).
fn signal_text(sig: i32) -> String {
    let s = match sig {
        1 => "hangup",
        2 => "interrupt",
        3 => "quit",
        4 => "illegal instruction",
        5 => "trace/breakpoint trap",
        6 => "aborted",
        7 => "bus error",
        8 => "floating point exception",
        9 => "killed",
        10 => "user defined signal 1",
        11 => "segmentation fault",
        12 => "user defined signal 2",
        13 => "broken pipe",
        14 => "alarm clock",
        15 => "terminated",
        16 => "stack fault",
        17 => "child exited",
        18 => "continued",
        19 => "stopped (signal)",
        20 => "stopped",
        21 => "stopped (tty input)",
        22 => "stopped (tty output)",
        23 => "urgent I/O condition",
        24 => "CPU time limit exceeded",
        25 => "file size limit exceeded",
        26 => "virtual timer expired",
        27 => "profiling timer expired",
        28 => "window changed",
        29 => "I/O possible",
        30 => "power failure",
        31 => "bad system call",
        n => return format!("signal {n}"),
    };
    s.to_string()
}

/// Copies the process's output to attached streams until every output is closed, waits for the
/// exit status, then publishes the end event. Runs as its own task, independent of any request.
pub async fn pump(process: Arc<Process>, output: Output, exit: oneshot::Receiver<ExitStatus>) {
    let oom_before = super::oom::kills();
    match output {
        Output::Pipes(mut stdout, mut stderr) => {
            let (mut out_open, mut err_open) = (true, true);
            let mut out_buf = vec![0u8; PIPE_CHUNK];
            let mut err_buf = vec![0u8; PIPE_CHUNK];
            while out_open || err_open {
                tokio::select! {
                    r = stdout.read(&mut out_buf), if out_open => match r {
                        Ok(0) | Err(_) => out_open = false,
                        Ok(n) => {
                            let data = Base64(out_buf[..n].to_vec());
                            process.publish(ProcessEvent::Data(DataEvent::Stdout(data))).await;
                        }
                    },
                    r = stderr.read(&mut err_buf), if err_open => match r {
                        Ok(0) | Err(_) => err_open = false,
                        Ok(n) => {
                            let data = Base64(err_buf[..n].to_vec());
                            process.publish(ProcessEvent::Data(DataEvent::Stderr(data))).await;
                        }
                    },
                }
            }
        }
        Output::Pty(master) => {
            let mut buf = vec![0u8; PTY_CHUNK];
            loop {
                match master.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let data = Base64(buf[..n].to_vec());
                        process
                            .publish(ProcessEvent::Data(DataEvent::Pty(data)))
                            .await;
                    }
                }
            }
        }
    }
    let end = match exit.await {
        Ok(status) => {
            let mut end = end_event(status);
            let oom_killed = matches!(status, ExitStatus::Signaled(sig, _) if sig == libc::SIGKILL)
                && super::oom::kills()
                    .zip(oom_before)
                    .is_some_and(|(now, before)| now > before);
            if oom_killed {
                end.error = Some(format!("{}: {}", end.status, super::oom::OOM_NOTE));
            }
            end
        }
        Err(_) => EndEvent {
            exit_code: -1,
            exited: false,
            status: "unknown".into(),
            error: Some("the exit status of the process was lost".into()),
        },
    };
    log_ended(&process, &end);
    process.finish(end).await;
}

/// The `process ended` record of the sandbox logs (see `crate::logging`): `info` for exit
/// status 0, `warn` for another exit status or a signal, `error` when OOM-killed.
fn log_ended(process: &Process, end: &EndEvent) {
    let oom = end
        .error
        .as_deref()
        .is_some_and(|e| e.contains(super::oom::OOM_NOTE));
    let detail = end.error.as_deref().unwrap_or(&end.status);
    macro_rules! ended {
        ($level:expr) => {
            tracing::event!(
                $level,
                event = "process_end",
                pid = process.pid,
                cmd = %process.config.cmd,
                tag = %process.tag.as_deref().unwrap_or(""),
                exit_code = end.exit_code,
                exited = end.exited,
                status = %end.status,
                oom_killed = oom,
                "process ended: {} ({detail})",
                process.config.cmd
            )
        };
    }
    if oom {
        ended!(tracing::Level::ERROR);
    } else if end.exited && end.exit_code == 0 {
        ended!(tracing::Level::INFO);
    } else {
        ended!(tracing::Level::WARN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_events_match_go_texts() {
        let e = end_event(ExitStatus::Exited(0));
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str(), e.error),
            (0, true, "exit status 0", None)
        );
        let e = end_event(ExitStatus::Exited(3));
        assert_eq!(e.error.as_deref(), Some("exit status 3"));
        assert_eq!(e.exit_code, 3);
        let e = end_event(ExitStatus::Signaled(9, false));
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str()),
            (-1, false, "signal: killed")
        );
        assert_eq!(
            end_event(ExitStatus::Signaled(11, true)).status,
            "signal: segmentation fault (core dumped)"
        );
        assert_eq!(
            end_event(ExitStatus::Signaled(15, false)).status,
            "signal: terminated"
        );
    }

    #[tokio::test]
    async fn late_subscribers_get_the_retained_end() {
        let p = Process::new(1, None, ProcessConfig::default(), Input::Disabled);
        let Subscription::Live(mut rx) = p.subscribe() else {
            panic!("should be live")
        };
        p.publish(ProcessEvent::Data(DataEvent::Stdout(Base64(b"a".to_vec()))))
            .await;
        p.finish(end_event(ExitStatus::Exited(0))).await;
        assert!(matches!(rx.recv().await, Some(ProcessEvent::Data(_))));
        assert!(matches!(rx.recv().await, Some(ProcessEvent::End(_))));
        assert!(rx.recv().await.is_none());
        assert!(matches!(p.subscribe(), Subscription::Ended(_)));
        assert!(!p.is_running());
        tokio::time::timeout(std::time::Duration::from_secs(1), p.wait_ended())
            .await
            .expect("ended");
    }

    #[tokio::test]
    async fn disabled_stdin_and_wrong_input_kind_are_internal() {
        let p = Process::new(1, None, ProcessConfig::default(), Input::Disabled);
        assert_eq!(
            p.write_input(b"x", false).await.map_err(|e| e.code),
            Err(Code::Internal)
        );
        assert!(p.close_stdin().await.is_ok());
        assert_eq!(
            p.resize(PtySize { cols: 1, rows: 1 }).map_err(|e| e.code),
            Err(Code::Internal)
        );
    }
}
