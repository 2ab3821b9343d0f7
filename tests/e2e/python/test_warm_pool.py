"""Warm pools (issue 6) through the official Python SDK, against real `paddock serve` processes
started for this module (their own ports, data dirs and pool flags, next to the session server).

What a pool promises, and how each test makes sure it is the pool that served it (a test must
not pass on the cold path by accident):
- every hand-over is checked in the server log ("sandbox running (from the warm pool)" with
  the sandbox's id) and in `GET /metrics` (`paddock_warm_pool_hits_total` grows by one per
  hand-over); a cold create logs "sandbox running" without the suffix and moves no counter;
- a pooled sandbox carries nothing of an earlier user (files, processes, listeners, login
  environment), and its env vars, metadata and envd access token are the caller's;
- a template with a start command is served with the command already running; the start
  command ran when the sandbox was filled, before the create, so it sees the template's env
  and the sandbox id but never the create's own env vars (as with E2B, whose start command
  runs at build time); the create's env reaches every command run after the hand-over;
- the pool refills after a burst larger than it; hits + misses count every create that could
  use it; pools are stopped with the server, leaving nothing behind; `--warm-pool-size 0`
  turns them off; creates that ask for something else (no internet, an egress rule, forks)
  start cold and still work.

Tests on this module's server (pool of 3, filled on demand) come first; the ones that need a
server of their own (pools off, pools pinned at start) follow. Pools fill in the background, so
the tests poll `/metrics` with deadlines; no assertion depends on how fast a fill is. Per-create
cpu/memory cannot be asked for through the SDK (they come from the template), so that exclusion
is not tested here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest
import requests

from e2b import CommandExitException, Sandbox, Template, wait_for_port
from paddock_server import PaddockServer, wait_for

POOL = 3
ENVD_PORT = "49983"


# --- helpers ---------------------------------------------------------------------------------




def metrics(server: PaddockServer) -> Dict[str, float]:
    """`GET /metrics` as {series (with labels): value}."""
    r = requests.get(server.api_url + "/metrics", headers={"X-API-Key": server.api_key}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    found: Dict[str, float] = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            found[series] = float(value)
    return found


def ready(m: Dict[str, float], template: str) -> Optional[float]:
    """Warm sandboxes ready in `template`'s pool; None when the template has no pool."""
    return m.get(f'paddock_warm_pool_ready{{template="{template}"}}')


def counters(m: Dict[str, float]) -> Dict[str, float]:
    return {
        "hits": m["paddock_warm_pool_hits_total"],
        "misses": m["paddock_warm_pool_misses_total"],
        "fill_failures": m["paddock_warm_pool_fill_failures_total"],
    }


def wait_pool_full(server: PaddockServer, template: str = "base", size: int = POOL,
                   timeout: float = 20.0) -> Dict[str, float]:
    """Waits until `template`'s pool has `size` ready and none filling; returns those metrics."""

    def full():
        m = metrics(server)
        filling = m.get(f'paddock_warm_pool_filling{{template="{template}"}}')
        return m if ready(m, template) == size and filling == 0 else None

    return wait_for(full, f"{size} warm sandboxes of {template!r} ready", timeout)


def handed_over(server: PaddockServer, sid: str) -> bool:
    """The server log says sandbox `sid` was a warm sandbox handed over to its create."""
    return re.search(rf"sandbox running \(from the warm pool\) sandbox_id={sid}\b",
                     server.log_text()) is not None


def started_cold(server: PaddockServer, sid: str) -> bool:
    """The server log says sandbox `sid` was started by its create (not from a pool)."""
    return re.search(rf"sandbox running sandbox_id={sid}\b", server.log_text()) is not None


