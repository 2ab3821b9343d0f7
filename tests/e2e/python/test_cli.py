"""`paddock sandbox …` against the real server, as a user runs it from a terminal: list, info,
exec (output, exit codes, users), kill, and errors. The CLI reads the same three E2B_*
variables the SDKs do; here they come from the session's server."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

from paddock_server import PaddockServer


def cli(paddock: PaddockServer, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **paddock.client_env(), **(env or {})}
    return subprocess.run(
        [str(paddock.binary), "sandbox", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
    )


def test_list_and_info(paddock, new_sandbox):
    tag = uuid.uuid4().hex[:8]
    s = new_sandbox(metadata={"cli": tag})
    r = cli(paddock, "list", "--metadata", f"cli={tag}")
    assert r.returncode == 0, r.stderr
    assert s.sandbox_id in r.stdout and f"cli={tag}" in r.stdout and "running" in r.stdout, r.stdout
    r = cli(paddock, "list", "--metadata", f"cli={tag}", "--json")
    listed = json.loads(r.stdout)
    assert [x["sandboxID"] for x in listed] == [s.sandbox_id]
    r = cli(paddock, "info", s.sandbox_id)
    assert r.returncode == 0 and "templateID   base" in r.stdout and s.sandbox_id in r.stdout, r
    assert json.loads(cli(paddock, "info", s.sandbox_id, "--json").stdout)["state"] == "running"


def test_exec_streams_output_and_returns_the_exit_code(paddock, new_sandbox):
    s = new_sandbox()
    r = cli(paddock, "exec", s.sandbox_id, "--", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n"), r
    r = cli(paddock, "exec", s.sandbox_id, "id", "-un")
    assert (r.returncode, r.stdout) == (0, "user\n"), r
    r = cli(paddock, "exec", "--user", "root", "--cwd", "/tmp", s.sandbox_id, "--", "id -u; pwd")
    assert (r.returncode, r.stdout) == (0, "0\n/tmp\n"), r
    # What the CLI wrote is there for the SDK too.
    cli(paddock, "exec", s.sandbox_id, "--", "echo from-cli > /home/user/cli.txt")
    assert s.files.read("/home/user/cli.txt") == "from-cli\n"


def test_exec_of_a_killed_process_reports_the_signal(paddock, new_sandbox):
    s = new_sandbox()
    r = cli(paddock, "exec", s.sandbox_id, "--", "kill -9 $$")
    assert r.returncode == 137, r


def test_kill_and_errors(paddock, new_sandbox):
    s = new_sandbox()
    r = cli(paddock, "kill", s.sandbox_id)
    assert r.returncode == 0 and f"killed {s.sandbox_id}" in r.stdout, r
    r = cli(paddock, "info", s.sandbox_id)
    assert r.returncode == 1 and "404" in r.stderr, r
    r = cli(paddock, "kill", "inotasandbox0000000000")
    assert r.returncode == 1 and "404" in r.stderr, r
    r = cli(paddock, "list", env={"E2B_API_KEY": "e2b_" + "0" * 40})
    assert r.returncode == 1 and "401" in r.stderr, r
    r = cli(paddock, "list", "--metadata", "novalue")
    assert r.returncode == 1 and "KEY=VALUE" in r.stderr, r


def test_pause_resume_metrics_and_logs(paddock, new_sandbox):
    s = new_sandbox()
    s.commands.run("echo logged-by-cli-test")
    r = cli(paddock, "pause", s.sandbox_id)
    assert (r.returncode, r.stdout) == (0, f"paused {s.sandbox_id}\n"), r
    assert json.loads(cli(paddock, "info", s.sandbox_id, "--json").stdout)["state"] == "paused"
    r = cli(paddock, "list", "--state", "paused", "--json")
    assert s.sandbox_id in [x["sandboxID"] for x in json.loads(r.stdout)], r
    r = cli(paddock, "pause", s.sandbox_id)
    assert r.returncode == 1 and "409" in r.stderr, r
    r = cli(paddock, "resume", s.sandbox_id)
    assert (r.returncode, r.stdout) == (0, f"resumed {s.sandbox_id}\n"), r
    assert s.commands.run("echo back").stdout == "back\n"

    r = cli(paddock, "metrics", s.sandbox_id)
    assert r.returncode == 0 and "CPU %" in r.stdout and "DISK MAX" in r.stdout, r
    samples = json.loads(cli(paddock, "metrics", s.sandbox_id, "--json").stdout)
    assert samples and samples[-1]["memTotal"] > 0 and samples[-1]["diskTotal"] > 0, samples

    r = cli(paddock, "logs", s.sandbox_id)
    assert r.returncode == 0 and "logged-by-cli-test" in r.stdout, r
