"""Sandbox lifecycle through the SDK: create, info, list with filters, connect, set_timeout,
expiry and kill."""

from __future__ import annotations

import re
import secrets
import time
from datetime import datetime, timedelta, timezone

import pytest

from e2b import (
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxQuery,
    SandboxState,
)


def _list_all(**kwargs):
    paginator = Sandbox.list(**kwargs)
    items = []
    while paginator.has_next:
        items += paginator.next_items()
    return items


def test_create_returns_a_usable_sandbox(new_sandbox):
    sandbox = new_sandbox()
    assert re.fullmatch(r"[a-z0-9]+", sandbox.sandbox_id), sandbox.sandbox_id
    assert sandbox.is_running() is True
    assert sandbox.commands.run("echo hi").stdout == "hi\n"
    # The hostname inside is set (and is not the host's).
    hostname = sandbox.commands.run("hostname").stdout.strip()
    assert hostname
    assert hostname != open("/proc/sys/kernel/hostname").read().strip()


def test_get_info(new_sandbox):
    before = datetime.now(timezone.utc)
    sandbox = new_sandbox(timeout=120, metadata={"who": "info-test"})
    info = sandbox.get_info()
    assert info.sandbox_id == sandbox.sandbox_id
    assert info.state == SandboxState.RUNNING
    assert info.metadata == {"who": "info-test"}
    assert info.cpu_count >= 1
    assert info.memory_mb >= 128
    assert info.started_at >= before - timedelta(seconds=5)
    lifetime = (info.end_at - info.started_at).total_seconds()
    assert 110 <= lifetime <= 130, lifetime


def test_list_with_metadata_and_state_filters(new_sandbox):
    tag = "run-" + secrets.token_hex(4)
    a = new_sandbox(metadata={"e2e-list": tag, "kind": "a", "odd": "v w&x=y/%"})
    b = new_sandbox(metadata={"e2e-list": tag, "kind": "b"})

    both = _list_all(query=SandboxQuery(metadata={"e2e-list": tag}))
    assert {s.sandbox_id for s in both} == {a.sandbox_id, b.sandbox_id}
    by_id = {s.sandbox_id: s for s in both}
    assert by_id[a.sandbox_id].metadata["odd"] == "v w&x=y/%"
    assert by_id[a.sandbox_id].state == SandboxState.RUNNING

    only_a = _list_all(query=SandboxQuery(metadata={"e2e-list": tag, "kind": "a"}))
    assert [s.sandbox_id for s in only_a] == [a.sandbox_id]

    # Special characters survive the SDK's triple encoding of the metadata filter.
    odd = _list_all(query=SandboxQuery(metadata={"odd": "v w&x=y/%"}))
    assert [s.sandbox_id for s in odd] == [a.sandbox_id]

    running = _list_all(query=SandboxQuery(metadata={"e2e-list": tag}, state=[SandboxState.RUNNING]))
    assert {s.sandbox_id for s in running} == {a.sandbox_id, b.sandbox_id}
    paused = _list_all(query=SandboxQuery(metadata={"e2e-list": tag}, state=[SandboxState.PAUSED]))
    assert paused == []

    none = _list_all(query=SandboxQuery(metadata={"e2e-list": "no-such-" + tag}))
    assert none == []

    # A killed sandbox disappears from the list.
    b.kill()
    after = _list_all(query=SandboxQuery(metadata={"e2e-list": tag}))
    assert [s.sandbox_id for s in after] == [a.sandbox_id]


def test_list_pagination_through_the_sdk(new_sandbox):
    tag = "page-" + secrets.token_hex(4)
    ids = {new_sandbox(metadata={"e2e-page": tag}).sandbox_id for _ in range(3)}
    paginator = Sandbox.list(query=SandboxQuery(metadata={"e2e-page": tag}), limit=2)
    pages = []
    while paginator.has_next:
        pages.append([s.sandbox_id for s in paginator.next_items()])
    assert [len(p) for p in pages if p] == [2, 1]
    assert {i for p in pages for i in p} == ids


def test_connect_then_run(new_sandbox):
    sandbox = new_sandbox()
    sandbox.files.write("/home/user/from-first-handle.txt", "shared state")
    again = Sandbox.connect(sandbox.sandbox_id)
    assert again.sandbox_id == sandbox.sandbox_id
    assert again.commands.run("cat /home/user/from-first-handle.txt").stdout == "shared state"
    assert again.files.read("/home/user/from-first-handle.txt") == "shared state"


def test_connect_unknown_sandbox():
    with pytest.raises(NotFoundException):
        Sandbox.connect("i" + "0" * 20)


def test_set_timeout_moves_end_at(new_sandbox):
    sandbox = new_sandbox(timeout=60)
    first = sandbox.get_info().end_at
    sandbox.set_timeout(1200)
    extended = sandbox.get_info().end_at
    assert extended - first > timedelta(seconds=1000), (first, extended)
    # set_timeout can also shorten the lifetime.
    sandbox.set_timeout(30)
    shortened = sandbox.get_info().end_at
    remaining = (shortened - datetime.now(timezone.utc)).total_seconds()
    assert 15 < remaining <= 35, remaining


def test_expiry_kills_the_sandbox(paddock):
    sandbox = Sandbox.create(timeout=3)
    paddock.track(sandbox.sandbox_id)
    try:
        assert sandbox.commands.run("echo alive").stdout == "alive\n"
        time.sleep(6)
        assert sandbox.is_running() is False
        with pytest.raises(SandboxException):
            Sandbox.connect(sandbox.sandbox_id)
        assert sandbox.sandbox_id not in {s.sandbox_id for s in _list_all()}
        assert Sandbox.kill(sandbox.sandbox_id) is False
    finally:
        try:
            sandbox.kill()
        except Exception:  # noqa: BLE001
            pass


def test_kill(paddock):
    sandbox = Sandbox.create()
    paddock.track(sandbox.sandbox_id)
    assert sandbox.kill() is True
    assert sandbox.is_running() is False
    assert Sandbox.kill(sandbox.sandbox_id) is False
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sandbox.sandbox_id)
    with pytest.raises(SandboxException):
        sandbox.commands.run("echo should-fail")


def test_context_manager_kills_on_exit(paddock):
    with Sandbox.create() as sandbox:
        paddock.track(sandbox.sandbox_id)
        sid = sandbox.sandbox_id
        assert sandbox.commands.run("true").exit_code == 0
    assert Sandbox.kill(sid) is False
