"""Sandbox metrics through the official SDK (`Sandbox.get_metrics`) and the batch endpoint over
raw HTTP. The node samples every sandbox from the host every 5 s (cgroup CPU and memory, the
sandbox disk's statvfs) and takes one at once when a running sandbox has none yet.

Expected numbers, computed rather than guessed:
- CPU: a sandbox has 2 CPUs (default) and `cpuUsedPct` is the share of those 2 CPUs used over
  the sampling interval, so one core kept busy (`yes > /dev/null`) for a whole interval reads
  about 50 %. A 12 s load covers at least one full 5 s interval, so some sample must exceed
  20 % (the brief's floor) and none may exceed about 50 % plus envd's noise (60 %).
- Disk: the sandbox disk is an ext4 file system of 10240 MiB; statvfs reports it minus ext4's
  metadata overhead (a few %), so `diskTotal` is within 10 % below 10 GiB. Writing 100 MiB
  (then `sync`) raises `diskUsed` by 100 MiB plus a few blocks of metadata.
- Memory: touching 200 MiB of anonymous memory in one process raises `memUsed` by at least
  180 MiB (the rest of the 200 may be the interpreter's baseline being reused) and by less
  than 260 MiB (python itself is ~10 MiB).
Waits poll for a condition with a generous deadline; no assertion depends on timing.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from e2b import Sandbox
from e2b.exceptions import SandboxException
from paddock_server import wait_for as _wait_for

MIB = 1024 * 1024
GIB = 1024 * MIB


def wait_for(check, what: str, timeout: float = 45.0, interval: float = 0.5):
    """`paddock_server.wait_for` with this file's slower defaults (samples come every second)."""
    return _wait_for(check, what, timeout=timeout, interval=interval)


def samples_after(sbx: Sandbox, t: float):
    """Samples whose timestamp is strictly after unix time `t` (sub-second precision)."""
    return [m for m in sbx.get_metrics() if m.timestamp.timestamp() > t]


def test_metrics_non_empty_and_plausible_right_after_create(new_sandbox):
    sbx = new_sandbox()
    metrics = sbx.get_metrics()
    assert len(metrics) >= 1, "a running sandbox always has a sample"
    m = metrics[-1]
    assert m.cpu_count == 2
    assert 0.0 <= m.cpu_used_pct <= 100.0
    assert m.mem_total == 512 * MIB
    assert 0 < m.mem_used < m.mem_total
    assert 0 <= m.mem_cache < m.mem_total
    assert 0.9 * 10 * GIB < m.disk_total <= 10 * GIB, m.disk_total
    assert 0 < m.disk_used < 200 * MIB, "a fresh writable layer is nearly empty"
    age = datetime.now(timezone.utc) - m.timestamp
    assert timedelta(seconds=-2) < age < timedelta(seconds=30)


def test_cpu_load_of_one_core_reads_about_half_of_two_cpus(new_sandbox):
    sbx = new_sandbox()
    sbx.get_metrics()
    load_start = time.time()
    sbx.commands.run("timeout 12 yes > /dev/null", background=True)

    def busy_samples():
        ms = samples_after(sbx, load_start)
        return ms if any(m.cpu_used_pct > 20 for m in ms) else None

    ms = wait_for(busy_samples, "a sample showing the busy core")
    peak = max(m.cpu_used_pct for m in ms)
    assert 20 < peak <= 60, [m.cpu_used_pct for m in ms]

    # Once the load is over, the CPU share falls back to (nearly) nothing.
    end_of_load = load_start + 12.5
    wait_for(
        lambda: time.time() > end_of_load + 5.5 and samples_after(sbx, end_of_load + 5.5),
        "a sample after the load ended",
        timeout=60,
    )
    idle = [m.cpu_used_pct for m in samples_after(sbx, end_of_load + 5.5)]
    assert min(idle) < 5, idle


def test_writing_100_mib_raises_disk_used(new_sandbox):
    sbx = new_sandbox()
    before = sbx.get_metrics()[-1]
    assert 0.9 * 10 * GIB < before.disk_total <= 10 * GIB, before.disk_total
    sbx.commands.run("dd if=/dev/zero of=/home/user/big bs=1M count=100 status=none && sync")
    written = time.time()
    after = wait_for(lambda: samples_after(sbx, written), "a sample after the write")[-1]
    grown = after.disk_used - before.disk_used
    assert 95 * MIB <= grown <= 110 * MIB, grown / MIB
    assert after.disk_total == before.disk_total

    sbx.commands.run("rm /home/user/big && sync")
    removed = time.time()
    after_rm = wait_for(lambda: samples_after(sbx, removed), "a sample after the delete")[-1]
    assert after_rm.disk_used - before.disk_used < 10 * MIB


