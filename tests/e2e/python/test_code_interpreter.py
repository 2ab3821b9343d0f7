"""The code interpreter with E2B's own `e2b_code_interpreter` SDK (2.11.5), unchanged: the
`code-interpreter-v1` recipe (recipes/code-interpreter-v1, built here through the CLI under a
name of this run, since the templates dir outlives the server; its apt layer is cached across
runs) with `paddock-interpreter` on port 49999 over an IPython kernel, reached through the proxy
as the SDK reaches E2B's."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from e2b import TimeoutException
from e2b_code_interpreter import Sandbox

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def template(paddock):
    name = f"code-interpreter-e2e-{os.getpid()}"
    env = {**os.environ, **paddock.client_env(), "PADDOCK_BIN": str(paddock.binary),
           "PADDOCK_TEMPLATE_NAME": name}
    out = subprocess.run(
        ["bash", str(REPO / "recipes" / "code-interpreter-v1" / "build.sh")],
        env=env, capture_output=True, text=True, timeout=1800,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    yield name
    requests.delete(f"{paddock.api_url}/templates/{name}",
                    headers={"X-API-Key": paddock.api_key}, timeout=120)


@pytest.fixture
def ci(template, paddock):
    made = []

    def create(**kwargs) -> Sandbox:
        sbx = Sandbox.create(template=template, timeout=300, **kwargs)
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


def test_rich_results_dataframes_json_and_charts(ci):
    sbx = ci()
    df = sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2, 3]})")
    assert "<table" in (df.results[0].html or ""), df
    assert df.results[0].data == {"a": [1, 2, 3]}
    assert sbx.run_code("{'a': 1, 'b': [1, 2]}").results[0].json == {"a": 1, "b": [1, 2]}
    raw = sbx.run_code("display({'text/latex': r'\\frac{1}{2}'}, raw=True)")
    assert raw.results[0].formats() == ["latex"]

    line = sbx.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [4, 5, 6], label='up')\n"
        "plt.title('Growth'); plt.xlabel('Time (s)'); plt.ylabel('Size [m]')\n"
        "plt.show()"
    )
    (shown,) = [r for r in line.results if r.png]
    assert not shown.is_main_result and shown.extra == {}
    chart = shown.chart
    assert chart is not None and chart.type == "line", shown
    assert (chart.title, chart.x_label, chart.x_unit, chart.y_unit) == ("Growth", "Time (s)", "s", "m")
    assert chart.elements[0].label == "up"
    assert [list(p) for p in chart.elements[0].points] == [[1, 4], [2, 5], [3, 6]]

    pie = sbx.run_code("import matplotlib.pyplot as plt\nplt.pie([90, 10], labels=['a', 'b'])\nplt.show()")
    (shown,) = [r for r in pie.results if r.png]
    assert shown.chart.type == "pie"
    assert [(e.label, round(e.angle), e.radius) for e in shown.chart.elements] == [("a", 324, 1), ("b", 36, 1)]

    bar = sbx.run_code("import matplotlib.pyplot as plt\nplt.bar(['A', 'B'], [3, 4], label='Sold')\nplt.show()")
    (shown,) = [r for r in bar.results if r.png]
    assert shown.chart.type == "bar"
    assert [(e.label, e.group, e.value) for e in shown.chart.elements] == [("A", "Sold", 3), ("B", "Sold", 4)]


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


def test_a_timed_out_execution_is_interrupted_at_once(ci):
    """The SDK gives up and closes its connection; the interpreter notices the close (not only
    at the next 5 s keepalive) and interrupts the kernel, so the context is free again."""
    sbx = ci()
    with pytest.raises(TimeoutException):
        sbx.run_code("import time; time.sleep(120)", timeout=3)
    started = time.monotonic()
    assert sbx.run_code("1 + 1", timeout=30).text == "2"
    assert time.monotonic() - started < 3


def test_killing_the_sandbox_ends_a_running_execution_at_once(ci):
    sbx = ci()
    sbx.run_code("1")
    threading.Timer(2, sbx.kill).start()
    started = time.monotonic()
    with pytest.raises(TimeoutException, match="killed"):
        sbx.run_code("import time; time.sleep(120)", timeout=60)
    assert time.monotonic() - started < 20


def test_bad_code_gets_a_clear_error_and_the_context_carries_on(ci):
    """A kernel that exits or runs out of memory is started again: the run ends with E2B's
    ContextRestarting error, the next run works, the sandbox and the interpreter survive."""
    sbx = ci()
    sbx.run_code("kept = 1")
    died = sbx.run_code("import os; os._exit(3)")
    assert died.error is not None and died.error.name == "ContextRestarting", died
    assert sbx.run_code("1 + 1").text == "2"
    oom = sbx.run_code("hog = bytearray(4 << 30)")
    assert oom.error is not None and oom.error.name in ("ContextRestarting", "MemoryError"), oom
    assert sbx.run_code("2 + 2").text == "4"
    assert sbx.commands.run("echo alive").stdout.strip() == "alive"
