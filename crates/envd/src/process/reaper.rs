//! The one zombie reaper of envd. envd is PID 1 of its pid namespace, so every orphan is
//! re-parented to it and must be reaped; its own children's exit statuses must still reach the
//! tasks waiting for them. A dedicated thread waits with `waitid(P_ALL, WEXITED | WNOWAIT)`
//! (which does not reap), then takes the registry lock and reaps that one pid, dispatching the
//! status to the registered waiter, or keeping it (bounded in number and age) for a waiter that
//! registers later with [`Reaper::register`].
//!
//! Spawning happens under the same lock ([`Reaper::spawn`]), so a child's pid is registered
//! before its status can be dispatched, and std's own `waitpid` after a failed `exec` never
//! races with the reaper. A kept status for the pid of a freshly spawned child necessarily belongs
//! to an earlier process that had the same pid (pids wrap around), so it is discarded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How many unclaimed exit statuses are kept for late waiters.
const MAX_UNCLAIMED: usize = 1024;
/// How long an unclaimed exit status is kept for a late waiter.
const UNCLAIMED_TTL: Duration = Duration::from_secs(60);

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with a code.
    Exited(i32),
    /// Killed by a signal (number, core dumped).
    Signaled(i32, bool),
}

#[derive(Default)]
struct Table {
    waiters: HashMap<i32, oneshot::Sender<ExitStatus>>,
    /// Reaped statuses nobody waited for, with when they were reaped.
    unclaimed: HashMap<i32, (ExitStatus, Instant)>,
    /// Pids of `unclaimed` in reaping order (may hold stale entries of claimed pids).
    unclaimed_order: VecDeque<(i32, Instant)>,
    /// Bumped on every spawn, to wake the thread when it had no children.
    generation: u64,
}

/// The process-wide reaper. Obtain it with [`Reaper::global`].
pub struct Reaper {
    table: Mutex<Table>,
    spawned: Condvar,
}

