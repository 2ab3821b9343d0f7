//! The sandbox seccomp filter against the real kernel (needs root): raw system calls in forked
//! children that installed the filter, and probes run by a bash stand-in for envd inside a real
//! sandbox (the filter is inherited only by descendants of the sandbox's PID 1, so `nsenter`
//! would not see it).

#![cfg(target_arch = "x86_64")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use paddock_domain::{Resources, SandboxId};
use paddock_sandbox::namespace::seccomp::{self, SeccompProgram};
use paddock_sandbox::namespace::{NamespaceConfig, NamespaceDriver};
use paddock_sandbox::{RuntimeDriver, SandboxSpec};

use common::TestParent;

/// How a forked child ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Exit(i32),
    Signal(i32),
}

/// Forks; the child installs `program` (unless `None`), runs `probe` and exits with its result.
/// The probe may only make system calls (the parent has other threads).
fn in_child(program: Option<&SeccompProgram>, probe: fn() -> i32) -> End {
    // SAFETY: the child runs only `install` (no allocation: the program is compiled) and
    // `probe` (raw system calls) and leaves with `_exit`, all async-signal-safe.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = match program.map(SeccompProgram::install) {
            Some(Err(_)) => 100,
            _ => probe(),
        };
        // SAFETY: ends the forked child without running the test harness's destructors.
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid);
    if libc::WIFSIGNALED(status) {
        End::Signal(libc::WTERMSIG(status))
    } else {
        End::Exit(libc::WEXITSTATUS(status))
    }
}

/// The result of a raw system call: `Ok(return value)` or `Err(errno)`.
fn sys(nr: libc::c_long, a: libc::c_ulong, b: libc::c_ulong, c: libc::c_ulong) -> Result<i64, i32> {
    // SAFETY: every probe passes arguments that make the kernel either fail before touching
    // memory or act only on the (forked, disposable) calling process.
    let rc = unsafe { libc::syscall(nr, a, b, c) };
    if rc < 0 {
        // SAFETY: __errno_location returns the calling thread's errno slot.
        Err(unsafe { *libc::__errno_location() })
    } else {
        Ok(rc)
    }
}

/// 0 when the call failed with `errno`, else 1 (succeeded) or 2 (another error).
fn fails_with(result: Result<i64, i32>, errno: i32) -> i32 {
    match result {
        Err(e) if e == errno => 0,
        Ok(_) => 1,
        Err(_) => 2,
    }
}

