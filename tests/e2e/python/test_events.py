"""Lifecycle events and webhooks against a real `paddock serve`, as E2B documents them: a
sandbox driven with the official SDK (create, set_timeout, pause, connect, kill) leaves exactly
that sequence in `GET /events/sandboxes/{id}`; a Server-Sent Events stream opened before the
create sees the events live and resumes after `Last-Event-ID`; a webhook receiver on
127.0.0.1 (allowed by the session server's `--webhook-allow-cidr 127.0.0.1/32`) gets every
subscribed event with a valid `e2b-signature`; a server with default flags refuses webhooks
aimed at loopback, link-local and other internal addresses."""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional

import requests

from e2b import Sandbox
from paddock_server import PaddockServer

LIFECYCLE = ["created", "updated", "paused", "resumed", "killed"]


def _short(event_type: str) -> str:
    return event_type.removeprefix("sandbox.lifecycle.")


def _events(api: str, auth: dict, sandbox_id: str) -> List[dict]:
    r = requests.get(
        f"{api}/events/sandboxes/{sandbox_id}",
        params={"orderAsc": "true", "limit": 100},
        headers=auth,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


def _drive(new_sandbox, **create_kwargs) -> str:
    """create → set_timeout → pause → connect (resume) → kill; returns the sandbox id."""
    sbx = new_sandbox(timeout=300, **create_kwargs)
    sbx.set_timeout(600)
    assert sbx.pause() is True
    resumed = Sandbox.connect(sbx.sandbox_id)
    assert resumed.is_running()
    assert resumed.kill() is True
    return sbx.sandbox_id


class SseStream:
    """Reads Server-Sent Events from a streaming GET in a thread; messages arrive in a queue."""

    def __init__(self, url: str, auth: dict, last_event_id: Optional[str] = None):
        headers = dict(auth, Accept="text/event-stream")
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self.response = requests.get(url, headers=headers, stream=True, timeout=(10, 60))
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["content-type"].startswith("text/event-stream")
        self.messages: "queue.Queue[dict]" = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        message: Dict[str, str] = {}
        try:
            for line in self.response.iter_lines(decode_unicode=True):
                if line is None:
                    continue
                if line == "":
                    if "event" in message:
                        self.messages.put(
                            {
                                "id": message.get("id", ""),
                                "event": message["event"],
                                "data": json.loads(message.get("data", "null")),
                            }
                        )
                    message = {}
                elif line.startswith(":"):
                    continue  # keepalive comment
                else:
                    name, _, value = line.partition(":")
                    message[name] = value.removeprefix(" ")
        except Exception:  # noqa: BLE001 - the stream was closed by the test
            pass

    def next_for(self, sandbox_id: str, timeout: float = 30.0) -> dict:
        """The next message about `sandbox_id` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no event for {sandbox_id} within {timeout} s"
            try:
                m = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if m["data"]["sandboxId"] == sandbox_id:
                return m

    def close(self) -> None:
        self.response.close()


def test_sdk_lifecycle_leaves_its_events(new_sandbox, api, auth):
    sandbox_id = _drive(new_sandbox, metadata={"suite": "events"})
    events = _events(api, auth, sandbox_id)
    assert [_short(e["type"]) for e in events] == LIFECYCLE
    for e in events:
        assert e["version"] == "v1"
        assert e["sandboxId"] == sandbox_id
        assert e["sandboxTemplateId"] == "base"
        assert e["sandboxTeamId"]
        assert e["eventData"]["sandbox_metadata"] == {"suite": "events"}
    assert "set_timeout" in events[1]["eventData"]
    assert events[4]["eventData"]["kill_reason"] == "request"
    assert events[0]["sandboxExecutionId"] == events[2]["sandboxExecutionId"]
    assert events[3]["sandboxExecutionId"] != events[2]["sandboxExecutionId"]

    # Newest first by default, paging and type filters as E2B documents them.
    r = requests.get(f"{api}/events/sandboxes/{sandbox_id}", params={"limit": 2}, headers=auth, timeout=30)
    assert [_short(e["type"]) for e in r.json()] == ["killed", "resumed"]
    r = requests.get(
        f"{api}/events/sandboxes/{sandbox_id}",
        params=[("types", "sandbox.lifecycle.paused"), ("types", "sandbox.lifecycle.resumed"), ("orderAsc", "true")],
        headers=auth,
        timeout=30,
    )
    assert [_short(e["type"]) for e in r.json()] == ["paused", "resumed"]
    team = requests.get(f"{api}/events/sandboxes", params={"limit": 100}, headers=auth, timeout=30)
    assert team.status_code == 200
    assert sandbox_id in {e["sandboxId"] for e in team.json()}

    r = requests.get(f"{api}/events/sandboxes", params={"limit": 0}, headers=auth, timeout=30)
    assert r.status_code == 400 and "limit" in r.json()["message"]
    r = requests.get(f"{api}/events/sandboxes/{sandbox_id}", timeout=30)
    assert r.status_code == 401


def test_stream_opened_before_create_sees_events_live(new_sandbox, api, auth):
    stream = SseStream(f"{api}/events/sandboxes", auth)
    try:
        sandbox_id = _drive(new_sandbox)
        seen = [stream.next_for(sandbox_id) for _ in LIFECYCLE]
    finally:
        stream.close()
    assert [_short(m["event"]) for m in seen] == LIFECYCLE
    for m in seen:
        assert m["id"] == m["data"]["id"]
        assert m["event"] == m["data"]["type"]

    # Reconnecting after the `created` event replays the rest from the store.
    resumed = SseStream(f"{api}/events/sandboxes/{sandbox_id}", auth, last_event_id=seen[0]["id"])
    try:
        replay = [resumed.next_for(sandbox_id) for _ in LIFECYCLE[1:]]
    finally:
        resumed.close()
    assert [m["id"] for m in replay] == [m["id"] for m in seen[1:]]


class _Receiver(BaseHTTPRequestHandler):
    deliveries: "queue.Queue[tuple]"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.deliveries.put((dict(self.headers.items()), body.decode()))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _verify_webhook_signature(secret: str, payload: str, payload_signature: str) -> bool:
    """E2B's documented check."""
    hash_bytes = hashlib.sha256((secret + payload).encode("utf-8")).digest()
    expected_signature = base64.b64encode(hash_bytes).decode("utf-8").rstrip("=")
    return expected_signature == payload_signature


def test_webhook_gets_signed_events(new_sandbox, api, auth):
    deliveries: "queue.Queue[tuple]" = queue.Queue()
    handler = type("Receiver", (_Receiver,), {"deliveries": deliveries})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "secret-for-event-signature-verification"
    r = requests.post(
        f"{api}/events/webhooks",
        headers=auth,
        json={
            "name": "e2e receiver",
            "url": f"http://127.0.0.1:{server.server_address[1]}/webhook",
            "enabled": True,
            "events": ["sandbox.lifecycle." + t for t in LIFECYCLE],
            "signatureSecret": secret,
        },
        timeout=30,
    )
    assert r.status_code == 201, r.text
    hook = r.json()
    assert "signatureSecret" not in hook and secret not in r.text
    try:
        listed = requests.get(f"{api}/events/webhooks/{hook['id']}", headers=auth, timeout=30).json()
        assert listed == hook
        bad = requests.post(
            f"{api}/events/webhooks",
            headers=auth,
            json={"name": "bad", "url": "ftp://127.0.0.1/", "events": ["sandbox.lifecycle.created"], "signatureSecret": "s"},
            timeout=30,
        )
        assert bad.status_code == 400 and "url" in bad.json()["message"]

        sandbox_id = _drive(new_sandbox)
        got: List[tuple] = []
        deadline = time.monotonic() + 60
        while len(got) < len(LIFECYCLE):
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(got)} deliveries arrived"
            headers, body = deliveries.get(timeout=left)
            if json.loads(body)["sandbox_id"] == sandbox_id:
                got.append((headers, body))
    finally:
        requests.delete(f"{api}/events/webhooks/{hook['id']}", headers=auth, timeout=30)
        server.shutdown()
        server.server_close()

    stored = _events(api, auth, sandbox_id)
    assert [_short(json.loads(b)["type"]) for _, b in got] == LIFECYCLE, "in order"
    for (headers, body), event in zip(got, stored):
        lower = {k.lower(): v for k, v in headers.items()}
        assert _verify_webhook_signature(secret, body, lower["e2b-signature"])
        assert not _verify_webhook_signature("wrong", body, lower["e2b-signature"])
        assert lower["e2b-signature-version"] == "v1"
        assert lower["e2b-webhook-id"] == hook["id"]
        assert lower["e2b-delivery-id"]
        payload = json.loads(body)
        assert payload["id"] == event["id"]
        assert payload["type"] == event["type"]
        assert payload["sandbox_team_id"] == event["sandboxTeamId"]
    r = requests.get(f"{api}/events/webhooks/{hook['id']}", headers=auth, timeout=30)
    assert r.status_code == 404


