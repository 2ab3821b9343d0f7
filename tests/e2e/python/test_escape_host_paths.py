"""The outside review's host escapes (issue 13, findings 1-4 and 9-11, and the fidelity of
`boot_id`), as tests: a sandbox root plants links, FIFOs and floods in every place it can write
that the node might touch, then every host operation that touches a sandbox's files runs (start
command, warm hand-over, create with env vars, pause in memory and to disk, resume, fork,
snapshot, logs, metrics), and host canary files must be exactly as they were.

The rule these check (docs/security.md, "Host state"): nothing a sandbox can write is opened by the
node by path. Its `/run/paddock` is a small read-only tmpfs of its own; the boot configuration,
envd's sockets and log live in a host-only state directory and reach envd as descriptors.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import uuid
from pathlib import Path
from typing import Dict, List

import pytest
import requests

from e2b import Sandbox, Template, wait_for_port
from escape_probes import run, sandbox_addresses

# Every name the node or the shim uses in a sandbox's state directory, and the old shared run
# directory's files, planted in each place a sandbox's root can write.
NODE_NAMES = ["config.json", "envd.log", "envd.sock", "forward.sock", "node.json", "state.json",
              "probe", "boot_id"]
WRITABLE_DIRS = ["/run/paddock", "/run", "/", "/tmp", "/root", "/home/user", "/etc", "/var/tmp"]


class Canaries:
    """Host files a sandbox aims its links at: one that exists (must keep its bytes and mode),
    one that must never be created."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:10]
        self.existing = Path(f"/tmp/paddock-canary-{tag}")
        self.existing.write_text("canary: untouched\n")
        os.chmod(self.existing, 0o644)
        self.missing = Path(f"/tmp/paddock-canary-{tag}-new")
        self.fifo = Path(f"/tmp/paddock-canary-{tag}-fifo")
        os.mkfifo(self.fifo, 0o600)

    def check(self, after: str) -> None:
        assert self.existing.read_text() == "canary: untouched\n", f"host file written after {after}"
        assert stat.S_IMODE(self.existing.stat().st_mode) == 0o644, after
        assert not self.missing.exists(), f"host file created after {after}"

    def remove(self) -> None:
        for p in (self.existing, self.missing, self.fifo):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


@pytest.fixture
def canaries():
    c = Canaries()
    yield c
    c.check("the test")
    c.remove()


def plant(sbx: Sandbox, c: Canaries) -> Dict[str, List[str]]:
    """As root, plant links to the canaries (and FIFOs, and /dev/zero) under every node name in
    every writable dir; returns which plants succeeded and which failed, per dir."""
    script = []
    for d in WRITABLE_DIRS:
        for i, name in enumerate(NODE_NAMES):
            target = [c.existing, c.missing, c.fifo, "/dev/zero"][i % 4]
            script.append(f"rm -rf {d}/{name} 2>/dev/null; "
                          f"if ln -s {target} {d}/{name} 2>/dev/null; then echo ok {d}; "
                          f"else echo no {d}; fi")
    r = run(sbx, "\n".join(script), user="root")
    result: Dict[str, List[str]] = {}
    for line in r.stdout.splitlines():
        verdict, d = line.split(" ", 1)
        result.setdefault(d, []).append(verdict)
    return result


def host_state_dir(paddock, sandbox_id: str) -> Path:
    return paddock.data_dir / "sandboxes" / sandbox_id


def assert_host_state_private(paddock, sandbox_id: str) -> None:
    d = host_state_dir(paddock, sandbox_id)
    st = os.lstat(d)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700, oct(st.st_mode)
    assert not (d / "run").exists(), "no directory is shared with the sandbox any more"
    for name, kind in (("config.json", stat.S_ISREG), ("envd.log", stat.S_ISREG),
                       ("envd.sock", stat.S_ISSOCK), ("forward.sock", stat.S_ISSOCK)):
        st = os.lstat(d / name)
        assert kind(st.st_mode), (name, oct(st.st_mode))
        assert stat.S_IMODE(st.st_mode) == 0o600, (name, oct(st.st_mode))
        assert st.st_uid == 0, (name, st.st_uid)


# ---------------------------------------------------------------- findings 1-4, 10


