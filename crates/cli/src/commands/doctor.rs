//! `paddock doctor`: checks that this host has the kernel and host features a node needs and
//! prints OK/WARN/FAIL with a fix for each (a table, or JSON with `--json`). Exits with status 1
//! when any check fails.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use paddock_node::doctor::{self, DoctorOptions, Status};

/// Flags of `paddock doctor`.
#[derive(Args)]
pub struct DoctorArgs {
    /// The data dir `paddock serve` will use (checked for space and filesystem; not created).
    #[arg(long, default_value = "/var/lib/paddock")]
    data_dir: PathBuf,
    /// envd binary to check instead of the default lookup next to this binary.
    #[arg(long, env = "PADDOCK_ENVD_BIN")]
    envd_bin: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs every check and prints the report; an error (exit status 1) if any check failed.
pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let opts = DoctorOptions {
        data_dir: args.data_dir,
        envd_bin: args.envd_bin,
        exe: std::env::current_exe().ok(),
    };
    let report = tokio::task::spawn_blocking(move || doctor::run(&opts))
        .await
        .context("running the checks")?;
    let text = if args.json {
        format!("{}\n", report.to_json())
    } else {
        report.to_table()
    };
    // A closed pipe (`paddock doctor | head`) is not an error worth a panic.
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(e).context("writing the report");
        }
        _ => {}
    }
    let failed = report.count(Status::Fail);
    anyhow::ensure!(
        failed == 0,
        "{failed} check{} failed",
        if failed == 1 { "" } else { "s" }
    );
    Ok(())
}
