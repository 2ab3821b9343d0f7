//! The namespace driver against the real kernel (needs root): a tiny rootfs built from host
//! binaries, and bash scripts standing in for envd.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use paddock_domain::{Resources, SandboxId};
use paddock_sandbox::namespace::{NamespaceConfig, NamespaceDriver};
use paddock_sandbox::{RuntimeDriver, SandboxSpec};

use common::TestParent;

/// envd stand-in: reports what it sees, signals ready and stays.
const ENVD_OK: &str = r#"#!/bin/bash
echo "$$|$PATH|$HOME|$PADDOCK_READY_FD|$(cat /etc/hostname)" > /probe
echo "envd starting"
echo ready >&"$PADDOCK_READY_FD"
exec sleep 100000
"#;
/// envd stand-in that counts its starts in the writable layer and reports what the layers
/// below show.
const ENVD_LAYERS: &str = r#"#!/bin/bash
n=$(cat /root/starts 2>/dev/null || echo 0)
echo $((n + 1)) > /root/starts
{
  echo "starts=$((n + 1))"
  echo "layer=$(cat /etc/layer 2>/dev/null || echo none)"
  [[ -e /bin/mknod ]] && echo mknod=present || echo mknod=hidden
} > /layers
echo ready >&"$PADDOCK_READY_FD"
exec sleep 100000
"#;
/// envd stand-in that is ready, then dies on its own.
const ENVD_EXITS: &str = "#!/bin/bash\necho ready >&\"$PADDOCK_READY_FD\"\nsleep 0.3\nexit 3\n";
/// envd stand-in that fails before being ready.
const ENVD_FAILS: &str = "#!/bin/bash\necho 'boom: cannot read config' >&2\nexit 1\n";
/// envd stand-in that probes what root inside the sandbox can do, as `key=value` lines.
/// Writing `domainname` is harmless: it is per UTS namespace.
const ENVD_PROBE: &str = r#"#!/bin/bash
shopt -s nullglob dotglob
{
  mknod /tmp/blk b 8 0 2>/dev/null && echo mknod=yes || echo mknod=no
  for f in kcore keys timer_list sched_debug kmsg sysrq-trigger latency_stats; do
    if [[ -e /proc/$f ]]; then
      [[ -c /proc/$f ]] && echo "$f=null" || echo "$f=visible"
    fi
  done
  for d in /proc/acpi /proc/scsi /sys/firmware; do
    entries=("$d"/*)
    [[ -d $d ]] && echo "$d=${#entries[@]}"
  done
  err=$( { echo probe > /proc/sys/kernel/domainname; } 2>&1 ) && echo proc_sys=writable || echo "proc_sys=$err"
  echo done=1
} > /hardening 2>&1
echo ready >&"$PADDOCK_READY_FD"
exec sleep 100000
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    rootfs: PathBuf,
    scripts: PathBuf,
}

/// Builds the shared template rootfs once: bash, sleep, cat, their libraries, /etc/passwd.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "etc", "root", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
        }
        std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        let mut files = BTreeSet::new();
        for bin in ["/bin/bash", "/bin/sleep", "/bin/cat", "/bin/mknod"] {
            files.insert(PathBuf::from(bin));
            files.extend(common::shared_libraries(bin));
        }
        files.insert(PathBuf::from("/etc/passwd"));
        for f in files {
            let dst = rootfs.join(f.strip_prefix("/").expect("absolute"));
            std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
            std::fs::copy(&f, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", f.display()));
        }
        let scripts = dir.path().join("scripts");
        std::fs::create_dir(&scripts).expect("mkdir");
        for (name, text) in [
            ("ok", ENVD_OK),
            ("exits", ENVD_EXITS),
            ("fails", ENVD_FAILS),
            ("probe", ENVD_PROBE),
            ("layers", ENVD_LAYERS),
        ] {
            let p = scripts.join(name);
            std::fs::write(&p, text).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        paddock_sandbox::idmap::shift_tree(&rootfs, &paddock_sandbox::idmap::IdMap::DEFAULT)
            .expect("shift");
        Fixture {
            rootfs,
            scripts,
            _dir: dir,
        }
    })
}

fn driver(parent: &TestParent, state_root: &Path) -> NamespaceDriver {
    NamespaceDriver::new(NamespaceConfig {
        shim_exe: PathBuf::from(env!("CARGO_BIN_EXE_paddock-sandbox-shim")),
        shim_args: Vec::new(),
        cgroup_parent: parent.0.clone(),
        state_root: state_root.to_path_buf(),
        disk_dir: state_root.join(".disks"),
        id_map: Some(paddock_sandbox::idmap::IdMap::DEFAULT),
        hardened: true,
    })
    .expect("driver")
}

fn spec(id: &SandboxId, state_root: &Path, envd: &str) -> SandboxSpec {
    let f = fixture();
    SandboxSpec {
        id: id.clone(),
        hostname: format!("sb-{}", &id.as_str()[..6]),
        layers: vec![f.rootfs.clone()],
        reuse_disk: false,
        state_dir: state_root.join(id.as_str()),
        envd_bin: f.scripts.join(envd),
        interpreter_bin: None,
        resources: Resources {
            cpu_count: 1,
            memory_mb: 256,
            disk_mb: 1024,
            pids_max: 123,
        },
        network: None,
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether `pid` is blocked in `nanosleep`/`clock_nanosleep` (x86_64 numbers 35 and 230;
/// aarch64 101 and 115), read from `/proc/<pid>/syscall`.
fn in_sleep(pid: u32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/syscall")) else {
        return false;
    };
    let nr = s
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<u32>().ok());
    let sleeps: &[u32] = if cfg!(target_arch = "aarch64") {
        &[101, 115]
    } else {
        &[35, 230]
    };
    nr.is_some_and(|n| sleeps.contains(&n))
}

/// The first existing `dir/<name>` among the sandbox's cgroup directories.
fn knob(dirs: &[PathBuf], names: &[&str]) -> String {
    for d in dirs {
        for n in names {
            if d.join(n).exists() {
                return read(d.join(n)).trim().to_string();
            }
        }
    }
    panic!("none of {names:?} in {dirs:?}");
}

#[tokio::test]
async fn sandbox_is_isolated_and_kill_removes_everything() {
    let states = tempfile::tempdir().expect("tempdir");
    let parent = TestParent::new();
    let driver = driver(&parent, states.path());
    let id = SandboxId::generate();
    let mut spec = spec(&id, states.path(), "ok");
    // Any host file stands for the code interpreter: it is shown read-only at its path.
    spec.interpreter_bin = Some(fixture().scripts.join("ok"));
    let handle = driver.create(spec.clone()).await.expect("create");
    let pid = handle.init_pid;
    assert!(alive(pid));
    assert_eq!(handle.envd_socket, spec.state_dir.join("envd.sock"));

    // Own namespaces of every kind.
    for ns in ["pid", "net", "mnt", "uts", "ipc"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("own ns");
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).expect("sandbox ns");
        assert_ne!(mine, theirs, "{ns} namespace is shared");
    }

    // What envd saw: PID 1, a clean environment, the hostname file.
    let probe = read(spec.state_dir.join("disk/upper/probe"));
    let fields: Vec<&str> = probe.trim().split('|').collect();
    assert_eq!(fields[0], "1", "{probe}");
    assert_eq!(
        fields[1],
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(fields[2], "/root");
    assert_eq!(fields[3], "3");
    assert_eq!(fields[4], spec.hostname);
    // PID 1 (once bash has exec'd `sleep`) holds only stdio, the ready pipe and its two
    // listening sockets; its output goes through a pipe to envd.log.
    let fds = || -> BTreeSet<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fds")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    };
    // ... and the user and rescue cgroups' `cgroup.procs` of each split hierarchy (v1: pids,
    // memory and cpu, comounted or not), then the user cgroup's `pids.current` and `pids.max`,
    // above the ready pipe.
    let children = |name: &str| -> Vec<PathBuf> {
        driver
            .cgroup_dirs(&id)
            .into_iter()
            .map(|d| d.join(name))
            .filter(|d| d.is_dir())
            .collect()
    };
    let user_cgroups = children("user");
    let rescue_cgroups = children("rescue");
    let user_pids = user_cgroups.iter().find(|d| d.join("pids.max").exists());
    let mut targets: Vec<PathBuf> = (user_cgroups.iter().chain(&rescue_cgroups))
        .map(|d| d.join("cgroup.procs"))
        .collect();
    if let Some(d) = user_pids {
        targets.extend([d.join("pids.current"), d.join("pids.max")]);
    }
    let mut expected: BTreeSet<String> = ["0", "1", "2", "3", "4", "5"]
        .into_iter()
        .map(String::from)
        .collect();
    expected.extend((0..targets.len()).map(|i| (6 + i).to_string()));
    for _ in 0..500 {
        // Not merely exec'd: `sleep` opens locale files on its way to its first
        // nanosleep, so the set is only settled once it sits in that syscall.
        if read(format!("/proc/{pid}/comm")).trim() == "sleep" && in_sleep(pid) && fds() == expected
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        fds(),
        expected,
        "{:?}",
        std::fs::read_link(format!("/proc/{pid}/fd/4"))
    );
    let fd_target = |n: u32| std::fs::read_link(format!("/proc/{pid}/fd/{n}")).expect("fd link");
    assert_eq!(fd_target(0), PathBuf::from("/dev/null"));
    assert!(fd_target(1).to_string_lossy().starts_with("pipe:"));
    assert_eq!(fd_target(1), fd_target(2));
    assert!(fd_target(3).to_string_lossy().starts_with("pipe:"));
    for n in [4, 5] {
        assert!(fd_target(n).to_string_lossy().starts_with("socket:"));
    }
    // (Shown relative to the sandbox's cgroup namespace's root, the same in each hierarchy.)
    for (i, target) in targets.iter().enumerate() {
        let shown = fd_target(6 + i as u32);
        assert!(
            target
                .to_string_lossy()
                .ends_with(&*shown.to_string_lossy()),
            "fd {}: {shown:?}, want {target:?}",
            6 + i
        );
    }
    if let Some(pids) = user_pids {
        assert_eq!(
            read(pids.join("pids.max")).trim(),
            paddock_sandbox::namespace::cgroup::user_pids_max(123).to_string()
        );
        let rescue = pids.with_file_name("rescue");
        assert_eq!(read(rescue.join("pids.max")).trim(), "7");
    }
    let log = spec.state_dir.join("envd.log");
    for _ in 0..500 {
        if read(&log).contains("envd starting") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(read(&log).contains("envd starting"), "{}", read(&log));
    // Host-only: the state directory and the log are root's alone.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&log).expect("log").mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(&spec.state_dir).expect("dir").mode() & 0o777,
        0o700
    );
    // The sandbox's /run/paddock is a read-only tmpfs of its own, not a host directory.
    let run = read(format!("/proc/{pid}/mountinfo"));
    let line = run
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/run/paddock"))
        .unwrap_or_else(|| panic!("no /run/paddock mount: {run}"));
    assert!(line.contains(" - tmpfs "), "{line}");
    assert!(
        line.split(' ').nth(5).unwrap_or("").starts_with("ro"),
        "{line}"
    );
    // No mount names a host directory of this test (state or template).
    let states_str = states.path().to_string_lossy().into_owned();
    assert!(!run.contains(&states_str), "{run}");
    let layer_str = spec.layers[0].to_string_lossy().into_owned();
    assert!(!run.contains(&layer_str), "{run}");

    // The UTS hostname, as a process in the sandbox's uts namespace sees it.
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-u", "hostname"])
        .output()
        .expect("nsenter");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), spec.hostname);
    assert!(read(format!("/proc/{pid}/root/etc/hosts")).contains(&spec.hostname));

    // /dev, /proc, /sys and lo inside.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        let meta = std::fs::metadata(root.join("dev").join(dev)).expect("device");
        assert!(meta.file_type().is_char_device(), "/dev/{dev}");
    }
    assert_eq!(
        std::fs::read_link(root.join("dev/ptmx")).expect("ptmx"),
        PathBuf::from("pts/ptmx")
    );
    assert!(root.join("dev/pts/ptmx").exists());
    assert!(root.join("proc/1/stat").exists());
    let lo_flags = read(root.join("sys/class/net/lo/flags"));
    let lo_flags =
        u32::from_str_radix(lo_flags.trim().trim_start_matches("0x"), 16).expect("flags");
    assert_eq!(lo_flags & 1, 1, "lo is down");
    assert!(root.join("usr/local/bin/envd").is_file());
    assert_eq!(
        std::fs::read(root.join("usr/local/bin/paddock-interpreter")).expect("interpreter"),
        std::fs::read(fixture().scripts.join("ok")).expect("script"),
        "the node's interpreter binary at its path"
    );

    // Limits in the cgroup, which holds PID 1.
    let dirs = driver.cgroup_dirs(&id);
    assert_eq!(
        knob(&dirs, &["memory.limit_in_bytes", "memory.max"]),
        (256u64 << 20).to_string()
    );
    assert_eq!(knob(&dirs, &["pids.max"]), "123");
    let cpu = knob(&dirs, &["cpu.cfs_quota_us", "cpu.max"]);
    assert!(cpu == "100000" || cpu == "100000 100000", "{cpu}");
    assert!(knob(&dirs, &["cgroup.procs"])
        .lines()
        .any(|l| l == pid.to_string()));

    // Of the sandbox only its disk is mounted on the host.
    let host_mounts = read("/proc/self/mountinfo");
    let state_mounts: Vec<&str> = host_mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(spec.state_dir.to_str().expect("utf-8")))
        .collect();
    let disk_dir = spec.state_dir.join("disk");
    assert_eq!(
        state_mounts,
        [disk_dir.to_str().expect("utf-8")],
        "{host_mounts}"
    );
    assert_eq!(
        paddock_sandbox::namespace::disk::loop_devices_under(&spec.state_dir).len(),
        1
    );
    assert!(!host_mounts.contains(fixture().rootfs.to_str().expect("utf-8")));

    // Writes go to the writable layer, never into the template.
    std::fs::write(root.join("tmp/hello"), "hi").expect("write inside");
    assert_eq!(read(spec.state_dir.join("disk/upper/tmp/hello")), "hi");
    // ... on the sandbox's own disk of `disk_mb` (1 GiB) MiB.
    let fs = nix::sys::statvfs::statvfs(&root).expect("statvfs");
    let total = fs.blocks() as u64 * fs.fragment_size() as u64;
    assert!(
        total > 900 << 20 && total <= 1 << 30,
        "root file system of {total} bytes"
    );
    assert!(!fixture().rootfs.join("tmp/hello").exists());

    driver.kill(&id, &spec.state_dir).await.expect("kill");
    assert!(!alive(pid), "pid {pid} survived kill");
    for d in &dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert!(!spec.state_dir.exists());
    assert!(!read("/proc/self/mountinfo").contains(spec.state_dir.to_str().expect("utf-8")));
    // The loop device detaches itself once the sandbox's mount namespace is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !paddock_sandbox::namespace::disk::loop_devices_under(&spec.state_dir).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "loop device left behind"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    driver.kill(&id, &spec.state_dir).await.expect("kill twice");
    // The pool's ready disks are mounted in the temporary directory: give them back.
    driver.release().await;
}

#[tokio::test]
async fn exit_of_envd_is_reported_but_kill_is_not() {
    let states = tempfile::tempdir().expect("tempdir");
    let parent = TestParent::new();
    let driver = driver(&parent, states.path());
    let mut exits = driver.exits();

    let killed = SandboxId::generate();
    let killed_spec = spec(&killed, states.path(), "ok");
    driver.create(killed_spec.clone()).await.expect("create");
    driver
        .kill(&killed, &killed_spec.state_dir)
        .await
        .expect("kill");

    assert!(!driver.is_alive(&killed));

    let id = SandboxId::generate();
    let spec = spec(&id, states.path(), "exits");
    let pid = driver.create(spec.clone()).await.expect("create").init_pid;
    assert!(driver.is_alive(&id));
    let got = tokio::time::timeout(Duration::from_secs(10), exits.recv())
        .await
        .expect("exit in time")
        .expect("recv");
    assert_eq!(got, id, "only the sandbox that died on its own is reported");
    assert!(!driver.is_alive(&id));
    assert!(!alive(pid));
    driver.kill(&id, &spec.state_dir).await.expect("cleanup");
    assert!(!spec.state_dir.exists());
    // The pool's ready disks are mounted in the temporary directory: give them back.
    driver.release().await;
}

#[tokio::test]
async fn failed_create_reports_the_log_and_leaves_nothing() {
    let states = tempfile::tempdir().expect("tempdir");
    let parent = TestParent::new();
    let driver = driver(&parent, states.path());
    let id = SandboxId::generate();
    let spec = spec(&id, states.path(), "fails");
    let err = driver
        .create(spec.clone())
        .await
        .expect_err("envd never gets ready");
    let msg = err.to_string();
    assert!(msg.contains("envd exited before it was ready"), "{msg}");
    assert!(msg.contains("boom: cannot read config"), "{msg}");
    for d in driver.cgroup_dirs(&id) {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert!(!spec.state_dir.exists());

    let mut bad = spec.clone();
    bad.layers = vec![states.path().join("missing")];
    assert!(driver.create(bad).await.is_err());
    assert!(!spec.state_dir.exists());
    // The pool's ready disks are mounted in the temporary directory: give them back.
    driver.release().await;
}

#[tokio::test]
async fn adopt_after_restart_and_reap_orphans() {
    let states = tempfile::tempdir().expect("tempdir");
    let parent = TestParent::new();
    let first = driver(&parent, states.path());
    let kept = SandboxId::generate();
    let orphan = SandboxId::generate();
    let kept_spec = spec(&kept, states.path(), "ok");
    let orphan_spec = spec(&orphan, states.path(), "ok");
    let kept_pid = first
        .create(kept_spec.clone())
        .await
        .expect("create")
        .init_pid;
    let orphan_pid = first
        .create(orphan_spec.clone())
        .await
        .expect("create")
        .init_pid;
    drop(first);

    // A new driver (the node restarted) finds the running sandbox again.
    let second = driver(&parent, states.path());
    let adopted = second
        .adopt(&kept, &kept_spec.state_dir)
        .await
        .expect("adopt")
        .expect("still running");
    assert_eq!(adopted.init_pid, kept_pid);
    // A sandbox without a state directory is cleaned up instead.
    let ghost = SandboxId::generate();
    assert!(second
        .adopt(&ghost, &states.path().join(ghost.as_str()))
        .await
        .expect("adopt")
        .is_none());

    assert_eq!(
        second
            .reap_orphans(std::slice::from_ref(&kept))
            .await
            .expect("reap"),
        1
    );
    assert!(!alive(orphan_pid));
    assert!(!orphan_spec.state_dir.exists());
    for d in second.cgroup_dirs(&orphan) {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert!(alive(kept_pid));
    assert_eq!(
        second
            .reap_orphans(std::slice::from_ref(&kept))
            .await
            .expect("reap"),
        0
    );

    // The adopted sandbox's PID 1 dying is not reported when we kill it, and kill works on it.
    second
        .kill(&kept, &kept_spec.state_dir)
        .await
        .expect("kill adopted");
    for d in second.cgroup_dirs(&kept) {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert!(!kept_spec.state_dir.exists());
    // Once dead, adopt cleans up and says so.
    assert!(second
        .adopt(&kept, &kept_spec.state_dir)
        .await
        .expect("adopt")
        .is_none());
    // The pool's ready disks are mounted in the temporary directory: give them back.
    second.release().await;
}

/// A `Name:\tvalue` line of `/proc/<pid>/status`.
fn status_field(pid: u32, name: &str) -> String {
    read(format!("/proc/{pid}/status"))
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("{name} missing from /proc/{pid}/status"))
}

#[tokio::test]
async fn sandbox_root_is_confined() {
    let states = tempfile::tempdir().expect("tempdir");
    let parent = TestParent::new();
    let driver = driver(&parent, states.path());
    let id = SandboxId::generate();
    let spec = spec(&id, states.path(), "probe");
    let pid = driver.create(spec.clone()).await.expect("create").init_pid;

    // Capabilities: Docker's default set without MKNOD in every set, none ambient; sudo's
    // setuid still works (no_new_privs off).
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(status_field(pid, set), "00000000a00425fb", "{set}");
    }
    assert_eq!(status_field(pid, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "0");

    // What root inside found.
    let probe = read(spec.state_dir.join("disk/upper/hardening"));
    let lines: Vec<&str> = probe.lines().collect();
    assert!(lines.contains(&"done=1"), "{probe}");
    assert!(lines.contains(&"mknod=no"), "{probe}");
    assert!(lines.contains(&"keys=null"), "{probe}");
    assert!(!probe.contains("=visible"), "{probe}");
    for dir in ["/proc/acpi", "/proc/scsi", "/sys/firmware"] {
        if let Some(line) = lines.iter().find(|l| l.starts_with(&format!("{dir}="))) {
            assert_eq!(*line, format!("{dir}=0"), "{probe}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("proc_sys=") && l.ends_with("Read-only file system")),
        "{probe}"
    );
    let mountinfo = read(format!("/proc/{pid}/mountinfo"));
    for dir in ["/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq", "/sys"] {
        if let Some(line) = mountinfo
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some(dir))
        {
            let opts = line.split_whitespace().nth(5).expect("mount options");
            assert!(opts.split(',').any(|o| o == "ro"), "{dir}: {line}");
        }
    }

    // Devices (cgroup v1): everything denied but the sandbox's own character devices, and a
    // process in the sandbox's devices cgroup cannot open any other host device.
    let devices = driver
        .cgroup_dirs(&id)
        .into_iter()
        .find(|d| d.join("devices.list").exists());
    if let Some(dir) = devices {
        let list: BTreeSet<String> = read(dir.join("devices.list"))
            .lines()
            .map(String::from)
            .collect();
        let expected: BTreeSet<String> = paddock_sandbox::namespace::cgroup::DEVICE_ALLOW
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(list, expected);
        let script = format!(
            "echo $$ > {}/cgroup.procs || exit 9; \
             exec 3</dev/null || exit 2; {{ exec 4</dev/kmsg; }} 2>/dev/null && exit 3; exit 0",
            dir.display()
        );
        let status = std::process::Command::new("bash")
            .args(["-c", &script])
            .status()
            .expect("bash");
        assert_eq!(
            status.code(),
            Some(0),
            "/dev/kmsg opened from the sandbox's cgroup"
        );
    }

    driver.kill(&id, &spec.state_dir).await.expect("kill");
    assert!(!alive(pid));
    // The pool's ready disks are mounted in the temporary directory: give them back.
    driver.release().await;
}

#[tokio::test]
async fn template_symlinks_cannot_redirect_setup_to_the_host() {
    let states = tempfile::tempdir().expect("tempdir");
    let parent = TestParent::new();
    let driver = driver(&parent, states.path());
    let host = tempfile::tempdir().expect("tempdir");
    // Stand-ins for host directories a malicious template points at (`etc ->
    // /proc/1/root/etc` reaches the real /etc the same way).
    let decoy = host.path().join("etc");
    std::fs::create_dir(&decoy).expect("mkdir");
    std::fs::write(decoy.join("hosts"), "host file\n").expect("write");
    for (link, rel_target) in [
        ("etc", "etc"),
        ("run", "etc"),
        ("usr/local", "etc"),
        ("usr/local/bin/envd", "etc/hosts"),
        ("usr/local/bin/paddock-interpreter", "etc/hosts"),
        ("proc", "etc"),
    ] {
        let rootfs = host
            .path()
            .join(format!("rootfs-{}", link.replace('/', "-")));
        let link_path = rootfs.join(link);
        std::fs::create_dir_all(link_path.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(host.path().join(rel_target), &link_path).expect("symlink");
        paddock_sandbox::idmap::shift_tree(&rootfs, &paddock_sandbox::idmap::IdMap::DEFAULT)
            .expect("shift");
        let id = SandboxId::generate();
        let mut spec = spec(&id, states.path(), "ok");
        spec.layers = vec![rootfs];
        spec.interpreter_bin = Some(fixture().scripts.join("ok"));
        let err = driver.create(spec.clone()).await.expect_err(link);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("/{link} is a symlink")) && msg.contains("refuses to follow"),
            "{link}: {msg}"
        );
        assert_eq!(read(decoy.join("hosts")), "host file\n", "{link}");
        let entries: Vec<_> = std::fs::read_dir(&decoy)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("hosts")], "{link}");
        assert!(!spec.state_dir.exists(), "{link}");
        for d in driver.cgroup_dirs(&id) {
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }
    // The pool's ready disks are mounted in the temporary directory: give them back.
    driver.release().await;
}

#[tokio::test]
async fn pause_freezes_the_sandbox_and_a_paused_sandbox_can_be_killed() {
    let states = tempfile::tempdir().expect("tempdir");
    let parent = TestParent::new();
    let driver = driver(&parent, states.path());
    let id = SandboxId::generate();
    let spec = spec(&id, states.path(), "ok");
    let pid = driver.create(spec.clone()).await.expect("create").init_pid;
    let dirs = driver.cgroup_dirs(&id);
    let frozen = |dirs: &[PathBuf]| {
        dirs.iter().any(|d| {
            std::fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
                || std::fs::read_to_string(d.join("cgroup.events"))
                    .is_ok_and(|s| s.lines().any(|l| l == "frozen 1"))
        })
    };
    assert!(!driver.is_paused(&id));
    assert!(!frozen(&dirs));

    driver.pause(&id).await.expect("pause");
    assert!(driver.is_paused(&id));
    assert!(frozen(&dirs), "the kernel reports the cgroup frozen");
    assert!(driver.is_alive(&id), "paused is not dead");
    driver.pause(&id).await.expect("pausing twice is a no-op");

    driver.resume(&id).await.expect("resume");
    assert!(!driver.is_paused(&id));
    assert!(!frozen(&dirs));
    assert!(driver.is_alive(&id));

    let unknown = SandboxId::generate();
    assert!(matches!(
        driver.pause(&unknown).await,
        Err(paddock_sandbox::RuntimeError::NotFound(_))
    ));

    driver.pause(&id).await.expect("pause again");
    driver
        .kill(&id, &spec.state_dir)
        .await
        .expect("kill paused");
    assert!(!alive(pid));
    assert!(!spec.state_dir.exists());
    for d in &dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    // The pool's ready disks are mounted in the temporary directory: give them back.
    driver.release().await;
}

/// A layer over the fixture's rootfs: adds `/etc/layer` and hides `/bin/mknod` with an overlay
/// whiteout (a 0/0 character device), as a snapshot of a sandbox that deleted it would.
fn top_layer(dir: &Path) -> PathBuf {
    let top = dir.join("top");
    std::fs::create_dir_all(top.join("etc")).expect("mkdir");
    std::fs::create_dir_all(top.join("bin")).expect("mkdir");
    std::fs::write(top.join("etc/layer"), "top\n").expect("write");
    nix::sys::stat::mknod(
        &top.join("bin/mknod"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .expect("whiteout");
    paddock_sandbox::idmap::shift_tree(&top, &paddock_sandbox::idmap::IdMap::DEFAULT)
        .expect("shift");
    top
}

#[tokio::test]
async fn layers_stack_and_stop_keeps_the_writable_layer() {
    let states = tempfile::tempdir().expect("tempdir");
    let parent = TestParent::new();
    let driver = driver(&parent, states.path());
    let id = SandboxId::generate();
    let mut spec = spec(&id, states.path(), "layers");
    let report = spec.state_dir.join("disk/upper/layers");

    // One layer: the fixture as it is.
    driver.create(spec.clone()).await.expect("create");
    assert_eq!(read(&report), "starts=1\nlayer=none\nmknod=present\n");
    driver.kill(&id, &spec.state_dir).await.expect("kill");

    // Two layers: the top one adds a file and deletes one of the bottom layer.
    spec.layers.insert(0, top_layer(states.path()));
    let pid = driver.create(spec.clone()).await.expect("create").init_pid;
    assert_eq!(read(&report), "starts=1\nlayer=top\nmknod=hidden\n");

    // Stop keeps the disk: the next start sees what the first one wrote.
    driver.stop(&id, &spec.state_dir).await.expect("stop");
    assert!(!alive(pid));
    assert!(!driver.is_alive(&id));
    assert!(spec.state_dir.join("disk.img").is_file(), "image kept");
    assert!(!spec.state_dir.join("state.json").exists());
    assert!(!paddock_sandbox::namespace::is_mount_point(
        &spec.state_dir.join("disk")
    ));
    assert!(driver.cgroup_dirs(&id).iter().all(|d| !d.exists()));
    assert!(
        matches!(
            driver.stop(&id, &spec.state_dir).await,
            Err(paddock_sandbox::RuntimeError::NotFound(_))
        ),
        "stopping a stopped sandbox"
    );

    spec.reuse_disk = true;
    driver.create(spec.clone()).await.expect("start again");
    assert_eq!(read(&report), "starts=2\nlayer=top\nmknod=hidden\n");
    driver.stop(&id, &spec.state_dir).await.expect("stop again");
    driver.create(spec.clone()).await.expect("third start");
    assert_eq!(read(&report), "starts=3\nlayer=top\nmknod=hidden\n");
    driver.kill(&id, &spec.state_dir).await.expect("kill");
    assert!(!spec.state_dir.exists());

    // Reusing a disk that is not there fails cleanly.
    assert!(driver.create(spec.clone()).await.is_err());
    assert!(!spec.state_dir.exists());
    // The pool's ready disks are mounted in the temporary directory: give them back.
    driver.release().await;
}

/// Whatever descriptors the shim happens to inherit (a caller that leaks one without
/// close-on-exec, as CI runners do), its own descriptors keep their places: with one more
/// inherited descriptor the log pipe's fixed number used to land on one the shim still owned,
/// and the shim aborted ("owned file descriptor already closed").
#[tokio::test]
async fn stray_inherited_descriptors_do_not_move_the_shims_own() {
    let states = tempfile::tempdir().expect("tempdir");
    let parent = TestParent::new();
    let driver = driver(&parent, states.path());
    // Start from a shim that inherits nothing (this process may itself have inherited
    // descriptors, which would hide the collision), then leak one more per round.
    for entry in std::fs::read_dir("/proc/self/fd").expect("fds").flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if fd > 2 {
            // SAFETY: F_SETFD only sets the close-on-exec flag; it changes no ownership.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    let mut leaked = Vec::new();
    for stray in 0..12 {
        let id = SandboxId::generate();
        let spec = spec(&id, states.path(), "ok");
        let created = driver.create(spec.clone()).await;
        let inherited = leaked.len();
        created.unwrap_or_else(|e| panic!("create with {inherited} stray descriptors: {e:?}"));
        assert!(driver.is_alive(&id), "{stray}");
        driver.kill(&id, &spec.state_dir).await.expect("kill");
        // SAFETY: dup(2) of stderr only makes a new descriptor, without close-on-exec so that
        // the next shim inherits it; this test owns it until it closes it below.
        let fd = unsafe { libc::dup(2) };
        assert!(fd >= 0, "dup: {}", std::io::Error::last_os_error());
        leaked.push(fd);
    }
    for fd in leaked {
        // SAFETY: `fd` came from dup above and nothing else owns it.
        unsafe { libc::close(fd) };
    }
    driver.release().await;
}
