"""Telemetry overhead (issue 16): what metrics and traces cost a create + first command, four
`paddock serve` side by side on loopback, measured in the same rounds.

The servers (default flags each, the same shared templates dir):
  bare                     `PADDOCK_METRICS=off`: no metric recorded, no trace (the baseline)
  metrics                  the default: every histogram and counter recorded, no trace
  metrics + traces         and every span exported over OTLP/HTTP to a collector, a process of
                           its own on this host (tests/e2e/cluster/otlp.py: it decodes every span)
  metrics + traces, no collector
                           the same with the endpoint a closed port: each export fails
After a warm-up (2 SDK create + first command on each, then every warm pool full) it measures,
one sample per server per round with the order rotating (so drift of the shared host lands on
all alike):
  REST create                 POST /v2/sandboxes until the 201 (kept-alive session; the DELETE
                              after it not timed)
  SDK create + first command  Sandbox.create() + commands.run("true"), as bench.py's rows
and reports p50/p95/p99 of each, what each server adds to the baseline at p50 (in ms and in %,
with a 95 % bootstrap interval of the p50 difference) against the issue's target (under 3 %),
and the spans the collector received. Each server is stopped and leak-checked after.
Numbers are reported, never asserted.

Usage: bench/telemetrybench.py [-n 100] [--write] with the venv's python (scripts/test.sh's);
`--write` replaces the "## Telemetry overhead" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import HEADER, REPO, SDK_WHAT, Measurement, machine, render_table, stop_server  # noqa: E402
from clusterbench import REST_WHAT, Target, p50_interval  # noqa: E402
from docsections import TELEMETRY_TITLE, replace  # noqa: E402
from paddock_server import PaddockServer, ServerError  # noqa: E402

SECTION_TITLE = TELEMETRY_TITLE + " (issue 16)"
TARGET_PERCENT = 3.0
WARM_UP = 2
# (label, environment of the server; COLLECTOR is replaced by the collector's endpoint)
COLLECTOR = "<collector>"
SERVERS = [
    ("bare", {"PADDOCK_METRICS": "off"}),
    ("metrics", {}),
    ("metrics + traces", {"OTEL_EXPORTER_OTLP_ENDPOINT": COLLECTOR}),
    ("metrics + traces, no collector", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}),
]


def start_collector() -> tuple:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "e2e" / "cluster" / "otlp.py")],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    endpoint = proc.stdout.readline().strip()
    if not endpoint.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"the collector did not start: {endpoint!r}")
    return proc, endpoint


def start_server(env: Dict[str, str]) -> PaddockServer:
    """A serve with `env` added to this process's environment while it starts."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return PaddockServer().start(ready_timeout=900)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def measure(targets: List[Target], rows: Dict[str, List[Measurement]], n: int) -> None:
    from bench import bench_sdk_create_and_run

    import load  # bench/load.py: the warm pool's counters

    for t in targets:
        t.use()
        warm = Measurement("warm-up", "")
        bench_sdk_create_and_run(t, warm, WARM_UP)
        if warm.errors:
            print(f"[telemetry] [{t.label}] warm-up failed: {warm.errors}", file=sys.stderr)
    for index, once in (
        (0, lambda t, m: m.record(t.rest_create)),
        (1, lambda t, m: bench_sdk_create_and_run(t, m, 1)),
    ):
        name = rows[targets[0].label][index].name
        print(f"[telemetry] measuring {name} (n={n}, {len(targets)} servers interleaved)...", flush=True)
        for t in targets:
            load.wait_pool_full(t)
        for i in range(n):
            k = i % len(targets)
            for t in targets[k:] + targets[:k]:
                t.use()
                once(t, rows[t.label][index])


