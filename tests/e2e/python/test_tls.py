"""HTTPS on the API and the proxy (`paddock serve --tls-cert --tls-key --domain`), with a
throwaway CA and a wildcard certificate for `*.paddock.test` made here.

The SDK runs with nothing but E2B_API_KEY, E2B_DOMAIN and E2B_API_URL as `serve` prints them
(no E2B_SANDBOX_URL: every sandbox request goes to `https://<port>-<id>.paddock.test:<proxy
port>` by host routing), trusting the CA through SSL_CERT_FILE; `*.paddock.test` resolves to
127.0.0.1 through a loopback DNS server the client's mount namespace points at
(tls_helpers.py). Also: a signed file URL and a preview URL with plain urllib, plain HTTP to
the TLS ports refused cleanly, and a bad certificate pair stopping `serve` with the file named.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from paddock_server import DEFAULT_BIN, PaddockServer, free_port
from tls_helpers import LoopbackDns, make_pki, run_with_dns

DOMAIN = "paddock.test"
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), [f"*.{DOMAIN}", DOMAIN])


@pytest.fixture(scope="module")
def tls_server(pki):
    proxy_port = free_port()
    server = PaddockServer(
        proxy_port=proxy_port,
        https=True,
        ready_exports=("E2B_DOMAIN", "E2B_API_URL", "E2B_API_KEY"),
        extra_args=[
            "--tls-cert", str(pki.cert),
            "--tls-key", str(pki.key),
            "--domain", f"{DOMAIN}:{proxy_port}",
        ],
    )  # fmt: skip
    server.start(ready_timeout=600)
    try:
        yield server
    finally:
        code = server.stop(timeout=30)
        leaks = server.leaks()
        if code != 0 or leaks:
            print(f"--- log tail ---\n{server.log_tail(120)}")
        assert code == 0, f"exit code {code} after SIGTERM"
        assert not leaks, leaks
        server.cleanup()


@pytest.fixture
def dns():
    server = LoopbackDns(DOMAIN)
    yield server
    server.close()


def test_serve_prints_host_routing_exports(tls_server):
    assert tls_server.exports["E2B_DOMAIN"] == f"{DOMAIN}:{tls_server.proxy_port}"
    assert tls_server.exports["E2B_API_URL"] == f"https://api.{DOMAIN}:{tls_server.api_port}"
    assert "E2B_SANDBOX_URL" not in tls_server.exports
    assert tls_server.exports["E2B_API_KEY"] == tls_server.api_key


def test_sdk_runs_over_https_by_host_routing(tls_server, pki, dns, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    env.update(
        E2B_API_KEY=tls_server.exports["E2B_API_KEY"],
        E2B_DOMAIN=tls_server.exports["E2B_DOMAIN"],
        E2B_API_URL=tls_server.exports["E2B_API_URL"],
        SSL_CERT_FILE=str(pki.ca),
    )
    done = run_with_dns(
        [sys.executable, str(HERE / "tls_sdk_client.py")], tmp_path, env, timeout=300
    )
    assert done.returncode == 0, f"client failed:\n{done.stderr[-4000:]}"
    seen = json.loads(done.stdout)
    sid = seen["sandbox_id"]
    tls_server.track(sid)
    port = tls_server.proxy_port
    assert seen["envd_api_url"] == f"https://49983-{sid}.{DOMAIN}:{port}"
    assert seen["stdout"] == "hello over tls\n"
    assert seen["read"] == "written over https"
    assert seen["signed_url"].startswith(f"https://49983-{sid}.{DOMAIN}:{port}/files?")
    assert seen["signed"] == [200, "written over https"]
    assert seen["unsigned"] == 401
    assert seen["preview_url"] == f"https://8000-{sid}.{DOMAIN}:{port}/index.html"
    assert seen["preview"] == [200, "<h1>preview over https</h1>"]
    # The names went through the test's resolver: nothing reached the sandbox by address.
    assert f"api.{DOMAIN}" in dns.queries
    assert f"49983-{sid}.{DOMAIN}" in dns.queries


def test_plain_http_to_the_tls_ports_is_refused_cleanly(tls_server):
    for port in (tls_server.api_port, tls_server.proxy_port):
        r = requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert r.status_code == 400, (port, r.text)
        assert "use an https:// URL" in r.json()["message"]


@pytest.mark.parametrize("fault", ["missing", "mismatch"])
def test_a_bad_certificate_pair_stops_serve_naming_the_file(pki, tmp_path, fault):
    binary = Path(os.environ.get("PADDOCK_BIN", DEFAULT_BIN))
    if fault == "missing":
        cert, key, named = tmp_path / "nope.pem", pki.key, ["nope.pem"]
    else:
        # The CA's key is not the leaf's.
        cert, key, named = pki.cert, pki.ca.with_suffix(".key"), ["cert.pem", "ca.key"]
    done = subprocess.run(
        [str(binary), "serve", "--data-dir", str(tmp_path / "data"),
         "--listen", f"127.0.0.1:{free_port()}", "--proxy-listen", f"127.0.0.1:{free_port()}",
         "--tls-cert", str(cert), "--tls-key", str(key)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    for name in named:
        assert name in done.stderr, done.stderr
    assert not (tmp_path / "data").exists(), "nothing started"
