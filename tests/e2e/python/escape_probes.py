"""Probes for the escape-and-abuse suite: run an attack inside a sandbox, report what happened.

Owns: running a command as root without the SDK raising on a non-zero exit (`run`), raw system
calls through `ctypes` inside the sandbox (`raw_syscall`), TCP connect probes from inside
(`connect_from`), a host-side TCP listener that counts who reached it (`HostListener`), the
host's own addresses (`host_addresses`), and the host path of a sandbox's cgroup files
(`host_cgroup_file`). Does not own any verdict: the tests assert on what these return.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from e2b import CommandExitException, Sandbox

CGROUP_ROOT = Path("/sys/fs/cgroup")

# x86_64 system call numbers (asm/unistd_64.h).
NR = {
    "syslog": 103,
    "personality": 135,
    "pivot_root": 155,
    "adjtimex": 159,
    "settimeofday": 164,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "sethostname": 170,
    "iopl": 172,
    "init_module": 175,
    "delete_module": 176,
    "clock_settime": 227,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "clock_adjtime": 305,
    "setns": 308,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "clone3": 435,
    "clone": 56,
}

# Namespace flags for unshare(2)/clone(2).
CLONE_NEW = {
    "user": 0x10000000,
    "mount": 0x00020000,
    "net": 0x40000000,
    "pid": 0x20000000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "cgroup": 0x02000000,
    "time": 0x00000080,
}


@dataclass
class Result:
    """What a command inside the sandbox did."""

    exit_code: int
    stdout: str
    stderr: str
    error: Optional[str] = None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run(sbx: Sandbox, cmd: str, user: str = "root", timeout: float = 60) -> Result:
    """Runs `cmd` in `sbx` (as root by default) and returns its result whatever the exit code."""
    try:
        r = sbx.commands.run(cmd, user=user, timeout=timeout)
        return Result(r.exit_code, r.stdout, r.stderr, r.error)
    except CommandExitException as e:
        return Result(e.exit_code, e.stdout, e.stderr, e.error)


def python_cmd(source: str) -> str:
    """A shell command running `source` with the sandbox's python3, free of quoting problems."""
    encoded = base64.b64encode(source.encode()).decode()
    return f"python3 -c \"import base64; exec(base64.b64decode('{encoded}'))\""


def run_python(sbx: Sandbox, source: str, user: str = "root", timeout: float = 60) -> Result:
    """Runs a python3 program inside `sbx`."""
    return run(sbx, python_cmd(source), user=user, timeout=timeout)


Arg = Union[int, str, bytes, None]

_SYSCALL_SRC = r"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
keep = []
def conv(a):
    if a is None:
        return ctypes.c_void_p(None)
    if isinstance(a, str):
        if a.startswith("@fd:"):
            fd = os.open(a[4:], os.O_RDONLY)
            keep.append(fd)
            return ctypes.c_long(fd)
        if a.startswith("@buf:"):
            b = ctypes.create_string_buffer(int(a[5:]))
            keep.append(b)
            return ctypes.cast(b, ctypes.c_void_p)
        return ctypes.c_char_p(a.encode())
    return ctypes.c_long(a)
nr, args = json.loads(SPEC)
ctypes.set_errno(0)
rc = libc.syscall(ctypes.c_long(nr), *[conv(a) for a in args])
e = ctypes.get_errno()
if rc == 0 and nr == 56:  # a clone that worked: the child must not print a second verdict
    os._exit(0)
print(json.dumps({"rc": rc, "errno": errno.errorcode.get(e, str(e)) if rc < 0 else "",
                  "msg": os.strerror(e) if rc < 0 else ""}))
"""


def raw_syscall(sbx: Sandbox, name: str, *args: Arg, user: str = "root") -> Dict[str, object]:
    """Calls system call `name` inside `sbx` with `ctypes`; returns {rc, errno, msg}.

    Arguments: ints as longs, None as NULL, "@fd:/path" as an fd opened read-only on that path,
    "@buf:N" as a zeroed N-byte buffer, other strings as C strings.
    """
    spec = json.dumps([NR[name], list(args)])
    result = run_python(sbx, f"SPEC = {spec!r}\n" + _SYSCALL_SRC, user=user)
    assert result.exit_code == 0, f"probe for {name} crashed: {result.output}"
    return json.loads(result.stdout.strip().splitlines()[-1])


_CONNECT_SRC = r"""
import errno, json, socket, threading
out = {}
def probe(host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, port))
        out[f"{host}:{port}"] = "connected"
    except socket.timeout:
        out[f"{host}:{port}"] = "ETIMEDOUT"
    except OSError as e:
        out[f"{host}:{port}"] = errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
