"""Paddock benchmark harness: latency of sandbox create and exec, with runc and fork+exec
baselines measured in the same run on the same rootfs, and what hardening costs the create path.

One run starts three `paddock serve` configurations one after the other (each stopped, and
checked for leaks, before the next starts), in this order:
  1. unhardened                       --unhardened-for-benchmarks --network none
                                      (no user namespace, seccomp, capability cut, /proc masks;
                                      disk quota and cgroups as in the others)
  2. hardened, no network             --network none
  3. hardened + networking (default)  no extra flags (pooled netns + veth + nftables)
The default server runs last so that its background work (network pool refills, slot teardown)
cannot bleed into the other configurations; `--configs` picks a subset (e.g. `--configs default`).

Measures (n samples each, n=100; --quick: n=10), after the same warm-up on every server:
  1. REST create            POST /v2/sandboxes (timed) then DELETE (not timed)      per server
  2. SDK create + first cmd Sandbox.create() + commands.run("true") via the official
                            e2b SDK                                                 per server
  3. exec round trip        commands.run("true") in one live sandbox          default server only
     pause / resume          sandbox.pause() and Sandbox.connect() of one sandbox, idle and with
                            256 MiB of touched memory                         default server only
     pause to disk /        sandbox.pause(mode="filesystem") and Sandbox.connect() (a new boot
     resume from disk       on the kept files), idle and with 256 MiB touched default server only
  4. snapshots and forks    (n_heavy samples: 20; --quick: 3)                 default server only
     snapshot, 1 / 100 MiB  create_snapshot() of a fresh sandbox that wrote 1 or 100 MiB to a
     written                file; the new layer's size comes from the server log (size_bytes)
     create from snapshot   Sandbox.create(template=snapshot_id) + commands.run("true")
     fork x1 / x10          sandbox.fork(count=1 or 10) of a parent that wrote 10 MiB, until all
                            children run (each then answers commands.run("true"), not timed)
  5. baselines              `runc run` of /bin/true on the base template rootfs (read-only),
                            and fork+exec+wait of /bin/true (posix_spawn)     once, default server up
  6. template builds        bench/templates.py, on one more default server after the others:
                            cold, cached and changed builds of an SDK recipe, creates from the built
                            template, and (not in --quick) recipes/code-interpreter; `--parts` picks
                            sandboxes (1-5) and/or templates
Every sandbox and snapshot a row makes is removed in that row, failed or not; a sweep at the
end kills and deletes whatever is left (and says so), since snapshots live in the shared
templates dir and would outlive the server.

Prints a table (p50/p95/p99/mean, success rate) and the machine, plus the hardening cost (p50
and p99 of configurations 2 and 3 as ratios of configuration 1), and writes them as markdown to
docs/benchmarks.md (quick mode writes nothing unless --write). Numbers are reported, never
asserted: this is a harness, not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e" / "python"))

import requests  # noqa: E402

from paddock_server import DEFAULT_BIN, PaddockServer, ServerError  # noqa: E402


@dataclass
class Measurement:
    """Samples of one measured operation, in milliseconds."""

    name: str
    what: str
    server: str = "-"
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
            return [self.name, self.server, "-", "-", "-", "-", rate]
        return [
            self.name,
            self.server,
            f"{self.percentile(50):.2f}",
            f"{self.percentile(95):.2f}",
            f"{self.percentile(99):.2f}",
            f"{statistics.fmean(self.samples):.2f}",
            rate,
        ]


HEADER = ["measurement", "server", "p50 ms", "p95 ms", "p99 ms", "mean ms", "success"]


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
    """The template's root filesystem: the directory that holds /usr/bin/true. A template of
    one layer (`layers` in its template.json) has it at `<templates_dir>/.layers/<id>`; older
    stores kept it under the template's own directory."""
    base = templates_dir / template
    candidates = []
    try:
        layers = json.loads((base / "template.json").read_text()).get("layers") or []
    except (OSError, ValueError, AttributeError):
        layers = []
    if len(layers) == 1 and isinstance(layers[0], str):
        candidates.append(templates_dir / ".layers" / layers[0])
    candidates += [base / "rootfs", base]
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


TOUCH_SRC = (
    "import time\n"
    "b = bytearray({mib} << 20)\n"
    "b[::4096] = b'x' * len(b[::4096])\n"
    "open('/tmp/touched', 'w').write('ok')\n"
    "time.sleep(100000)\n"
)


