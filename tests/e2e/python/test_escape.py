"""Escape-and-abuse suite: attacks run from INSIDE a sandbox as root (the `user` account has
password-less sudo, so root is what an attacker has), each asserting the exact containment
that docs/security.md promises today. Probes live in escape_probes.py.

A neighbouring sandbox is created before the first test; the last test checks that it and the
host API still work after everything here ran.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import requests

from e2b import Sandbox
from escape_probes import (
    CLONE_NEW,
    HostListener,
    Result,
    cgroup_paths,
    connect_from,
    host_addresses,
    host_cgroup_file,
    raw_syscall,
    read_counter,
    read_counter_with_user,
    run,
    run_python,
    sandbox_addresses,
    stat_all_fds,
)

EPERM = {"errno": "EPERM", "msg": "Operation not permitted"}
DOCUMENTED_CAPS = 0x00000000A00425FB  # 13 caps: Docker's default set minus MKNOD
CAP_SYS_ADMIN = 21


def _create(paddock, **kw) -> Sandbox:
    s = Sandbox.create(timeout=900, **kw)
    paddock.track(s.sandbox_id)
    return s


@pytest.fixture(scope="module", autouse=True)
def neighbour(paddock):
    """A bystander created before any attack; the last test checks it still works."""
    s = _create(paddock, metadata={"role": "escape-neighbour"})
    assert s.commands.run("echo ready").stdout == "ready\n"
    yield s
    s.kill()


@pytest.fixture(scope="module")
def victim(paddock):
    """The sandbox most probes run in."""
    s = _create(paddock)
    yield s
    s.kill()


def _denied(r: Dict[str, object], errno: str = "EPERM", msg: str = "Operation not permitted"):
    assert r["rc"] == -1 and r["errno"] == errno and r["msg"] == msg, r


# ---------------------------------------------------------------- mounts


@pytest.mark.parametrize(
    "cmd",
    ["mount -t tmpfs none /mnt", "mount -t proc proc /mnt", "mount --bind /etc /mnt",
     "mount -o remount,rw /proc/sys", "mount -o remount,rw /sys"],
)
def test_mount_cli_is_denied(victim, cmd):
    r = run(victim, cmd)
    assert r.exit_code == 32 and "permission denied" in r.stderr, r
    assert run(victim, "grep -c ' /mnt ' /proc/self/mountinfo").stdout.strip() == "0"


def test_mount_syscall_is_denied(victim):
    _denied(raw_syscall(victim, "mount", "none", "/mnt", "tmpfs", 0, None))


def test_new_mount_api_is_denied(victim):
    _denied(raw_syscall(victim, "fsopen", "tmpfs", 0))
    _denied(raw_syscall(victim, "open_tree", -100, "/etc", 1))  # OPEN_TREE_CLONE


def test_umount_of_proc_mask_is_denied(victim):
    r = run(victim, "umount /proc/keys")
    assert r.exit_code == 32 and "must be superuser to unmount" in r.stderr, r
    _denied(raw_syscall(victim, "umount2", "/proc/keys", 2))  # MNT_DETACH
    assert run(victim, "wc -c < /proc/keys").stdout.strip() == "0"


def test_pivot_root_is_denied(victim):
    run(victim, "mkdir -p /tmp/newroot/old")
    r = run(victim, "pivot_root /tmp/newroot /tmp/newroot/old")
    assert r.exit_code == 1 and "Operation not permitted" in r.stderr, r
    _denied(raw_syscall(victim, "pivot_root", "/tmp/newroot", "/tmp/newroot/old"))


# ---------------------------------------------------------------- namespaces


@pytest.mark.parametrize("kind", sorted(CLONE_NEW))
def test_unshare_is_denied(victim, kind):
    _denied(raw_syscall(victim, "unshare", CLONE_NEW[kind]))


@pytest.mark.parametrize("flag", ["-U", "-m", "-n", "-p -f", "-u", "-i", "-C"])
def test_unshare_cli_is_denied(victim, flag):
    r = run(victim, f"unshare {flag} true")
    assert r.exit_code == 1 and "unshare failed: Operation not permitted" in r.stderr, r


def test_clone_with_namespace_flags_is_denied(victim):
    _denied(raw_syscall(victim, "clone", CLONE_NEW["user"] | 17, 0, None, None, 0))
    # clone3 cannot be filtered on its flags (they are behind a pointer): ENOSYS for all.
    _denied(raw_syscall(victim, "clone3", "@buf:88", 88), "ENOSYS", "Function not implemented")


@pytest.mark.parametrize("ns", ["mnt", "net", "pid", "user", "cgroup"])
def test_setns_is_denied(victim, ns):
    _denied(raw_syscall(victim, "setns", f"@fd:/proc/1/ns/{ns}", 0))
    r = run(victim, f"nsenter -t 1 --{ {'mnt': 'mount'}.get(ns, ns)} true")
    assert r.exit_code == 1 and "Operation not permitted" in r.stderr, r


def test_no_host_processes_visible(victim, paddock):
    src = r"""
