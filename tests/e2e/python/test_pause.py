"""Pause and resume through the official SDK: a paused sandbox keeps its processes, memory and
files (it is frozen with the cgroup freezer, the same processes continue), uses no CPU, shows
as `paused`, resumes on connect, can be killed, and with `lifecycle` pauses at its timeout and
wakes on HTTP traffic to a port inside it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from e2b import Sandbox, SandboxQuery, SandboxState

COUNTER = "/home/user/counter.txt"
# Appends 1, 2, 3, ... every 100 ms; the count lives only in the process's memory, so a
# restarted process would start again at 1.
COUNTER_SCRIPT = (
    "import time\n"
    "i = 0\n"
    "while True:\n"
    "    i += 1\n"
    f"    with open('{COUNTER}', 'a') as f:\n"
    "        f.write(f'{i}\\n')\n"
    "    time.sleep(0.1)\n"
)


def _upper(paddock, sandbox_id: str, path: str) -> Path:
    """Where a file of the sandbox's writable layer lives on the host (readable while the
    sandbox is frozen, without asking envd)."""
    return paddock.data_dir / "sandboxes" / sandbox_id / "disk" / "upper" / path.lstrip("/")


def _numbers(text: str) -> list:
    return [int(x) for x in text.split()]


def _wait(predicate, what: str, timeout: float = 30.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


CGROUP_GLOBS = ("*/paddock/*/{id}", "paddock/*/{id}")


def _cgroup_dirs(sandbox_id: str) -> list:
    """The sandbox's cgroup directories on this host (v1 hierarchies or the v2 tree)."""
    root = Path("/sys/fs/cgroup")
    return [d for g in CGROUP_GLOBS for d in root.glob(g.format(id=sandbox_id))]


def _cpu_usage_usec(sandbox_id: str) -> int:
    """Total CPU time of the sandbox's cgroup (v1 cpuacct or v2 cpu.stat), in microseconds."""
    for base in _cgroup_dirs(sandbox_id):
        acct = base / "cpuacct.usage"
        if acct.exists():
            return int(acct.read_text()) // 1000
        stat = base / "cpu.stat"
        if stat.exists():
            for line in stat.read_text().splitlines():
                if line.startswith("usage_usec"):
                    return int(line.split()[1])
    raise AssertionError(f"no cpu accounting found for {sandbox_id}")


def test_counter_keeps_counting_from_where_it_was(new_sandbox, paddock):
    sbx = new_sandbox(timeout=300)
    sbx.files.write("/home/user/counter.py", COUNTER_SCRIPT)
    proc = sbx.commands.run("python3 /home/user/counter.py", background=True, timeout=0)
    host_file = _upper(paddock, sbx.sandbox_id, COUNTER)
    _wait(lambda: host_file.exists() and len(_numbers(host_file.read_text())) >= 5, "counter")

    assert sbx.pause() is True
    assert sbx.get_info().state == SandboxState.PAUSED
    # Frozen: the file does not grow and the cgroup uses no CPU while it is paused.
    frozen_text = host_file.read_text()
    cpu_before = _cpu_usage_usec(sbx.sandbox_id)
    time.sleep(1.0)
    assert host_file.read_text() == frozen_text, "a paused sandbox kept writing"
    assert _cpu_usage_usec(sbx.sandbox_id) == cpu_before, "a paused sandbox used CPU"
    # envd is frozen too: the proxy answers for it (502, which the SDK reads as not running).
    assert sbx.is_running() is False

    resumed = Sandbox.connect(sbx.sandbox_id)
    assert resumed.get_info().state == SandboxState.RUNNING
    paused_at = _numbers(frozen_text)[-1]
    _wait(lambda: _numbers(resumed.files.read(COUNTER))[-1] >= paused_at + 5, "counting after resume")
    numbers = _numbers(resumed.files.read(COUNTER))
    # One process counted all along: 1, 2, 3, ... with no restart and no gap.
    assert numbers == list(range(1, len(numbers) + 1))
    # The very same process (same pid) is still running.
    pids = [p.pid for p in resumed.commands.list()]
    assert proc.pid in pids, pids


@pytest.mark.parametrize("mode", ["full", "filesystem"])
def test_twenty_cycles_lose_no_byte(new_sandbox, mode):
    sbx = new_sandbox(timeout=300)
    sid = sbx.sandbox_id
    written = {}
    log = b""
    for i in range(20):
        data = (f"cycle {i} ".encode() * (97 * (i + 1)))[: 4096 + i * 1000] + bytes(range(256))
        path = f"/home/user/cycles/file-{i}.bin"
        sbx.files.write(path, data)
        written[path] = data
        line = f"line {i}\n".encode()
        sbx.commands.run(f"printf 'line {i}\\n' >> /home/user/cycles/log.txt")
        log += line
        assert sbx.pause(mode=mode) is True
        sbx = Sandbox.connect(sid)
        # Everything written so far, in every cycle, is still there byte for byte.
        for p, want in written.items():
            assert bytes(sbx.files.read(p, format="bytes")) == want, p
        assert bytes(sbx.files.read("/home/user/cycles/log.txt", format="bytes")) == log