def start_touching(sandbox, mib: int) -> None:
    """Starts a process in `sandbox` that holds `mib` MiB of touched memory; returns once every
    page is touched (the process writes /tmp/touched, removed first)."""
    sandbox.files.write("/tmp/touch.py", TOUCH_SRC.format(mib=mib))
    sandbox.commands.run("rm -f /tmp/touched && exec python3 /tmp/touch.py", background=True)
    deadline = time.monotonic() + 60
    while not sandbox.files.exists("/tmp/touched"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"touching {mib} MiB did not finish")
        time.sleep(0.1)


def bench_pause_resume(server: PaddockServer, pause_m: Measurement, resume_m: Measurement, n: int, touch_mib: int) -> None:
    """`pause()` then `Sandbox.connect()` (which resumes) of one sandbox, n times; with
    `touch_mib` a process holding that much touched memory runs inside."""
    from e2b import Sandbox

    sandbox = Sandbox.create(timeout=600)
    server.track(sandbox.sandbox_id)
    try:
        if touch_mib:
            start_touching(sandbox, touch_mib)
        for _ in range(n):
            pause_m.record(lambda: (sandbox.pause(), None)[1])
            resume_m.record(lambda: (Sandbox.connect(sandbox.sandbox_id, timeout=600), None)[1])
        r = sandbox.commands.run("cat /tmp/touched" if touch_mib else "true")
        if r.exit_code != 0:
            raise RuntimeError("the sandbox did not work after the cycles")
    finally:
        sandbox.kill()


def bench_pause_to_disk(
    server: PaddockServer, pause_m: Measurement, resume_m: Measurement, n: int, touch_mib: int
) -> None:
    """`pause(mode="filesystem")` then `Sandbox.connect()` (a new boot on the kept files) of one
    sandbox, n times; with `touch_mib` a process holding that much touched memory is started
    (not timed) before every pause, since the pause ends it."""
    from e2b import Sandbox

    sandbox = Sandbox.create(timeout=600)
    server.track(sandbox.sandbox_id)
    try:
        sandbox.files.write("/home/user/kept.txt", "kept across pauses to disk")

        def pause() -> None:
            if sandbox.pause(mode="filesystem") is not True:
                raise RuntimeError("pause(mode='filesystem') did not pause the sandbox")

        def resume() -> None:
            Sandbox.connect(sandbox.sandbox_id, timeout=600)

        for _ in range(n):
            if touch_mib:
                start_touching(sandbox, touch_mib)
            paused = len(pause_m.samples)
            pause_m.record(pause)
            if len(pause_m.samples) > paused:
                resume_m.record(resume)
            else:
                # Whatever state the failed pause left, start the sandbox for the next round.
                Sandbox.connect(sandbox.sandbox_id, timeout=600)
        r = sandbox.commands.run("cat /home/user/kept.txt")
        if r.stdout != "kept across pauses to disk":
            raise RuntimeError(f"the sandbox lost its file across pauses to disk: {r.stdout!r}")
    finally:
        sandbox.kill()


# `paddock serve` logs one line per snapshot, e.g.
# `... snapshot created sandbox_id=... snapshot=<name> size_bytes=<allocated bytes of the layer>`
# and one per fork: `... sandbox forked sandbox_id=<parent> count=N ok=N layer_bytes=.. copy_ms=..`.
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


