"""What bench/bench.py compares Paddock's numbers with, and the report that shows it: the
baselines measured in the same run on the same host, the targets of issue 6, the hardening cost
and the warm pool effect, then the markdown (docs/benchmarks.md) and the console report.

Baselines (once per run, while the default server is up, sequential):
  runc run /bin/true      `runc run` of /bin/true on the base template's rootfs (read-only),
                          including the spawn of the `runc` process
  unshare /bin/true       `unshare` of the namespaces a sandbox gets (user, mount, pid, uts,
                          ipc, net, cgroup) running /bin/true, including the spawn of `unshare`
  fork+exec /bin/true     `posix_spawn` + `waitpid` of /bin/true
Comparisons (sections after the table): every target of the issue next to the measured value
(met / not met), p50 ratios of the create and exec rows to the baselines, the configurations
without a warm pool as ratios of the unhardened one, and the default server (warm pool) against
the one without. Numbers are reported, never asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from bench import BASELINE_KEY, DEFAULT_KEY, HEADER, NOPOOL_KEY, TARGET_RATIO, Measurement, render_table

# The namespaces a hardened sandbox gets (crates/sandbox): the same set for the unshare row.
UNSHARE_ARGS = ["--user", "--map-root-user", "--mount", "--pid", "--fork", "--uts", "--ipc", "--net", "--cgroup"]


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


def bench_unshare(m: Measurement, n: int) -> None:
    """`unshare <the sandbox namespaces> /bin/true`, n times, timed around the whole process."""
    unshare = shutil.which("unshare")
    if unshare is None:
        m.note = "skipped: unshare (util-linux) is not installed"
        return

    def once() -> None:
        r = subprocess.run(
            [unshare, *UNSHARE_ARGS, "/bin/true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=60
        )
        if r.returncode != 0:
            raise RuntimeError(f"unshare exited {r.returncode}: {r.stderr.decode(errors='replace')[:200]}")

    for _ in range(n):
        m.record(once)


def bench_fork_exec(m: Measurement, n: int) -> None:
    def once() -> None:
        pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError("/bin/true failed")

    for _ in range(n):
        m.record(once)


def baseline_rows() -> List[Measurement]:
    """The three baseline rows, in the order of the table: runc, unshare, fork+exec."""
    return [
        Measurement(
            "baseline: runc run /bin/true",
            "`runc run` of /bin/true on the same base rootfs, read-only (the process spawn of `runc` included)",
        ),
        Measurement(
            "baseline: unshare /bin/true",
            f"`unshare {' '.join(UNSHARE_ARGS)} /bin/true`: the namespaces a sandbox gets, "
            "timed around the whole `unshare` process (its spawn, fork and exit included)",
        ),
        Measurement("baseline: fork+exec /bin/true", "`posix_spawn` + `waitpid` of /bin/true on the host"),
    ]


def run_baselines(rows: List[Measurement], templates_dir: Path, n: int) -> None:
    """Measures the rows of `baseline_rows()`; one failure does not hide the others."""
    runc_row, unshare_row, fork_row = rows
    steps = [
        (runc_row, lambda: bench_runc(find_rootfs(templates_dir), runc_row, n)),
        (unshare_row, lambda: bench_unshare(unshare_row, n)),
        (fork_row, lambda: bench_fork_exec(fork_row, n)),
    ]
    for m, run in steps:
        print(f"measuring {m.name} (n={n})...", flush=True)
        try:
            run()
        except Exception as e:  # noqa: BLE001 - one broken measurement must not hide the others
            m.errors.append(f"{type(e).__name__}: {e}"[:300])


def _short(m: Measurement) -> str:
    return m.name.replace("baseline: ", "")


def baseline_ratios(subjects: List[Optional[Measurement]], baselines: List[Measurement]) -> List[str]:
    """`- <row> p50 is X× <baseline> (a ms vs b ms)` for every subject and baseline with samples."""
    lines = []
    for s in subjects:
        if s is None or not s.samples:
            continue
        for b in baselines:
            if not b.samples or b.percentile(50) <= 0:
                continue
            a, c = s.percentile(50), b.percentile(50)
            lines.append(f"- {s.name} [{s.server}] p50 is {a / c:.2f}× {_short(b)} ({a:.2f} ms vs {c:.2f} ms)")
    return lines


@dataclass
class TargetInputs:
    """The measured values the issue's targets are about (None: not measured in this run)."""

    sdk_sequential: Optional[Measurement]  # SDK create + first command, default server
    sdk_burst50: Optional[Measurement]  # SDK create + first command, bursts of 50
    rest_burst50: Optional[Measurement]
    exec_round_trip: Optional[Measurement]
    creates_per_s: Optional[float]
    beyond_processes_bytes: Optional[float]
    alive: int
    memory_noisy: bool  # the host's memory moved for other reasons (MemoryResult.noise())
    runc: Optional[Measurement]
    # Bursts of 50 on servers with a warm pool sized for them (bench.py's `bigpool`).
    pooled_burst50: List[Measurement] = field(default_factory=list)


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def targets(t: TargetInputs) -> List[str]:
    """One markdown line per target of issue 6: the target, the measured value, met / not met."""

    def pct(m: Optional[Measurement], p: int) -> Optional[float]:
        return m.percentile(p) if m is not None and m.samples else None

    lines = []
    p50, p99 = pct(t.sdk_sequential, 50), pct(t.sdk_sequential, 99)
    if p50 is not None and p99 is not None:
        lines.append(
            f"- create + first command (SDK, sequential) p50 ≤ 15 ms: {p50:.2f} ms, {_verdict(p50 <= 15)}; "
            f"p99 ≤ 50 ms: {p99:.2f} ms, {_verdict(p99 <= 50)}"
        )
    else:
        lines.append("- create + first command (SDK, sequential) p50 ≤ 15 ms / p99 ≤ 50 ms: not measured")
    bursts = [("SDK create + first command", t.sdk_burst50), ("REST create", t.rest_burst50)]
    bursts += [(f"{m.name.split(',')[0]}, {m.server}", m) for m in t.pooled_burst50]
    for label, m in bursts:
        b99 = pct(m, 99)
        if m is None or b99 is None:
            lines.append(f"- burst of 50 ({label}): all succeed, p99 ≤ 300 ms: not measured")
            continue
        all_ok = len(m.samples) == m.attempts
        lines.append(
            f"- burst of 50 ({label}): all succeed: {len(m.samples)}/{m.attempts}, {_verdict(all_ok)}; "
            f"p99 ≤ 300 ms: {b99:.2f} ms, {_verdict(b99 <= 300)}"
        )
    e50 = pct(t.exec_round_trip, 50)
    lines.append(
        f"- exec round trip p50 ≤ 3 ms: {e50:.2f} ms, {_verdict(e50 <= 3)}"
        if e50 is not None
        else "- exec round trip p50 ≤ 3 ms: not measured"
    )
    lines.append(
        f"- ≥ 200 creates/s sustained: {t.creates_per_s:.1f} creates/s, {_verdict(t.creates_per_s >= 200)}"
        if t.creates_per_s is not None
        else "- ≥ 200 creates/s sustained: not measured"
    )
    if t.beyond_processes_bytes is not None:
        mib = t.beyond_processes_bytes / (1 << 20)
        noisy = "not judged: other processes moved the host's memory meanwhile"
        verdict = noisy if t.memory_noisy else _verdict(mib <= 3)
        lines.append(
            f"- ≤ 3 MiB of host memory per idle sandbox beyond its processes (with {t.alive} alive): "
            f"{mib:.2f} MiB, {verdict}"
        )
    else:
        lines.append("- ≤ 3 MiB of host memory per idle sandbox beyond its processes: not measured")
    r50 = pct(t.runc, 50)
    if p50 is not None and r50 is not None:
        lines.append(
            f"- faster than `runc run /bin/true` at the median (create + first command p50 vs runc p50): "
            f"{p50:.2f} ms vs {r50:.2f} ms, {_verdict(p50 < r50)}"
        )
    else:
        lines.append("- faster than `runc run /bin/true` at the median: not measured")
    return lines

