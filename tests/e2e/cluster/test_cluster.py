"""The cluster end to end, with the official SDK: sandboxes created through `paddock api`, run
on three `paddock node`s, reached through `paddock proxy`. The last tests kill a node."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter

import pytest
import requests
from e2b import Sandbox, Template

from cluster import Cluster, wait_gone


def holder(cluster: Cluster, sandbox_id: str) -> str:
    """The node that reports `sandbox_id` (reports come every second)."""
    found = {}

    def look():
        for name in cluster.node_names:
            if sandbox_id in cluster.sandboxes_on(name):
                found["node"] = name
                return True
        return False

    wait_gone(look, f"a node reporting {sandbox_id}", timeout=15)
    return found["node"]


def test_the_sdk_works_through_the_cluster():
    sbx = Sandbox.create(envs={"WHO": "cluster"})
    try:
        r = sbx.commands.run("echo $WHO; hostname")
        assert r.stdout.split() == ["cluster", sbx.sandbox_id]
        sbx.files.write("/home/user/note.txt", "kept on its node")
        assert sbx.files.read("/home/user/note.txt") == "kept on its node"
        # A port of the sandbox through the edge proxy and the node's hop.
        sbx.commands.run("python3 -m http.server 8000 --directory /home/user", background=True)
        host = sbx.get_host(8000)

        def served():
            try:
                resp = requests.get(
                    os.environ["E2B_SANDBOX_URL"] + "/note.txt", headers={"Host": host}, timeout=5
                )
                return resp.status_code == 200 and resp.text == "kept on its node"
            except requests.RequestException:
                return False
        wait_gone(served, "the sandbox's port 8000 through the edge", timeout=20)
        listed = [s.sandbox_id for s in Sandbox.list().next_items()]
        assert sbx.sandbox_id in listed
    finally:
        sbx.kill()
    with pytest.raises(Exception):
        Sandbox.connect(sbx.sandbox_id)


def sample(text: str, series: str) -> float:
    """The value of the sample line `series` (name and labels exactly), 0 if absent."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_every_role_serves_its_metrics(cluster: Cluster):
    sbx = Sandbox.create()
    try:
        assert sbx.commands.run("echo hi").stdout == "hi\n"
    finally:
        sbx.kill()
    proxy = cluster.metrics("proxy")
    envd_ok = 'paddock_http_request_duration_seconds_count{service="proxy",route="envd",method="POST",status="200"}'
    assert sample(proxy, envd_ok) >= 1, proxy
    # The node that holds it answered Create (or handed a warm one over) over gRPC.
    nodes = {n: cluster.metrics(n) for n in cluster.node_names}
    calls = sum(sample(t, f'paddock_grpc_request_duration_seconds_count{{method="{m}",code="0"}}')
                for t in nodes.values() for m in ("Create", "ClaimWarm"))
    assert calls >= 1, nodes
    api = requests.get(cluster.api_url + "/metrics", headers={"X-API-Key": cluster.env["E2B_API_KEY"]},
                       timeout=10).text
    assert sample(api, 'paddock_create_phase_seconds_count{phase="node"}') >= 1, api
    assert sample(api, 'paddock_creates_total{outcome="ok"}') >= 1, api
    created = sum(sample(api, 'paddock_http_request_duration_seconds_count'
                             f'{{service="api",route="{r}",method="POST",status="201"}}')
                  for r in ("/sandboxes", "/v2/sandboxes"))
    assert created >= 1, api
    # The nodes' capacity and use are the operator's: with the admin token only.
    assert "paddock_node_up{" not in api
    admin = requests.get(cluster.api_url + "/metrics", timeout=10,
                         headers={"X-API-Key": cluster.env["E2B_API_KEY"], **cluster.admin()}).text
    for name in cluster.node_names:
        assert sample(admin, f'paddock_node_up{{node="{name}",status="ready"}}') == 1, admin
        assert sample(admin, f'paddock_node_cpus{{node="{name}"}}') >= 1, admin