def log_events(server: PaddockServer, message: str) -> List[Dict[str, str]]:
    """The key=value fields of the server's log lines with `message`, oldest first. The server
    logs synchronously, so a line is in the file before the HTTP answer that follows it."""
    events = []
    for line in server.log_text().splitlines():
        line = ANSI_RE.sub("", line)
        if f" {message} " not in line + " ":
            continue
        events.append(dict(re.findall(r"(\w+)=(\S+)", line.split(f" {message}", 1)[1])))
    return events


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def median(values: List[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_blob(sandbox, mib: int, path: str) -> None:
    """Writes `mib` MiB of random bytes (nothing the disk could compress or leave sparse)."""
    sandbox.commands.run(f"head -c {mib}M /dev/urandom > {path} && test $(stat -c %s {path}) -eq {mib << 20}")


def delete_snapshot(snapshot_id: str, m: Measurement) -> None:
    """Deletes a snapshot; a failure is reported on `m` (the sweep at the end retries)."""
    from e2b import Sandbox

    try:
        if not Sandbox.delete_snapshot(snapshot_id):
            m.errors.append(f"cleanup: snapshot {snapshot_id} was not found to delete")
    except Exception as e:  # noqa: BLE001 - cleanup reports, it must not hide the measurement
        m.errors.append(f"cleanup: deleting {snapshot_id}: {type(e).__name__}: {e}"[:300])


def kill_sandbox(sandbox, m: Measurement) -> None:
    try:
        sandbox.kill()
    except Exception as e:  # noqa: BLE001 - cleanup reports, it must not hide the measurement
        m.errors.append(f"cleanup: killing {sandbox.sandbox_id}: {type(e).__name__}: {e}"[:300])


def bench_snapshot(server: PaddockServer, m: Measurement, n: int, write_mib: int, reference: bool) -> None:
    """`create_snapshot()` of a fresh sandbox that wrote `write_mib` MiB to a file, n times
    (sandbox and snapshot removed after each sample); the note gets the new layers' size from
    the server log, and with `reference` also that of an untouched sandbox's snapshot."""
    from e2b import Sandbox

    tag = secrets.token_hex(3)

    def one(i: int, mib: int, timed: bool) -> Optional[str]:
        """Makes, snapshots and removes one sandbox; the snapshot's name if it was made."""
        sandbox = Sandbox.create(timeout=300)
        server.track(sandbox.sandbox_id)
        made: List[str] = []
        name = f"bench-{tag}-{mib}m-{i}"
        try:
            if mib:
                write_blob(sandbox, mib, "/home/user/blob")

            def snap() -> None:
                made.append(sandbox.create_snapshot(name=name).snapshot_id)

            if timed:
                m.record(snap)
            else:
                snap()
        finally:
            kill_sandbox(sandbox, m)
            for sid in made:
                delete_snapshot(sid, m)
        return name if made else None

    names = [one(i, write_mib, True) for i in range(n)]
    untouched_name = one(0, 0, False) if reference else None
    sizes = {e.get("snapshot"): int(e["size_bytes"]) for e in log_events(server, "snapshot created") if "size_bytes" in e}
    measured = [sizes[name] for name in names if name in sizes]
    if len(measured) < len(m.samples):
        m.errors.append(f"the server log has the size of {len(measured)} of {len(m.samples)} snapshots")
    if measured:
        m.note = (
            f"snapshot size (the new layer on disk, allocated bytes, from the server log) p50: "
            f"{fmt_bytes(median(measured))} for {write_mib} MiB written"
        )
        if untouched_name in sizes:
            m.note += f", {fmt_bytes(sizes[untouched_name])} for an untouched sandbox"


def bench_create_from_snapshot(server: PaddockServer, m: Measurement, n: int, write_mib: int) -> None:
    """`Sandbox.create(template=<snapshot>)` + the first command, n times, from one snapshot of
    a sandbox that wrote `write_mib` MiB; each child must have the file (checked, not timed)."""
    from e2b import Sandbox

    parent = Sandbox.create(timeout=300)
    server.track(parent.sandbox_id)
    snapshot_id: Optional[str] = None
    try:
        write_blob(parent, write_mib, "/home/user/blob")
        snapshot_id = parent.create_snapshot(name=f"bench-{secrets.token_hex(3)}-from").snapshot_id
        # The snapshot does not need its sandbox: the creates run without it alongside.
        kill_sandbox(parent, m)
        parent = None

        def once() -> float:
            started = time.perf_counter()
            child = Sandbox.create(template=snapshot_id, timeout=120)
            try:
                server.track(child.sandbox_id)
                child.commands.run("true")
                elapsed = (time.perf_counter() - started) * 1000
                child.commands.run(f"test $(stat -c %s /home/user/blob) -eq {write_mib << 20}")
            finally:
                kill_sandbox(child, m)
            return elapsed

        for _ in range(n):
            m.record(once)
    finally:
        if parent is not None:
            kill_sandbox(parent, m)
        if snapshot_id is not None:
            delete_snapshot(snapshot_id, m)


def bench_fork(server: PaddockServer, m: Measurement, n: int, count: int, write_mib: int) -> None:
    """`sandbox.fork(count=count)` of one parent that wrote `write_mib` MiB, n times, until all
    children are running; every child then must answer a `commands.run` that checks it has the
    parent's file (not timed), and is killed."""
    from e2b import Sandbox

    parent = Sandbox.create(timeout=600)
    server.track(parent.sandbox_id)
    try:
        write_blob(parent, write_mib, "/home/user/blob")

        def once() -> float:
            started = time.perf_counter()
            results = parent.fork(count=count, timeout=120)
            elapsed = (time.perf_counter() - started) * 1000
            kids = [k for k in results if isinstance(k, Sandbox)]
            try:
                for k in kids:
                    server.track(k.sandbox_id)
                failed = [k for k in results if not isinstance(k, Sandbox)]
                if failed or len(kids) != count:
                    raise RuntimeError(f"{len(kids)} of {count} children started: {failed[:1]}")
                for k in kids:
                    k.commands.run(f"test $(stat -c %s /home/user/blob) -eq {write_mib << 20}")
            finally:
                for k in kids:
                    kill_sandbox(k, m)
            return elapsed

        for _ in range(n):
            m.record(once)
    finally:
        kill_sandbox(parent, m)
    forks = [e for e in log_events(server, "sandbox forked") if e.get("sandbox_id") == parent.sandbox_id]
    copies = [float(e["copy_ms"]) for e in forks if "copy_ms" in e]
    layers = [float(e["layer_bytes"]) for e in forks if "layer_bytes" in e]
    parts = []
    if count > 1 and m.samples:
        parts.append(f"per child p50: {m.percentile(50) / count:.2f} ms (p50 / {count})")
    if copies:
        parts.append(
            f"of which the copy of the parent's layer ({fmt_bytes(median(layers))}) p50: {median(copies):.2f} ms "
            "(server log copy_ms)"
        )
    m.note = "; ".join(parts)


def sweep(server: PaddockServer) -> List[str]:
    """Kills every sandbox and deletes every snapshot this server's team still has (the rows
    clean up after themselves, so anything found here is reported)."""
    from e2b import Sandbox

    found: List[str] = []
    snapshots, sandboxes = [], []
    pages = Sandbox.list_snapshots()
    while pages.has_next:
        snapshots += [s.snapshot_id for s in pages.next_items()]
    pages = Sandbox.list()
    while pages.has_next:
        sandboxes += [s.sandbox_id for s in pages.next_items()]
    for sid in snapshots:
        Sandbox.delete_snapshot(sid)
        found.append(f"snapshot {sid} was left and is now deleted")
    for sid in sandboxes:
        Sandbox.kill(sid)
        found.append(f"sandbox {sid} was left and is now killed")
    return found


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


@dataclass(frozen=True)
class ServerConfig:
    """One `paddock serve` configuration of the run."""

    key: str  # the name `--configs` takes
    label: str  # the `server` column
    args: List[str]  # extra `paddock serve` flags


# The order of the run (see the module doc): the default server last, so its network pool
# refills and slot teardown cannot land in another configuration's measurements.
CONFIGS = [
    ServerConfig("unhardened", "unhardened", ["--unhardened-for-benchmarks", "--network", "none"]),
    ServerConfig("none", "hardened, no network", ["--network", "none"]),
    ServerConfig("default", "hardened + networking (default)", []),
]
BASELINE_KEY = "unhardened"
DEFAULT_KEY = "default"
# Target from the issue: hardened + pooled networking within 10% of unhardened (reported only).
TARGET_RATIO = 1.10
# Snapshot and fork rows take a sandbox (or ten) and copy a layer per sample: fewer samples.
HEAVY_N = 20
HEAVY_N_QUICK = 3
SNAPSHOT_WRITES_MIB = (1, 100)
FORK_WRITE_MIB = 10
FORK_COUNTS = (1, 10)
# Pause after a server has exited and passed the leak check, before the next one starts: the
# kernel frees network namespaces and cgroups of the last sandboxes asynchronously.
SETTLE_SECONDS = 1.0


# What `--parts` picks from: the sandbox benchmarks above, the template builds (bench/templates.py).
PARTS = ("sandboxes", "templates")


def parse_parts(text: str) -> List[str]:
    """`all` or a comma-separated subset of PARTS."""
    parts = {p.strip() for p in text.split(",") if p.strip()}
    if "all" in parts:
        return list(PARTS)
    if not parts or parts - set(PARTS):
        raise argparse.ArgumentTypeError(f"use 'all' or a comma-separated subset of {', '.join(PARTS)}")
    return [p for p in PARTS if p in parts]


def parse_configs(text: str) -> List[ServerConfig]:
    """`all` or a comma-separated subset of the config keys; always returned in run order."""
    keys = {k.strip() for k in text.split(",") if k.strip()}
    if "all" in keys:
        return list(CONFIGS)
    known = {c.key for c in CONFIGS}
    unknown = keys - known
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown configuration(s) {sorted(unknown)}: use 'all' or a comma-separated subset of "
            + ", ".join(c.key for c in CONFIGS)
        )
    return [c for c in CONFIGS if c.key in keys]


def hardening_cost(create_rows: Dict[str, List[Measurement]], configs: List[ServerConfig]) -> List[str]:
    """Lines with p50/p99 of every hardened configuration as a ratio of the unhardened one."""
    by_key = {c.key: c for c in configs}
    if BASELINE_KEY not in by_key or len(configs) < 2:
        return []
    lines: List[str] = []
    for name, rows in create_rows.items():
        base = next((m for m in rows if m.server == by_key[BASELINE_KEY].label), None)
        for p in (50, 99):
            for c in configs:
                if c.key == BASELINE_KEY:
                    continue
                m = next((r for r in rows if r.server == c.label), None)
                if base is None or m is None or not base.samples or not m.samples:
                    lines.append(f"- {name} p{p}, {c.label}: n/a (no samples)")
                    continue
                b, v = base.percentile(p), m.percentile(p)
                ratio = v / b if b > 0 else float("inf")
                verdict = ""
                if c.key == DEFAULT_KEY and name.startswith("SDK create"):
                    within = "within" if ratio <= TARGET_RATIO else "NOT within"
                    verdict = f"; {within} the {TARGET_RATIO:.2f}x target"
                lines.append(
                    f"- {name} p{p}, {c.label}: {ratio:.2f}x unhardened ({v:.2f} ms vs {b:.2f} ms{verdict})"
                )
    return lines


def render_markdown(
    results: List[Measurement],
    info: dict,
    n: int,
    n_heavy: int,
    extra: List[str],
    configs: List[ServerConfig],
    cost: List[str],
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Produced by `bench/run.sh` (see `bench/bench.py`); numbers are measured, never asserted.",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, kernel {info['kernel']}",
        f"- samples per measurement: {n} (sequential, one at a time); snapshot, create from snapshot "
        f"and fork rows: {n_heavy}",
        f"- paddock: `{info['paddock']}`, e2b Python SDK {info['e2b']}",
        "- servers, started one after the other in this order (each stopped and leak-checked before "
        "the next starts; the same warm-up of 2 SDK create + first command on each):",
    ]
    for c in configs:
        flags = f"`paddock serve {' '.join(c.args)}`" if c.args else "`paddock serve` (default flags)"
        lines.append(f"  - {c.label}: {flags}")
    lines.append(
        '  - "unhardened" turns off the user namespace, seccomp filter, capability cut, /proc masks '
        "and networking; the per-sandbox disk (loop ext4) and the cgroups are the same in all three"
    )
    lines += [
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(HEADER) - 2)) + "|",
    ]
    for r in results:
        lines.append("| " + " | ".join(r.row()) + " |")
    if cost:
        lines += ["", "## Hardening cost", "", "Ratios to the unhardened server, same run:", ""] + cost
    lines += ["", "What each row measures:", ""]
    seen = set()
    for r in results:
        if r.name in seen:
            continue
        seen.add(r.name)
        note = f" ({r.note})" if r.note else ""
        lines.append(f"- **{r.name}**: {r.what}{note}")
    for r in results:
        for e in r.errors:
            where = f" [{r.server}]" if r.server != "-" else ""
            lines.append(f"- error in {r.name}{where}: `{e}`")
    lines += extra
    return "\n".join(lines) + "\n"


