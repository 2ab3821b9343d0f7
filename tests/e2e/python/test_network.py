"""Per-sandbox networking through the official SDK: egress through NAT to an "outside" network
namespace this module makes itself (198.18.5.0/30 on its own veth, traffic never leaves the
machine), no reach to the host's services on any host address, no sandbox-to-sandbox traffic,
`allow_internet_access=False`, and `update_network` / raw `PUT /sandboxes/{id}/network` at
runtime."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest
import requests

NS = "pdk_e2e_out"
HOST_IF = "pdoe2e"
OUTSIDE_IP = "198.18.5.2"
PORT = 8080
OUTSIDE_URL = f"http://{OUTSIDE_IP}:{PORT}/"


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


FETCH = (
    "python3 -c \"import urllib.request,sys\n"
    "try:\n"
    " print(urllib.request.urlopen(sys.argv[1], timeout=3).status)\n"
    "except Exception as e:\n"
    " print('blocked', type(e).__name__, e)\" "
)

PROBE = (
    "python3 -c \"import socket,sys,json\n"
    "ok=[]\n"
    "for t in json.loads(sys.argv[1]):\n"
    " s=socket.socket(); s.settimeout(1)\n"
    " try:\n"
    "  s.connect((t[0],t[1])); ok.append(t)\n"
    " except Exception: pass\n"
    " finally: s.close()\n"
    "print(json.dumps(ok))\" "
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
    r = requests.put(url, json={"allowOut": ["example.com"]}, headers=auth, timeout=10)
    assert r.status_code == 400 and "domain names in allowOut are not supported yet" in r.text
    r = requests.put(url, json={"denyOut": ["not-an-ip"]}, headers=auth, timeout=10)
    assert r.status_code == 400 and "denyOut" in r.text
    r = requests.post(
        f"{api}/v2/sandboxes",
        json={"templateID": "base", "network": {"allowOut": ["*.example.com"]}},
        headers=auth,
        timeout=30,
    )
    assert r.status_code == 400 and "allowOut" in r.text
