//! `paddock serve`: the control plane, one node and the proxy in one process, with embedded
//! defaults (SQLite under the data dir, the namespace runtime, the `base` template built on first
//! start). Prints the three `export` lines for the SDKs once ready; SIGTERM/SIGINT stop every
//! sandbox and exit cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use paddock_node::Node;
use tokio::net::TcpListener;

use super::host::{NetworkMode, NodeDirectory};
use tokio::sync::watch;

/// Flags of `paddock serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Where state lives: the database, sandboxes' writable layers, templates, the API key.
    #[arg(long, default_value = "/var/lib/paddock")]
    data_dir: PathBuf,
    /// The node's own settings (templates, envd, networking, warm pools, limits).
    #[command(flatten)]
    pub(crate) node: super::host::HostArgs,
    /// Address of the E2B REST API.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Address of the sandbox traffic proxy (envd and every port of every sandbox).
    #[arg(long, default_value = "127.0.0.1:3002")]
    proxy_listen: SocketAddr,
    /// Domain returned to SDKs for `<port>-<sandboxID>.<domain>` hosts (default
    /// `localhost:<proxy port>` when the proxy listens on loopback).
    #[arg(long)]
    domain: Option<String>,
    /// Most sandbox creates in flight at once on this node (starts from disk included); more get
    /// 429 with `Retry-After` at once. Admitted creates wait their turn in the node's start
    /// queue (a few start at a time), so this bounds that queue. Default: 64 per CPU, at least
    /// 128.
    #[arg(long, env = "PADDOCK_MAX_CONCURRENT_CREATES", value_parser = at_least_one())]
    max_concurrent_creates: Option<usize>,
    /// Most sandbox creates in flight at once for one team; more get 429 with `Retry-After`.
    /// Default: half of `--max-concurrent-creates`, but at least 20 (a whole fork) when that
    /// allows it.
    #[arg(long, env = "PADDOCK_MAX_CONCURRENT_CREATES_PER_TEAM", value_parser = at_least_one())]
    max_concurrent_creates_per_team: Option<usize>,
    /// Token of E2B's admin routes (`X-Admin-Token`: `GET /nodes`, ...); without one they
    /// answer 401.
    #[arg(long, env = "PADDOCK_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Do not build the templates every server provides (`code-interpreter-v1`, built in the
    /// background from its first start after `base`, and rebuilt when its recipe changes).
    #[arg(long, env = "PADDOCK_NO_SYSTEM_TEMPLATES")]
    no_system_templates: bool,
    /// API key accepted for the default team (generated and kept in the data dir when unset).
    #[arg(long, env = "PADDOCK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Slow-client limits of the API and proxy listeners.
    #[command(flatten)]
    pub(crate) limits: super::listen::ListenArgs,
    /// HTTPS on the API and the proxy (one certificate for both).
    #[command(flatten)]
    pub(crate) tls: super::listen::TlsArgs,
    /// Let webhooks reach any address, loopback, link-local, private networks and the sandbox
    /// pool included (by default only globally routable addresses are delivered to). For tests
    /// and trusted single-user setups.
    #[arg(long, env = "PADDOCK_WEBHOOK_ALLOW_PRIVATE")]
    webhook_allow_private: bool,
    /// An address range webhooks may reach although it is not globally routable, e.g. the LAN
    /// of a receiver (repeatable or comma-separated). Never opens the sandbox pool.
    #[arg(
        long = "webhook-allow-cidr",
        value_name = "CIDR",
        env = "PADDOCK_WEBHOOK_ALLOW_CIDR",
        value_delimiter = ','
    )]
    webhook_allow_cidrs: Vec<paddock_node::Cidr>,
}