# ---------------------------------------------------------------------------------------------
# The report: its sections, the markdown, the console.


@dataclass
class Section:
    """A `## title` section of the report after the table: an intro line and bullet lines."""

    title: str
    intro: str
    lines: List[str]


def row_notes(rows: List[Measurement]) -> str:
    """The notes of the rows sharing one name: the note itself for one row, else per server."""
    if len(rows) == 1:
        return f" ({rows[0].note})" if rows[0].note else ""
    notes = [f"[{r.server}] {r.note}" for r in rows if r.note]
    return f" ({'; '.join(notes)})" if notes else ""


def render_markdown(
    results: List[Measurement],
    info: dict,
    n: int,
    n_heavy: int,
    extra: List[str],
    configs: List[tuple],  # (ServerConfig, its flags)
    sections: List[Section],
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Produced by `bench/run.sh` (see `bench/bench.py`, `bench/load.py`, `bench/baselines.py`); "
        "numbers are measured, never asserted.",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, kernel {info['kernel']}; "
        f"load average (1/5/15 min) at the start {info['load_start']}, at the end {info['load_end']}",
        f"- samples per measurement: {n} (sequential, one at a time); snapshot, create from snapshot "
        f"and fork rows: {n_heavy}; {info['load_samples']}",
        f"- paddock: `{info['paddock']}`, e2b Python SDK {info['e2b']}",
        "- servers, started one after the other in this order (each stopped and leak-checked before "
        "the next starts; the same warm-up of 2 SDK create + first command on each):",
    ]
    for c, flags in configs:
        shown = f"`paddock serve {' '.join(flags)}`" if flags else "`paddock serve` (default flags)"
        lines.append(f"  - {c.label}: {shown}")
    if any(c.key == BASELINE_KEY for c, _ in configs):
        lines.append(
            '  - "unhardened" turns off the user namespace, seccomp filter, capability cut, /proc masks '
            "and networking; the per-sandbox disk (loop ext4) and the cgroups are the same in all of them"
        )
    lines += info.get("notes", [])
    lines += [
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(HEADER) - 2)) + "|",
    ]
    for r in results:
        lines.append("| " + " | ".join(r.row()) + " |")
    for s in sections:
        if s.lines:
            lines += ["", f"## {s.title}", ""] + ([s.intro, ""] if s.intro else []) + s.lines
    lines += ["", "## What each row measures", ""]
    by_name: Dict[str, List[Measurement]] = {}
    for r in results:
        by_name.setdefault(r.name, []).append(r)
    for name, rows in by_name.items():
        lines.append(f"- **{name}**: {rows[0].what}{row_notes(rows)}")
    for r in results:
        for e in r.errors:
            where = f" [{r.server}]" if r.server != "-" else ""
            lines.append(f"- error in {r.name}{where}: `{e}`")
    lines += extra
    return "\n".join(lines) + "\n"