def test_a_create_is_one_trace_from_the_api_to_the_node(cluster: Cluster, collector):
    """A create's spans, from the REST request through its phases to the node's gRPC call and
    the node's own phases, are one trace across two processes (W3C context over gRPC), each
    role named by `service.name`; log lines carry the trace id; the edge proxy continues a
    caller's trace."""
    headers = {"X-API-Key": cluster.env["E2B_API_KEY"]}
    r = requests.post(cluster.api_url + "/v2/sandboxes", json={"templateID": "base", "timeout": 120},
                      headers=headers, timeout=120)
    assert r.status_code == 201, r.text
    sid = r.json()["sandboxID"]
    try:
        found = {}

        def traced():
            spans = collector.spans()
            creates = [s for s in spans if s.name == "create" and s.attributes.get("sandbox_id") == sid]
            if not creates:
                return False
            trace = [s for s in spans if s.trace_id == creates[0].trace_id]
            if not any(s.service == "paddock-node" and s.name.endswith("/Create") for s in trace):
                return False
            found["create"], found["trace"] = creates[0], trace
            return True

        wait_gone(traced, f"the spans of the create of {sid}", timeout=20)
        trace = found["trace"]
        by_name = {}
        for s in trace:
            by_name.setdefault(s.name, []).append(s)
        request = by_name["POST /v2/sandboxes"][0]
        assert request.service == "paddock-api"
        assert request.parent_span_id == ""
        assert request.attributes.get("trace_id") == request.trace_id
        assert found["create"].parent_span_id == request.span_id
        for phase in ("validate", "admit", "template", "record", "node", "settle"):
            spans = by_name.get(f"create.{phase}")
            assert spans, f"no create.{phase} span in {sorted(by_name)}"
            assert spans[0].parent_span_id == found["create"].span_id, phase
        rpc = next(s for s in trace if s.service == "paddock-node" and s.name.endswith("/Create"))
        assert rpc.parent_span_id == by_name["create.node"][0].span_id
        # The node's own phases are children of its call: a warm sandbox handed over, or one
        # started (its network and runtime).
        node_phases = [s for s in trace if s.service == "paddock-node" and s.name.startswith("node.")]
        assert node_phases and any(s.parent_span_id == rpc.span_id for s in node_phases), node_phases
        # Log lines inside the request carry its trace id.
        api_log = (cluster.dir / "api.log").read_text()
        assert f"trace_id={request.trace_id}" in api_log

        # The edge proxy takes up a caller's trace context.
        caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        requests.get(f"http://127.0.0.1:{cluster.proxy_port}/health", timeout=10, headers={
            "E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983",
            "traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01",
        })
        wait_gone(lambda: any(s.trace_id == caller_trace and s.service == "paddock-proxy"
                              and s.parent_span_id == "00f067aa0ba902b7" for s in collector.spans()),
                  "the proxy's span in the caller's trace", timeout=20)
    finally:
        requests.delete(f"{cluster.api_url}/sandboxes/{sid}", headers=headers, timeout=60)


def test_creates_spread_over_the_nodes(cluster: Cluster):
    headers = {"X-API-Key": cluster.env["E2B_API_KEY"]}
    ids = []
    try:
        for _ in range(30):
            r = requests.post(cluster.api_url + "/sandboxes", json={"templateID": "base", "timeout": 300},
                              headers=headers, timeout=120)
            assert r.status_code == 201, r.text
            ids.append(r.json()["sandboxID"])
        counts = Counter(holder(cluster, i) for i in ids)
        assert sum(counts.values()) == 30
        assert max(counts.values()) <= 18, f"one node holds more than 60%: {counts}"
        assert len(counts) == 3, counts
    finally:
        for i in ids:
            requests.delete(f"{cluster.api_url}/sandboxes/{i}", headers=headers, timeout=60)


def test_base_is_built_once_and_sent_to_the_nodes_without_it(cluster: Cluster):
    """Only the first node started with `base`; the others received it, layer by layer, named
    by their digests, and never built it."""
    seeded = [n for n in cluster.node_names if n in cluster.seeded]
    others = [n for n in cluster.node_names if n not in cluster.seeded]
    assert seeded and others
    source = json.loads((cluster.node_templates(seeded[0]) / "base" / "template.json").read_text())
    for name in others:
        record = cluster.node_templates(name) / "base" / "template.json"
        wait_gone(record.exists, f"base on node {name}", timeout=300)
        meta = json.loads(record.read_text())
        assert len(meta["layers"]) == len(source["layers"])
        for layer in meta["layers"]:
            assert len(layer) == 64, f"a received layer is named by its digest: {layer}"
            digest = (cluster.node_templates(name) / ".layers" / f".{layer}.digest").read_text()
            assert digest.startswith(f"sha256:{layer} ")
        log = (cluster.dir / f"{name}.log").read_text()
        assert "building the base template" not in log
    assert (cluster.dir / "api.log").read_text().count("template sent to a node") >= len(others)


