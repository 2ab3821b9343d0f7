//! Spawning a process for `Start` (spec 3.4 steps 1–3): environment, working directory, user
//! switch, stdin mode, pipes or a terminal, and a new process group (or session, for terminals).
//! The child is forked by the [`spawner`] (already in the user cgroup, so no cgroup migration on
//! the request path); when the spawner cannot, by envd itself with `std::process::Command` and
//! `pre_exec` (never tokio's child handling, which would race the reaper), which moves it into
//! the user cgroup. Either way the child is envd's, registered with the [`Reaper`] while
//! forking, and sees the same environment, ids and limits. The child gets envd's
//! original open-files limit back. Blocking: call it from the blocking pool, inside the runtime
//! (the terminal master and the pipes are registered with tokio). If setting up a spawned child
//! fails, its process group is killed, so no untracked process is left running.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use paddock_envd_proto::DEFAULT_PATH;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::handle::{Input, Output, Process};
use super::messages::{ProcessConfig, PtySize};
use super::pty::{self, PtyMaster};
use super::reaper::{ExitStatus, Reaper};
use super::rlimit;
use super::spawner;
use crate::connect::ConnectError;
use crate::users::User;

/// `oom_score_adj` of every process envd starts (envd's own is -1000 or 0).
pub const CHILD_OOM_SCORE_ADJ: &[u8] = b"200";
/// `oom_score_adj` of a process started in the rescue cgroup: when the sandbox as a whole runs
/// out of memory, the kernel kills the bomb's processes (at [`CHILD_OOM_SCORE_ADJ`]) before the
/// one sent to end it, and that one before envd (-1000, or 0 where the node cannot lower it).
pub const RESCUE_OOM_SCORE_ADJ: &[u8] = b"100";

/// Everything needed to start one process, already resolved.
pub struct SpawnSpec {
    /// The requested configuration.
    pub config: ProcessConfig,
    /// Tag, if any.
    pub tag: Option<String>,
    /// The acting user.
    pub user: User,
    /// Working directory (must exist).
    pub cwd: PathBuf,
    /// Global environment (`EnvdState::global_env`).
    pub global_env: HashMap<String, String>,
    /// Terminal size when a PTY is requested.
    pub pty: Option<PtySize>,
    /// Whether stdin is a pipe (else `/dev/null`).
    pub stdin: bool,
}

/// A spawned process, before its output is pumped.
pub struct Spawned {
    /// The process handle.
    pub process: Arc<Process>,
    /// Its output side.
    pub output: Output,
    /// Resolves with its exit status.
    pub exit: oneshot::Receiver<ExitStatus>,
}

