"""Paddock benchmark harness: latency of sandbox create and exec under sequential use and under
load, against baselines measured in the same run, and what hardening and the warm pool change.

One run starts up to five `paddock serve` configurations one after the other (each stopped, and
checked for leaks, before the next starts), in this order:
  1. unhardened                       --unhardened-for-benchmarks --network none --warm-pool-size 0
                                      (no user namespace, seccomp, capability cut, /proc masks;
                                      disk quota and cgroups as in the others)
  2. hardened, no network             --network none --warm-pool-size 0
  3. hardened + networking, no pool   --warm-pool-size 0 (the cold create path)
  4. hardened + networking (default)  no extra flags (pooled netns + veth + nftables, warm pool)
  5. warm pool of 64 (bursts only)    --warm-pool-size 64 --warm-pool-template base: only the
                                      bursts of 50 (with the load part), to show a pool sized
                                      for the burst; runs after the default one
`--warm-pool-size 0` is passed only when `paddock serve --help` lists it (warm pools are being
built); without it configuration 3 is skipped with a note. The default server runs after the
other three so that its background work (pool refills, slot teardown) cannot bleed into them, and
the bursts-only one after it (it measures only bursts, each after the server went idle);
`--configs` picks a subset (e.g. `--configs default`). Last, with the sandboxes part:
  6. cluster                          bench/clusterbench.py: one more `paddock serve` (default
                                      flags) and, beside it, a one-node cluster (`paddock api`,
                                      `paddock node`, `paddock proxy` on loopback, over gRPC and
                                      mutual TLS); REST create, SDK create + first command and
                                      the exec round trip on both, interleaved, and what the
                                      cluster adds at p50/p95/p99
                                      (its own section of docs/benchmarks.md; `--configs cluster`
                                      alone runs only it and rewrites only that section)

Measures (n samples each, n=100; --quick: n=10), after the same warm-up on every server:
  1. REST create            POST /v2/sandboxes (timed) then DELETE (not timed)      per server
  2. SDK create + first cmd Sandbox.create() + commands.run("true") via the official
                            e2b SDK                                                 per server
  3. exec round trip, pause / resume (idle and 256 MiB touched), pause to disk / resume from
     disk, snapshots of 1 / 100 MiB written, create from snapshot, fork x1 / x10 (n_heavy
     samples: 20, --quick 3)                                                default server only
  4. load (bench/load.py)   bursts of 10 and 50 concurrent creates (REST, SDK + first command),
                            sustained creates/s, host memory per idle sandbox with 500 alive,
                            file write / read of 1 and 100 MiB                default server only
  5. baselines              runc run, unshare of the sandbox namespaces and fork+exec of
                            /bin/true (bench/baselines.py)          once, default server up
  6. template builds        bench/templates.py, on one more default server after the others
`--parts` picks sandboxes (1-3), load (4) and/or templates (6); 5 runs with 1-4.
Warm pool hits and misses (`GET /metrics`, when the server has it) are noted next to the
sequential, burst and sustained rows. Every sandbox and snapshot a row makes is removed in that
row, failed or not; a sweep at the end kills and deletes whatever is left (and says so), since
snapshots live in the shared templates dir and would outlive the server.
Writing docs/benchmarks.md keeps the sections this run does not produce (bench/docsections.py):
the template builds, the placement simulator, the cluster overhead when it did not run.

Prints a table (p50/p95/p99/mean, success rate) and the machine, then the issue's targets next
to the measured values (met / not met), memory per idle sandbox, sustained creates/s, ratios to
the baselines, the hardening cost (configurations without a pool as ratios of the unhardened
one) and the warm pool effect, and writes them as markdown to docs/benchmarks.md (quick mode
writes nothing unless --write). Numbers are reported, never asserted: this is a harness, not a
test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
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


def cpu_idle_fraction(window: float = 0.5) -> float:
    """The host's idle share of CPU time over `window` seconds (/proc/stat)."""

    def read() -> tuple:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    idle0, total0 = read()
    time.sleep(window)
    idle1, total1 = read()
    return (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(min_idle: float = 0.85, max_wait: float = 30.0) -> str:
    """Waits (bounded) until the host is mostly idle: the kernel frees the namespaces, mounts
    and cgroups of killed sandboxes in the background for seconds after many creates. Returns
    what it saw, for the row's note."""
    started = time.monotonic()
    idle = cpu_idle_fraction()
    while idle < min_idle and time.monotonic() - started < max_wait:
        idle = cpu_idle_fraction()
    return f"started after {time.monotonic() - started:.1f} s waiting for a quiet host (CPU {idle:.0%} idle)"


def bench_exec(server: PaddockServer, m: Measurement, n: int) -> None:
    from e2b import Sandbox

    import load  # bench/load.py: the warm pool's counters

    sandbox = Sandbox.create(timeout=600)
    server.track(sandbox.sandbox_id)
    try:
        for _ in range(5):
            sandbox.commands.run("true")  # warm the connection
        # The create took a warm sandbox: measure once the pool has refilled, not during, and
        # once the kernel is done with the sandboxes of the rows before.
        load.wait_pool_full(server)
        load.add_note(m, wait_quiet())

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


@dataclass(frozen=True)
class ServerConfig:
    """One `paddock serve` configuration of the run."""

    key: str  # the name `--configs` takes
    label: str  # the `server` column
    args: List[str]  # extra `paddock serve` flags
    cold: bool = False  # without a warm pool: `--warm-pool-size 0`
    bursts_only: bool = False  # runs only the bursts of 50 (with the load part), after the others
    cluster: bool = False  # not a serve: bench/clusterbench.py (with the sandboxes part), last

    def flags(self) -> List[str]:
        return [*self.args, "--warm-pool-size", "0"] if self.cold else list(self.args)


# The warm pool of the `bigpool` configuration: more than the largest burst.
BIG_POOL = 64
# The order of the run (see the module doc): the default server after the other full ones, so
# its network pool refills and slot teardown cannot land in their measurements; then the
# bursts-only one, then the cluster.
CONFIGS = [
    ServerConfig("unhardened", "unhardened", ["--unhardened-for-benchmarks", "--network", "none"], cold=True),
    ServerConfig("none", "hardened, no network", ["--network", "none"], cold=True),
    ServerConfig("nopool", "hardened + networking, no warm pool", [], cold=True),
    ServerConfig("default", "hardened + networking (default)", []),
    # The default pool (2) cannot take a burst of 50: 48 of them start cold, a few tens of ms of
    # CPU each on 2 cores. What a pool sized for the burst does, for operators who expect them.
    ServerConfig(
        "bigpool",
        f"hardened + networking, warm pool of {BIG_POOL}",
        ["--warm-pool-size", str(BIG_POOL), "--warm-pool-template", "base"],
        bursts_only=True,
    ),
    # Create + first command through a one-node cluster beside a serve of its own, interleaved.
    ServerConfig("cluster", "cluster: api + 1 node + edge proxy, beside serve", [], cluster=True),
]
BASELINE_KEY = "unhardened"
NOPOOL_KEY = "nopool"
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


# What `--parts` picks from: the sequential sandbox benchmarks, the load rows (bench/load.py),
# the template builds (bench/templates.py).
PARTS = ("sandboxes", "load", "templates")


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
    flags: List[str],
    n: int,
    sequential: List[Measurement],
    extra: List[str],
    also: Callable[[PaddockServer], None],
) -> bool:
    """Starts one server, warms it up, measures the `sequential` rows ([REST create, SDK create
    + first command], or none), runs `also`, stops it fully.

    Returns False when the server did not start (its rows then stay empty)."""
    import load  # bench/load.py: the warm pool's counters

    server = PaddockServer(extra_args=flags)
    shown = " ".join(flags) or "(default flags)"
    print(f"[{config.label}] starting paddock serve {shown} ({server.binary})...", flush=True)
    try:
        server.start(ready_timeout=900)
    except ServerError as e:
        print(f"[{config.label}] {e}", file=sys.stderr)
        msg = f"server did not start: {e.args[0].splitlines()[0]}"[:300]
        for m in sequential:
            m.errors.append(msg)
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
        runs = [lambda m: bench_rest_create(server, m, n), lambda m: bench_sdk_create_and_run(server, m, n)]
        for m, run in zip(sequential, runs):
            print(f"[{config.label}] measuring {m.name} (n={n})...", flush=True)
            watch = load.PoolWatch(server)
            try:
                run(m)
            except Exception as e:  # noqa: BLE001 - one broken measurement must not hide the others
                m.errors.append(f"{type(e).__name__}: {e}"[:300])
            load.add_note(m, watch.note())
        also(server)
    finally:
        print(f"[{config.label}] stopping paddock serve...", flush=True)
        stop_server(server, config.label, extra)
        for key in server.client_env():
            os.environ.pop(key, None)
    return True


