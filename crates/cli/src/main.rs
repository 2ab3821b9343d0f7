//! `paddock`: the one binary of Paddock. A thin layer over the library crates: it parses flags,
//! sets up logging and calls one library entry point per subcommand (see `commands/`).
#![forbid(unsafe_code)]

mod commands;

use clap::{Parser, Subcommand};

/// Paddock: self-hosted, E2B-compatible sandboxes for untrusted code.
#[derive(Parser)]
#[command(name = "paddock", version, about)]
struct Cli {
    /// Log lines as `text` (for people) or `json` (one object per line, for log collectors:
    /// timestamp, level, target, the message and fields flattened, and the spans it is in).
    #[arg(long, global = true, env = "PADDOCK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format` values.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane, one node and the proxy in one process.
    Serve(commands::serve::ServeArgs),
    /// Run the control plane of a cluster (nodes and proxies join it).
    Api(commands::api::ApiArgs),
    /// Run a node of a cluster: joins the control plane and runs its sandboxes.
    Node(commands::node::NodeArgs),
    /// Run the edge proxy of a cluster: routes sandbox traffic to the node that holds it.
    Proxy(commands::proxy::ProxyArgs),
    /// Manage templates (sandbox root filesystems).
    #[command(subcommand)]
    Template(commands::template::TemplateCommand),
    /// Check that this host has the kernel and host features a node needs.
    Doctor(commands::doctor::DoctorArgs),
    /// Sandboxes of a Paddock API: list, info, kill, pause, resume, metrics, logs, exec, shell.
    #[command(subcommand)]
    Sandbox(commands::sandbox::SandboxCommand),
    /// Internal: the per-sandbox helper process spawned by the namespace driver.
    #[command(hide = true, name = "sandbox-shim")]
    SandboxShim,
}

fn main() -> std::process::ExitCode {
    // The shim runs once per sandbox start: straight to it, without building the whole
    // command line parser first.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "sandbox-shim") && args.next().is_none() {
        return shim();
    }
    let cli = Cli::parse();
    if let Command::SandboxShim = cli.command {
        return shim();
    }
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(args) => commands::serve::run(args).await.map(|()| 0),
            Command::Api(args) => commands::api::run(args).await.map(|()| 0),
            Command::Node(args) => commands::node::run(args).await.map(|()| 0),
            Command::Proxy(args) => commands::proxy::run(args).await.map(|()| 0),
            Command::Template(cmd) => commands::template::run(cmd).await.map(|()| 0),
            Command::Doctor(args) => commands::doctor::run(args).await.map(|()| 0),
            Command::Sandbox(cmd) => commands::sandbox::run(cmd).await,
            Command::SandboxShim => Ok(0),
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the sandbox shim; before any thread exists, since it forks and unshares namespaces.
fn shim() -> std::process::ExitCode {
    let code = paddock_sandbox::namespace::shim_main();
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PADDOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    /// Every subcommand's flags are well formed (unique names, groups and short flags), which
    /// clap otherwise only checks when that subcommand is run.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
