"""Snapshots and forks through the official SDK: a snapshot is a template with the sandbox's
files (changes, deletions, owners and modes included) that new sandboxes start from; it is
listed, filtered and deleted per team; a fork makes independent children (new ids, tokens,
hostnames, addresses) that share the parent's files copy-on-write and diverge without
touching the parent or each other. Snapshots and forks keep files, not processes or memory:
children and sandboxes made from a snapshot boot fresh."""

from __future__ import annotations

import secrets
import time

import pytest
import requests

from e2b import Sandbox, SandboxState
from e2b.exceptions import NotFoundException, SandboxException

PROBE = (
    "cat /home/user/note.txt; echo; stat -c '%U %a' /home/user/note.txt; "
    "cat /opt/made-by-root/file; ls /etc/issue 2>&1 | grep -c 'No such file'; "
    "readlink /home/user/link"
)


def _prepare(sbx: Sandbox) -> None:
    """Changes of every kind: a user file, a root-owned tree, a deleted template file, a
    symlink and a mode."""
    sbx.files.write("/home/user/note.txt", "from the parent")
    sbx.commands.run("chmod 640 /home/user/note.txt && ln -s note.txt /home/user/link")
    sbx.commands.run(
        "rm /etc/issue && mkdir -p /opt/made-by-root && echo root-data > /opt/made-by-root/file",
        user="root",
    )


def _expected_probe() -> str:
    return "from the parent\nuser 640\nroot-data\n1\nnote.txt\n"


def test_snapshot_starts_new_sandboxes_with_the_files(new_sandbox, paddock):
    parent = new_sandbox(timeout=300)
    _prepare(parent)
    name = f"snap-{secrets.token_hex(4)}"
    snap = parent.create_snapshot(name=name)
    assert snap.snapshot_id == f"{name}:default"
    assert snap.names == [name]
    try:
        # The parent goes on running, unchanged.
        assert parent.is_running()
        assert parent.commands.run(PROBE).stdout == _expected_probe()

        child = new_sandbox(template=snap.snapshot_id, timeout=120)
        assert child.commands.run(PROBE).stdout == _expected_probe()
        # Its writes are its own.
        child.files.write("/home/user/note.txt", "child")
        assert parent.files.read("/home/user/note.txt") == "from the parent"
        assert child.get_info().template_id == name
    finally:
        assert Sandbox.delete_snapshot(snap.snapshot_id) is True


def test_snapshots_are_listed_filtered_and_deleted(new_sandbox, api, auth):
    a = new_sandbox(timeout=300)
    b = new_sandbox(timeout=300)
    a.files.write("/home/user/which", "a")
    tag = secrets.token_hex(3)
    snaps = [a.create_snapshot(name=f"list-{tag}-{i}") for i in range(3)]
    other = b.create_snapshot()
    assert other.snapshot_id.startswith("snap-"), other.snapshot_id

    of_a = Sandbox.list_snapshots(sandbox_id=a.sandbox_id).next_items()
    assert [s.snapshot_id for s in of_a] == [s.snapshot_id for s in reversed(snaps)]
    named = Sandbox.list_snapshots(name=f"list-{tag}-1").next_items()
    assert [s.snapshot_id for s in named] == [snaps[1].snapshot_id]

    # Pages of two: the token walks through all of them without repeats.
    seen, token = [], None
    while True:
        params = {"sandboxID": a.sandbox_id, "limit": 2}
        if token:
            params["nextToken"] = token
        r = requests.get(api + "/snapshots", params=params, headers=auth, timeout=10)
        assert r.status_code == 200, r.text
        seen += [s["snapshotID"] for s in r.json()]
        token = r.headers.get("X-Next-Token")
        if not token:
            break
    assert seen == [s.snapshot_id for s in reversed(snaps)]

    # A sandbox started from a snapshot keeps running after the snapshot is deleted.
    child = new_sandbox(template=snaps[0].snapshot_id, timeout=120)
    for s in snaps + [other]:
        assert Sandbox.delete_snapshot(s.snapshot_id) is True
        assert Sandbox.delete_snapshot(s.snapshot_id) is False
    assert child.files.read("/home/user/which") == "a"
    assert Sandbox.list_snapshots(sandbox_id=a.sandbox_id).next_items() == []
    with pytest.raises(Exception) as err:
        Sandbox.create(template=snaps[0].snapshot_id, timeout=30)
    assert "not found" in str(err.value).lower()


def test_snapshot_errors(new_sandbox, api, auth):
    sbx = new_sandbox(timeout=120)
    url = f"{api}/sandboxes/{sbx.sandbox_id}/snapshots"
    r = requests.post(url, json={"memory": True}, headers=auth, timeout=10)
    assert r.status_code == 400 and "memory" in r.json()["message"], r.text
    r = requests.post(url, json={"name": "Bad Name!"}, headers=auth, timeout=10)
    assert r.status_code == 400, r.text
    r = requests.post(url, json={"name": "base"}, headers=auth, timeout=10)
    assert r.status_code == 409, r.text
    r = requests.post(f"{api}/sandboxes/inotasandbox000/snapshots", json={}, headers=auth, timeout=10)
    assert r.status_code == 404, r.text
    # Node templates are not snapshots: not deletable through the snapshot API.
    r = requests.delete(f"{api}/templates/base", headers=auth, timeout=10)
    assert r.status_code == 403, r.text
    # The id arrives as one percent-encoded segment.
    snap = sbx.create_snapshot(mode="filesystem")
    r = requests.delete(f"{api}/templates/{snap.snapshot_id.replace(':', '%3A')}", headers=auth, timeout=10)
    assert r.status_code == 204, r.text