def print_report(
    results: List[Measurement], info: dict, n: int, n_heavy: int, sections: List[Section], notes: List[str]
) -> None:
    """The console version of the report."""
    print()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['memory']} RAM, kernel {info['kernel']}")
    print(f"load average (1/5/15 min): at the start {info['load_start']}, at the end {info['load_end']}")
    print(
        f"samples per measurement: {n} (snapshot, create from snapshot and fork rows: {n_heavy}); "
        f"{info['load_samples']}"
    )
    print(render_table(results))
    for m in results:
        where = f" [{m.server}]" if m.server != "-" else ""
        if m.note:
            print(f"  {m.name}{where}: {m.note}")
        for e in m.errors:
            print(f"  {m.name}{where} error: {e}")
    for s in sections:
        if s.lines:
            print(f"\n{s.title}:" + (f" {s.intro}" if s.intro else ""))
            for line in s.lines:
                print(line)
    for line in notes:
        print(line)


# ---------------------------------------------------------------------------------------------
# The comparisons of the report: targets, baselines, hardening cost, warm pool effect.


def hardening_cost(create_rows: Dict[str, List[Measurement]], configs: List, target_key: str) -> List[str]:
    """Lines with p50/p99 of every other configuration in `configs` as a ratio of the
    unhardened one; the SDK rows of `target_key` are held against TARGET_RATIO."""
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
                if c.key == target_key and name.startswith("SDK create"):
                    within = "within" if ratio <= TARGET_RATIO else "NOT within"
                    verdict = f"; {within} the {TARGET_RATIO:.2f}x target"
                lines.append(
                    f"- {name} p{p}, {c.label}: {ratio:.2f}x unhardened ({v:.2f} ms vs {b:.2f} ms{verdict})"
                )
    return lines


