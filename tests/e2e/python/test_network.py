"""Per-sandbox networking through the official SDK: egress through NAT to an "outside" network
namespace this module makes itself (198.18.5.0/30 on its own veth, traffic never leaves the
machine), no reach to the host's services on any host address, no sandbox-to-sandbox traffic,
no connection from the host into a sandbox's address,
`allow_internet_access=False`, `update_network` / raw `PUT /sandboxes/{id}/network` at
runtime, and domain names in `allowOut` (HTTP on 80 by `Host`, TLS on 443 by SNI, through the
node's egress proxy) against an HTTP and a TLS server on the outside."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import requests

NS = "pdk_e2e_out"
HOST_IF = "pdoe2e"
OUTSIDE_IP = "198.18.5.2"
PORT = 8080
OUTSIDE_URL = f"http://{OUTSIDE_IP}:{PORT}/"


WEB_SERVER = r"""
import http.server, socketserver, ssl, sys, threading

class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("web:" + self.headers.get("Host", "").split(":")[0]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):  # without HTTPServer's reverse DNS lookup (no DNS out there)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "web", self.server_address[1]

ip, cert, key = sys.argv[1:4]
plain = Server((ip, 80), Answer)
tls = Server((ip, 443), Answer)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
threading.Thread(target=plain.serve_forever, daemon=True).start()
tls.serve_forever()
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture(scope="module")
def outside():
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True)
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", "eth0", "netns", NS)
    sh("ip", "addr", "add", "198.18.5.1/30", "dev", HOST_IF)
    sh("ip", "link", "set", HOST_IF, "up")
    sh("ip", "-n", NS, "addr", "add", f"{OUTSIDE_IP}/30", "dev", "eth0")
    sh("ip", "-n", NS, "link", "set", "eth0", "up")
    sh("ip", "-n", NS, "link", "set", "lo", "up")
    sh("ip", "-n", NS, "route", "add", "default", "via", "198.18.5.1")
    server = subprocess.Popen(
        ["ip", "netns", "exec", NS, "python3", "-m", "http.server", str(PORT), "--bind", OUTSIDE_IP],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 15
    while True:  # the host itself routes to the outside directly (no NAT, no policy)
        try:
            requests.get(OUTSIDE_URL, timeout=1)
            break
        except requests.RequestException:
            assert time.time() < deadline, "the outside HTTP server did not start"
            time.sleep(0.1)
    yield OUTSIDE_URL
    server.terminate()
    server.wait(timeout=10)
    subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True)
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)


@pytest.fixture(scope="module")
def web(outside):
    """An HTTP server on the outside's port 80 and a TLS one (self-signed) on 443; both answer
    `web:<Host>`."""
    tmp = Path(tempfile.mkdtemp(prefix="pdk-e2e-web-"))
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    sh(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=allowed.test", "-keyout", str(key), "-out", str(cert),
    )
    log = tmp / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            ["ip", "netns", "exec", NS, "python3", "-c", WEB_SERVER, OUTSIDE_IP, str(cert), str(key)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    last = None
    deadline = time.time() + 15
    while True:  # the host reaches the outside directly
        try:
            with warnings.catch_warnings():  # self-signed on purpose
                warnings.simplefilter("ignore")
                r = requests.get(f"https://{OUTSIDE_IP}/", verify=False, timeout=1)
            if r.text == f"web:{OUTSIDE_IP}":
                break
        except requests.RequestException as e:
            last = e
        assert time.time() < deadline, (
            f"the outside web servers did not start: {last}: exit {server.poll()}: {log.read_text()}"
        )
        time.sleep(0.1)
    yield
    server.terminate()
    server.wait(timeout=10)


def curl(sbx, name: str, scheme: str = "http") -> str:
    """Fetches `<scheme>://<name>/` from inside the sandbox with `name` resolved to the outside's
    address (no DNS needed); returns the body, or `blocked <exit code>`."""
    port = 443 if scheme == "https" else 80
    cmd = (
        f"curl -sS -k --max-time 5 --resolve {name}:{port}:{OUTSIDE_IP} {scheme}://{name}/ "
        "2>/dev/null; echo \" rc=$?\""
    )
    out = sbx.commands.run(cmd, timeout=30).stdout.strip()
    body, _, rc = out.rpartition(" rc=")
    return body.strip() if rc == "0" else f"blocked {rc}"


DOMAINS = {"allow_out": ["allowed.test", "*.wild.test"], "deny_out": ["0.0.0.0/0"]}


FETCH = (
    "python3 -c \"import urllib.request,sys\n"
    "try:\n"
    " print(urllib.request.urlopen(sys.argv[1], timeout=3).status)\n"
    "except Exception as e:\n"
    " print('blocked', type(e).__name__, e)\" "
)

# Connects to every target at once (threads), 1 s each: dropped packets make a probe wait out
# its timeout, and a host with many addresses would otherwise take minutes.
PROBE = (
    "python3 -c \"import socket,sys,json,threading\n"
    "ok=[]\n"
    "def probe(t):\n"
    " s=socket.socket(); s.settimeout(1)\n"
    " try:\n"
    "  s.connect((t[0],t[1])); ok.append(t)\n"
    " except Exception: pass\n"
    " finally: s.close()\n"
    "ts=[threading.Thread(target=probe,args=(t,)) for t in json.loads(sys.argv[1])]\n"
    "[t.start() for t in ts]; [t.join() for t in ts]\n"
    "print(json.dumps(sorted(ok)))\" "
)


def fetch(sbx, url: str) -> str:
    return sbx.commands.run(FETCH + url, timeout=30).stdout.strip()


def reachable(sbx, targets) -> list:
    out = sbx.commands.run(PROBE + f"'{json.dumps(targets)}'", timeout=60).stdout
    return [tuple(t) for t in json.loads(out)]


def own_ip(sbx) -> str:
    return sbx.commands.run(
        "python3 -c \"import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        f"s.connect(('{OUTSIDE_IP}',80));print(s.getsockname()[0])\""
    ).stdout.strip()


def host_ipv4_addresses() -> list:
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, check=True).stdout
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])]