INTERNAL_URLS = [
    "http://127.0.0.1:8080/hook",
    "http://localhost:8080/hook",
    "http://[::1]:8080/hook",
    "http://[::ffff:127.0.0.1]:8080/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/hook",
    "http://0.0.0.0:3000/hook",
    "http://10.213.0.2:49983/hook",
]


def _register(api: str, auth: dict, url: str) -> requests.Response:
    return requests.post(
        f"{api}/events/webhooks",
        headers=auth,
        json={"name": "ssrf", "url": url, "events": ["sandbox.lifecycle.created"], "signatureSecret": "s"},
        timeout=30,
    )


def test_allowed_cidr_opens_only_itself(api, auth):
    """The session server allows 127.0.0.1/32 and nothing else that is internal."""
    for url in INTERNAL_URLS[2:]:
        r = _register(api, auth, url)
        assert r.status_code == 400, (url, r.text)
        assert r.json()["message"].startswith("url"), r.text


def test_default_server_refuses_internal_webhook_destinations():
    server = PaddockServer(extra_args=["--network", "none"]).start()
    try:
        auth = {"X-API-Key": server.api_key}
        for url in INTERNAL_URLS:
            r = _register(server.api_url, auth, url)
            assert r.status_code == 400, (url, r.text)
            body = r.json()
            assert body["code"] == 400
            assert body["message"].startswith("url") and "refused" in body["message"], body
        ok = _register(server.api_url, auth, "https://hooks.example.com/paddock")
        assert ok.status_code == 201, ok.text
        assert requests.get(f"{server.api_url}/events/webhooks", headers=auth, timeout=30).json() == [ok.json()]
    finally:
        assert server.stop(timeout=30) == 0
        assert server.leaks() == []
        server.cleanup()