/// A probe: its name, what the child runs, and how the child must end under the filter.
type Probe = (&'static str, fn() -> i32, End);

/// Every probe.
fn probes() -> Vec<Probe> {
    use libc::*;
    vec![
        (
            "seccomp mode is filter",
            || i32::from(sys(SYS_prctl, PR_GET_SECCOMP as _, 0, 0) != Ok(2)),
            End::Exit(0),
        ),
        (
            "unshare(CLONE_NEWUSER)",
            || fails_with(sys(SYS_unshare, CLONE_NEWUSER as _, 0, 0), EPERM),
            End::Exit(0),
        ),
        (
            "unshare(CLONE_NEWNS)",
            || fails_with(sys(SYS_unshare, CLONE_NEWNS as _, 0, 0), EPERM),
            End::Exit(0),
        ),
        (
            "unshare(CLONE_NEWTIME)",
            || fails_with(sys(SYS_unshare, 0x80, 0, 0), EPERM),
            End::Exit(0),
        ),
        (
            "unshare(CLONE_FILES) is allowed",
            || i32::from(sys(SYS_unshare, CLONE_FILES as _, 0, 0) != Ok(0)),
            End::Exit(0),
        ),
        (
            "clone(CLONE_NEWPID|SIGCHLD)",
            || {
                let r = sys(SYS_clone, (CLONE_NEWPID | SIGCHLD) as _, 0, 0);
                if r == Ok(0) {
                    // SAFETY: the unexpected grandchild leaves at once.
                    unsafe { _exit(0) }
                }
                fails_with(r, EPERM)
            },
            End::Exit(0),
        ),
        (
            "fork via clone(SIGCHLD) is allowed",
            || match sys(SYS_clone, SIGCHLD as _, 0, 0) {
                // SAFETY: the grandchild leaves at once.
                Ok(0) => unsafe { _exit(7) },
                Ok(pid) => {
                    let mut status = 0;
                    // SAFETY: waits for our own child into a valid out pointer.
                    unsafe { waitpid(pid as pid_t, &mut status, 0) };
                    i32::from(!(WIFEXITED(status) && WEXITSTATUS(status) == 7))
                }
                Err(_) => 1,
            },
            End::Exit(0),
        ),
        (
            "clone3 is ENOSYS",
            || fails_with(sys(SYS_clone3, 0, 0, 0), ENOSYS),
            End::Exit(0),
        ),
        (
            "setns",
            || fails_with(sys(SYS_setns, u64::MAX, 0, 0), EPERM),
            End::Exit(0),
        ),
        (
            "mount",
            || fails_with(sys(SYS_mount, 0, 0, 0), EPERM),
            End::Exit(0),
        ),
        (
            "umount2",
            || fails_with(sys(SYS_umount2, 0, 0, 0), EPERM),
            End::Exit(0),
        ),
        (
            "fsopen",
            || fails_with(sys(SYS_fsopen, 0, 0, 0), EPERM),
            End::Exit(0),
        ),
        (
            "keyctl(KEYCTL_GET_KEYRING_ID, session)",
            || fails_with(sys(SYS_keyctl, 0, (-3i64) as u64, 0), EPERM),
            End::Exit(0),
        ),
        (
            "bpf",
            || fails_with(sys(SYS_bpf, 0, 0, 0), EPERM),
            End::Exit(0),
        ),
        (
            "perf_event_open",
            || fails_with(sys(SYS_perf_event_open, 0, 0, 0), EPERM),
            End::Exit(0),
        ),
        (
            "userfaultfd",
            || fails_with(sys(SYS_userfaultfd, 0, 0, 0), EPERM),
            End::Exit(0),
        ),
        (
            "io_uring_setup",
            || fails_with(sys(SYS_io_uring_setup, 1, 0, 0), EPERM),
            End::Exit(0),
        ),
        (
            "syslog(SYSLOG_ACTION_SIZE_BUFFER)",
            || fails_with(sys(SYS_syslog, 10, 0, 0), EPERM),
            End::Exit(0),
        ),
        (
            "clock_settime",
            || fails_with(sys(SYS_clock_settime, CLOCK_REALTIME as _, 0, 0), EPERM),
            End::Exit(0),
        ),
        (
            "personality(ADDR_NO_RANDOMIZE)",
            || fails_with(sys(SYS_personality, 0x0040000, 0, 0), EPERM),
            End::Exit(0),
        ),
        (
            "personality query and PER_LINUX32 are allowed",
            || {
                let ok = sys(SYS_personality, 0xffff_ffff, 0, 0).is_ok()
                    && sys(SYS_personality, 8, 0, 0).is_ok()
                    && sys(SYS_personality, 0xffff_ffff, 0, 0) == Ok(8)
                    && sys(SYS_personality, 0, 0, 0).is_ok();
                i32::from(!ok)
            },
            End::Exit(0),
        ),
        (
            "x32 getpid is ENOSYS",
            || fails_with(sys(0x4000_0000 | SYS_getpid, 0, 0, 0), ENOSYS),
            End::Exit(0),
        ),
        (
            "ptrace stays allowed",
            || i32::from(sys(SYS_ptrace, PTRACE_TRACEME as _, 0, 0).is_err()),
            End::Exit(0),
        ),
        (
            "i386 int 0x80 kills the process",
            || {
                let mut ax: u64 = 20; // getpid on i386
                                      // SAFETY: a 32-bit system call without memory arguments; the filter kills the
                                      // process before the kernel runs it.
                unsafe {
                    std::arch::asm!(
                        "int 0x80",
                        inout("rax") ax,
                        out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                    )
                };
                i32::from(ax > 0)
            },
            End::Signal(libc::SIGSYS),
        ),
    ]
}

#[test]
fn filter_blocks_what_the_policy_lists_and_nothing_ordinary() {
    let program = seccomp::compile().expect("compile");
    let mut failures = Vec::new();
    for (name, probe, expected) in probes() {
        let got = in_child(Some(&program), probe);
        if got != expected {
            failures.push(format!("{name}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn probes_can_fail_without_the_filter() {
    // The probes that are not "allowed" checks must see something else without the filter, or
    // they would prove nothing.
    let control = [
        "seccomp mode is filter",
        "unshare(CLONE_NEWUSER)",
        "unshare(CLONE_NEWNS)",
        "clone3 is ENOSYS",
        "setns",
        "mount",
        "keyctl(KEYCTL_GET_KEYRING_ID, session)",
        "syslog(SYSLOG_ACTION_SIZE_BUFFER)",
        "clock_settime",
        "personality(ADDR_NO_RANDOMIZE)",
    ];
    for (name, probe, _) in probes().into_iter().filter(|p| control.contains(&p.0)) {
        assert_ne!(in_child(None, probe), End::Exit(0), "{name}");
    }
}

/// envd stand-in: probes, as `key=value` lines, what a process in the sandbox can do, then
/// signals ready. Every probe runs as a descendant of PID 1.
const ENVD_PROBE: &str = r#"#!/bin/bash
out=/seccomp
{
  while read -r key value; do
    case $key in Seccomp: | Seccomp_filters: | NoNewPrivs:) echo "${key%:}=$value" ;; esac
  done < /proc/self/status
  try() { local name=$1; shift; if err=$("$@" 2>&1); then echo "$name=ok"; else echo "$name=fail:$err"; fi; }
  try unshare_user unshare -U true
  try unshare_mount unshare -m true
  try mount_tmpfs mount -t tmpfs x /mnt
  try swapoff swapoff /nonexistent
  try date_set date -s @0
  grep_mnt=no
  while read -r _ mnt _; do [[ $mnt == /mnt ]] && grep_mnt=yes; done < /proc/self/mounts
  echo "mnt_mounted=$grep_mnt"
  echo "subshell=$( (echo forked) )"
  echo "pipeline=$(echo piped | cat)"
  sleep 0.01 & wait $! && echo "background=ok"
  echo "date_read=$(date +%Y >/dev/null && echo ok)"
  echo done=1
} > "$out.tmp" 2>&1
mv "$out.tmp" "$out"
echo ready >&"$PADDOCK_READY_FD"
exec sleep 100000
"#;

/// A tiny template: bash and the probes' tools with their libraries.
fn rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "etc", "root", "tmp", "mnt"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
    }
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod");
    let bins = [
        "/bin/bash",
        "/bin/sleep",
        "/bin/cat",
        "/bin/mv",
        "/usr/bin/unshare",
        "/usr/bin/mount",
        "/usr/sbin/swapoff",
        "/usr/bin/date",
        "/usr/bin/true",
    ];
    let mut libs = BTreeSet::new();
    for bin in bins {
        // Every tool goes to /bin, so the sandbox's PATH finds it.
        let dst = rootfs
            .join("bin")
            .join(Path::new(bin).file_name().expect("name"));
        std::fs::copy(bin, &dst).unwrap_or_else(|e| panic!("copy {bin}: {e}"));
        libs.extend(common::shared_libraries(bin));
    }
    libs.insert(PathBuf::from("/etc/passwd"));
    for f in libs {
        let dst = rootfs.join(f.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&f, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", f.display()));
    }
    paddock_sandbox::idmap::shift_tree(&rootfs, &paddock_sandbox::idmap::IdMap::DEFAULT)
        .expect("shift");
    rootfs
}

#[tokio::test]
async fn processes_in_a_sandbox_run_under_the_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rootfs = rootfs(dir.path());
    let envd = dir.path().join("envd");
    std::fs::write(&envd, ENVD_PROBE).expect("write");
    std::fs::set_permissions(&envd, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let states = dir.path().join("states");
    std::fs::create_dir(&states).expect("mkdir");
    let parent = TestParent::new();
    let driver = NamespaceDriver::new(NamespaceConfig {
        shim_exe: PathBuf::from(env!("CARGO_BIN_EXE_paddock-sandbox-shim")),
        shim_args: Vec::new(),
        cgroup_parent: parent.0.clone(),
        state_root: states.clone(),
        disk_dir: dir.path().join("disks"),
        id_map: Some(paddock_sandbox::idmap::IdMap::DEFAULT),
        hardened: true,
    })
    .expect("driver");
    let id = SandboxId::generate();
    let spec = SandboxSpec {
        id: id.clone(),
        hostname: "seccomp".into(),
        layers: vec![rootfs],
        reuse_disk: false,
        state_dir: states.join(id.as_str()),
        envd_bin: envd,
        interpreter_bin: None,
        resources: Resources {
            cpu_count: 1,
            memory_mb: 256,
            disk_mb: 1024,
            pids_max: 100,
        },
        network: None,
    };
    let handle = driver.create(spec.clone()).await.expect("create");
    let status = std::fs::read_to_string(format!("/proc/{}/status", handle.init_pid))
        .expect("status of PID 1");
    let text =
        std::fs::read_to_string(spec.state_dir.join("disk/upper/seccomp")).expect("probe output");
    driver.kill(&id, &spec.state_dir).await.expect("kill");

    // PID 1 itself runs under the filter, and no_new_privs stays off (sudo works).
    assert!(status.contains("\nSeccomp:\t2\n"), "{status}");
    assert!(status.contains("\nNoNewPrivs:\t0\n"), "{status}");
    let got: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let expect = |key: &str, want: &str| {
        let value = got.get(key).copied().unwrap_or("<missing>");
        assert!(
            value.starts_with(want),
            "{key}={value}, want {want}...\n{text}"
        );
    };
    expect("done", "1");
    expect("Seccomp", "2");
    expect("Seccomp_filters", "3");
    expect("NoNewPrivs", "0");
    // A user namespace needs no capability, so only the filter stops this one.
    expect(
        "unshare_user",
        "fail:unshare: unshare failed: Operation not permitted",
    );
    expect(
        "unshare_mount",
        "fail:unshare: unshare failed: Operation not permitted",
    );
    expect("mount_tmpfs", "fail:");
    expect("mnt_mounted", "no");
    // util-linux reports EPERM from swapoff(2) as "Not superuser".
    expect("swapoff", "fail:swapoff: Not superuser");
    expect(
        "date_set",
        "fail:date: cannot set date: Operation not permitted",
    );
    // Ordinary things still work.
    expect("subshell", "forked");
    expect("pipeline", "piped");
    expect("background", "ok");
    expect("date_read", "ok");
    // The pool's ready disks are mounted in the temporary directory: give them back.
    driver.release().await;
}