def test_egress_reaches_outside_through_nat(outside, new_sandbox):
    sbx = new_sandbox()
    assert fetch(sbx, outside) == "200"
    resolv = sbx.files.read("/etc/resolv.conf")
    assert "nameserver" in resolv


def test_host_services_unreachable_on_every_host_address(outside, new_sandbox, paddock):
    sbx = new_sandbox()
    # A host service on every address, next to the server's own (loopback) ports.
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    ports = [paddock.api_port, paddock.proxy_port, listener.getsockname()[1]]
    gateway = own_ip(sbx).rsplit(".", 1)[0] + "." + str(int(own_ip(sbx).rsplit(".", 1)[1]) - 1)
    addrs = sorted(set(host_ipv4_addresses() + [gateway]) - {"127.0.0.1"})
    targets = [[a, p] for a in addrs for p in ports] + [["169.254.169.254", 80]]
    try:
        assert reachable(sbx, targets) == []
    finally:
        listener.close()


def test_sandboxes_cannot_reach_each_other(new_sandbox):
    a = new_sandbox()
    b = new_sandbox()
    b.commands.run("python3 -m http.server 8000", background=True)
    b_ip = own_ip(b)
    for _ in range(50):
        if reachable(b, [[b_ip, 8000]]):
            break
        time.sleep(0.1)
    assert reachable(b, [[b_ip, 8000]]) == [(b_ip, 8000)], "b's server must answer inside b"
    assert reachable(a, [[b_ip, 8000]]) == []


def test_the_host_cannot_connect_into_a_sandbox(new_sandbox, paddock):
    """Issue 13, finding 9: any host process reached envd and every user port at a sandbox's
    address. Only the proxy (over Unix sockets) leads into a sandbox."""
    sbx = new_sandbox()
    sbx.commands.run("python3 -m http.server 8000 --bind 0.0.0.0", background=True)
    ip = own_ip(sbx)
    for _ in range(50):
        if reachable(sbx, [[ip, 8000]]):
            break
        time.sleep(0.1)
    assert reachable(sbx, [[ip, 8000]]) == [(ip, 8000)], "the server must answer inside the sandbox"
    for port in (8000, 49983):
        with pytest.raises(OSError):
            socket.create_connection((ip, port), timeout=1).close()
    # Through the proxy the port still answers.
    r = requests.get(paddock.sandbox_url + "/", headers={"Host": sbx.get_host(8000)}, timeout=10)
    assert r.status_code == 200, r.text


def test_allow_internet_access_false_blocks_egress(outside, new_sandbox):
    sbx = new_sandbox(allow_internet_access=False)
    assert fetch(sbx, outside).startswith("blocked")


def test_update_network_at_runtime(outside, new_sandbox, api, auth):
    sbx = new_sandbox()
    assert fetch(sbx, outside) == "200"
    sbx.update_network({"deny_out": ["0.0.0.0/0"]})
    assert fetch(sbx, outside).startswith("blocked")
    sbx.update_network({"deny_out": ["0.0.0.0/0"], "allow_out": [OUTSIDE_IP]})
    assert fetch(sbx, outside) == "200"
    # Full replacement: an empty body clears every rule.
    r = requests.put(f"{api}/sandboxes/{sbx.sandbox_id}/network", json={}, headers=auth, timeout=10)
    assert r.status_code == 204, r.text
    assert fetch(sbx, outside) == "200"
    r = requests.put(
        f"{api}/sandboxes/{sbx.sandbox_id}/network",
        json={"allow_internet_access": False},
        headers=auth,
        timeout=10,
    )
    assert r.status_code == 204, r.text
    assert fetch(sbx, outside).startswith("blocked")


