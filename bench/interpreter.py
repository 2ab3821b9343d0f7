"""Code interpreter benchmark (issue 15): what `e2b_code_interpreter` users wait for, beside the
plain sandbox measured in the same run.

Starts `paddock serve` (the shared templates dir) with warm pools of `code-interpreter-v1` (the
template every server makes on its first start; `paddock template prepare` bakes it ahead, as
scripts/test.sh does, else this waits while the server builds it) and of `base`, and measures
with the official SDKs, one client, samples spaced so the pools are full:
  create + first run_code    e2b_code_interpreter `Sandbox.create(t)` + `run_code("1+1")` (n)
  run_code round trip        `run_code("1+1")` in one live sandbox (after 5 not timed; 5n)
  1 MB stdout                `run_code("print('x' * 1_000_000)")` until the stream ends (n/2)
  1 MB PNG result            a 1 MB PNG displayed (`display(Image(data=...))`) (n/2)
  baseline: create + first command
                             e2b `Sandbox.create()` (base) + `commands.run("true")` (n)
and, beside them in the same rounds, the Jupyter recipe this server replaces
(recipes/code-interpreter: Jupyter Server on 8888 with the same IPython kernel, built as
`bench-jupyter` through `paddock template build` at the start of the run and deleted after, from the build cache after the first run;
its warm pool fills after the first create), driven over Jupyter's REST and WebSocket API
through Paddock's proxy (E2B's SDK does not speak it; tornado's WebSocket client, from the
venv's ipykernel):
  Jupyter: create + first execution
                             `Sandbox.create("code-interpreter")` + `POST /api/kernels` +
                             `execute_request` "1+1" until the reply and idle (n)
  Jupyter: execution round trip
                             `execute_request` "1+1" on one open kernel WebSocket (5n)
Prints p50/p95/p99; `--write` replaces the "## Code interpreter" section of docs/benchmarks.md.
Numbers are reported, never asserted.

Usage: bench/interpreter.py [-n 20] [--write] with the venv's python (scripts/test.sh's, which
has e2b and e2b-code-interpreter), after scripts/setup.sh built paddock and paddock-interpreter.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import asyncio
import json
import subprocess
import uuid
from typing import Optional, Tuple

import requests

from bench import HEADER, REPO, Measurement, machine, render_table, stop_server
from docsections import INTERPRETER_TITLE as TITLE
from docsections import replace
from paddock_server import PaddockServer


def wait_for_template(timeout: float = 900) -> float:
    """Seconds until `code-interpreter-v1` takes creates (503 "not ready yet" while it builds)."""
    from e2b import SandboxException
    from e2b_code_interpreter import Sandbox

    started = time.perf_counter()
    while True:
        try:
            Sandbox.create(timeout=60).kill()
            return time.perf_counter() - started
        except SandboxException as e:
            if "not ready yet" not in str(e) or time.perf_counter() - started > timeout:
                raise
            time.sleep(5)


JUPYTER = "bench-jupyter"  # built from recipes/code-interpreter, deleted at the end
JUPYTER_RECIPE = REPO / "recipes" / "code-interpreter"


def build_jupyter(server: PaddockServer) -> Tuple[float, Optional[str]]:
    """Builds the Jupyter recipe through the CLI: (seconds, None) or (seconds, why it failed)."""
    if (server.templates_dir / JUPYTER).exists():
        # Left by an interrupted run: a fresh server refuses to build over a template it did not build.
        subprocess.run([str(server.binary), "template", "delete", JUPYTER, "--templates-dir",
                        str(server.templates_dir)], capture_output=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    env.update(server.client_env())
    started = time.perf_counter()
    r = subprocess.run([str(server.binary), "template", "build", "--name", JUPYTER,
                        "-f", str(JUPYTER_RECIPE / "Dockerfile"), str(JUPYTER_RECIPE)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    took = time.perf_counter() - started
    if r.returncode != 0:
        return took, f"`paddock template build` of {JUPYTER} exited with {r.returncode}: {r.stderr.strip()[-500:]}"
    return took, None


class JupyterKernel:
    """One IPython kernel of a sandbox's Jupyter Server, reached through Paddock's proxy."""

    def __init__(self, server: PaddockServer, sbx) -> None:
        self.base = server.sandbox_url
        self.host = sbx.get_host(8888)
        self.session = uuid.uuid4().hex
        self.loop = asyncio.new_event_loop()
        self.ws = None

    def start(self) -> None:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        r = requests.post(self.base + "/api/kernels", headers={"Host": self.host}, json={"name": "python3"},
                          timeout=60)
        r.raise_for_status()
        url = self.base.replace("http://", "ws://") + f"/api/kernels/{r.json()['id']}/channels"
        request = HTTPRequest(url, headers={"Host": self.host}, request_timeout=60)
        async def connect():
            return await websocket_connect(request)

        self.ws = self.loop.run_until_complete(connect())

    def execute(self, code: str) -> Optional[str]:
        """Runs `code`; the `text/plain` of its result once the reply and idle both came."""
        return self.loop.run_until_complete(asyncio.wait_for(self._execute(code), 60))

    async def _execute(self, code: str) -> Optional[str]:
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "username": "bench", "session": self.session,
                  "msg_type": "execute_request", "version": "5.3",
                  "date": dt.datetime.now(dt.timezone.utc).isoformat()}
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}
        await self.ws.write_message(json.dumps({"header": header, "parent_header": {}, "metadata": {},
                                                "content": content, "channel": "shell", "buffers": []}))
        result, idle, replied = None, False, False
        while not (idle and replied):
            raw = await self.ws.read_message()
            if raw is None:
                raise RuntimeError("the kernel WebSocket closed")
            if isinstance(raw, bytes):
                continue  # binary frames carry buffers, which "1+1" never has
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "execute_result":
                result = msg["content"]["data"].get("text/plain")
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
            elif kind == "execute_reply":
                replied = True
                if msg["content"].get("status") != "ok":
                    raise RuntimeError(f"execute_reply: {msg['content']}")
        return result

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        self.loop.close()


def use(server: PaddockServer) -> None:
    for key in [k for k in os.environ if k.startswith("E2B_")]:
        del os.environ[key]
    os.environ.update(server.client_env())


def measure(server: PaddockServer, name: str, n: int, jupyter: bool) -> list:
    from e2b import Sandbox as Plain
    from e2b_code_interpreter import Sandbox

    first = Measurement("create + first run_code", f'`Sandbox.create("{name}")` + `run_code("1+1")`',
                        server="interpreter")
    rt = Measurement("run_code round trip", '`run_code("1+1")` in one live sandbox', server="interpreter")
    stdout = Measurement("1 MB stdout", "`print('x' * 1_000_000)` until the stream ends", server="interpreter")
    png = Measurement("1 MB PNG result", "a 1 MB PNG `display`ed, until the stream ends", server="interpreter")
    base = Measurement("baseline: create + first command", '`Sandbox.create()` (base) + `commands.run("true")`',
                       server="plain sandbox")
    j_first = Measurement("Jupyter: create + first execution",
                          f'`Sandbox.create("{JUPYTER}")` + `POST /api/kernels` + execute "1+1"',
                          server="Jupyter recipe")
    j_rt = Measurement("Jupyter: execution round trip", 'execute "1+1" on one open kernel WebSocket',
                       server="Jupyter recipe")

    def ci_once() -> float:
        t = time.perf_counter()
        sbx = Sandbox.create(template=name, timeout=120)
        try:
            r = sbx.run_code("1+1")
            took = (time.perf_counter() - t) * 1000
            if r.text != "2":
                raise RuntimeError(f"run_code answered {r}")
            return took
        finally:
            sbx.kill()

    def plain_once() -> float:
        t = time.perf_counter()
        sbx = Plain.create(timeout=120)
        try:
            sbx.commands.run("true")
            return (time.perf_counter() - t) * 1000
        finally:
            sbx.kill()

    def jupyter_once() -> float:
        t = time.perf_counter()
        sbx = Plain.create(template=JUPYTER, timeout=120)
        kernel = JupyterKernel(server, sbx)
        try:
            kernel.start()
            answer = kernel.execute("1+1")
            took = (time.perf_counter() - t) * 1000
            if answer != "2":
                raise RuntimeError(f"Jupyter answered {answer!r}")
            return took
        finally:
            kernel.close()
            sbx.kill()

    rounds = [(first, ci_once), (base, plain_once)] + ([(j_first, jupyter_once)] if jupyter else [])
    for _ in range(2):  # warm-up: connections, the pools' first hand-over
        for _, once in rounds:
            once()
    for i in range(n):
        time.sleep(1.0)  # the pools refill between samples
        for m, once in rounds[i % len(rounds):] + rounds[:i % len(rounds)]:
            m.record(once)

    sbx = Sandbox.create(template=name, timeout=600)
    try:
        for _ in range(5):
            sbx.run_code("1+1")
        for _ in range(5 * n):
            rt.record(lambda: (sbx.run_code("1+1"), None)[1])
        sbx.run_code("import base64, os\nfrom IPython.display import Image, display\n"
                     "blob = base64.b64decode(base64.b64encode(os.urandom(1_000_000)))\n"
                     "png = b'\\x89PNG\\r\\n\\x1a\\n' + blob")
        for _ in range(max(1, n // 2)):
            def big_stdout() -> None:
                r = sbx.run_code("print('x' * 1_000_000)")
                if sum(len(s) for s in r.logs.stdout) != 1_000_001:
                    raise RuntimeError("stdout cut short")
            stdout.record(big_stdout)

            def big_png() -> None:
                r = sbx.run_code("display(Image(data=png, format='png'))")
                if not r.results or not r.results[0].png or len(r.results[0].png) < 1_300_000:
                    raise RuntimeError(f"no 1 MB png: {r}")
            png.record(big_png)
    finally:
        sbx.kill()
    rows = [first, base, rt, stdout, png]
    if not jupyter:
        return rows
    jsbx = Plain.create(template=JUPYTER, timeout=600)
    kernel = JupyterKernel(server, jsbx)
    try:
        kernel.start()
        for _ in range(5):
            kernel.execute("1+1")
        for _ in range(5 * n):
            j_rt.record(lambda: (kernel.execute("1+1"), None)[1])
    finally:
        kernel.close()
        jsbx.kill()
    return rows + [j_first, j_rt]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--no-jupyter", dest="jupyter", action="store_false",
                    help="skip the Jupyter recipe (its first build downloads ~100 MB of Debian packages)")
    args = ap.parse_args()
    name = "code-interpreter-v1"
    notes: list = []
    server = PaddockServer(extra_args=["--warm-pool-template", name, "--warm-pool-template", "base"]).start(
        ready_timeout=600)
    started = time.perf_counter()
    try:
        use(server)
        waited_s = wait_for_template()
        jupyter_build_s, failed = (0.0, "the Jupyter recipe was skipped (--no-jupyter)")
        if args.jupyter:
            jupyter_build_s, failed = build_jupyter(server)
        if failed:
            notes.append(f"- Jupyter recipe not measured: {failed}")
        time.sleep(5)  # both pools fill
        rows = measure(server, name, args.n, jupyter=not failed)
        if not failed:
            requests.delete(f"{server.api_url}/templates/{JUPYTER}", headers={"X-API-Key": server.api_key},
                            timeout=120)
    finally:
        stop_server(server, "interpreter", notes)
    m = machine()
    table = render_table(rows)
    print(table)
    first, base = rows[0], rows[1]
    lines = [
        f"{TITLE} (issue 15)",
        "",
        "Produced by `bench/interpreter.py -n "
        f"{args.n} --write` (see its docstring): E2B's `e2b_code_interpreter` SDK against "
        "`paddock-interpreter` in the `code-interpreter-v1` template, with warm pools of it and of `base`, "
        "beside a plain sandbox in the same rounds; numbers are measured, never asserted.",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {m['nproc']} CPUs "
        f"({m['cpu']}), {m['memory']} RAM, kernel {m['kernel']}",
        f"- waited {waited_s:.1f} s for the template (built on this server's first start unless "
        f"prepared); the Jupyter recipe's build took {jupyter_build_s:.1f} s (from the build cache "
        f"after a first run); the measuring took {time.perf_counter() - started:.0f} s",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(HEADER) - 2)) + "|",
        *("| " + " | ".join(r.row()) + " |" for r in rows),
        "",
        f"- create + first run_code p50 {first.percentile(50):.2f} ms (target at most 50 ms: "
        f"{'met' if first.samples and first.percentile(50) <= 50 else 'NOT met'}); "
        f"run_code round trip p50 {rows[2].percentile(50):.2f} ms (target at most 5 ms: "
        f"{'met' if rows[2].samples and rows[2].percentile(50) <= 5 else 'NOT met'}); "
        f"the plain sandbox's create + first command p50 {base.percentile(50):.2f} ms in the same rounds",
        *([f"- the Jupyter recipe in the same rounds: create + first execution p50 "
           f"{rows[5].percentile(50):.2f} ms (a kernel started per create), execution round trip p50 "
           f"{rows[6].percentile(50):.2f} ms (over a WebSocket kept open, no SDK)"] if len(rows) > 5 else []),
        *notes,
    ]
    section = "\n".join(lines) + "\n"
    if args.write:
        doc = REPO / "docs" / "benchmarks.md"
        doc.write_text(replace(doc.read_text(), TITLE, section))
        print(f"wrote the code interpreter section of {doc}")
    else:
        print(section)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
