"""Restarts with the same data dir: after a clean SIGTERM or a crash (SIGKILL), the new server's
records match reality (no ghost sandboxes, adopted ones really work) and nothing leaks.

These tests start their own servers next to the session one (own ports, own data dir)."""

from __future__ import annotations

import requests

from paddock_server import PaddockServer, leaked_cgroups


def _create(server: PaddockServer) -> str:
    r = requests.post(
        server.api_url + "/v2/sandboxes",
        json={"templateID": "base", "timeout": 600},
        headers={"X-API-Key": server.api_key},
        timeout=120,
    )
    assert r.status_code == 201, r.text
    return server.track(r.json()["sandboxID"])


def _listed(server: PaddockServer) -> set:
    r = requests.get(server.api_url + "/v2/sandboxes", headers={"X-API-Key": server.api_key}, timeout=10)
    assert r.status_code == 200, r.text
    return {s["sandboxID"] for s in r.json()}


def _envd_health(server: PaddockServer, sid: str) -> int:
    headers = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983"}
    return requests.get(server.sandbox_url + "/health", headers=headers, timeout=10).status_code


def _second(first: PaddockServer) -> PaddockServer:
    return PaddockServer(data_dir=first.data_dir, api_key=first.api_key, created_ids=first.created_ids)


def _finish(*servers: PaddockServer) -> None:
    last = servers[-1]
    assert last.stop() == 0, last.log_tail()
    assert last.leaks() == [], last.log_tail()
    for s in servers[:-1]:
        s.cleanup(keep_data_dir=True)
    last.cleanup()


def test_clean_restart_leaves_no_ghosts():
    first = PaddockServer().start()
    try:
        sid = _create(first)
        assert _envd_health(first, sid) == 204
    finally:
        assert first.stop() == 0, first.log_tail()
    assert first.leaks() == [], first.log_tail()

    second = _second(first).start()
    try:
        assert sid not in _listed(second)
        r = requests.get(f"{second.api_url}/sandboxes/{sid}", headers={"X-API-Key": second.api_key}, timeout=10)
        assert r.status_code == 404 or r.json().get("state") != "running", r.text
        assert _envd_health(second, sid) == 502
        # The restarted server works normally.
        fresh = _create(second)
        assert _envd_health(second, fresh) == 204
    finally:
        _finish(first, second)


def test_restart_after_crash_reconciles():
    first = PaddockServer().start()
    sid = _create(first)
    assert _envd_health(first, sid) == 204
    first.crash()

    second = _second(first).start()
    try:
        listed = _listed(second)
        if sid in listed:
            # Adopted: it must really be there and reachable.
            assert _envd_health(second, sid) == 204, second.log_tail()
        else:
            # Cleaned up: nothing of it may remain on the host.
            assert leaked_cgroups({sid}) == [], second.log_tail()
            assert _envd_health(second, sid) == 502
        fresh = _create(second)
        assert _envd_health(second, fresh) == 204
        assert fresh in _listed(second)
    finally:
        _finish(first, second)