def pool_effect(rows: Dict[str, List[Measurement]], pooled_label: str, cold_label: str) -> List[str]:
    """Markdown lines: p50/p99 of the default server (warm pool) against the one without."""
    lines = []
    for name, ms in rows.items():
        pooled = next((m for m in ms if m.server == pooled_label and m.samples), None)
        cold = next((m for m in ms if m.server == cold_label and m.samples), None)
        for p in (50, 99):
            if pooled is None or cold is None:
                lines.append(f"- {name} p{p}: n/a (no samples)")
                continue
            a, b = pooled.percentile(p), cold.percentile(p)
            lines.append(
                f"- {name} p{p}: {a:.2f} ms with the pool, {b:.2f} ms without ({a / b:.2f}x)"
                if b > 0
                else f"- {name} p{p}: {a:.2f} ms with the pool, {b:.2f} ms without"
            )
    return lines


@dataclass
class RunRows:
    """What one run of bench.py measured, for the comparisons."""

    configs: List  # the ServerConfigs that ran, in order
    last: object  # the last of them (the default server): once rows, load rows
    rest: Dict[str, Measurement]  # REST create, sequential, by config key
    sdk: Dict[str, Measurement]  # SDK create + first command, sequential, by config key
    exec_row: Optional[Measurement]
    loads: Optional[object]  # load.LoadRows
    base: List[Measurement]  # baseline_rows()
    quick: bool
    n: int
    pooled_bursts: List[Measurement] = field(default_factory=list)  # the bursts-only servers' rows


def report_sections(r: RunRows) -> List[Section]:
    """The sections after the table: targets, memory, sustained creates, baselines, hardening
    cost (configurations without a warm pool), warm pool effect."""
    import load

    loads = r.loads
    memory = loads.memory if loads else None
    sustained = loads.sustained_result if loads else None
    target_lines = targets(
        TargetInputs(
            sdk_sequential=r.sdk.get(r.last.key),
            sdk_burst50=loads.burst(50, True) if loads else None,
            rest_burst50=loads.burst(50, False) if loads else None,
            exec_round_trip=r.exec_row,
            creates_per_s=sustained.rate if sustained is not None else None,
            beyond_processes_bytes=memory.beyond_processes if memory is not None else None,
            alive=memory.alive if memory is not None else 0,
            memory_noisy=memory is not None and memory.noise() is not None,
            runc=r.base[0],
            pooled_burst50=[m for m in r.pooled_bursts if m.name.endswith("burst of 50")],
        )
    )
    subjects = [r.rest.get(r.last.key), r.sdk.get(r.last.key), r.exec_row]

    create_rows = {"REST create": list(r.rest.values()), "SDK create + first command": list(r.sdk.values())}
    # Hardening is compared without a warm pool: the cold configurations.
    cold = [c for c in r.configs if c.cold]
    cost = hardening_cost(create_rows, cold, NOPOOL_KEY) if r.rest else []
    if cost and r.n < 100:
        cost.append(f"- (n={r.n}: p99 is the slowest sample or close to it; use the full run for p99)")

    by_key = {c.key: c for c in r.configs}
    if DEFAULT_KEY not in by_key or NOPOOL_KEY not in by_key or not r.rest:
        pool_lines = ["- not measured: the servers with and without the pool were not both part of this run"]
    else:
        pool_lines = pool_effect(create_rows, by_key[DEFAULT_KEY].label, by_key[NOPOOL_KEY].label)
    few = "; a quick run has few samples" if r.quick else ""
    return [
        Section(
            "Targets (issue 6)",
            f"The issue's targets for these machines next to this run's numbers ({r.last.label} server; "
            f"reported, not asserted{few}):",
            target_lines,
        ),
        Section("Host memory per idle sandbox", "", memory.lines() if memory is not None else []),
        Section("Sustained creates", "", load.sustained_lines(sustained)),
        Section(
            "Compared with the baselines",
            "p50 ratios to the baselines measured in the same run on the same host:",
            baseline_ratios(subjects, r.base),
        ),
        Section(
            "Hardening cost", "Ratios to the unhardened server, same run, configurations without a warm pool:", cost
        ),
        Section("Warm pool effect", "The default server (warm pool) against the one without a pool:", pool_lines),
    ]