/// Parses a limit that must be at least 1.
pub(crate) fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// Parses a number of seconds that must be at least 1.
pub(crate) fn at_least_one_u64() -> clap::builder::RangedU64ValueParser<u64> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// Descriptors kept out of the listeners' reach: the process itself (store, templates, logs,
/// runtime), per sandbox (sockets to envd and the forwarder, pidfd, cgroup and log files, pool
/// connections) and, with NAT networking, the egress proxy (two per proxied connection, at
/// most 4096 connections: `MAX_CONNECTIONS` in crates/network/src/egress.rs).
fn descriptor_reserve(args: &ServeArgs) -> u64 {
    const BASE: u64 = 1024;
    // Measured: 3.1 per running sandbox (its network namespace, envd connections in the proxy's
    // pool, the shim's pipes); doubled for headroom.
    const PER_SANDBOX: u64 = 6;
    const EGRESS: u64 = 2 * 4096;
    let sandboxes = u64::try_from(args.node.max_sandboxes).unwrap_or(u64::MAX);
    let egress = if args.node.network == NetworkMode::Nat {
        EGRESS
    } else {
        0
    };
    BASE.saturating_add(PER_SANDBOX.saturating_mul(sandboxes))
        .saturating_add(egress)
}

/// The slow-client limits of the API and the proxy listeners, their caps fitted into the
/// descriptors left after [`descriptor_reserve`] (a quarter for the API, the rest for the
/// proxy, which carries every sandbox's traffic).
fn listener_limits(
    args: &ServeArgs,
    budget: paddock_proxy::listener::DescriptorBudget,
) -> (
    paddock_proxy::listener::Limits,
    paddock_proxy::listener::Limits,
) {
    let limits = |share: f64| {
        args.limits
            .limits(budget.cap(args.limits.max_connections, share))
    };
    (limits(0.25), limits(0.75))
}

/// `--max-concurrent-creates` and `--max-concurrent-creates-per-team`, defaults filled in.
fn admission_limits(args: &ServeArgs) -> paddock_api::AdmissionLimits {
    let defaults = match args.max_concurrent_creates {
        Some(node) => paddock_api::AdmissionLimits::with_node(node),
        None => paddock_api::AdmissionLimits::default(),
    };
    paddock_api::AdmissionLimits {
        per_team: args
            .max_concurrent_creates_per_team
            .unwrap_or(defaults.per_team),
        ..defaults
    }
}

/// Where webhooks may be delivered: `--webhook-allow-private`, `--webhook-allow-cidr`, and
/// the sandbox network pool always refused otherwise.
fn webhook_destinations(
    args: &ServeArgs,
    pool: paddock_node::Cidr,
) -> paddock_api::WebhookDestinations {
    paddock_api::WebhookDestinations {
        allow_private: args.webhook_allow_private,
        allowed: args.webhook_allow_cidrs.clone(),
        sandbox_pool: vec![pool],
    }
}

