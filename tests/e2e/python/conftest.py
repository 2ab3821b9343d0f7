"""Fixtures for the Python end-to-end suite: one real `paddock serve` per session, driven with
the official `e2b` SDK exactly as a user would (three environment variables, nothing else).

Fixtures:
  paddock         the running server (session, autouse so no test can reach a real E2B
                  endpoint by accident); teardown checks clean SIGTERM exit and no leaks
  api             base URL of the REST API, for raw `requests` checks
  auth            `{"X-API-Key": key}` for raw requests
  new_sandbox     factory: `new_sandbox(**create_kwargs)` -> Sandbox, killed at test end
  sbx             one sandbox shared by a test module (for tests that do not need isolation)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, List

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paddock_server import PaddockServer, ServerError  # noqa: E402

from e2b import Sandbox  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def paddock(request: pytest.FixtureRequest):
    if os.environ.get("PADDOCK_E2E_CLUSTER"):
        # The same SDK tests against a cluster (api, three nodes, edge proxy): see
        # tests/e2e/cluster/cluster.py and the cluster stage of scripts/test.sh.
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
        from cluster import ClusterAsServer  # noqa: PLC0415

        server = ClusterAsServer()
    else:
        # The webhook tests' receivers listen on 127.0.0.1, which webhooks may not reach by
        # default.
        server = PaddockServer(extra_args=["--webhook-allow-cidr", "127.0.0.1/32"])
    for key in [k for k in os.environ if k.startswith("E2B_")]:
        del os.environ[key]
    try:
        server.start(ready_timeout=600)
    except ServerError as e:
        pytest.exit(f"cannot start paddock serve: {e}", returncode=1)
    os.environ.update(server.client_env())
    # A sandbox left running on purpose: SIGTERM at the end must stop it without leaks.
    survivor = requests.post(
        server.api_url + "/v2/sandboxes",
        json={"templateID": "base", "timeout": 3600, "metadata": {"role": "survivor"}},
        headers={"X-API-Key": server.api_key},
        timeout=120,
    )
    if survivor.status_code == 201:
        server.track(survivor.json()["sandboxID"])

    yield server

    failed = request.session.testsfailed
    try:
        code = server.stop(timeout=30)
    except ServerError as e:
        pytest.fail(str(e))
    problems: List[str] = []
    if code != 0:
        problems.append(f"paddock serve exited with code {code} after SIGTERM (want 0)")
    problems += server.leaks()
    if problems or failed:
        print(f"\n--- paddock serve log tail ({server.log_path}) ---\n{server.log_tail(120)}\n---")
    if problems:
        pytest.fail("unclean shutdown:\n  " + "\n  ".join(problems), pytrace=False)
    if not failed:
        server.cleanup()


@pytest.fixture(scope="session")
def api(paddock: PaddockServer) -> str:
    return paddock.api_url


@pytest.fixture(scope="session")
def auth(paddock: PaddockServer) -> dict:
    return {"X-API-Key": paddock.api_key}


def _kill_quietly(sandbox: Sandbox) -> None:
    try:
        sandbox.kill()
    except Exception:  # noqa: BLE001 - best effort cleanup; the test already has its verdict
        pass


@pytest.fixture
def new_sandbox(paddock: PaddockServer) -> Callable[..., Sandbox]:
    """Creates sandboxes through the SDK and kills them when the test ends."""
    created: List[Sandbox] = []

    def make(**kwargs) -> Sandbox:
        sandbox = Sandbox.create(**kwargs)
        paddock.track(sandbox.sandbox_id)
        created.append(sandbox)
        return sandbox

    yield make
    for sandbox in created:
        _kill_quietly(sandbox)


@pytest.fixture(scope="module")
def sbx(paddock: PaddockServer) -> Sandbox:
    """One sandbox for a whole module, with sandbox-level envs and metadata set."""
    sandbox = Sandbox.create(
        timeout=600,
        envs={"PADDOCK_E2E_SBX": "module-level"},
        metadata={"suite": "e2e", "module": "shared"},
    )
    paddock.track(sandbox.sandbox_id)
    yield sandbox
    _kill_quietly(sandbox)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PADDOCK_E2E_CLUSTER"):
        skip = pytest.mark.skip(reason="looks at `paddock serve` itself, not the SDK's view")
        for item in items:
            if "serve_only" in item.keywords:
                item.add_marker(skip)
