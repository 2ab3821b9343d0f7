"""Load benchmarks of bench/bench.py, run on the default server: bursts of concurrent creates,
sustained creates per second, host memory per idle sandbox, file throughput through the SDK,
and the warm pool's counters (`GET /metrics`) next to the rows.

  burst of 10 / 50        REST `POST /v2/sandboxes`, and SDK `Sandbox.create()` +
                          `commands.run("true")`, `size` threads released together (a barrier),
                          `rounds` times; every sandbox is killed after its round (not timed) and
                          the server is let go idle (no sandbox listed, every warm pool full)
                          before the next round. A 429 is retried after its `Retry-After`, up to
                          3 times, as the SDK does (the REST rows do the same by hand): a create
                          that got its 201 in the end is a success, its time includes the waits;
                          a failure is counted in the success column, never dropped.
  sustained creates       `workers` threads loop REST create + DELETE for `seconds`; creates/s
                          is the successful creates over the wall time of the whole run.
  memory per idle         `count` sandboxes started (parallel batches, not timed), left to settle,
  sandbox                 then the host's used memory (MemTotal - MemAvailable, and the kernel's
                          parts) before/after, against the sum of the sandboxes' own memory
                          cgroups; a third reading after the kill tells whether other processes
                          moved the host's memory meanwhile (then the row says it is not reliable).
                          If the node refuses to start them all, the row says how many and why.
  file write / read       `files.write` then `files.read(format="bytes")` of 1 MiB and 100 MiB of
                          random bytes in one live sandbox (checked, not timed), MiB/s at the p50.

Warm pools: hits and misses come from the server's `/metrics` (a 404 there just means no
counts). `LoadRows` holds the
rows as bench.py runs them; `sweep` is the run's final cleanup. Every function here cleans up
what it made, failed or not. Numbers are reported, never asserted.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import requests

from bench import Measurement, fmt_bytes, median
from paddock_server import PaddockServer, paddock_cgroup_dirs

# The load rows' sizes, (full, quick).
BURST_SIZES = (10, 50)
BURST_ROUNDS = (5, 1)
SUSTAINED_S = (20.0, 3.0)
SUSTAINED_WORKERS = 8
MEMORY_SANDBOXES = (500, 50)
MEMORY_SETTLE_S = (10.0, 3.0)
MEMORY_SETTLE_MAX_S = (120.0, 30.0)  # for the host's memory to settle before the first reading
FILE_SAMPLES = {1: (20, 5), 100: (5, 2)}  # MiB -> samples

# What the SDK does with a 429 (`e2b.retry`): retry after `Retry-After`, 3 times by default.
CREATE_RETRIES = 3
DEFAULT_RETRY_AFTER_S = 1.0
# Sandboxes made here must outlive the row that made them (the memory row holds 500 for a while).
SANDBOX_TIMEOUT_S = 1800
REQUEST_TIMEOUT_S = 120
IDLE_TIMEOUT_S = 120.0
# How long to wait for the warm pools to refill before the next round (then it goes on, noted).
POOL_REFILL_TIMEOUT_S = 30.0
# After the server is idle (nothing listed, pools full): slot teardown and refills in the
# background finish; not timed.
IDLE_SETTLE_S = 0.5
# Parallel creates per batch when filling the node for the memory row (below the per-team
# limit of creates in flight, so no batch is refused for it).
MEMORY_BATCH = 16
# Stop filling the node after this many failed creates: the node said no, report why.
MEMORY_MAX_FAILURES = 16
MEMINFO_KEYS = ("MemTotal", "MemAvailable", "Slab", "SUnreclaim", "KernelStack", "PageTables", "Shmem", "Cached")

METRIC_RE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def add_note(m: Measurement, text: str) -> None:
    if text:
        m.note = f"{m.note}; {text}" if m.note else text


def add_failures(m: Measurement, failures: "collections.Counter[str]") -> None:
    """Failed samples into `m.errors`, one line per distinct error with its count (most first)."""
    for err, count in failures.most_common(5):
        m.errors.append(f"{count} × {err}" if count > 1 else err)
    if len(failures) > 5:
        m.errors.append(f"and {len(failures) - 5} other distinct errors")


# ---------------------------------------------------------------------------------------------
# Warm pool counters: `GET /metrics` (Prometheus text); None when the server has no /metrics.


def read_metrics(server: PaddockServer) -> Optional[Dict[str, float]]:
    """`name{labels}` -> value of the server's `/metrics`, or None when it does not answer 200."""
    try:
        r = requests.get(server.api_url + "/metrics", headers={"X-API-Key": server.api_key}, timeout=10)
    except requests.RequestException:
        return None
    if r.status_code != 200:
        return None
    found: Dict[str, float] = {}
    for line in r.text.splitlines():
        m = METRIC_RE.match(line)
        if m and not line.startswith("#"):
            try:
                found[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                continue
    return found


def pool_full(metrics: Dict[str, float]) -> bool:
    """Every template's warm pool has `ready >= size` (true without pool series)."""
    for key, size in metrics.items():
        if key.startswith("paddock_warm_pool_size"):
            ready = metrics.get(key.replace("paddock_warm_pool_size", "paddock_warm_pool_ready", 1))
            if ready is None or ready < size:
                return False
    return True


def pool_counters(server: PaddockServer) -> Optional[Tuple[float, float]]:
    """(hits, misses) of the warm pools so far, or None (no /metrics, or no pool series)."""
    metrics = read_metrics(server)
    if metrics is None or "paddock_warm_pool_hits_total" not in metrics:
        return None
    return metrics["paddock_warm_pool_hits_total"], metrics.get("paddock_warm_pool_misses_total", 0.0)


class PoolWatch:
    """The warm pool's hits and misses during one measurement (counters before and after)."""

    def __init__(self, server: PaddockServer):
        self.server = server
        self.before = pool_counters(server)

    def note(self) -> str:
        after = pool_counters(self.server)
        if self.before is None or after is None:
            return ""
        hits, misses = after[0] - self.before[0], after[1] - self.before[1]
        return f"warm pool: {hits:.0f} hits, {misses:.0f} misses (/metrics)"


# ---------------------------------------------------------------------------------------------
# REST calls, one requests.Session per thread.

_local = threading.local()


def session(server: PaddockServer) -> requests.Session:
    s = getattr(_local, "sessions", {}).get(server.api_url)
    if s is None:
        s = requests.Session()
        s.headers["X-API-Key"] = server.api_key
        _local.sessions = {**getattr(_local, "sessions", {}), server.api_url: s}
    return s


class Tally:
    """A thread-safe counter of retried statuses."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()

    def add(self, status: int) -> None:
        with self.lock:
            self.counts[status] += 1

    def text(self, who: str) -> str:
        if not self.counts:
            return "no create answered 429 or 503"
        parts = ", ".join(f"{n} × {status}" for status, n in sorted(self.counts.items()))
        return f"retried by {who} after Retry-After: {parts}"


def retry_after(r: requests.Response) -> float:
    try:
        return max(0.0, float(r.headers.get("Retry-After", DEFAULT_RETRY_AFTER_S)))
    except ValueError:
        return DEFAULT_RETRY_AFTER_S


def rest_create(server: PaddockServer, tally: Tally) -> Tuple[float, str]:
    """`POST /v2/sandboxes` as the SDK does it: a 429 (or 503) is retried after its Retry-After,
    up to CREATE_RETRIES times. Returns (ms from the first request to the 201, sandbox id)."""
    s = session(server)
    started = time.perf_counter()
    for attempt in range(CREATE_RETRIES + 1):
        r = s.post(
            server.api_url + "/v2/sandboxes",
            json={"templateID": "base", "timeout": SANDBOX_TIMEOUT_S},
            timeout=REQUEST_TIMEOUT_S,
        )
        if r.status_code == 201:
            elapsed = (time.perf_counter() - started) * 1000
            return elapsed, server.track(r.json()["sandboxID"])
        if r.status_code in (429, 503) and attempt < CREATE_RETRIES:
            tally.add(r.status_code)
            time.sleep(retry_after(r))
            continue
        raise RuntimeError(f"create answered {r.status_code}: {r.text[:200]}")
    raise AssertionError("unreachable")


def rest_delete(server: PaddockServer, sid: str) -> None:
    r = session(server).delete(f"{server.api_url}/sandboxes/{sid}", timeout=REQUEST_TIMEOUT_S)
    if r.status_code not in (204, 404):
        raise RuntimeError(f"delete of {sid} answered {r.status_code}: {r.text[:200]}")


def listed(server: PaddockServer) -> List[str]:
    """Ids of the sandboxes the server's team has (running or paused), first page."""
    r = session(server).get(server.api_url + "/v2/sandboxes", params={"limit": 100}, timeout=30)
    r.raise_for_status()
    return [s["sandboxID"] for s in r.json()]


def kill_all(server: PaddockServer, ids: List[str], m: Measurement) -> None:
    """Deletes `ids` in parallel (not timed); failures go to `m.errors` as cleanup errors."""
    with cf.ThreadPoolExecutor(8) as ex:
        for sid, fut in [(sid, ex.submit(rest_delete, server, sid)) for sid in ids]:
            try:
                fut.result()
            except Exception as e:  # noqa: BLE001 - cleanup reports, the sweep retries
                if len(m.errors) < 5:
                    m.errors.append(f"cleanup: {sid}: {type(e).__name__}: {e}"[:300])


def wait_pool_full(server: PaddockServer, timeout: float = POOL_REFILL_TIMEOUT_S) -> bool:
    """Waits until every warm pool is full (`/metrics`); True at once without pool metrics."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = read_metrics(server)
        if metrics is None or pool_full(metrics):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def wait_idle(server: PaddockServer, m: Measurement, timeout: float = IDLE_TIMEOUT_S) -> None:
    """Waits until the team has no sandbox, then (bounded) until every warm pool is full;
    sandboxes still listed after 5 s (a create the client gave up on) are killed and noted."""
    started = time.monotonic()
    killed_late = False
    while True:
        ids = listed(server)
        if not ids:
            break
        waited = time.monotonic() - started
        if waited > 5 and not killed_late:
            m.errors.append(f"cleanup: {len(ids)} sandbox(es) left after the round, killed")
            kill_all(server, ids, m)
            killed_late = True
        if waited > timeout:
            raise RuntimeError(f"the server was not idle after {timeout:.0f} s ({len(ids)} sandboxes listed)")
        time.sleep(0.1)
    if not wait_pool_full(server) and "pool was not full" not in m.note:
        add_note(m, f"the warm pool was not full {POOL_REFILL_TIMEOUT_S:.0f} s after a round (went on)")
    time.sleep(IDLE_SETTLE_S)


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


# ---------------------------------------------------------------------------------------------
# Bursts.


class SdkRetries:
    """Counts the responses the e2b SDK retries (429/502/503/504 or `Should-Retry`), by wrapping
    `e2b.retry._retry_delay` for the duration of a `with`; `tally` stays empty (and `known`
    False) when the SDK has no such function."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.known = False
        self._orig: Optional[Callable] = None

    def __enter__(self) -> "SdkRetries":
        import e2b.retry as retry

        self._orig = getattr(retry, "_retry_delay", None)
        if self._orig is not None:
            orig, tally = self._orig, self.tally

            def counting(response, *args, **kwargs):
                delay = orig(response, *args, **kwargs)
                if delay is not None:
                    tally.add(response.status_code)
                return delay

            retry._retry_delay = counting
            self.known = True
        return self

    def __exit__(self, *exc) -> None:
        import e2b.retry as retry

        if self._orig is not None:
            retry._retry_delay = self._orig


def run_burst(size: int, once: Callable[[], float]) -> List[Tuple[Optional[float], Optional[str]]]:
    """Runs `once` in `size` threads released together; (ms, None) or (None, error) each."""
    barrier = threading.Barrier(size)
    results: List[Tuple[Optional[float], Optional[str]]] = [(None, "thread did not run")] * size

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[i] = (once(), None)
        except Exception as e:  # noqa: BLE001 - counted as a failed sample
            results[i] = (None, f"{type(e).__name__}: {e}"[:300])

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def bench_burst(server: PaddockServer, m: Measurement, size: int, rounds: int, sdk: bool) -> None:
    """`rounds` bursts of `size` concurrent creates (REST, or SDK create + first command)."""
    from e2b import Sandbox

    watch = PoolWatch(server)
    rest_tally = Tally()
    failures: collections.Counter = collections.Counter()
    with SdkRetries() as sdk_retries:
        for _ in range(rounds):
            made: List[str] = []

            def rest_once() -> float:
                ms, sid = rest_create(server, rest_tally)
                made.append(sid)
                return ms

            def sdk_once() -> float:
                started = time.perf_counter()
                sandbox = Sandbox.create(timeout=SANDBOX_TIMEOUT_S)
                made.append(server.track(sandbox.sandbox_id))
                sandbox.commands.run("true")
                return (time.perf_counter() - started) * 1000

            try:
                for ms, err in run_burst(size, sdk_once if sdk else rest_once):
                    m.attempts += 1
                    if ms is not None:
                        m.samples.append(ms)
                    else:
                        failures[err or "unknown error"] += 1
            finally:
                kill_all(server, made, m)
                wait_idle(server, m)
    add_failures(m, failures)
    if sdk:
        retried = sdk_retries.tally.text("the SDK") if sdk_retries.known else "the SDK's retries not counted"
    else:
        retried = rest_tally.text("the bench")
    add_note(m, f"{rounds} round(s) of {size} at once; {retried}")
    add_note(m, watch.note())


# ---------------------------------------------------------------------------------------------
# Sustained creates per second.


@dataclass
class Sustained:
    workers: int
    seconds: float
    wall_s: float = 0.0
    creates: int = 0
    attempts: int = 0

    @property
    def rate(self) -> float:
        return self.creates / self.wall_s if self.wall_s > 0 else 0.0


def bench_sustained(server: PaddockServer, m: Measurement, seconds: float, workers: int) -> Sustained:
    """`workers` threads loop REST create (timed) + DELETE (not timed) for `seconds`."""
    out = Sustained(workers, seconds)
    watch = PoolWatch(server)
    tally = Tally()
    failures: collections.Counter = collections.Counter()
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        while time.perf_counter() < stop_at:
            try:
                ms, sid = rest_create(server, tally)
            except Exception as e:  # noqa: BLE001 - counted as a failed attempt
                with lock:
                    m.attempts += 1
                    failures[f"{type(e).__name__}: {e}"[:300]] += 1
                time.sleep(0.1)
                continue
            with lock:
                m.attempts += 1
                m.samples.append(ms)
            try:
                rest_delete(server, sid)
            except Exception as e:  # noqa: BLE001 - a cleanup error; wait_idle kills what is left
                with lock:
                    failures[f"cleanup: {type(e).__name__}: {e}"[:300]] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.wall_s = time.perf_counter() - started
    out.creates, out.attempts = len(m.samples), m.attempts
    add_failures(m, failures)
    wait_idle(server, m)
    add_note(
        m,
        f"{out.rate:.1f} creates/s achieved ({out.creates} of {out.attempts} creates in {out.wall_s:.1f} s, "
        f"{workers} workers); {tally.text('the bench')}",
    )
    add_note(m, watch.note())
    return out


# ---------------------------------------------------------------------------------------------
# Host memory per idle sandbox.


def meminfo() -> Dict[str, int]:
    """/proc/meminfo in bytes."""
    found = {}
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            key, rest = line.split(":", 1)
            parts = rest.split()
            if parts:
                found[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return found


def host_memory(readings: int = 10) -> Dict[str, int]:
    """Median over readings 0.2 s apart of `used` (MemTotal - MemAvailable) and of the kernel's
    parts in MEMINFO_KEYS; `spread` is how far `used` moved between the readings."""
    samples = []
    for i in range(readings):
        if i:
            time.sleep(0.2)
        info = meminfo()
        info["used"] = info["MemTotal"] - info["MemAvailable"]
        samples.append(info)
    found = {k: int(median([s.get(k, 0) for s in samples])) for k in ("used", *MEMINFO_KEYS)}
    found["spread"] = max(s["used"] for s in samples) - min(s["used"] for s in samples)
    return found


def settle_host_memory(max_s: float, tolerance: int, window_s: float = 3.0) -> Tuple[float, bool]:
    """Waits (up to `max_s`) until the host's used memory moved less than `tolerance` bytes over
    `window_s`: the kernel frees what earlier rows' sandboxes left (namespaces, cgroups, loop
    devices) lazily, for tens of seconds. Returns (seconds waited, settled)."""
    started = time.monotonic()
    readings: List[Tuple[float, int]] = []
    while True:
        info = meminfo()
        now = time.monotonic()
        readings.append((now, info["MemTotal"] - info["MemAvailable"]))
        old = [used for t, used in readings if now - t >= window_s]
        if old and abs(readings[-1][1] - old[-1]) < tolerance:
            return now - started, True
        if now - started > max_s:
            return now - started, False
        time.sleep(0.5)


def process_rss(pid: Optional[int]) -> Optional[int]:
    """VmRSS of process `pid` in bytes (None if unreadable)."""
    try:
        for line in open(f"/proc/{pid}/status", encoding="ascii"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def signed_bytes(n: float) -> str:
    return fmt_bytes(n) if n >= 0 else "-" + fmt_bytes(-n)


def _read_int(path) -> Optional[int]:
    try:
        return int(open(path, encoding="ascii").read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stat(path) -> Dict[str, int]:
    try:
        lines = open(path, encoding="ascii").read().splitlines()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split() for line in lines if len(line.split()) == 2)}


def cgroup_memory(sandbox_ids: List[str]) -> Tuple[int, int, int, int]:
    """(sandboxes whose memory cgroup was found, bytes charged to them, of which anonymous
    memory, of which page cache), summed over the sandboxes' top memory cgroup (found like
    paddock_server.py does: a cgroup below `paddock` named after the sandbox; v1 or v2)."""
    wanted = set(sandbox_ids)
    found, usage, anon, cache = 0, 0, 0, 0
    for d in paddock_cgroup_dirs():
        sid = next((s for s in (d.name, d.name.split(".")[0]) if s in wanted), None)
        if sid is None:
            sid = next((s for s in wanted if s in d.name), None)
        if sid is None or sid in d.parent.name:  # a child (`user`) of the sandbox's cgroup
            continue
        if (d / "memory.current").exists():  # v2
            used = _read_int(d / "memory.current")
            stat = _stat(d / "memory.stat")
            a, c = stat.get("anon", 0), stat.get("file", 0)
        elif (d / "memory.usage_in_bytes").exists():  # v1, hierarchical totals
            used = _read_int(d / "memory.usage_in_bytes")
            stat = _stat(d / "memory.stat")
            a, c = stat.get("total_rss", 0), stat.get("total_cache", 0)
        else:
            continue
        if used is None:
            continue
        found, usage, anon, cache = found + 1, usage + used, anon + a, cache + c
    return found, usage, anon, cache


@dataclass
class MemoryResult:
    target: int
    alive: int = 0
    failures: List[str] = field(default_factory=list)
    start_s: float = 0.0
    before: Dict[str, int] = field(default_factory=dict)  # host_memory(), the server idle
    after: Dict[str, int] = field(default_factory=dict)  # with the sandboxes settled
    released: Dict[str, int] = field(default_factory=dict)  # after they were killed, idle again
    server_rss: Tuple[Optional[int], Optional[int]] = (None, None)  # paddock serve, before / after
    settled: Tuple[float, bool] = (0.0, True)  # settle_host_memory() before the first reading
    cgroups: int = 0
    cgroup_bytes: int = 0
    cgroup_anon: int = 0
    cgroup_cache: int = 0
    error: str = ""

    def per_sandbox(self, key: str = "used") -> Optional[float]:
        if not self.alive or key not in self.before or key not in self.after:
            return None
        return (self.after[key] - self.before[key]) / self.alive

    @property
    def process_per_sandbox(self) -> Optional[float]:
        return self.cgroup_bytes / self.cgroups if self.cgroups else None

    @property
    def beyond_processes(self) -> Optional[float]:
        host, proc = self.per_sandbox(), self.process_per_sandbox
        return host - proc if host is not None and proc is not None else None

    def noise(self) -> Optional[str]:
        """Why the host difference may not be the sandboxes' alone, or None: the host's used
        memory did not settle before the first reading, or did not come back to where it was
        after the kill (other processes, e.g. a build), or moved within one set of readings, by
        more than a quarter of the difference."""
        if not self.alive or "used" not in self.after:
            return None
        waited, settled = self.settled
        if not settled:
            return (
                f"the host's used memory was still moving after {waited:.0f} s of waiting before the first "
                "reading (the kernel still freeing what earlier rows left, or other processes): the per-sandbox "
                "host numbers of this run are not reliable"
            )
        if "used" not in self.released:
            return None
        delta = abs(self.after["used"] - self.before["used"])
        drift = self.released["used"] - self.before["used"]
        spread = max(self.before["spread"], self.after["spread"])
        if max(abs(drift), spread) * 4 <= delta:
            return None
        return (
            f"the host's used memory moved by {signed_bytes(drift)} from before to after the kill and by up to "
            f"{fmt_bytes(spread)} within one set of readings, against {signed_bytes(delta)} for the sandboxes: "
            "other processes on the host moved it, the per-sandbox host numbers of this run are not reliable"
        )

    def lines(self) -> List[str]:
        """Markdown lines for the report."""
        if self.error and not self.alive:
            return [f"- not measured: {self.error}"]
        reached = f"{self.alive} of {self.target} sandboxes alive"
        if self.alive < self.target:
            why = self.failures[0] if self.failures else self.error or "unknown"
            reached += f" (the target was not reached: {len(self.failures)} failed creates, first: `{why}`)"
        waited, settled = self.settled
        before = f"after {waited:.0f} s waiting for the host's memory to settle" + ("" if settled else " (it did not)")
        out = [
            f"- {reached}, started in {self.start_s:.1f} s (parallel batches of {MEMORY_BATCH}, not timed; {before}), "
            "then left to settle; host readings are medians of 10 readings 0.2 s apart"
        ]
        host = self.per_sandbox()
        if host is not None:
            released = f", {fmt_bytes(self.released['used'])} after the kill" if "used" in self.released else ""
            out.append(
                f"- host memory used (MemTotal - MemAvailable) per sandbox: **{signed_bytes(host)}** "
                f"({fmt_bytes(self.before['used'])} before, {fmt_bytes(self.after['used'])} with them{released})"
            )
            parts = [f"{k} {signed_bytes(v)}" for k in MEMINFO_KEYS[2:] if (v := self.per_sandbox(k)) is not None]
            rss = self.server_rss
            if rss[0] is not None and rss[1] is not None:
                parts.append(f"`paddock serve` RSS {signed_bytes((rss[1] - rss[0]) / self.alive)}")
            out.append("  - of which, per sandbox (host counters, not exclusive): " + ", ".join(parts))
        proc = self.process_per_sandbox
        if proc is not None:
            out.append(
                f"- the sandboxes' own processes (their memory cgroups: everything charged to them) per sandbox: "
                f"**{fmt_bytes(proc)}** (anonymous {fmt_bytes(self.cgroup_anon / self.cgroups)}, page cache "
                f"{fmt_bytes(self.cgroup_cache / self.cgroups)}; {self.cgroups} cgroups read)"
            )
        else:
            out.append("- the sandboxes' memory cgroups were not found")
        beyond = self.beyond_processes
        if beyond is not None:
            out.append(f"- host memory per sandbox beyond what its processes use: **{signed_bytes(beyond)}**")
        noise = self.noise()
        if noise:
            out.append(f"- note: {noise}")
        return out


def bench_memory(server: PaddockServer, count: int, settle_s: float, settle_max_s: float) -> MemoryResult:
    """Lets the host's memory settle (up to `settle_max_s`), starts `count` idle sandboxes
    (parallel batches), lets them settle (`settle_s`), compares the host's used memory with the
    idle server's, sums their cgroups, then kills them all."""
    out = MemoryResult(count)
    scratch = Measurement("memory", "")  # collects cleanup errors
    made: List[str] = []
    tally = Tally()
    try:
        wait_idle(server, scratch)
        out.settled = settle_host_memory(settle_max_s, max(8 << 20, count * (64 << 10)))
        out.before = host_memory()
        rss_before = process_rss(server.proc.pid if server.proc else None)
        started = time.perf_counter()
        with cf.ThreadPoolExecutor(MEMORY_BATCH) as ex:
            while len(made) < count and len(out.failures) < MEMORY_MAX_FAILURES:
                batch = min(MEMORY_BATCH, count - len(made))
                futures = [ex.submit(rest_create, server, tally) for _ in range(batch)]
                failed = 0
                for fut in futures:
                    try:
                        made.append(fut.result()[1])
                    except Exception as e:  # noqa: BLE001 - the node said no: reported
                        out.failures.append(f"{type(e).__name__}: {e}"[:300])
                        failed += 1
                if failed == batch:
                    break
        out.start_s = time.perf_counter() - started
        out.alive = len(made)
        time.sleep(settle_s)
        wait_pool_full(server)  # refilled, as before the creates
        out.after = host_memory()
        out.server_rss = (rss_before, process_rss(server.proc.pid if server.proc else None))
        out.cgroups, out.cgroup_bytes, out.cgroup_anon, out.cgroup_cache = cgroup_memory(made)
    except Exception as e:  # noqa: BLE001 - reported in the section
        out.error = f"{type(e).__name__}: {e}"[:300]
    finally:
        kill_all(server, made, scratch)
        try:
            wait_idle(server, scratch)
            if out.after:
                time.sleep(settle_s)  # the kernel frees namespaces and loop devices lazily
                settle_host_memory(settle_max_s, max(8 << 20, count * (64 << 10)))
                out.released = host_memory()
        except Exception as e:  # noqa: BLE001
            scratch.errors.append(f"{type(e).__name__}: {e}"[:300])
    if scratch.errors:
        out.error = "; ".join(filter(None, [out.error, *scratch.errors]))[:600]
    return out


# ---------------------------------------------------------------------------------------------
# File throughput.


def bench_files(
    server: PaddockServer, rows: Dict[Tuple[str, int], Measurement], counts: Dict[int, int]
) -> None:
    """`files.write` then `files.read` of `mib` MiB, counts[mib] times, in one live sandbox;
    rows[("write"|"read", mib)] get the samples and MiB/s at the p50."""
    from e2b import Sandbox

    sandbox = Sandbox.create(timeout=SANDBOX_TIMEOUT_S)
    server.track(sandbox.sandbox_id)
    try:
        for mib, n in counts.items():
            data = os.urandom(mib << 20)
            digest = hashlib.sha256(data).hexdigest()
            path = f"/home/user/bench-{mib}m.bin"
            write_m, read_m = rows[("write", mib)], rows[("read", mib)]

            def read_once() -> float:
                started = time.perf_counter()
                got = sandbox.files.read(path, format="bytes")
                elapsed = (time.perf_counter() - started) * 1000
                if len(got) != len(data) or hashlib.sha256(bytes(got)).hexdigest() != digest:
                    raise RuntimeError(f"read back {len(got)} bytes that differ from the {len(data)} written")
                return elapsed

            for _ in range(n):
                wrote = len(write_m.samples)
                write_m.record(lambda: (sandbox.files.write(path, data), None)[1])
                if len(write_m.samples) > wrote:
                    read_m.record(read_once)
                sandbox.commands.run(f"rm -f {path}")
            for m in (write_m, read_m):
                if m.samples:
                    add_note(m, f"{mib / (m.percentile(50) / 1000):.0f} MiB/s at the p50")
    finally:
        try:
            sandbox.kill()
        except Exception as e:  # noqa: BLE001 - the final sweep retries
            rows[("write", next(iter(counts)))].errors.append(f"cleanup: {type(e).__name__}: {e}"[:300])


# ---------------------------------------------------------------------------------------------
# Report lines.


def sustained_lines(s: Optional[Sustained]) -> List[str]:
    if s is None:
        return []
    return [
        f"- sustained creates: **{s.rate:.1f} creates/s** ({s.creates} successful of {s.attempts} REST creates "
        f"in {s.wall_s:.1f} s; {s.workers} workers each looping create + DELETE for {s.seconds:.0f} s)"
    ]


# ---------------------------------------------------------------------------------------------
# The rows, as bench.py runs them.


def burst_rows(label: str, quick: bool, sizes: Tuple[int, ...] = BURST_SIZES) -> List[Tuple[int, bool, Measurement]]:
    """(size, sdk, row) of the burst rows of server `label`: REST, then SDK + first command."""
    rounds = BURST_ROUNDS[int(quick)]
    rows = []
    for sdk in (False, True):
        for size in sizes:
            name = f"{'SDK create + first command' if sdk else 'REST create'}, burst of {size}"
            each = "an SDK create + first command" if sdk else "a REST create"
            what = (
                f"{size} threads released together, each {each} timed from the release; {rounds} round(s), "
                "every sandbox killed after its round (not timed) and the server let go idle before the next; a "
                "429 retried after its Retry-After (up to 3 times, as the SDK does) that then succeeds is a "
                "success, its time includes the wait"
            )
            rows.append((size, sdk, Measurement(name, what, server=label)))
    return rows


def burst_steps(server: PaddockServer, rows: List[Tuple[int, bool, Measurement]], rounds: int) -> List[tuple]:
    """(row, what to print, run) of burst rows, the first one starting once the server is idle
    and its warm pools are full (as every later round does)."""

    def run(m: Measurement, size: int, sdk: bool, first: bool) -> None:
        if first:
            wait_idle(server, m)
        bench_burst(server, m, size, rounds, sdk)

    return [
        (m, f"n={size}x{rounds}", lambda m=m, size=size, sdk=sdk, i=i: run(m, size, sdk, i == 0))
        for i, (size, sdk, m) in enumerate(rows)
    ]


@dataclass
class LoadRows:
    """The rows of bench/load.py, measured on the last server of the run."""

    label: str
    quick: bool
    bursts: List[Tuple[int, bool, Measurement]] = field(init=False)
    sustained: Measurement = field(init=False)
    files: Dict[Tuple[str, int], Measurement] = field(init=False)
    sustained_result: Optional[Sustained] = None
    memory: Optional[MemoryResult] = None

    def __post_init__(self) -> None:
        q = int(self.quick)
        self.rounds = BURST_ROUNDS[q]
        self.seconds = SUSTAINED_S[q]
        self.memory_count = MEMORY_SANDBOXES[q]
        self.file_counts = {mib: counts[q] for mib, counts in FILE_SAMPLES.items()}
        self.bursts = burst_rows(self.label, self.quick)
        self.sustained = Measurement(
            "REST create, sustained",
            f"{SUSTAINED_WORKERS} threads each looping `POST /v2/sandboxes` (timed) + DELETE (not timed) for "
            f"{self.seconds:.0f} s; creates/s is the successful creates over the run's wall time",
            server=self.label,
        )
        self.files = {}
        for mib in FILE_SAMPLES:
            self.files[("write", mib)] = Measurement(
                f"file write, {mib} MiB",
                f"`files.write(path, <{mib} MiB of random bytes>)` into /home/user of one live sandbox",
                server=self.label,
            )
            self.files[("read", mib)] = Measurement(
                f"file read, {mib} MiB",
                '`files.read(path, format="bytes")` of that file (the bytes checked after, not timed)',
                server=self.label,
            )

    def rows(self) -> List[Measurement]:
        return [m for _, _, m in self.bursts] + [self.sustained] + list(self.files.values())

    def burst(self, size: int, sdk: bool) -> Optional[Measurement]:
        return next((m for s, k, m in self.bursts if s == size and k == sdk), None)

    def steps(self, server: PaddockServer, memory_first: bool) -> List[tuple]:
        """(row or None, what to print, run) of the memory row (`memory_first`) or of the other
        load rows, in the order they run: bench.py runs the memory row first on its server,
        before the kernel has to free what many creates leave (which takes it tens of seconds)."""

        def memory() -> None:
            q = int(self.quick)
            self.memory = bench_memory(server, self.memory_count, MEMORY_SETTLE_S[q], MEMORY_SETTLE_MAX_S[q])

        def sustained() -> None:
            self.sustained_result = bench_sustained(server, self.sustained, self.seconds, SUSTAINED_WORKERS)

        def burst(m: Measurement, size: int, sdk: bool) -> Callable[[], None]:
            return lambda: bench_burst(server, m, size, self.rounds, sdk)

        if memory_first:
            return [(None, f"host memory with {self.memory_count} idle sandboxes", memory)]
        steps = [(m, f"n={size}x{self.rounds}", burst(m, size, sdk)) for size, sdk, m in self.bursts]
        steps.append((self.sustained, f"{self.seconds:.0f} s", sustained))
        first_file = self.files[("write", next(iter(FILE_SAMPLES)))]
        steps.append((first_file, f"{self.file_counts}", lambda: bench_files(server, self.files, self.file_counts)))
        return steps

    def describe(self) -> str:
        return (
            f"bursts: {self.rounds} round(s) of each size; sustained: {self.seconds:.0f} s; memory: "
            f"{self.memory_count} idle sandboxes; files (MiB: samples): {self.file_counts}"
        )
