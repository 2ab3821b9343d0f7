"""Paddock benchmark harness: latency of sandbox create and exec, with runc and fork+exec
baselines measured in the same run on the same rootfs.

Measures (n samples each, n=100; --quick: n=10):
  1. REST create            POST /v2/sandboxes (timed) then DELETE (not timed)
  2. SDK create + first cmd Sandbox.create() + commands.run("true") via the official e2b SDK
  3. exec round trip        commands.run("true") in one live sandbox
  4. baselines              `runc run` of /bin/true on the base template rootfs (read-only),
                            and fork+exec+wait of /bin/true (posix_spawn)

Prints a table (p50/p95/p99/mean, success rate) and the machine, and writes it as markdown to
docs/benchmarks.md (quick mode writes nothing unless --write). Numbers are reported, never
asserted: this is a harness, not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e" / "python"))

import requests  # noqa: E402

from paddock_server import PaddockServer, ServerError  # noqa: E402


@dataclass
class Measurement:
    """Samples of one measured operation, in milliseconds."""

    name: str
    what: str
    samples: List[float] = field(default_factory=list)
    attempts: int = 0
    errors: List[str] = field(default_factory=list)
    note: str = ""

    def record(self, fn: Callable[[], Optional[float]]) -> None:
        """Runs `fn` once; it returns its own elapsed ms (or None to time the whole call)."""
        self.attempts += 1
        started = time.perf_counter()
        try:
            own = fn()
        except Exception as e:  # noqa: BLE001 - a failed sample is counted, not fatal
            if len(self.errors) < 5:
                self.errors.append(f"{type(e).__name__}: {e}"[:300])
            return
        self.samples.append(own if own is not None else (time.perf_counter() - started) * 1000)

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile."""
        ordered = sorted(self.samples)
        rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100)
        return ordered[int(rank) - 1]

    def row(self) -> List[str]:
        rate = f"{len(self.samples)}/{self.attempts}" if self.attempts else "skipped"
        if not self.samples:
            return [self.name, "-", "-", "-", "-", rate]
        return [
            self.name,
            f"{self.percentile(50):.2f}",
            f"{self.percentile(95):.2f}",
            f"{self.percentile(99):.2f}",
            f"{statistics.fmean(self.samples):.2f}",
            rate,
        ]


HEADER = ["measurement", "p50 ms", "p95 ms", "p99 ms", "mean ms", "success"]


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": cpu,
        "memory": _mem_total(),
    }


def _mem_total() -> str:
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        return f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def find_rootfs(templates_dir: Path, template: str = "base") -> Optional[Path]:
    """The template's root filesystem: the directory under it that holds /usr/bin/true."""
    base = templates_dir / template
    candidates = [base / "rootfs", base]
    if base.is_dir():
        candidates += sorted(p for pat in ("*/rootfs", "*/*/rootfs") for p in base.glob(pat) if p.is_dir())
    for c in candidates:
        if (c / "usr" / "bin" / "true").exists() and (c / "etc").is_dir():
            return c
    return None


def bench_rest_create(server: PaddockServer, m: Measurement, n: int) -> None:
    session = requests.Session()
    session.headers["X-API-Key"] = server.api_key

    def once() -> float:
        started = time.perf_counter()
        r = session.post(server.api_url + "/v2/sandboxes", json={"templateID": "base", "timeout": 120}, timeout=60)
        elapsed = (time.perf_counter() - started) * 1000
        if r.status_code != 201:
            raise RuntimeError(f"create answered {r.status_code}: {r.text[:200]}")
        sid = server.track(r.json()["sandboxID"])
        d = session.delete(f"{server.api_url}/sandboxes/{sid}", timeout=60)
        if d.status_code != 204:
            raise RuntimeError(f"delete answered {d.status_code}: {d.text[:200]}")
        return elapsed

    for _ in range(n):
        m.record(once)


def bench_sdk_create_and_run(server: PaddockServer, m: Measurement, n: int) -> None:
    from e2b import Sandbox

    def once() -> float:
        started = time.perf_counter()
        sandbox = Sandbox.create(timeout=120)
        try:
            sandbox.commands.run("true")
            elapsed = (time.perf_counter() - started) * 1000
        finally:
            server.track(sandbox.sandbox_id)
            sandbox.kill()
        return elapsed

    for _ in range(n):
        m.record(once)


def bench_exec(server: PaddockServer, m: Measurement, n: int) -> None:
    from e2b import Sandbox

    sandbox = Sandbox.create(timeout=600)
    server.track(sandbox.sandbox_id)
    try:
        sandbox.commands.run("true")  # warm the connection

        def once() -> None:
            sandbox.commands.run("true")

        for _ in range(n):
            m.record(once)
    finally:
        sandbox.kill()