def test_pause_twice_returns_false_then_connect_resumes(new_sandbox, api, auth):
    sbx = new_sandbox(timeout=300)
    sbx.files.write("/home/user/keep.txt", "kept")
    assert sbx.pause() is True
    assert sbx.pause() is False  # 409: already paused
    r = requests.post(f"{api}/sandboxes/{sbx.sandbox_id}/pause", json={}, headers=auth, timeout=10)
    assert r.status_code == 409, r.text
    assert r.json()["code"] == 409

    r = requests.post(f"{api}/v2/sandboxes/{sbx.sandbox_id}/connect", json={"timeout": 60}, headers=auth, timeout=30)
    assert r.status_code == 201, r.text  # resumed
    r = requests.post(f"{api}/v2/sandboxes/{sbx.sandbox_id}/connect", json={"timeout": 60}, headers=auth, timeout=30)
    assert r.status_code == 200, r.text  # already running
    assert sbx.files.read("/home/user/keep.txt") == "kept"
    assert sbx.commands.run("echo alive").stdout.strip() == "alive"


def test_list_and_info_show_paused(new_sandbox):
    sbx = new_sandbox(timeout=300, metadata={"test": "pause-list"})
    other = new_sandbox(timeout=300, metadata={"test": "pause-list"})
    assert sbx.pause() is True
    info = sbx.get_info()
    assert info.state == SandboxState.PAUSED

    def ids(states):
        query = SandboxQuery(metadata={"test": "pause-list"}, state=states)
        return {s.sandbox_id: s.state for s in Sandbox.list(query=query).next_items()}

    assert ids([SandboxState.PAUSED]) == {sbx.sandbox_id: SandboxState.PAUSED}
    assert ids([SandboxState.RUNNING]) == {other.sandbox_id: SandboxState.RUNNING}
    assert ids([SandboxState.RUNNING, SandboxState.PAUSED]) == {
        sbx.sandbox_id: SandboxState.PAUSED,
        other.sandbox_id: SandboxState.RUNNING,
    }


def test_kill_while_paused(new_sandbox, paddock):
    sbx = new_sandbox(timeout=300)
    sbx.commands.run("sleep 1000", background=True, timeout=0)
    assert sbx.pause() is True
    assert sbx.kill() is True
    assert sbx.sandbox_id not in {s.sandbox_id for s in Sandbox.list().next_items()}
    with pytest.raises(Exception):
        Sandbox.connect(sbx.sandbox_id)
    # Nothing of it is left on the host.
    assert _cgroup_dirs(sbx.sandbox_id) == []
    assert not (paddock.data_dir / "sandboxes" / sbx.sandbox_id).exists()


HTTP_PORT = 8123


def _serve_http(sbx: Sandbox) -> None:
    sbx.files.write("/home/user/www/hello.txt", "hello from inside")
    sbx.commands.run(f"python3 -m http.server {HTTP_PORT}", background=True, cwd="/home/user/www", timeout=0)


def _get(paddock, sbx: Sandbox, path: str) -> requests.Response:
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(HTTP_PORT)}
    return requests.get(paddock.sandbox_url + path, headers=headers, timeout=30)


def test_auto_pause_on_timeout_then_auto_resume_on_http(new_sandbox, paddock):
    sbx = new_sandbox(timeout=6, lifecycle={"on_timeout": "pause", "auto_resume": True})
    info = sbx.get_info()
    assert info.lifecycle == {"auto_resume": True, "on_timeout": "pause"}, info.lifecycle
    _serve_http(sbx)
    _wait(lambda: _get(paddock, sbx, "/hello.txt").status_code == 200, "http server inside")

    # At its end time it is paused, not killed.
    _wait(lambda: Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED, "auto-pause", timeout=20)

    # An HTTP request to the port wakes it, and is answered by the server inside.
    r = _get(paddock, sbx, "/hello.txt")
    assert r.status_code == 200, r.text
    assert r.text == "hello from inside"
    assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING


