//! `paddock node`: a host that runs sandboxes for a cluster's control plane. It joins with the
//! token once (then authenticates with its certificate), serves on one mutual-TLS listener
//! both the node gRPC service (ALPN `h2`, for the control plane only) and the node-local hop
//! for sandbox traffic (ALPN `http/1.1`, for the edge proxy), registers with the control plane
//! and reports its load every second.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use paddock_cluster_rpc::{proto, ClusterClient};
use paddock_cluster_tls::{ClientAuth, Role};
use paddock_node::{LocalNode, Node};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Flags of `paddock node`.
#[derive(Args)]
pub struct NodeArgs {
    /// Where the node keeps its state: sandboxes, templates, its cluster identity.
    #[arg(long, default_value = "/var/lib/paddock-node")]
    data_dir: PathBuf,
    /// The control plane's cluster address (`paddock api --cluster-listen`).
    #[arg(long)]
    join: SocketAddr,
    /// File holding the join token (needed only for the first start).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The node's id in the cluster (default: a stable id kept in the data dir).
    #[arg(long)]
    name: Option<String>,
    /// Where the node serves the control plane and the edge proxy.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The address the others reach `--listen` at (default: the listen address).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// vCPUs placement may give sandboxes per CPU of the host.
    #[arg(long, default_value_t = 16)]
    cpu_overcommit: u32,
    /// Memory placement may give sandboxes, as a multiple of the host's memory.
    #[arg(long, default_value_t = 4)]
    memory_overcommit: u64,
    /// Where to serve `GET /metrics` (gRPC call durations, Prometheus text format; no key:
    /// bind it where only the scraper reaches it). Default: not served.
    #[arg(long, env = "PADDOCK_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// The host's sandbox settings (as for `serve`).
    #[command(flatten)]
    host: super::host::HostArgs,
}

/// What `/proc` and `statvfs` say about the host.
#[derive(Debug, Default, Clone)]
struct HostStats {
    cpus: u32,
    load: f64,
    mem_total: u64,
    mem_used: u64,
    disk_total: u64,
    disk_used: u64,
    /// Mount point, device and filesystem type of the data dir's filesystem.
    disk: (String, String, String),
    /// Huge pages: total, free, reserved, page size in bytes.
    huge_pages: (u64, u64, u64, u64),
}

/// The mount (point, device, filesystem type) in `mountinfo` (`/proc/self/mountinfo`'s text)
/// that holds `path`: the one with the longest mount point above it (the last such, as later
/// mounts hide earlier ones).
fn mount_of(mountinfo: &str, path: &Path) -> Option<(String, String, String)> {
    let mut best: Option<(usize, (String, String, String))> = None;
    for line in mountinfo.lines() {
        let (left, right) = line.split_once(" - ")?;
        let point = left.split(' ').nth(4)?.replace("\\040", " ");
        let mut r = right.split(' ');
        let (fstype, device) = (r.next()?, r.next()?);
        if !path.starts_with(&point) {
            continue;
        }
        if best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), (point, device.to_string(), fstype.to_string())));
        }
    }
    best.map(|(_, m)| m)
}

/// The number after `name` (e.g. `MemTotal:`) in `meminfo` (`/proc/meminfo`'s text); 0 when
/// it is not there.
fn meminfo_field(meminfo: &str, name: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
}

/// The huge page pool in `meminfo` (`/proc/meminfo`'s text): total, free, reserved (pages)
/// and the page size (bytes).
fn huge_pages(meminfo: &str) -> (u64, u64, u64, u64) {
    let field = |name: &str| meminfo_field(meminfo, name);
    (
        field("HugePages_Total:"),
        field("HugePages_Free:"),
        field("HugePages_Rsvd:"),
        field("Hugepagesize:") * 1024,
    )
}

fn host_stats(data_dir: &Path) -> HostStats {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|l| l.parse::<f64>().ok())
        })
        .map_or(0.0, |l| (l / f64::from(cpus)).clamp(0.0, 1.0));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    // In kB.
    let field = |name: &str| meminfo_field(&meminfo, name) * 1024;
    let (mem_total, mem_available) = (field("MemTotal:"), field("MemAvailable:"));
    let (disk_total, disk_used) = nix::sys::statvfs::statvfs(data_dir)
        .map(|s| {
            let frag = s.fragment_size();
            let total = s.blocks() * frag;
            (total, total.saturating_sub(s.blocks_free() * frag))
        })
        .unwrap_or((0, 0));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    HostStats {
        cpus,
        load,
        mem_total,
        mem_used: mem_total.saturating_sub(mem_available),
        disk_total,
        disk_used,
        disk: mount_of(&mountinfo, data_dir).unwrap_or_default(),
        huge_pages: huge_pages(&meminfo),
    }
}

