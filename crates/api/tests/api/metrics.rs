//! `GET /sandboxes/{id}/metrics` and `GET /sandboxes/metrics`, over the shared `FakeNode`
//! serving three fixed samples per sandbox (t = 1000, 2000, 3000 s).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use paddock_node_contract::MetricSample;

use crate::harness::*;

fn sample(secs: i64, cpu: f64) -> MetricSample {
    MetricSample {
        timestamp: DateTime::<Utc>::from_timestamp(secs, 0).expect("time"),
        cpu_count: 2,
        cpu_used_pct: cpu,
        mem_used: 100 << 20,
        mem_total: 512 << 20,
        mem_cache: 10 << 20,
        disk_used: 5 << 20,
        disk_total: 10 << 30,
    }
}

async fn start_metrics() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeNode::new();
    let data_dir = dir.path().to_path_buf();
    *fake.samples.lock().expect("lock") =
        vec![sample(1000, 5.0), sample(2000, 50.0), sample(3000, 99.5)];
    let control = ControlPlane::open(ApiConfig::new(&data_dir), fake.clone())
        .await
        .expect("open control plane");
    control.reconcile().await.expect("reconcile");
    control
        .ensure_api_key(Some(KEY.into()))
        .await
        .expect("register key");
    let router = control.router();
    Harness {
        dir,
        data_dir,
        node: fake,
        control,
        router,
    }
}

fn unix_times(r: &Reply) -> Vec<i64> {
    r.body
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["timestampUnix"].as_i64().expect("timestampUnix"))
        .collect()
}

