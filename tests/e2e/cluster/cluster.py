"""A Paddock cluster on one host for end-to-end tests: one `paddock api`, N `paddock node`
(each with its own data dir, so its own cgroup subtree and network slice) and one
`paddock proxy`, all on loopback. Owns the processes, their data dirs and logs.

Environment: PADDOCK_BIN, PADDOCK_TEMPLATES_DIR as for the single-server suite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from paddock_server import (  # noqa: E402
    DEFAULT_BIN,
    DEFAULT_TEMPLATES_DIR,
    free_port,
    parse_exports,
    wait_for,
)

ADMIN_TOKEN = "e2e-admin-token"


class Proc:
    def __init__(self, name: str, args: List[str], log: Path, env: Optional[Dict[str, str]] = None):
        self.name, self.args, self.log = name, args, log
        self.env = env or {}
        self.p: Optional[subprocess.Popen] = None

    def start(self) -> "Proc":
        out = open(self.log, "ab")
        self.p = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=out,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info"), **self.env},
        )
        return self

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def kill9(self) -> None:
        assert self.p is not None
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int:
        if self.p is None:
            return 0
        if self.p.poll() is not None:
            # Ended before (a test killed it on purpose and started a new one in its place).
            return 0 if self.p.returncode == -signal.SIGKILL else self.p.returncode
        self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return self.p.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(text[-lines:])


class Cluster:
    """`seeded` nodes start with `base` (from the shared cache); the others start without it
    and receive it from the cluster (base is built once per cluster). With `system_templates`,
    the seeded nodes also start with `code-interpreter-v1` (from the shared cache, where
    `paddock template prepare` put it) and the control plane keeps it (builds it if no node has
    it); without, the control plane runs with `--no-system-templates`."""

    def __init__(self, nodes: int = 3, lost_after: int = 15, seeded: int = 1,
                 system_templates: bool = False, otlp_endpoint: Optional[str] = None):
        self.bin = Path(os.environ.get("PADDOCK_BIN", DEFAULT_BIN))
        self.templates = Path(os.environ.get("PADDOCK_TEMPLATES_DIR", DEFAULT_TEMPLATES_DIR))
        self.dir = Path(tempfile.mkdtemp(prefix="paddock-cluster-"))
        self.api_port, self.cluster_port, self.proxy_port = free_port(), free_port(), free_port()
        self.node_names = [f"n{i + 1}" for i in range(nodes)]
        self.node_ports: Dict[str, int] = {n: free_port() for n in self.node_names}
        # `--metrics-listen` of each node and of the proxy.
        self.metrics_ports: Dict[str, int] = {n: free_port() for n in self.node_names + ["proxy"]}
        self.lost_after = lost_after
        self.seeded = set(self.node_names[:seeded])
        self.system_templates = system_templates
        self.api: Optional[Proc] = None
        self.nodes: Dict[str, Proc] = {}
        self.proxy: Optional[Proc] = None
        self.env: Dict[str, str] = {}
        # Every role exports its spans there (OTLP/HTTP), in batches sent every 100 ms.
        self.role_env: Dict[str, str] = {} if otlp_endpoint is None else {
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def token_file(self) -> Path:
        return self.dir / "api" / "join-token"

    def admin(self) -> Dict[str, str]:
        return {"X-Admin-Token": ADMIN_TOKEN}

    def node_templates(self, name: str) -> Path:
        """The node's own templates dir (a node owns its templates dir: it collects layers no
        template of its own names): for a seeded node holding `base` (and with
        `system_templates` `code-interpreter-v1`) from the shared cache (their layers
        hard-linked: layers are never changed in place), for the others empty."""
        own = self.dir / f"{name}-templates"
        if own.exists():
            return own
        own.mkdir()
        if name not in self.seeded:
            return own
        (own / ".layers").mkdir()
        for template in ["base"] + (["code-interpreter-v1"] if self.system_templates else []):
            meta = json.loads((self.templates / template / "template.json").read_text())
            (own / template).mkdir()
            for layer in meta["layers"]:
                if (own / ".layers" / layer).exists():
                    continue
                subprocess.run(
                    ["cp", "-al", str(self.templates / ".layers" / layer), str(own / ".layers" / layer)],
                    check=True,
                )
                # Its id map and, once a node hashed it, its digest (so no node hashes it again).
                for extra in (f".{layer}.idmap", f".{layer}.digest"):
                    if (self.templates / ".layers" / extra).exists():
                        shutil.copy2(self.templates / ".layers" / extra, own / ".layers" / extra)
            shutil.copy2(self.templates / template / "template.json", own / template / "template.json")
        return own

    def node_proc(self, name: str, token_file: Optional[Path] = None) -> Proc:
        args = [
            str(self.bin), "node",
            "--data-dir", str(self.dir / name),
            "--join", f"127.0.0.1:{self.cluster_port}",
            "--token-file", str(token_file or self.token_file),
            "--name", name,
            "--listen", f"127.0.0.1:{self.node_ports[name]}",
            "--metrics-listen", f"127.0.0.1:{self.metrics_ports.setdefault(name, free_port())}",
            "--templates-dir", str(self.node_templates(name)),
            "--warm-pool-size", "1",
        ]
        return Proc(name, args, self.dir / f"{name}.log", self.role_env)

    def restart_api(self) -> None:
        """Stops the control plane (SIGTERM) and starts it again on the same data dir and
        ports."""
        assert self.api is not None
        code = self.api.stop()
        assert code == 0, f"paddock api exited with {code}"
        self._start_api()

    def _start_api(self) -> None:
        self.api = Proc("api", [
            str(self.bin), "api",
            "--data-dir", str(self.dir / "api"),
            "--listen", f"127.0.0.1:{self.api_port}",
            "--cluster-listen", f"127.0.0.1:{self.cluster_port}",
            "--domain", f"localhost:{self.proxy_port}",
            "--admin-token", ADMIN_TOKEN,
            "--node-lost-after", str(self.lost_after),
            *([] if self.system_templates else ["--no-system-templates"]),
        ], self.dir / "api.log", self.role_env).start()
        assert self.api.p is not None and self.api.p.stdout is not None
        exports = ""
        while "E2B_API_KEY" not in exports:
            line = self.api.p.stdout.readline().decode()
            if not line:
                raise RuntimeError("paddock api exited:\n" + self.api.tail())
            exports += line
        self.env = parse_exports(exports)
        self.env["E2B_SANDBOX_URL"] = f"http://127.0.0.1:{self.proxy_port}"
        self.env["E2B_DOMAIN"] = f"localhost:{self.proxy_port}"

    def start(self) -> "Cluster":
        self._start_api()
        wait_for(lambda: self.token_file.exists() and self.token_file.read_text().strip(),
                 "the join token", timeout=30)
        for name in self.node_names:
            self.nodes[name] = self.node_proc(name).start()
        self.proxy = Proc("proxy", [
            str(self.bin), "proxy",
            "--data-dir", str(self.dir / "proxy"),
            "--listen", f"127.0.0.1:{self.proxy_port}",
            "--metrics-listen", f"127.0.0.1:{self.metrics_ports['proxy']}",
            "--join", f"127.0.0.1:{self.cluster_port}",
            "--token-file", str(self.token_file),
        ], self.dir / "proxy.log", self.role_env).start()
        for name in self.node_names:
            self.wait_status(name, "ready", timeout=120)
        wait_for(lambda: self._proxy_up(), "the edge proxy", timeout=30)
        return self

    def metrics(self, role: str) -> str:
        """`GET /metrics` of a node (by name) or of the proxy (`proxy`) on `--metrics-listen`."""
        r = requests.get(f"http://127.0.0.1:{self.metrics_ports[role]}/metrics", timeout=10)
        r.raise_for_status()
        return r.text

    def _proxy_up(self) -> bool:
        try:
            requests.get(f"http://127.0.0.1:{self.proxy_port}/", timeout=2)
            return True
        except requests.RequestException:
            return False

    def nodes_json(self) -> List[dict]:
        r = requests.get(self.api_url + "/nodes", headers=self.admin(), timeout=10)
        r.raise_for_status()
        return r.json()

    def node_json(self, name: str) -> Optional[dict]:
        r = requests.get(f"{self.api_url}/nodes/{name}", headers=self.admin(), timeout=10)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()

    def status(self, name: str) -> Optional[str]:
        node = self.node_json(name)
        return node["status"] if node else None

    def wait_status(self, name: str, status: str, timeout: float = 30) -> None:
        wait_for(lambda: self.status(name) == status, f"node {name} {status}", timeout=timeout)

    def sandboxes_on(self, name: str) -> List[str]:
        node = self.node_json(name)
        return list(node.get("sandboxes") or []) if node else []

    def stop(self) -> List[str]:
        problems = []
        procs = ([self.proxy] if self.proxy else []) + list(self.nodes.values()) + ([self.api] if self.api else [])
        for p in procs:
            code = p.stop()
            if code != 0:
                problems.append(f"{p.name} exited with {code} after SIGTERM (want 0 within 30 s)")
        return problems

    def logs(self) -> str:
        parts = []
        for p in ([self.api] if self.api else []) + list(self.nodes.values()) + ([self.proxy] if self.proxy else []):
            parts.append(f"--- {p.name} ---\n{p.tail(60)}")
        return "\n".join(parts)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_gone(check, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class ClusterAsServer:
    """A cluster with the face of `paddock_server.PaddockServer`, so that the single-server
    suite's SDK tests can run against a cluster unchanged (`PADDOCK_E2E_CLUSTER=1`; see
    tests/e2e/python/conftest.py)."""

    def __init__(self, nodes: int = 3):
        self.cluster = Cluster(nodes=nodes, system_templates=True)
        self.created_ids = set()

    @property
    def api_url(self) -> str:
        return self.cluster.api_url

    @property
    def sandbox_url(self) -> str:
        return self.cluster.env["E2B_SANDBOX_URL"]

    @property
    def api_key(self) -> str:
        return self.cluster.env["E2B_API_KEY"]

    @property
    def log_path(self) -> Path:
        return self.cluster.dir / "api.log"

    def client_env(self) -> Dict[str, str]:
        return {
            "E2B_API_URL": self.api_url,
            "E2B_SANDBOX_URL": self.sandbox_url,
            "E2B_API_KEY": self.api_key,
        }

    def track(self, sandbox_id: str) -> str:
        self.created_ids.add(sandbox_id)
        return sandbox_id

    def start(self, ready_timeout: float = 600.0) -> "ClusterAsServer":
        self.cluster.start()
        return self

    def stop(self, timeout: float = 30.0) -> int:
        return 1 if self.cluster.stop() else 0

    def leaks(self) -> List[str]:
        return []

    def log_tail(self, lines: int = 80) -> str:
        return self.cluster.logs()

    def cleanup(self) -> None:
        self.cluster.cleanup()
