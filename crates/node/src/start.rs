//! A built template's start command and ready check, run in each of its new sandboxes before
//! the create answers (E2B's `set_start_cmd(cmd, ready)`): the start command is started in the
//! background as the template's user in its workdir, then the ready command runs until it
//! exits 0. Without a ready command the create answers once the start command has started.

use std::time::{Duration, Instant};

use paddock_templates::TemplateConfig;

use crate::envd_client::{EnvdClient, OutputStream, ProcessSpec};

/// How long a create waits for the ready check.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// First and longest pause between two ready checks.
const FIRST_INTERVAL: Duration = Duration::from_millis(20);
const MAX_INTERVAL: Duration = Duration::from_millis(250);
/// How much of the ready command's output a timeout error quotes.
const OUTPUT_TAIL: usize = 1024;

/// Starts `config`'s start command and waits for its ready check (within `timeout`). Does
/// nothing if the template has neither.
pub(crate) async fn start_and_wait(
    envd: &EnvdClient,
    config: &TemplateConfig,
    timeout: Duration,
) -> Result<(), String> {
    let user = config.user.clone().unwrap_or_else(|| "user".into());
    // The start command runs on a task that follows its output until it ends (the sandbox's
    // life, usually): an early failure is reported at once instead of after the timeout.
    let mut exited = None;
    if let Some(cmd) = &config.start_cmd {
        let mut spec = ProcessSpec::shell(cmd, &user);
        spec.cwd = config.workdir.clone();
        spec.tag = Some("start_cmd".into());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let client = envd.clone();
        tokio::spawn(async move {
            let mut output = Vec::new();
            let mut on_output = |_: OutputStream, chunk: &[u8]| keep_tail(&mut output, chunk);
            let status = client.run(&spec, &mut on_output).await;
            let _ = tx.send((status, output));
        });
        exited = Some((cmd.clone(), rx));
    }
    let Some(ready) = &config.ready_cmd else {
        return Ok(());
    };
    let started = Instant::now();
    let mut interval = FIRST_INTERVAL;
    let mut attempts = 0u32;
    loop {
        if let Some((cmd, rx)) = exited.as_mut() {
            match rx.try_recv() {
                Ok((Ok(status), output)) if !status.success() => {
                    return Err(format!(
                        "the start command `{cmd}` ended with {} before the ready check passed{}",
                        describe(&status),
                        quoted(&output)
                    ))
                }
                Ok((Err(e), _)) => {
                    return Err(format!("cannot run the start command `{cmd}`: {e}"))
                }
                // Ended well (a daemon that forked) or still running: wait for readiness.
                Ok(_) => exited = None,
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => exited = None,
            }
        }
        attempts += 1;
        let mut spec = ProcessSpec::shell(ready, &user);
        spec.cwd = config.workdir.clone();
        let mut output = Vec::new();
        let mut on_output = |_: OutputStream, chunk: &[u8]| keep_tail(&mut output, chunk);
        match envd.run(&spec, &mut on_output).await {
            Ok(status) if status.success() => {
                tracing::debug!(
                    attempts,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "ready check passed"
                );
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => return Err(format!("cannot run the ready check `{ready}`: {e}")),
        }
        if started.elapsed() >= timeout {
            return Err(format!(
                "the ready check `{ready}` did not pass within {} s ({attempts} attempts){}",
                timeout.as_secs(),
                quoted(&output)
            ));
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}

/// Appends `chunk`, keeping about the last [`OUTPUT_TAIL`] bytes.
fn keep_tail(output: &mut Vec<u8>, chunk: &[u8]) {
    output.extend_from_slice(chunk);
    if output.len() > 4 * OUTPUT_TAIL {
        output.drain(..output.len() - OUTPUT_TAIL);
    }
}

fn describe(status: &crate::envd_client::ExitStatus) -> String {
    if status.exit_code >= 0 {
        format!("exit code {}", status.exit_code)
    } else {
        status.status.clone()
    }
}

/// `"; its last output: ..."` for non-empty output.
fn quoted(output: &[u8]) -> String {
    let tail = &output[output.len().saturating_sub(OUTPUT_TAIL)..];
    let text = String::from_utf8_lossy(tail);
    if text.trim().is_empty() {
        String::new()
    } else {
        format!("; its last output:\n{}", text.trim())
    }
}
