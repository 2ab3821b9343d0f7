//! The node contract over real gRPC and mutual TLS on loopback: the shared fake node served
//! by `serve`, called through `GrpcNode`, must answer exactly as it does in process; only the
//! control plane's certificate gets in.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use paddock_cluster_tls::{
    CertRequest, ClusterCa, ExpectedPeer, MemberId, MemberIdentity, PeerIdentity, Role,
};
use paddock_domain::{EgressPolicy, SandboxId, TemplateName};
use paddock_node_contract::fake::FakeNode;
use paddock_node_contract::{
    CreateRequest, ErrorCode, ExitReason, MetricsRange, Node, NodeEvent, PauseMode, SandboxStatus,
};
use paddock_node_grpc::{serve, GrpcNode, ServeConfig};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn member(ca: &ClusterCa, role: Role, id: &str) -> MemberIdentity {
    let who = PeerIdentity::new(role, MemberId::new(id).expect("id"));
    ca.issue_member(&CertRequest::new(who).ip_address(LOOPBACK))
        .expect("issue")
}

struct Cluster {
    dir: tempfile::TempDir,
    ca: ClusterCa,
    node: Arc<FakeNode>,
    addr: SocketAddr,
    node_identity: MemberIdentity,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::create(dir.path()).expect("ca");
        let node_identity = member(&ca, Role::Node, "n1");
        let node = FakeNode::new();
        let listener = tokio::net::TcpListener::bind((LOOPBACK, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served: Arc<dyn Node> = node.clone();
        let mut config = ServeConfig::node(node_identity.clone());
        config.build_files = Some(paddock_node_grpc::BuildFiles::new(
            dir.path().join("node-build-files"),
        ));
        tokio::spawn(async move {
            serve(served, listener, config, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        Cluster {
            dir,
            ca,
            node,
            addr,
            node_identity,
            _stop: stop,
        }
    }

    /// A client as the control plane.
    fn api(&self) -> GrpcNode {
        let api = member(&self.ca, Role::Api, "api");
        GrpcNode::new(
            self.addr,
            &api,
            ExpectedPeer::member(self.node_identity.identity().clone()),
        )
        .expect("client")
    }
}

fn request(template: &str) -> CreateRequest {
    CreateRequest {
        id: SandboxId::generate(),
        template: TemplateName::parse(template).expect("name"),
        env_vars: [("K".to_string(), "v".to_string())].into(),
        access_token: "token".into(),
        resources: None,
        network: EgressPolicy {
            allow_internet_access: false,
            allow_out: vec!["10.0.0.0/8".parse().expect("cidr")],
            deny_out: vec![],
            allow_domains: vec!["*.example.com".parse().expect("domain")],
        },
        start_cmd: true,
    }
}

#[tokio::test]
async fn a_node_over_grpc_answers_as_it_does_in_process() {
    let cluster = Cluster::start().await;
    let node = cluster.api();

    // Create: the request arrives whole.
    let req = request("base");
    let id = req.id.clone();
    let made = node.create(req.clone()).await.expect("create");
    assert_eq!(made.id, id);
    let got = cluster.node.created.lock().expect("lock").last().cloned();
    let got = got.expect("the node saw the create");
    assert_eq!(got.env_vars, req.env_vars);
    assert_eq!(got.network, req.network);
    assert_eq!(got.access_token, "token");

    assert_eq!(node.live().await.expect("live"), vec![id.clone()]);
    assert_eq!(
        node.status(&id).await.expect("status"),
        Some(SandboxStatus::Running)
    );
    node.pause(&id).await.expect("pause");
    assert_eq!(
        node.status(&id).await.expect("status"),
        Some(SandboxStatus::Paused(PauseMode::Memory))
    );
    node.resume(&id).await.expect("resume");

    // Events: a sandbox that dies on the node is reported.
    let mut events = node.events().await.expect("subscribe");
    cluster.node.die(id.as_str());
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("event in time")
        .expect("event");
    assert_eq!(event, NodeEvent::exited(id.clone(), ExitReason::Exited));
    assert_eq!(node.status(&id).await.expect("status"), None);
    // ... with why it ended.
    let oom = node.create(request("base")).await.expect("create").id;
    cluster.node.end(oom.as_str(), ExitReason::OutOfMemory);
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("event in time")
        .expect("event");
    assert_eq!(event, NodeEvent::exited(oom, ExitReason::OutOfMemory));

    // Errors keep their code and message.
    let busy = node.create(request("busy")).await.expect_err("busy");
    assert_eq!(busy.code, ErrorCode::Busy);
    assert!(busy.message.contains("all slots taken"), "{busy:?}");
    let broken = node.create(request("broken")).await.expect_err("broken");
    assert_eq!(broken.code, ErrorCode::Envd);
    let missing = node
        .update_network(&SandboxId::generate(), EgressPolicy::default())
        .await
        .expect_err("unknown sandbox");
    assert_eq!(missing.code, ErrorCode::SandboxNotFound);
    let unsupported = node
        .snapshot(&id, &TemplateName::parse("snap").expect("name"))
        .await
        .expect_err("the fake takes no snapshots");
    assert_eq!(unsupported.code, ErrorCode::Unsupported);

    // Templates.
    let base = TemplateName::parse("base").expect("name");
    assert_eq!(
        node.template(&base).await.expect("lookup").map(|t| t.name),
        Some(base.clone())
    );
    let nope = TemplateName::parse("nope").expect("name");
    assert_eq!(node.template(&nope).await.expect("lookup"), None);
    let listed = node.list_templates().await.expect("list");
    assert!(listed.iter().any(|t| t.name == base), "{listed:?}");

    // Metrics and logs.
    let sample = paddock_node_contract::MetricSample {
        timestamp: chrono::DateTime::from_timestamp(1_000, 0).expect("time"),
        cpu_count: 2,
        cpu_used_pct: 12.5,
        mem_used: 1,
        mem_total: 2,
        mem_cache: 3,
        disk_used: 4,
        disk_total: 5,
    };
    *cluster.node.samples.lock().expect("lock") = vec![sample.clone()];
    assert_eq!(
        node.metrics(&id, MetricsRange::default())
            .await
            .expect("metrics"),
        vec![sample.clone()]
    );
    let latest = node
        .latest_metrics(std::slice::from_ref(&id))
        .await
        .expect("latest");
    assert_eq!(latest.get(&id), Some(&sample));

    // Kill of an unknown id is fine; reconcile keeps only what lives.
    node.kill(&SandboxId::generate()).await.expect("kill");
    let other = node.create(request("base")).await.expect("create").id;
    let kept = node
        .reconcile(&[other.clone(), id.clone()])
        .await
        .expect("reconcile");
    assert_eq!(kept, vec![other]);
}

#[tokio::test]
async fn builds_stream_their_log_and_one_outcome() {
    use paddock_node_contract::build::BuildRequest;
    use paddock_template::{Base, BuildStep, Recipe, Step};
    let cluster = Cluster::start().await;
    let node = cluster.api();
    let run = |command: &str| Step {
        step: BuildStep::Run {
            command: command.into(),
            user: None,
        },
        force: false,
    };
    let request = |steps| BuildRequest {
        name: TemplateName::parse("built").expect("name"),
        recipe: Recipe {
            base: Base::Template("base".into()),
            steps,
            force: false,
            start_cmd: None,
            ready_cmd: None,
        },
        resources: Default::default(),
        files_dir: "/nonexistent".into(),
        images_dir: None,
    };

    let (logs, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let built = node
        .build(request(vec![run("emit 25")]), logs)
        .await
        .expect("build");
    assert_eq!(built.template.name.as_str(), "built");
    let mut got = Vec::new();
    while let Ok(line) = lines.try_recv() {
        got.push(line);
    }
    // `base`, the step's two lines and its 25 lines of output, `finalize`: in order.
    assert_eq!(got.first().map(|l| l.step.as_str()), Some("base"));
    assert_eq!(got.last().map(|l| l.step.as_str()), Some("finalize"));
    assert_eq!(
        got.iter()
            .filter(|l| l.message.starts_with("output "))
            .count(),
        25
    );
    assert_eq!(
        cluster
            .node
            .build_requests
            .lock()
            .expect("lock")
            .last()
            .map(|r| r.recipe.clone()),
        Some(request(vec![run("emit 25")]).recipe),
        "the recipe arrived whole"
    );

    let (logs, _lines) = tokio::sync::mpsc::unbounded_channel();
    let failed = node
        .build(request(vec![run("true"), run("exit 3")]), logs)
        .await
        .expect_err("step 2 fails");
    assert_eq!(failed.step, "2");
    assert!(failed.message.contains("exited with code 3"), "{failed:?}");
}

#[tokio::test]
async fn templates_travel_over_grpc_manifest_layers_and_install() {
    use futures::StreamExt;
    use paddock_node_contract::fake::fake_digest;
    let cluster = Cluster::start().await;
    let node = cluster.api();
    let base = TemplateName::parse("base").expect("name");
    let m = node
        .template_manifest(&base)
        .await
        .expect("manifest")
        .expect("the fake has base");
    assert_eq!(m.digests(), vec![fake_digest(&base)]);
    assert!(node
        .template_manifest(&TemplateName::parse("nowhere").expect("name"))
        .await
        .expect("manifest")
        .is_none());
    // A layer's chunks arrive in order.
    let chunks: Vec<_> = node
        .export_layer(&fake_digest(&base))
        .await
        .expect("export")
        .collect()
        .await;
    let data: Vec<u8> = chunks
        .into_iter()
        .flat_map(|c| c.expect("chunk").data.to_vec())
        .collect();
    assert_eq!(data, paddock_node_contract::fake::fake_layer(&base));

    // Install: the manifest, then the layers the node lacks.
    let app = TemplateName::parse("app").expect("name");
    let manifest = paddock_node_contract::TemplateManifest {
        name: app.clone(),
        meta_json: "{}".into(),
        layers: vec![paddock_node_contract::LayerRef {
            digest: fake_digest(&app),
            size: paddock_node_contract::fake::fake_layer(&app).len() as u64,
        }],
    };
    assert_eq!(
        node.missing_layers(&manifest.digests())
            .await
            .expect("missing"),
        manifest.digests()
    );
    let layer = paddock_node_contract::LayerChunk {
        digest: fake_digest(&app),
        data: paddock_node_contract::fake::fake_layer(&app),
    };
    let info = node
        .install_template(
            manifest.clone(),
            Box::pin(futures::stream::iter([Ok(layer.clone())])),
        )
        .await
        .expect("install");
    assert_eq!(info.name, app);
    assert_eq!(
        cluster.node.received.lock().expect("lock").clone(),
        vec![(app.clone(), manifest.digests())]
    );
    assert!(node
        .missing_layers(&manifest.digests())
        .await
        .expect("missing")
        .is_empty());
    // A stream that fails part-way fails the install with the sender's error.
    let broken = futures::stream::iter([Err(paddock_node_contract::NodeError::internal(
        "disk on fire",
    ))]);
    let e = node
        .install_template(manifest, Box::pin(broken))
        .await
        .expect_err("cut");
    assert!(e.message.contains("disk on fire"), "{e:?}");
    node.prepare_base().await.expect("base");
}

#[tokio::test]
async fn a_builds_copy_archives_travel_with_it_to_the_node() {
    use paddock_node_contract::build::BuildRequest;
    use paddock_template::{Base, BuildStep, Recipe, Step};
    let cluster = Cluster::start().await;
    let node = cluster.api();
    // The control plane's upload dir (a path the node never reads).
    let uploads = cluster.dir.path().join("api-uploads/team-1");
    std::fs::create_dir_all(&uploads).expect("mkdir");
    let hash = "5e".repeat(32);
    let archive = vec![9u8; 3 << 20];
    std::fs::write(uploads.join(&hash), &archive).expect("write");
    let copy = Step {
        step: BuildStep::Copy {
            src: "app".into(),
            dest: "/app".into(),
            owner: None,
            mode: None,
            files_hash: hash.clone(),
        },
        force: false,
    };
    let request = BuildRequest {
        name: TemplateName::parse("with-files").expect("name"),
        recipe: Recipe {
            base: Base::Template("base".into()),
            steps: vec![copy],
            force: false,
            start_cmd: None,
            ready_cmd: None,
        },
        resources: Default::default(),
        files_dir: uploads.clone(),
        images_dir: None,
    };
    let (logs, mut lines) = tokio::sync::mpsc::unbounded_channel();
    node.build(request.clone(), logs).await.expect("build");
    let mut got = Vec::new();
    while let Ok(line) = lines.try_recv() {
        got.push(line.message);
    }
    assert!(
        got.iter()
            .any(|l| l == &format!("copied {} bytes", archive.len())),
        "{got:?}"
    );
    // The node read its own copy, under its build-files root.
    let seen = cluster
        .node
        .build_requests
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("req");
    assert!(
        seen.files_dir
            .starts_with(cluster.dir.path().join("node-build-files")),
        "{:?}",
        seen.files_dir
    );
    assert_eq!(
        std::fs::read(seen.files_dir.join(&hash)).expect("copy"),
        archive
    );

    // An archive the control plane does not have fails the build with a clear message.
    let mut missing = request.clone();
    if let BuildStep::Copy { files_hash, .. } = &mut missing.recipe.steps[0].step {
        *files_hash = "77".repeat(32);
    }
    let (logs, _lines) = tokio::sync::mpsc::unbounded_channel();
    let e = node.build(missing, logs).await.expect_err("not uploaded");
    assert!(e.message.contains("were not uploaded"), "{e:?}");
}

#[tokio::test]
async fn only_the_control_plane_of_the_same_cluster_gets_in() {
    let cluster = Cluster::start().await;
    let expect = || ExpectedPeer::member(cluster.node_identity.identity().clone());

    // Another node of the cluster may not call a node.
    let peer = member(&cluster.ca, Role::Node, "n2");
    let as_node = GrpcNode::new(cluster.addr, &peer, expect()).expect("client");
    let err = as_node.live().await.expect_err("a node is refused");
    assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");

    // An api of another cluster (another CA) is refused in the handshake.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other_ca = ClusterCa::create(other_dir.path()).expect("ca");
    let stranger = member(&other_ca, Role::Api, "api");
    let as_stranger =
        GrpcNode::new(cluster.addr, &stranger, ExpectedPeer::role(Role::Node)).expect("client");
    assert_eq!(
        as_stranger.live().await.expect_err("another CA").code,
        ErrorCode::Unavailable
    );
    assert!(cluster.node.created.lock().expect("lock").is_empty());

    // The control plane still gets in, and a client expecting another node refuses this one.
    assert!(cluster.api().live().await.expect("live").is_empty());
    let api = member(&cluster.ca, Role::Api, "api");
    let wrong = PeerIdentity::new(Role::Node, MemberId::new("n9").expect("id"));
    let misdirected =
        GrpcNode::new(cluster.addr, &api, ExpectedPeer::member(wrong)).expect("client");
    assert_eq!(
        misdirected.live().await.expect_err("not n9").code,
        ErrorCode::Unavailable
    );
}

#[tokio::test]
async fn a_node_that_is_not_there_is_unavailable_not_a_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::create(dir.path()).expect("ca");
    let api = member(&ca, Role::Api, "api");
    // A port nothing listens on.
    let addr = {
        let l = std::net::TcpListener::bind((LOOPBACK, 0)).expect("bind");
        l.local_addr().expect("addr")
    };
    let node = GrpcNode::new(addr, &api, ExpectedPeer::role(Role::Node)).expect("client");
    let err = tokio::time::timeout(Duration::from_secs(10), node.live())
        .await
        .expect("answered in time")
        .expect_err("nothing there");
    assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
}
