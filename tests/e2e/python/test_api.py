"""The control-plane REST API: auth, error bodies and statuses, raw create/kill, pagination
headers; checked both through the SDK and with raw `requests` as the wire contract says."""

from __future__ import annotations

import secrets

import pytest
import requests

from e2b import AuthenticationException, Sandbox, SandboxException


def _assert_error_body(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert body["code"] == status
    assert isinstance(body["message"], str) and body["message"]
    return body


@pytest.mark.serve_only
def test_server_prints_the_three_exports(paddock):
    assert paddock.exports["E2B_API_KEY"] == paddock.api_key
    assert paddock.exports["E2B_API_URL"].rstrip("/").endswith(f":{paddock.api_port}")
    assert paddock.exports["E2B_SANDBOX_URL"].rstrip("/").endswith(f":{paddock.proxy_port}")


def test_health(api):
    assert requests.get(api + "/health", timeout=10).status_code == 200


def test_wrong_api_key_sdk():
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_" + "0" * 40)
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="e2b_wrong").next_items()


def test_wrong_or_missing_api_key_raw(api):
    for headers in ({"X-API-Key": "e2b_wrong"}, {}):
        _assert_error_body(requests.get(api + "/v2/sandboxes", headers=headers, timeout=10), 401)
        r = requests.post(api + "/v2/sandboxes", json={"templateID": "base"}, headers=headers, timeout=10)
        _assert_error_body(r, 401)


def test_unknown_template_is_404_with_clear_message(paddock):
    name = "no-such-template-" + secrets.token_hex(3)
    with pytest.raises(SandboxException) as exc:
        sandbox = Sandbox.create(template=name)
        paddock.track(sandbox.sandbox_id)
        sandbox.kill()
    assert exc.value.status_code == 404
    assert name in str(exc.value)


def test_unknown_template_raw(api, auth):
    r = requests.post(api + "/v2/sandboxes", json={"templateID": "nope-xyz"}, headers=auth, timeout=30)
    body = _assert_error_body(r, 404)
    assert "nope-xyz" in body["message"]


def test_malformed_json_is_400(api, auth):
    headers = {**auth, "Content-Type": "application/json"}
    r = requests.post(api + "/v2/sandboxes", data="{bad", headers=headers, timeout=10)
    _assert_error_body(r, 400)


def test_wrong_field_types_are_400(api, auth):
    for body in ({"templateID": 5}, {"templateID": "base", "timeout": "soon"}, {"templateID": "base", "timeout": -1}):
        r = requests.post(api + "/v2/sandboxes", json=body, headers=auth, timeout=10)
        _assert_error_body(r, 400)


def test_raw_create_info_and_kill(api, auth, paddock):
    r = requests.post(
        api + "/v2/sandboxes",
        json={"templateID": "base", "metadata": {"raw": "yes"}, "envVars": {}, "timeout": 60},
        headers=auth,
        timeout=60,
    )
    assert r.status_code == 201, r.text
    sandbox = r.json()
    sid = paddock.track(sandbox["sandboxID"])
    try:
        assert sandbox["templateID"]
        assert sandbox["clientID"]
        assert sandbox["envdAccessToken"]
        major, minor, patch = (int(x) for x in sandbox["envdVersion"].split("."))
        assert (major, minor, patch) >= (0, 6, 4)

        detail = requests.get(f"{api}/sandboxes/{sid}", headers=auth, timeout=10)
        assert detail.status_code == 200
        d = detail.json()
        assert d["sandboxID"] == sid
        assert d["state"] == "running"
        assert d["metadata"] == {"raw": "yes"}
        for key in ("startedAt", "endAt", "cpuCount", "memoryMB", "diskSizeMB", "envdVersion", "clientID"):
            assert key in d, key
    finally:
        assert requests.delete(f"{api}/sandboxes/{sid}", headers=auth, timeout=30).status_code == 204
    _assert_error_body(requests.delete(f"{api}/sandboxes/{sid}", headers=auth, timeout=10), 404)
    _assert_error_body(requests.get(f"{api}/sandboxes/{sid}", headers=auth, timeout=10), 404)


def test_v1_create_and_connect(api, auth, paddock):
    r = requests.post(api + "/sandboxes", json={"templateID": "base", "timeout": 60, "secure": True}, headers=auth, timeout=60)
    assert r.status_code == 201, r.text
    sid = paddock.track(r.json()["sandboxID"])
    try:
        c = requests.post(f"{api}/sandboxes/{sid}/connect", json={"timeout": 120}, headers=auth, timeout=30)
        assert c.status_code == 200, c.text
        assert c.json()["sandboxID"] == sid
        c2 = requests.post(f"{api}/v2/sandboxes/{sid}/connect", json={}, headers=auth, timeout=30)
        assert c2.status_code == 200, c2.text
        listed = requests.get(api + "/sandboxes", headers=auth, timeout=10)
        assert listed.status_code == 200
        assert sid in {s["sandboxID"] for s in listed.json()}
    finally:
        requests.delete(f"{api}/sandboxes/{sid}", headers=auth, timeout=30)


def test_unknown_sandbox_endpoints_are_404(api, auth):
    ghost = "i" + "0" * 20
    _assert_error_body(requests.get(f"{api}/sandboxes/{ghost}", headers=auth, timeout=10), 404)
    _assert_error_body(requests.delete(f"{api}/sandboxes/{ghost}", headers=auth, timeout=10), 404)
    r = requests.post(f"{api}/sandboxes/{ghost}/timeout", json={"timeout": 10}, headers=auth, timeout=10)
    _assert_error_body(r, 404)
    r = requests.post(f"{api}/v2/sandboxes/{ghost}/connect", json={}, headers=auth, timeout=10)
    _assert_error_body(r, 404)


def test_pagination_headers_with_limit_1(api, auth, new_sandbox):
    tag = "raw-page-" + secrets.token_hex(4)
    ids = {new_sandbox(metadata={"e2e-raw": tag}).sandbox_id for _ in range(3)}
    seen = []
    token = None
    for _ in range(10):
        params = {"metadata": f"e2e-raw={tag}", "limit": 1}
        if token:
            params["nextToken"] = token
        r = requests.get(api + "/v2/sandboxes", params=params, headers=auth, timeout=10)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page) <= 1
        assert int(r.headers["X-Total-Running"]) >= 3
        seen += [s["sandboxID"] for s in page]
        token = r.headers.get("X-Next-Token")
        if not token:
            break
    assert sorted(seen) == sorted(ids), "every sandbox exactly once across pages"
    # Order: newest first by default, oldest first with order=asc.
    asc = requests.get(api + "/v2/sandboxes", params={"metadata": f"e2e-raw={tag}", "order": "asc"}, headers=auth, timeout=10)
    desc = requests.get(api + "/v2/sandboxes", params={"metadata": f"e2e-raw={tag}"}, headers=auth, timeout=10)
    assert [s["sandboxID"] for s in asc.json()] == list(reversed([s["sandboxID"] for s in desc.json()]))


def test_bad_list_parameters_are_400(api, auth):
    for params in ({"limit": 0}, {"limit": 101}, {"state": "sleeping"}, {"metadata": "no-equals-sign"}):
        r = requests.get(api + "/v2/sandboxes", params=params, headers=auth, timeout=10)
        _assert_error_body(r, 400)
