//! `paddock api`: the control plane of a cluster. The E2B REST API on `--listen`; nodes and
//! proxies join and talk to it on `--cluster-listen` (gRPC, mutual TLS with the cluster's CA,
//! made in the data dir on first start together with the join token it prints). Sandboxes run
//! on the nodes that joined; they outlive a restart of the control plane.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use paddock_cluster_tls::{CertRequest, ClusterCa, JoinToken, MemberId, PeerIdentity, Role};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Flags of `paddock api`.
#[derive(Args)]
pub struct ApiArgs {
    /// Where the control plane keeps its state: the database, the cluster's CA (`cluster/`),
    /// `join-token`, `admin-token`, `api-key`, and the template catalog (`catalog/`).
    #[arg(long, default_value = "/var/lib/paddock-api")]
    data_dir: PathBuf,
    /// Where the catalog of the cluster's templates and a copy of every layer are kept
    /// (default `<data-dir>/catalog`); templates survive the loss of the nodes that had them.
    #[arg(long)]
    catalog_dir: Option<PathBuf>,
    /// Address of the E2B REST API.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Address nodes and proxies join and talk to (gRPC over mutual TLS).
    #[arg(long, default_value = "0.0.0.0:3010")]
    cluster_listen: SocketAddr,
    /// Domain returned to SDKs for `<port>-<sandboxID>.<domain>` hosts (the edge proxy's).
    #[arg(long)]
    domain: Option<String>,
    /// The edge proxy's URL as browsers reach it (`E2B_SANDBOX_URL`, e.g.
    /// `https://sandbox.example.com`): the web dashboard's terminal talks to envd through it.
    /// Default `https://api.<domain>` with `--tls-cert` (a name under the wildcard), else
    /// `http://<domain>`.
    #[arg(long, env = "PADDOCK_SANDBOX_URL")]
    sandbox_url: Option<String>,
    /// Do not build the templates every server provides (`code-interpreter-v1`, built in the
    /// background from its first start after `base`, and rebuilt when its recipe changes).
    #[arg(long, env = "PADDOCK_NO_SYSTEM_TEMPLATES")]
    no_system_templates: bool,
    /// API key accepted for the default team (generated and kept in the data dir when unset).
    #[arg(long, env = "PADDOCK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Token of E2B's admin routes (`X-Admin-Token`); generated into `<data-dir>/admin-token`
    /// when unset.
    #[arg(long, env = "PADDOCK_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Seconds a node may stay silent before it is removed and its sandboxes are reported
    /// lost (it is `unhealthy`, taking no creates, after 10 s already).
    #[arg(long, default_value_t = 120, value_parser = super::serve::at_least_one_u64())]
    node_lost_after: u64,
    /// HTTPS on the REST listener.
    #[command(flatten)]
    tls: super::listen::TlsArgs,
    /// Slow-client limits of the REST listener.
    #[command(flatten)]
    limits: super::listen::ListenArgs,
}