def warm_sandboxes(server: PaddockServer, template: str) -> Dict[str, dict]:
    """The node's sandboxes of `template` that no create owns (its warm pool's), by id, each
    with its `state.json` (init and shim pids, cgroups), read from the server's data dir."""
    listed = requests.get(server.api_url + "/v2/sandboxes", headers={"X-API-Key": server.api_key},
                          timeout=30)
    assert listed.status_code == 200, listed.text
    owned = {s["sandboxID"] for s in listed.json()}
    found: Dict[str, dict] = {}
    root = server.data_dir / "sandboxes"
    for d in root.iterdir() if root.is_dir() else []:
        try:
            node = json.loads((d / "node.json").read_text())
            state = json.loads((d / "state.json").read_text())
        except (OSError, ValueError):
            continue  # being made or removed right now
        if node.get("template") == template and d.name not in owned:
            found[d.name] = state
    return found


def node_network(server: PaddockServer, sid: str) -> dict:
    """The egress policy the node applies to sandbox `sid` (its `node.json`)."""
    return json.loads((server.data_dir / "sandboxes" / sid / "node.json").read_text())["network"]


def process_alive(state: dict) -> bool:
    """The sandbox of `state` (its `state.json`) still has its init or its shim process."""
    init = Path(f"/proc/{state['init_pid']}/stat")
    try:
        # Field 22 is the start time: a reused pid is someone else.
        if int(init.read_text().rsplit(")", 1)[1].split()[19]) == state["init_start_time"]:
            return True
    except (OSError, ValueError, IndexError):
        pass
    try:
        return b"sandbox-shim" in Path(f"/proc/{state['shim_pid']}/cmdline").read_bytes()
    except OSError:
        return False


def conn(server: PaddockServer) -> dict:
    return {"api_key": server.api_key, "api_url": server.api_url, "sandbox_url": server.sandbox_url}


def run(sbx: Sandbox, cmd: str, **kw) -> str:
    return sbx.commands.run(cmd, **kw).stdout.strip()