def test_allocating_200_mib_raises_mem_used(new_sandbox):
    sbx = new_sandbox()
    before = sbx.get_metrics()[-1]
    hog = sbx.commands.run(
        "python3 -c \"import time; b = b'x' * (200 << 20); "
        "open('/tmp/allocated', 'w').close(); time.sleep(120)\"",
        background=True,
    )
    wait_for(lambda: sbx.files.exists("/tmp/allocated"), "the allocation")
    allocated = time.time()
    after = wait_for(lambda: samples_after(sbx, allocated), "a sample after the allocation")[-1]
    grown = after.mem_used - before.mem_used
    assert 180 * MIB <= grown < 260 * MIB, grown / MIB
    assert after.mem_used < after.mem_total
    hog.kill()


def test_start_and_end_filters(new_sandbox):
    sbx = new_sandbox()
    ms = wait_for(
        lambda: (lambda all_: all_ if len({int(m.timestamp.timestamp()) for m in all_}) >= 3 else None)(
            sbx.get_metrics()
        ),
        "three samples in different seconds",
    )
    secs = [int(m.timestamp.timestamp()) for m in ms]
    assert secs == sorted(secs), "oldest first"
    first, last = secs[0], secs[-1]
    dt = lambda s: datetime.fromtimestamp(s, tz=timezone.utc)  # noqa: E731

    only_last = sbx.get_metrics(start=dt(last))
    assert only_last and all(int(m.timestamp.timestamp()) >= last for m in only_last)
    only_first = sbx.get_metrics(end=dt(first))
    assert only_first and all(int(m.timestamp.timestamp()) <= first for m in only_first)
    middle = sbx.get_metrics(start=dt(first + 1), end=dt(last - 1))
    assert all(first < int(m.timestamp.timestamp()) < last for m in middle)
    assert len(middle) < len(ms)
    assert sbx.get_metrics(end=dt(first - 3600)) == []


def test_metrics_of_a_killed_sandbox_is_not_found(new_sandbox, api, auth):
    sbx = new_sandbox()
    assert sbx.get_metrics()
    sbx.kill()
    r = requests.get(f"{api}/sandboxes/{sbx.sandbox_id}/metrics", headers=auth, timeout=10)
    assert r.status_code == 404
    assert r.json()["code"] == 404
    with pytest.raises(SandboxException):
        Sandbox.get_metrics(sbx.sandbox_id)


def test_bad_query_values_are_400(new_sandbox, api, auth):
    sbx = new_sandbox()
    for q in ["start=yesterday", "start=10&end=5", "end=-1"]:
        r = requests.get(f"{api}/sandboxes/{sbx.sandbox_id}/metrics?{q}", headers=auth, timeout=10)
        assert r.status_code == 400, (q, r.text)
        assert r.json()["code"] == 400


def test_batch_endpoint_returns_latest_sample_per_running_sandbox(new_sandbox, api, auth):
    a = new_sandbox()
    b = new_sandbox()
    gone = new_sandbox()
    gone.kill()
    ids = ",".join([a.sandbox_id, b.sandbox_id, gone.sandbox_id, "inotasandbox"])

    def both_sampled():
        r = requests.get(f"{api}/sandboxes/metrics", params={"sandbox_ids": ids}, headers=auth, timeout=10)
        assert r.status_code == 200, r.text
        got = r.json()["sandboxes"]
        return got if len(got) == 2 else None

    # The sampler measures every running sandbox within 5 s.
    got = wait_for(both_sampled, "samples of both running sandboxes")
    assert set(got) == {a.sandbox_id, b.sandbox_id}
    for m in got.values():
        assert set(m) == {
            "timestamp", "timestampUnix", "cpuCount", "cpuUsedPct", "memUsed", "memTotal",
            "memCache", "diskUsed", "diskTotal",
        }
        assert m["cpuCount"] == 2 and m["memTotal"] == 512 * MIB
        assert abs(datetime.fromisoformat(m["timestamp"].replace("Z", "+00:00")).timestamp()
                   - m["timestampUnix"]) < 1
    latest_a = a.get_metrics()[-1]
    assert got[a.sandbox_id]["timestampUnix"] <= int(latest_a.timestamp.timestamp())

    too_many = ",".join(f"i{n}" for n in range(101))
    r = requests.get(f"{api}/sandboxes/metrics", params={"sandbox_ids": too_many}, headers=auth, timeout=10)
    assert r.status_code == 400 and "maximum is 100" in r.json()["message"]
    r = requests.get(f"{api}/sandboxes/metrics", headers=auth, timeout=10)
    assert r.status_code == 400