def test_paused_without_auto_resume_answers_paused(new_sandbox, paddock):
    sbx = new_sandbox(timeout=300, lifecycle={"on_timeout": "pause", "auto_resume": False})
    _serve_http(sbx)
    _wait(lambda: _get(paddock, sbx, "/hello.txt").status_code == 200, "http server inside")
    assert sbx.pause() is True
    r = _get(paddock, sbx, "/hello.txt")
    assert r.status_code == 409, r.text
    assert r.json() == {
        "sandboxId": sbx.sandbox_id,
        "message": "The sandbox is paused",
        "code": 409,
        "canAutoResume": False,
    }
    assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED
    # connect resumes it; the server inside answers again (the same process).
    Sandbox.connect(sbx.sandbox_id)
    r = _get(paddock, sbx, "/hello.txt")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("attempt", range(6))
def test_connect_right_after_a_zero_timeout_pause_runs_commands(new_sandbox, attempt):
    """E2B's SDK test: `lifecycle={"on_timeout": "pause"}`, `set_timeout(0)`, then `connect()`
    at once. Whichever of the timeout's pause and the connect comes first, the connect returns
    a running sandbox: it must not extend a record still marked running while the freeze lands
    after it (commands then failed with "The sandbox is paused")."""
    sbx = new_sandbox(timeout=300, lifecycle={"on_timeout": "pause"})
    sbx.set_timeout(0)
    connected = Sandbox.connect(sbx.sandbox_id)
    assert connected.is_running()
    result = connected.commands.run("echo alive")
    assert result.exit_code == 0 and result.stdout.strip() == "alive"
    assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING


def test_paused_sandbox_survives_a_crash_of_the_server():
    """The freeze lives in the kernel: a server killed with SIGKILL and started again on the
    same data dir adopts the frozen sandbox as `paused`, and connect resumes it."""
    from paddock_server import PaddockServer

    first = PaddockServer().start()
    headers = {"X-API-Key": first.api_key}
    r = requests.post(first.api_url + "/v2/sandboxes", json={"templateID": "base", "timeout": 600}, headers=headers, timeout=120)
    assert r.status_code == 201, r.text
    sid = first.track(r.json()["sandboxID"])
    envd = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983"}
    assert requests.get(first.sandbox_url + "/health", headers=envd, timeout=10).status_code == 204
    r = requests.post(f"{first.api_url}/sandboxes/{sid}/pause", json={}, headers=headers, timeout=30)
    assert r.status_code == 204, r.text
    first.crash()

    second = PaddockServer(data_dir=first.data_dir, api_key=first.api_key, created_ids=first.created_ids).start()
    try:
        r = requests.get(f"{second.api_url}/sandboxes/{sid}", headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "paused", r.text
        assert requests.get(second.sandbox_url + "/health", headers=envd, timeout=10).status_code == 502
        r = requests.post(f"{second.api_url}/v2/sandboxes/{sid}/connect", json={}, headers=headers, timeout=30)
        assert r.status_code == 201, r.text
        assert requests.get(second.sandbox_url + "/health", headers=envd, timeout=10).status_code == 204
    finally:
        assert second.stop() == 0, second.log_tail()
        assert second.leaks() == [], second.log_tail()
        first.cleanup(keep_data_dir=True)
        second.cleanup()


def _pause_mode(api, auth, sandbox_id: str):
    r = requests.get(f"{api}/sandboxes/{sandbox_id}", headers=auth, timeout=10)
    assert r.status_code == 200, r.text
    return r.json().get("pauseMode")


def _start_counter(sbx: Sandbox):
    sbx.files.write("/home/user/counter.py", COUNTER_SCRIPT)
    proc = sbx.commands.run("python3 /home/user/counter.py", background=True, timeout=0)
    _wait(lambda: sbx.files.exists(COUNTER) and len(_numbers(sbx.files.read(COUNTER))) >= 3, "counter")
    return proc


def test_filesystem_pause_keeps_files_and_frees_everything_else(new_sandbox, api, auth, paddock):
    sbx = new_sandbox(timeout=300)
    proc = _start_counter(sbx)
    sbx.files.write("/home/user/kept.bin", bytes(range(256)) * 64)
    assert sbx.pause(mode="filesystem") is True
    assert sbx.get_info().state == SandboxState.PAUSED
    assert _pause_mode(api, auth, sbx.sandbox_id) == "filesystem"
    # No process, no cgroup (so no memory), no mounted disk is left on the host.
    assert _cgroup_dirs(sbx.sandbox_id) == []
    disk = paddock.data_dir / "sandboxes" / sbx.sandbox_id / "disk"
    assert not disk.is_mount()
    assert (paddock.data_dir / "sandboxes" / sbx.sandbox_id / "disk.img").is_file()
    assert sbx.pause() is False, "pausing a paused sandbox"

    resumed = Sandbox.connect(sbx.sandbox_id)
    assert resumed.get_info().state == SandboxState.RUNNING
    assert _pause_mode(api, auth, sbx.sandbox_id) is None
    assert bytes(resumed.files.read("/home/user/kept.bin", format="bytes")) == bytes(range(256)) * 64
    # Files are kept; processes are not: the counter stopped where the pause found it.
    counted = _numbers(resumed.files.read(COUNTER))
    assert counted == list(range(1, len(counted) + 1))
    assert proc.pid not in [p.pid for p in resumed.commands.list()]
    assert resumed.commands.run("echo alive").stdout == "alive\n"


def test_connect_with_reboot_starts_a_memory_paused_sandbox_from_its_files(new_sandbox, api, auth):
    sbx = new_sandbox(timeout=300)
    proc = _start_counter(sbx)
    assert sbx.pause() is True
    assert _pause_mode(api, auth, sbx.sandbox_id) == "full"
    r = requests.post(
        f"{api}/v2/sandboxes/{sbx.sandbox_id}/connect", json={"timeout": 60, "memory": False}, headers=auth, timeout=60
    )
    assert r.status_code == 201, r.text
    resumed = Sandbox.connect(sbx.sandbox_id)
    assert len(_numbers(resumed.files.read(COUNTER))) >= 3
    assert proc.pid not in [p.pid for p in resumed.commands.list()]


def test_auto_pause_to_disk_on_timeout(new_sandbox, api, auth):
    sbx = new_sandbox(timeout=4, lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}})
    sbx.files.write("/home/user/before-timeout.txt", "still here")
    _wait(lambda: Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED, "auto-pause", timeout=20)
    assert _pause_mode(api, auth, sbx.sandbox_id) == "filesystem"
    resumed = Sandbox.connect(sbx.sandbox_id)
    assert resumed.files.read("/home/user/before-timeout.txt") == "still here"