def comparison(rows: Dict[str, List[Measurement]]) -> List[str]:
    lines = []
    base_label = SERVERS[0][0]
    for index in (1, 0):
        base = rows[base_label][index]
        if not base.samples:
            lines.append(f"- {base.name}: n/a (no samples on {base_label})")
            continue
        b50 = base.percentile(50)
        for label, _ in SERVERS[1:]:
            m = rows[label][index]
            if not m.samples:
                lines.append(f"- {m.name} [{label}]: n/a (no samples)")
                continue
            d = {p: m.percentile(p) - base.percentile(p) for p in (50, 95, 99)}
            lo, hi = p50_interval(base.samples, m.samples)
            pct = 100 * d[50] / b50
            line = (
                f"- {m.name} [{label}]: {d[50]:+.2f} ms at p50 ({pct:+.1f} %; {m.percentile(50):.2f} against "
                f"{b50:.2f} ms; 95 % bootstrap interval {lo:+.2f} to {hi:+.2f} ms), {d[95]:+.2f} ms at p95, "
                f"{d[99]:+.2f} ms at p99"
            )
            if index == 1:
                line += f"; target under {TARGET_PERCENT:.0f} %: {'met' if pct < TARGET_PERCENT else 'NOT met'}"
            lines.append(line)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    started = time.monotonic()
    notes: List[str] = []
    rows = {
        label: [Measurement("REST create", REST_WHAT, server=label),
                Measurement("SDK create + first command", SDK_WHAT, server=label)]
        for label, _ in SERVERS
    }
    collector, endpoint = start_collector()
    servers: List[PaddockServer] = []
    spans = "?"
    try:
        targets = []
        for label, env in SERVERS:
            env = {k: (endpoint if v == COLLECTOR else v) for k, v in env.items()}
            print(f"[telemetry] starting paddock serve: {label}...", flush=True)
            server = start_server(env)
            servers.append(server)
            targets.append(Target(label, server.api_url, server.api_key, server.client_env(), server.created_ids))
        measure(targets, rows, args.n)
    except (ServerError, RuntimeError, OSError, requests.RequestException) as e:
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        print(f"[telemetry] {msg}", file=sys.stderr)
        notes.append(f"- note: {msg}")
    finally:
        for key in [k for k in os.environ if k.startswith("E2B_")]:
            del os.environ[key]
        for server, (label, _) in zip(servers, SERVERS):
            stop_server(server, label, notes)
        # Stopping sent the spans still buffered.
        try:
            spans = requests.get(endpoint + "/count", timeout=10).text
        except requests.RequestException as e:
            notes.append(f"- note: the collector did not answer: {e}"[:300])
        collector.kill()
        collector.wait(timeout=10)
    ordered = [m for index in (1, 0) for label, _ in SERVERS for m in [rows[label][index]]]
    print(render_table(ordered))
    mach = machine()
    lines = [
        SECTION_TITLE,
        "",
        f"Produced by `bench/telemetrybench.py -n {args.n} --write` (see its docstring): four `paddock serve` "
        "side by side (default flags), without metrics (`PADDOCK_METRICS=off`), with metrics (the default), "
        "with metrics and every span exported over OTLP/HTTP to a collector process on this host, and the same "
        "with no collector listening; one sample per server per round, the order rotating. Numbers are "
        "measured, never asserted.",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {mach['nproc']} CPUs "
        f"({mach['cpu']}), {mach['memory']} RAM, kernel {mach['kernel']}",
        f"- the run took {time.monotonic() - started:.0f} s; the collector received {spans} spans",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(HEADER) - 2)) + "|",
        *("| " + " | ".join(r.row()) + " |" for r in ordered),
        "",
        *comparison(rows),
        *([f"- (n={args.n}: p99 is the slowest sample or close to it; use n=100 for p95/p99)"] if args.n < 100 else []),
        *notes,
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        doc = REPO / "docs" / "benchmarks.md"
        doc.write_text(replace(doc.read_text(), TELEMETRY_TITLE, section))
        print(f"wrote the telemetry section of {doc}")
    return 0 if all(m.samples for m in ordered) else 1


if __name__ == "__main__":
    sys.exit(main())
