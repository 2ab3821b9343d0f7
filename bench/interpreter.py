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


def use(server: PaddockServer) -> None:
    for key in [k for k in os.environ if k.startswith("E2B_")]:
        del os.environ[key]
    os.environ.update(server.client_env())


def measure(name: str, n: int) -> list:
    from e2b import Sandbox as Plain
    from e2b_code_interpreter import Sandbox

    first = Measurement("create + first run_code", f'`Sandbox.create("{name}")` + `run_code("1+1")`',
                        server="interpreter")
    rt = Measurement("run_code round trip", '`run_code("1+1")` in one live sandbox', server="interpreter")
    stdout = Measurement("1 MB stdout", "`print('x' * 1_000_000)` until the stream ends", server="interpreter")
    png = Measurement("1 MB PNG result", "a 1 MB PNG `display`ed, until the stream ends", server="interpreter")
    base = Measurement("baseline: create + first command", '`Sandbox.create()` (base) + `commands.run("true")`',
                       server="plain sandbox")

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

    for _ in range(2):  # warm-up: connections, both pools' first hand-over
        ci_once()
        plain_once()
    for i in range(n):
        time.sleep(1.0)  # the pools refill between samples
        for m, once in ((first, ci_once), (base, plain_once)) if i % 2 == 0 else ((base, plain_once), (first, ci_once)):
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
    return [first, base, rt, stdout, png]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    name = "code-interpreter-v1"
    notes: list = []
    server = PaddockServer(extra_args=["--warm-pool-template", name, "--warm-pool-template", "base"]).start(
        ready_timeout=600)
    started = time.perf_counter()
    try:
        use(server)
        waited_s = wait_for_template()
        time.sleep(5)  # both pools fill
        rows = measure(name, args.n)
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
        f"prepared); the measuring took {time.perf_counter() - started:.0f} s",
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
