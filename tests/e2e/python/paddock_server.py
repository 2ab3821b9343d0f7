"""Start and stop a real `paddock serve` for end-to-end tests and the benchmark.

Owns: picking free loopback ports, the server's temporary data dir and log file, waiting for
`GET /health`, parsing the `export E2B_...` lines, a clean SIGTERM shutdown, and the leak checks
done after it (mounts under the data dir, cgroups named after sandboxes that were created).
Does not own: anything SDK-specific (see conftest.py) or measurements (see bench/bench.py).

Environment:
  PADDOCK_BIN            the binary (default <repo>/target/release/paddock)
  PADDOCK_TEMPLATES_DIR  the templates dir (default /var/cache/paddock/templates)
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

import requests

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_BIN = REPO_ROOT / "target" / "release" / "paddock"
DEFAULT_TEMPLATES_DIR = Path("/var/cache/paddock/templates")
CGROUP_ROOT = Path("/sys/fs/cgroup")

_EXPORT_RE = re.compile(r"^\s*export\s+(E2B_[A-Z_]+)=(.*?)\s*$")


class ServerError(RuntimeError):
    """The server failed to start, stop cleanly, or left something behind."""


def wait_for(check: Callable[[], object], what: str, timeout: float = 20.0, interval: float = 0.1):
    """Calls `check()` until it returns something truthy and returns that; raises
    AssertionError (a test failure) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def parse_exports(text: str) -> Dict[str, str]:
    """The `export E2B_X=value` lines in a server's output, as a dict (last one wins)."""
    found: Dict[str, str] = {}
    for line in text.splitlines():
        m = _EXPORT_RE.match(line)
        if m:
            found[m.group(1)] = _unquote(m.group(2))
    return found


def mounts_under(prefix: Path) -> List[str]:
    """Mount points in this mount namespace at or below `prefix`."""
    prefix_s = str(prefix).rstrip("/")
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 5:
                continue
            # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
            if point == prefix_s or point.startswith(prefix_s + "/"):
                found.append(point)
    return found


def paddock_cgroup_dirs() -> List[Path]:
    """Every cgroup directory below a `paddock` cgroup, on v1 controllers and on v2."""
    roots = [CGROUP_ROOT / "paddock", CGROUP_ROOT / "unified" / "paddock"]
    if CGROUP_ROOT.is_dir():
        roots += [p / "paddock" for p in CGROUP_ROOT.iterdir() if p.is_dir()]
    dirs: List[Path] = []
    for root in dict.fromkeys(roots):
        if not root.is_dir():
            continue
        for dirpath, dirnames, _ in os.walk(root):
            dirs += [Path(dirpath) / d for d in dirnames]
    return dirs


def leaked_cgroups(sandbox_ids: Set[str]) -> List[str]:
    """cgroup directories whose name contains the id of one of `sandbox_ids`."""
    if not sandbox_ids:
        return []
    return sorted(
        str(d) for d in paddock_cgroup_dirs() if any(sid in d.name for sid in sandbox_ids)
    )