def render_table(results: List[Measurement]) -> str:
    rows = [HEADER] + [r.row() for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    out = []
    for j, row in enumerate(rows):
        out.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


REST_WHAT = "`POST /v2/sandboxes` until the 201 arrives (kept-alive HTTP connection; the DELETE after it is not timed)"
SDK_WHAT = '`Sandbox.create()` then `commands.run("true")` with the official Python SDK, including its own connection setup'


def stop_server(server: PaddockServer, label: str, extra: List[str]) -> None:
    """SIGTERM and wait for the exit, then the leak check; notes go to `extra`."""
    try:
        code = server.stop()
        leaks = server.leaks()
        if code != 0:
            extra.append(f"- note [{label}]: paddock serve exited with {code} after SIGTERM")
        for leak in leaks:
            extra.append(f"- note [{label}]: {leak}")
        if code == 0 and not leaks:
            server.cleanup()
        else:
            print(f"[{label}] server log kept at {server.log_path}", file=sys.stderr)
    except ServerError as e:
        extra.append(f"- note [{label}]: {e.args[0].splitlines()[0]}")
        print(f"[{label}] server log kept at {server.log_path}", file=sys.stderr)


def run_server(
    config: ServerConfig,
    n: int,
    rest: Measurement,
    sdk: Measurement,
    extra: List[str],
    also: Callable[[PaddockServer], None],
) -> bool:
    """Starts one server, warms it up, measures `rest` and `sdk`, runs `also`, stops it fully.

    Returns False when the server did not start (its rows then stay empty)."""
    server = PaddockServer(extra_args=list(config.args))
    flags = " ".join(config.args) or "(default flags)"
    print(f"[{config.label}] starting paddock serve {flags} ({server.binary})...", flush=True)
    try:
        server.start(ready_timeout=900)
    except ServerError as e:
        print(f"[{config.label}] {e}", file=sys.stderr)
        msg = f"server did not start: {e.args[0].splitlines()[0]}"[:300]
        rest.errors.append(msg)
        sdk.errors.append(msg)
        extra.append(f"- note [{config.label}]: {msg}")
        if server.proc is not None:
            stop_server(server, config.label, extra)  # it may still be running (not ready in time)
        else:
            server.cleanup()
        return False
    os.environ.update(server.client_env())
    try:
        # Warm-up (not measured): the first sandboxes pay for cold caches.
        print(f"[{config.label}] warm-up...", flush=True)
        warm = Measurement("warm-up", "")
        bench_sdk_create_and_run(server, warm, 2)
        if warm.errors:
            print(f"[{config.label}] warm-up failed: {warm.errors}", file=sys.stderr)
        steps = [
            (rest, lambda m: bench_rest_create(server, m, n)),
            (sdk, lambda m: bench_sdk_create_and_run(server, m, n)),
        ]
        for m, run in steps:
            print(f"[{config.label}] measuring {m.name} (n={n})...", flush=True)
            try:
                run(m)
            except Exception as e:  # noqa: BLE001 - one broken measurement must not hide the others
                m.errors.append(f"{type(e).__name__}: {e}"[:300])
        also(server)
    finally:
        print(f"[{config.label}] stopping paddock serve...", flush=True)
        stop_server(server, config.label, extra)
        for key in server.client_env():
            os.environ.pop(key, None)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n=10 and do not write docs/benchmarks.md")
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md even with --quick")
    ap.add_argument("-n", type=int, default=None, help="samples per measurement (default 100, quick 10)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument(
        "--configs",
        type=parse_configs,
        default=list(CONFIGS),
        metavar="all|KEY[,KEY...]",
        help="server configurations to run: all (default) or a subset of "
        + ", ".join(f"{c.key} ({c.label})" for c in CONFIGS)
        + "; they always run in that order",
    )
    ap.add_argument(
        "--parts",
        type=parse_parts,
        default=list(PARTS),
        metavar="all|PART[,PART...]",
        help="what to run: all (default), sandboxes (the servers of --configs) and/or templates "
        "(bench/templates.py: template builds on one more default server, after the others)",
    )
    args = ap.parse_args()
    n = args.n or (10 if args.quick else 100)
    n_heavy = min(n, HEAVY_N_QUICK if args.quick else HEAVY_N)
    write = args.write or not args.quick
    configs: List[ServerConfig] = args.configs

    for key in [k for k in os.environ if k.startswith("E2B_")]:
        del os.environ[key]
    if "PADDOCK_NETWORK" in os.environ:
        # Every configuration sets its own networking; "default" means the built-in default.
        print(
            f"ignoring PADDOCK_NETWORK={os.environ.pop('PADDOCK_NETWORK')} (use --configs)",
            file=sys.stderr,
        )

    try:
        import e2b  # noqa: F401 - imported here so a missing venv fails with a clear message
        from importlib.metadata import version

        e2b_version = version("e2b")
    except ImportError as e:
        print(f"the e2b SDK is missing: {e}", file=sys.stderr)
        return 1

    import templates  # bench/templates.py, next to this file

    if "sandboxes" not in args.parts:
        return templates.run_and_report(args.quick, write, args.out)

    rest_rows = [Measurement("REST create", REST_WHAT, server=c.label) for c in configs]
    sdk_rows = [Measurement("SDK create + first command", SDK_WHAT, server=c.label) for c in configs]
    # Exec and the baselines run once, with the default server (or the last one when the
    # default is not part of this run).
    last = configs[-1]
    exec_row = Measurement(
        "exec round trip", '`commands.run("true")` in one live sandbox through the proxy and envd', server=last.label
    )
    runc_row = Measurement(
        "baseline: runc run /bin/true",
        "`runc run` of /bin/true on the same base rootfs, read-only (the process spawn of `runc` included)",
    )
    fork_row = Measurement("baseline: fork+exec /bin/true", "`posix_spawn` + `waitpid` of /bin/true on the host")
    pause_rows = [
        Measurement("pause", "`sandbox.pause()` of an idle sandbox (cgroup freezer)", server=last.label),
        Measurement("resume", "`Sandbox.connect()` of that paused sandbox (thaw)", server=last.label),
        Measurement(
            "pause, 256 MiB touched",
            "`sandbox.pause()` while a process holds 256 MiB of touched memory",
            server=last.label,
        ),
        Measurement("resume, 256 MiB touched", "`Sandbox.connect()` of that paused sandbox", server=last.label),
    ]
    disk_what = (
        "nothing of the memory is saved (the processes end, the cgroup and its memory are freed, "
        "the writable layer stays on disk), so its cost does not grow with the memory in use beyond "
        "the kernel freeing it (compare the idle and 256 MiB rows)"
    )
    disk_rows = [
        Measurement(
            "pause to disk",
            f'`sandbox.pause(mode="filesystem")` of an idle sandbox: {disk_what}',
            server=last.label,
        ),
        Measurement(
            "resume from disk",
            "`Sandbox.connect()` of that sandbox: a new boot on its kept files, until envd answers",
            server=last.label,
        ),
        Measurement(
            "pause to disk, 256 MiB touched",
            f'`sandbox.pause(mode="filesystem")` while a process holds 256 MiB of touched memory '
            f"(started again, not timed, before every pause): {disk_what}",
            server=last.label,
        ),
        Measurement(
            "resume from disk, 256 MiB touched",
            "`Sandbox.connect()` of that sandbox (the same new boot: the process and its memory are gone)",
            server=last.label,
        ),
    ]
    snapshot_rows = [
        Measurement(
            f"snapshot, {mib} MiB written",
            f"`sandbox.create_snapshot()` of a fresh sandbox that wrote {mib} MiB of random bytes to a file: "
            "the sandbox is frozen while the node copies its writable layer (only what it changed) into a "
            "new template layer; a new sandbox and snapshot per sample, both removed after it",
            server=last.label,
        )
        for mib in SNAPSHOT_WRITES_MIB
    ]
    from_snapshot_row = Measurement(
        "create from snapshot",
        f'`Sandbox.create(template=snapshot_id)` then `commands.run("true")`, from one snapshot of a sandbox '
        f"that wrote {FORK_WRITE_MIB} MiB (each child checked for the file, not timed); compare with "
        "SDK create + first command",
        server=last.label,
    )
    fork_rows = [
        Measurement(
            f"fork ×{count}",
            f"`sandbox.fork(count={count})` of a running parent that wrote {FORK_WRITE_MIB} MiB, until "
            + (f"all {count} children are running" if count > 1 else "the child is running")
            + ": one copy of the parent's writable layer, then "
            + (f"{count} creates in parallel" if count > 1 else "one create")
            + " (each child then checked with `commands.run` for the file, not timed, and killed)",
            server=last.label,
        )
        for count in FORK_COUNTS
    ]
    heavy_rows = [*snapshot_rows, from_snapshot_row, *fork_rows]
    once_rows = [exec_row, *pause_rows, *disk_rows, *heavy_rows, runc_row, fork_row]

    def once_only(server: PaddockServer) -> None:
        steps = [
            (exec_row, n, lambda m: bench_exec(server, m, n)),
            (pause_rows[0], n, lambda m: bench_pause_resume(server, m, pause_rows[1], n, 0)),
            (pause_rows[2], n, lambda m: bench_pause_resume(server, m, pause_rows[3], n, 256)),
            (disk_rows[0], n, lambda m: bench_pause_to_disk(server, m, disk_rows[1], n, 0)),
            (disk_rows[2], n, lambda m: bench_pause_to_disk(server, m, disk_rows[3], n, 256)),
            *[
                (row, n_heavy, lambda m, mib=mib, i=i: bench_snapshot(server, m, n_heavy, mib, reference=i == 0))
                for i, (row, mib) in enumerate(zip(snapshot_rows, SNAPSHOT_WRITES_MIB))
            ],
            (from_snapshot_row, n_heavy, lambda m: bench_create_from_snapshot(server, m, n_heavy, FORK_WRITE_MIB)),
            *[
                (row, n_heavy, lambda m, count=count: bench_fork(server, m, n_heavy, count, FORK_WRITE_MIB))
                for row, count in zip(fork_rows, FORK_COUNTS)
            ],
            (runc_row, n, lambda m: bench_runc(find_rootfs(server.templates_dir), m, n)),
            (fork_row, n, lambda m: bench_fork_exec(m, n)),
        ]
        try:
            for m, samples, run in steps:
                print(f"measuring {m.name} (n={samples})...", flush=True)
                try:
                    run(m)
                except Exception as e:  # noqa: BLE001 - one broken measurement must not hide the others
                    m.errors.append(f"{type(e).__name__}: {e}"[:300])
            for idle, touched in ((pause_rows[0], pause_rows[2]), (disk_rows[0], disk_rows[2])):
                if idle.samples and touched.samples:
                    ratio = touched.percentile(50) / idle.percentile(50)
                    touched.note = f"p50 {ratio:.2f}x the idle row"
        finally:
            try:
                for line in sweep(server):
                    extra.append(f"- note [{last.label}]: {line}")
            except Exception as e:  # noqa: BLE001 - reported; the server's own shutdown still runs
                extra.append(f"- note [{last.label}]: the final sweep failed: {type(e).__name__}: {e}"[:300])

    extra: List[str] = []
    failed: List[str] = []
    print("(the first server start builds the base template if it is not cached)", flush=True)
    for i, config in enumerate(configs):
        if i > 0:
            time.sleep(SETTLE_SECONDS)
        also = once_only if config is last else (lambda _s: None)
        if not run_server(config, n, rest_rows[i], sdk_rows[i], extra, also):
            failed.append(config.label)
    if last.label in failed:
        for m in once_rows:
            m.note = f"skipped: the {last.label} server did not start"

    try:
        binary = Path(os.environ.get("PADDOCK_BIN", DEFAULT_BIN))
        paddock_version = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        paddock_version = "unknown"
    info = {
        **machine(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "paddock": paddock_version,
        "e2b": e2b_version,
    }

    results = rest_rows + sdk_rows + once_rows
    cost = hardening_cost({"REST create": rest_rows, "SDK create + first command": sdk_rows}, configs)
    if cost and n < 100:
        cost.append(f"- (n={n}: p99 is the slowest sample or close to it; use the full run for p99)")

    print()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['memory']} RAM, kernel {info['kernel']}")
    print(f"samples per measurement: {n} (snapshot, create from snapshot and fork rows: {n_heavy})")
    print(render_table(results))
    for m in results:
        where = f" [{m.server}]" if m.server != "-" else ""
        if m.note:
            print(f"  {m.name}{where}: {m.note}")
        for e in m.errors:
            print(f"  {m.name}{where} error: {e}")
    if cost:
        print("\nhardening cost (ratios to the unhardened server, same run):")
        for line in cost:
            print(line)
    for line in extra:
        print(line)
    if write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = render_markdown(results, info, n, n_heavy, extra, configs, cost)
        args.out.write_text(templates.keep_section(args.out, doc))
        print(f"\nwrote {args.out}")
    status = 0
    if "templates" in args.parts:
        time.sleep(SETTLE_SECONDS)
        status = templates.run_and_report(args.quick, write, args.out)
    if failed:
        print(f"server(s) that did not start: {', '.join(failed)}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
