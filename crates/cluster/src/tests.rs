use std::sync::atomic::Ordering;

use paddock_node_contract::fake::FakeNode;
use paddock_node_contract::ExitReason;

use super::*;

fn cap() -> Capacity {
    Capacity {
        cpus: 64,
        memory_mb: 16 * 1024,
        disk_mb: 200_000,
        max_sandboxes: 20,
    }
}

fn set_of(n: usize) -> (NodeSet, Vec<Arc<FakeNode>>) {
    let set = NodeSet::default();
    let nodes: Vec<Arc<FakeNode>> = (0..n).map(|_| FakeNode::new()).collect();
    for (i, node) in nodes.iter().enumerate() {
        set.add(&format!("n{i}"), node.clone(), cap());
    }
    (set, nodes)
}

fn request() -> CreateRequest {
    CreateRequest {
        id: SandboxId::generate(),
        template: TemplateName::parse("base").expect("name"),
        env_vars: HashMap::new(),
        access_token: "t".into(),
        resources: None,
        network: EgressPolicy::default(),
        start_cmd: true,
    }
}

fn count(node: &FakeNode) -> usize {
    node.live.lock().expect("lock").len()
}

/// A build of template `name` over `base` with no steps.
fn build_of(name: &TemplateName) -> paddock_node_contract::build::BuildRequest {
    paddock_node_contract::build::BuildRequest {
        name: name.clone(),
        recipe: paddock_template::Recipe {
            base: paddock_template::Base::Template("base".into()),
            steps: vec![],
            force: false,
            start_cmd: None,
            ready_cmd: None,
        },
        resources: Resources::default(),
        files_dir: "/nonexistent".into(),
        images_dir: None,
    }
}

async fn next_event(rx: &mut broadcast::Receiver<NodeEvent>) -> NodeEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an event in time")
        .expect("event")
}

#[tokio::test]
async fn creates_spread_over_the_nodes() {
    let (set, nodes) = set_of(3);
    for _ in 0..30 {
        set.create(request()).await.expect("create");
    }
    let counts: Vec<usize> = nodes.iter().map(|n| count(n)).collect();
    assert_eq!(counts.iter().sum::<usize>(), 30);
    assert!(counts.iter().all(|&c| c <= 18), "none over 60%: {counts:?}");
    // Each sandbox is known where it runs.
    for (i, node) in nodes.iter().enumerate() {
        for id in node.live.lock().expect("lock").iter() {
            assert_eq!(set.owner_of(id).as_deref(), Some(format!("n{i}").as_str()));
        }
    }
}