def test_network_validation(api, auth, new_sandbox):
    r = requests.put(f"{api}/sandboxes/inope1234/network", json={}, headers=auth, timeout=10)
    assert r.status_code == 404
    sbx = new_sandbox()
    url = f"{api}/sandboxes/{sbx.sandbox_id}/network"
    # Domains need a deny of all other traffic (E2B's rule and message).
    r = requests.put(url, json={"allowOut": ["example.com"]}, headers=auth, timeout=10)
    assert r.status_code == 400 and "you must include 'ALL_TRAFFIC' in deny out" in r.text
    r = requests.put(
        url, json={"allowOut": ["example.com"], "denyOut": ["0.0.0.0/0"]}, headers=auth, timeout=10
    )
    assert r.status_code == 204, r.text
    r = requests.put(url, json={"denyOut": ["not-an-ip"]}, headers=auth, timeout=10)
    assert r.status_code == 400 and "denyOut" in r.text
    r = requests.put(url, json={"denyOut": ["example.com"]}, headers=auth, timeout=10)
    assert r.status_code == 400 and "invalid denied CIDR example.com" in r.text
    r = requests.put(
        url, json={"allowOut": ["bad..name"], "denyOut": ["0.0.0.0/0"]}, headers=auth, timeout=10
    )
    assert r.status_code == 400 and "allowOut" in r.text
    r = requests.post(
        f"{api}/v2/sandboxes",
        json={"templateID": "base", "network": {"allowOut": ["*.example.com"]}},
        headers=auth,
        timeout=30,
    )
    assert r.status_code == 400 and "ALL_TRAFFIC" in r.text


def test_domain_allow_list_for_http_and_tls(outside, web, new_sandbox):
    sbx = new_sandbox(network=DOMAINS)
    assert curl(sbx, "allowed.test") == "web:allowed.test"
    assert curl(sbx, "allowed.test", "https") == "web:allowed.test"
    # The same address under another name is refused, over HTTP and TLS.
    assert curl(sbx, "denied.test").startswith("blocked")
    assert curl(sbx, "denied.test", "https").startswith("blocked")
    # `*.wild.test` matches names below wild.test, not wild.test itself (as in E2B).
    assert curl(sbx, "a.wild.test") == "web:a.wild.test"
    assert curl(sbx, "x.y.wild.test", "https") == "web:x.y.wild.test"
    assert curl(sbx, "wild.test").startswith("blocked")
    # No name at all (a bare IP) and other ports follow the IP rules: denied.
    assert fetch(sbx, f"http://{OUTSIDE_IP}/").startswith("blocked")
    assert fetch(sbx, outside).startswith("blocked")
    assert reachable(sbx, [[OUTSIDE_IP, PORT]]) == []
    # An address in allowOut is reachable whatever the name.
    sbx.update_network({"allow_out": DOMAINS["allow_out"] + [OUTSIDE_IP], "deny_out": ["0.0.0.0/0"]})
    assert curl(sbx, "denied.test") == "web:denied.test"
    assert fetch(sbx, outside) == "200"


def test_domain_rules_change_at_runtime(outside, web, new_sandbox):
    sbx = new_sandbox()
    assert curl(sbx, "denied.test") == "web:denied.test"
    sbx.update_network(DOMAINS)
    assert curl(sbx, "denied.test").startswith("blocked")
    assert curl(sbx, "allowed.test", "https") == "web:allowed.test"
    sbx.update_network({"allow_out": ["denied.test"], "deny_out": ["0.0.0.0/0"]})
    assert curl(sbx, "denied.test") == "web:denied.test"
    assert curl(sbx, "allowed.test", "https").startswith("blocked")
    sbx.update_network({"deny_out": ["0.0.0.0/0"]})
    assert curl(sbx, "denied.test").startswith("blocked")
    sbx.update_network({})
    assert curl(sbx, "allowed.test") == "web:allowed.test"
    assert curl(sbx, "denied.test", "https") == "web:denied.test"


def test_egress_proxy_port_is_closed_to_sandboxes(outside, web, new_sandbox, paddock):
    found = re.findall(r"egress_proxy_port=(\d+)", paddock.log_path.read_text(errors="replace"))
    assert found, "the server did not log its egress proxy port"
    port = int(found[-1])
    for sbx in (new_sandbox(network=DOMAINS), new_sandbox()):
        gateway = own_ip(sbx).rsplit(".", 1)[0] + "." + str(int(own_ip(sbx).rsplit(".", 1)[1]) - 1)
        addrs = sorted(set(host_ipv4_addresses() + [gateway]) - {"127.0.0.1"})
        targets = [[a, p] for a in addrs for p in (port, 80, 443)]
        assert reachable(sbx, targets) == []
