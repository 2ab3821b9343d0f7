"""Two sandboxes cannot see each other's files, processes or loopback ports, nor the host's."""

from __future__ import annotations

import os

import pytest

from e2b import CommandExitException
from paddock_server import wait_for


@pytest.fixture(scope="module")
def pair(paddock):
    from e2b import Sandbox

    a = Sandbox.create(timeout=300)
    paddock.track(a.sandbox_id)
    b = Sandbox.create(timeout=300)
    paddock.track(b.sandbox_id)
    yield a, b
    for s in (a, b):
        try:
            s.kill()
        except Exception:  # noqa: BLE001
            pass


def test_files_are_private(pair):
    a, b = pair
    a.files.write("/home/user/only-in-a.txt", "a's secret")
    a.commands.run("echo root-a > /tmp/only-in-a; echo etc > /etc/only-in-a", user="root")
    for path in ("/home/user/only-in-a.txt", "/tmp/only-in-a", "/etc/only-in-a"):
        assert b.files.exists(path) is False, path
        assert a.files.exists(path) is True, path
    r = b.commands.run("ls -a /home/user /tmp /etc | grep -c only-in-a || true")
    assert r.stdout.strip() == "0"


def test_template_is_not_modified_by_a_sandbox(pair, new_sandbox):
    a, _ = pair
    a.commands.run("rm -f /usr/bin/yes && echo gone", user="root")
    fresh = new_sandbox()
    assert fresh.commands.run("test -x /usr/bin/yes && echo present").stdout == "present\n"


def test_processes_are_private(pair):
    a, b = pair
    # `sh -c '...' NAME` keeps NAME in the shell's argv (bash would exec a lone `sleep` directly).
    handle = a.commands.run("sh -c 'sleep 300; true' marker-of-sandbox-a", background=True)
    try:
        # A background start returns once bash runs; bash then execs `sh`, and while that exec is
        # under way /proc/PID/cmdline is empty (ps prints `[sh]`), so wait until it shows.
        def ps_a_with_marker():
            out = a.commands.run("ps -eo pid,args").stdout
            return out if "marker-of-sandbox-a" in out else None

        ps_a = wait_for(ps_a_with_marker, "the marker process to show in sandbox A's ps")
        ps_b = b.commands.run("ps -eo pid,args").stdout
        assert "marker-of-sandbox-a" not in ps_b
        # Each sandbox has its own pid namespace: envd is PID 1 and host processes are invisible.
        for ps in (ps_a, ps_b):
            pids = {}
            for line in ps.strip().splitlines()[1:]:
                pid, _, args = line.strip().partition(" ")
                pids[int(pid)] = args
            assert "envd" in pids[1], pids
            assert not any("paddock serve" in args or "--data-dir" in args for args in pids.values()), pids
            assert len(pids) < 20, pids
        # A host process's pid, looked up inside B, is not that process.
        host_pid = os.getpid()
        inside = b.commands.run(f"cat /proc/{host_pid}/cmdline 2>/dev/null | tr '\\0' ' ' || true").stdout
        assert "pytest" not in inside
    finally:
        a.commands.kill(handle.pid)


def test_signals_cannot_cross_sandboxes(pair):
    a, b = pair
    handle = a.commands.run("sleep 300 # kill-target", background=True)
    try:
        # The pid that A's process has is meaningless in B (own pid namespace, own processes).
        b.commands.run(f"kill -9 {handle.pid} 2>/dev/null || true", user="root")
        assert handle.pid in {p.pid for p in a.commands.list()}
    finally:
        a.commands.kill(handle.pid)


def test_loopback_ports_are_private(pair):
    a, b = pair
    server = a.commands.run("python3 -m http.server 8123 --bind 127.0.0.1", background=True, timeout=0)
    try:
        probe = (
            "python3 -c \"import socket,time\n"
            "for _ in range(50):\n"
            "    try:\n"
            "        socket.create_connection(('127.0.0.1', 8123), timeout=1).close(); print('open'); break\n"
            "    except OSError:\n"
            "        time.sleep(0.1)\n"
            "else:\n"
            "    print('closed')\""
        )
        assert a.commands.run(probe).stdout == "open\n"
        single = "python3 -c \"import socket\ntry:\n    socket.create_connection(('127.0.0.1', 8123), timeout=1).close(); print('open')\nexcept OSError:\n    print('closed')\""
        assert b.commands.run(single).stdout == "closed\n"
    finally:
        a.commands.kill(server.pid)


def test_memory_limit_is_enforced(new_sandbox):
    sandbox = new_sandbox()
    # Default limit is 512 MiB: allocating and touching 1.5 GiB must fail inside the sandbox
    # (the host has no swap), and the sandbox itself must survive it.
    hog = "python3 -c \"b = bytearray(1536 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); print('survived')\""
    with pytest.raises(CommandExitException) as exc:
        sandbox.commands.run(hog, timeout=60)
    assert "survived" not in exc.value.stdout
    # The OOM kill is reported to the caller as such, not as a bare "signal: killed".
    assert exc.value.exit_code == -1
    assert "out of memory" in (exc.value.error or ""), exc.value.error
    assert sandbox.commands.run("echo still-alive").stdout == "still-alive\n"
    # envd (PID 1) is never the OOM killer's choice: user processes score higher.
    scores = sandbox.commands.run("cat /proc/1/oom_score_adj /proc/self/oom_score_adj").stdout.split()
    assert int(scores[1]) > int(scores[0]), scores
    # ... and no process of the sandbox, root included, can make itself unkillable (which would
    # leave envd the only choice): a score below 0 needs CAP_SYS_RESOURCE on the host.
    for user in ("root", "user"):
        r = sandbox.commands.run("echo -1000 > /proc/self/oom_score_adj; echo rc=$?", user=user)
        assert "rc=1" in r.stdout, (user, r.stdout, r.stderr)
