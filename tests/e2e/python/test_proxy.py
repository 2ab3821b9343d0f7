"""The proxy: reaching any port of a sandbox by `Host: <port>-<id>.<domain>` (what `get_host`
returns) or by the `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers, streaming responses, WebSocket
upgrades, and the 502 bodies the SDKs parse."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

import pytest
import requests

SERVER_PORT = 8000
STREAM_PORT = 8001
UPGRADE_PORT = 8002
CLOSED_PORT = 8009

STREAM_SERVER = r"""
import http.server, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(3):
            line = f"tick{i}\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
            time.sleep(0.7)
        self.wfile.write(b"0\r\n\r\n")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", PORT), H).serve_forever()
""".replace("PORT", str(STREAM_PORT))

UPGRADE_SERVER = r"""
import socket, threading
def serve(c):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(4096)
        if not d:
            return
        buf += d
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    rest = buf.split(b"\r\n\r\n", 1)[1]
    if rest:
        c.sendall(rest.upper())
    while True:
        d = c.recv(4096)
        if not d:
            break
        c.sendall(d.upper())
    c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", PORT)); s.listen(8)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
""".replace("PORT", str(UPGRADE_PORT))


def _wait_http(url: str, headers: dict, timeout: float = 15.0) -> requests.Response:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = requests.get(url, headers=headers, timeout=5)
            if last.status_code == 200:
                return last
        except requests.RequestException as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{url} with {headers} never answered 200: {last!r}")


@pytest.fixture(scope="module")
def servers(sbx):
    sbx.files.write("/home/user/www/marker-file.txt", "served from inside")
    handles = [
        sbx.commands.run(f"python3 -m http.server {SERVER_PORT}", background=True, cwd="/home/user/www", timeout=0),
    ]
    sbx.files.write("/home/user/stream_server.py", STREAM_SERVER)
    sbx.files.write("/home/user/upgrade_server.py", UPGRADE_SERVER)
    handles.append(sbx.commands.run("python3 /home/user/stream_server.py", background=True, timeout=0))
    handles.append(sbx.commands.run("python3 /home/user/upgrade_server.py", background=True, timeout=0))
    yield sbx
    for h in handles:
        sbx.commands.kill(h.pid)


def test_get_host_reaches_http_server_inside(servers, paddock):
    sbx = servers
    host = sbx.get_host(SERVER_PORT)
    assert host.startswith(f"{SERVER_PORT}-{sbx.sandbox_id}.")
    r = _wait_http(paddock.sandbox_url + "/", {"Host": host})
    assert "Directory listing" in r.text
    assert "marker-file.txt" in r.text
    f = requests.get(paddock.sandbox_url + "/marker-file.txt", headers={"Host": host}, timeout=10)
    assert f.status_code == 200
    assert f.text == "served from inside"


def test_routing_headers_reach_http_server_inside(servers, paddock):
    headers = {"E2b-Sandbox-Id": servers.sandbox_id, "E2b-Sandbox-Port": str(SERVER_PORT)}
    r = _wait_http(paddock.sandbox_url + "/marker-file.txt", headers)
    assert r.text == "served from inside"


def test_envd_port_by_host(servers, paddock):
    r = requests.get(paddock.sandbox_url + "/health", headers={"Host": servers.get_host(49983)}, timeout=10)
    assert r.status_code == 204


def test_streaming_response_is_not_buffered(servers, paddock):
    headers = {"Host": servers.get_host(STREAM_PORT)}
    _wait_http(paddock.sandbox_url + "/", headers, timeout=15)  # server is up
    started = time.monotonic()
    with requests.get(paddock.sandbox_url + "/", headers=headers, stream=True, timeout=10) as r:
        assert r.status_code == 200
        arrivals = []
        for line in r.iter_lines():
            if line:
                arrivals.append((line.decode(), time.monotonic() - started))
    assert [a for a, _ in arrivals] == ["tick0", "tick1", "tick2"]
    assert arrivals[0][1] < 0.6, arrivals
    assert arrivals[-1][1] > 1.2, arrivals


def _recv_until(sock: socket.socket, needle: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    while needle not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def test_websocket_upgrade_is_tunnelled(servers, paddock):
    host = servers.get_host(UPGRADE_PORT)
    proxy = urlparse(paddock.sandbox_url)
    # Wait until the server inside listens (a closed port answers 502, not 101).
    deadline = time.monotonic() + 15
    while True:
        s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
        s.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = _recv_until(s, b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 101") or time.monotonic() > deadline:
            break
        s.close()
        time.sleep(0.3)
    try:
        assert head.startswith(b"HTTP/1.1 101"), head
        for word in (b"hello", b"through the proxy"):
            s.sendall(word)
            assert _recv_until(s, word.upper()).endswith(word.upper())
    finally:
        s.close()


def test_closed_port_is_502_port_not_open(servers, paddock):
    r = requests.get(paddock.sandbox_url + "/", headers={"Host": servers.get_host(CLOSED_PORT)}, timeout=10)
    assert r.status_code == 502
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert "port is not open" in body["message"]
    assert body["sandboxId"] == servers.sandbox_id
    assert body["port"] == CLOSED_PORT
    assert body["code"] == 502


def test_unknown_sandbox_is_502_not_found(paddock):
    ghost = "i" + "0" * 20
    for headers in (
        {"Host": f"{SERVER_PORT}-{ghost}.e2b.app"},
        {"E2b-Sandbox-Id": ghost, "E2b-Sandbox-Port": "49983"},
    ):
        r = requests.get(paddock.sandbox_url + "/health", headers=headers, timeout=10)
        assert r.status_code == 502, headers
        body = r.json()
        assert "was not found" in body["message"]
        assert body["sandboxId"] == ghost
        assert body["code"] == 502
