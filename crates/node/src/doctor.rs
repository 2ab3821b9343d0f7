//! `paddock doctor`: checks that this host has the kernel and userland features the node needs
//! (root, namespaces, overlayfs, loop devices, cgroups, seccomp, networking tools, disk space,
//! envd) and says how to fix what is missing. Every check is a function returning one or more
//! [`Check`]s; [`run`] collects them into a [`Report`], printable as a table or as JSON.
//!
//! Checks never change the host beyond throwaway namespaces and a temp dir they remove again:
//! anything that needs `unshare` runs in a spawned `unshare` subprocess, never in this (possibly
//! multi-threaded) process. The checks live in [`system`] (kernel features), [`cgroups`] and
//! [`host`] (tools, sysctls, the data dir, envd).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

pub mod cgroups;
pub mod host;
pub mod system;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The feature is there.
    Ok,
    /// Missing or degraded, but the node still works (some feature will be unavailable).
    Warn,
    /// The node cannot run sandboxes on this host.
    Fail,
}

impl Status {
    /// `OK`, `WARN` or `FAIL`.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One checked feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short name, e.g. `namespace: pid`.
    pub name: String,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it, when not OK.
    pub fix: Option<String>,
}

impl Check {
    /// A passing check.
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A warning with its fix.
    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check {
            name: name.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A failure with its fix.
    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Inputs of [`run`].
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// The node's data dir (`--data-dir`); looked at, never created.
    pub data_dir: PathBuf,
    /// An explicit envd binary (`--envd-bin`).
    pub envd_bin: Option<PathBuf>,
    /// The running `paddock` binary, for the default envd lookup.
    pub exe: Option<PathBuf>,
}

/// All checks of one run, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// How many checks have `status`.
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// Whether no check failed (warnings are fine).
    pub fn passed(&self) -> bool {
        self.count(Status::Fail) == 0
    }

    /// The process exit status: 1 if any check failed, else 0.
    pub fn exit_code(&self) -> i32 {
        if self.passed() {
            0
        } else {
            1
        }
    }

    /// The first check called `name`.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// A table: status, name, detail; the fix on an indented line below; a summary line last.
    pub fn to_table(&self) -> String {
        let width = self
            .checks
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let _ = writeln!(
                out,
                "{:<4}  {:<width$}  {}",
                c.status.label(),
                c.name,
                c.detail
            );
            if let Some(fix) = &c.fix {
                let _ = writeln!(out, "{:<4}  {:<width$}  fix: {fix}", "", "");
            }
        }
        let _ = writeln!(
            out,
            "\n{} ok, {} warn, {} fail",
            self.count(Status::Ok),
            self.count(Status::Warn),
            self.count(Status::Fail)
        );
        out
    }

    /// The report as pretty JSON: `{"checks":[{"name","status","detail","fix"}],"ok","warn","fail"}`.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Json<'a> {
            checks: &'a [Check],
            ok: usize,
            warn: usize,
            fail: usize,
        }
        let json = Json {
            checks: &self.checks,
            ok: self.count(Status::Ok),
            warn: self.count(Status::Warn),
            fail: self.count(Status::Fail),
        };
        serde_json::to_string_pretty(&json).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Runs every check, in a fixed order. Blocking: it spawns short-lived subprocesses.
pub fn run(opts: &DoctorOptions) -> Report {
    let mut checks = vec![system::root(), system::kernel()];
    checks.extend(system::namespaces());
    checks.push(system::user_namespace_limit());
    checks.push(system::overlayfs());
    checks.push(system::loop_devices());
    checks.push(cgroups::check());
    checks.push(system::seccomp());
    checks.push(host::nftables());
    checks.push(host::ip_forward());
    checks.push(host::veth());
    checks.extend(host::data_dir(&opts.data_dir));
    checks.push(host::debootstrap());
    checks.push(host::envd(opts.envd_bin.as_deref(), opts.exe.as_deref()));
    Report { checks }
}

/// How long any spawned helper may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a helper command did.
#[derive(Debug)]
pub(crate) struct CmdOutcome {
    /// Exited with status 0.
    pub success: bool,
    /// Its stderr, trimmed (or why it could not run).
    pub stderr: String,
}