@dataclass
class OnceRows:
    """The rows measured once, on the last server of the run (the default one)."""

    label: str
    exec_row: Measurement = field(init=False)
    pause: List[Measurement] = field(init=False)
    disk: List[Measurement] = field(init=False)
    snapshots: List[Measurement] = field(init=False)
    from_snapshot: Measurement = field(init=False)
    forks: List[Measurement] = field(init=False)

    def __post_init__(self) -> None:
        def row(name: str, what: str) -> Measurement:
            return Measurement(name, what, server=self.label)

        self.exec_row = row("exec round trip", '`commands.run("true")` in one live sandbox through the proxy and envd')
        self.pause = [
            row("pause", "`sandbox.pause()` of an idle sandbox (cgroup freezer)"),
            row("resume", "`Sandbox.connect()` of that paused sandbox (thaw)"),
            row("pause, 256 MiB touched", "`sandbox.pause()` while a process holds 256 MiB of touched memory"),
            row("resume, 256 MiB touched", "`Sandbox.connect()` of that paused sandbox"),
        ]
        disk_what = (
            "nothing of the memory is saved (the processes end, the cgroup and its memory are freed, "
            "the writable layer stays on disk), so its cost does not grow with the memory in use beyond "
            "the kernel freeing it (compare the idle and 256 MiB rows)"
        )
        self.disk = [
            row("pause to disk", f'`sandbox.pause(mode="filesystem")` of an idle sandbox: {disk_what}'),
            row(
                "resume from disk",
                "`Sandbox.connect()` of that sandbox: a new boot on its kept files, until envd answers",
            ),
            row(
                "pause to disk, 256 MiB touched",
                f'`sandbox.pause(mode="filesystem")` while a process holds 256 MiB of touched memory '
                f"(started again, not timed, before every pause): {disk_what}",
            ),
            row(
                "resume from disk, 256 MiB touched",
                "`Sandbox.connect()` of that sandbox (the same new boot: the process and its memory are gone)",
            ),
        ]
        self.snapshots = [
            row(
                f"snapshot, {mib} MiB written",
                f"`sandbox.create_snapshot()` of a fresh sandbox that wrote {mib} MiB of random bytes to a file: "
                "the sandbox is frozen while the node copies its writable layer (only what it changed) into a "
                "new template layer; a new sandbox and snapshot per sample, both removed after it",
            )
            for mib in SNAPSHOT_WRITES_MIB
        ]
        self.from_snapshot = row(
            "create from snapshot",
            f'`Sandbox.create(template=snapshot_id)` then `commands.run("true")`, from one snapshot of a sandbox '
            f"that wrote {FORK_WRITE_MIB} MiB (each child checked for the file, not timed); compare with "
            "SDK create + first command",
        )
        self.forks = [
            row(
                f"fork ×{count}",
                f"`sandbox.fork(count={count})` of a running parent that wrote {FORK_WRITE_MIB} MiB, until "
                + (f"all {count} children are running" if count > 1 else "the child is running")
                + ": one copy of the parent's writable layer, then "
                + (f"{count} creates in parallel" if count > 1 else "one create")
                + " (each child then checked with `commands.run` for the file, not timed, and killed)",
            )
            for count in FORK_COUNTS
        ]

    def rows(self) -> List[Measurement]:
        return [self.exec_row, *self.pause, *self.disk, *self.snapshots, self.from_snapshot, *self.forks]

    def steps(self, server: PaddockServer, n: int, n_heavy: int) -> List[tuple]:
        """(row, samples, run) of every row, in the order they run."""
        p, d = self.pause, self.disk
        return [
            (self.exec_row, n, lambda: bench_exec(server, self.exec_row, n)),
            (p[0], n, lambda: bench_pause_resume(server, p[0], p[1], n, 0)),
            (p[2], n, lambda: bench_pause_resume(server, p[2], p[3], n, 256)),
            (d[0], n, lambda: bench_pause_to_disk(server, d[0], d[1], n, 0)),
            (d[2], n, lambda: bench_pause_to_disk(server, d[2], d[3], n, 256)),
            *[
                (row, n_heavy, lambda row=row, mib=mib, i=i: bench_snapshot(server, row, n_heavy, mib, i == 0))
                for i, (row, mib) in enumerate(zip(self.snapshots, SNAPSHOT_WRITES_MIB))
            ],
            (
                self.from_snapshot,
                n_heavy,
                lambda: bench_create_from_snapshot(server, self.from_snapshot, n_heavy, FORK_WRITE_MIB),
            ),
            *[
                (row, n_heavy, lambda row=row, count=count: bench_fork(server, row, n_heavy, count, FORK_WRITE_MIB))
                for row, count in zip(self.forks, FORK_COUNTS)
            ],
        ]

    def ratios(self) -> None:
        for idle, touched in ((self.pause[0], self.pause[2]), (self.disk[0], self.disk[2])):
            if idle.samples and touched.samples:
                touched.note = f"p50 {touched.percentile(50) / idle.percentile(50):.2f}x the idle row"