def test_a_builds_copy_files_are_sent_to_the_node_that_builds(cluster: Cluster, tmp_path):
    name = f"cluster-copy-{os.getpid()}"
    (tmp_path / "data.txt").write_text("sent with the build\n")
    t = Template(file_context_path=str(tmp_path)).from_template("base").copy("data.txt", "/home/user/data.txt")
    Template.build(t, name)
    kept = [p for n in cluster.node_names for p in (cluster.dir / n / "build-files").glob("*/*")]
    assert kept, "the node keeps the archive it was sent under its own data dir"
    sbx = Sandbox.create(template=name, timeout=60)
    try:
        assert sbx.files.read("/home/user/data.txt") == "sent with the build\n"
    finally:
        sbx.kill()


def test_nodes_report_their_machine(cluster: Cluster):
    for node in cluster.nodes_json():
        m = node["metrics"]
        assert m["cpuCount"] >= 1, m
        assert m["memoryTotalBytes"] > 0, m
        assert m["hugePageSizeBytes"] > 0, m
        (disk,) = m["disks"]
        assert disk["mountPoint"].startswith("/") and disk["filesystemType"], disk
        assert 0 < disk["usedBytes"] <= disk["totalBytes"], disk


def drain_all_but(cluster: Cluster, keep: str) -> None:
    for name in cluster.node_names:
        want = "ready" if name == keep else "draining"
        r = requests.post(f"{cluster.api_url}/nodes/{name}", json={"status": want},
                          headers=cluster.admin(), timeout=10)
        assert r.status_code in (200, 204), r.text
    # Placement learns a node's status with its next report (every second).
    time.sleep(2)


def test_a_template_built_through_the_sdk_starts_on_every_node(cluster: Cluster, tmp_path):
    """Built on one node (its COPY archive sent to that node, not read from the api's disk),
    then started on each node in turn."""
    name = f"cluster-built-{os.getpid()}"
    (tmp_path / "copied.txt").write_text("copied through the cluster\n")
    t = (
        Template(file_context_path=str(tmp_path))
        .from_template("base")
        .copy("copied.txt", "/home/user/copied.txt")
        .run_cmd("echo built-once > /home/user/marker")
    )
    Template.build(t, name)
    made = []
    try:
        for node in cluster.node_names:
            drain_all_but(cluster, node)
            sbx = Sandbox.create(template=name, timeout=120)
            made.append(sbx)
            assert holder(cluster, sbx.sandbox_id) == node
            assert sbx.commands.run("cat /home/user/marker").stdout.strip() == "built-once"
            assert sbx.files.read("/home/user/copied.txt") == "copied through the cluster\n"
        # Rebuilt: every node starts the new one (the older copies are dropped).
        t = Template().from_template("base").run_cmd("echo built-twice > /home/user/marker")
        Template.build(t, name)
        for node in reversed(cluster.node_names):
            drain_all_but(cluster, node)
            sbx = Sandbox.create(template=name, timeout=120)
            made.append(sbx)
            assert holder(cluster, sbx.sandbox_id) == node
            assert sbx.commands.run("cat /home/user/marker").stdout.strip() == "built-twice"
    finally:
        for name_ in cluster.node_names:
            requests.post(f"{cluster.api_url}/nodes/{name_}", json={"status": "ready"},
                          headers=cluster.admin(), timeout=10)
        for sbx in made:
            sbx.kill()