/// The admin token: the flag, else the one kept in `<data_dir>/admin-token` (made on first use,
/// 0600). Returns it and whether it was made now.
fn admin_token(data_dir: &Path, explicit: Option<String>) -> anyhow::Result<(String, bool)> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(t) = explicit.filter(|t| !t.is_empty()) {
        return Ok((t, false));
    }
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = format!("pdk_admin_{}", hex::encode(rand::random::<[u8; 24]>()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    Ok((token, true))
}

/// Runs `paddock api` until SIGTERM or SIGINT.
pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    let tls = args.tls.load()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .context("resolving the data dir")?;
    let cluster_dir = data_dir.join("cluster");
    let (ca, _) = ClusterCa::load_or_create(&cluster_dir).context("the cluster's CA")?;
    let (token, new_token) =
        JoinToken::load_or_create(&data_dir, ca.cert()).context("the join token")?;
    let (admin, new_admin) = admin_token(&data_dir, args.admin_token.clone())?;
    let mut own = CertRequest::new(PeerIdentity::new(Role::Api, MemberId::new("api")?));
    if !args.cluster_listen.ip().is_unspecified() {
        own = own.ip_address(args.cluster_listen.ip());
    }
    let identity = ca
        .issue_member(&own)
        .context("the control plane's certificate")?;
    let cluster_id = ca.cert().fingerprint().to_string()[..16].to_string();

    let nodes = paddock_cluster::NodeSet::default();
    let catalog_dir = args
        .catalog_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("catalog"));
    let catalog = paddock_cluster::DirCatalog::open(&catalog_dir)
        .with_context(|| format!("opening the template catalog in {}", catalog_dir.display()))?;
    nodes.set_catalog(Arc::new(catalog));
    let control = paddock_api::ControlPlane::open(
        paddock_api::ApiConfig {
            domain: args.domain.clone(),
            admin_token: Some(admin),
            keep_sandboxes_on_shutdown: true,
            system_templates: !args.no_system_templates,
            // Over TLS the edge proxy answers under the wildcard certificate as `api.<domain>`.
            sandbox_url: args.sandbox_url.clone().or_else(|| {
                tls.as_ref()
                    .and(args.domain.as_ref())
                    .map(|d| format!("https://api.{d}"))
            }),
            ..paddock_api::ApiConfig::new(&data_dir)
        },
        Arc::new(nodes.clone()),
    )
    .await
    .context("opening the control plane")?;
    // No reconcile here: each node reconciles when it registers, and records no node holds
    // are settled once nodes had time to come back (see ClusterService::run).
    let (api_key, generated) = control
        .ensure_api_key(args.api_key.clone())
        .await
        .context("setting up the API key")?;

    let service = Arc::new(
        paddock_api::cluster::service::ClusterService::new(
            ca,
            token.clone(),
            identity.clone(),
            control.clone(),
            nodes,
            cluster_id,
        )
        .with_lost_after(std::time::Duration::from_secs(args.node_lost_after)),
    );
    let api_listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let cluster_listener = TcpListener::bind(args.cluster_listen)
        .await
        .with_context(|| format!("listening on {}", args.cluster_listen))?;
    let (api_addr, cluster_addr) = (api_listener.local_addr()?, cluster_listener.local_addr()?);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let background = tokio::spawn({
        let control = control.clone();
        let rx = stop_rx.clone();
        async move {
            tokio::select! {
                _ = control.run_background() => {}
                _ = stopped(rx) => {}
            }
        }
    });
    let health = tokio::spawn(Arc::clone(&service).run(stop_rx.clone()));
    let cluster = tokio::spawn(paddock_cluster_rpc::serve(
        cluster_listener,
        identity,
        service,
        stopped(stop_rx.clone()),
    ));
    let limits = args.limits.limits(args.limits.max_connections);
    super::listen::reload_on_sighup(tls.as_ref())?;
    let https = tls.is_some();
    let api = tokio::spawn({
        let (control, rx) = (control.clone(), stop_rx.clone());
        async move { super::listen::serve_api(api_listener, limits, tls, &control, rx).await }
    });

    if generated {
        eprintln!(
            "paddock: generated an API key and saved it in {}",
            data_dir.join("api-key").display()
        );
    }
    if new_admin {
        eprintln!(
            "paddock: generated an admin token and saved it in {}",
            data_dir.join("admin-token").display()
        );
    }
    if new_token {
        eprintln!(
            "paddock: nodes and proxies join with this token (kept in {}):",
            data_dir.join("join-token").display()
        );
        eprintln!("{}", token.reveal());
    }
    for (name, value) in super::listen::sdk_exports(api_addr, None, args.domain.as_deref(), https) {
        println!("export {name}={value}");
    }
    println!("export E2B_API_KEY={api_key}");
    eprintln!(
        "paddock: control plane ready (api {api_addr}, cluster {cluster_addr}, data {})",
        data_dir.display()
    );

    super::serve::wait_for_signal().await?;
    eprintln!("paddock: shutting down (sandboxes keep running on their nodes)");
    let _ = stop_tx.send(true);
    control.shutdown().await;
    let _ = background.await;
    let _ = health.await;
    api.await.context("api task")?.context("api server")?;
    // Nodes and proxies keep their connections open; the graceful end waits for them only so
    // long.
    match tokio::time::timeout(std::time::Duration::from_secs(5), cluster).await {
        Ok(served) => served.context("cluster task")?.context("cluster service")?,
        Err(_) => tracing::info!("closing the cluster port with members still connected"),
    }
    eprintln!("paddock: stopped");
    Ok(())
}
