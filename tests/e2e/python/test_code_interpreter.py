"""The code interpreter with E2B's own `e2b_code_interpreter` SDK (2.11.5), unchanged: the
`code-interpreter-v1` template every Paddock server makes on its first start (recipes/
code-interpreter-v1; scripts/test.sh bakes it into the shared templates dir with `paddock
template prepare` first, so here it is ready or a server is finishing it), with
`paddock-interpreter` on port 49999 over its kernels, reached through the proxy as the SDK
reaches E2B's. Sandboxes are made as the docs make them: `Sandbox.create()`, no template."""

from __future__ import annotations

import threading
import time

import pytest
from e2b import SandboxException, TimeoutException
from e2b_code_interpreter import Sandbox

TEMPLATE = "code-interpreter-v1"


@pytest.fixture(scope="module")
def template(paddock):
    """Waits (up to 15 min) while the server still builds the template: its creates answer
    503 saying so meanwhile."""
    deadline = time.monotonic() + 900
    while True:
        try:
            sbx = Sandbox.create(timeout=60)
        except SandboxException as e:
            assert "not ready yet" in str(e), e
            assert time.monotonic() < deadline, f"{TEMPLATE} was not built in time: {e}"
            time.sleep(5)
            continue
        sbx.kill()
        return TEMPLATE


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


def test_the_template_has_the_scientific_stack(ci):
    sbx = ci()
    out = sbx.run_code(
        "import numpy, pandas, matplotlib, scipy, sklearn, seaborn, requests, PIL\n"
        "from scipy import stats\n"
        "from sklearn.linear_model import LinearRegression\n"
        "m = LinearRegression().fit([[0], [1], [2]], [1, 3, 5])\n"
        "round(float(m.coef_[0]), 3), round(float(stats.norm.cdf(0)), 2)"
    )
    assert out.error is None, out.error
    assert out.text == "(2.0, 0.5)"


def test_a_fresh_sandbox_lists_its_default_python_and_javascript_contexts(ci):
    sbx = ci()
    deadline = time.monotonic() + 20
    while True:
        languages = sorted(c.language for c in sbx.list_code_contexts())
        if languages == ["javascript", "python"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert languages == ["javascript", "python"]


def test_javascript_typescript_r_and_bash(ci):
    sbx = ci()
    js = sbx.run_code("const a = 20; console.log('from js'); a + 22", language="js")
    assert js.error is None, js.error
    assert js.text == "42" and js.logs.stdout == ["from js\n"]
    assert sbx.run_code("a * 2", language="javascript").text == "40", "state is kept"
    assert sbx.run_code("'quoted'", language="js").text == "quoted"
    err = sbx.run_code("throw new TypeError('bad')", language="js").error
    assert err is not None and err.name == "TypeError" and err.value == "bad"
    assert sbx.run_code("x +", language="js").error.name == "SyntaxError"

    shown = sbx.run_code("display({'text/html': '<b>hi</b>'}); 1", language="js")
    assert shown.results[0].html == "<b>hi</b>" and not shown.results[0].is_main_result
    assert shown.text == "1"

    ts = sbx.run_code("const n: number = 21;\nn * 2", language="ts")
    assert ts.error is None and ts.text == "42", ts

    env_js = sbx.run_code("process.env.ONLY_JS", language="js", envs={"ONLY_JS": "yes"})
    assert env_js.text == "yes"
    assert sbx.run_code("String(process.env.ONLY_JS)", language="js").text == "undefined"
    waited = sbx.run_code("const got = await new Promise(r => setTimeout(() => r(6), 50));\ngot * 7",
                          language="js")
    assert waited.text == "42", waited

    r = sbx.run_code("x <- c(1, 2, 3)\nsum(x) * 7", language="r")
    assert r.error is None, r.error
    assert r.text == "[1] 42"
    assert sbx.run_code("length(x)", language="r").text == "[1] 3"

    sh = sbx.run_code("N=6; echo $((N * 7))", language="bash")
    assert sh.logs.stdout == ["42\n"], sh
    assert sbx.run_code("echo $N", language="bash").logs.stdout == ["6\n"]
    env_sh = sbx.run_code("echo $ONLY_SH", language="bash", envs={"ONLY_SH": "it's here"})
    assert env_sh.logs.stdout == ["it's here\n"]

    ctx = sbx.create_code_context(language="js", cwd="/tmp")
    assert ctx.language == "javascript"
    assert sbx.run_code("process.cwd()", context=ctx).text == "/tmp"
    assert sbx.run_code("typeof a", context=ctx).text == "undefined", "contexts are separate"


def test_javascript_and_r_loops_are_interrupted_when_the_client_gives_up(ci):
    sbx = ci()
    for language, loop, two in [("js", "while (true) {}", "2"), ("r", "repeat {}", "[1] 2")]:
        assert sbx.run_code("1", language=language, timeout=60).error is None  # kernel up
        with pytest.raises(TimeoutException):
            sbx.run_code(loop, language=language, timeout=3)
        started = time.monotonic()
        assert sbx.run_code("1 + 1", language=language, timeout=30).text == two, language
        assert time.monotonic() - started < 3, language


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

    box = sbx.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.boxplot([[1, 2, 3, 4, 5, 20], [2, 3, 4]])\n"
        "plt.xticks([1, 2], ['A', 'B']); plt.title('Spread'); plt.ylabel('Mass (kg)')\n"
        "plt.show()"
    )
    (shown,) = [r for r in box.results if r.png]
    chart = shown.chart
    assert chart.type == "box_and_whisker" and chart.title == "Spread" and chart.y_unit == "kg"
    assert [(e.label, e.min, e.first_quartile, e.median, e.third_quartile, e.max, e.outliers)
            for e in chart.elements] == [("A", 1, 2.25, 3.5, 4.75, 5, [20]), ("B", 2, 2.5, 3, 3.5, 4, [])]


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
