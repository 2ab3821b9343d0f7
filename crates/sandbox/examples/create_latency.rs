//! Micro-benchmark of the namespace driver alone (no node, no REST): creates and kills sandboxes
//! one at a time and prints p50/p95/p99 of create (until envd's `ready`) and of kill.
//!
//! `cargo run --release -p paddock-sandbox --example create_latency -- ROOTFS ENVD [COUNT]`
//! (as root). ENVD may be any executable that writes `ready` to `$PADDOCK_READY_FD`. The shim
//! is `paddock-sandbox-shim` next to this example's binary (build it with
//! `cargo build --release -p paddock-sandbox`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use paddock_domain::{Resources, SandboxId};
use paddock_sandbox::namespace::{NamespaceConfig, NamespaceDriver};
use paddock_sandbox::{RuntimeDriver, SandboxSpec};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name}: n={} p50={:.2} ms p95={:.2} ms p99={:.2} ms",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.95),
        percentile(&samples, 0.99)
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: create_latency ROOTFS ENVD [COUNT]";
    let rootfs =
        PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!(usage))?).canonicalize()?;
    let envd = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!(usage))?).canonicalize()?;
    let count: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(50)
        .max(1);
    let shim = std::env::current_exe()?
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("paddock-sandbox-shim"))
        .ok_or_else(|| anyhow::anyhow!("cannot locate the shim"))?;
    let unhardened = std::env::var_os("PADDOCK_UNHARDENED").is_some_and(|v| v == "1");
    let states = tempfile::tempdir()?;
    let parent = format!("paddock-bench-{}", std::process::id());
    let driver = NamespaceDriver::new(NamespaceConfig {
        shim_exe: shim,
        shim_args: Vec::new(),
        cgroup_parent: parent,
        state_root: states.path().to_path_buf(),
        disk_dir: states.path().join(".disks"),
        // PADDOCK_UNHARDENED=1 measures without user namespace, seccomp, capability cut and
        // /proc masks (as `paddock serve --unhardened-for-benchmarks`).
        id_map: (!unhardened).then_some(paddock_sandbox::idmap::IdMap::DEFAULT),
        hardened: !unhardened,
    })?;
    let (mut creates, mut kills) = (Vec::new(), Vec::new());
    for _ in 0..count {
        let id = SandboxId::generate();
        let spec = SandboxSpec {
            id: id.clone(),
            hostname: "bench".into(),
            layers: vec![rootfs.clone()],
            reuse_disk: false,
            state_dir: states.path().join(id.as_str()),
            envd_bin: envd.clone(),
            interpreter_bin: None,
            resources: Resources::default(),
            network: None,
        };
        let state_dir = spec.state_dir.clone();
        let t = Instant::now();
        driver.create(spec).await?;
        creates.push(t.elapsed());
        let t = Instant::now();
        driver.kill(&id, &state_dir).await?;
        kills.push(t.elapsed());
    }
    // The parent cgroup of this run is empty now.
    for dir in driver.cgroup_dirs(&SandboxId::generate()) {
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    report("create", creates);
    report("kill", kills);
    Ok(())
}
