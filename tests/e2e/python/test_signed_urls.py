"""Signed `/files` URLs of a secured sandbox (`download_url`/`upload_url`) used with plain HTTP,
and the access token envd requires on everything else.

With `E2B_SANDBOX_URL` set, the URL the SDK builds points at the proxy without naming the
sandbox, so requests carry the routing headers (or a `Host` from `get_host`), as the SDK does."""

from __future__ import annotations

import base64
import hashlib
import time
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import pytest
import requests


def _route(sbx) -> dict:
    return {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}


def _with_query(url: str, **changes) -> str:
    parts = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    for k, v in changes.items():
        if v is None:
            query.pop(k, None)
        else:
            query[k] = v
    return urlunparse(parts._replace(query=urlencode(query)))


def _sign(path: str, operation: str, username: str, token: str, expiration: int) -> str:
    """A `v1_` signature as the SDK computes it (spec 3.2), for an expiry of our choosing."""
    raw = f"{path}:{operation}:{username}:{token}:{expiration}"
    return "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).decode().rstrip("=")


def _tamper(signature: str) -> str:
    last = signature[-1]
    return signature[:-1] + ("A" if last != "A" else "B")


@pytest.fixture(scope="module")
def signed_file(sbx):
    path = "/home/user/signed/download-me.txt"
    sbx.files.write(path, "signed content")
    return path


def test_download_url_works_with_plain_get(sbx, signed_file):
    url = sbx.download_url(signed_file)
    assert "signature=v1_" in url
    r = requests.get(url, headers=_route(sbx), timeout=30)
    assert r.status_code == 200, r.text
    assert r.text == "signed content"


def test_download_url_by_host_routing(sbx, signed_file, paddock):
    url = sbx.download_url(signed_file, use_signature_expiration=120)
    assert "signature_expiration=" in url
    r = requests.get(url, headers={"Host": sbx.get_host(49983)}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.text == "signed content"


def test_download_url_as_root(sbx):
    sbx.files.write("/root/root-signed.txt", "for root", user="root")
    url = sbx.download_url("/root/root-signed.txt", user="root")
    assert "username=root" in url
    r = requests.get(url, headers=_route(sbx), timeout=30)
    assert r.status_code == 200, r.text
    assert r.text == "for root"


def test_upload_url_works_with_plain_post(sbx):
    path = "/home/user/signed/uploaded.bin"
    payload = bytes(range(256)) * 10
    url = sbx.upload_url(path)
    r = requests.post(url, files={"file": ("uploaded.bin", payload)}, headers=_route(sbx), timeout=30)
    assert r.status_code == 200, r.text
    written = r.json()
    assert written[0]["path"] == path
    assert written[0]["type"] == "file"
    assert bytes(sbx.files.read(path, format="bytes")) == payload
    assert sbx.files.get_info(path).owner == "user"


def test_tampered_signature_is_401(sbx, signed_file):
    url = sbx.download_url(signed_file)
    signature = parse_qs(urlparse(url).query)["signature"][0]
    r = requests.get(_with_query(url, signature=_tamper(signature)), headers=_route(sbx), timeout=30)
    assert r.status_code == 401
    assert r.json() == {"code": 401, "message": "invalid signature"}


def test_signature_for_another_path_is_401(sbx, signed_file):
    url = sbx.download_url(signed_file)
    other = _with_query(url, path="/home/user/signed/uploaded.bin")
    assert requests.get(other, headers=_route(sbx), timeout=30).status_code == 401


def test_read_signature_cannot_write(sbx, signed_file):
    url = sbx.download_url(signed_file)
    r = requests.post(url, files={"file": ("x", b"overwritten")}, headers=_route(sbx), timeout=30)
    assert r.status_code == 401
    assert sbx.files.read(signed_file) == "signed content"


def test_missing_signature_is_401(sbx, signed_file):
    url = _with_query(sbx.download_url(signed_file), signature=None)
    r = requests.get(url, headers=_route(sbx), timeout=30)
    assert r.status_code == 401
    assert r.json() == {"code": 401, "message": "missing signature query parameter"}


def test_expired_signature_is_401_with_e2b_message(sbx, signed_file):
    """A genuine signature whose expiry has passed gets E2B envd's exact text (E2B's SDK tests match it)."""
    url = sbx.download_url(signed_file, use_signature_expiration=120)
    query = parse_qs(urlparse(url).query)
    username = query.get("username", [""])[0]
    past = int(time.time()) - 60
    signature = _sign(signed_file, "read", username, sbx._envd_access_token, past)
    r = requests.get(
        _with_query(url, signature=signature, signature_expiration=str(past)), headers=_route(sbx), timeout=30
    )
    assert r.status_code == 401
    assert r.json() == {"code": 401, "message": "signature is already expired"}
    # The same signature, forged for the expiry it claims, is "invalid" (checked before the expiry).
    r = requests.get(
        _with_query(url, signature=_tamper(signature), signature_expiration=str(past)),
        headers=_route(sbx),
        timeout=30,
    )
    assert r.json() == {"code": 401, "message": "invalid signature"}


def test_wrong_header_token_on_files_is_401(sbx, signed_file):
    url = _with_query(sbx.download_url(signed_file), signature=None)
    r = requests.get(url, headers={**_route(sbx), "X-Access-Token": "wrong"}, timeout=30)
    assert r.status_code == 401
    assert r.json() == {"code": 401, "message": "access token present in header but does not match"}


def test_rpc_without_access_token_is_401(sbx, paddock):
    r = requests.post(
        paddock.sandbox_url + "/filesystem.Filesystem/Stat",
        json={"path": "/home/user"},
        headers={**_route(sbx), "Connect-Protocol-Version": "1"},
        timeout=30,
    )
    assert r.status_code == 401
    assert r.json() == {
        "code": 401,
        "message": "unauthorized access, please provide a valid access token or method signing if supported",
    }


def test_rpc_with_access_token_works(sbx, paddock):
    token = sbx._envd_access_token  # what the SDK sends as X-Access-Token
    r = requests.post(
        paddock.sandbox_url + "/filesystem.Filesystem/Stat",
        json={"path": "/home/user"},
        headers={**_route(sbx), "Connect-Protocol-Version": "1", "X-Access-Token": token},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    entry = r.json()["entry"]
    assert entry["type"] == "FILE_TYPE_DIRECTORY"
    assert entry["owner"] == "user"