def test_run_dir_is_a_small_read_only_tmpfs_of_the_sandbox(new_sandbox, paddock):
    sbx = new_sandbox(timeout=300)
    r = run(sbx, "stat -f -c %T /run/paddock; ls -A /run/paddock; "
                 "grep ' /run/paddock ' /proc/self/mountinfo", user="root")
    lines = r.stdout.splitlines()
    assert lines[0] == "tmpfs", r
    assert sorted(lines[1:3]) == ["boot_id", "memcg"], r
    assert " ro," in lines[3] or " ro " in lines[3], r
    # Finding 4: nothing written there can land on the host's data-dir file system.
    r = run(sbx, "head -c 1048576 /dev/zero > /run/paddock/fill; echo rc=$?; "
                 "mkdir /run/paddock/d; echo rc=$?; touch /run/paddock/config.json; echo rc=$?",
            user="root")
    assert r.stdout.split() == ["rc=1", "rc=1", "rc=1"], r
    assert "Read-only file system" in r.stderr, r
    # Finding 10: envd's log is not in the sandbox at all, and is root's alone on the host.
    # envd's output is a pipe the sandbox cannot open (owned by host root): no path to aim at,
    # nothing to read back.
    r = run(sbx, "ls /run/paddock/envd.log 2>&1; timeout 5 cat /proc/1/fd/1 >/dev/null 2>&1; "
                 "echo rc=$?; readlink /proc/1/fd/1 /proc/1/fd/2", user="root")
    lines = r.stdout.split("\n")
    assert "No such file" in lines[0], r
    assert lines[1] == "rc=1", r
    assert str(paddock.data_dir) not in r.stdout, r
    assert all(t.startswith("pipe:") for t in lines[2:4]), r
    assert_host_state_private(paddock, sbx.sandbox_id)