impl Reaper {
    /// The reaper of this process, started on first use.
    pub fn global() -> Arc<Reaper> {
        static REAPER: OnceLock<Arc<Reaper>> = OnceLock::new();
        REAPER
            .get_or_init(|| {
                let reaper = Arc::new(Reaper {
                    table: Mutex::new(Table::default()),
                    spawned: Condvar::new(),
                });
                let r = reaper.clone();
                std::thread::Builder::new()
                    .name("envd-reaper".into())
                    .spawn(move || r.run())
                    .expect("the reaper thread must start: envd cannot run without it");
                reaper
            })
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `spawn` (which forks a child and returns its pid with any other result) under the
    /// reaper lock and registers the pid. The receiver resolves with the child's exit status.
    pub fn spawn<T, E>(
        &self,
        spawn: impl FnOnce() -> Result<(u32, T), E>,
    ) -> Result<(T, oneshot::Receiver<ExitStatus>), E> {
        let mut table = self.lock();
        let (pid, out) = spawn()?;
        table.generation += 1;
        // The new child cannot have been reaped yet (reaping takes this lock), so a kept status
        // for its pid is that of an older process which had the same pid.
        if table.unclaimed.remove(&(pid as i32)).is_some() {
            tracing::debug!(pid, "discarding the stale exit status of a reused pid");
        }
        let rx = register_locked(&mut table, pid as i32);
        drop(table);
        self.spawned.notify_all();
        Ok((out, rx))
    }

    /// Registers interest in the exit of `pid` (a child spawned without [`Reaper::spawn`]).
    /// A status that was reaped before this call is delivered at once.
    pub fn register(&self, pid: u32) -> oneshot::Receiver<ExitStatus> {
        let mut table = self.lock();
        table.generation += 1;
        let rx = register_locked(&mut table, pid as i32);
        drop(table);
        self.spawned.notify_all();
        rx
    }

    fn run(&self) {
        loop {
            // Wait, without reaping, until some child is a zombie.
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    self.reap(pid);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => self.wait_for_children(),
                Err(e) => {
                    tracing::error!(error = %e, "waitid failed in the reaper");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Reaps `pid` under the lock and hands its status over.
    fn reap(&self, pid: Pid) {
        let mut table = self.lock();
        let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => ExitStatus::Exited(code),
            Ok(WaitStatus::Signaled(_, sig, core)) => ExitStatus::Signaled(sig as i32, core),
            // Already reaped by someone else (std after a failed exec), or not finished.
            Ok(_) | Err(_) => return,
        };
        let raw = pid.as_raw();
        match table.waiters.remove(&raw) {
            Some(tx) => {
                let _ = tx.send(status);
            }
            None => {
                tracing::debug!(pid = raw, ?status, "reaped an unclaimed child");
                table.keep_unclaimed(raw, status, Instant::now());
            }
        }
    }

    /// Blocks until a spawn happens (or a second passes, for children created otherwise).
    fn wait_for_children(&self) {
        let table = self.lock();
        let generation = table.generation;
        let _unused = self
            .spawned
            .wait_timeout_while(table, Duration::from_secs(1), |t| {
                t.generation == generation
            })
            .unwrap_or_else(|p| p.into_inner());
    }
}

impl Table {
    /// Keeps the status of a reaped child nobody waits for, dropping expired and excess ones.
    fn keep_unclaimed(&mut self, pid: i32, status: ExitStatus, now: Instant) {
        self.unclaimed.insert(pid, (status, now));
        self.unclaimed_order.push_back((pid, now));
        self.expire_unclaimed(now);
    }

    /// Drops statuses older than [`UNCLAIMED_TTL`] and the oldest beyond [`MAX_UNCLAIMED`].
    fn expire_unclaimed(&mut self, now: Instant) {
        while let Some(&(pid, at)) = self.unclaimed_order.front() {
            let current = self.unclaimed.get(&pid).map(|(_, t)| *t) == Some(at);
            let expired = now.saturating_duration_since(at) >= UNCLAIMED_TTL;
            let excess = self.unclaimed.len() > MAX_UNCLAIMED;
            if current && !expired && !excess {
                break;
            }
            self.unclaimed_order.pop_front();
            if current {
                self.unclaimed.remove(&pid);
            }
        }
        // Stale order entries (claimed pids) are only skipped at the front; keep the queue from
        // growing without bound when pids are claimed out of order.
        if self.unclaimed_order.len() > 2 * MAX_UNCLAIMED {
            let unclaimed = &self.unclaimed;
            self.unclaimed_order
                .retain(|(pid, at)| unclaimed.get(pid).map(|(_, t)| *t) == Some(*at));
        }
    }
}

fn register_locked(table: &mut Table, pid: i32) -> oneshot::Receiver<ExitStatus> {
    let (tx, rx) = oneshot::channel();
    table.expire_unclaimed(Instant::now());
    if let Some((status, _)) = table.unclaimed.remove(&pid) {
        let _ = tx.send(status);
    } else {
        table.waiters.insert(pid, tx);
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[tokio::test]
    async fn delivers_exit_codes_and_signals() {
        let reaper = Reaper::global();
        let (_, rx) = reaper
            .spawn(|| {
                Command::new("/bin/sh")
                    .args(["-c", "exit 7"])
                    .spawn()
                    .map(|c| (c.id(), ()))
            })
            .expect("spawns");
        assert_eq!(rx.await.expect("status"), ExitStatus::Exited(7));
        let (_, rx) = reaper
            .spawn(|| {
                Command::new("/bin/sh")
                    .args(["-c", "kill -9 $$"])
                    .spawn()
                    .map(|c| (c.id(), ()))
            })
            .expect("spawns");
        assert_eq!(rx.await.expect("status"), ExitStatus::Signaled(9, false));
    }

    #[tokio::test]
    // The child is waited for through the reaper, which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    async fn late_registration_gets_the_status() {
        let reaper = Reaper::global();
        let child = Command::new("/bin/true").spawn().expect("spawns");
        // Let the reaper reap it before anyone registers.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rx = reaper.register(child.id());
        let status = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("in time")
            .expect("status");
        assert_eq!(status, ExitStatus::Exited(0));
    }

    /// A reaper without its thread, to drive the table by hand.
    fn detached() -> Reaper {
        Reaper {
            table: Mutex::new(Table::default()),
            spawned: Condvar::new(),
        }
    }

    #[test]
    fn a_reused_pid_never_gets_the_old_status() {
        let reaper = detached();
        let now = Instant::now();
        reaper
            .lock()
            .keep_unclaimed(4242, ExitStatus::Exited(3), now);
        // A new child that got pid 4242 after wrap-around must wait for its own exit.
        let ((), mut rx) = reaper
            .spawn(|| Ok::<_, std::io::Error>((4242, ())))
            .expect("spawns");
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        assert!(reaper.lock().unclaimed.is_empty());
        assert!(reaper.lock().waiters.contains_key(&4242));
    }

    #[test]
    fn unclaimed_statuses_expire_and_are_bounded() {
        let mut table = Table::default();
        let start = Instant::now();
        table.keep_unclaimed(10, ExitStatus::Exited(1), start);
        table.keep_unclaimed(11, ExitStatus::Exited(2), start + Duration::from_secs(30));
        table.expire_unclaimed(start + UNCLAIMED_TTL + Duration::from_secs(1));
        assert!(!table.unclaimed.contains_key(&10));
        assert!(table.unclaimed.contains_key(&11));
        for pid in 0..(MAX_UNCLAIMED as i32 + 100) {
            table.keep_unclaimed(
                1000 + pid,
                ExitStatus::Exited(0),
                start + Duration::from_secs(31),
            );
        }
        assert_eq!(table.unclaimed.len(), MAX_UNCLAIMED);
        assert!(!table.unclaimed.contains_key(&1000));
        assert!(table.unclaimed_order.len() <= 2 * MAX_UNCLAIMED);
        table.expire_unclaimed(start + Duration::from_secs(31) + UNCLAIMED_TTL);
        assert!(table.unclaimed.is_empty());
        assert!(table.unclaimed_order.is_empty());
    }

    #[test]
    fn failed_exec_does_not_race_the_reaper() {
        let reaper = Reaper::global();
        for _ in 0..20 {
            let r = reaper.spawn(|| {
                Command::new("/nonexistent/binary")
                    .spawn()
                    .map(|c| (c.id(), ()))
            });
            assert!(r.is_err());
        }
    }
}