#[tokio::test]
async fn series_with_every_field_and_time_filters() {
    let h = start_metrics().await;
    let id = h.create(json!({"templateID": "base"})).await;

    let r = h.get(&format!("/sandboxes/{id}/metrics")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(unix_times(&r), vec![1000, 2000, 3000]);
    assert_eq!(
        r.body[1],
        json!({
            "timestamp": "1970-01-01T00:33:20.000Z",
            "timestampUnix": 2000,
            "cpuCount": 2,
            "cpuUsedPct": 50.0,
            "memUsed": 100 << 20,
            "memTotal": 512 << 20,
            "memCache": 10 << 20,
            "diskUsed": 5 << 20,
            "diskTotal": 10_i64 << 30,
        })
    );

    let r = h
        .get(&format!("/sandboxes/{id}/metrics?start=1500&end=3000"))
        .await;
    assert_eq!(unix_times(&r), vec![2000, 3000], "bounds are inclusive");
    let r = h.get(&format!("/sandboxes/{id}/metrics?end=1999")).await;
    assert_eq!(unix_times(&r), vec![1000]);
    let r = h.get(&format!("/sandboxes/{id}/metrics?start=4000")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!([]));
}

#[tokio::test]
async fn bad_queries_unknown_and_foreign_sandboxes() {
    let h = start_metrics().await;
    let id = h.create(json!({"templateID": "base"})).await;
    for q in ["start=yesterday", "end=-5", "start=3&end=2", "start=1.5"] {
        let r = h.get(&format!("/sandboxes/{id}/metrics?{q}")).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "");
    }
    let r = h.get("/sandboxes/inope/metrics").await;
    assert_error(&r, StatusCode::NOT_FOUND, "inope");
    let r = h.get("/sandboxes/NOT!valid/metrics").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h
        .call(Method::GET, &format!("/sandboxes/{id}/metrics"), None, None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let store = h.control.store();
    let other = store.ensure_team("other").await.expect("team");
    store
        .add_api_key(&other, &paddock_api::hash_api_key("e2b_other"))
        .await
        .expect("key");
    let r = h
        .call(
            Method::GET,
            &format!("/sandboxes/{id}/metrics"),
            Some("e2b_other"),
            None,
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not found");
    let r = h
        .call(
            Method::GET,
            &format!("/sandboxes/metrics?sandbox_ids={id}"),
            Some("e2b_other"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"sandboxes": {}}), "another team's sandbox");

    // Killed: the record is stopped, the samples are no longer served.
    let r = h
        .call(Method::DELETE, &format!("/sandboxes/{id}"), Some(KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h.get(&format!("/sandboxes/{id}/metrics")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not found");
}

#[tokio::test]
async fn paused_sandbox_returns_its_last_samples() {
    let h = start_metrics().await;
    let id = h.create(json!({"templateID": "base"})).await;
    let sid = SandboxId::parse(&id).expect("id");
    let moved = h
        .control
        .store()
        .set_state(&sid, SandboxState::Running, SandboxState::Paused, None)
        .await
        .expect("store");
    assert!(moved);
    let r = h.get(&format!("/sandboxes/{id}/metrics")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(unix_times(&r), vec![1000, 2000, 3000]);
}

#[tokio::test]
async fn batch_returns_the_newest_sample_of_each_visible_sandbox() {
    let h = start_metrics().await;
    let a = h.create(json!({"templateID": "base"})).await;
    let b = h.create(json!({"templateID": "base"})).await;
    let gone = h.create(json!({"templateID": "base"})).await;
    let r = h
        .call(
            Method::DELETE,
            &format!("/sandboxes/{gone}"),
            Some(KEY),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    let r = h
        .get(&format!(
            "/sandboxes/metrics?sandbox_ids={a}%2C{b},{gone},inope"
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let map: HashMap<String, Value> =
        serde_json::from_value(r.body["sandboxes"].clone()).expect("object");
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    let mut want = vec![&a, &b];
    want.sort();
    assert_eq!(keys, want, "killed and unknown ids are left out");
    assert_eq!(map[&a]["timestampUnix"], 3000, "the newest sample");
    assert_eq!(map[&b]["cpuUsedPct"], 99.5);

    let r = h.get("/sandboxes/metrics").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "sandbox_ids");
    let many: Vec<String> = (0..101).map(|i| format!("i{i}")).collect();
    let r = h
        .get(&format!(
            "/sandboxes/metrics?sandbox_ids={}",
            many.join(",")
        ))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "maximum is 100");
}

/// The value of the sample line `series` (name and labels exactly) in `text`.
fn sample_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn prometheus_has_request_durations_by_route_create_phases_and_outcomes() {
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    let h = start_metrics().await;
    let id = h.create(json!({"templateID": "base"})).await;
    assert_eq!(
        h.get(&format!("/sandboxes/{id}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        h.get("/sandboxes/inope").await.status,
        StatusCode::NOT_FOUND
    );
    let r = h
        .post("/v2/sandboxes", r#"{"templateID": "no-such-template"}"#)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let paused = h.post(&format!("/sandboxes/{id}/pause"), "{}").await;
    assert_eq!(paused.status, StatusCode::NO_CONTENT, "{}", paused.body);
    let resumed = h.post(&format!("/sandboxes/{id}/resume"), "{}").await;
    assert!(resumed.status.is_success(), "{}", resumed.body);
    let killed = h
        .call(Method::DELETE, &format!("/sandboxes/{id}"), Some(KEY), None)
        .await;
    assert_eq!(killed.status, StatusCode::NO_CONTENT);
    let _kept = h.create(json!({"templateID": "base"})).await;

    let req = axum::http::Request::get("/metrics")
        .header("X-API-KEY", KEY)
        .body(Body::empty())
        .expect("request");
    let res = h.router.clone().oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::OK);
    let text = String::from_utf8(
        res.into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec(),
    )
    .expect("utf-8");
    // Counts are the process's (other tests run in it too): at least this test's.
    let at_least_one = |series: &str| {
        let v = sample_value(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert!(v >= 1.0, "{series} = {v}");
    };
    // By route template (never the sandbox id) and status.
    let http = "paddock_http_request_duration_seconds";
    at_least_one(&format!(
        "{http}_count{{service=\"api\",route=\"/v2/sandboxes\",method=\"POST\",status=\"201\"}}"
    ));
    at_least_one(&format!(
        "{http}_count{{service=\"api\",route=\"/sandboxes/{{sandbox_id}}\",method=\"GET\",status=\"200\"}}"
    ));
    at_least_one(&format!(
        "{http}_count{{service=\"api\",route=\"/sandboxes/{{sandbox_id}}\",method=\"GET\",status=\"404\"}}"
    ));
    at_least_one(&format!(
        "{http}_bucket{{service=\"api\",route=\"/v2/sandboxes\",method=\"POST\",status=\"201\",le=\"+Inf\"}}"
    ));
    assert!(!text.contains(&id), "a sandbox id in a label");
    for phase in [
        "validate",
        "admit",
        "template",
        "claim_warm",
        "record",
        "node",
        "settle",
        "total",
    ] {
        at_least_one(&format!(
            "paddock_create_phase_seconds_count{{phase=\"{phase}\"}}"
        ));
    }
    at_least_one("paddock_creates_total{outcome=\"ok\"}");
    at_least_one("paddock_creates_total{outcome=\"template_not_found\"}");
    for op in ["pause", "resume", "kill"] {
        at_least_one(&format!(
            "paddock_operation_seconds_count{{operation=\"{op}\",outcome=\"ok\"}}"
        ));
    }
    assert!(text.contains("# TYPE paddock_http_request_duration_seconds histogram"));
    // This harness's store: exactly the one sandbox left running.
    assert_eq!(
        sample_value(
            &text,
            "paddock_team_sandboxes{state=\"running\",template=\"base\"}"
        ),
        Some(1.0),
        "{text}"
    );

    // Every series the Grafana dashboard in deploy/ queries is one Paddock exports.
    let exported: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../../../deploy/grafana/paddock.json"))
            .expect("dashboard JSON");
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("paddock_") {
                    continue;
                }
                let name = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .filter(|n| exported.contains(n))
                    .unwrap_or(word);
                assert!(
                    exported.contains(name),
                    "the dashboard queries {word}, which /metrics does not have"
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 10, "{queried}");
}