/// Runs `paddock serve` until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Before anything starts: a bad certificate is a quick, clear failure.
    let tls = args.tls.load()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .context("resolving the data dir")?;
    let host = super::host::start(&args.node, &data_dir, super::host::BaseSource::Build).await?;
    let (node, network, sandbox_pool) = (host.node, host.network, host.sandbox_pool);

    let (api_key, generated) = paddock_api::ensure_api_key(&data_dir, args.api_key.clone())
        .await
        .context("setting up the API key")?;
    let domain = args.domain.clone().or_else(|| {
        args.proxy_listen
            .ip()
            .is_loopback()
            .then(|| format!("localhost:{}", args.proxy_listen.port()))
    });
    let control = paddock_api::ControlPlane::open(
        paddock_api::ApiConfig {
            data_dir: data_dir.clone(),
            domain: domain.clone(),
            admission: admission_limits(&args),
            webhook_destinations: webhook_destinations(&args, sandbox_pool),
            build_upload_limit: paddock_api::MAX_BUILD_UPLOAD_BYTES,
            admin_token: args.admin_token.clone(),
            keep_sandboxes_on_shutdown: false,
            system_templates: !args.no_system_templates,
            // The proxy's address for the dashboard's browser: over TLS, a name under the
            // wildcard certificate (`api.<domain>` on the proxy's port: not a sandbox host, so
            // the proxy routes by the headers the dashboard sends), else the listen address.
            sandbox_url: Some(match (&tls, &domain) {
                (Some(_), Some(d)) => format!("https://api.{d}"),
                (Some(_), None) => format!("https://{}", args.proxy_listen),
                (None, _) => format!("http://{}", args.proxy_listen),
            }),
        },
        node.clone() as Arc<dyn Node>,
    )
    .await
    .context("opening the control plane")?;
    control
        .reconcile()
        .await
        .context("reconciling sandboxes after start")?;

    // Sandboxes keep the limits the server started with; the raise is for its own listeners.
    paddock_sandbox::namespace::keep_sandbox_nofile();
    let nofile = paddock_proxy::listener::raise_nofile().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "raising the open-files limit failed");
        1024
    });
    let budget = paddock_proxy::listener::DescriptorBudget {
        nofile,
        reserve: descriptor_reserve(&args),
    };
    let (api_limits, proxy_limits) = listener_limits(&args, budget);
    if budget.for_listeners() < 2 * paddock_proxy::listener::MIN_CONNECTIONS as u64 {
        eprintln!(
            "paddock: WARNING: the open-files limit ({nofile}) leaves almost nothing for client              connections after {} kept for sandboxes; raise it (ulimit -Hn, LimitNOFILE=) or              lower --max-sandboxes",
            budget.reserve
        );
    }
    tracing::info!(
        nofile,
        reserve = budget.reserve,
        api = api_limits.max_connections,
        proxy = proxy_limits.max_connections,
        "connection caps"
    );
    let api_listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let proxy_listener = TcpListener::bind(args.proxy_listen)
        .await
        .with_context(|| format!("listening on {}", args.proxy_listen))?;
    let api_addr = api_listener.local_addr()?;
    let proxy_addr = proxy_listener.local_addr()?;

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
    super::listen::reload_on_sighup(tls.as_ref())?;
    let api = tokio::spawn({
        let (control, rx, tls) = (control.clone(), stop_rx.clone(), tls.clone());
        async move { super::listen::serve_api(api_listener, api_limits, tls, &control, rx).await }
    });
    let proxy = tokio::spawn({
        let dir: Arc<dyn paddock_proxy::SandboxDirectory> = Arc::new(NodeDirectory {
            node: node.clone(),
            control: Some(control.clone()),
        });
        let rx = stop_rx.clone();
        let proxy = paddock_proxy::Proxy::new(
            dir,
            paddock_proxy::ProxyConfig {
                limits: proxy_limits,
                ..paddock_proxy::ProxyConfig::default()
            },
        );
        let tls = tls.clone();
        async move {
            proxy
                .serve_tls(proxy_listener, tls.as_ref(), stopped(rx))
                .await
        }
    });

    if generated {
        eprintln!(
            "paddock: generated an API key and saved it in {}",
            data_dir.join("api-key").display()
        );
    }
    let https = tls.is_some();
    if let (true, Some(d)) = (https, args.domain.as_deref()) {
        if d == super::listen::domain_host(d) && proxy_addr.port() != 443 {
            eprintln!(
                "paddock: note: --domain {d} has no port: SDKs reach sandboxes on port 443, \
                 the proxy listens on {}",
                proxy_addr.port()
            );
        }
    }
    let exports =
        super::listen::sdk_exports(api_addr, Some(proxy_addr), args.domain.as_deref(), https);
    for (name, value) in exports {
        println!("export {name}={value}");
    }
    println!("export E2B_API_KEY={api_key}");
    eprintln!(
        "paddock: ready (api {api_addr}, proxy {proxy_addr}{}, data {})",
        if https { ", HTTPS" } else { "" },
        data_dir.display()
    );

    wait_for_signal().await?;
    eprintln!("paddock: shutting down, stopping sandboxes");
    let _ = stop_tx.send(true);
    control.shutdown().await;
    if let Some(net) = &network {
        net.shutdown().await;
    }
    let _ = background.await;
    api.await.context("api task")?.context("api server")?;
    proxy.await.context("proxy task")?.context("proxy server")?;
    eprintln!("paddock: stopped");
    Ok(())
}