#[tokio::test]
async fn a_full_or_failing_node_is_skipped_and_the_create_retried_elsewhere() {
    let (set, nodes) = set_of(3);
    nodes[0].full.store(true, Ordering::SeqCst);
    nodes[1].down.store(true, Ordering::SeqCst);
    for _ in 0..10 {
        set.create(request())
            .await
            .expect("create lands on the healthy node");
    }
    assert_eq!(count(&nodes[2]), 10);
    assert_eq!(count(&nodes[0]) + count(&nodes[1]), 0);

    // With no node able to take it, the create fails with the last node's reason.
    nodes[2].full.store(true, Ordering::SeqCst);
    let err = set
        .create(request())
        .await
        .expect_err("every node full or down");
    assert!(
        matches!(err.code, ErrorCode::Busy | ErrorCode::Unavailable),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_draining_node_takes_no_new_sandboxes_but_keeps_serving_its_own() {
    let (set, nodes) = set_of(2);
    let first = set.create(request()).await.expect("create").id;
    let owner = set.owner_of(&first).expect("owner");
    set.set_status(&owner, NodeStatus::Draining);
    for _ in 0..5 {
        let id = set.create(request()).await.expect("create").id;
        assert_ne!(set.owner_of(&id), Some(owner.clone()));
    }
    set.pause(&first).await.expect("pause on the draining node");
    let holder = if owner == "n0" { &nodes[0] } else { &nodes[1] };
    assert!(holder.is_paused(&first));
}

#[tokio::test]
async fn calls_about_a_sandbox_go_to_its_node() {
    let (set, nodes) = set_of(2);
    let id = set.create(request()).await.expect("create").id;
    let (holder, other) = match set.owner_of(&id).as_deref() {
        Some("n0") => (&nodes[0], &nodes[1]),
        _ => (&nodes[1], &nodes[0]),
    };
    set.pause(&id).await.expect("pause");
    assert!(holder.is_paused(&id));
    assert_eq!(
        set.status(&id).await.expect("status"),
        Some(SandboxStatus::Paused(
            paddock_node_contract::PauseMode::Memory
        ))
    );
    set.resume(&id).await.expect("resume");
    set.kill(&id).await.expect("kill");
    assert!(holder.was_killed(id.as_str()));
    assert!(!other.was_killed(id.as_str()));
    assert_eq!(set.owner_of(&id), None);
    assert_eq!(
        set.pause(&id).await.expect_err("gone").code,
        ErrorCode::SandboxNotFound
    );

    // A sandbox the set did not place (e.g. before a restart) is found by asking.
    let direct = request();
    let direct_id = direct.id.clone();
    nodes[1].create(direct).await.expect("direct create");
    assert_eq!(
        set.status(&direct_id).await.expect("status"),
        Some(SandboxStatus::Running)
    );
    assert_eq!(set.owner_of(&direct_id).as_deref(), Some("n1"));
}

#[tokio::test]
async fn events_of_every_node_arrive_and_a_lost_node_loses_its_sandboxes() {
    let (set, nodes) = set_of(2);
    let mut events = set.events().await.expect("subscribe");
    let on = |i: usize| {
        let node = nodes[i].clone();
        async move {
            for _ in 0..20 {
                tokio::task::yield_now().await;
                if node.event_subscribers() > 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the set never subscribed to n{i}");
        }
    };
    on(0).await;
    on(1).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(set.create(request()).await.expect("create").id);
    }
    let on_n0 = set.sandboxes_on("n0");
    let on_n1 = set.sandboxes_on("n1");
    assert!(
        !on_n0.is_empty() && !on_n1.is_empty(),
        "{on_n0:?} {on_n1:?}"
    );

    nodes[1].die(on_n1[0].as_str());
    assert_eq!(
        next_event(&mut events).await,
        NodeEvent::exited(on_n1[0].clone(), ExitReason::Exited)
    );
    assert_eq!(set.owner_of(&on_n1[0]), None);
    // A member's own reason passes through.
    if let Some(second) = on_n1.get(1) {
        nodes[1].end(second.as_str(), ExitReason::OutOfMemory);
        assert_eq!(
            next_event(&mut events).await,
            NodeEvent::exited(second.clone(), ExitReason::OutOfMemory)
        );
    }

    // n0 leaves: every sandbox on it is reported lost with it.
    assert!(set.remove("n0"));
    let mut lost = Vec::new();
    for _ in 0..on_n0.len() {
        let NodeEvent::Exited { id, reason } = next_event(&mut events).await;
        assert_eq!(reason, ExitReason::NodeLost, "{id}");
        lost.push(id);
    }
    lost.sort();
    assert_eq!(lost, on_n0);
    assert!(set.member_ids() == vec!["n1".to_string()]);
    assert!(!set.remove("n0"), "removed once");
}

#[tokio::test]
async fn a_node_whose_event_stream_ends_is_swept_for_what_died_meanwhile() {
    let (set, nodes) = set_of(1);
    let mut events = set.events().await.expect("subscribe");
    let a = set.create(request()).await.expect("create").id;
    let b = set.create(request()).await.expect("create").id;
    while nodes[0].event_subscribers() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes[0].vanish(a.as_str());
    nodes[0].end_events();
    // Gone while the node was out of reach (or restarting): lost with it.
    assert_eq!(
        next_event(&mut events).await,
        NodeEvent::exited(a, ExitReason::NodeLost)
    );
    // Events flow again on the new subscription.
    while nodes[0].event_subscribers() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes[0].die(b.as_str());
    assert_eq!(
        next_event(&mut events).await,
        NodeEvent::exited(b, ExitReason::Exited)
    );
}

#[tokio::test]
async fn sandboxes_no_member_holds_are_reported_lost() {
    let (set, _nodes) = set_of(1);
    let mut events = set.events().await.expect("subscribe");
    let a = set.create(request()).await.expect("create").id;
    let never_seen = SandboxId::generate();
    set.report_gone(&[a.clone(), never_seen.clone()]);
    assert_eq!(
        next_event(&mut events).await,
        NodeEvent::exited(a.clone(), ExitReason::NodeLost)
    );
    assert_eq!(
        next_event(&mut events).await,
        NodeEvent::exited(never_seen, ExitReason::NodeLost)
    );
    assert_eq!(set.owner_of(&a), None);
}

/// A fake node that also keeps sandboxes paused to disk: they are not live, but their status
/// says they are held.
struct WithDisk {
    fake: Arc<FakeNode>,
    on_disk: Mutex<HashSet<SandboxId>>,
}

impl WithDisk {
    fn new(fake: Arc<FakeNode>) -> Arc<Self> {
        Arc::new(WithDisk {
            fake,
            on_disk: Mutex::new(HashSet::new()),
        })
    }

    fn to_disk(&self, id: &SandboxId) {
        self.fake.vanish(id.as_str());
        self.on_disk.lock().expect("lock").insert(id.clone());
    }
}

#[async_trait]
impl Node for WithDisk {
    async fn create(&self, req: CreateRequest) -> Result<NodeSandbox, NodeError> {
        self.fake.create(req).await
    }
    async fn kill(&self, id: &SandboxId) -> Result<(), NodeError> {
        self.on_disk.lock().expect("lock").remove(id);
        self.fake.kill(id).await
    }
    async fn template(&self, name: &TemplateName) -> Result<Option<TemplateInfo>, NodeError> {
        self.fake.template(name).await
    }
    async fn live(&self) -> Result<Vec<SandboxId>, NodeError> {
        self.fake.live().await
    }
    async fn events(&self) -> Result<broadcast::Receiver<NodeEvent>, NodeError> {
        self.fake.events().await
    }
    async fn status(&self, id: &SandboxId) -> Result<Option<SandboxStatus>, NodeError> {
        if self.on_disk.lock().expect("lock").contains(id) {
            return Ok(Some(SandboxStatus::Paused(PauseMode::Disk)));
        }
        self.fake.status(id).await
    }
    async fn update_network(&self, id: &SandboxId, policy: EgressPolicy) -> Result<(), NodeError> {
        self.fake.update_network(id, policy).await
    }
    async fn reconcile(&self, expected: &[SandboxId]) -> Result<Vec<SandboxId>, NodeError> {
        self.fake.reconcile(expected).await
    }
    async fn shutdown(&self) -> Result<(), NodeError> {
        self.fake.shutdown().await
    }
}

#[tokio::test]
async fn a_sweep_keeps_sandboxes_paused_to_disk() {
    let set = NodeSet::default();
    let node = WithDisk::new(FakeNode::new());
    set.add("n0", node.clone(), cap());
    let mut events = set.events().await.expect("subscribe");
    let kept = set.create(request()).await.expect("create").id;
    let died = set.create(request()).await.expect("create").id;
    while node.fake.event_subscribers() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.to_disk(&kept);
    node.fake.vanish(died.as_str());
    node.fake.end_events();
    assert_eq!(
        next_event(&mut events).await,
        NodeEvent::exited(died, ExitReason::NodeLost)
    );
    assert_eq!(set.owner_of(&kept).as_deref(), Some("n0"));
    assert!(events.try_recv().is_err(), "only the dead one is reported");
}

#[tokio::test]
async fn a_node_that_registers_again_is_swept_for_what_its_restart_lost() {
    let (set, nodes) = set_of(1);
    let mut events = set.events().await.expect("subscribe");
    let survivor = set.create(request()).await.expect("create").id;
    let lost = set.create(request()).await.expect("create").id;
    // The node restarts: a new process (a new client) that kept one sandbox.
    let restarted = FakeNode::new();
    restarted
        .live
        .lock()
        .expect("lock")
        .insert(survivor.clone());
    drop(nodes);
    set.add("n0", restarted.clone(), cap());
    set.adopt("n0", std::slice::from_ref(&survivor));
    assert_eq!(
        next_event(&mut events).await,
        NodeEvent::exited(lost.clone(), ExitReason::NodeLost)
    );
    assert_eq!(set.owner_of(&lost), None);
    assert_eq!(set.owner_of(&survivor).as_deref(), Some("n0"));
    // Its events flow (the sweep ran on its first subscription).
    restarted.die(survivor.as_str());
    assert_eq!(
        next_event(&mut events).await,
        NodeEvent::exited(survivor, ExitReason::Exited)
    );
}

#[tokio::test]
async fn an_unreachable_node_fails_live_instead_of_hiding_its_sandboxes() {
    let (set, nodes) = set_of(2);
    set.create(request()).await.expect("create");
    nodes[0].down.store(true, Ordering::SeqCst);
    assert_eq!(
        set.live().await.expect_err("n0 is down").code,
        ErrorCode::Unavailable
    );
}

#[tokio::test]
async fn an_empty_set_has_no_room() {
    let set = NodeSet::default();
    let err = set.create(request()).await.expect_err("no nodes");
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(set.live().await.expect("live").is_empty());
}

#[tokio::test]
async fn what_ends_gives_its_room_back() {
    let set = NodeSet::default();
    let node = FakeNode::new();
    let small = Capacity {
        max_sandboxes: 2,
        ..cap()
    };
    set.add("n0", node.clone(), small);
    let a = set.create(request()).await.expect("first").id;
    let b = set.create(request()).await.expect("second").id;
    assert_eq!(
        set.create(request()).await.expect_err("full").code,
        ErrorCode::Busy
    );
    set.kill(&a).await.expect("kill");
    let c = set.create(request()).await.expect("room after a kill").id;
    // An exit gives room back too.
    while node.event_subscribers() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut events = set.events().await.expect("subscribe");
    node.die(b.as_str());
    next_event(&mut events).await;
    set.create(request()).await.expect("room after an exit");
    assert!(set.owner_of(&c).is_some());
}

#[tokio::test]
async fn a_template_made_on_one_node_starts_on_every_node_its_layers_sent_once() {
    let (set, nodes) = set_of(3);
    let (logs, _lines) = tokio::sync::mpsc::unbounded_channel();
    let name = TemplateName::parse("mine").expect("name");
    set.build(build_of(&name), logs).await.expect("build");
    assert_eq!(
        set.home_of(&name),
        None,
        "a build is not pinned to its node"
    );
    let builder = nodes
        .iter()
        .position(|n| !n.built.lock().expect("lock").is_empty())
        .expect("built somewhere");
    let mut holders = HashSet::new();
    for i in 0..12 {
        let req = CreateRequest {
            template: name.clone(),
            ..request()
        };
        let id = set.create(req).await.expect("create");
        if i >= 6 {
            holders.insert(set.owner_of(&id.id).expect("owned"));
        }
        // The nodes that lacked it receive it in the background meanwhile.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        holders.len(),
        3,
        "creates spread over every node: {holders:?}"
    );
    let digest = paddock_node_contract::fake::fake_digest(&name);
    for (i, node) in nodes.iter().enumerate() {
        let received = node.received.lock().expect("lock").clone();
        if i == builder {
            assert!(received.is_empty(), "the builder received nothing");
        } else {
            // Once, though several creates needed it.
            assert_eq!(
                received,
                vec![(name.clone(), vec![digest.clone()])],
                "node {i}"
            );
        }
    }
    // A rebuild replaces the others' copies: they fetch the new one when needed.
    let (logs, _lines) = tokio::sync::mpsc::unbounded_channel();
    set.build(build_of(&name), logs).await.expect("rebuild");
    let with_copy = nodes
        .iter()
        .filter(|n| n.built.lock().expect("lock").contains_key(&name))
        .count();
    assert_eq!(with_copy, 1, "only the node that built it last has it");
    assert!(set.delete_template(&name).await.expect("delete"));
    assert!(nodes
        .iter()
        .all(|n| n.built.lock().expect("lock").is_empty()));
}

#[tokio::test]
async fn a_template_no_node_has_is_not_found_without_trying_every_node() {
    let (set, nodes) = set_of(3);
    let req = CreateRequest {
        template: TemplateName::parse("nowhere").expect("name"),
        ..request()
    };
    let e = set.create(req).await.expect_err("no such template");
    assert_eq!(e.code, ErrorCode::TemplateNotFound);
    let tries: usize = nodes
        .iter()
        .map(|n| n.created.lock().expect("lock").len())
        .sum();
    assert!(tries <= 1, "{tries} nodes asked");
}

#[tokio::test]
async fn a_snapshot_starts_where_its_files_are_while_that_node_has_room() {
    let (set, nodes) = set_of(3);
    let (logs, _lines) = tokio::sync::mpsc::unbounded_channel();
    let name = TemplateName::parse("snap").expect("name");
    set.build(build_of(&name), logs).await.expect("build");
    let home = nodes
        .iter()
        .position(|n| !n.built.lock().expect("lock").is_empty())
        .expect("built somewhere");
    set.set_home(&name, Some(&format!("n{home}")));
    let req = || CreateRequest {
        template: name.clone(),
        ..request()
    };
    for _ in 0..3 {
        let id = set.create(req()).await.expect("create").id;
        assert_eq!(set.owner_of(&id), Some(format!("n{home}")));
    }
    // Full: the next one goes elsewhere, its layers with it.
    nodes[home].full.store(true, Ordering::SeqCst);
    let id = set.create(req()).await.expect("create").id;
    assert_ne!(set.owner_of(&id), Some(format!("n{home}")));
}

#[tokio::test]
async fn base_is_built_once_per_cluster_and_sent_to_the_nodes_that_join() {
    let set = NodeSet::default();
    set.set_base_grace(Duration::from_millis(300));
    let nodes: Vec<Arc<FakeNode>> = (0..3).map(|_| FakeNode::new()).collect();
    for n in &nodes {
        n.without_base.store(true, Ordering::SeqCst);
    }
    for (i, node) in nodes.iter().enumerate() {
        set.add(&format!("n{i}"), node.clone(), cap());
    }
    let joins = (0..3).map(|i| {
        let set = set.clone();
        tokio::spawn(async move { set.provide_base(&format!("n{i}")).await })
    });
    for j in joins {
        j.await.expect("task").expect("provided");
    }
    let builds: usize = nodes
        .iter()
        .map(|n| n.base_builds.load(Ordering::SeqCst))
        .sum();
    assert_eq!(builds, 1, "built once");
    let received: usize = nodes
        .iter()
        .map(|n| n.received.lock().expect("lock").len())
        .sum();
    assert_eq!(received, 2, "sent to the two others");
    for n in &nodes {
        assert!(n.has_template(&TemplateName::parse("base").expect("name")));
    }
    // A node that has it is left alone.
    set.provide_base("n0").await.expect("again");
    assert_eq!(
        nodes
            .iter()
            .map(|n| n.base_builds.load(Ordering::SeqCst))
            .sum::<usize>(),
        1
    );
}

#[tokio::test]
async fn an_unreachable_node_does_not_hide_the_others_templates() {
    let (set, nodes) = set_of(3);
    let base = TemplateName::parse("base").expect("name");
    // n0 is asked first; it is down.
    nodes[0].down.store(true, Ordering::SeqCst);
    assert!(set.template(&base).await.expect("lookup").is_some());
    assert!(!set.list_templates().await.expect("list").is_empty());
    assert_eq!(
        set.template(&TemplateName::parse("nope").expect("name"))
            .await
            .expect("the others answered"),
        None
    );
    // Creates go on on the others.
    set.create(request()).await.expect("create");
    // With every node down, a lookup (of a template not found recently) fails instead of
    // saying "no such template".
    for n in &nodes {
        n.down.store(true, Ordering::SeqCst);
    }
    assert_eq!(
        set.template(&TemplateName::parse("slow").expect("name"))
            .await
            .expect_err("nobody answered")
            .code,
        ErrorCode::Unavailable
    );
}

#[tokio::test]
async fn an_ended_sandboxs_log_is_found_on_the_node_that_ran_it() {
    let (set, nodes) = set_of(3);
    let entry = paddock_node_contract::LogEntry {
        timestamp: chrono::Utc::now(),
        level: paddock_node_contract::LogLevel::Info,
        message: "kept after the end".into(),
        fields: Default::default(),
    };
    for n in &nodes {
        *n.envd_log.lock().expect("lock") = vec![entry.clone()];
    }
    let id = set.create(request()).await.expect("create").id;
    set.kill(&id).await.expect("kill");
    assert_eq!(set.owner_of(&id), None);
    assert_eq!(set.envd_logs(&id).await.expect("logs"), vec![entry]);
    assert!(set
        .envd_logs(&SandboxId::generate())
        .await
        .expect("logs")
        .is_empty());
}

#[tokio::test]
async fn templates_found_are_answered_from_memory_until_they_change_through_the_set() {
    let (set, nodes) = set_of(2);
    let name = TemplateName::parse("cached").expect("name");
    let (logs, _lines) = tokio::sync::mpsc::unbounded_channel();
    set.build(build_of(&name), logs).await.expect("build");
    assert!(set.template(&name).await.expect("lookup").is_some());
    // Gone on the node behind the set's back: still answered from memory (for a while).
    for n in &nodes {
        n.built.lock().expect("lock").remove(&name);
    }
    assert!(set.template(&name).await.expect("lookup").is_some());
    // Deleted through the set: forgotten at once.
    set.delete_template(&name).await.expect("delete");
    assert_eq!(set.template(&name).await.expect("lookup"), None);
}

#[tokio::test]
async fn the_status_the_set_gave_a_sandbox_is_answered_without_asking() {
    let (set, nodes) = set_of(1);
    let mut events = set.events().await.expect("subscribe");
    let id = set.create(request()).await.expect("create").id;
    // Answered from what the set did (the node is not even reachable).
    nodes[0].down.store(true, Ordering::SeqCst);
    assert_eq!(
        set.status(&id).await.expect("status"),
        Some(SandboxStatus::Running)
    );
    nodes[0].down.store(false, Ordering::SeqCst);
    set.pause(&id).await.expect("pause");
    assert_eq!(
        set.status(&id).await.expect("status"),
        Some(SandboxStatus::Paused(
            paddock_node_contract::PauseMode::Memory
        ))
    );
    set.resume(&id).await.expect("resume");
    assert_eq!(
        set.status(&id).await.expect("status"),
        Some(SandboxStatus::Running)
    );
    // Its end arrives as an event, and then it is gone.
    while nodes[0].event_subscribers() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes[0].die(id.as_str());
    next_event(&mut events).await;
    assert_eq!(set.status(&id).await.expect("status"), None);
}

#[tokio::test]
async fn a_node_without_base_waits_for_one_with_it_rather_than_building() {
    let set = NodeSet::default();
    set.set_base_grace(Duration::from_secs(5));
    let bare = FakeNode::new();
    bare.without_base.store(true, Ordering::SeqCst);
    set.add("bare", bare.clone(), cap());
    let providing = {
        let set = set.clone();
        tokio::spawn(async move { set.provide_base("bare").await })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The node with base registers after the one without.
    set.add("seeded", FakeNode::new(), cap());
    providing.await.expect("task").expect("provided");
    assert_eq!(
        bare.base_builds.load(Ordering::SeqCst),
        0,
        "received, not built"
    );
    assert_eq!(bare.received.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn warm_claims_are_made_ahead_so_a_create_need_not_ask() {
    let (set, nodes) = set_of(1);
    set.set_prefetch_delay(Duration::from_millis(50));
    nodes[0].warm.store(10, Ordering::SeqCst);
    let calls = || nodes[0].claim_calls.load(Ordering::SeqCst);
    let create = |id: SandboxId| {
        let set = set.clone();
        async move {
            let made = set
                .create(CreateRequest { id, ..request() })
                .await
                .expect("create");
            assert_eq!(set.owner_of(&made.id).as_deref(), Some("n0"));
        }
    };
    // The first claim asks; nothing is claimed ahead while its create is under way.
    let first = set
        .claim_warm(&request())
        .await
        .expect("claim")
        .expect("warm");
    assert_eq!(calls(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(calls(), 1, "not while the create may follow");
    // A while after it is made (past its first command), the claim for the next create.
    create(first.clone()).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(calls(), 1, "not at once");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(calls(), 2, "claimed ahead");
    let ahead = nodes[0].claimed.lock().expect("lock")[1].clone();
    // The next plain create takes it without a call.
    let second = set
        .claim_warm(&request())
        .await
        .expect("claim")
        .expect("warm");
    assert_eq!(second, ahead);
    assert_eq!(calls(), 2, "answered from memory");
    assert_ne!(first, second);
    create(second).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(calls(), 3, "refilled");
    // A create with its own limits never takes one claimed for the plain kind.
    let sized = CreateRequest {
        resources: Some(Resources::default()),
        ..request()
    };
    assert_eq!(set.claim_warm(&sized).await.expect("claim"), None);
    assert_eq!(calls(), 4, "asked (and refused)");
    // A template that changes through the set drops what was claimed of it.
    set.forget_template(&TemplateName::parse("base").expect("name"));
    let again = set
        .claim_warm(&request())
        .await
        .expect("claim")
        .expect("warm");
    assert_ne!(Some(&again), nodes[0].claimed.lock().expect("lock").get(2));
    assert_eq!(calls(), 5, "asked again");
}

#[tokio::test]
async fn a_create_does_not_wait_for_a_transfer_while_a_node_with_the_template_has_room() {
    let (set, nodes) = set_of(2);
    let (logs, _lines) = tokio::sync::mpsc::unbounded_channel();
    let name = TemplateName::parse("mine").expect("name");
    // Built on n0 (the only ready node then).
    assert!(set.set_status("n1", NodeStatus::Draining));
    set.build(build_of(&name), logs).await.expect("build");
    assert!(set.set_status("n1", NodeStatus::Ready));
    // n0 is full: the create waits for n1 to receive it, then starts there.
    nodes[0].full.store(true, Ordering::SeqCst);
    let req = || CreateRequest {
        template: name.clone(),
        ..request()
    };
    let made = set.create(req()).await.expect("created once sent");
    assert_eq!(set.owner_of(&made.id).as_deref(), Some("n1"));
    assert_eq!(nodes[1].received.lock().expect("lock").len(), 1);
    // A third node without it: creates placed there go to a node that has it meanwhile.
    let third = FakeNode::new();
    set.add("n2", third.clone(), cap());
    nodes[0].full.store(false, Ordering::SeqCst);
    for _ in 0..6 {
        let made = set.create(req()).await.expect("create");
        assert_ne!(
            set.owner_of(&made.id).as_deref(),
            Some("n2"),
            "did not wait for n2"
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        third.received.lock().expect("lock").len(),
        1,
        "n2 received it meanwhile"
    );
}

/// A set of `n` fake nodes keeping its templates in a catalog in a temporary directory.
fn set_with_catalog(n: usize) -> (NodeSet, Vec<Arc<FakeNode>>, tempfile::TempDir, DirCatalog) {
    let (set, nodes) = set_of(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = DirCatalog::open(dir.path().join("catalog")).expect("catalog");
    set.set_catalog(Arc::new(catalog.clone()));
    (set, nodes, dir, catalog)
}

/// Waits until the catalog records template `name` (archives run in the background).
async fn archived(catalog: &DirCatalog, name: &TemplateName) -> CatalogEntry {
    for _ in 0..500 {
        if let Some(e) = catalog.entry(name).await.expect("catalog") {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} was not archived");
}

#[tokio::test]
async fn a_template_outlives_every_node_that_had_it_through_the_catalog() {
    use paddock_node_contract::fake::{fake_digest, fake_layer};
    let (set, nodes, _dir, catalog) = set_with_catalog(3);
    let name = TemplateName::parse("mine").expect("name");
    let (logs, _lines) = tokio::sync::mpsc::unbounded_channel();
    set.build(build_of(&name), logs).await.expect("build");
    let entry = archived(&catalog, &name).await;
    let digest = fake_digest(&name);
    assert_eq!(entry.digests(), vec![digest.clone()]);
    // The layer's bytes, checked against its digest, on the control plane's disk.
    let stored = std::fs::read(catalog.root().join("layers").join(&digest[7..])).expect("layer");
    assert_eq!(stored, fake_layer(&name));

    // The node that built it goes away, and nobody else had it.
    let builder = nodes
        .iter()
        .position(|n| n.has_template(&name))
        .expect("built somewhere");
    assert!(set.remove(&format!("n{builder}")));
    assert!(set.template(&name).await.expect("lookup").is_some());
    assert!(set
        .list_templates()
        .await
        .expect("list")
        .iter()
        .any(|t| t.name == name));
    let made = set
        .create(CreateRequest {
            template: name.clone(),
            ..request()
        })
        .await
        .expect("a create still starts it");
    let holder = set.owner_of(&made.id).expect("owned");
    let holder = &nodes[holder[1..].parse::<usize>().expect("index")];
    assert_eq!(
        holder.received.lock().expect("lock").clone(),
        vec![(name.clone(), vec![digest.clone()])],
        "sent from the catalog"
    );

    // A rebuild replaces the entry; a delete removes it and, in time, its layer.
    let (logs, _lines) = tokio::sync::mpsc::unbounded_channel();
    set.build(build_of(&name), logs).await.expect("rebuild");
    archived(&catalog, &name).await;
    assert!(set.delete_template(&name).await.expect("delete"));
    assert!(catalog.entry(&name).await.expect("catalog").is_none());
    assert!(!set
        .list_templates()
        .await
        .expect("list")
        .iter()
        .any(|t| t.name == name));
    for _ in 0..500 {
        if !catalog.root().join("layers").join(&digest[7..]).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the deleted template's layer stayed in the catalog");
}

#[tokio::test]
async fn base_built_once_is_archived_and_a_cluster_of_new_nodes_gets_it_from_the_catalog() {
    let (set, nodes, _dir, catalog) = set_with_catalog(1);
    set.set_base_grace(Duration::from_millis(50));
    nodes[0].without_base.store(true, Ordering::SeqCst);
    set.provide_base("n0").await.expect("built");
    assert_eq!(nodes[0].base_builds.load(Ordering::SeqCst), 1);
    let base = TemplateName::parse("base").expect("name");
    archived(&catalog, &base).await;
    // Every node is replaced by one that has nothing.
    assert!(set.remove("n0"));
    let fresh = FakeNode::new();
    fresh.without_base.store(true, Ordering::SeqCst);
    set.add("m0", fresh.clone(), cap());
    set.provide_base("m0").await.expect("provided");
    assert_eq!(
        fresh.base_builds.load(Ordering::SeqCst),
        0,
        "not built again"
    );
    assert_eq!(fresh.received.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn a_node_that_joins_with_templates_the_catalog_lacks_has_them_archived() {
    let (set, nodes, _dir, catalog) = set_with_catalog(1);
    let (logs, _lines) = tokio::sync::mpsc::unbounded_channel();
    let name = TemplateName::parse("older").expect("name");
    // Made on the node directly (before the control plane had a catalog).
    nodes[0].build(build_of(&name), logs).await.expect("build");
    assert!(catalog.entry(&name).await.expect("catalog").is_none());
    let archived = set.archive_missing("n0").await.expect("archive");
    // base, the fake's standard templates and this one; none twice.
    assert!(archived >= 2, "{archived}");
    assert!(catalog.entry(&name).await.expect("catalog").is_some());
    assert_eq!(set.archive_missing("n0").await.expect("again"), 0);
}

#[tokio::test]
async fn an_archive_of_a_template_that_changed_meanwhile_is_not_recorded() {
    let (set, _nodes, _dir, catalog) = set_with_catalog(1);
    let base = TemplateName::parse("base").expect("name");
    // Held: the archive waits behind another one.
    let held = set.inner.archiving.lock().await;
    let pending = tokio::spawn({
        let set = set.clone();
        let base = base.clone();
        async move { set.archive(&base, "n0").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    set.forget_template(&base);
    drop(held);
    assert!(!pending.await.expect("task").expect("archive"));
    assert!(catalog.entry(&base).await.expect("catalog").is_none());
    assert!(set.archive(&base, "n0").await.expect("archive"));
}

#[tokio::test]
async fn a_failed_transfer_backs_off_before_the_next_to_that_node() {
    let (set, nodes) = set_of(2);
    let name = TemplateName::parse("mine").expect("name");
    let (logs, _lines) = tokio::sync::mpsc::unbounded_channel();
    nodes[0].build(build_of(&name), logs).await.expect("build");
    nodes[1].down.store(true, Ordering::SeqCst);
    let first = set.replicate(&name, "n1").await.expect_err("down");
    assert_eq!(first.code, ErrorCode::Unavailable);
    // Back up at once, but the next try waits its turn: no transfer, the last error.
    nodes[1].down.store(false, Ordering::SeqCst);
    let waiting = set.replicate(&name, "n1").await.expect_err("backing off");
    assert!(
        waiting.message.contains("1 time(s) in a row"),
        "{waiting:?}"
    );
    assert!(!nodes[1].has_template(&name));
    // Creates placed there meanwhile start no transfer in the background either.
    set.replicate_in_background(&name, "n1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!nodes[1].has_template(&name));
    tokio::time::sleep(TRANSFER_BACKOFF.0).await;
    assert!(set.replicate(&name, "n1").await.expect("sent").is_some());
    assert!(nodes[1].has_template(&name));
    // A success starts over.
    assert!(set.inner.transfer_failures.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn creates_go_where_the_template_is_warm() {
    let (set, nodes) = set_of(3);
    let base = TemplateName::parse("base").expect("name");
    assert!(set.report_warm("n2", std::slice::from_ref(&base)));
    assert!(!set.report_warm("nowhere", &[]));
    // Equal otherwise: each create goes to the node with a warm sandbox of its template.
    for _ in 0..5 {
        let made = set.create(request()).await.expect("create");
        assert_eq!(set.owner_of(&made.id).as_deref(), Some("n2"));
        set.kill(&made.id).await.expect("kill");
    }
    assert_eq!(nodes[2].created.lock().expect("lock").len(), 5);
    // Reported cold again: the preference goes.
    set.report_warm("n2", &[]);
    let mut holders = HashSet::new();
    for _ in 0..30 {
        let made = set.create(request()).await.expect("create");
        holders.insert(set.owner_of(&made.id).expect("owned"));
        set.kill(&made.id).await.expect("kill");
    }
    assert_eq!(holders.len(), 3, "{holders:?}");
}