def test_planted_links_are_never_followed_by_any_host_operation(new_sandbox, paddock, canaries):
    """Findings 1-3 and their class: every sandbox-writable place x every host operation."""
    sbx = new_sandbox(timeout=600, envs={"SECRET_OF_THIS_SANDBOX": "s1"})
    planted = plant(sbx, canaries)
    assert set(planted["/run/paddock"]) == {"no"}, planted  # read-only: nothing to plant
    assert "ok" in planted["/tmp"], planted  # the sandbox can write elsewhere; those are its own
    sid = sbx.sandbox_id
    api, headers = paddock.api_url, {"X-API-Key": paddock.api_key}

    # Pause in memory and resume.
    assert sbx.pause() is True
    canaries.check("pause")
    sbx = Sandbox.connect(sid)
    canaries.check("resume from memory")
    # Pause to disk and start again from it (finding 2: the log opened at start-from-disk).
    assert sbx.pause(mode="filesystem") is True
    canaries.check("pause to disk")
    sbx = Sandbox.connect(sid)
    assert run(sbx, "echo $SECRET_OF_THIS_SANDBOX").stdout.strip() == "s1"
    canaries.check("start from disk")
    planted = plant(sbx, canaries)  # again, on the resumed sandbox
    assert set(planted["/run/paddock"]) == {"no"}, planted
    # Logs and metrics of the sandbox (the node reads its log).
    r = requests.get(f"{api}/v2/sandboxes/{sid}/logs", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert "canary: untouched" not in r.text  # (the planting commands are logged, not the file)
    r = requests.get(f"{api}/sandboxes/{sid}/metrics", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    canaries.check("logs and metrics")
    # Fork (finding 3: the node reads the parent's boot configuration): the child has the
    # parent's env, and nothing the parent planted.
    kids = sbx.fork(count=1, timeout=120)
    try:
        assert run(kids[0], "echo $SECRET_OF_THIS_SANDBOX").stdout.strip() == "s1"
        canaries.check("fork")
    finally:
        for k in kids:
            k.kill()
    # Snapshot (the copier walks the writable layer, which is full of links now).
    snap = sbx.create_snapshot(name=f"escape-{uuid.uuid4().hex[:8]}")
    try:
        canaries.check("snapshot")
    finally:
        Sandbox.delete_snapshot(snap.snapshot_id)
    assert_host_state_private(paddock, sid)
    sbx.kill()
    canaries.check("kill")


def test_a_start_command_planting_links_reaches_nothing_on_the_host(paddock, canaries):
    """Finding 1 as reported: a template's start command, run as root, aims
    `/run/paddock/config.json` at a host file; cold creates and warm hand-overs with env vars
    follow."""
    name = f"escape-start-{uuid.uuid4().hex[:8]}"
    headers = {"X-API-Key": paddock.api_key}
    plant_cmd = (f"sudo sh -c 'ln -sf {canaries.existing} /run/paddock/config.json; "
                 f"ln -sf {canaries.missing} /run/paddock/envd.log'; "
                 "python3 -m http.server 8000")
    Template.build(
        Template().from_template("base").set_start_cmd(plant_cmd, wait_for_port(8000)),
        name, api_key=paddock.api_key, api_url=paddock.api_url,
    )
    made: List[Sandbox] = []
    try:
        for i in range(3):  # the first is cold; later ones may come from the warm pool
            s = Sandbox.create(template=name, envs={"CALLER": f"c{i}"}, timeout=120)
            paddock.track(s.sandbox_id)
            made.append(s)
            assert run(s, "echo $CALLER").stdout.strip() == f"c{i}"
            canaries.check(f"create {i} of a start-command template")
            assert_host_state_private(paddock, s.sandbox_id)
        made[0].pause(mode="filesystem")
        made[0] = Sandbox.connect(made[0].sandbox_id)
        canaries.check("start from disk of a start-command template")
    finally:
        for s in made:
            s.kill()
        r = requests.delete(f"{paddock.api_url}/templates/{name}", headers=headers, timeout=60)
        assert r.status_code == 204, r.text


# ---------------------------------------------------------------- finding 9


def test_envd_listens_only_inside_the_sandbox(new_sandbox):
    sbx = new_sandbox(timeout=300)
    r = run(sbx, "cat /proc/net/tcp")
    listening = [line.split()[1] for line in r.stdout.splitlines()[1:] if line.split()[3] == "0A"]
    # 49983 = 0xC33F, on 127.0.0.1 (0100007F) only.
    assert "0100007F:C33F" in listening, listening
    assert "00000000:C33F" not in listening, listening
    r = run(sbx, "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:49983/health")
    assert r.stdout.strip() in ("200", "204"), r
    # From the host, envd and a user's server on every interface are unreachable.
    run(sbx, "nohup python3 -m http.server 8123 --bind 0.0.0.0 >/dev/null 2>&1 &")
    run(sbx, "for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:8123/ && break; "
             "sleep 0.1; done")
    for addr in [a for a in sandbox_addresses(sbx) if ":" not in a and not a.startswith("127.")]:
        for port in (49983, 8123):
            s = socket.socket()
            s.settimeout(2)
            try:
                with pytest.raises(OSError):
                    s.connect((addr, port))
            finally:
                s.close()


# ---------------------------------------------------------------- finding 11 and boot_id


def test_the_sandbox_sees_no_host_paths(new_sandbox, paddock):
    sbx = new_sandbox(timeout=300)
    r = run(sbx, "cat /proc/self/mountinfo", user="root")
    assert str(paddock.data_dir) not in r.stdout, r.stdout
    assert str(paddock.templates_dir) not in r.stdout, r.stdout
    overlay = [line for line in r.stdout.splitlines() if " - overlay " in line]
    assert overlay and "/proc/self/fd/" in overlay[0], overlay
    r = run(sbx, "wc -c < /proc/cmdline; cat /proc/self/cgroup /proc/1/cgroup", user="root")
    lines = r.stdout.split()
    assert lines[0] == "0", r
    for line in lines[1:]:
        path = line.split(":", 2)[2]
        assert path in ("/", "/user"), r.stdout
    assert sbx.sandbox_id not in r.stdout and "paddock" not in r.stdout, r.stdout


def _boot_id(sbx: Sandbox) -> str:
    out = run(sbx, "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", out), out
    return out


def test_boot_id_is_per_sandbox_and_changes_on_a_new_boot(new_sandbox):
    a, b = new_sandbox(timeout=300), new_sandbox(timeout=300)
    first = _boot_id(a)
    assert first != _boot_id(b)
    host = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert first != host
    r = run(a, "echo x > /proc/sys/kernel/random/boot_id", user="root")
    assert r.exit_code != 0, r
    # A resume from memory is the same boot; a start from disk is a new one (E2B's tests tell
    # the two apart this way).
    assert a.pause() is True
    a = Sandbox.connect(a.sandbox_id)
    assert _boot_id(a) == first
    assert a.pause(mode="filesystem") is True
    a = Sandbox.connect(a.sandbox_id)
    assert _boot_id(a) != first


def test_python_is_python3(new_sandbox):
    sbx = new_sandbox(timeout=300)
    r = run(sbx, "python -c 'import sys; print(sys.version_info[0])'")
    assert r.stdout.strip() == "3", r


def test_fifos_left_where_setup_writes_cannot_stall_a_start(new_sandbox):
    """A FIFO (or link) left at a path the sandbox's PID 1 writes at every start (`/etc/hosts`,
    `/etc/hostname`, `/etc/resolv.conf`, envd's mount point) is replaced, never opened: a start
    from disk (or a create from a snapshot of it) must not hang on it."""
    sbx = new_sandbox(timeout=300)
    r = run(sbx, "for f in /etc/hostname /etc/hosts /etc/resolv.conf; do rm -f $f && mkfifo $f; "
                 "done; ls -l /etc/hostname", user="root")
    assert r.stdout.startswith("p"), r
    assert sbx.pause(mode="filesystem") is True
    sbx = Sandbox.connect(sbx.sandbox_id)
    r = run(sbx, "stat -c %F /etc/hostname /etc/hosts; cat /etc/hostname")
    assert r.stdout.split("\n")[:2] == ["regular file", "regular file"], r
    assert r.stdout.split("\n")[2] == sbx.sandbox_id, r
