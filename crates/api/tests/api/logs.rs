//! Sandbox logs: `GET /sandboxes/{id}/logs` (v1) and `GET /v2/sandboxes/{id}/logs`.

use std::collections::BTreeMap;

use chrono::Utc;
use paddock_node_contract::logs::{LogEntry, LogLevel};

use crate::harness::*;

fn envd_entry(level: LogLevel, message: &str, logger: &str) -> LogEntry {
    let mut fields = BTreeMap::new();
    fields.insert("source".to_string(), "envd".to_string());
    fields.insert("logger".to_string(), logger.to_string());
    LogEntry {
        timestamp: Utc::now(),
        level,
        message: message.to_string(),
        fields,
    }
}

fn messages(entries: &Value) -> Vec<String> {
    entries
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["message"].as_str().expect("message").to_string())
        .collect()
}

#[tokio::test]
async fn v1_and_v2_merge_lifecycle_and_envd_records() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base"})).await;
    *h.node.envd_log.lock().expect("lock") = vec![
        envd_entry(
            LogLevel::Info,
            "process started: /bin/bash -l -c echo hi",
            "processSvc",
        ),
        envd_entry(
            LogLevel::Warn,
            "process ended: false (exit status 1)",
            "processSvc",
        ),
    ];

    let r = h.get(&format!("/sandboxes/{id}/logs")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let entries = &r.body["logEntries"];
    assert_eq!(
        messages(entries),
        [
            "sandbox created from template base",
            "sandbox running",
            "process started: /bin/bash -l -c echo hi",
            "process ended: false (exit status 1)",
        ]
    );
    assert_eq!(entries[0]["fields"]["source"], "control-plane");
    assert_eq!(entries[0]["fields"]["template"], "base");
    assert_eq!(
        entries[1]["fields"]["memoryMB"], "512",
        "the applied limits"
    );
    assert_eq!(entries[2]["fields"]["source"], "envd");
    assert_eq!(entries[3]["level"], "warn");
    // v1 `logs`: one JSON line per entry, as the E2B CLI parses it.
    let logs = r.body["logs"].as_array().expect("logs");
    assert_eq!(logs.len(), 4);
    let line: Value = serde_json::from_str(logs[2]["line"].as_str().expect("line")).expect("JSON");
    assert_eq!(line["level"], "info");
    assert_eq!(line["logger"], "processSvc");
    assert_eq!(line["message"], "process started: /bin/bash -l -c echo hi");
    assert_eq!(logs[2]["timestamp"], entries[2]["timestamp"]);

    // v1 `start` is inclusive; a start after everything gives nothing.
    let later = Utc::now().timestamp_millis() + 60_000;
    let r = h.get(&format!("/sandboxes/{id}/logs?start={later}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["logs"], json!([]));
    let r = h.get(&format!("/sandboxes/{id}/logs?limit=1")).await;
    assert_eq!(
        messages(&r.body["logEntries"]),
        ["sandbox created from template base"]
    );

    let r = h.get(&format!("/v2/sandboxes/{id}/logs?level=warn")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        messages(&r.body["logs"]),
        ["process ended: false (exit status 1)"]
    );
    let r = h
        .get(&format!("/v2/sandboxes/{id}/logs?search=process+started"))
        .await;
    assert_eq!(
        messages(&r.body["logs"]),
        ["process started: /bin/bash -l -c echo hi"]
    );
    let r = h
        .get(&format!(
            "/v2/sandboxes/{id}/logs?direction=backward&limit=2"
        ))
        .await;
    assert_eq!(
        messages(&r.body["logs"]),
        [
            "process ended: false (exit status 1)",
            "process started: /bin/bash -l -c echo hi"
        ],
        "newest first"
    );
}

#[tokio::test]
async fn a_killed_sandbox_keeps_its_logs_with_the_kill_record() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base"})).await;
    let r = h
        .call(Method::DELETE, &format!("/sandboxes/{id}"), Some(KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // Gone for GET, still there for logs.
    assert_eq!(
        h.get(&format!("/sandboxes/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    let r = h.get(&format!("/v2/sandboxes/{id}/logs")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let logs = &r.body["logs"];
    assert_eq!(
        messages(logs),
        [
            "sandbox created from template base",
            "sandbox running",
            "sandbox stopping: killed by request",
            "sandbox stopped",
        ]
    );
    assert_eq!(logs[2]["fields"]["reason"], "killed by request");
    assert_eq!(logs[3]["fields"]["to"], "stopped");
}

#[tokio::test]
async fn a_sandbox_that_died_says_so() {
    let h = start().await;
    let background = tokio::spawn({
        let control = h.control.clone();
        async move { control.run_background().await }
    });
    let id = h.create(json!({"templateID": "base"})).await;
    // Wait for the exit watcher to listen, then for it to settle the record (conditions, not
    // times; the bound only stops a broken build from hanging).
    for _ in 0..2000 {
        if h.node.event_subscribers() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.node.die(&id);
    for _ in 0..2000 {
        if h.state_of(&id).await == SandboxState::Stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.state_of(&id).await, SandboxState::Stopped);
    let r = h.get(&format!("/v2/sandboxes/{id}/logs?level=error")).await;
    assert_eq!(
        messages(&r.body["logs"]),
        ["sandbox error: sandbox exited by itself"]
    );
    h.control.shutdown().await;
    background.await.expect("background tasks end");
}

/// A sandbox lost with its node, or that ran out of memory, says so in its logs and in its
/// `killed` lifecycle event, not "exited by itself".
#[tokio::test]
async fn a_sandbox_lost_with_its_node_or_out_of_memory_says_why() {
    use paddock_node_contract::ExitReason;
    let h = start().await;
    let background = tokio::spawn({
        let control = h.control.clone();
        async move { control.run_background().await }
    });
    let lost = h.create(json!({"templateID": "base"})).await;
    let oom = h.create(json!({"templateID": "base"})).await;
    let paused = h.create(json!({"templateID": "base"})).await;
    let r = h.post(&format!("/sandboxes/{paused}/pause"), "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    for _ in 0..2000 {
        if h.node.event_subscribers() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.node.end(&lost, ExitReason::NodeLost);
    h.node.end(&oom, ExitReason::OutOfMemory);
    h.node.end(&paused, ExitReason::NodeLost);
    for id in [&lost, &oom, &paused] {
        for _ in 0..2000 {
            if h.state_of(id).await == SandboxState::Stopped {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(h.state_of(id).await, SandboxState::Stopped, "{id}");
    }
    for (id, reason, kill_reason) in [
        (&lost, "node lost", "node_lost"),
        (&oom, "sandbox ran out of memory", "oom"),
        (&paused, "node lost", "node_lost"),
    ] {
        let r = h.get(&format!("/v2/sandboxes/{id}/logs?level=error")).await;
        assert_eq!(
            messages(&r.body["logs"]),
            [format!("sandbox error: {reason}")]
        );
        assert_eq!(r.body["logs"][0]["fields"]["reason"], reason);
        let r = h
            .get(&format!("/events/sandboxes/{id}?orderAsc=true"))
            .await;
        let killed: Vec<&Value> = r
            .body
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["type"] == "sandbox.lifecycle.killed")
            .collect();
        assert_eq!(killed.len(), 1, "{}", r.body);
        assert_eq!(killed[0]["eventData"]["kill_reason"], kill_reason);
        assert_eq!(killed[0]["eventData"]["reason"], reason);
    }
    h.control.shutdown().await;
    background.await.expect("background tasks end");
}

#[tokio::test]
async fn unknown_ids_other_teams_and_bad_queries_are_refused() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base"})).await;
    for path in [
        "/sandboxes/nosuchsandbox1/logs",
        "/v2/sandboxes/nosuchsandbox1/logs",
    ] {
        assert_error(&h.get(path).await, StatusCode::NOT_FOUND, "not found");
    }

    let store = h.control.store();
    let other = store.ensure_team("other").await.expect("team");
    store
        .add_api_key(&other, &paddock_api::hash_api_key("e2b_other"))
        .await
        .expect("key");
    for path in [
        format!("/sandboxes/{id}/logs"),
        format!("/v2/sandboxes/{id}/logs"),
    ] {
        let r = h.call(Method::GET, &path, Some("e2b_other"), None).await;
        assert_error(&r, StatusCode::NOT_FOUND, "not found");
        let r = h.call(Method::GET, &path, None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }

    for query in ["start=yesterday", "start=-5", "limit=5000"] {
        let r = h.get(&format!("/sandboxes/{id}/logs?{query}")).await;
        assert_error(
            &r,
            StatusCode::BAD_REQUEST,
            query.split('=').next().expect("name"),
        );
    }
    for query in [
        "cursor=x",
        "limit=-1",
        "direction=sideways",
        "level=verbose",
        "search=%zz",
    ] {
        let r = h.get(&format!("/v2/sandboxes/{id}/logs?{query}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.body);
        assert_eq!(r.body["code"], 400);
    }
}
