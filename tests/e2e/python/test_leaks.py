"""Resource leaks over many sandbox lifecycles: 200 create/run/kill cycles through the SDK must
leave the host exactly as it was (cgroups, mounts, loop devices, state dirs, network namespaces,
interfaces, nftables rules, processes, and the server's open fds)."""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set

import requests
from e2b import Sandbox
from paddock_server import leaked_cgroups

CYCLES = 200
POOL_DISKS = 4  # paddock_sandbox::namespace::DISK_POOL_SIZE


def _netns_ids() -> Set[str]:
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                found.add(os.readlink(f"/proc/{pid}/ns/net"))
            except OSError:
                pass
    return found


def _links() -> List[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return sorted(n for n in names if n.startswith(("pdk", "veth", "paddock")))


def _nft_shape(ruleset: Optional[str]) -> Optional[List[str]]:
    """The ruleset with the names of network slots (`pdk…`) blanked, lines sorted, without the
    elements of the flow-limit sets: warm
    sandboxes hold slots, and after the cycles the warm ones are other sandboxes on other
    (never reused) slots, so only the names may differ."""
    if ruleset is None:
        return None
    lines = (re.sub(r"pdk[a-z]*[0-9]+", "pdk#", line) for line in ruleset.splitlines())
    # Elements of the per-sandbox flow-limit sets come and go with sandboxes' traffic (they
    # time out, or go when their last tracked connection does): not state anyone must remove.
    return sorted(line for line in lines if not re.search(r'"pdk#" (limit rate|ct count) over', line))


def _nft_ruleset() -> Optional[str]:
    if shutil.which("nft") is None:
        return None
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout


def _descendants(root: int) -> List[int]:
    parents: Dict[int, int] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                parents[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = [], [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


def _shims() -> int:
    r = subprocess.run(["pgrep", "-f", "sandbox-shim"], capture_output=True, text=True)
    return len(r.stdout.split())


def _mount_lines(needle: str) -> List[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line for line in f if needle in line]


def _sandbox_mounts(data_dir: Path) -> List[str]:
    """Mount points under the data dir, except the driver's pool of ready disks (which the
    driver refills in the background, so its count varies)."""
    pool = str(data_dir / "disks" / "pool")
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(str(data_dir)) and not p.startswith(pool)]


def _loop_devices(under: Path) -> List[str]:
    """Loop devices whose image file lies under `under` (deleted images too)."""
    found = []
    for name in os.listdir("/sys/block"):
        try:
            backing = Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
        except OSError:
            continue
        if backing.startswith(str(under)):
            found.append(f"{name}: {backing}")
    return sorted(found)


@dataclass
class Snapshot:
    netns: int
    links: List[str]
    nft: Optional[str]
    descendants: int
    shims: int
    fds: int
    mounts: int
    loops: int
    host_procs: int

    @classmethod
    def take(cls, paddock) -> "Snapshot":
        pid = paddock.proc.pid
        return cls(
            netns=len(_netns_ids()),
            links=_links(),
            nft=_nft_ruleset(),
            descendants=len(_descendants(pid)),
            shims=_shims(),
            fds=len(os.listdir(f"/proc/{pid}/fd")),
            mounts=len(_sandbox_mounts(paddock.data_dir)),
            loops=len(_loop_devices(paddock.data_dir / "sandboxes")),
            host_procs=sum(1 for p in os.listdir("/proc") if p.isdigit()),
        )


def _own_loops(paddock, ids: List[str]) -> List[str]:
    """Loop devices backed by the images of the sandboxes `ids` (others, like the session's
    survivor, may run)."""
    return [d for d in _loop_devices(paddock.data_dir / "sandboxes") if any(sid in d for sid in ids)]


def _settled(paddock, base: Snapshot, ids: List[str], timeout: float = 15) -> Snapshot:
    """Snapshots until process-level counts are back (kills finish asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        now = Snapshot.take(paddock)
        # A killed sandbox's loop device detaches itself once its mount namespace is gone.
        if (now.descendants <= base.descendants and now.netns <= base.netns + 1
                and now.fds <= base.fds + 10 and len(now.links) <= len(base.links)
                and not _own_loops(paddock, ids)) \
                or time.monotonic() > deadline:
            return now
        time.sleep(0.25)


def _warm_pool_full(paddock) -> bool:
    """Whether the node's warm pools are full and nothing is being filled (`/metrics`)."""
    text = requests.get(paddock.api_url + "/metrics", headers={"X-API-Key": paddock.api_key}, timeout=10).text
    values: Dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    ready = values.get('paddock_warm_pool_ready{template="base"}', 0)
    size = values.get('paddock_warm_pool_size{template="base"}', 0)
    return values.get("paddock_warm_pools_filling", 0) == 0 and ready == size


def _wait_for_full_pools(paddock, timeout: float = 20) -> None:
    """Waits until the node's pools (warm sandboxes, network slots, disks) are full and stop
    changing for a second, so the baseline does not catch a pool still refilling."""
    deadline = time.monotonic() + timeout
    last, stable_since = None, time.monotonic()
    while time.monotonic() < deadline:
        if not _warm_pool_full(paddock):
            last = None
            time.sleep(0.1)
            continue
        snap = Snapshot.take(paddock)
        key = (len(snap.links), snap.mounts, snap.loops)
        if key != last:
            last, stable_since = key, time.monotonic()
        elif time.monotonic() - stable_since >= 1.0:
            return
        time.sleep(0.25)


def test_create_kill_cycles_leave_nothing(paddock):
    # Warm up once so lazily created things (template caches, connection pools) are in the baseline.
    warm = Sandbox.create(timeout=120)
    paddock.track(warm.sandbox_id)
    warm.commands.run("true")
    warm.kill()
    _wait_for_full_pools(paddock)
    base = _settled(paddock, Snapshot.take(paddock), [warm.sandbox_id], timeout=5)

    ids: List[str] = []
    started = time.monotonic()
    for i in range(CYCLES):
        s = Sandbox.create(timeout=120)
        paddock.track(s.sandbox_id)
        ids.append(s.sandbox_id)
        r = s.commands.run("true")
        assert r.exit_code == 0, (i, r)
        if i == 0:
            # The checks below look for real things: make sure they exist while a sandbox runs.
            # It came from the warm pool (part of the baseline), which then refilled: one
            # sandbox more than the baseline once the refill is done.
            _wait_for_full_pools(paddock)
            live = Snapshot.take(paddock)
            assert leaked_cgroups({s.sandbox_id}), "no cgroup found for a running sandbox"
            assert (paddock.data_dir / "sandboxes" / s.sandbox_id).is_dir()
            assert live.netns == base.netns + 1 and live.descendants > base.descendants, (base, live)
            # Its disk: mounted on the host, on a loop device backed by its image.
            assert live.mounts == base.mounts + 1 and live.loops == base.loops + 1, (base, live)
        s.kill()
    elapsed = time.monotonic() - started
    print(f"\n{CYCLES} create/run/kill cycles in {elapsed:.1f} s ({elapsed / CYCLES * 1000:.0f} ms each)")

    now = _settled(paddock, base, ids)
    problems: List[str] = []
    cg = leaked_cgroups(set(ids))
    if cg:
        problems.append(f"{len(cg)} cgroup dirs left, e.g. {cg[:3]}")
    mounts = [line for line in _mount_lines(str(paddock.data_dir)) if any(sid in line for sid in ids)]
    if mounts or now.mounts > base.mounts:
        problems.append(f"mounts left: {now.mounts - base.mounts} more, e.g. {mounts[:3]}")
    loops = _own_loops(paddock, ids)
    if loops or now.loops > base.loops:
        problems.append(f"{len(loops)} loop devices backed by sandbox images left, e.g. {loops[:3]}")
    pool = _loop_devices(paddock.data_dir / "disks")
    if len(pool) > POOL_DISKS:
        problems.append(f"{len(pool)} loop devices backed by pool images (at most {POOL_DISKS}): {pool}")
    state = [sid for sid in ids if (paddock.data_dir / "sandboxes" / sid).exists()]
    if state:
        problems.append(f"{len(state)} state dirs left under {paddock.data_dir}/sandboxes, e.g. {state[:3]}")
    if now.netns > base.netns + 1:
        problems.append(f"network namespaces: {base.netns} -> {now.netns}")
    # Network slots are pooled and never reused, so names change; their number must not grow.
    if len(now.links) > len(base.links):
        problems.append(f"interfaces: {base.links} -> {now.links}")
    if _nft_shape(now.nft) != _nft_shape(base.nft):
        diff = "\n".join(difflib.unified_diff((base.nft or "").splitlines(), (now.nft or "").splitlines(), lineterm="", n=1))
        problems.append(f"nftables ruleset changed:\n{diff}")
    if now.descendants > base.descendants or now.shims > base.shims:
        problems.append(
            f"processes under paddock: {base.descendants} -> {now.descendants}, "
            f"sandbox-shim: {base.shims} -> {now.shims}"
        )
    if now.host_procs > base.host_procs + 10:
        problems.append(f"host processes: {base.host_procs} -> {now.host_procs}")
    if now.fds > base.fds + 10:
        problems.append(f"paddock fds: {base.fds} -> {now.fds}")
    assert not problems, "\n".join(problems)