/// The environment of a process: PATH, the user's variables, global variables, request variables
/// (later ones win).
pub fn environment(
    user: &User,
    global: &HashMap<String, String>,
    request: &HashMap<String, String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), user.home.display().to_string()),
        ("USER".into(), user.name.clone()),
        ("LOGNAME".into(), user.name.clone()),
    ];
    if !user.shell.is_empty() {
        env.push(("SHELL".into(), user.shell.clone()));
    }
    let mut global: Vec<_> = global.iter().collect();
    global.sort();
    let mut request: Vec<_> = request.iter().collect();
    request.sort();
    for (k, v) in global.into_iter().chain(request) {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// Identity the child switches to in `pre_exec`.
#[derive(Clone)]
struct Identity {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

/// Starts the process. Errors are `invalid_argument` for spawn failures (bad command, missing
/// cwd, terminal allocation) and `internal` for pipe setup.
pub fn spawn(spec: SpawnSpec) -> Result<Spawned, ConnectError> {
    if !spec.cwd.is_dir() {
        return Err(ConnectError::invalid(format!(
            "cwd {:?} does not exist or is not a directory",
            spec.cwd.display().to_string()
        )));
    }
    let env = environment(&spec.user, &spec.global_env, &spec.config.envs);
    let mut cmd = Command::new(&spec.config.cmd);
    cmd.args(&spec.config.args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd);

    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let identity = (euid == 0 || spec.user.uid != euid).then(|| Identity {
        uid: spec.user.uid,
        gid: spec.user.gid,
        groups: spec.user.groups.clone(),
    });
    let use_pty = spec.pty.is_some();
    let nofile = rlimit::child_nofile();
    // When the user cgroup is at its pids or memory limit (a fork bomb), the child goes to the
    // rescue cgroup instead, forked here and moved (the spawner only forks into the user cgroup).
    let rescue = super::cgroup::rescue_target();
    // The usual way: the spawner forks the child straight into the user cgroup. The `Command`
    // below is the fallback when it cannot.
    let spawner_req = (rescue.is_none() && spawner::available())
        .then(|| spawner_request(&spec, env, identity.as_ref(), nofile))
        .flatten();
    // The OOM killer must pick a user's process, never envd (PID 1, whose death ends the
    // sandbox): envd runs with oom_score_adj -1000 where the node may set it, and its children
    // get CHILD_OOM_SCORE_ADJ, or RESCUE_OOM_SCORE_ADJ in the rescue cgroup (raising a score
    // needs no privilege).
    let oom_adj_path = c"/proc/self/oom_score_adj";
    let cgroup = rescue.unwrap_or(super::cgroup::fds());
    let oom_adj = if rescue.is_some() {
        RESCUE_OOM_SCORE_ADJ
    } else {
        CHILD_OOM_SCORE_ADJ
    };

    // SAFETY: the closure runs in the forked child before exec and only calls async-signal-safe
    // functions (write to the user or rescue cgroup's descriptors, open/write/close of a static C string path, setrlimit, setsid, setpgid, ioctl,
    // setgroups, setgid, setuid — plain system calls) on data prepared before the fork (the groups vector and the limit are moved in,
    // nothing is allocated in the child).
    unsafe {
        cmd.pre_exec(move || {
            // First, while the child still has envd's ids (v1 moves need matching ids).
            super::cgroup::join_in_child(cgroup);
            let fd = libc::open(oom_adj_path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                // Best effort: a failure leaves the inherited score.
                let _ = libc::write(fd, oom_adj.as_ptr().cast(), oom_adj.len());
                libc::close(fd);
            }
            if let Some(limit) = &nofile {
                if libc::setrlimit(libc::RLIMIT_NOFILE, limit) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if use_pty {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // stdin is the terminal's slave end: make it the controlling terminal.
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::setpgid(0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(id) = &identity {
                if libc::setgroups(id.groups.len(), id.groups.as_ptr()) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setgid(id.gid) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setuid(id.uid) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }

    let reaper = Reaper::global();
    if let Some(size) = spec.pty {
        let pair = pty::open(size)
            .map_err(|e| ConnectError::invalid(format!("allocating a terminal: {e}")))?;
        // Registered before the fork: once the child runs, nothing can fail any more.
        let master = Arc::new(
            PtyMaster::new(pair.master)
                .map_err(|e| ConnectError::internal(format!("registering the terminal: {e}")))?,
        );
        let (pid, exit) = reaper.spawn(|| {
            if let Some(req) = &spawner_req {
                let slave = pair.slave.as_fd();
                if let Some(pid) = via_spawner(req, [slave, slave, slave], &spec.config.cmd)? {
                    return Ok((pid, pid));
                }
            }
            let dup = |fd: &OwnedFd| {
                fd.try_clone()
                    .map_err(|e| ConnectError::internal(format!("duplicating the terminal: {e}")))
            };
            cmd.stdin(Stdio::from(dup(&pair.slave)?))
                .stdout(Stdio::from(dup(&pair.slave)?))
                .stderr(Stdio::from(pair.slave));
            let child = cmd.spawn().map_err(|e| spawn_error(&spec.config.cmd, e))?;
            // Drop our copies of the slave so the master sees EOF when the child's side closes.
            drop(cmd);
            Ok::<_, ConnectError>((child.id(), child.id()))
        })?;
        let process = Arc::new(Process::new(
            pid,
            spec.tag,
            spec.config,
            Input::Pty(master.clone()),
        ));
        return Ok(Spawned {
            process,
            output: Output::Pty(master),
            exit,
        });
    }

    let ((pid, io), exit) = reaper.spawn(|| {
        if let Some(req) = &spawner_req {
            let ends = ChildPipes::new(spec.stdin)?;
            if let Some(pid) = via_spawner(req, ends.child_fds(), &spec.config.cmd)? {
                // Our copies of the child's ends close here, so EOF reaches the parent's ends.
                return Ok((pid, (pid, ends.into_parent())));
            }
        }
        cmd.stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| spawn_error(&spec.config.cmd, e))?;
        let pid = child.id();
        let parent = ParentEnds {
            stdin: child.stdin.take().map(OwnedFd::from),
            stdout: child.stdout.take().map(OwnedFd::from),
            stderr: child.stderr.take().map(OwnedFd::from),
        };
        // `child` is dropped without waiting: the reaper owns its exit status.
        Ok::<_, ConnectError>((pid, (pid, parent)))
    })?;
    let (output, input) = match pipes(io) {
        Ok(io) => io,
        Err(e) => {
            abandon(pid);
            return Err(e);
        }
    };
    let process = Arc::new(Process::new(pid, spec.tag, spec.config, input));
    Ok(Spawned {
        process,
        output,
        exit,
    })
}

/// The spawner's version of `spec`, or `None` when only std's `Command` can express it (a NUL
/// byte in a string, which std reports as its own error).
fn spawner_request(
    spec: &SpawnSpec,
    env: Vec<(String, String)>,
    identity: Option<&Identity>,
    nofile: Option<libc::rlimit>,
) -> Option<spawner::Request> {
    let no_nul = |b: Vec<u8>| (!b.contains(&0)).then_some(b);
    // std's `Command` passes the environment sorted by name, the last value of a name winning.
    let env: BTreeMap<OsString, OsString> = env
        .into_iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
    let env = env
        .into_iter()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            no_nul(kv)
        })
        .collect::<Option<Vec<_>>>()?;
    Some(spawner::Request {
        cmd: no_nul(spec.config.cmd.clone().into_bytes())?,
        args: spec
            .config
            .args
            .iter()
            .map(|a| no_nul(a.clone().into_bytes()))
            .collect::<Option<_>>()?,
        env,
        cwd: no_nul(spec.cwd.as_os_str().as_bytes().to_vec())?,
        identity: identity.map(|id| (id.uid, id.gid, id.groups.clone())),
        pty: spec.pty.is_some(),
        nofile: nofile.map(|l| (l.rlim_cur, l.rlim_max)),
    })
}

/// Starts `req` through the spawner: `Some(pid)` when it runs, `None` when envd must fork it
/// itself, an error when it was forked but could not start (bad command, ...).
fn via_spawner(
    req: &spawner::Request,
    stdio: [BorrowedFd<'_>; 3],
    cmd: &str,
) -> Result<Option<u32>, ConnectError> {
    match spawner::spawn(req, stdio) {
        Ok(pid) => Ok(Some(pid)),
        Err(spawner::SpawnError::Exec { error, .. }) => Err(spawn_error(cmd, error)),
        Err(e @ spawner::SpawnError::Lost(_)) => {
            Err(ConnectError::internal(format!("starting {cmd:?}: {e}")))
        }
        Err(spawner::SpawnError::Unavailable(why)) => {
            tracing::debug!(reason = %why, "forking in envd instead of the spawner");
            Ok(None)
        }
    }
}

/// The pipes of a child started through the spawner: the child's ends (sent to the spawner)
/// and envd's ends.
struct ChildPipes {
    child: [OwnedFd; 3],
    parent: ParentEnds,
}

/// envd's ends of a child's stdio pipes (no stdin end when stdin is `/dev/null`).
struct ParentEnds {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

impl ChildPipes {
    fn new(stdin: bool) -> Result<ChildPipes, ConnectError> {
        let internal = |e: std::io::Error| ConnectError::internal(format!("creating pipes: {e}"));
        let pipe = || -> Result<(OwnedFd, OwnedFd), ConnectError> {
            let (r, w) = std::io::pipe().map_err(internal)?;
            Ok((OwnedFd::from(r), OwnedFd::from(w)))
        };
        let (stdin_child, stdin_parent) = if stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            let null = std::fs::File::open("/dev/null").map_err(internal)?;
            (OwnedFd::from(null), None)
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        Ok(ChildPipes {
            child: [stdin_child, out_w, err_w],
            parent: ParentEnds {
                stdin: stdin_parent,
                stdout: Some(out_r),
                stderr: Some(err_r),
            },
        })
    }

    fn child_fds(&self) -> [BorrowedFd<'_>; 3] {
        [
            self.child[0].as_fd(),
            self.child[1].as_fd(),
            self.child[2].as_fd(),
        ]
    }

    /// Closes the child's ends and returns envd's.
    fn into_parent(self) -> ParentEnds {
        self.parent
    }
}

/// Registers envd's ends of the child's pipes with tokio.
fn pipes(ends: ParentEnds) -> Result<(Output, Input), ConnectError> {
    let internal =
        |what: &str, e: std::io::Error| ConnectError::internal(format!("setting up {what}: {e}"));
    let (Some(stdout), Some(stderr)) = (ends.stdout, ends.stderr) else {
        return Err(ConnectError::internal(
            "the output pipes of the process are missing",
        ));
    };
    let stdout = pipe::Receiver::from_owned_fd(stdout).map_err(|e| internal("stdout", e))?;
    let stderr = pipe::Receiver::from_owned_fd(stderr).map_err(|e| internal("stderr", e))?;
    let input = match ends.stdin {
        Some(stdin) => Input::Pipe(tokio::sync::Mutex::new(Some(
            pipe::Sender::from_owned_fd(stdin).map_err(|e| internal("stdin", e))?,
        ))),
        None => Input::Disabled,
    };
    Ok((Output::Pipes(stdout, stderr), input))
}

/// Kills the process group of a child whose setup failed (it leads its own group or session);
/// the reaper collects it.
fn abandon(pid: u32) {
    tracing::warn!(
        pid,
        "setting up a started process failed: killing its process group"
    );
    let Ok(raw) = i32::try_from(pid) else { return };
    match killpg(Pid::from_raw(raw), Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid, error = %e, "killing an abandoned process group"),
    }
}

fn spawn_error(cmd: &str, e: std::io::Error) -> ConnectError {
    ConnectError::invalid(format!("failed to start {cmd:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            name: "user".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/user".into(),
            shell: "/bin/bash".into(),
            groups: vec![1000],
        }
    }

    #[test]
    fn environment_layers_in_order() {
        let global = HashMap::from([
            ("E2B_SANDBOX".to_string(), "true".to_string()),
            ("A".into(), "g".into()),
        ]);
        let request = HashMap::from([
            ("A".to_string(), "r".to_string()),
            ("HOME".into(), "/x".into()),
        ]);
        let env: HashMap<_, _> = environment(&user(), &global, &request)
            .into_iter()
            .collect();
        assert_eq!(env["PATH"], DEFAULT_PATH);
        assert_eq!(env["USER"], "user");
        assert_eq!(env["LOGNAME"], "user");
        assert_eq!(env["SHELL"], "/bin/bash");
        assert_eq!(env["E2B_SANDBOX"], "true");
        assert_eq!(env["A"], "r");
        assert_eq!(env["HOME"], "/x");
    }

    #[tokio::test]
    async fn abandoned_children_are_killed_with_their_group() {
        // A child leading its own group, with a grandchild in the same group.
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "sleep 30 & exec sleep 30"]);
        // SAFETY: setpgid is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setpgid(0, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (pid, exit) = Reaper::global()
            .spawn(|| cmd.spawn().map(|c| (c.id(), c.id())))
            .expect("spawns");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        abandon(pid);
        let status = tokio::time::timeout(std::time::Duration::from_secs(5), exit)
            .await
            .expect("killed in time")
            .expect("status");
        assert_eq!(status, ExitStatus::Signaled(libc::SIGKILL, false));
        // The grandchild died too (it may linger as a zombie until someone reaps it).
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(live_members(pid), Vec::<u32>::new());
    }

    /// Pids of the group `pgid` that are not zombies.
    fn live_members(pgid: u32) -> Vec<u32> {
        let mut live = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Fields after the parenthesised command: state, ppid, pgrp, ...
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.get(2) == Some(&pgid.to_string().as_str()) && fields.first() != Some(&"Z") {
                live.push(pid);
            }
        }
        live
    }

    #[test]
    fn missing_cwd_is_invalid_argument() {
        let spec = SpawnSpec {
            config: ProcessConfig {
                cmd: "/bin/true".into(),
                ..Default::default()
            },
            tag: None,
            user: user(),
            cwd: "/nonexistent/dir".into(),
            global_env: HashMap::new(),
            pty: None,
            stdin: false,
        };
        let err = spawn(spec).err().map(|e| e.code);
        assert_eq!(err, Some(crate::connect::Code::InvalidArgument));
    }
}
