//! Background work and process lifetime: exits, restart reconciliation, keys across restarts.

use crate::harness::*;

#[tokio::test]
async fn sandboxes_that_die_by_themselves_are_marked_stopped() {
    let h = start().await;
    let background = tokio::spawn({
        let control = h.control.clone();
        async move { control.run_background().await }
    });
    let id = h.create(json!({"templateID": "base"})).await;
    tokio::time::sleep(Duration::from_millis(20)).await; // let the watcher subscribe
    h.node.die(&id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.state_of(&id).await != SandboxState::Stopped {
        assert!(
            tokio::time::Instant::now() < deadline,
            "exit was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.control.shutdown().await;
    background.await.expect("no panic");
}

/// A node's event stream that ends (a remote node that went away and came back) does not end
/// exit watching: the watcher subscribes again, and a sandbox that died while nobody listened
/// is found by comparing the store with the node.
#[tokio::test]
async fn exits_are_watched_again_after_the_event_stream_ends() {
    let h = start().await;
    let background = tokio::spawn({
        let control = h.control.clone();
        async move { control.run_background().await }
    });
    let wait_for = |what: &'static str, check: Box<dyn Fn() -> bool + Send>| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let quiet = h.create(json!({"templateID": "base"})).await;
    let loud = h.create(json!({"templateID": "base"})).await;
    let node = h.node.clone();
    wait_for(
        "the watcher subscribes",
        Box::new(move || node.event_subscribers() > 0),
    )
    .await;

    // Dies without an event, then the stream ends: the sweep after resubscribing finds it.
    h.node.vanish(&quiet);
    h.node.end_events();
    let node = h.node.clone();
    wait_for(
        "the watcher subscribes again",
        Box::new(move || node.event_subscribers() > 0),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.state_of(&quiet).await != SandboxState::Stopped {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent exit was not found"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And events flow on the new subscription.
    assert_eq!(h.state_of(&loud).await, SandboxState::Running);
    h.node.die(&loud);
    while h.state_of(&loud).await != SandboxState::Stopped {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the exit was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.control.shutdown().await;
    background.await.expect("no panic");
}

#[tokio::test]
async fn restart_reconciles_vanished_sandboxes() {
    let h = start().await;
    let survivor = h.create(json!({"templateID": "base"})).await;
    let vanished = h.create(json!({"templateID": "base"})).await;
    let Harness {
        dir,
        data_dir,
        node,
        control,
        router,
    } = h;
    drop((control, router));

    // The "new process" finds only one sandbox still running on the node.
    let new_node = FakeNode::new();
    new_node
        .live
        .lock()
        .expect("lock")
        .insert(SandboxId::parse(&survivor).expect("id"));
    let _ = node;
    let h = start_in(dir, new_node).await;
    assert_eq!(h.data_dir, data_dir);
    assert_eq!(h.state_of(&vanished).await, SandboxState::Stopped);
    assert_eq!(h.state_of(&survivor).await, SandboxState::Running);
    let list = h.get("/v2/sandboxes").await;
    let ids: Vec<&str> = list
        .body
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["sandboxID"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, vec![survivor.as_str()]);

    // Shutdown stops everything and records it.
    h.control.shutdown().await;
    assert_eq!(h.state_of(&survivor).await, SandboxState::Stopped);
    assert!(!h.node.is_live(&survivor));
    let r = h.post("/v2/sandboxes", r#"{"templateID":"base"}"#).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn free_ensure_api_key_works_before_the_control_plane_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, generated) = paddock_api::ensure_api_key(dir.path(), Some("e2b_from_env".into()))
        .await
        .expect("key");
    assert_eq!((key.as_str(), generated), ("e2b_from_env", false));
    let control = ControlPlane::open(ApiConfig::new(dir.path()), FakeNode::new())
        .await
        .expect("open");
    let req = Request::get("/v2/sandboxes")
        .header("x-api-key", "e2b_from_env")
        .body(Body::empty())
        .expect("req");
    assert_eq!(
        control
            .router()
            .oneshot(req)
            .await
            .expect("infallible")
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn generated_key_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ApiConfig::new(dir.path());
    let control = ControlPlane::open(config.clone(), FakeNode::new())
        .await
        .expect("open");
    let (key, generated) = control.ensure_api_key(None).await.expect("key");
    assert!(generated && key.starts_with("e2b_"));
    drop(control);
    let control = ControlPlane::open(config, FakeNode::new())
        .await
        .expect("reopen");
    let (again, generated) = control.ensure_api_key(None).await.expect("key");
    assert_eq!((again, generated), (key.clone(), false));
    let req = Request::get("/v2/sandboxes")
        .header("x-api-key", &key)
        .body(Body::empty())
        .expect("req");
    let res = control.router().oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_get_the_e2b_error_body() {
    let h = start().await;
    let r = h.get("/nope").await;
    assert_error(&r, StatusCode::NOT_FOUND, "/nope");
}