import json, os
procs = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            procs[int(p)] = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            pass
print(json.dumps(procs))
"""
    import json

    procs = {int(k): v for k, v in json.loads(run_python(victim, src).stdout).items()}
    assert procs[1].startswith("envd "), procs
    assert len(procs) < 10, procs
    assert not any("paddock" in c and "serve" in c for c in procs.values()), procs
    assert not any("pytest" in c for c in procs.values()), procs
    assert paddock.proc.pid not in procs or "serve" not in procs[paddock.proc.pid]


def test_hostname_is_sandbox_id(victim):
    assert run(victim, "hostname").stdout.strip() == victim.sandbox_id
    r = run(victim, "hostname evil")  # own uts namespace, but no CAP_SYS_ADMIN
    assert r.exit_code == 1 and "you must be root to change the host name" in r.stderr, r
    _denied(raw_syscall(victim, "sethostname", "evil", 4))
    assert run(victim, "hostname").stdout.strip() == victim.sandbox_id


# ---------------------------------------------------------------- kernel-facing system calls

SYSCALLS = {
    "init_module": (None, 0, ""),
    "finit_module": ("@fd:/dev/null", "", 0),
    "delete_module": ("dummy", 0),
    "kexec_load": (0, 0, None, 0),
    "kexec_file_load": (-1, -1, 0, None, 0),
    "keyctl": (0, -3, 0),  # KEYCTL_GET_KEYRING_ID(session): allowed for anyone without the filter
    "add_key": ("user", "paddock", "data", 4, -2),
    "request_key": ("user", "paddock", None, 0),
    "bpf": (0, "@buf:128", 128),
    "perf_event_open": ("@buf:128", 0, -1, -1, 0),
    "open_by_handle_at": (-100, "@buf:136", 0),
    "name_to_handle_at": (-100, "/", "@buf:136", "@buf:8", 0),
    "userfaultfd": (0,),
    "io_uring_setup": (1, "@buf:120"),
    "reboot": (0xFEE1DEAD, 672274793, 0x89ABCDEF, None),  # CAD_ON: harmless even if it ran
    "swapon": ("/dev/null", 0),
    "swapoff": ("/dev/null",),
    "settimeofday": (None, None),  # a no-op without the filter
    "clock_settime": (1, "@buf:16"),  # CLOCK_MONOTONIC: EINVAL without the filter
    "adjtimex": ("@buf:208",),  # modes=0 is a read-only query without the filter
    "clock_adjtime": (0, "@buf:208"),
    "syslog": (10, None, 0),  # SYSLOG_ACTION_SIZE_BUFFER
    "iopl": (0,),
    "personality": (0x0400000,),  # READ_IMPLIES_EXEC
}


@pytest.mark.parametrize("name", sorted(SYSCALLS))
def test_dangerous_syscall_is_denied(victim, name):
    _denied(raw_syscall(victim, name, *SYSCALLS[name]))


def test_date_cannot_be_set(victim):
    before = time.time()
    r = run(victim, "date -s '2001-01-01'")
    assert r.exit_code == 1 and "cannot set date: Operation not permitted" in r.stderr, r
    assert abs(time.time() - before) < 60


def test_dmesg_is_denied(victim):
    r = run(victim, "dmesg")
    assert r.exit_code == 1 and "Operation not permitted" in r.stderr, r


# ---------------------------------------------------------------- devices, /proc, /sys


@pytest.mark.parametrize("spec", ["/tmp/sda b 8 0", "/tmp/mem c 1 1", "/tmp/kmsg c 1 11"])
def test_mknod_is_denied(victim, spec):
    r = run(victim, f"mknod {spec}")
    assert r.exit_code == 1 and "Operation not permitted" in r.stderr, r


@pytest.mark.parametrize("dev", ["/dev/sda", "/dev/vda", "/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg"])
def test_raw_devices_absent(victim, dev):
    r = run(victim, f"head -c1 {dev}")
    assert r.exit_code == 1 and "No such file or directory" in r.stderr, r


@pytest.mark.parametrize(
    "path", ["kernel/core_pattern", "vm/drop_caches", "kernel/panic", "kernel/hostname"]
)
def test_proc_sys_is_read_only(victim, path):
    # Writes back the current value, so nothing changes even if containment failed.
    p = f"/proc/sys/{path}"
    r = run(victim, f"v=$(cat {p}); printf '%s\\n' \"$v\" > {p}")
    assert r.exit_code == 1 and "Read-only file system" in r.stderr, r


@pytest.mark.parametrize(
    "name", ["kcore", "keys", "timer_list", "sched_debug", "kmsg", "latency_stats", "sysrq-trigger"]
)
def test_proc_sensitive_files_masked(victim, name):
    # Either the kernel has no such file, or it is /dev/null (char 1:3) and reads empty.
    p = f"/proc/{name}"
    r = run(victim, f"stat -c '%F %t:%T' {p} && head -c 64 {p} | wc -c")
    if r.exit_code != 0:
        assert "No such file or directory" in r.stderr, r
    else:
        assert r.stdout.splitlines() == ["character special file 1:3", "0"], r


def test_sysrq_trigger_write_has_no_effect(victim):
    # 'h' only prints help to the kernel log: harmless even if containment failed.
    r = run(victim, "echo h > /proc/sysrq-trigger; stat -c '%t:%T' /proc/sysrq-trigger")
    assert ("No such file or directory" in r.stderr and r.exit_code == 1) or r.stdout == "1:3\n", r


@pytest.mark.parametrize("path", ["/sys/class/net/lo/mtu", "/sys/kernel/uevent_helper", "/sys/kernel/mm/ksm/run"])
def test_sys_is_read_only(victim, path):
    r = run(victim, f"v=$(cat {path} 2>/dev/null); printf '%s\\n' \"$v\" > {path}")
    assert r.exit_code == 1 and "Read-only file system" in r.stderr, r


def test_proc_acpi_scsi_and_firmware_hidden(victim):
    r = run(victim, "ls -A /proc/acpi /proc/scsi /sys/firmware 2>/dev/null | grep -v ':$' | grep -c . || true")
    assert r.stdout.strip() == "0", r


# ---------------------------------------------------------------- envd and identity


@pytest.mark.parametrize("path", ["/proc/1/exe", "/usr/local/bin/envd"])
def test_envd_binary_cannot_be_overwritten(victim, path):
    r = run(victim, f"echo x > {path}")
    assert r.exit_code == 1, r
    assert "Read-only file system" in r.stderr or "Text file busy" in r.stderr, r
    r = run(victim, "head -c4 /usr/local/bin/envd | od -An -c | tr -d ' '")
    assert r.stdout.strip() == "177ELF", r


def test_envd_holds_no_host_fds(victim, paddock):
    fds = stat_all_fds(victim, 1)
    assert fds, "envd has no fds?"
    cgroup_fds = []
    for fd in fds:
        target = fd["target"]
        assert str(paddock.data_dir) not in target, fd
        if target.endswith(("/user/cgroup.procs", "/rescue/cgroup.procs", "/user/pids.current", "/user/pids.max")):
            # The host objects envd holds on purpose (cgroup v1): write-only descriptors of its
            # own sandbox's user and rescue cgroups, which its children write `0` to before exec
            # (they are close-on-exec), and read-only ones of the user cgroup's pids counter and
            # limit. Re-opening any of them from inside for writing is refused.
            r = run(victim, f"echo 1 > /proc/1/fd/{fd['fd']}; echo rc=$?")
            assert "rc=1" in r.stdout, (fd, r)
            cgroup_fds.append(fd)
        elif target.startswith("/"):
            # A path fd must be the very file that path names inside the sandbox.
            assert fd["same_inside"] is True, fd
        else:
            assert target.split(":")[0] in ("socket", "pipe", "anon_inode"), fd
    assert len(cgroup_fds) <= 8, cgroup_fds  # user and rescue in pids, memory, cpu; 2 pids files
    # A process started by envd holds none of them.
    r = run(victim, "ls -l /proc/self/fd/ | grep -c cgroup || true")
    assert r.stdout.strip() == "0", r
    r = run(victim, "readlink /proc/1/root /proc/1/cwd")
    assert r.stdout.split() == ["/", "/"], r


def test_chroot_breakout_stays_in_sandbox(victim, paddock):
    # CAP_SYS_CHROOT is kept: the classic double-chroot escape must still end at the sandbox root.
    src = r"""
