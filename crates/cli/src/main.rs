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
    /// Export traces over OTLP to this collector (e.g. `http://127.0.0.1:4318`); also
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, with `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the
    /// default, or `grpc`) and the other `OTEL_EXPORTER_OTLP_*` settings (docs/observability.md).
    #[arg(long, global = true, value_name = "URL")]
    otlp_endpoint: Option<String>,
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
    // The overhead benchmark's baseline (bench/telemetrybench.py): no metric is recorded.
    if std::env::var_os("PADDOCK_METRICS").is_some_and(|v| v == "off") {
        paddock_telemetry::metrics::set_recording(false);
    }
    let tracing = match init_logging(&cli, rt.handle()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
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
    // The spans still buffered are sent while the runtime still runs.
    if let Some(tracing) = tracing {
        tracing.shutdown();
    }
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

/// The `service.name` of a subcommand's spans: the role it runs.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Serve(_) => "paddock-serve",
        Command::Api(_) => "paddock-api",
        Command::Node(_) => "paddock-node",
        Command::Proxy(_) => "paddock-proxy",
        _ => "paddock-cli",
    }
}

/// Logs to stderr (text or JSON, filtered by `PADDOCK_LOG`) and, when an OTLP endpoint is
/// configured, spans to it; returns the trace pipeline to shut down at exit.
fn init_logging(
    cli: &Cli,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<Option<paddock_telemetry::trace::Tracing>> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    let filter = tracing_subscriber::EnvFilter::try_from_env("PADDOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // `PADDOCK_LOG` filters the log lines only; spans are exported at `info` and above.
    let logs = match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        // Every span the line is in (`spans`): the outermost (a request's) holds `trace_id`.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_filter(filter)
            .boxed(),
    };
    let config =
        paddock_telemetry::trace::OtlpConfig::resolve(cli.otlp_endpoint.as_deref(), |name| {
            std::env::var(name).ok()
        })?;
    let registry = tracing_subscriber::registry().with(logs);
    match config {
        None => {
            registry.init();
            Ok(None)
        }
        Some(config) => {
            let (tracing, spans) = paddock_telemetry::trace::Tracing::start(
                &config,
                service_name(&cli.command),
                runtime.clone(),
            )?;
            registry
                .with(spans.with_filter(tracing_subscriber::filter::LevelFilter::INFO))
                .init();
            tracing::info!(
                endpoint = %config.endpoint,
                protocol = ?config.protocol,
                "exporting traces over OTLP"
            );
            Ok(Some(tracing))
        }
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