@dataclass
class PaddockServer:
    """One `paddock serve` process with its own data dir, ports and API key.

    Lifecycle: `start()` -> use `api_url`, `sandbox_url`, `api_key` -> `stop()` (SIGTERM, exit
    code 0 within 30 s) -> `leaks()` (must be empty) -> `cleanup()` (removes the data dir).
    Record every sandbox id a client creates with `track()` so `leaks()` can look for them.
    """

    binary: Path = field(default_factory=lambda: Path(os.environ.get("PADDOCK_BIN", DEFAULT_BIN)))
    templates_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("PADDOCK_TEMPLATES_DIR", DEFAULT_TEMPLATES_DIR))
    )
    api_key: str = field(default_factory=lambda: "e2b_" + secrets.token_hex(20))
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="paddock-e2e-")))
    api_port: int = field(default_factory=free_port)
    proxy_port: int = field(default_factory=free_port)
    # Extra `paddock serve` flags, appended to the command (e.g. `["--network", "none"]`).
    extra_args: List[str] = field(default_factory=list)
    # Set when the extra args make the server serve HTTPS (`--tls-cert`/`--tls-key`): the
    # readiness probe then speaks TLS (without checking the certificate, whose names need not
    # resolve here), and `ready_exports` are the export lines to wait for.
    https: bool = False
    ready_exports: Tuple[str, ...] = ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY")
    created_ids: Set[str] = field(default_factory=set)
    exports: Dict[str, str] = field(default_factory=dict)
    proc: Optional[subprocess.Popen] = None
    exit_code: Optional[int] = None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-{self.api_port}.log"

    @property
    def api_url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.api_port}"

    @property
    def sandbox_url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.proxy_port}"

    @property
    def _scheme(self) -> str:
        return "https" if self.https else "http"

    def track(self, sandbox_id: str) -> str:
        """Remember a sandbox id for the leak check; returns it."""
        self.created_ids.add(sandbox_id)
        return sandbox_id

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def client_env(self) -> Dict[str, str]:
        """The three variables that point an E2B SDK at this server."""
        return {
            "E2B_API_URL": self.api_url,
            "E2B_SANDBOX_URL": self.sandbox_url,
            "E2B_API_KEY": self.api_key,
        }

    def start(self, ready_timeout: float = 600.0) -> "PaddockServer":
        if self.proc is not None:
            raise ServerError("server already started")
        if not self.binary.is_file():
            raise ServerError(
                f"paddock binary not found at {self.binary} "
                "(build it with `cargo build --release -p paddock-cli` or set PADDOCK_BIN)"
            )
        self.templates_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
        env["PADDOCK_API_KEY"] = self.api_key
        env.setdefault("RUST_LOG", "info")
        cmd = [
            str(self.binary),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"127.0.0.1:{self.api_port}",
            "--proxy-listen",
            f"127.0.0.1:{self.proxy_port}",
            "--templates-dir",
            str(self.templates_dir),
            *self.extra_args,
        ]
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child keeps writing after we return
        try:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        finally:
            log.close()
        self._wait_ready(ready_timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        healthy = False
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise ServerError(
                    f"paddock serve exited with {code} before it was ready; log tail:\n"
                    + self.log_tail()
                )
            if not healthy:
                try:
                    with warnings.catch_warnings():
                        # The HTTPS probe does not check the certificate on purpose.
                        warnings.simplefilter("ignore")
                        healthy = (
                            requests.get(
                                self.api_url + "/health", timeout=2, verify=not self.https
                            ).status_code
                            == 200
                        )
                except requests.RequestException:
                    healthy = False
            if healthy:
                self.exports = parse_exports(self.log_text())
                if set(self.ready_exports) <= self.exports.keys():
                    return
            time.sleep(0.25)
        if healthy:
            raise ServerError(
                "paddock serve answered /health but never printed its export lines; log tail:\n"
                + self.log_tail()
            )
        raise ServerError(
            f"paddock serve was not healthy within {timeout:.0f} s; log tail:\n" + self.log_tail()
        )

    def crash(self) -> int:
        """SIGKILL, as a crash or an OOM kill would; returns the exit status."""
        if self.proc is None:
            raise ServerError("server was never started")
        self.proc.kill()
        self.exit_code = self.proc.wait()
        return self.exit_code

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code. Kills it (and raises) after `timeout`."""
        if self.proc is None:
            raise ServerError("server was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise ServerError(
                    f"paddock serve did not exit within {timeout:.0f} s of SIGTERM; log tail:\n"
                    + self.log_tail()
                )
        self.exit_code = self.proc.returncode
        return self.exit_code

    def leaks(self) -> List[str]:
        """What a clean shutdown must not leave: mounts under the data dir, sandbox cgroups."""
        found = [f"mount left: {m}" for m in mounts_under(self.data_dir)]
        found += [f"cgroup left: {c}" for c in leaked_cgroups(self.created_ids)]
        return found

    def cleanup(self, keep_data_dir: bool = False) -> None:
        """Removes the data dir and the log (only call after a successful stop)."""
        if not keep_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        try:
            self.log_path.unlink()
        except FileNotFoundError:
            pass