# In parallel: dropped packets make every probe wait for its timeout.
threads = [threading.Thread(target=probe, args=t) for t in TARGETS]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(out))
"""


def connect_from(sbx: Sandbox, targets: Iterable[Tuple[str, int]]) -> Dict[str, str]:
    """TCP connects from inside `sbx`; maps "host:port" to "connected" or the errno name."""
    src = f"TARGETS = {json.dumps(list(targets))}\n" + _CONNECT_SRC
    result = run_python(sbx, src, timeout=120)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def host_addresses() -> List[str]:
    """Every IPv4/IPv6 address on the host's interfaces (IPv6 link-local ones left out:
    they need a scope id that means nothing inside another network namespace)."""
    out = subprocess.run(["ip", "-j", "addr"], check=True, capture_output=True, text=True).stdout
    found = []
    for link in json.loads(out):
        for info in link.get("addr_info", []):
            addr = info.get("local", "")
            if addr and not addr.lower().startswith("fe80:"):
                found.append(addr)
    return found


def sandbox_addresses(sbx: Sandbox) -> List[str]:
    """Every address on the sandbox's interfaces, as its own `ip -j addr` reports them."""
    result = run(sbx, "ip -j addr")
    assert result.exit_code == 0, result.output
    return [
        info["local"]
        for link in json.loads(result.stdout)
        for info in link.get("addr_info", [])
        if info.get("local") and not info["local"].lower().startswith("fe80:")
    ]


class HostListener:
    """A TCP server on the host bound to 0.0.0.0 (and [::] if possible) on one port, counting
    every connection it accepts and from where. Use as a context manager."""

    def __init__(self) -> None:
        self.accepted: List[str] = []
        self._socks: List[socket.socket] = []
        self._threads: List[threading.Thread] = []
        self._stop = threading.Event()
        self.port = 0

    def __enter__(self) -> "HostListener":
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        v4.bind(("0.0.0.0", 0))
        self.port = v4.getsockname()[1]
        self._socks.append(v4)
        try:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            v6.bind(("::", self.port))
            self._socks.append(v6)
        except OSError:
            pass
        for s in self._socks:
            s.listen(64)
            s.settimeout(0.2)
            t = threading.Thread(target=self._serve, args=(s,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _serve(self, s: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = s.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted.append(str(peer[0]))
            conn.close()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        for s in self._socks:
            s.close()


def cgroup_paths(sbx: Sandbox) -> Dict[str, str]:
    """controller -> host cgroup path of the sandbox's PID 1 (envd), read on the host: the
    sandbox has a cgroup namespace of its own, so its /proc/1/cgroup shows only `/`."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            text = (pid_dir / "cgroup").read_text()
        except OSError:
            continue
        paths = {}
        for line in text.splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(","):
                paths[c or "unified"] = path
        if any(p.rstrip("/").rsplit("/", 1)[-1].endswith(sbx.sandbox_id) for p in paths.values()):
            return paths
    raise AssertionError(f"no host process in a cgroup of {sbx.sandbox_id}")


def host_cgroup_file(paths: Dict[str, str], controller: str, name: str) -> Optional[Path]:
    """The host path of cgroup file `name` of `controller` (v1 layout first, then cgroup2)."""
    rel = paths.get(controller)
    if rel and rel != "/":
        candidate = CGROUP_ROOT / controller / rel.lstrip("/") / name
        if candidate.exists():
            return candidate
    rel = paths.get("unified")
    if rel and rel != "/":
        for base in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
            candidate = base / rel.lstrip("/") / name
            if candidate.exists():
                return candidate
    return None


def read_counter_with_user(path: Optional[Path], key: str) -> int:
    """`read_counter` of a sandbox cgroup file plus the same file of its `user` child (where
    the node puts the user's processes on cgroup v1; v1 counters do not include children)."""
    if path is None:
        return 0
    return read_counter(path, key) + read_counter(path.parent / "user" / path.name, key)


def read_counter(path: Optional[Path], key: str) -> int:
    """The value of `key` in a flat-keyed cgroup file (e.g. `max 12`), 0 if absent."""
    if path is None:
        return 0
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    except OSError:
        return 0
    return 0


def stat_all_fds(sbx: Sandbox, pid: int) -> Sequence[Dict[str, object]]:
    """For every fd of process `pid` in `sbx`: its link target and whether that path, seen
    from inside the sandbox, is the very same file (same device and inode) as the fd."""
    src = f"PID = {pid}\n" + r"""
import json, os
out = []
base = f"/proc/{PID}/fd"
for n in sorted(os.listdir(base), key=int):
    try:
        target = os.readlink(f"{base}/{n}")
        st = os.stat(f"{base}/{n}")
    except OSError:
        continue
    same = None
    if target.startswith("/"):
        try:
            t = os.stat(target)
            same = (t.st_dev, t.st_ino) == (st.st_dev, st.st_ino)
        except OSError:
            same = False
    out.append({"fd": int(n), "target": target, "same_inside": same})
print(json.dumps(out))
"""
    result = run_python(sbx, src)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
