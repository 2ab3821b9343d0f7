//! `paddock-envd`: parses flags, sets up logging (JSON lines on stderr, see
//! [`paddock_envd::logging`]) and runs [`paddock_envd::server::run`] until
//! SIGTERM or SIGINT. As PID 1 of a sandbox only signals with installed handlers reach it, so
//! both are handled explicitly; SIGPIPE stays ignored (Rust's default), so a closed peer is an
//! error, never a death.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use paddock_envd::server::{self, ServeOptions};
use paddock_envd_proto::boot;
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: paddock-envd [--run-dir DIR] [--port N] [--etc-dir DIR]\n\
  --run-dir DIR   directory with config.json, envd.sock, forward.sock unless handed over\n                  as PADDOCK_BOOT_CONFIG_FD and PADDOCK_LISTEN_FDS (default /run/paddock)\n\
  --port N        TCP port on 127.0.0.1, 0 = none (default 49983)\n\
  --etc-dir DIR   directory with passwd and group (default /etc)\n\
environment: ENVD_LOG (log filter, default info), PADDOCK_READY_FD (fd to write \"ready\" to)";

/// How long an idle thread of the blocking pool is kept.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(3600);

fn parse_args(args: impl Iterator<Item = String>) -> Result<ServeOptions, String> {
    let mut opts = ServeOptions::default();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--run-dir" => opts.run_dir = PathBuf::from(value("--run-dir")?),
            "--etc-dir" => opts.etc_dir = PathBuf::from(value("--etc-dir")?),
            "--port" => {
                let v = value("--port")?;
                opts.port = v.parse().map_err(|_| format!("invalid port {v:?}"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(opts)
}

async fn terminated() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop envd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// `"<http>,<forward>"` as two descriptors.
fn parse_fd_pair(v: &str) -> Option<(RawFd, RawFd)> {
    let (a, b) = v.trim().split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

fn main() -> ExitCode {
    let mut opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("paddock-envd: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENVD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // One JSON object per line on stderr (a pipe the shim copies into the node's `envd.log`), parsed by the node for
    // the sandbox logs endpoints.
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        tracing_subscriber::registry()
            .with(filter)
            .with(paddock_envd::logging::JsonLines::new(std::io::stderr))
            .init();
    }
    paddock_envd::process::cgroup::init_from_env();
    // Forks the helper that starts processes in the user cgroup: must happen while envd is
    // still single-threaded (before the runtime starts).
    paddock_envd::process::spawner::start();
    opts.ready_fd = std::env::var(boot::READY_FD_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok());
    opts.boot_config_fd = std::env::var(boot::BOOT_CONFIG_FD_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok());
    opts.listen_fds = std::env::var(boot::LISTEN_FDS_ENV)
        .ok()
        .and_then(|v| parse_fd_pair(&v));

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Every `Start` runs on the blocking pool. Creating a thread there took 0.15-2.3 ms
        // on the 2-core hosts, paid by the first command and, with tokio's default of 10 s,
        // by every command after a pause: idle threads are kept for an hour instead (one is
        // started at boot, see `server::run`), at a few KiB of memory each.
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paddock-envd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(opts, terminated())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            tracing::error!("{msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServeOptions, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_flags() {
        let o = parse(&["--run-dir", "/tmp/x", "--port=0"]).expect("parses");
        assert_eq!(o.run_dir, PathBuf::from("/tmp/x"));
        assert_eq!(o.port, 0);
        assert_eq!(parse(&[]).expect("defaults").port, 49983);
        assert!(parse(&["--port", "x"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--run-dir"]).is_err());
    }
}