pub(crate) async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn limits(flags: &[&str]) -> Result<paddock_api::AdmissionLimits, clap::Error> {
        let argv = std::iter::once("serve").chain(flags.iter().copied());
        Cli::try_parse_from(argv).map(|cli| admission_limits(&cli.serve))
    }

    fn listeners(
        flags: &[&str],
        budget: paddock_proxy::listener::DescriptorBudget,
    ) -> (
        paddock_proxy::listener::Limits,
        paddock_proxy::listener::Limits,
    ) {
        let argv = std::iter::once("serve").chain(flags.iter().copied());
        let cli = Cli::try_parse_from(argv).expect("flags");
        listener_limits(&cli.serve, budget)
    }

    #[test]
    fn listener_caps_fit_the_descriptor_budget() {
        use paddock_proxy::listener::{DescriptorBudget, DEFAULT_MAX_CONNECTIONS};
        let roomy = DescriptorBudget {
            nofile: 1 << 20,
            reserve: 30_000,
        };
        let (api, proxy) = listeners(&[], roomy);
        assert_eq!(api.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(proxy.max_per_ip, DEFAULT_MAX_CONNECTIONS / 2);
        assert_eq!(api.header_timeout, std::time::Duration::from_secs(10));
        // Short of descriptors: the listeners together stay within what the reserve leaves.
        let tight = DescriptorBudget {
            nofile: 34_000,
            reserve: 30_000,
        };
        let (api, proxy) = listeners(&["--max-connections-per-ip", "5000"], tight);
        assert!(api.max_connections + proxy.max_connections <= 4_000);
        assert!(proxy.max_per_ip <= proxy.max_connections);
        let (api, _) = listeners(
            &["--max-connections", "100", "--header-timeout", "2"],
            roomy,
        );
        assert_eq!((api.max_connections, api.max_per_ip), (100, 50));
        assert_eq!(api.header_timeout, std::time::Duration::from_secs(2));
        let argv = ["serve", "--header-timeout", "0"];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn admission_flags_and_their_defaults() {
        assert_eq!(
            limits(&[]).expect("defaults"),
            paddock_api::AdmissionLimits::default()
        );
        let node_only = limits(&["--max-concurrent-creates", "6"]).expect("node");
        assert_eq!((node_only.node, node_only.per_team), (6, 6));
        let both = limits(&[
            "--max-concurrent-creates",
            "64",
            "--max-concurrent-creates-per-team",
            "3",
        ])
        .expect("both");
        assert_eq!((both.node, both.per_team), (64, 3));
        assert!(limits(&["--max-concurrent-creates", "0"]).is_err());
        assert!(limits(&["--max-concurrent-creates-per-team", "0"]).is_err());
    }

    #[test]
    fn webhook_destination_flags() {
        let parse = |flags: &[&str]| {
            let argv = std::iter::once("serve").chain(flags.iter().copied());
            Cli::try_parse_from(argv)
        };
        let pool: paddock_node::Cidr = "10.213.0.0/16".parse().expect("cidr");
        let loopback = "127.0.0.1".parse().expect("ip");
        let default = webhook_destinations(&parse(&[]).expect("defaults").serve, pool);
        assert!(default.check(loopback).is_err(), "refused by default");
        assert!(default.check("10.213.0.2".parse().expect("ip")).is_err());
        let cli = parse(&["--webhook-allow-cidr", "127.0.0.1/32,192.168.0.0/16"]).expect("cidrs");
        let some = webhook_destinations(&cli.serve, pool);
        assert_eq!(some.check(loopback), Ok(()));
        assert_eq!(some.check("192.168.3.4".parse().expect("ip")), Ok(()));
        assert!(some.check("169.254.169.254".parse().expect("ip")).is_err());
        let cli = parse(&["--webhook-allow-private"]).expect("flag");
        assert_eq!(
            webhook_destinations(&cli.serve, pool).check(loopback),
            Ok(())
        );
        assert!(parse(&["--webhook-allow-cidr", "localhost"]).is_err());
    }
}