fn machine_info() -> proto::MachineInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    proto::MachineInfo {
        cpu_family: field("cpu family"),
        cpu_model: field("model"),
        cpu_model_name: field("model name"),
        cpu_architecture: std::env::consts::ARCH.to_string(),
    }
}

/// Registers, then reports every second; registers again when the control plane does not
/// know the node (it restarted) and keeps trying while it cannot be reached.
async fn registration(
    client: ClusterClient,
    node: Arc<LocalNode>,
    reg: proto::Registration,
    data_dir: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    let mut registered = false;
    let mut wait = Duration::from_millis(200);
    loop {
        if *stop.borrow() {
            return;
        }
        if !registered {
            match client.register(reg.clone()).await {
                Ok(r) => {
                    tracing::info!(cluster = %r.cluster_id, "registered with the control plane");
                    registered = true;
                    wait = Duration::from_secs(1);
                }
                Err(s) => {
                    tracing::warn!(error = %s.message(), "registering with the control plane failed");
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        } else {
            let stats = host_stats(&data_dir);
            let live = node.live().await;
            let warm_templates = node
                .pool_stats()
                .pools
                .into_iter()
                .filter(|p| p.ready > 0)
                .map(|p| p.template.to_string())
                .collect();
            let count = live.len() as u32;
            let d = paddock_domain::Resources::default();
            let report = proto::NodeReport {
                sandbox_count: count,
                starting_count: 0,
                allocated_cpus: count.saturating_mul(d.cpu_count),
                allocated_memory_mb: u64::from(count) * d.memory_mb,
                allocated_disk_mb: u64::from(count) * d.disk_mb,
                cpu_load: stats.load,
                memory_load: if stats.mem_total == 0 {
                    0.0
                } else {
                    stats.mem_used as f64 / stats.mem_total as f64
                },
                memory_used_bytes: stats.mem_used,
                memory_total_bytes: stats.mem_total,
                disk_used_bytes: stats.disk_used,
                disk_total_bytes: stats.disk_total,
                create_successes: 0,
                create_fails: 0,
                sandboxes: live.iter().map(ToString::to_string).collect(),
                cpu_count: stats.cpus,
                disk_mount_point: stats.disk.0.clone(),
                disk_device: stats.disk.1.clone(),
                disk_filesystem_type: stats.disk.2.clone(),
                huge_pages_total: stats.huge_pages.0,
                huge_pages_free: stats.huge_pages.1,
                huge_pages_reserved: stats.huge_pages.2,
                huge_page_size_bytes: stats.huge_pages.3,
                warm_templates,
            };
            match client.report(report).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {
                    tracing::warn!("the control plane does not know this node; registering again");
                    registered = false;
                    continue;
                }
                Err(s) => {
                    tracing::warn!(error = %s.message(), "reporting to the control plane failed")
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Runs `paddock node` until SIGTERM or SIGINT.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .context("resolving the data dir")?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let advertise = args.advertise.unwrap_or(listener.local_addr()?);
    anyhow::ensure!(
        !advertise.ip().is_unspecified(),
        "--listen {} is not an address the others can reach: pass --advertise",
        args.listen
    );
    let id = super::member::member_id(&data_dir, Role::Node, args.name.as_deref())?;
    let ips: Vec<IpAddr> = vec![advertise.ip()];
    let identity = super::member::identity(
        &data_dir,
        Role::Node,
        &id,
        args.join,
        args.token_file.as_deref(),
        &ips,
    )
    .await?;

    let host = super::host::start(&args.host, &data_dir, super::host::BaseSource::Cluster).await?;
    let node = host.node.clone();
    let hop = paddock_proxy::Proxy::new(
        Arc::new(super::host::NodeDirectory {
            node: node.clone(),
            control: None,
        }),
        paddock_proxy::ProxyConfig::default(),
    );

    // One listener, two protocols: gRPC (h2) for the control plane, the hop (http/1.1) for
    // the edge proxy (and the control plane).
    let mut tls = paddock_cluster_tls::server_config(&identity, ClientAuth::Required)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), paddock_proxy::HOP_ALPN.to_vec()];
    let (mut incoming, accept) =
        paddock_node_grpc::incoming(listener, tls, identity.ca().clone(), 4096, |peer| {
            peer.is_some_and(|p| matches!(p.role, Role::Api | Role::Proxy))
        });
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let metrics = super::listen::spawn_metrics(args.metrics_listen, stop_rx.clone()).await?;
    let (grpc_tx, grpc_rx) = mpsc::channel(64);
    let dispatch = tokio::spawn({
        let hop = hop.clone();
        let rx = stop_rx.clone();
        async move {
            use tokio_stream::StreamExt as _;
            while let Some(conn) = incoming.next().await {
                let Ok(conn) = conn else { continue };
                let role = conn.peer().identity.as_ref().map(|p| p.role);
                if conn.alpn() == Some(paddock_proxy::HOP_ALPN) {
                    let (hop, rx) = (hop.clone(), rx.clone());
                    tokio::spawn(async move { hop.serve_connection(conn, stopped(rx)).await });
                } else if role == Some(Role::Api) {
                    if grpc_tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                } else {
                    tracing::warn!(peer = ?conn.peer().identity, "refused a gRPC connection from a member that is not the control plane");
                }
            }
        }
    });
    let build_files = paddock_node_grpc::BuildFiles::new(data_dir.join("build-files"));
    let grpc = tokio::spawn(paddock_node_grpc::serve_incoming(
        node.clone() as Arc<dyn Node>,
        tokio_stream::wrappers::ReceiverStream::new(grpc_rx),
        Some(build_files.clone()),
        stopped(stop_rx.clone()),
    ));
    // COPY archives no build asked for in a week go (a build that needs one sends it again).
    let sweeper = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            every.tick().await;
            match build_files
                .sweep(paddock_node_grpc::build_files::BUILD_FILES_KEPT)
                .await
            {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(files = n, "removed COPY archives no build used for a week")
                }
                Err(e) => tracing::warn!(error = %e, "sweeping COPY archives failed"),
            }
        }
    });

    let stats = host_stats(&data_dir);
    let registration_task = tokio::spawn(registration(
        ClusterClient::new(args.join, &identity)?,
        node.clone(),
        proto::Registration {
            advertise: advertise.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            commit: option_env!("PADDOCK_COMMIT")
                .unwrap_or("unknown")
                .to_string(),
            capacity: Some(proto::Capacity {
                cpus: stats.cpus.saturating_mul(args.cpu_overcommit),
                memory_mb: (stats.mem_total >> 20).saturating_mul(args.memory_overcommit),
                disk_mb: stats.disk_total >> 20,
                max_sandboxes: u32::try_from(args.host.max_sandboxes).unwrap_or(u32::MAX),
            }),
            labels: Default::default(),
            machine: Some(machine_info()),
            instance_id: hex::encode(rand::random::<[u8; 8]>()),
        },
        data_dir.clone(),
        stop_rx.clone(),
    ));
    eprintln!(
        "paddock: node {} ready (serving on {advertise}, control plane {}, data {})",
        id.as_str(),
        args.join,
        data_dir.display()
    );

    super::serve::wait_for_signal().await?;
    eprintln!("paddock: node shutting down, stopping sandboxes");
    let _ = stop_tx.send(true);
    drop(accept);
    dispatch.abort();
    sweeper.abort();
    hop.close_tunnels();
    let _ = registration_task.await;
    node.shutdown().await;
    if let Some(net) = &host.network {
        net.shutdown().await;
    }
    // The control plane keeps its connection open; gRPC's graceful end waits for it only so
    // long.
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc).await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    eprintln!("paddock: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_dirs_filesystem_and_the_huge_page_pool() {
        let mountinfo = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /var/lib rw shared:2 - xfs /dev/vdb rw
31 30 0:27 / /var/lib/paddock-node/sandboxes rw - tmpfs tmpfs rw
";
        let m = |p: &str| mount_of(mountinfo, Path::new(p));
        assert_eq!(
            m("/var/lib/paddock-node"),
            Some(("/var/lib".into(), "/dev/vdb".into(), "xfs".into()))
        );
        assert_eq!(
            m("/srv/node"),
            Some(("/".into(), "/dev/vda".into(), "ext4".into()))
        );
        assert_eq!(
            m("/var/library").map(|x| x.0),
            Some("/".into()),
            "by path components, not by text"
        );
        let meminfo = "MemTotal: 100 kB\nHugePages_Total:      16\nHugePages_Free:        4\nHugePages_Rsvd:        2\nHugepagesize:       2048 kB\n";
        assert_eq!(huge_pages(meminfo), (16, 4, 2, 2 << 20));
        assert_eq!(huge_pages("MemTotal: 1 kB\n"), (0, 0, 0, 0));
    }
}
