//! The kernel client against a real IPython kernel (`ipykernel`): the Python named by
//! `PADDOCK_TEST_PYTHON` (scripts/test.sh sets it to its venv, where it installs ipykernel).

use std::time::{Duration, Instant};

use paddock_interpreter::kernel::{Kernel, Output};

fn python() -> Option<String> {
    match std::env::var("PADDOCK_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            eprintln!("skipped: set PADDOCK_TEST_PYTHON to a python with ipykernel (scripts/test.sh does)");
            None
        }
    }
}

async fn start(dir: &std::path::Path) -> Kernel {
    let python = python().expect("checked");
    // The command the interpreter runs Python's kernel with.
    let argv = paddock_interpreter::server::Config::python_with(
        paddock_interpreter::server::PythonKernel::Jupyter,
        &python,
        dir,
        dir.join("run"),
    )
    .kernels["python"]
        .argv
        .clone();
    Kernel::start(
        &argv,
        dir,
        &[("PADDOCK_KERNEL_TEST".into(), "yes".into())],
        &dir.join("run"),
    )
    .await
    .expect("kernel starts")
}

async fn run(kernel: &Kernel, code: &str) -> Vec<Output> {
    let mut rx = kernel.execute(code).await.expect("execute");
    let mut out = Vec::new();
    while let Some(o) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("outputs in time")
    {
        out.push(o);
    }
    out
}

fn main_text(out: &[Output]) -> Option<String> {
    out.iter().find_map(|o| match o {
        Output::Result {
            data,
            is_main: true,
            ..
        } => data
            .get("text/plain")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        _ => None,
    })
}

#[tokio::test]
async fn executions_stream_their_outputs_and_keep_state() {
    if python().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = start(dir.path()).await;

    let out = run(&kernel, "x = 20\nprint('hello')\nx + 22").await;
    assert!(
        matches!(out.first(), Some(Output::ExecutionCount(1))),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Stdout { text, timestamp }
        if text == "hello\n" && timestamp.starts_with("20"))),
        "{out:?}"
    );
    assert_eq!(main_text(&out).as_deref(), Some("42"));

    // State stays between executions; stderr and displays are their own outputs.
    let out = run(
        &kernel,
        "import sys, os\nsys.stderr.write('warn\\n')\nfrom IPython.display import display, HTML\n\
         display(HTML('<b>hi</b>'))\nos.environ['PADDOCK_KERNEL_TEST'] + str(x)",
    )
    .await;
    assert!(
        matches!(out.first(), Some(Output::ExecutionCount(2))),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Stderr { text, .. } if text == "warn\n")),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Result { data, is_main: false, .. }
        if data.get("text/html").and_then(|v| v.as_str()) == Some("<b>hi</b>"))),
        "{out:?}"
    );
    assert_eq!(main_text(&out).as_deref(), Some("'yes20'"));

    // An exception is an error output with its traceback.
    let out = run(&kernel, "1/0").await;
    let err = out.iter().find_map(|o| match o {
        Output::Error {
            name,
            value,
            traceback,
        } => Some((name.clone(), value.clone(), traceback.len())),
        _ => None,
    });
    let (name, value, lines) = err.expect("an error");
    assert_eq!(name, "ZeroDivisionError");
    assert!(value.contains("division by zero"), "{value}");
    assert!(lines > 0);

    // Big output arrives whole (frames over 255 bytes, many of them).
    let out = run(&kernel, "print('x' * 1_000_000)").await;
    let text: String = out
        .iter()
        .filter_map(|o| match o {
            Output::Stdout { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text.len(), 1_000_001);
}

#[tokio::test]
async fn a_running_execution_is_interrupted_and_a_dead_kernel_ends_its_execution() {
    if python().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = start(dir.path()).await;
    let mut rx = kernel
        .execute("import time\ntime.sleep(60)")
        .await
        .expect("execute");
    assert!(matches!(rx.recv().await, Some(Output::ExecutionCount(1))));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    kernel.interrupt().await.expect("interrupt");
    let mut outs = Vec::new();
    while let Some(o) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("ends after the interrupt")
    {
        outs.push(o);
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Error { name, .. } if name == "KeyboardInterrupt")),
        "{outs:?}"
    );
    // Still usable afterwards.
    assert_eq!(main_text(&run(&kernel, "1+1").await).as_deref(), Some("2"));

    // The kernel dies mid-execution: the execution ends saying so, the next one is refused.
    let mut rx = kernel
        .execute("import os\nos._exit(3)")
        .await
        .expect("execute");
    let mut last = None;
    while let Some(o) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("ends when the kernel dies")
    {
        last = Some(o);
    }
    assert!(matches!(last, Some(Output::KernelExited(_))), "{last:?}");
    assert!(kernel.exited().is_some());
    assert!(kernel.execute("1").await.is_err());
}

#[tokio::test]
async fn a_reader_that_falls_behind_holds_at_most_the_queue_limit() {
    use paddock_interpreter::kernel::MAX_QUEUED_TEXT;
    if python().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = start(dir.path()).await;
    // 100 MB of output (ipykernel sends it in a few big messages) while nobody reads.
    let mut rx = kernel
        .execute("for _ in range(100):\n    print('x' * 1_000_000)")
        .await
        .expect("execute");
    let mut most = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        most = most.max(rx.queued());
    }
    assert!(most <= MAX_QUEUED_TEXT, "{most} bytes queued");
    let (mut text, mut note) = (0usize, false);
    while let Some(o) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("ends")
    {
        match o {
            Output::Stdout { text: t, .. } => text += t.len(),
            Output::Stderr { text: t, .. } => note |= t.contains("output cut"),
            _ => {}
        }
    }
    assert!(note, "the reader is told output was cut");
    assert!(
        (MAX_QUEUED_TEXT / 2..=MAX_QUEUED_TEXT + 1_000_001).contains(&text),
        "what fitted went on, no more ({text})"
    );
    // The kernel is fine afterwards.
    assert_eq!(main_text(&run(&kernel, "1+1").await).as_deref(), Some("2"));
}