def test_a_template_outlives_the_node_that_built_it(cluster: Cluster, tmp_path):
    """The control plane archives what a node builds (its catalog in the api's data dir, each
    layer checked against its digest): with the only node that had the template stopped, it
    still starts on the others, sent from the catalog."""
    name = f"cluster-archived-{os.getpid()}"
    builder = cluster.node_names[1]
    drain_all_but(cluster, builder)
    made = []
    try:
        Template.build(Template().from_template("base").run_cmd("echo archived > /home/user/marker"), name)
        entry = cluster.dir / "api" / "catalog" / "templates" / (name.encode().hex() + ".json")
        wait_gone(entry.exists, "the template in the control plane's catalog", timeout=60)
        recorded = json.loads(entry.read_text())
        layers = cluster.dir / "api" / "catalog" / "layers"
        for layer in recorded["layers"]:
            assert (layers / layer["digest"].removeprefix("sha256:")).stat().st_size == layer["size"]
        code = cluster.nodes[builder].stop()
        assert code == 0, cluster.nodes[builder].tail()
        cluster.wait_status(builder, "unhealthy", timeout=20)
        for node in cluster.node_names:
            if node != builder:
                requests.post(f"{cluster.api_url}/nodes/{node}", json={"status": "ready"},
                              headers=cluster.admin(), timeout=10)
        time.sleep(2)
        sbx = Sandbox.create(template=name, timeout=120)
        made.append(sbx)
        assert holder(cluster, sbx.sandbox_id) != builder
        assert sbx.commands.run("cat /home/user/marker").stdout.strip() == "archived"
        # Listed while no node that holds it is up.
        r = requests.get(cluster.api_url + "/templates", headers={"X-API-Key": cluster.env["E2B_API_KEY"]},
                         timeout=10)
        assert r.status_code == 200, r.text
        assert name in [a for t in r.json() for a in t.get("aliases", [])] + [t["templateID"] for t in r.json()]
    finally:
        for sbx in made:
            sbx.kill()
        if not cluster.nodes[builder].alive():
            cluster.nodes[builder] = cluster.node_proc(builder).start()
        cluster.wait_status(builder, "ready", timeout=60)
        for node in cluster.node_names:
            requests.post(f"{cluster.api_url}/nodes/{node}", json={"status": "ready"},
                          headers=cluster.admin(), timeout=10)
        requests.delete(f"{cluster.api_url}/templates/{name}",
                        headers={"X-API-Key": cluster.env["E2B_API_KEY"]}, timeout=60)
    assert not entry.exists(), "a deleted template leaves the catalog"


def test_pause_and_resume_on_the_node_that_holds_it():
    sbx = Sandbox.create(timeout=300)
    try:
        sbx.commands.run("echo before > /tmp/state")
        sbx.beta_pause()
        resumed = Sandbox.connect(sbx.sandbox_id)
        assert resumed.commands.run("cat /tmp/state").stdout.strip() == "before"
    finally:
        sbx.kill()


def test_snapshots_and_forks_start_on_the_node_that_has_their_files(cluster: Cluster):
    parent = Sandbox.create(timeout=300)
    kids, child, snap = [], None, None
    try:
        parent.files.write("/home/user/state.txt", "from the parent")
        home = holder(cluster, parent.sandbox_id)
        snap = parent.create_snapshot(name="cluster-snap")
        child = Sandbox.create(template=snap.snapshot_id, timeout=120)
        assert child.files.read("/home/user/state.txt") == "from the parent"
        assert holder(cluster, child.sandbox_id) == home
        kids = parent.fork(count=2, timeout=120)
        for kid in kids:
            assert kid.files.read("/home/user/state.txt") == "from the parent"
            assert holder(cluster, kid.sandbox_id) == home
    finally:
        for s in kids + ([child] if child else []) + [parent]:
            s.kill()
        if snap is not None:
            assert Sandbox.delete_snapshot(snap.snapshot_id) is True


def test_sandboxes_outlive_a_restart_of_the_control_plane(cluster: Cluster):
    sbx = Sandbox.create(timeout=300)
    try:
        sbx.commands.run("echo kept > /tmp/kept")
        cluster.restart_api()
        for name in cluster.node_names:
            cluster.wait_status(name, "ready", timeout=60)
        again = Sandbox.connect(sbx.sandbox_id)
        assert again.commands.run("cat /tmp/kept").stdout.strip() == "kept"
    finally:
        sbx.kill()


