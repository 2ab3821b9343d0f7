//! Pause and resume through the REST API: status codes of pause, connect (v1, v2) and the
//! deprecated resume, `paused` in get and list, kill of a paused sandbox, failures, the expiry
//! leaving paused sandboxes alone, `autoPause` on timeout and the proxy's wake-up
//! (`autoResume`), the paused state across a restart, and a connect racing the timeout's
//! pause.

use crate::harness::*;

fn sid(id: &str) -> SandboxId {
    SandboxId::parse(id).expect("valid id")
}

async fn pause(h: &Harness, id: &str) -> Reply {
    h.post(&format!("/sandboxes/{id}/pause"), "{}").await
}

/// Waits (bounded) until the record of `id` is in `state`.
async fn wait_for_state(h: &Harness, id: &str, state: SandboxState) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.state_of(id).await != state {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sandbox {id} never reached {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn pause_is_204_then_409_and_shows_as_paused() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base"})).await;
    let other = h.create(json!({"templateID": "base"})).await;

    let r = pause(&h, &id).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(h.node.is_paused(&sid(&id)), "the node froze it");
    assert_eq!(h.state_of(&id).await, SandboxState::Paused);
    assert_error(
        &pause(&h, &id).await,
        StatusCode::CONFLICT,
        "already paused",
    );

    let info = h.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(info.status, StatusCode::OK);
    assert_eq!(info.body["state"], "paused");
    assert_eq!(
        info.body["lifecycle"],
        json!({"autoResume": false, "onTimeout": "kill"})
    );

    let all = h.get("/v2/sandboxes").await;
    let mut states: Vec<(String, String)> = all
        .body
        .as_array()
        .expect("list")
        .iter()
        .map(|s| {
            (
                s["sandboxID"].as_str().expect("id").to_string(),
                s["state"].as_str().expect("state").to_string(),
            )
        })
        .collect();
    states.sort();
    let mut want = vec![
        (id.clone(), "paused".to_string()),
        (other.clone(), "running".to_string()),
    ];
    want.sort();
    assert_eq!(states, want);
    assert_eq!(all.headers["x-total-running"], "1");

    let paused = h.get("/v2/sandboxes?state=paused").await;
    assert_eq!(paused.body.as_array().expect("list").len(), 1);
    assert_eq!(paused.body[0]["sandboxID"], id.as_str());
    let running = h.get("/v2/sandboxes?state=running").await;
    assert_eq!(running.body.as_array().expect("list").len(), 1);
    assert_eq!(running.body[0]["sandboxID"], other.as_str());
    // v1 lists running sandboxes only.
    let v1 = h.get("/sandboxes").await;
    assert_eq!(v1.body.as_array().expect("list").len(), 1);

    assert_error(
        &pause(&h, "iunknown000").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
}

#[tokio::test]
async fn connect_resumes_with_201_and_a_fresh_end_time() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base"})).await;

    let r = h
        .post(&format!("/v2/sandboxes/{id}/connect"), r#"{"timeout":600}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK, "running: 200");

    assert_eq!(pause(&h, &id).await.status, StatusCode::NO_CONTENT);
    let before = chrono::Utc::now();
    let r = h
        .post(&format!("/v2/sandboxes/{id}/connect"), r#"{"timeout":30}"#)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["sandboxID"], id.as_str());
    assert!(r.body["envdAccessToken"].as_str().is_some());
    assert!(!h.node.is_paused(&sid(&id)), "the node thawed it");
    assert_eq!(h.state_of(&id).await, SandboxState::Running);
    // Resume sets the end to now + timeout (shorter than the 600 s it had before).
    let end = end_at(&h.get(&format!("/sandboxes/{id}")).await);
    // endAt is rendered in milliseconds: allow for the truncation.
    assert!(end >= before + chrono::Duration::seconds(29), "{end}");
    assert!(
        end <= chrono::Utc::now() + chrono::Duration::seconds(30),
        "{end}"
    );

    // v1 connect: timeout required, 201 on resume too.
    assert_eq!(pause(&h, &id).await.status, StatusCode::NO_CONTENT);
    let r = h
        .post(&format!("/sandboxes/{id}/connect"), r#"{"timeout":60}"#)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = h
        .post(&format!("/sandboxes/{id}/connect"), r#"{"timeout":60}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn deprecated_resume_is_201_or_409() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base"})).await;
    assert_error(
        &h.post(&format!("/sandboxes/{id}/resume"), "{}").await,
        StatusCode::CONFLICT,
        "already running",
    );
    assert_eq!(pause(&h, &id).await.status, StatusCode::NO_CONTENT);
    let r = h.post(&format!("/sandboxes/{id}/resume"), "").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["sandboxID"], id.as_str());
    assert_eq!(h.state_of(&id).await, SandboxState::Running);
    assert_error(
        &h.post("/sandboxes/iunknown000/resume", "{}").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
}

#[tokio::test]
async fn filesystem_only_pause_needs_a_node_that_can_and_valid_lifecycles() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base"})).await;
    // The fake node cannot pause to disk: the request is refused and nothing changes.
    let r = h
        .post(&format!("/sandboxes/{id}/pause"), r#"{"memory":false}"#)
        .await;
    assert_error(&r, StatusCode::NOT_IMPLEMENTED, "pausing sandboxes to disk");
    assert_eq!(h.state_of(&id).await, SandboxState::Running);
    assert!(!h.node.is_paused(&sid(&id)));

    let r = h
        .post(
            "/v2/sandboxes",
            r#"{"templateID":"base","autoPauseMemory":false}"#,
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "needs autoPause");
    let r = h
        .post(
            "/v2/sandboxes",
            r#"{"templateID":"base","autoPause":true,"autoPauseMemory":false,"autoResume":{"enabled":true}}"#,
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "autoResume");
    let r = h
        .post(
            "/v2/sandboxes",
            r#"{"templateID":"base","autoPause":true,"autoPauseMemory":false}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn a_failed_freeze_is_503_and_leaves_it_running() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base"})).await;
    h.node
        .pause_failures
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let r = pause(&h, &id).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(h.state_of(&id).await, SandboxState::Running);
    assert!(!h.node.is_paused(&sid(&id)));
    assert_eq!(pause(&h, &id).await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn kill_of_a_paused_sandbox_works() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base"})).await;
    assert_eq!(pause(&h, &id).await.status, StatusCode::NO_CONTENT);
    let r = h
        .call(Method::DELETE, &format!("/sandboxes/{id}"), Some(KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(h.node.was_killed(&id));
    assert_eq!(h.state_of(&id).await, SandboxState::Stopped);
    assert_error(
        &h.post(&format!("/v2/sandboxes/{id}/connect"), "{}").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
}

#[tokio::test]
async fn expiry_keeps_paused_sandboxes_and_auto_pauses_on_timeout() {
    let h = start().await;
    let background = tokio::spawn({
        let control = h.control.clone();
        async move { control.run_background().await }
    });
    // `paused` ends first, then is paused; `witness` ends after it and is killed by the
    // expiry. Once the witness is gone the expiry has passed `paused`'s end time too.
    let paused = h.create(json!({"templateID": "base"})).await;
    let auto = h
        .create(json!({"templateID": "base", "autoPause": true, "autoResume": {"enabled": true}}))
        .await;
    let witness = h.create(json!({"templateID": "base"})).await;
    let info = h.get(&format!("/sandboxes/{auto}")).await;
    assert_eq!(
        info.body["lifecycle"],
        json!({"autoResume": true, "onTimeout": "pause"})
    );
    for id in [&paused, &auto, &witness] {
        let r = h
            .post(&format!("/sandboxes/{id}/timeout"), r#"{"timeout":1}"#)
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        if id == &paused {
            assert_eq!(pause(&h, id).await.status, StatusCode::NO_CONTENT);
        }
    }
    wait_for_state(&h, &witness, SandboxState::Stopped).await;
    wait_for_state(&h, &auto, SandboxState::Paused).await;
    assert_eq!(h.state_of(&paused).await, SandboxState::Paused);
    assert!(!h.node.was_killed(&paused));
    assert!(!h.node.was_killed(&auto));
    assert!(h.node.is_paused(&sid(&auto)), "autoPause froze it");

    // Traffic through the proxy: the one without autoResume stays paused, the other resumes.
    assert_eq!(
        h.control.wake(&sid(&paused)).await.expect("wake"),
        paddock_api::Wake::Paused
    );
    assert_eq!(h.state_of(&paused).await, SandboxState::Paused);
    assert_eq!(
        h.control.wake(&sid(&auto)).await.expect("wake"),
        paddock_api::Wake::Running
    );
    assert_eq!(h.state_of(&auto).await, SandboxState::Running);
    assert!(!h.node.is_paused(&sid(&auto)));
    let end = end_at(&h.get(&format!("/sandboxes/{auto}")).await);
    assert!(
        end > chrono::Utc::now() + chrono::Duration::seconds(200),
        "{end}"
    );
    assert_eq!(
        h.control.wake(&sid(&witness)).await.expect("wake"),
        paddock_api::Wake::NotFound
    );

    h.control.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), background)
        .await
        .expect("background tasks end on shutdown")
        .expect("no panic");
}

#[tokio::test]
async fn a_restart_keeps_paused_sandboxes_paused() {
    let node = FakeNode::new();
    let h = start_in(tempfile::tempdir().expect("tempdir"), node.clone()).await;
    let id = h.create(json!({"templateID": "base"})).await;
    let running = h.create(json!({"templateID": "base"})).await;
    assert_eq!(pause(&h, &id).await.status, StatusCode::NO_CONTENT);
    // The node forgets the freezer state of `id` (as if thawed behind our back) and finds
    // `running` frozen (a crash in the middle of a pause): reconcile makes both agree with
    // the records again.
    node.paused.lock().expect("lock").remove(&sid(&id));
    node.paused.lock().expect("lock").insert(sid(&running));
    let Harness {
        dir,
        control,
        router,
        ..
    } = h;
    drop((control, router));
    let h = start_in(dir, node.clone()).await;
    assert_eq!(h.state_of(&id).await, SandboxState::Paused);
    assert!(node.is_paused(&sid(&id)));
    assert_eq!(h.state_of(&running).await, SandboxState::Running);
    assert!(!node.is_paused(&sid(&running)));
    let r = h.post(&format!("/v2/sandboxes/{id}/connect"), "{}").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

/// E2B's `lifecycle={"on_timeout": "pause"}` + `set_timeout(0)` + `connect()`: the timeout's
/// freeze is under way (held by the fake node) when the connect arrives. The connect must not
/// answer "running" for a sandbox the freeze then pauses: it waits for the pause and resumes it,
/// and the record agrees with the node afterwards.
#[tokio::test]
async fn connect_racing_the_timeout_pause_leaves_record_and_node_agreeing() {
    let node = FakeNode::new();
    node.hold_pauses
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let h = Arc::new(start_in(tempfile::tempdir().expect("tempdir"), node.clone()).await);
    let background = tokio::spawn({
        let control = h.control.clone();
        async move { control.run_background().await }
    });
    for round in 0..6 {
        let id = h
            .create(json!({"templateID": "base", "autoPause": true}))
            .await;
        let r = h
            .post(&format!("/sandboxes/{id}/timeout"), r#"{"timeout":0}"#)
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
        // The expiry is freezing it now.
        tokio::time::timeout(Duration::from_secs(10), node.pausing.notified())
            .await
            .expect("the timeout pauses the sandbox");
        let connect = tokio::spawn({
            let (h, id) = (Arc::clone(&h), id.clone());
            async move {
                h.post(&format!("/sandboxes/{id}/connect"), r#"{"timeout":60}"#)
                    .await
            }
        });
        // Give the connect time to reach the record while the freeze is in progress (the
        // assertions below hold however long this is).
        tokio::time::sleep(Duration::from_millis(50)).await;
        node.pause_gate.add_permits(1);
        let r = connect.await.expect("connect task");
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::CREATED,
            "round {round}: {} {}",
            r.status,
            r.body
        );
        // Wait (bounded) for the timeout's pause to be recorded, whichever order things ran in.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events = h.get(&format!("/events/sandboxes/{id}?limit=100")).await;
            let paused = events
                .body
                .as_array()
                .expect("events")
                .iter()
                .any(|e| e["type"] == "sandbox.lifecycle.paused");
            if paused {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: never paused"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let info = h.get(&format!("/sandboxes/{id}")).await;
        assert_eq!(
            info.body["state"], "running",
            "round {round}: connect said running"
        );
        assert!(
            !node.is_paused(&sid(&id)),
            "round {round}: the record says running but the node has it frozen"
        );
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "round {round}: it was paused, so connect resumed it"
        );
    }
    h.control.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), background)
        .await
        .expect("background tasks end on shutdown")
        .expect("no panic");
}