def test_paused_sandboxes_survive_a_clean_restart_of_the_server():
    """SIGTERM stops the server: running sandboxes end, paused ones (in memory or on disk)
    are kept on disk and come back paused, with their files, when it starts again."""
    from paddock_server import PaddockServer

    first = PaddockServer().start()
    headers = {"X-API-Key": first.api_key}

    def create() -> str:
        r = requests.post(first.api_url + "/v2/sandboxes", json={"templateID": "base", "timeout": 600}, headers=headers, timeout=120)
        assert r.status_code == 201, r.text
        return first.track(r.json()["sandboxID"])

    def write(server, sid: str, text: str) -> None:
        sbx = Sandbox.connect(sid, api_key=server.api_key, api_url=server.api_url, sandbox_url=server.sandbox_url)
        sbx.files.write("/home/user/survivor.txt", text)

    ids = {"memory": create(), "disk": create(), "running": create()}
    for kind, sid in ids.items():
        write(first, sid, f"kept {kind}")
    for kind, body in (("memory", {}), ("disk", {"memory": False})):
        r = requests.post(f"{first.api_url}/sandboxes/{ids[kind]}/pause", json=body, headers=headers, timeout=30)
        assert r.status_code == 204, r.text
    assert first.stop() == 0, first.log_tail()
    assert first.leaks() == [], first.log_tail()

    second = PaddockServer(data_dir=first.data_dir, api_key=first.api_key, created_ids=first.created_ids).start()
    try:
        for kind in ("memory", "disk"):
            r = requests.get(f"{second.api_url}/sandboxes/{ids[kind]}", headers=headers, timeout=10)
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "paused" and r.json()["pauseMode"] == "filesystem", r.text
            sbx = Sandbox.connect(ids[kind], api_key=second.api_key, api_url=second.api_url, sandbox_url=second.sandbox_url)
            assert sbx.files.read("/home/user/survivor.txt") == f"kept {kind}"
            sbx.kill()
        r = requests.get(f"{second.api_url}/sandboxes/{ids['running']}", headers=headers, timeout=10)
        assert r.status_code == 404, r.text
    finally:
        assert second.stop() == 0, second.log_tail()
        assert second.leaks() == [], second.log_tail()
        first.cleanup(keep_data_dir=True)
        second.cleanup()


def test_requests_in_flight_when_a_pause_lands_end_at_once(new_sandbox):
    """E2B's SDK test `test_keep_memory_none_defaults_to_full_memory`: `set_timeout(0)` with
    `on_timeout: pause`, then `is_running()` in a loop. A request that reached envd just before
    the freeze used to wait on the frozen sandbox until its resume (or the client's timeout);
    the proxy now answers it as paused as soon as the pause lands."""
    for _ in range(8):
        sbx = new_sandbox(timeout=300, lifecycle={"on_timeout": "pause", "auto_resume": False})
        sbx.set_timeout(0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # Waiting on a frozen sandbox ends in the client's timeout: TimeoutException.
            running = sbx.is_running(request_timeout=10)
            if not running:
                break
        else:
            pytest.fail("the sandbox never paused")
        sbx.kill()
