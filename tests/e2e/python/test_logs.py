"""Sandbox logs over raw HTTP (`GET /sandboxes/{id}/logs` as the E2B CLI uses it, and
`GET /v2/sandboxes/{id}/logs`), with sandboxes driven by the official SDK.

What must be there: the control plane's lifecycle records (`source: control-plane`: created,
running, stopping with its reason, stopped) and envd's records (`source: envd`: every process
start with its command, every end with its exit code), for running sandboxes and for killed
ones whose record is kept.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path

import pytest
import requests

from e2b import Sandbox
from e2b.sandbox.commands.command_handle import CommandExitException


def logs_v1(api: str, auth: dict, sandbox_id: str, **params) -> dict:
    r = requests.get(f"{api}/sandboxes/{sandbox_id}/logs", params=params, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def logs_v2(api: str, auth: dict, sandbox_id: str, **params) -> list:
    r = requests.get(f"{api}/v2/sandboxes/{sandbox_id}/logs", params=params, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["logs"]


def ts(entry: dict) -> datetime:
    return datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))


def process_events(entries: list, event: str) -> list:
    return [e for e in entries if e["fields"].get("event") == event and e["fields"]["source"] == "envd"]


def test_a_command_shows_its_start_and_its_exit_code(new_sandbox, api, auth):
    sbx: Sandbox = new_sandbox()
    assert sbx.commands.run("echo hi").stdout == "hi\n"

    body = logs_v1(api, auth, sbx.sandbox_id)
    entries = body["logEntries"]
    assert len(body["logs"]) == len(entries)
    starts = [e for e in process_events(entries, "process_start") if "echo hi" in e["message"]]
    assert len(starts) == 1, entries
    start = starts[0]
    assert start["level"] == "info"
    assert start["fields"]["cmd"] == "/bin/bash"
    assert json.loads(start["fields"]["args"]) == ["-l", "-c", "echo hi"]
    assert start["fields"]["user"] == "user"
    pid = start["fields"]["pid"]
    ends = [e for e in process_events(entries, "process_end") if e["fields"]["pid"] == pid]
    assert len(ends) == 1, entries
    assert ends[0]["fields"]["exit_code"] == "0"
    assert ends[0]["level"] == "info"
    assert ts(ends[0]) >= ts(start)

    # The lifecycle came first, from the control plane.
    lifecycle = [e for e in entries if e["fields"]["source"] == "control-plane"]
    assert [e["message"] for e in lifecycle[:2]] == [
        "sandbox created from template base",
        "sandbox running",
    ]
    assert ts(lifecycle[1]) <= ts(start)
    # Ordered by time, oldest first.
    assert [ts(e) for e in entries] == sorted(ts(e) for e in entries)

    # v1 `logs[].line` is the JSON object the E2B CLI parses: `level` and `logger` are required.
    for log in body["logs"]:
        line = json.loads(log["line"])
        assert line["level"] in ("debug", "info", "warn", "error")
        assert isinstance(line["logger"], str)
    lines = [json.loads(log["line"]) for log in body["logs"]]
    assert any(l["logger"] == "processSvc" and "echo hi" in l["message"] for l in lines)


def test_a_failing_command_shows_its_exit_code(new_sandbox, api, auth):
    sbx: Sandbox = new_sandbox()
    with pytest.raises(CommandExitException) as raised:
        sbx.commands.run("exit 3")
    assert raised.value.exit_code == 3

    ends = [
        e
        for e in process_events(logs_v2(api, auth, sbx.sandbox_id), "process_end")
        if e["fields"]["exit_code"] == "3"
    ]
    assert len(ends) == 1
    assert ends[0]["level"] == "warn"
    assert "exit status 3" in ends[0]["message"]


def test_v2_level_search_and_direction(new_sandbox, api, auth):
    sbx: Sandbox = new_sandbox()
    sbx.commands.run("echo first")
    with pytest.raises(CommandExitException):
        sbx.commands.run("echo second; exit 7")
    sid = sbx.sandbox_id

    everything = logs_v2(api, auth, sid)
    assert {e["level"] for e in everything} >= {"info", "warn"}

    warned = logs_v2(api, auth, sid, level="warn")
    assert warned, everything
    assert all(e["level"] in ("warn", "error") for e in warned)
    assert any("exit status 7" in e["message"] for e in warned)

    found = logs_v2(api, auth, sid, search="echo first")
    assert [e["fields"]["event"] for e in found] == ["process_start"]

    forward = logs_v2(api, auth, sid)
    backward = logs_v2(api, auth, sid, direction="backward")
    assert [e["message"] for e in backward] == [e["message"] for e in reversed(forward)]
    newest_two = logs_v2(api, auth, sid, direction="backward", limit=2)
    assert newest_two == backward[:2]

    # Cursor paging forward: each page starts 1 ms after the last entry of the previous one.
    first_page = logs_v2(api, auth, sid, limit=1)
    cursor = int(ts(first_page[0]).timestamp() * 1000) + 1
    rest = logs_v2(api, auth, sid, cursor=cursor)
    assert all(ts(e) > ts(first_page[0]) for e in rest)


def test_a_killed_sandbox_keeps_its_logs(api, auth, paddock):
    sbx = Sandbox.create()
    paddock.track(sbx.sandbox_id)
    sbx.commands.run("echo before-kill")
    assert sbx.kill()

    info = requests.get(f"{api}/sandboxes/{sbx.sandbox_id}", headers=auth, timeout=30)
    assert info.status_code == 404
    entries = logs_v1(api, auth, sbx.sandbox_id)["logEntries"]
    messages = [e["message"] for e in entries]
    assert "sandbox stopping: killed by request" in messages
    assert messages[-1] == "sandbox stopped"
    kill = next(e for e in entries if e["message"] == "sandbox stopping: killed by request")
    assert kill["fields"]["source"] == "control-plane"
    assert kill["fields"]["reason"] == "killed by request"
    # envd's records were kept by the node when the sandbox went away.
    assert any(
        "before-kill" in e["message"] for e in process_events(entries, "process_start")
    ), messages


def test_unknown_ids_and_bad_queries(new_sandbox, api, auth):
    for path in ("/sandboxes/inosuchsandbox/logs", "/v2/sandboxes/inosuchsandbox/logs"):
        r = requests.get(api + path, headers=auth, timeout=30)
        assert r.status_code == 404
        assert r.json()["code"] == 404
    sbx: Sandbox = new_sandbox()
    for path, query in (
        ("/sandboxes/{}/logs", {"start": "soon"}),
        ("/v2/sandboxes/{}/logs", {"level": "loud"}),
        ("/v2/sandboxes/{}/logs", {"direction": "up"}),
        ("/v2/sandboxes/{}/logs", {"limit": "100000"}),
    ):
        r = requests.get(api + path.format(sbx.sandbox_id), params=query, headers=auth, timeout=30)
        assert r.status_code == 400, (query, r.text)
        assert r.json()["code"] == 400


def _create_and_kill(s) -> str:
    """Creates a sandbox on the server `s` over REST and kills it; its id."""
    auth = {"X-API-Key": s.api_key}
    r = requests.post(f"{s.api_url}/v2/sandboxes", json={"templateID": "base", "timeout": 60},
                      headers=auth, timeout=60)
    assert r.status_code == 201, r.text
    sandbox_id = s.track(r.json()["sandboxID"])
    assert requests.delete(f"{s.api_url}/sandboxes/{sandbox_id}", headers=auth, timeout=60).status_code == 204
    return sandbox_id


def _json_records(s) -> list:
    """The server's log lines as JSON objects, the banner lines (for people) left out; a line
    that is not JSON fails here."""
    return [json.loads(line) for line in s.log_text().splitlines()
            if line.strip() and not line.startswith(("paddock: ", "export "))]


def test_the_servers_own_log_lines_are_json_on_request():
    """`--log-format json`: every log line of the server is one JSON object (level, target,
    message and fields flattened), ready for a log collector; the banner lines stay text."""
    from paddock_server import PaddockServer

    s = PaddockServer(extra_args=["--log-format", "json", "--network", "none"]).start()
    try:
        sandbox_id = _create_and_kill(s)
    finally:
        assert s.stop() == 0, s.log_tail()
    records = _json_records(s)
    for record in records:
        assert {"timestamp", "level", "target", "message"} <= record.keys(), record
    created = [r for r in records if r["message"] == "creating sandbox"]
    assert created and created[0]["sandbox_id"] == sandbox_id, records[:20]
    assert any(r["message"] == "sandbox killed" and r.get("sandbox_id") == sandbox_id for r in records)
    s.cleanup()


def test_with_traces_exported_json_log_lines_carry_the_trace_id():
    """`--otlp-endpoint`: `serve` sends its spans (service.name `paddock-serve`) to an OTLP/HTTP
    collector; the JSON log lines inside a request list its spans, the outermost holding the
    trace id, the same as the spans the collector got."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
    from otlp import Collector  # noqa: PLC0415  (tests/e2e/cluster/otlp.py)
    from paddock_server import PaddockServer

    collector = Collector().start()
    s = PaddockServer(extra_args=["--log-format", "json", "--network", "none",
                                  "--otlp-endpoint", collector.endpoint])
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    try:
        s.start()
    finally:
        del os.environ["OTEL_BSP_SCHEDULE_DELAY"]
    try:
        sandbox_id = _create_and_kill(s)
    finally:
        assert s.stop() == 0, s.log_tail()
        collector.stop()
    # Shutdown sent the spans still buffered.
    spans = collector.spans()
    create = [x for x in spans if x.name == "create" and x.attributes.get("sandbox_id") == sandbox_id]
    assert create, sorted({x.name for x in spans})
    assert create[0].service == "paddock-serve"
    trace = {x.name for x in spans if x.trace_id == create[0].trace_id}
    assert {"POST /v2/sandboxes", "create.node", "node.boot"} <= trace or \
        {"POST /v2/sandboxes", "create.node", "node.hand_over"} <= trace, trace
    records = _json_records(s)
    created = [r for r in records if r["message"] == "creating sandbox"]
    assert created, records[:20]
    outermost = created[0]["spans"][0]
    assert outermost["name"] == "http.request" and outermost["trace_id"] == create[0].trace_id, created[0]
    s.cleanup()