def run_steps(steps: List[tuple], extra: List[str], label: str) -> None:
    """Runs (row or None, size text, run) steps; a failure lands on its row (or in `extra`)."""
    for m, size, run in steps:
        name = m.name if m is not None else size
        print(f"measuring {name} ({size})..." if m is not None else f"measuring {name}...", flush=True)
        try:
            run()
        except Exception as e:  # noqa: BLE001 - one broken measurement must not hide the others
            if m is not None:
                m.errors.append(f"{type(e).__name__}: {e}"[:300])
            else:
                extra.append(f"- note [{label}]: {name} failed: {type(e).__name__}: {e}"[:300])


def run_cluster_only(args: argparse.Namespace, n: int, write: bool) -> int:
    """`--configs cluster` alone: the cluster part (its own serve beside it), its section
    written into `args.out` with the rest of the file kept; then the templates part if asked."""
    import clusterbench  # bench/clusterbench.py
    import docsections
    import templates

    out = clusterbench.run(n)
    clusterbench.print_out(out)
    if write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        try:
            doc = args.out.read_text()
        except FileNotFoundError:
            doc = "# Benchmarks\n"
        args.out.write_text(docsections.replace(doc, clusterbench.SECTION_TITLE, clusterbench.render_section(out)))
        print(f"\nwrote the cluster section of {args.out}")
    status = 0 if out.started else 1
    if "templates" in args.parts:
        time.sleep(SETTLE_SECONDS)
        status = templates.run_and_report(args.quick, write, args.out) or status
    return status


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n=10, short load rows, and do not write docs/benchmarks.md")
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
        help="what to run: all (default), sandboxes (sequential rows on the servers of --configs), load "
        "(bursts, sustained creates, memory, files on the last of them) and/or templates "
        "(bench/templates.py: template builds on one more default server, after the others)",
    )
    args = ap.parse_args()
    n = args.n or (10 if args.quick else 100)
    n_heavy = min(n, HEAVY_N_QUICK if args.quick else HEAVY_N)
    write = args.write or not args.quick

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

    import baselines  # bench/baselines.py, next to this file
    import docsections  # bench/docsections.py
    import load  # bench/load.py
    import templates  # bench/templates.py

    seq, do_load = "sandboxes" in args.parts, "load" in args.parts
    if not seq and not do_load:
        return templates.run_and_report(args.quick, write, args.out)

    binary = Path(os.environ.get("PADDOCK_BIN", DEFAULT_BIN))
    header_notes: List[str] = []
    configs: List[ServerConfig] = args.configs
    if not configs:
        print("no configuration left to run", file=sys.stderr)
        return 1
    # The cluster runs last, with the sandboxes part, beside a serve of its own.
    do_cluster = seq and any(c.cluster for c in configs)
    configs = [c for c in configs if not c.cluster]
    if not configs and do_cluster:
        return run_cluster_only(args, n, write)
    # The bursts-only configurations run after the others, and only with the load part.
    burst_configs = [c for c in configs if c.bursts_only] if do_load else []
    configs = [c for c in configs if not c.bursts_only]
    if not configs:
        print("the bursts-only configurations need one of the others to run", file=sys.stderr)
        return 1
    if not seq:
        configs = configs[-1:]  # the load rows run on one server
    last = configs[-1]

    rest_rows = {c.key: Measurement("REST create", REST_WHAT, server=c.label) for c in configs} if seq else {}
    sdk_rows = (
        {c.key: Measurement("SDK create + first command", SDK_WHAT, server=c.label) for c in configs} if seq else {}
    )
    once = OnceRows(last.label) if seq else None
    loads = load.LoadRows(last.label, args.quick) if do_load else None
    pooled_bursts = {c.key: load.burst_rows(c.label, args.quick, sizes=(50,)) for c in burst_configs}
    base_rows = baselines.baseline_rows()
    extra: List[str] = []

    def on_last(server: PaddockServer) -> None:
        try:
            once_steps = [(m, f"n={k}", run) for m, k, run in once.steps(server, n, n_heavy)] if once else []
            # The exec round trip first, on a quiet host: after the memory row the kernel spends
            # tens of seconds freeing what 500 sandboxes left, and it shows in a 3 ms row.
            run_steps(once_steps[:1], extra, last.label)
            if loads is not None:
                run_steps(loads.steps(server, memory_first=True), extra, last.label)
            if once is not None:
                run_steps(once_steps[1:], extra, last.label)
                once.ratios()
            if loads is not None:
                run_steps(loads.steps(server, memory_first=False), extra, last.label)
            baselines.run_baselines(base_rows, server.templates_dir, n)
        finally:
            try:
                for line in load.sweep(server):
                    extra.append(f"- note [{last.label}]: {line}")
            except Exception as e:  # noqa: BLE001 - reported; the server's own shutdown still runs
                extra.append(f"- note [{last.label}]: the final sweep failed: {type(e).__name__}: {e}"[:300])

    load_start = templates.load_average()
    failed: List[str] = []
    print("(the first server start builds the base template if it is not cached)", flush=True)
    for i, config in enumerate(configs):
        if i > 0:
            time.sleep(SETTLE_SECONDS)
        also = on_last if config is last else (lambda _s: None)
        sequential = [rest_rows[config.key], sdk_rows[config.key]] if seq else []
        if not run_server(config, config.flags(), n, sequential, extra, also):
            failed.append(config.label)
    for config in burst_configs:
        time.sleep(SETTLE_SECONDS)
        rows = pooled_bursts[config.key]

        def bursts(server: PaddockServer, rows: List[tuple] = rows, label: str = config.label) -> None:
            run_steps(load.burst_steps(server, rows, load.BURST_ROUNDS[int(args.quick)]), extra, label)

        if not run_server(config, config.flags(), n, [], extra, bursts):
            failed.append(config.label)
    cluster_out = None
    if do_cluster:
        import clusterbench  # bench/clusterbench.py

        time.sleep(SETTLE_SECONDS)
        cluster_out = clusterbench.run(n)
        if not cluster_out.started:
            failed.append("cluster")
        header_notes.append(
            "- then, side by side, one more `paddock serve` and a one-node cluster (`paddock api`, `paddock node`, "
            f"`paddock proxy`): see [{clusterbench.SECTION_TITLE[3:]}](#cluster-overhead-issue-14)"
        )
    pooled_rows = [m for rows in pooled_bursts.values() for _, _, m in rows]
    # The default server's own rows and the baselines measured while it ran.
    once_rows = (once.rows() if once else []) + (loads.rows() if loads else [])
    if last.label in failed:
        for m in once_rows + base_rows:
            m.note = f"skipped: the {last.label} server did not start"

    try:
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
        "load_start": load_start,
        "load_end": templates.load_average(),
        "load_samples": f"load rows: {loads.describe()}" if loads else "load rows not run (--parts)",
        "notes": header_notes,
    }

    results = list(rest_rows.values()) + list(sdk_rows.values()) + once_rows + pooled_rows + base_rows
    sections = baselines.report_sections(
        baselines.RunRows(
            configs=configs,
            last=last,
            rest=rest_rows,
            sdk=sdk_rows,
            exec_row=once.exec_row if once else None,
            loads=loads,
            pooled_bursts=pooled_rows,
            base=base_rows,
            quick=args.quick,
            n=n,
        )
    )

    baselines.print_report(results, info, n, n_heavy, sections, header_notes + extra)
    if cluster_out is not None:
        clusterbench.print_out(cluster_out)
    if write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shown = [(c, c.flags()) for c in configs + burst_configs]
        doc = baselines.render_markdown(results, info, n, n_heavy, extra, shown, sections)
        if cluster_out is not None:
            doc = docsections.replace(doc, clusterbench.SECTION_TITLE, clusterbench.render_section(cluster_out))
        # The sections other writers own (and the cluster's when this run did not measure it).
        args.out.write_text(docsections.keep(args.out, doc))
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
    # Run the `bench` module's main rather than this `__main__` copy: load.py, baselines.py and
    # templates.py import `bench`, and every row must be of that module's Measurement class.
    import bench

    sys.exit(bench.main())
