"""Admission control under saturation, against a real `paddock serve` started with small limits
(its own ports and data dir, next to the session server): a burst of concurrent raw REST creates
gets an HTTP answer for every request (201 or 429, never a dropped connection), every 429 has
E2B's error body and `Retry-After`; slots come back, and the Python SDK waits out a 429 as the
server's `Retry-After` says and then succeeds."""

from __future__ import annotations

import threading
from typing import List, Optional, Tuple

import pytest
import requests

import e2b.retry
from e2b import Sandbox
from paddock_server import PaddockServer

BURST = 40
MAX_SANDBOXES = 10
NODE_CREATES = 4
TEAM_CREATES = 2


@pytest.fixture(scope="module")
def server():
    s = PaddockServer(
        extra_args=[
            "--max-sandboxes",
            str(MAX_SANDBOXES),
            "--max-concurrent-creates",
            str(NODE_CREATES),
            "--max-concurrent-creates-per-team",
            str(TEAM_CREATES),
        ]
    ).start()
    yield s
    assert s.stop() == 0, s.log_tail()
    assert s.leaks() == [], s.log_tail()
    s.cleanup()


def _headers(server: PaddockServer) -> dict:
    return {"X-API-Key": server.api_key}


def _create(server: PaddockServer) -> requests.Response:
    return requests.post(
        server.api_url + "/v2/sandboxes",
        json={"templateID": "base", "timeout": 300},
        headers=_headers(server),
        timeout=120,
    )


def _kill(server: PaddockServer, sid: str) -> None:
    r = requests.delete(f"{server.api_url}/sandboxes/{sid}", headers=_headers(server), timeout=60)
    assert r.status_code == 204, r.text


def _listed(server: PaddockServer) -> List[str]:
    r = requests.get(server.api_url + "/v2/sandboxes", headers=_headers(server), timeout=30)
    assert r.status_code == 200, r.text
    return [s["sandboxID"] for s in r.json()]


def _assert_429(r: requests.Response) -> None:
    assert r.status_code == 429, r.text
    retry_after = r.headers.get("Retry-After", "")
    assert retry_after.isdecimal() and int(retry_after) >= 1, dict(r.headers)
    body = r.json()
    assert body["code"] == 429, body
    assert "limit" in body["message"], body


def test_a_burst_gets_201_or_429_and_no_connection_is_dropped(server: PaddockServer):
    barrier = threading.Barrier(BURST)
    answers: List[Optional[requests.Response]] = [None] * BURST
    errors: List[Tuple[int, str]] = []

    def fire(i: int) -> None:
        barrier.wait()
        try:
            answers[i] = _create(server)
        except requests.RequestException as e:  # a reset, a refused or dropped connection
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    created = [r.json()["sandboxID"] for r in answers if r is not None and r.status_code == 201]
    for sid in created:
        server.track(sid)
    try:
        assert errors == [], f"requests without an HTTP answer: {errors}"
        assert all(r is not None for r in answers)
        statuses = sorted(r.status_code for r in answers)
        assert set(statuses) <= {201, 429}, statuses
        for r in answers:
            if r.status_code == 429:
                _assert_429(r)
        # Nothing is killed during the burst, so at most MAX_SANDBOXES can be admitted.
        assert 1 <= len(created) <= MAX_SANDBOXES, statuses
        assert statuses.count(429) >= BURST - MAX_SANDBOXES, statuses
        assert sorted(_listed(server)) == sorted(created)
    finally:
        for sid in created:
            _kill(server, sid)
    # Every slot came back: a create right after succeeds.
    r = _create(server)
    assert r.status_code == 201, r.text
    _kill(server, server.track(r.json()["sandboxID"]))
    assert _listed(server) == []


def test_a_full_node_is_429_and_the_sdk_retries_after_retry_after(
    server: PaddockServer, monkeypatch: pytest.MonkeyPatch
):
    held: List[str] = []
    try:
        while len(held) < MAX_SANDBOXES:
            r = _create(server)
            assert r.status_code == 201, r.text
            held.append(server.track(r.json()["sandboxID"]))
        full = _create(server)
        _assert_429(full)
        assert "capacity" in full.json()["message"], full.text

        # Watch the SDK's own retry decision: on its first 429 free one slot, so its retry
        # (after the server's Retry-After) finds room.
        seen: List[Tuple[int, Optional[str], Optional[float]]] = []
        real_delay = e2b.retry._retry_delay

        def watching_delay(response, attempt, random_):
            delay = real_delay(response, attempt, random_)
            seen.append((response.status_code, response.headers.get("Retry-After"), delay))
            if response.status_code == 429 and len(seen) == 1:
                _kill(server, held.pop())
            return delay

        monkeypatch.setattr(e2b.retry, "_retry_delay", watching_delay)
        sbx = Sandbox.create(
            api_key=server.api_key,
            api_url=server.api_url,
            sandbox_url=server.sandbox_url,
            timeout=120,
        )
        server.track(sbx.sandbox_id)
        held.append(sbx.sandbox_id)
        assert seen and seen[0][0] == 429, seen
        assert seen[0][1] == full.headers["Retry-After"]
        assert seen[0][2] == float(full.headers["Retry-After"]), "the SDK waits what the server says"
        assert sbx.commands.run("echo ok").stdout == "ok\n"
    finally:
        for sid in held:
            _kill(server, sid)
