//! `paddock proxy`: the edge proxy of a cluster, the address the SDKs reach for sandbox
//! traffic (`E2B_SANDBOX_URL`). It joins like a node (as role `proxy`), learns where each
//! sandbox runs from the control plane's announcements as sandboxes start (`Watch`) or by
//! asking (`Locate`), cached briefly, and passes the traffic, streaming and
//! WebSocket included, to that node's hop over mutual TLS; traffic for a paused sandbox asks
//! the control plane to wake it (`autoResume`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use paddock_cluster_rpc::{proto, ClusterClient};
use paddock_cluster_tls::{ExpectedPeer, MemberId, MemberIdentity, PeerIdentity, Role};
use paddock_domain::SandboxId;
use paddock_proxy::{LocateError, LocateFuture, Located, Locator, NodeHop};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Flags of `paddock proxy`.
#[derive(Args)]
pub struct ProxyArgs {
    /// Where the proxy keeps its cluster identity.
    #[arg(long, default_value = "/var/lib/paddock-proxy")]
    data_dir: PathBuf,
    /// Address the SDKs reach for sandbox traffic.
    #[arg(long, default_value = "127.0.0.1:3002")]
    listen: SocketAddr,
    /// The control plane's cluster address (`paddock api --cluster-listen`).
    #[arg(long)]
    join: SocketAddr,
    /// File holding the join token (needed only for the first start).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The proxy's id in the cluster (default: a stable id kept in the data dir).
    #[arg(long)]
    name: Option<String>,
    /// Slow-client limits of the listener.
    #[command(flatten)]
    limits: super::listen::ListenArgs,
    /// HTTPS on the listener (a certificate for `*.<domain>`, the api's `--domain`).
    #[command(flatten)]
    tls: super::listen::TlsArgs,
    /// Where to serve `GET /metrics` (request durations, Prometheus text format; no key:
    /// bind it where only the scraper reaches it). Default: not served.
    #[arg(long, env = "PADDOCK_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

/// `Locate`/`Wake` over the cluster service, and the proxy's certificate for the hops.
struct GrpcLocator {
    client: ClusterClient,
    identity: MemberIdentity,
}

fn located(loc: proto::Location) -> Result<Located, LocateError> {
    use proto::location::State;
    match State::try_from(loc.state).map_err(LocateError::new)? {
        State::NotFound => Ok(Located::NotFound),
        State::Paused => Ok(Located::Paused),
        State::Running => Ok(Located::Running(NodeHop {
            addr: loc
                .node_address
                .parse()
                .map_err(|e: std::net::AddrParseError| LocateError::new(e))?,
            node_id: loc.node_id,
        })),
    }
}

impl Locator for GrpcLocator {
    fn locate<'a>(&'a self, id: &'a SandboxId) -> LocateFuture<'a> {
        Box::pin(async move { located(self.client.locate(id).await.map_err(LocateError::new)?) })
    }

    fn wake<'a>(&'a self, id: &'a SandboxId) -> LocateFuture<'a> {
        Box::pin(async move { located(self.client.wake(id).await.map_err(LocateError::new)?) })
    }

    fn hop_tls(&self, node_id: &str) -> Result<rustls::ClientConfig, LocateError> {
        let node = MemberId::new(node_id).map_err(LocateError::new)?;
        paddock_cluster_tls::client_config(
            &self.identity,
            ExpectedPeer::member(PeerIdentity::new(Role::Node, node)),
        )
        .map_err(LocateError::new)
    }
}

/// Runs `paddock proxy` until SIGTERM or SIGINT.
/// Feeds the control plane's announcements (sandboxes as they start or resume) into the
/// directory, subscribing again a second after the stream ends.
async fn take_announcements(
    client: ClusterClient,
    directory: Arc<paddock_proxy::ClusterDirectory<GrpcLocator>>,
) {
    loop {
        match client.watch().await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(a)) => {
                        let (Ok(id), Some(loc)) = (SandboxId::parse(&a.sandbox_id), a.location)
                        else {
                            continue;
                        };
                        if let Ok(located) = located(loc) {
                            tracing::trace!(sandbox_id = %id, "announced by the control plane");
                            directory.announce(&id, located);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "the control plane's announcements ended");
                        break;
                    }
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, "cannot follow the control plane's announcements")
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let tls = args.tls.load()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .context("resolving the data dir")?;
    let id = super::member::member_id(&data_dir, Role::Proxy, args.name.as_deref())?;
    let identity = super::member::identity(
        &data_dir,
        Role::Proxy,
        &id,
        args.join,
        args.token_file.as_deref(),
        &[],
    )
    .await?;
    let locator = GrpcLocator {
        client: ClusterClient::new(args.join, &identity)?,
        identity,
    };
    let watcher = locator.client.clone();
    let directory = Arc::new(paddock_proxy::ClusterDirectory::new(
        locator,
        paddock_proxy::ClusterDirectoryConfig::default(),
    ));
    let announcements = tokio::spawn(take_announcements(watcher, Arc::clone(&directory)));
    let proxy = paddock_proxy::Proxy::new(
        directory,
        paddock_proxy::ProxyConfig {
            limits: args.limits.limits(args.limits.max_connections),
            ..paddock_proxy::ProxyConfig::default()
        },
    );
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = super::listen::spawn_metrics(args.metrics_listen, stop_rx.clone()).await?;
    super::listen::reload_on_sighup(tls.as_ref())?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let serving = tokio::spawn({
        let proxy = proxy.clone();
        let mut rx = stop_rx;
        async move {
            proxy
                .serve_tls(listener, tls.as_ref(), async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        }
    });
    println!("export E2B_SANDBOX_URL={scheme}://{addr}");
    eprintln!(
        "paddock: edge proxy {} ready on {addr} (control plane {})",
        id.as_str(),
        args.join
    );
    super::serve::wait_for_signal().await?;
    let _ = stop_tx.send(true);
    announcements.abort();
    serving
        .await
        .context("proxy task")?
        .context("proxy server")?;
    if let Some(metrics) = metrics {
        metrics
            .await
            .context("metrics task")?
            .context("metrics server")?;
    }
    eprintln!("paddock: stopped");
    Ok(())
}
