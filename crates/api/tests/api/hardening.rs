//! Failure paths of the lifecycle: shutdown during a create, client disconnects, failing node
//! kills, sandboxes dying while they start, and pruning of old records.

use std::sync::atomic::Ordering;

use crate::harness::*;

fn create_request(template: &str, idempotency_key: Option<&str>) -> Request<Body> {
    let mut req = Request::post("/v2/sandboxes").header("x-api-key", KEY);
    if let Some(key) = idempotency_key {
        req = req.header("idempotency-key", key);
    }
    req.body(Body::from(format!(r#"{{"templateID":"{template}"}}"#)))
        .expect("request")
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_for_state(h: &Harness, id: &str, state: SandboxState) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.state_of(id).await != state {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never became {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn first_created(h: &Harness) -> String {
    h.node.created.lock().expect("lock")[0].id.to_string()
}

#[tokio::test]
async fn shutdown_waits_for_creates_in_flight_and_stops_them() {
    let h = start().await;
    let create = tokio::spawn(h.router.clone().oneshot(create_request("slow", None)));
    wait_for("create reaches the node", || {
        h.node.in_create.load(Ordering::SeqCst) == 1
    })
    .await;
    let node = h.node.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        node.slow_gate.add_permits(1);
    });
    h.control.shutdown().await;
    assert_eq!(
        h.node.in_create.load(Ordering::SeqCst),
        0,
        "shutdown returned while a create was still inside the node"
    );
    let id = first_created(&h);
    assert!(!h.node.is_live(&id), "the sandbox outlived shutdown");
    assert_eq!(h.state_of(&id).await, SandboxState::Stopped);
    let res = create.await.expect("no panic").expect("infallible");
    assert_eq!(res.status(), StatusCode::CREATED);
    let r = h.post("/v2/sandboxes", r#"{"templateID":"base"}"#).await;
    assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "shutting down");
}

#[tokio::test]
async fn idempotency_key_survives_a_client_disconnect() {
    let h = start().await;
    let first = tokio::spawn(h.router.clone().oneshot(create_request("slow", Some("k1"))));
    wait_for("create reaches the node", || {
        h.node.in_create.load(Ordering::SeqCst) == 1
    })
    .await;
    first.abort(); // the client goes away mid-create
    let _ = first.await;
    h.node.slow_gate.add_permits(10);
    let res = h
        .router
        .clone()
        .oneshot(create_request("slow", Some("k1")))
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value =
        serde_json::from_slice(&res.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(body["sandboxID"].as_str(), Some(first_created(&h).as_str()));
    assert_eq!(h.node.created.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn failed_kills_are_retried_until_the_sandbox_is_gone() {
    let h = start().await;
    let background = tokio::spawn({
        let control = h.control.clone();
        async move { control.run_background().await }
    });
    let id = h.create(json!({"templateID": "base"})).await;
    h.node.kill_failures.store(1, Ordering::SeqCst);
    let r = h
        .call(Method::DELETE, &format!("/sandboxes/{id}"), Some(KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    assert!(h.node.is_live(&id));
    wait_for_state(&h, &id, SandboxState::Stopped).await;
    assert!(!h.node.is_live(&id));
    h.control.shutdown().await;
    background.await.expect("no panic");
}

#[tokio::test]
async fn failed_cleanup_of_an_exited_sandbox_is_retried() {
    let h = start().await;
    let background = tokio::spawn({
        let control = h.control.clone();
        async move { control.run_background().await }
    });
    let id = h.create(json!({"templateID": "base"})).await;
    tokio::time::sleep(Duration::from_millis(20)).await; // let the watcher subscribe
    h.node.kill_failures.store(1, Ordering::SeqCst);
    h.node.die(&id);
    wait_for("the failing cleanup ran", || {
        h.node.kill_failures.load(Ordering::SeqCst) == 0
    })
    .await;
    wait_for_state(&h, &id, SandboxState::Stopped).await;
    assert!(h.node.was_killed(&id), "the retry reached the node");
    h.control.shutdown().await;
    background.await.expect("no panic");
}

#[tokio::test]
async fn a_sandbox_that_dies_while_starting_is_not_reported_running() {
    let h = start().await;
    let background = tokio::spawn({
        let control = h.control.clone();
        async move { control.run_background().await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await; // let the watcher subscribe
    let r = h.post("/v2/sandboxes", r#"{"templateID":"fragile"}"#).await;
    assert_error(&r, StatusCode::INTERNAL_SERVER_ERROR, "exited");
    let id = first_created(&h);
    // Settled by the create path or by the exit watcher, whichever saw it first: never running.
    assert_ne!(h.state_of(&id).await, SandboxState::Running);
    wait_for_state(&h, &id, SandboxState::Stopped).await;
    assert_eq!(h.get("/v2/sandboxes").await.body, json!([]));
    h.control.shutdown().await;
    background.await.expect("no panic");
}

#[tokio::test]
async fn stopped_records_older_than_a_week_are_pruned() {
    let h = start().await;
    let old = h.create(json!({"templateID": "base"})).await;
    let recent = h.create(json!({"templateID": "base"})).await;
    for id in [&old, &recent] {
        let r = h
            .call(Method::DELETE, &format!("/sandboxes/{id}"), Some(KEY), None)
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
    let running = h.create(json!({"templateID": "base"})).await;
    // Backdate one stop by eight days, behind the store's back.
    let db = rusqlite::Connection::open(h.data_dir.join("paddock.db")).expect("open db");
    let eight_days_ago = chrono::Utc::now().timestamp_millis() - 8 * 24 * 3600 * 1000;
    db.execute(
        "UPDATE sandboxes SET updated_at = ?1 WHERE id = ?2",
        rusqlite::params![eight_days_ago, old],
    )
    .expect("backdate");
    drop(db);

    let background = tokio::spawn({
        let control = h.control.clone();
        async move { control.run_background().await }
    });
    let store = h.control.store();
    let old_id = SandboxId::parse(&old).expect("id");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.sandbox(&old_id).await.expect("read").is_some() {
        assert!(tokio::time::Instant::now() < deadline, "never pruned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.state_of(&recent).await, SandboxState::Stopped);
    assert_eq!(h.state_of(&running).await, SandboxState::Running);
    h.control.shutdown().await;
    background.await.expect("no panic");
}