def bench_runc(rootfs: Optional[Path], m: Measurement, n: int) -> None:
    runc = shutil.which("runc")
    if runc is None:
        m.note = "skipped: runc is not installed"
        return
    if rootfs is None:
        m.note = "skipped: base template rootfs not found"
        return
    bundle = Path(tempfile.mkdtemp(prefix="paddock-bench-runc-"))
    try:
        subprocess.run([runc, "spec"], cwd=bundle, check=True, capture_output=True)
        spec = json.loads((bundle / "config.json").read_text())
        spec["root"] = {"path": str(rootfs), "readonly": True}
        spec["process"]["args"] = ["/bin/true"]
        spec["process"]["terminal"] = False
        (bundle / "config.json").write_text(json.dumps(spec))
        for i in range(n):
            cid = f"paddock-bench-{os.getpid()}-{i}"

            def once() -> None:
                r = subprocess.run(
                    [runc, "run", "--bundle", str(bundle), cid],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=60,
                )
                if r.returncode != 0:
                    subprocess.run([runc, "delete", "--force", cid], capture_output=True)
                    raise RuntimeError(f"runc run exited {r.returncode}: {r.stderr.decode(errors='replace')[:200]}")

            m.record(once)
        m.note = f"rootfs {rootfs}"
    finally:
        shutil.rmtree(bundle, ignore_errors=True)


def bench_fork_exec(m: Measurement, n: int) -> None:
    def once() -> None:
        pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError("/bin/true failed")

    for _ in range(n):
        m.record(once)


def render_markdown(results: List[Measurement], info: dict, n: int, extra: List[str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Produced by `bench/run.sh` (see `bench/bench.py`); numbers are measured, never asserted.",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, kernel {info['kernel']}",
        f"- samples per measurement: {n} (sequential, one at a time)",
        f"- paddock: `{info['paddock']}`, e2b Python SDK {info['e2b']}",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 1)) + "|",
    ]
    for r in results:
        lines.append("| " + " | ".join(r.row()) + " |")
    lines += ["", "What each row measures:", ""]
    for r in results:
        note = f" ({r.note})" if r.note else ""
        lines.append(f"- **{r.name}**: {r.what}{note}")
    for r in results:
        for e in r.errors:
            lines.append(f"- error in {r.name}: `{e}`")
    lines += extra
    return "\n".join(lines) + "\n"


def render_table(results: List[Measurement]) -> str:
    rows = [HEADER] + [r.row() for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    out = []
    for j, row in enumerate(rows):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n=10 and do not write docs/benchmarks.md")
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md even with --quick")
    ap.add_argument("-n", type=int, default=None, help="samples per measurement (default 100, quick 10)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = ap.parse_args()
    n = args.n or (10 if args.quick else 100)
    write = args.write or not args.quick

    results = [
        Measurement("REST create", "`POST /v2/sandboxes` until the 201 arrives (kept-alive HTTP connection; the DELETE after it is not timed)"),
        Measurement("SDK create + first command", '`Sandbox.create()` then `commands.run("true")` with the official Python SDK, including its own connection setup'),
        Measurement("exec round trip", '`commands.run("true")` in one live sandbox through the proxy and envd'),
        Measurement("baseline: runc run /bin/true", "`runc run` of /bin/true on the same base rootfs, read-only (the process spawn of `runc` included)"),
        Measurement("baseline: fork+exec /bin/true", "`posix_spawn` + `waitpid` of /bin/true on the host"),
    ]

    server = PaddockServer()
    for key in [k for k in os.environ if k.startswith("E2B_")]:
        del os.environ[key]
    print(f"starting paddock serve ({server.binary}); the first start builds the base template...", flush=True)
    try:
        server.start(ready_timeout=900)
    except ServerError as e:
        print(e, file=sys.stderr)
        return 1
    os.environ.update(server.client_env())
    extra: List[str] = []
    e2b_version = "unknown"
    try:
        import e2b  # noqa: F401 - imported here so a missing venv fails with a clear message

        from importlib.metadata import version

        e2b_version = version("e2b")
        # Warm-up (not measured): the first sandbox pays for cold caches.
        print("warm-up...", flush=True)
        warm = Measurement("warm-up", "")
        bench_sdk_create_and_run(server, warm, 2)
        if warm.errors:
            print(f"warm-up failed: {warm.errors}", file=sys.stderr)

        steps = [
            (results[0], lambda m: bench_rest_create(server, m, n)),
            (results[1], lambda m: bench_sdk_create_and_run(server, m, n)),
            (results[2], lambda m: bench_exec(server, m, n)),
            (results[3], lambda m: bench_runc(find_rootfs(server.templates_dir), m, n)),
            (results[4], lambda m: bench_fork_exec(m, n)),
        ]
        for m, run in steps:
            print(f"measuring {m.name} (n={n})...", flush=True)
            try:
                run(m)
            except Exception as e:  # noqa: BLE001 - one broken measurement must not hide the others
                m.errors.append(f"{type(e).__name__}: {e}"[:300])
    finally:
        try:
            code = server.stop()
            leaks = server.leaks()
            if code != 0:
                extra.append(f"- note: paddock serve exited with {code} after SIGTERM")
            for leak in leaks:
                extra.append(f"- note: {leak}")
            if code == 0 and not leaks:
                server.cleanup()
            else:
                print(f"server log kept at {server.log_path}", file=sys.stderr)
        except ServerError as e:
            extra.append(f"- note: {e.args[0].splitlines()[0]}")

    try:
        paddock_version = subprocess.run(
            [str(server.binary), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        paddock_version = "unknown"
    info = {
        **machine(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "paddock": paddock_version,
        "e2b": e2b_version,
    }

    print()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['memory']} RAM, kernel {info['kernel']}")
    print(f"samples per measurement: {n}")
    print(render_table(results))
    for m in results:
        if m.note:
            print(f"  {m.name}: {m.note}")
        for e in m.errors:
            print(f"  {m.name} error: {e}")
    for line in extra:
        print(line)
    if write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render_markdown(results, info, n, extra))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
