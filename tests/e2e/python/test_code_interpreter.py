"""The code interpreter with E2B's own `e2b_code_interpreter` SDK (2.11.5), unchanged: the
`code-interpreter-v1` template (recipes/code-interpreter-v1, built here through the CLI; its
apt layer is cached across runs) with `paddock-interpreter` on port 49999 over an IPython
kernel, reached through the proxy as the SDK reaches E2B's."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from e2b import TimeoutException
from e2b_code_interpreter import Sandbox

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def template(paddock):
    env = {**os.environ, **paddock.client_env(), "PADDOCK_BIN": str(paddock.binary)}
    out = subprocess.run(
        ["bash", str(REPO / "recipes" / "code-interpreter-v1" / "build.sh")],
        env=env, capture_output=True, text=True, timeout=1800,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return "code-interpreter-v1"


@pytest.fixture
def ci(template, paddock):
    made = []

    def create(**kwargs) -> Sandbox:
        sbx = Sandbox.create(timeout=300, **kwargs)
        paddock.track(sbx.sandbox_id)
        made.append(sbx)
        return sbx

    yield create
    for sbx in made:
        try:
            sbx.kill()
        except Exception:  # noqa: BLE001 (already gone)
            pass


def test_run_code_keeps_state_streams_output_and_reports_errors(ci):
    sbx = ci()
    first = sbx.run_code("x = 1; x")
    assert first.text == "1"
    assert first.execution_count == 1
    assert sbx.run_code("x + 41").text == "42"

    seen = []
    ex = sbx.run_code("print('hello'); import sys; print('oops', file=sys.stderr)",
                      on_stdout=lambda m: seen.append(m.line))
    assert ex.logs.stdout == ["hello\n"]
    assert ex.logs.stderr == ["oops\n"]
    assert seen == ["hello\n"]

    err = sbx.run_code("1 / 0").error
    assert err is not None and err.name == "ZeroDivisionError"
    assert "division by zero" in err.value
    assert sbx.run_code("'it' + \"'s\"").text == "it's"


def test_rich_results_dataframes_and_figures(ci):
    sbx = ci()
    df = sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2, 3]})")
    assert "<table" in (df.results[0].html or ""), df
    fig = sbx.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
    pngs = [r for r in fig.results if r.png]
    assert pngs and not pngs[0].is_main_result, fig


def test_contexts_are_separate_and_can_be_restarted_and_removed(ci):
    sbx = ci()
    sbx.run_code("shared = 'default context'")
    ctx = sbx.create_code_context(cwd="/tmp")
    assert ctx.language == "python" and ctx.cwd == "/tmp"
    assert sbx.run_code("import os; os.getcwd()", context=ctx).text == "/tmp"
    assert sbx.run_code("shared", context=ctx).error.name == "NameError"
    listed = [c.id for c in sbx.list_code_contexts()]
    assert listed[-1] == ctx.id and len(listed) >= 2
    sbx.run_code("y = 1", context=ctx)
    sbx.restart_code_context(ctx)
    assert sbx.run_code("y", context=ctx).error.name == "NameError"
    sbx.remove_code_context(ctx)
    assert ctx.id not in [c.id for c in sbx.list_code_contexts()]


def test_env_vars_of_the_sandbox_and_of_one_execution(ci):
    sbx = ci(envs={"FROM_SANDBOX": "sandbox value"})
    assert sbx.run_code("import os; os.environ['FROM_SANDBOX']").text == "sandbox value"
    once = sbx.run_code("import os; os.environ.get('ONCE')", envs={"ONCE": "only now"})
    assert once.text == "only now"
    assert sbx.run_code("import os; os.environ.get('ONCE', 'gone')").text == "gone"
    over = sbx.run_code("import os; os.environ['FROM_SANDBOX']", envs={"FROM_SANDBOX": "mine"})
    assert over.text == "mine"
    assert sbx.run_code("import os; os.environ['FROM_SANDBOX']").text == "sandbox value"


def test_a_timed_out_execution_is_interrupted(ci):
    sbx = ci()
    with pytest.raises(TimeoutException):
        sbx.run_code("import time; time.sleep(120)", timeout=3)
    started = time.monotonic()
    assert sbx.run_code("1 + 1", timeout=30).text == "2"
    assert time.monotonic() - started < 15