/// Runs `program args` with stdout discarded, killing it after [`COMMAND_TIMEOUT`].
pub(crate) fn run_command(program: &Path, args: &[&str]) -> CmdOutcome {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return CmdOutcome {
                success: false,
                stderr: format!("cannot run {}: {e}", program.display()),
            }
        }
    };
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let stderr = stderr.trim().to_string();
    match status {
        Some(s) => CmdOutcome {
            success: s.success(),
            stderr: if stderr.is_empty() && !s.success() {
                format!("exited with {s}")
            } else {
                stderr
            },
        },
        None => CmdOutcome {
            success: false,
            stderr: format!("timed out after {}s", COMMAND_TIMEOUT.as_secs()),
        },
    }
}

/// Finds `name` in `PATH` and the usual sbin directories (root's tools are often outside a
/// user's `PATH`).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .into_iter()
            .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            checks: vec![
                Check::ok("root", "running as uid 0"),
                Check::warn(
                    "ip_forward",
                    "net.ipv4.ip_forward is 0",
                    "sysctl -w net.ipv4.ip_forward=1",
                ),
            ],
        }
    }

    #[test]
    fn table_aligns_names_and_prints_fixes_and_summary() {
        let table = sample().to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "OK    root        running as uid 0");
        assert_eq!(lines[1], "WARN  ip_forward  net.ipv4.ip_forward is 0");
        assert_eq!(
            lines[2],
            "                  fix: sysctl -w net.ipv4.ip_forward=1"
        );
        assert_eq!(lines[3], "");
        assert_eq!(lines[4], "1 ok, 1 warn, 0 fail");
    }

    #[test]
    fn json_has_lowercase_status_and_null_fix() {
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).expect("json");
        assert_eq!(v["checks"][0]["status"], "ok");
        assert_eq!(v["checks"][0]["fix"], serde_json::Value::Null);
        assert_eq!(v["checks"][1]["status"], "warn");
        assert_eq!(v["checks"][1]["fix"], "sysctl -w net.ipv4.ip_forward=1");
        assert_eq!(v["warn"], 1);
        assert_eq!(v["fail"], 0);
    }

    #[test]
    fn exit_code_is_one_only_when_something_failed() {
        let mut report = sample();
        assert!(report.passed());
        assert_eq!(report.exit_code(), 0);
        report
            .checks
            .push(Check::fail("envd", "not found", "build it"));
        assert!(!report.passed());
        assert_eq!(report.exit_code(), 1);
        assert_eq!(report.count(Status::Fail), 1);
        assert_eq!(report.get("envd").map(|c| c.status), Some(Status::Fail));
    }

    #[test]
    fn run_command_reports_exit_status_and_stderr() {
        let sh = Path::new("/bin/sh");
        assert!(run_command(sh, &["-c", "true"]).success);
        let out = run_command(sh, &["-c", "echo boom >&2; exit 3"]);
        assert!(!out.success);
        assert_eq!(out.stderr, "boom");
        let missing = run_command(Path::new("/nonexistent/x"), &[]);
        assert!(!missing.success);
        assert!(missing.stderr.contains("cannot run"), "{}", missing.stderr);
        assert!(find_program("sh").is_some());
        assert!(find_program("no-such-program-paddock").is_none());
    }

    /// Runs on this machine (as root in CI): the features the namespace driver cannot do
    /// without must all be found.
    #[test]
    fn this_host_has_what_the_namespace_driver_needs() {
        let tmp = std::env::temp_dir();
        let report = run(&DoctorOptions {
            data_dir: tmp.join("paddock-doctor-test-does-not-exist"),
            envd_bin: None,
            exe: None,
        });
        for name in [
            "root",
            "kernel",
            "namespace: user",
            "namespace: pid",
            "namespace: mount",
            "namespace: net",
            "namespace: uts",
            "namespace: ipc",
            "overlayfs",
            "cgroups",
        ] {
            let check = report
                .get(name)
                .unwrap_or_else(|| panic!("no check {name}"));
            assert_eq!(check.status, Status::Ok, "{check:?}\n{}", report.to_table());
        }
        // Nothing was created for the data dir check.
        assert!(!tmp.join("paddock-doctor-test-does-not-exist").exists());
        // No exe, no flag: envd cannot be found, so the report fails.
        assert_eq!(report.get("envd").map(|c| c.status), Some(Status::Fail));
        assert_eq!(report.exit_code(), 1);
    }
}
