//! E2B's admin node routes: `X-Admin-Token` auth, the exact `Node`/`NodeDetail` shapes of
//! E2B's spec, draining through `POST /nodes/{nodeID}`, and bad bodies.

use std::collections::{BTreeMap, BTreeSet};

use paddock_api::cluster::{
    Allocated, Capacity, DiskUsage, HugePages, MachineInfo, NodeRegistration, NodeReport,
};

use crate::harness::*;

const ADMIN: &str = "adm_test_token";
const CLUSTER: &str = "6f1c3a52-0d5e-4a8e-9a43-3b7f0c2d9e11";

async fn start_admin() -> Harness {
    start_configured(
        tempfile::tempdir().expect("tempdir"),
        FakeNode::new(),
        |c| c.admin_token = Some(ADMIN.into()),
    )
    .await
}

/// A request with `X-Admin-Token: token` (none when `None`).
async fn admin(
    h: &Harness,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        req = req.header("X-Admin-Token", token);
    }
    let req = req
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    h.send(req).await
}

fn registration(id: &str, cluster: &str) -> NodeRegistration {
    NodeRegistration {
        id: id.into(),
        service_instance_id: format!("{id}-instance"),
        cluster_id: cluster.into(),
        version: "0.1.0".into(),
        commit: "deadbeef".into(),
        machine_info: MachineInfo {
            cpu_family: "6".into(),
            cpu_model: "85".into(),
            cpu_model_name: "Intel(R) Xeon(R)".into(),
            cpu_architecture: "x86_64".into(),
        },
        capacity: Capacity {
            cpus: 16,
            memory_mb: 32768,
            disk_mb: 200_000,
            max_sandboxes: 100,
        },
        labels: BTreeMap::new(),
    }
}

fn report() -> NodeReport {
    NodeReport {
        sandbox_count: 2,
        starting_count: 1,
        sandboxes: vec!["isb1".into(), "isb2".into()],
        allocated: Allocated {
            cpus: 4,
            memory_mb: 1024,
            disk_mb: 2048,
        },
        cpu_count: 8,
        cpu_load: 0.25,
        memory_used_bytes: 3 << 30,
        memory_total_bytes: 16 << 30,
        disks: vec![DiskUsage {
            mount_point: "/var/lib/paddock".into(),
            device: "/dev/nvme0n1p1".into(),
            filesystem_type: "ext4".into(),
            used_bytes: 10 << 30,
            total_bytes: 100 << 30,
        }],
        huge_pages: HugePages::default(),
        create_successes: 7,
        create_fails: 1,
        at: chrono::Utc::now(),
    }
}

/// Registers `id` in `cluster` and records one report: the node is `ready`.
fn join(h: &Harness, id: &str, cluster: &str) {
    let nodes = h.control.nodes();
    nodes.register(registration(id, cluster)).expect("register");
    nodes.report(id, report()).expect("report");
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("object").keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// E2B's `Node` (spec/openapi.yml): every property, all of them required.
const NODE_FIELDS: [&str; 13] = [
    "id",
    "serviceInstanceID",
    "clusterID",
    "status",
    "statusChangedAt",
    "sandboxCount",
    "metrics",
    "createSuccesses",
    "createFails",
    "sandboxStartingCount",
    "version",
    "commit",
    "machineInfo",
];

/// E2B's `NodeMetrics`: every property, all of them required.
const METRICS_FIELDS: [&str; 11] = [
    "allocatedCPU",
    "allocatedMemoryBytes",
    "cpuPercent",
    "memoryUsedBytes",
    "cpuCount",
    "memoryTotalBytes",
    "disks",
    "hugePagesTotal",
    "hugePagesUsed",
    "hugePagesReserved",
    "hugePageSizeBytes",
];

#[tokio::test]
async fn admin_routes_need_the_admin_token() {
    let h = start_admin().await;
    join(&h, "node-a", CLUSTER);
    for (method, uri, body) in [
        (Method::GET, "/nodes", None),
        (Method::GET, "/nodes/events", None),
        (Method::GET, "/nodes/node-a", None),
        (
            Method::POST,
            "/nodes/node-a",
            Some(r#"{"status":"draining"}"#),
        ),
    ] {
        let r = admin(&h, method.clone(), uri, None, body).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "missing admin token");
        let r = admin(&h, method.clone(), uri, Some("adm_test_tokeN"), body).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid admin token");
        let r = admin(&h, method.clone(), uri, Some(""), body).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid admin token");
        // The team API key is not an admin token.
        let r = h.call(method.clone(), uri, Some(KEY), body).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "missing admin token");
        let r = admin(&h, method, uri, Some(KEY), body).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid admin token");
    }
    // Nothing was drained by the refused requests.
    let r = admin(&h, Method::GET, "/nodes/node-a", Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "ready");
}