def envd_route(sbx: Sandbox) -> dict:
    return {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": ENVD_PORT}


def stat_home(server: PaddockServer, sbx: Sandbox, token: Optional[str]) -> requests.Response:
    """A raw envd RPC through the proxy, with `token` as `X-Access-Token` (none if None)."""
    headers = {**envd_route(sbx), "Connect-Protocol-Version": "1"}
    if token is not None:
        headers["X-Access-Token"] = token
    return requests.post(server.sandbox_url + "/filesystem.Filesystem/Stat",
                         json={"path": "/home/user"}, headers=headers, timeout=30)


def kill_quietly(sbx: Sandbox) -> None:
    try:
        sbx.kill()
    except Exception:  # noqa: BLE001 - cleanup; the test already has its verdict
        pass


def stop_and_check(server: PaddockServer) -> None:
    """SIGTERM, clean exit, no leaks; the data dir goes only when all is well."""
    code = server.stop()
    problems = server.leaks()
    assert code == 0, f"exit code {code}\n{server.log_tail()}"
    assert problems == [], f"{problems}\n{server.log_tail()}"
    server.cleanup()


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    """A server whose pools hold POOL sandboxes, filled after a template's first create (the
    default behaviour; pools filled at start have their own tests below)."""
    s = PaddockServer(extra_args=["--warm-pool-size", str(POOL)]).start()
    yield s
    stop_and_check(s)


@pytest.fixture
def make(server: PaddockServer):
    """`make(**create_kwargs)` -> Sandbox on the module's server, killed at test end."""
    created: List[Sandbox] = []

    def create(**kwargs) -> Sandbox:
        sbx = Sandbox.create(**kwargs, **conn(server))
        server.track(sbx.sandbox_id)
        created.append(sbx)
        return sbx

    yield create
    for sbx in created:
        kill_quietly(sbx)


@pytest.fixture
def base_pool(server: PaddockServer, make) -> Dict[str, float]:
    """The `base` pool full (made by a first create if there is none yet); its metrics."""
    if ready(metrics(server), "base") is None:
        make().kill()
    return wait_pool_full(server)


# --- 1. nothing of an earlier user ------------------------------------------------------------

SECRET = "leak-" + uuid.uuid4().hex[:12]
# What an earlier user could leave: files, processes, a listener (run as root, to see every
# file), and a login-shell variable (ENV_PROBE, run as the default user whose profile it reads).
LEFTOVERS_PROBE = (
    f"found=$(grep -rls {SECRET} /home /tmp /dev/shm /var/tmp /etc /root 2>/dev/null | sort | tr '\\n' ' '); "
    'echo "files=[$found]"; '
    f'echo "procs=[$(pgrep -f "[s]leep 7777|[h]ttp.server 9999" | tr "\\n" " ")]"; '
    "echo \"port=$(curl -s -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:9999/ || true)\""
)
ENV_PROBE = 'echo "env=${LEAKED_VAR:-unset}"'
CLEAN = "files=[]\nprocs=[]\nport=000"


def leave_traces(sbx: Sandbox) -> None:
    """What user A does in its pooled sandbox, checked to have taken effect."""
    sbx.files.write("/home/user/secret.txt", SECRET)
    sbx.files.write("/tmp/secret.txt", SECRET)
    run(sbx, f"echo {SECRET} > /dev/shm/secret && echo {SECRET} > /var/tmp/secret && "
             f"echo 'export LEAKED_VAR={SECRET}' >> ~/.profile && "
             f"echo 'export LEAKED_VAR={SECRET}' >> ~/.bashrc")
    run(sbx, f"echo {SECRET} > /root/secret && echo {SECRET} > /etc/secret && "
             f"echo 'LEAKED_VAR={SECRET}' >> /etc/environment", user="root")
    sbx.commands.run("sleep 7777", background=True)
    run(sbx, "setsid nohup python3 -m http.server 9999 >/dev/null 2>&1 < /dev/null &")
    wait_for(lambda: "port=200" in run(sbx, LEFTOVERS_PROBE, user="root"),
             "A's listener on port 9999", timeout=10)
    seen = run(sbx, LEFTOVERS_PROBE, user="root")
    for path in ("/dev/shm/secret", "/etc/environment", "/etc/secret", "/home/user/.bashrc",
                 "/home/user/.profile", "/home/user/secret.txt", "/root/secret",
                 "/tmp/secret.txt", "/var/tmp/secret"):
        assert path in seen, f"A's trace {path} not in place, the probe would prove nothing:\n{seen}"
    assert run(sbx, ENV_PROBE) == f"env={SECRET}"
    procs = re.search(r"procs=\[([\d ]*)\]", seen)
    assert procs and len(procs.group(1).split()) >= 2, seen


def assert_fresh(server: PaddockServer, sbx: Sandbox, not_ids: Set[str]) -> None:
    """`sbx` came from the pool, is nobody else's, and holds nothing of anyone before."""
    sid = sbx.sandbox_id
    assert handed_over(server, sid), f"{sid} was not served by the pool:\n{server.log_tail(30)}"
    assert sid not in not_ids, f"sandbox id {sid} served twice"
    assert run(sbx, LEFTOVERS_PROBE, user="root") == CLEAN
    assert run(sbx, ENV_PROBE) == "env=unset"
    assert sbx.commands.list() == [], "a pooled sandbox must start with no processes of envd's"
    # Only envd (pid 1 and its own helpers) and the `ps` itself: nothing else running.
    procs = run(sbx, "ps -eo pid=,args=", user="root").splitlines()
    others = [p for p in procs if not re.match(r"\s*\d+ envd ", p) and "ps -eo" not in p]
    assert others == [], procs
    assert run(sbx, "echo $E2B_SANDBOX_ID; hostname").split() == [sid, sid]


def test_a_pooled_sandbox_carries_nothing_from_an_earlier_user(server, make, base_pool):
    before = counters(base_pool)
    a = make()
    assert handed_over(server, a.sandbox_id)
    leave_traces(a)
    a.kill()
    seen = {a.sandbox_id}
    # Twice the pool: the sandboxes ready when A was used, then those filled after A was killed.
    for _ in range(2):
        wait_pool_full(server)
        for _ in range(POOL):
            b = make()
            assert_fresh(server, b, seen)
            seen.add(b.sandbox_id)
            b.kill()
    after = counters(metrics(server))
    assert after["hits"] - before["hits"] == 1 + 2 * POOL, (before, after)
    assert after["misses"] == before["misses"], (before, after)


# --- 2. the caller's env vars, metadata and token ---------------------------------------------


def test_env_metadata_and_token_are_the_callers(server, make, base_pool):
    before = counters(base_pool)
    envs = {"CALLER_ENV": "from-create", "WITH_SPACES": "a b  c"}
    meta = {"owner": "test-2", "n": "1"}
    sbx = make(envs=envs, metadata=meta, timeout=300)
    other = make(envs={"CALLER_ENV": "someone-else"})
    sid = sbx.sandbox_id
    assert handed_over(server, sid) and handed_over(server, other.sandbox_id)
    assert counters(metrics(server))["hits"] - before["hits"] == 2

    out = sbx.commands.run('echo "$CALLER_ENV|$WITH_SPACES|$E2B_SANDBOX_ID|$E2B_SANDBOX"').stdout
    assert out == f"from-create|a b  c|{sid}|true\n"
    assert run(other, "echo $CALLER_ENV") == "someone-else"
    assert sbx.get_info().metadata == meta
    assert other.get_info().metadata == {}
    assert run(sbx, "hostname") == sid

    # envd takes the SDK's token and nothing else; each sandbox has its own.
    token = sbx._envd_access_token
    assert token and token != other._envd_access_token
    assert stat_home(server, sbx, None).status_code == 401
    assert stat_home(server, sbx, "0" * len(token)).status_code == 401
    assert stat_home(server, sbx, other._envd_access_token).status_code == 401
    ok = stat_home(server, sbx, token)
    assert ok.status_code == 200, ok.text
    assert ok.json()["entry"]["owner"] == "user"
    # Nobody outside can re-initialise envd (swap the token or the env) through the proxy.
    for headers in ({}, {"X-Access-Token": token}):
        r = requests.post(server.sandbox_url + "/init", json={"envVars": {"CALLER_ENV": "hijacked"}},
                          headers={**envd_route(sbx), **headers}, timeout=30)
        assert r.status_code == 403, r.text
    assert run(sbx, "echo $CALLER_ENV") == "from-create"

    # A restart from the sandbox's own files (pause to disk, connect) keeps what the create set:
    # the hand-over rewrote the boot configuration, not only envd's memory.
    sbx.files.write("/home/user/kept.txt", "kept")
    assert sbx.pause(mode="filesystem")
    back = Sandbox.connect(sid, **conn(server))
    assert run(back, 'echo "$CALLER_ENV|$E2B_SANDBOX_ID"; cat /home/user/kept.txt') == f"from-create|{sid}\nkept"
    assert back.get_info().metadata == meta
    assert stat_home(server, back, None).status_code == 401
    assert stat_home(server, back, back._envd_access_token).status_code == 200


def test_secure_pooled_sandboxes_work_for_files_and_commands(server, make, base_pool):
    before = counters(base_pool)
    sbx = make(secure=True, envs={"SECURE_ENV": "yes"})
    assert handed_over(server, sbx.sandbox_id)
    assert counters(metrics(server))["hits"] - before["hits"] == 1
    data = os.urandom(256 * 1024)
    sbx.files.write("/home/user/blob.bin", data)
    assert sbx.files.read("/home/user/blob.bin", format="bytes") == data
    digest = hashlib.sha256(data).hexdigest()
    assert run(sbx, "sha256sum /home/user/blob.bin | cut -d' ' -f1") == digest
    assert run(sbx, "echo $SECURE_ENV; whoami") == "yes\nuser"
    with pytest.raises(CommandExitException) as err:
        sbx.commands.run("echo nope >&2; exit 4")
    assert err.value.exit_code == 4 and err.value.stderr == "nope\n"
    # Signed URLs are signed with the caller's token, which envd checks.
    sbx.files.write("/home/user/signed.txt", "signed content")
    r = requests.get(sbx.download_url("/home/user/signed.txt"), headers=envd_route(sbx), timeout=30)
    assert r.status_code == 200 and r.text == "signed content", r.text
    r = requests.get(sbx.download_url("/home/user/signed.txt").replace("signature=", "signature=x"),
                     headers=envd_route(sbx), timeout=30)
    assert r.status_code == 401, r.text


# --- 3. a template with a start command --------------------------------------------------------


def test_a_start_command_template_is_served_with_the_command_already_running(server, make):
    name = f"pool-start-{uuid.uuid4().hex[:8]}"
    headers = {"X-API-Key": server.api_key}
    Template.build(
        Template()
        .from_template("base")
        .set_envs({"TPL_ENV": "from-template"})
        .set_start_cmd("python3 -m http.server 8000", wait_for_port(8000)),
        name, api_key=server.api_key, api_url=server.api_url,
    )
    try:
        assert ready(metrics(server), name) is None, "no pool before the template is wanted"
        first = make(template=name, envs={"CALLER_ENV": "cold"})
        assert started_cold(server, first.sandbox_id), "the first create is a miss"
        # A cold start runs the start command the same way: with the template's env only;
        # the create's variables reach what runs after it.
        cold_start = [p for p in first.commands.list() if p.tag == "start_cmd"]
        assert len(cold_start) == 1, cold_start
        cold_env = run(first, f"tr '\\0' '\\n' < /proc/{cold_start[0].pid}/environ | sort")
        assert "TPL_ENV=from-template" in cold_env.splitlines(), cold_env
        assert "CALLER_ENV" not in cold_env, cold_env
        assert run(first, 'echo "$CALLER_ENV"') == "cold"
        first.kill()
        before = counters(wait_pool_full(server, name))

        sbx = make(template=name, envs={"CALLER_ENV": "from-create", "TPL_ENV": "overridden"})
        sid = sbx.sandbox_id
        assert handed_over(server, sid)
        assert counters(metrics(server))["hits"] - before["hits"] == 1
        # The very first command finds the server listening: no wait, no retry.
        assert run(sbx, "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/") == "200"
        started = [p for p in sbx.commands.list() if p.tag == "start_cmd"]
        assert len(started) == 1 and "http.server 8000" in " ".join(started[0].args), started
        # The start command ran when the sandbox was filled, before this create: it has the
        # template's env and the sandbox's id, never the create's own variables.
        start_env = run(sbx, f"tr '\\0' '\\n' < /proc/{started[0].pid}/environ | sort")
        assert "TPL_ENV=from-template" in start_env.splitlines(), start_env
        assert f"E2B_SANDBOX_ID={sid}" in start_env.splitlines(), start_env
        assert "CALLER_ENV" not in start_env, start_env
        # Everything run after the hand-over has the create's env (overriding the template's).
        assert run(sbx, 'echo "$CALLER_ENV|$TPL_ENV|$E2B_SANDBOX_ID"') == f"from-create|overridden|{sid}"
        # And the server is reachable from outside through the proxy.
        r = requests.get(server.sandbox_url + "/", headers={"Host": sbx.get_host(8000)}, timeout=10)
        assert r.status_code == 200, r.text
        sbx.kill()
        wait_pool_full(server, name)
        warm = list(warm_sandboxes(server, name).values())
        assert len(warm) == POOL and all(process_alive(w) for w in warm), warm
    finally:
        r = requests.delete(f"{server.api_url}/templates/{name}", headers=headers, timeout=60)
        assert r.status_code == 204, r.text
    # A deleted template's warm sandboxes are discarded: the pool goes, and so do they.
    wait_for(lambda: ready(metrics(server), name) is None, f"{name}'s pool to go", timeout=10)
    wait_for(lambda: not warm_sandboxes(server, name), f"{name}'s warm sandboxes to stop", timeout=10)
    assert not any(process_alive(w) for w in warm), warm


# --- 4. refill after a burst -------------------------------------------------------------------

BURST = 2 * POOL + 2


def test_the_pool_refills_after_a_burst_larger_than_it(server, base_pool):
    before = counters(base_pool)
    barrier = threading.Barrier(BURST)
    made: List[Optional[Sandbox]] = [None] * BURST
    errors: List[str] = []

    def create(i: int) -> None:
        barrier.wait()
        try:
            made[i] = Sandbox.create(timeout=120, envs={"BURST_INDEX": str(i)}, **conn(server))
        except Exception as e:  # noqa: BLE001 - collected and reported below
            errors.append(f"create {i}: {e!r}")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    burst_done = time.monotonic()
    sandboxes = [s for s in made if s is not None]
    for s in sandboxes:
        server.track(s.sandbox_id)
    try:
        assert errors == [], errors
        ids = [s.sandbox_id for s in sandboxes]
        assert len(set(ids)) == BURST, ids
        for i, s in enumerate(made):
            assert run(s, "echo $BURST_INDEX; hostname") == f"{i}\n{s.sandbox_id}"
        after = counters(metrics(server))
        hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
        # Every create of the burst could use the pool: each is a hit or a miss, and the pool
        # was full when the burst began.
        assert hits + misses == BURST, (before, after)
        assert hits >= POOL, (before, after)
        pooled = [sid for sid in ids if handed_over(server, sid)]
        cold = [sid for sid in ids if started_cold(server, sid)]
        assert len(pooled) == hits and len(cold) == misses, (pooled, cold, before, after)
    finally:
        for s in sandboxes:
            kill_quietly(s)
    m = wait_pool_full(server, timeout=15)
    refill = time.monotonic() - burst_done
    print(f"\npool of {POOL} full again {refill:.2f} s after the burst's creates returned")
    assert m["paddock_warm_pools_claimed"] == 0
    assert counters(m)["fill_failures"] == before["fill_failures"]


# --- 7. creates that must not use the pool ---------------------------------------------------


def assert_cold(server: PaddockServer, sbx: Sandbox, before: Dict[str, float]) -> None:
    sid = sbx.sandbox_id
    assert started_cold(server, sid) and not handed_over(server, sid), server.log_tail(30)
    m = metrics(server)
    # Not even a miss: such a create never asks the pool.
    assert counters(m) == before, (before, counters(m))
    assert ready(m, "base") == POOL, "a cold create took nothing from the pool"


def test_creates_the_pool_cannot_serve_start_cold_and_work(server, make, base_pool):
    before = counters(base_pool)

    closed = make(allow_internet_access=False, envs={"COLD_ENV": "no-internet"})
    assert_cold(server, closed, before)
    assert run(closed, "echo $COLD_ENV; echo $E2B_SANDBOX_ID") == f"no-internet\n{closed.sandbox_id}"
    assert node_network(server, closed.sandbox_id)["allow_internet_access"] is False

    ruled = make(network={"deny_out": ["10.0.0.0/8"]}, metadata={"kind": "ruled"})
    assert_cold(server, ruled, before)
    assert run(ruled, "whoami") == "user"
    assert ruled.get_info().metadata == {"kind": "ruled"}
    assert node_network(server, ruled.sandbox_id)["deny_out"] == ["10.0.0.0/8"]

    # The default policy asked for explicitly is still the default: served by the pool.
    explicit = make(allow_internet_access=True)
    assert handed_over(server, explicit.sandbox_id)
    hits = counters(metrics(server))["hits"]
    assert hits == before["hits"] + 1

    # A fork's children start from the parent's files, never from a warm sandbox.
    explicit.files.write("/home/user/parent.txt", "from the parent")
    wait_pool_full(server)
    kids = explicit.fork(count=2, timeout=120)
    try:
        assert all(isinstance(k, Sandbox) for k in kids), kids
        for k in kids:
            server.track(k.sandbox_id)
        assert len({k.sandbox_id for k in kids} | {explicit.sandbox_id}) == 3
        for k in kids:
            assert_cold(server, k, {**before, "hits": hits})
            assert k.files.read("/home/user/parent.txt") == "from the parent"
            assert run(k, "hostname") == k.sandbox_id
    finally:
        for k in kids:
            if isinstance(k, Sandbox):
                kill_quietly(k)


# --- 6. pools off ----------------------------------------------------------------------------


def test_pool_size_zero_turns_pools_off():
    # Even a pinned template gets no pool when the size is 0.
    s = PaddockServer(extra_args=["--warm-pool-size", "0", "--warm-pool-template", "base"]).start()
    try:
        made = []
        for i in range(2):
            sbx = Sandbox.create(envs={"I": str(i)}, **conn(s))
            made.append(sbx)
            s.track(sbx.sandbox_id)
            assert started_cold(s, sbx.sandbox_id) and not handed_over(s, sbx.sandbox_id)
            assert run(sbx, "echo $I") == str(i)
        time.sleep(1.5)  # more than the filler's tick: a pool would have started filling
        m = metrics(s)
        assert not [k for k in m if k.startswith("paddock_warm_pool_") and "{" in k], m
        assert m["paddock_warm_pools_ready"] == 0 and m["paddock_warm_pools_filling"] == 0
        assert counters(m) == {"hits": 0, "misses": 0, "fill_failures": 0}
        assert m["paddock_sandboxes_running"] == 2
        # No sandbox on the node but the two creates'.
        assert {d.name for d in (s.data_dir / "sandboxes").iterdir()} == {x.sandbox_id for x in made}
        assert "warm" not in s.log_text()
        for sbx in made:
            sbx.kill()
    finally:
        stop_and_check(s)


# --- 5. pinned pools: filled at start, stopped at shutdown -------------------------------------


def pinned_server() -> PaddockServer:
    return PaddockServer(
        extra_args=["--warm-pool-template", "base", "--warm-pool-size", str(POOL)]
    ).start()


def test_a_pinned_pool_fills_at_start_and_is_cleaned_on_shutdown():
    s = pinned_server()
    try:
        # Filled without any create.
        m = wait_pool_full(s)
        assert counters(m)["hits"] == 0 and counters(m)["misses"] == 0
        assert m["paddock_sandboxes_running"] == 0

        def pool_on_disk():
            found = warm_sandboxes(s, "base")
            return found if len(found) == POOL else None

        warm = wait_for(pool_on_disk, f"{POOL} warm sandboxes on disk", timeout=10)
        for sid in warm:
            s.track(sid)  # for the cgroup check in leaks()
        assert all(process_alive(w) for w in warm.values()), warm
        cgroups = [c for w in warm.values() for c in w["cgroups"]]
        assert cgroups and all(Path(c).is_dir() for c in cgroups), cgroups
    except BaseException:
        s.stop()
        raise
    assert s.stop() == 0, s.log_tail()
    assert f"stopping warm sandboxes count={POOL}" in s.log_text(), s.log_tail()
    assert s.leaks() == [], s.leaks()
    alive = {sid: w for sid, w in warm.items() if process_alive(w)}
    assert alive == {}, f"warm sandboxes' processes outlived the server: {alive}"
    assert [c for c in cgroups if Path(c).exists()] == []
    left = sorted(p.name for p in (s.data_dir / "sandboxes").iterdir())
    assert left == [], f"sandbox dirs left after shutdown: {left}"
    s.cleanup()


def test_a_pinned_pool_filled_at_start_survives_the_startup_reconcile():
    """The first creates after a start are served by the sandboxes filled at start: none of
    them may be lost to the server's own startup (fills that fail, warm sandboxes killed as
    "orphans" while they are in the pool, hand-overs that fall back to a cold start)."""
    s = pinned_server()
    try:
        m = wait_pool_full(s)
        log = s.log_text()
        assert counters(m)["fill_failures"] == 0, (
            "fills failed at start:\n" + "\n".join(l for l in log.splitlines() if "WARN" in l))
        assert "removed orphaned sandboxes" not in log, log
        made = []
        for _ in range(POOL):
            sbx = Sandbox.create(**conn(s))
            made.append(sbx)
            s.track(sbx.sandbox_id)
        for sbx in made:
            assert handed_over(s, sbx.sandbox_id), s.log_tail(40)
            assert run(sbx, "echo ok") == "ok"
        assert "could not be handed over" not in s.log_text(), s.log_tail(40)
        assert counters(metrics(s))["hits"] == POOL
        for sbx in made:
            sbx.kill()
    finally:
        stop_and_check(s)
