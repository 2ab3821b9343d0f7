"""Fixtures of the cluster suite: one cluster (api, three nodes, edge proxy) for the session,
with the SDK's environment pointed at it (E2B_API_URL at the api, E2B_SANDBOX_URL at the
edge proxy), every role exporting its traces to an in-test OTLP collector."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import Cluster  # noqa: E402
from otlp import Collector  # noqa: E402


@pytest.fixture(scope="session")
def collector() -> Collector:
    """The OTLP collector every role of the session's cluster sends its spans to."""
    return _collector


_collector = Collector().start()


@pytest.fixture(scope="session", autouse=True)
def cluster(request: pytest.FixtureRequest):
    for key in [k for k in os.environ if k.startswith("E2B_")]:
        del os.environ[key]
    c = Cluster(nodes=3, lost_after=15, otlp_endpoint=_collector.endpoint)
    try:
        c.start()
    except Exception as e:  # noqa: BLE001
        print(c.logs())
        c.stop()
        pytest.exit(f"cannot start the cluster: {e}", returncode=1)
    os.environ.update(c.env)
    yield c
    problems = c.stop()
    if problems or request.session.testsfailed:
        print("\n" + c.logs())
    if problems:
        pytest.fail("unclean shutdown: " + "; ".join(problems), pytrace=False)
    if not request.session.testsfailed:
        c.cleanup()
