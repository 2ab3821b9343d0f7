//! `paddock-interpreter`: E2B's code-interpreter API on port 49999 inside a sandbox of the
//! `code-interpreter-v1` template (see the library's docs). Started by the template as its
//! start command; Python's default context is up before it listens, so a sandbox from a warm
//! pool answers its first `run_code` without waiting for a kernel.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use paddock_interpreter::server::{Config, Interpreter, PythonKernel};

/// Flags.
#[derive(Parser)]
#[command(name = "paddock-interpreter", version)]
struct Args {
    /// Where the API listens.
    #[arg(long, default_value = "0.0.0.0:49999")]
    listen: SocketAddr,
    /// The Python that runs the IPython kernel.
    #[arg(long, default_value = "python3")]
    python: String,
    /// How Python's kernel runs: `pipe` (IPython's shell over pipes, the fastest) or `jupyter`
    /// (ipykernel over Jupyter's protocol, for code that needs the Jupyter kernel itself).
    #[arg(long, env = "PADDOCK_PYTHON_KERNEL", value_enum, default_value_t = PythonKernel::Pipe)]
    python_kernel: PythonKernel,
    /// The working directory of contexts that name none.
    #[arg(long, default_value = "/home/user")]
    cwd: PathBuf,
    /// Where kernels' connection files are kept (private to the server's user).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// envd's HTTP API, where the sandbox's env vars are read ("" to use this process's own).
    #[arg(long, default_value = "http://127.0.0.1:49983")]
    envd_url: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PADDOCK_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let run_dir = args.run_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("paddock-interpreter-{}", std::process::id()))
    });
    let mut config = Config::standard(args.python_kernel, &args.python, &args.cwd, &run_dir);
    config.envd_url = Some(args.envd_url).filter(|u| !u.is_empty());
    let interpreter = match Interpreter::start(config).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("paddock-interpreter: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("paddock-interpreter: listening on {}: {e}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::info!(listen = %args.listen, "code interpreter ready");
    if let Err(e) = paddock_interpreter::server::serve(listener, interpreter).await {
        eprintln!("paddock-interpreter: {e}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
