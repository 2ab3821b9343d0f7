"""Slow-client limits of `paddock serve` (issue 13, finding 5: descriptor exhaustion without a
key). Hundreds of connections that send half a request head and then nothing must neither keep
the API and the proxy from serving others nor stay open: they are closed after the header
timeout, and connections beyond a client's cap are refused at once.

Clients standing for "another host" connect from 127.0.0.2 (Linux routes all of 127/8 to `lo`).
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import List, Tuple
from urllib.parse import urlsplit

import pytest

from paddock_server import PaddockServer

HALF_HEAD = b"GET /health HTTP/1.1\r\nHost: paddock\r\nUser-Agent: slow"
# Generous bound for a connection the server should close (a hang guard, not a speed check).
CLOSE_WAIT = 90.0


def _addr(url: str) -> Tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def _half_sent(url: str, count: int) -> List[socket.socket]:
    conns = []
    for _ in range(count):
        s = socket.create_connection(_addr(url), timeout=10)
        s.sendall(HALF_HEAD)
        conns.append(s)
    return conns


def _wait_closed(s: socket.socket) -> bytes:
    """Reads until the server closes the connection (EOF or reset); returns what it sent."""
    s.settimeout(CLOSE_WAIT)
    got = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return got
            got += chunk
    except ConnectionResetError:
        return got
    except socket.timeout:
        pytest.fail(f"the server kept a half-sent connection open for {CLOSE_WAIT:.0f} s")
    finally:
        s.close()


def _request(url: str, method: str, path: str, source: str = "127.0.0.1", **kwargs):
    host, port = _addr(url)
    conn = http.client.HTTPConnection(host, port, timeout=120, source_address=(source, 0))
    try:
        conn.request(method, path, **kwargs)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_half_sent_connections_do_not_starve_the_api_and_proxy(paddock, new_sandbox):
    held = _half_sent(paddock.api_url, 300) + _half_sent(paddock.sandbox_url, 300)
    try:
        status, _ = _request(paddock.api_url, "GET", "/health")
        assert status == 200
        sandbox = new_sandbox(timeout=120)
        assert sandbox.commands.run("echo still-serving").stdout.strip() == "still-serving"
    finally:
        # Closed by the server after the (default, 10 s) header timeout, none answered.
        answers = [_wait_closed(s) for s in held]
    assert all(a == b"" for a in answers), {a[:40] for a in answers}


@pytest.fixture(scope="module")
def capped():
    s = PaddockServer(
        extra_args=["--header-timeout", "2", "--max-connections-per-ip", "50", "--network", "none"]
    ).start()
    yield s
    assert s.stop() == 0, s.log_tail()
    assert s.leaks() == [], s.log_tail()
    s.cleanup()


def test_a_client_over_its_cap_is_refused_while_others_are_served(capped: PaddockServer):
    held = _half_sent(capped.api_url, 200) + _half_sent(capped.sandbox_url, 200)
    try:
        auth = {"X-API-Key": capped.api_key, "Content-Type": "application/json"}
        # Another client still reaches both listeners: health, a create, envd through the proxy.
        status, _ = _request(capped.api_url, "GET", "/health", source="127.0.0.2")
        assert status == 200
        status, body = _request(
            capped.api_url,
            "POST",
            "/v2/sandboxes",
            source="127.0.0.2",
            body=json.dumps({"templateID": "base", "timeout": 120}),
            headers=auth,
        )
        assert status == 201, body
        sandbox_id = capped.track(json.loads(body)["sandboxID"])
        status, _ = _request(
            capped.sandbox_url,
            "GET",
            "/health",
            source="127.0.0.2",
            headers={"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": "49983"},
        )
        assert status == 204
        status, _ = _request(
            capped.api_url, "DELETE", f"/sandboxes/{sandbox_id}", source="127.0.0.2", headers=auth
        )
        assert status == 204
    finally:
        answers = [_wait_closed(s) for s in held]
    # 50 per listener were admitted and timed out unanswered; the rest were refused with 429.
    refused = [a for a in answers if a]
    assert all(a.startswith(b"HTTP/1.1 429 ") for a in refused), {a[:40] for a in refused}
    # This client's slots are free again.
    status, _ = _request(capped.api_url, "GET", "/health")
    assert status == 200