import os
os.makedirs("/tmp/jail", exist_ok=True)
fd = os.open("/", os.O_RDONLY)
os.chroot("/tmp/jail")
os.fchdir(fd)
for _ in range(64):
    os.chdir("..")
os.chroot(".")
print(open("/etc/hostname").read().strip())
print(os.path.exists(REPO), os.path.exists(DATA))
"""
    repo = str(Path(__file__).resolve().parents[3] / "Cargo.toml")
    assert Path(repo).exists() and paddock.data_dir.exists()
    r = run_python(victim, f"REPO = {repo!r}\nDATA = {str(paddock.data_dir)!r}\n" + src)
    assert r.exit_code == 0, r
    assert r.stdout.split("\n")[:2] == [victim.sandbox_id, "False False"], r


def test_capabilities_are_the_documented_13(victim):
    r = run(victim, "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status /proc/1/status")
    caps = {}
    for line in r.stdout.splitlines():
        where, rest = line.split(":", 1)
        key, value = rest.split()
        caps[(where, key.rstrip(":"))] = int(value, 16)
    for where in ("/proc/self/status", "/proc/1/status"):
        for key in ("CapPrm", "CapEff", "CapBnd"):
            assert caps[(where, key)] == DOCUMENTED_CAPS, (where, key, hex(caps[(where, key)]))
        assert caps[(where, "CapAmb")] == 0
        assert not caps[(where, "CapBnd")] & (1 << CAP_SYS_ADMIN)
    # sudo from `user` gets no more than the bounding set.
    r = run(victim, "sudo -n grep CapEff /proc/self/status", user="user")
    assert r.exit_code == 0 and int(r.stdout.split()[1], 16) == DOCUMENTED_CAPS, r
    r = run(victim, "grep CapEff /proc/self/status", user="user")
    assert int(r.stdout.split()[1], 16) == 0, r


def test_seccomp_and_no_new_privs(victim):
    for pid in ("self", "1"):
        r = run(victim, f"grep -E '^(Seccomp|NoNewPrivs):' /proc/{pid}/status")
        status = dict(line.split(":\t") for line in r.stdout.splitlines())
        # NoNewPrivs is documented as off so that sudo works for `user`.
        assert status == {"NoNewPrivs": "0", "Seccomp": "2"}, (pid, status)


UID_BASE = 2_100_000_000  # paddock_sandbox::idmap::IdMap::DEFAULT


def test_sandbox_root_is_an_unprivileged_host_uid(victim):
    # Each sandbox runs in a user namespace: ids 0..65535 inside are UID_BASE.. on the host.
    r = run(victim, "cat /proc/self/uid_map /proc/self/gid_map")
    assert [line.split() for line in r.stdout.splitlines()] == [["0", str(UID_BASE), "65536"]] * 2, r
    assert run(victim, "id -u; id -u user").stdout.split() == ["0", "1000"]


def _host_uids_of(marker: str) -> set[int]:
    """Real uids, as the host sees them, of host processes whose command line holds marker."""
    uids = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        uids.add(int(line.split()[1]))
        except OSError:
            continue
    return uids


@pytest.mark.parametrize("user,inside", [("root", 0), ("user", 1000)])
def test_sandbox_processes_run_as_shifted_host_uids(victim, user, inside):
    marker = f"{7_000_000 + inside}"
    victim.commands.run(f"sleep {marker}", background=True, user=user)
    deadline = time.time() + 10
    while not (uids := _host_uids_of(f"sleep\0{marker}")) and time.time() < deadline:
        time.sleep(0.05)
    run(victim, f"pkill -f 'sleep {marker}' || true")
    assert uids == {UID_BASE + inside}, uids


def test_sandbox_root_owns_its_files_but_not_the_hosts(victim):
    # Root inside can change what the template gave it (shifted ownership) ...
    r = run(victim, "echo '10.0.0.9 extra' >> /etc/hosts && chown user /etc/hostname && "
            "touch /newfile && mkdir -p /opt/x && stat -c '%u' /etc/passwd /newfile")
    assert r.exit_code == 0 and r.stdout.split() == ["0", "0"], r
    # ... but files of unmapped host ids (the bind-mounted envd, /proc/sys) show as nobody
    # and stay out of reach even for root with CAP_DAC_OVERRIDE/CAP_FOWNER.
    r = run(victim, "stat -c '%u' /usr/local/bin/envd; chmod 777 /usr/local/bin/envd; echo rc=$?")
    assert r.stdout.split()[0] == "65534", r
    assert "rc=1" in r.stdout, r


def test_low_ports_and_ping_sockets_work_inside_the_user_namespace(victim):
    # The network namespace belongs to the host's user namespace, so the node opens ports
    # below 1024 and ICMP datagram sockets to the sandbox's ids (sysctls of its own netns).
    code = (
        "import socket\n"
        "s = socket.socket(); s.bind(('0.0.0.0', 80)); print('bound')\n"
        "p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); print('icmp')\n"
    )
    for user in ("root", "user"):
        r = run_python(victim, code, user=user)
        assert r.stdout.split() == ["bound", "icmp"], (user, r)


# ---------------------------------------------------------------- network

# Errors that mean "could not connect". Today (only `lo`) they are ECONNREFUSED for loopback and
# ENETUNREACH for everything else; the networking work may turn some into EHOSTUNREACH,
# ETIMEDOUT (dropped) or EACCES/EPERM (rejected by a firewall).
UNREACHABLE = {"ECONNREFUSED", "ENETUNREACH", "EHOSTUNREACH", "ETIMEDOUT", "EACCES", "EPERM"}


class TestNetworkIsolation:
    """What a sandbox can reach over IP (docs/security.md): `lo` and `eth0`, a veth to the host
    whose nftables rules let it out to the internet only, never to the host, other sandboxes or
    link-local addresses."""

    def test_interfaces_are_loopback_and_one_veth(self, victim):
        r = run(victim, "ip -o link | awk -F': ' '{print $2}' | cut -d@ -f1")
        assert r.stdout.split() == ["lo", "eth0"], r
        # No way to change them: NET_ADMIN is not in the capability set.
        r = run(victim, "ip link set eth0 down")
        assert r.exit_code != 0 and "Operation not permitted" in r.stderr, r

    def test_host_loopback_services_unreachable(self, victim, paddock):
        res = connect_from(victim, [("127.0.0.1", paddock.api_port), ("127.0.0.1", paddock.proxy_port),
                                    ("::1", paddock.api_port)])
        # The sandbox's 127.0.0.1 is its own loopback: nothing listens there.
        assert set(res.values()) == {"ECONNREFUSED"}, res

    def test_host_addresses_unreachable(self, victim, paddock):
        with HostListener() as listener:
            addrs = host_addresses()
            assert addrs, "host has no addresses?"
            # The listener itself is reachable from the host on every address (so it can fail).
            for a in addrs:
                fam = socket.AF_INET6 if ":" in a else socket.AF_INET
                with socket.socket(fam) as s:
                    s.settimeout(3)
                    s.connect((a, listener.port))
            time.sleep(0.3)
            from_host = len(listener.accepted)
            assert from_host == len(addrs), listener.accepted
            ports = [paddock.api_port, paddock.proxy_port, listener.port]
            res = connect_from(victim, [(a, p) for a in addrs for p in ports])
            time.sleep(0.3)
            assert len(listener.accepted) == from_host, f"sandbox reached the host: {listener.accepted}"
        assert set(res.values()) <= UNREACHABLE, res
        assert "connected" not in res.values(), res

    def test_cloud_metadata_unreachable(self, victim):
        res = connect_from(victim, [("169.254.169.254", 80), ("fd00:ec2::254", 80)])
        assert set(res.values()) <= UNREACHABLE and "connected" not in res.values(), res
        assert res["169.254.169.254:80"] in {"ENETUNREACH", "ETIMEDOUT", "EHOSTUNREACH"}, res

    def test_other_sandbox_unreachable(self, victim, paddock):
        other = _create(paddock)
        try:
            other.commands.run("python3 -m http.server 8124 --bind 0.0.0.0", background=True, timeout=0)
            addrs = sandbox_addresses(other)
            port_ok = None
            for _ in range(50):
                port_ok = connect_from(other, [("127.0.0.1", 8124)])
                if port_ok["127.0.0.1:8124"] == "connected":
                    break
                time.sleep(0.1)
            assert port_ok == {"127.0.0.1:8124": "connected"}, "server in B never came up"
            targets = [(a, 8124) for a in addrs] + [("127.0.0.1", 8124)]
            res = connect_from(victim, targets)
            assert "connected" not in res.values() and set(res.values()) <= UNREACHABLE, res
            assert res["127.0.0.1:8124"] == "ECONNREFUSED", res
        finally:
            other.kill()

    def test_host_abstract_unix_socket_unreachable(self, victim):
        # Abstract Unix sockets belong to a network namespace: the host's are not visible.
        name = "paddock-e2e-" + uuid.uuid4().hex
        with socket.socket(socket.AF_UNIX) as host_sock:
            host_sock.bind("\0" + name)
            host_sock.listen(1)
            src = f"import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('\\0{name}'); print('connected')\nexcept OSError as e:\n    print(e.strerror)\n"
            r = run_python(victim, src)
        assert r.stdout.strip() == "Connection refused", r


# ---------------------------------------------------------------- resource abuse


@dataclass
class BombOutcome:
    pids_max: str = ""
    pids_peak: int = 0
    pids_max_events: int = 0
    oom_kills: int = 0
    mem_failcnt: int = 0
    host_ok: bool = False
    neighbour_ok: bool = False
    user_full: bool = False  # the user cgroup reached its pids limit or OOM-killed
    answer: Optional[Result] = None  # a command run while the bomb filled the user cgroup
    still_full_after: bool = False  # ... and the bomb still filled it when the answer came
    ended: Optional[Result] = None  # `kill -9 -1` from inside
    recovered: bool = False
    errors: List[str] = field(default_factory=list)


# Free tasks below which envd starts new commands in the rescue cgroup (crates/envd/src/
# process/cgroup.rs RESCUE_BELOW_FREE; it also does when the user cgroup is OOM-killing).
RESCUE_BELOW_FREE = 16


@pytest.fixture(scope="module")
def fork_bomb(paddock, neighbour) -> BombOutcome:
    """Runs `:(){ :|:& };:` as root in its own sandbox (for at most 60 s: GNU timeout kills the
    bomb's process group), watching its cgroup from the host. Once the bomb fills the user
    cgroup, a command is run and then `kill -9 -1` ends the bomb from inside."""
    out = BombOutcome()
    s = _create(paddock)
    paths = cgroup_paths(s)
    pids_dir = host_cgroup_file(paths, "pids", "pids.max")
    assert pids_dir is not None, paths
    out.pids_max = pids_dir.read_text().strip()
    user_current = pids_dir.parent / "user" / "pids.current"
    if not user_current.exists():
        pytest.skip("no user cgroup on this host (cgroup v2 has no split yet: docs/security.md)")
    user_max = int((pids_dir.parent / "user" / "pids.max").read_text())
    events = host_cgroup_file(paths, "pids", "pids.events")
    current = host_cgroup_file(paths, "pids", "pids.current")
    oom = host_cgroup_file(paths, "memory", "memory.oom_control")
    user_oom = oom.parent / "user" / "memory.oom_control" if oom else None
    failcnt = host_cgroup_file(paths, "memory", "memory.failcnt")
    stop = threading.Event()

    def user_is_full() -> bool:
        """At its pids limit, or its memory limit (the OOM killer at work in the last second;
        on a sandbox of the default size a bomb of small processes runs out of memory first)."""
        if int(user_current.read_text()) + RESCUE_BELOW_FREE > user_max:
            return True
        before = read_counter(user_oom, "oom_kill")
        time.sleep(1)
        return read_counter(user_oom, "oom_kill") > before

    def watch():
        while not stop.is_set():
            try:
                out.pids_peak = max(out.pids_peak, int(current.read_text()))
                out.pids_max_events = max(out.pids_max_events, read_counter_with_user(events, "max"))
                out.oom_kills = max(out.oom_kills, read_counter_with_user(oom, "oom_kill"))
                out.mem_failcnt = max(out.mem_failcnt, int(failcnt.read_text()) if failcnt else 0)
            except (OSError, ValueError, AttributeError):
                pass
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        s.commands.run("timeout -s KILL 60 bash -c ':(){ :|:& };:'", user="root", background=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not out.user_full:
            out.user_full = user_is_full()
        # While the bomb runs: envd starts the command in the rescue cgroup, where it has tasks,
        # memory and CPU of its own, so it answers (pipes and all) ...
        out.answer = run(s, "echo alive; grep -o 'pids:.*' /proc/self/cgroup | head -1; ls / | grep -c etc", timeout=20)
        out.still_full_after = user_is_full()
        # ... and root ends the bomb from inside (a shell builtin needs no fork), after which the
        # sandbox works normally again.
        out.ended = run(s, "kill -9 -1; echo ended", timeout=20)
        time.sleep(1)
        r = run(s, "ls / | grep -c etc")
        out.recovered = r.exit_code == 0 and r.stdout.strip() == "1"
        if not out.recovered:
            out.errors.append(f"after kill -9 -1: {r}")
    except Exception as e:  # noqa: BLE001 - recorded and asserted on below
        out.errors.append(f"{type(e).__name__}: {e}")
    stop.set()
    watcher.join()
    out.host_ok = requests.get(paddock.api_url + "/health", timeout=10).status_code == 200 and (
        subprocess.run(["true"], timeout=10).returncode == 0
    )
    out.neighbour_ok = neighbour.commands.run("echo n").stdout == "n\n"
    yield out
    try:
        s.kill()
    except Exception:  # noqa: BLE001 - may already be gone
        pass


def test_fork_bomb_is_contained(fork_bomb):
    assert fork_bomb.pids_max == "4096", fork_bomb
    assert fork_bomb.pids_peak <= 4096, fork_bomb
    # The bomb hit a limit of its own cgroup (pids or memory), never the host's.
    assert fork_bomb.user_full, fork_bomb
    assert fork_bomb.pids_max_events > 0 or fork_bomb.oom_kills > 0, fork_bomb
    assert fork_bomb.host_ok and fork_bomb.neighbour_ok, fork_bomb


def test_fork_bomb_can_be_ended_from_inside(fork_bomb):
    # A command answers while the bomb fills the user cgroup: it runs in the rescue cgroup.
    assert not fork_bomb.errors, fork_bomb
    a = fork_bomb.answer
    assert a is not None and a.exit_code == 0, fork_bomb
    assert a.stdout == "alive\npids:/rescue\n1\n", fork_bomb
    assert fork_bomb.still_full_after, fork_bomb
    assert fork_bomb.ended is not None and fork_bomb.ended.stdout == "ended\n", fork_bomb
    assert fork_bomb.recovered, fork_bomb


def test_memory_bomb_is_killed(new_sandbox, paddock):
    s = new_sandbox(timeout=300)
    oom = host_cgroup_file(cgroup_paths(s), "memory", "memory.oom_control")
    before = read_counter_with_user(oom, "oom_kill")
    hog = "b = bytearray(2048 * 1024 * 1024)\nb[::4096] = b'x' * len(b[::4096])\nprint('survived')\n"
    r = run_python(s, hog, timeout=120)
    # envd reports a death by signal like E2B's envd: exit code -1, "signal: killed".
    assert r.exit_code == -1 and (r.error or "").startswith("signal: killed") and "survived" not in r.stdout, r
    assert read_counter_with_user(oom, "oom_kill") > before
    assert s.commands.run("echo alive").stdout == "alive\n"
    assert requests.get(paddock.api_url + "/health", timeout=10).status_code == 200


def test_disk_fill_keeps_sandbox_and_host_alive(victim, paddock):
    r = run(victim, "fallocate -l 1G /tmp/fill && dd if=/dev/zero of=/tmp/fill2 bs=1M count=64 status=none && du -sm /tmp/fill")
    try:
        assert r.exit_code == 0, r  # 1 GiB fits in the sandbox's 10 GiB disk
        assert victim.commands.run("echo alive").stdout == "alive\n"
        assert requests.get(paddock.api_url + "/health", timeout=10).status_code == 200
    finally:
        assert run(victim, "rm -f /tmp/fill /tmp/fill2").exit_code == 0


DEFAULT_DISK = 10240 * 1024 * 1024  # Resources::default().disk_mb


def test_disk_quota_enforced(victim, paddock):
    # The sandbox's / is its own disk of the template's size, not the host's file system.
    inside = run(victim, "df -B1 --output=size / | tail -1")
    size = int(inside.stdout)
    host = os.statvfs(paddock.data_dir)
    assert size != host.f_blocks * host.f_frsize, "sandbox sees the host filesystem"
    assert DEFAULT_DISK * 0.9 < size <= DEFAULT_DISK, size
    host_free = host.f_bavail * host.f_frsize

    # More than the disk at once: refused.
    r = run(victim, "fallocate -l 11G /big; rc=$?; rm -f /big; exit $rc")
    assert r.exit_code == 1 and "No space left on device" in r.stderr, r
    # Filling it: take all but 32 MiB (instant), then write until the disk is full.
    fill = ("avail=$(df -B1 --output=avail / | tail -1); fallocate -l $((avail - 33554432)) /big && "
            "dd if=/dev/zero of=/fill bs=1M status=none")
    r = run(victim, fill, timeout=120)
    assert r.exit_code == 1 and "No space left on device" in r.stderr, r
    assert int(run(victim, "df -B1 --output=avail / | tail -1").stdout) < 1024 * 1024
    # The host only lost what was written, never more than the quota.
    after = os.statvfs(paddock.data_dir)
    assert host_free - after.f_bavail * after.f_frsize <= DEFAULT_DISK
    assert requests.get(paddock.api_url + "/health", timeout=10).status_code == 200

    # Deleting frees the disk: the sandbox can write again.
    r = run(victim, "rm -f /big /fill && echo written > /after && cat /after && rm /after")
    assert r.exit_code == 0 and r.stdout == "written\n", r
    assert victim.commands.run("echo alive").stdout == "alive\n"


def test_fd_exhaustion_is_per_process(victim, paddock):
    src = "import errno, os\nn = 0\ntry:\n    while True:\n        os.open('/dev/null', os.O_RDONLY); n += 1\nexcept OSError as e:\n    print(errno.errorcode[e.errno], n)\n"
    r = run_python(victim, src, timeout=120)
    code, n = r.stdout.split()
    assert code == "EMFILE" and int(n) > 1000, r
    # The hard limit cannot be raised (no CAP_SYS_RESOURCE).
    r = run_python(victim, "import resource\ntry:\n    resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20)); print('raised')\nexcept (ValueError, OSError) as e:\n    print('denied')\n")
    assert r.stdout.strip() == "denied", r
    assert victim.commands.run("echo alive").stdout == "alive\n"


# ---------------------------------------------------------------- after everything (keep last)


def test_zz_host_and_neighbour_still_work(neighbour, paddock):
    assert requests.get(paddock.api_url + "/health", timeout=10).status_code == 200
    assert neighbour.commands.run("echo still-here").stdout == "still-here\n"
    assert neighbour.commands.run("ps -e | wc -l").exit_code == 0