#[tokio::test]
async fn without_a_configured_token_admin_routes_are_closed() {
    let h = start().await;
    join(&h, "node-a", CLUSTER);
    for token in [None, Some(""), Some(ADMIN)] {
        let r = admin(&h, Method::GET, "/nodes", token, None).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "no admin token is configured");
        let r = admin(
            &h,
            Method::POST,
            "/nodes/node-a",
            token,
            Some(r#"{"status":"draining"}"#),
        )
        .await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "no admin token is configured");
    }
    assert_eq!(
        h.control.nodes().status("node-a"),
        Some(paddock_api::cluster::NodeStatus::Ready)
    );
}

#[tokio::test]
async fn nodes_have_exactly_e2b_fields() {
    let h = start_admin().await;
    let r = admin(&h, Method::GET, "/nodes", Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!([]));

    join(&h, "node-b", CLUSTER);
    join(&h, "node-a", CLUSTER);
    // Registered, no report yet: connecting, zero metrics, still every field.
    h.control
        .nodes()
        .register(registration("node-c", CLUSTER))
        .expect("register");

    let r = admin(&h, Method::GET, "/nodes", Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let list = r.body.as_array().expect("array");
    let ids: Vec<&str> = list.iter().map(|n| n["id"].as_str().expect("id")).collect();
    assert_eq!(ids, ["node-a", "node-b", "node-c"]);
    for node in list {
        assert_eq!(keys(node), set(&NODE_FIELDS), "{node}");
        assert_eq!(keys(&node["metrics"]), set(&METRICS_FIELDS), "{node}");
        assert_eq!(
            keys(&node["machineInfo"]),
            set(&["cpuFamily", "cpuModel", "cpuModelName", "cpuArchitecture"])
        );
        let changed = node["statusChangedAt"].as_str().expect("string");
        chrono::DateTime::parse_from_rfc3339(changed).expect("RFC 3339");
    }

    let a = &list[0];
    assert_eq!(a["serviceInstanceID"], "node-a-instance");
    assert_eq!(a["clusterID"], CLUSTER);
    assert_eq!(a["status"], "ready");
    assert_eq!(a["sandboxCount"], 2);
    assert_eq!(a["sandboxStartingCount"], 1);
    assert_eq!(a["createSuccesses"], 7);
    assert_eq!(a["createFails"], 1);
    assert_eq!(a["version"], "0.1.0");
    assert_eq!(a["commit"], "deadbeef");
    assert_eq!(a["machineInfo"]["cpuModelName"], "Intel(R) Xeon(R)");
    assert_eq!(a["machineInfo"]["cpuArchitecture"], "x86_64");
    let m = &a["metrics"];
    assert_eq!(m["allocatedCPU"], 4);
    assert_eq!(m["allocatedMemoryBytes"], 1024u64 << 20);
    assert_eq!(m["cpuPercent"], 25);
    assert_eq!(m["cpuCount"], 8);
    assert_eq!(m["memoryUsedBytes"], 3u64 << 30);
    assert_eq!(m["memoryTotalBytes"], 16u64 << 30);
    assert_eq!(m["hugePagesTotal"], 0);
    let disks = m["disks"].as_array().expect("disks");
    assert_eq!(disks.len(), 1);
    assert_eq!(
        keys(&disks[0]),
        set(&[
            "mountPoint",
            "device",
            "filesystemType",
            "usedBytes",
            "totalBytes"
        ])
    );
    assert_eq!(disks[0]["filesystemType"], "ext4");
    assert_eq!(disks[0]["totalBytes"], 100u64 << 30);

    let c = &list[2];
    assert_eq!(c["status"], "connecting");
    assert_eq!(c["sandboxCount"], 0);
    assert_eq!(c["metrics"]["cpuCount"], 0);
    assert_eq!(c["metrics"]["disks"], json!([]));
}

#[tokio::test]
async fn node_detail_is_e2b_node_detail_plus_sandbox_ids() {
    let h = start_admin().await;
    join(&h, "node-a", CLUSTER);
    let r = admin(&h, Method::GET, "/nodes/node-a", Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // E2B's NodeDetail has no sandboxStartingCount; `sandboxes` is Paddock's.
    let mut expected = set(&NODE_FIELDS);
    expected.remove("sandboxStartingCount");
    expected.insert("sandboxes".into());
    assert_eq!(keys(&r.body), expected, "{}", r.body);
    assert_eq!(keys(&r.body["metrics"]), set(&METRICS_FIELDS));
    assert_eq!(r.body["sandboxes"], json!(["isb1", "isb2"]));
    assert_eq!(r.body["status"], "ready");

    let r = admin(&h, Method::GET, "/nodes/node-z", Some(ADMIN), None).await;
    assert_error(&r, StatusCode::NOT_FOUND, "node 'node-z' not found");
}

#[tokio::test]
async fn draining_shows_in_status_and_survives_health_changes() {
    let h = start_admin().await;
    join(&h, "node-a", CLUSTER);
    join(&h, "node-b", CLUSTER);
    let before = admin(&h, Method::GET, "/nodes/node-a", Some(ADMIN), None).await;

    let r = admin(
        &h,
        Method::POST,
        "/nodes/node-a",
        Some(ADMIN),
        Some(r#"{"status":"draining"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(r.body, Value::Null);

    let r = admin(&h, Method::GET, "/nodes", Some(ADMIN), None).await;
    assert_eq!(r.body[0]["status"], "draining");
    assert_eq!(r.body[1]["status"], "ready");
    let after = admin(&h, Method::GET, "/nodes/node-a", Some(ADMIN), None).await;
    assert_eq!(after.body["status"], "draining");
    assert!(
        after.body["statusChangedAt"].as_str() >= before.body["statusChangedAt"].as_str(),
        "{} then {}",
        before.body,
        after.body
    );

    // Silent for more than 10 s: unhealthy; reports resume: draining again.
    let nodes = h.control.nodes();
    nodes.tick(chrono::Utc::now() + chrono::TimeDelta::seconds(11));
    let r = admin(&h, Method::GET, "/nodes/node-a", Some(ADMIN), None).await;
    assert_eq!(r.body["status"], "unhealthy");
    nodes.report("node-a", report()).expect("report");
    let r = admin(&h, Method::GET, "/nodes/node-a", Some(ADMIN), None).await;
    assert_eq!(r.body["status"], "draining");

    // The cluster may be named; back to ready.
    let body = json!({"status": "ready", "clusterID": CLUSTER}).to_string();
    let r = admin(&h, Method::POST, "/nodes/node-a", Some(ADMIN), Some(&body)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = admin(&h, Method::GET, "/nodes/node-a", Some(ADMIN), None).await;
    assert_eq!(r.body["status"], "ready");
}

#[tokio::test]
async fn bad_status_changes_are_400_naming_the_field() {
    let h = start_admin().await;
    join(&h, "node-a", CLUSTER);
    let post = |body: &'static str| {
        let h = &h;
        async move { admin(h, Method::POST, "/nodes/node-a", Some(ADMIN), Some(body)).await }
    };
    for bad in [
        r#"{"status":"standby"}"#,
        r#"{"status":"unhealthy"}"#,
        r#"{"status":"DRAINING"}"#,
        r#"{"status":1}"#,
        r#"{}"#,
    ] {
        assert_error(&post(bad).await, StatusCode::BAD_REQUEST, "'status'");
    }
    assert_error(
        &post(r#"{"status":"draining","drain":true}"#).await,
        StatusCode::BAD_REQUEST,
        "unknown field 'drain'",
    );
    assert_error(
        &post(r#"{"status":"draining","clusterID":7}"#).await,
        StatusCode::BAD_REQUEST,
        "'clusterID'",
    );
    assert_error(
        &post(r#"{"status":"#).await,
        StatusCode::BAD_REQUEST,
        "invalid request body",
    );
    assert_eq!(
        h.control.nodes().status("node-a"),
        Some(paddock_api::cluster::NodeStatus::Ready)
    );

    // A good body for an unknown node, or a node of another cluster: 404.
    let r = admin(
        &h,
        Method::POST,
        "/nodes/node-z",
        Some(ADMIN),
        Some(r#"{"status":"draining"}"#),
    )
    .await;
    assert_error(&r, StatusCode::NOT_FOUND, "node 'node-z' not found");
    let body = json!({"status": "draining", "clusterID": "other"}).to_string();
    let r = admin(&h, Method::POST, "/nodes/node-a", Some(ADMIN), Some(&body)).await;
    assert_error(&r, StatusCode::NOT_FOUND, "node 'node-a' not found");
}

#[tokio::test]
async fn cluster_id_filters_nodes() {
    let h = start_admin().await;
    join(&h, "node-a", CLUSTER);
    join(&h, "node-b", "other");
    let r = admin(
        &h,
        Method::GET,
        &format!("/nodes?clusterID={CLUSTER}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let ids: Vec<&str> = r
        .body
        .as_array()
        .expect("array")
        .iter()
        .map(|n| n["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["node-a"]);
    let r = admin(
        &h,
        Method::GET,
        "/nodes/node-b?clusterID=nope",
        Some(ADMIN),
        None,
    )
    .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not found");
    let r = admin(&h, Method::GET, "/nodes", Some(ADMIN), None).await;
    assert_eq!(r.body.as_array().expect("array").len(), 2);
}

/// The registry's events are kept and served newest first to the admin, with filters and
/// paging; they survive a restart of the control plane.
#[tokio::test]
async fn node_events_are_kept_for_the_admin() {
    let h = start_admin().await;
    let background = tokio::spawn({
        let control = h.control.clone();
        async move { control.run_background().await }
    });
    join(&h, "node-a", CLUSTER);
    join(&h, "node-b", CLUSTER);
    let nodes = h.control.nodes();
    nodes.report("node-b", report()).expect("report");
    // node-a goes silent: unhealthy, then it leaves.
    let later = chrono::Utc::now() + chrono::Duration::seconds(30);
    nodes.tick(later);
    nodes.report("node-b", report()).expect("report");
    nodes.mark_gone("node-a").expect("leave");

    let expected = [
        ("node.left", "node-a", "unhealthy", Value::Null),
        ("node.status_changed", "node-b", "ready", json!("unhealthy")),
        ("node.unhealthy", "node-b", "unhealthy", json!("ready")),
        ("node.unhealthy", "node-a", "unhealthy", json!("ready")),
        (
            "node.status_changed",
            "node-b",
            "ready",
            json!("connecting"),
        ),
        ("node.joined", "node-b", "connecting", Value::Null),
        (
            "node.status_changed",
            "node-a",
            "ready",
            json!("connecting"),
        ),
        ("node.joined", "node-a", "connecting", Value::Null),
    ];
    let mut body = Value::Null;
    for _ in 0..500 {
        let r = admin(&h, Method::GET, "/nodes/events", Some(ADMIN), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        body = r.body;
        if body.as_array().expect("array").len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let list = body.as_array().expect("array");
    let got: Vec<(&str, &str, &str, Value)> = list
        .iter()
        .map(|e| {
            (
                e["type"].as_str().expect("type"),
                e["nodeID"].as_str().expect("nodeID"),
                e["status"].as_str().expect("status"),
                e["previousStatus"].clone(),
            )
        })
        .collect();
    let want: Vec<(&str, &str, &str, Value)> = expected
        .iter()
        .map(|(t, n, s, p)| (*t, *n, *s, p.clone()))
        .collect();
    assert_eq!(got, want, "{body}");
    assert_eq!(
        keys(&list[0]),
        set(&[
            "seq",
            "type",
            "nodeID",
            "status",
            "previousStatus",
            "timestamp"
        ])
    );
    assert!(list
        .windows(2)
        .all(|w| w[0]["seq"].as_i64() > w[1]["seq"].as_i64()));
    assert!(list[0]["timestamp"]
        .as_str()
        .expect("timestamp")
        .parse::<chrono::DateTime<chrono::Utc>>()
        .is_ok());

    // Filters and paging.
    let r = admin(
        &h,
        Method::GET,
        "/nodes/events?nodeID=node-a&type=node.joined",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.body.as_array().expect("array").len(), 1, "{}", r.body);
    assert_eq!(r.body[0]["nodeID"], "node-a");
    let r = admin(
        &h,
        Method::GET,
        "/nodes/events?limit=2&offset=1",
        Some(ADMIN),
        None,
    )
    .await;
    let page: Vec<&Value> = r.body.as_array().expect("array").iter().collect();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["seq"], list[1]["seq"]);
    assert_eq!(page[1]["seq"], list[2]["seq"]);
    let r = admin(&h, Method::GET, "/nodes/events?limit=0", Some(ADMIN), None).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "'limit'");
    let r = admin(
        &h,
        Method::GET,
        "/nodes/events?type=node.gone",
        Some(ADMIN),
        None,
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "'type'");

    h.control.shutdown().await;
    background.await.expect("background ends");

    // Kept across a restart of the control plane.
    let Harness { dir, control, .. } = h;
    drop(control);
    let h = start_configured(dir, FakeNode::new(), |c| c.admin_token = Some(ADMIN.into())).await;
    let r = admin(&h, Method::GET, "/nodes/events?limit=1", Some(ADMIN), None).await;
    assert_eq!(r.body[0]["type"], "node.left", "{}", r.body);
    assert_eq!(r.body[0]["nodeID"], "node-a");
}