def test_a_wrong_token_does_not_join(cluster: Cluster, tmp_path):
    bad = tmp_path / "token"
    text = cluster.token_file.read_text().strip()
    secret, pin = text.rsplit(".", 1)
    bad.write_text(secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB") + "." + pin)
    cluster.node_ports["intruder"] = 1
    proc = cluster.node_proc("intruder", token_file=bad)
    proc.args[proc.args.index("--listen") + 1] = "127.0.0.1:0"
    out = subprocess.run(proc.args, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "refused" in out.stderr, out.stderr
    assert cluster.node_json("intruder") is None


def test_a_killed_node_is_unhealthy_its_sandboxes_lost_and_it_rejoins_clean(cluster: Cluster):
    headers = {"X-API-Key": cluster.env["E2B_API_KEY"]}
    victim = cluster.node_names[-1]
    # Sandboxes until one lands on the victim.
    on_victim, others = None, []
    for _ in range(12):
        r = requests.post(cluster.api_url + "/sandboxes", json={"templateID": "base", "timeout": 600},
                          headers=headers, timeout=120)
        assert r.status_code == 201, r.text
        sid = r.json()["sandboxID"]
        if holder(cluster, sid) == victim and on_victim is None:
            on_victim = sid
        else:
            others.append(sid)
        if on_victim:
            break
    assert on_victim, "no sandbox was placed on the victim node"

    cluster.nodes[victim].kill9()
    t0 = time.monotonic()
    cluster.wait_status(victim, "unhealthy", timeout=15)
    assert time.monotonic() - t0 <= 12

    # Creates go to the others, every one of them succeeds.
    made = []
    for _ in range(10):
        r = requests.post(cluster.api_url + "/sandboxes", json={"templateID": "base"}, headers=headers, timeout=120)
        assert r.status_code == 201, r.text
        made.append(r.json()["sandboxID"])
    for sid in made:
        assert holder(cluster, sid) != victim

    # Its sandbox is reported lost: no longer running or listed.
    def lost():
        r = requests.get(f"{cluster.api_url}/sandboxes/{on_victim}", headers=headers, timeout=10)
        return r.status_code == 404
    wait_gone(lost, "the lost node's sandbox to be gone", timeout=cluster.lost_after + 30)
    listed = requests.get(cluster.api_url + "/sandboxes", headers=headers, timeout=10).json()
    assert on_victim not in [s["sandboxID"] for s in listed]

    # It was lost with its node, and says so (not "exited by itself"): in its logs...
    def lost_in_logs():
        r = requests.get(f"{cluster.api_url}/v2/sandboxes/{on_victim}/logs?level=error",
                         headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        reasons = [e["fields"].get("reason") for e in r.json()["logs"]
                   if e["fields"].get("source") == "control-plane"]
        assert reasons in ([], ["node lost"]), r.text
        return reasons == ["node lost"]
    wait_gone(lost_in_logs, "the lost sandbox's log to say 'node lost'", timeout=10)

    # ... and in its killed lifecycle event.
    def lost_in_events():
        r = requests.get(f"{cluster.api_url}/events/sandboxes/{on_victim}", headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        killed = [e["eventData"] for e in r.json() if e["type"] == "sandbox.lifecycle.killed"]
        assert len(killed) <= 1, r.text
        return [(k["kill_reason"], k["reason"]) for k in killed] == [("node_lost", "node lost")]
    wait_gone(lost_in_events, "the lost sandbox's killed event to say node_lost", timeout=10)

    # The operator sees what happened to the node, newest first.
    r = requests.get(f"{cluster.api_url}/nodes/events?nodeID={victim}", headers=cluster.admin(), timeout=10)
    assert r.status_code == 200, r.text
    history = [(e["type"], e["status"]) for e in r.json()]
    assert history[:2] == [("node.left", "unhealthy"), ("node.unhealthy", "unhealthy")], history
    assert ("node.joined", "connecting") in history, history

    # It comes back with the same data dir: it rejoins and kills what nobody expects.
    cluster.nodes[victim] = cluster.node_proc(victim).start()
    cluster.wait_status(victim, "ready", timeout=60)
    r = requests.get(f"{cluster.api_url}/nodes/events?nodeID={victim}&limit=2", headers=cluster.admin(),
                     timeout=10)
    assert [e["type"] for e in r.json()] == ["node.status_changed", "node.joined"], r.text
    wait_gone(lambda: cluster.node_json(victim)["sandboxCount"] == 0 and not cluster.sandboxes_on(victim),
              "the rejoined node to hold nothing", timeout=20)
    for sid in made + others:
        requests.delete(f"{cluster.api_url}/sandboxes/{sid}", headers=headers, timeout=60)