def _layers(paddock) -> set:
    """The template layers on the node's disk."""
    return {p.name for p in (paddock.templates_dir / ".layers").iterdir() if not p.name.startswith(".")}


def _wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _ip(sbx: Sandbox) -> str:
    return sbx.commands.run(
        "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.connect(('10.255.255.1', 9)); print(s.getsockname()[0])\""
    ).stdout.strip()


def test_fork_three_children_diverge_without_touching_the_parent(new_sandbox, paddock):
    parent = new_sandbox(
        timeout=300, envs={"FORK_ENV": "inherited"}, metadata={"role": "parent"}
    )
    _prepare(parent)
    layers_before = _layers(paddock)
    kids = parent.fork(count=3, timeout=120)
    assert len(kids) == 3
    for k in kids:
        assert isinstance(k, Sandbox), k
        paddock.track(k.sandbox_id)
    try:
        ids = {parent.sandbox_id} | {k.sandbox_id for k in kids}
        assert len(ids) == 4
        tokens = {k._envd_access_token for k in kids} | {parent._envd_access_token}
        assert len(tokens) == 4
        hostnames = {k.commands.run("hostname").stdout.strip() for k in kids}
        assert hostnames == {k.sandbox_id for k in kids}
        ips = {_ip(k) for k in kids} | {_ip(parent)}
        assert len(ips) == 4, ips

        for k in kids:
            assert k.commands.run(PROBE).stdout == _expected_probe()
            assert k.commands.run("echo $FORK_ENV").stdout.strip() == "inherited"
            info = k.get_info()
            assert info.metadata == {"role": "parent"}
            assert info.state == SandboxState.RUNNING
        for i, k in enumerate(kids):
            k.files.write("/home/user/note.txt", f"kid {i}")
            k.commands.run(f"rm /opt/made-by-root/file && echo {i} > /opt/mine", user="root")
        for i, k in enumerate(kids):
            assert k.files.read("/home/user/note.txt") == f"kid {i}"
            assert k.commands.run("cat /opt/mine").stdout.strip() == str(i)
        assert parent.commands.run(PROBE).stdout == _expected_probe()
        assert not parent.files.exists("/opt/mine")
        # Parent's later writes do not reach the children.
        parent.files.write("/home/user/later.txt", "after the fork")
        assert not kids[0].files.exists("/home/user/later.txt")
    finally:
        for k in kids:
            k.kill()
    # The children's shared layer goes with the last of them: nothing of the fork is left.
    _wait_for(lambda: _layers(paddock) == layers_before, "the fork's layer to be removed")
    assert parent.is_running()


@pytest.mark.parametrize("mode", ["full", "filesystem"])
def test_fork_of_a_paused_sandbox_leaves_it_paused(new_sandbox, paddock, mode):
    parent = new_sandbox(timeout=300)
    parent.files.write("/home/user/state.txt", f"paused {mode}")
    assert parent.pause(mode=mode) is True
    kids = Sandbox.fork(parent.sandbox_id, count=2, timeout=120)
    for k in kids:
        assert isinstance(k, Sandbox), k
        paddock.track(k.sandbox_id)
        assert k.files.read("/home/user/state.txt") == f"paused {mode}"
        k.kill()
    assert Sandbox.get_info(parent.sandbox_id).state == SandboxState.PAUSED
    resumed = Sandbox.connect(parent.sandbox_id)
    assert resumed.files.read("/home/user/state.txt") == f"paused {mode}"


def test_fork_errors(new_sandbox, api, auth):
    sbx = new_sandbox(timeout=120)
    url = f"{api}/sandboxes/{sbx.sandbox_id}/fork"
    for count in (0, 21, -1):
        r = requests.post(url, json={"count": count}, headers=auth, timeout=10)
        assert r.status_code == 400, (count, r.text)
    with pytest.raises(SandboxException) as err:
        Sandbox.fork("inotasandbox000", count=1)
    assert "not found" in str(err.value).lower()
    r = requests.post(url, json={}, headers=auth, timeout=60)
    assert r.status_code == 201, r.text
    (one,) = r.json()
    assert set(one) == {"sandbox"}, one
    kid = one["sandbox"]
    assert kid["templateID"] == "base" and kid["envdAccessToken"]
    requests.delete(f"{api}/sandboxes/{kid['sandboxID']}", headers=auth, timeout=30)


def test_templates_are_listed_and_checked_like_e2b(new_sandbox, api, auth):
    from e2b import Template

    assert Template.exists("base") is True
    assert Template.exists(f"no-such-template-{secrets.token_hex(3)}") is False
    sbx = new_sandbox(timeout=120)
    name = f"listed-{secrets.token_hex(3)}"
    snap = sbx.create_snapshot(name=name)
    try:
        assert Template.exists(name) is True
        r = requests.get(f"{api}/templates", headers=auth, timeout=10)
        assert r.status_code == 200, r.text
        by_id = {t["templateID"]: t for t in r.json()}
        assert by_id["base"]["public"] is True and by_id["base"]["spawnCount"] >= 1
        assert by_id[name]["public"] is False
        assert not any(t.startswith("fork-") for t in by_id), "forks' private templates are not listed"
        r = requests.get(f"{api}/templates/{name}", headers=auth, timeout=10)
        assert r.status_code == 200 and r.json()["builds"][0]["status"] == "ready", r.text
    finally:
        assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert Template.exists(name) is False
