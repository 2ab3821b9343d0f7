//! Listing, connecting, timeouts and killing.

use crate::harness::*;

#[tokio::test]
async fn list_filters_by_metadata_and_paginates() {
    let h = start().await;
    let mut prod = Vec::new();
    for _ in 0..3 {
        prod.push(
            h.create(json!({"templateID": "base", "metadata": {"env": "prod env"}}))
                .await,
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.create(json!({"templateID": "base", "metadata": {"env": "dev"}}))
        .await;

    // The Python SDK's triple encoding of {"env": "prod env"}.
    let first = h
        .get("/v2/sandboxes?metadata=env%3Dprod%252520env&limit=2")
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.headers["x-total-running"], "4");
    let ids: Vec<&str> = first
        .body
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["sandboxID"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        vec![prod[2].as_str(), prod[1].as_str()],
        "newest first"
    );
    let token = first.headers["x-next-token"]
        .to_str()
        .expect("ascii")
        .to_string();

    let second = h
        .get(&format!(
            "/v2/sandboxes?metadata=env%3Dprod%252520env&limit=2&nextToken={token}"
        ))
        .await;
    assert_eq!(second.status, StatusCode::OK);
    let ids: Vec<&str> = second
        .body
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["sandboxID"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, vec![prod[0].as_str()]);
    assert!(
        second.headers.get("x-next-token").is_none(),
        "last page has no token"
    );
    assert_eq!(second.body[0]["state"], "running");
    assert_eq!(second.body[0]["metadata"], json!({"env": "prod env"}));

    let all = h.get("/v2/sandboxes?state=running%2Cpaused").await;
    assert_eq!(all.body.as_array().expect("array").len(), 4);
    let paused = h.get("/v2/sandboxes?state=paused").await;
    assert_eq!(paused.body, json!([]));
    let v1 = h.get("/sandboxes?metadata=env%3Ddev").await;
    assert_eq!(v1.body.as_array().expect("array").len(), 1);

    let bad = h.get("/v2/sandboxes?limit=101").await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "limit");
    let bad = h.get("/v2/sandboxes?nextToken=garbage").await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "nextToken");
}

#[tokio::test]
async fn started_after_is_inclusive() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base"})).await;
    let detail = h.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
    let started: chrono::DateTime<chrono::Utc> = detail.body["startedAt"]
        .as_str()
        .expect("startedAt")
        .parse()
        .expect("RFC 3339");
    let listed = |t: chrono::DateTime<chrono::Utc>| {
        let q = t
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
            .replace('+', "%2B");
        let h = &h;
        async move {
            let r = h.get(&format!("/v2/sandboxes?startedAfter={q}")).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            r.body.as_array().expect("array").len()
        }
    };
    assert_eq!(listed(started).await, 1, "started exactly at the bound");
    let ms = chrono::Duration::milliseconds(1);
    assert_eq!(listed(started - ms).await, 1);
    assert_eq!(listed(started + ms).await, 0);
}

#[tokio::test]
async fn connect_only_extends_the_end_time() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base", "timeout": 10})).await;
    let before = end_at(&h.get(&format!("/sandboxes/{id}")).await);

    let r = h
        .post(&format!("/v2/sandboxes/{id}/connect"), r#"{"timeout":100}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["sandboxID"], id.as_str());
    assert_eq!(r.body["envdAccessToken"].as_str().map(str::len), Some(64));
    let extended = end_at(&h.get(&format!("/sandboxes/{id}")).await);
    assert!(
        extended - before > chrono::Duration::seconds(85),
        "{before} -> {extended}"
    );

    let r = h
        .post(&format!("/sandboxes/{id}/connect"), r#"{"timeout":5}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        end_at(&h.get(&format!("/sandboxes/{id}")).await),
        extended,
        "never shortened"
    );

    let r = h.post(&format!("/sandboxes/{id}/connect"), "{}").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "timeout is required");
    let r = h.post("/v2/sandboxes/iunknown000/connect", "{}").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not found");
}

#[tokio::test]
async fn set_timeout_then_expiry_kills_the_sandbox() {
    let h = start().await;
    let background = tokio::spawn({
        let control = h.control.clone();
        async move { control.run_background().await }
    });
    let id = h.create(json!({"templateID": "base"})).await;
    let r = h
        .post(&format!("/sandboxes/{id}/timeout"), r#"{"timeout":1}"#)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.state_of(&id).await != SandboxState::Stopped {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sandbox was not expired in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h.node.was_killed(&id));
    assert!(!h.node.is_live(&id));
    assert_error(
        &h.get(&format!("/sandboxes/{id}")).await,
        StatusCode::NOT_FOUND,
        "not found",
    );

    h.control.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), background)
        .await
        .expect("background tasks end on shutdown")
        .expect("no panic");
}

#[tokio::test]
async fn refresh_extends_and_timeout_validates() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base", "timeout": 5})).await;
    let r = h
        .post(&format!("/sandboxes/{id}/refreshes"), r#"{"duration":60}"#)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let ttl = end_at(&h.get(&format!("/sandboxes/{id}")).await) - chrono::Utc::now();
    assert!(ttl > chrono::Duration::seconds(55), "{ttl}");
    let r = h
        .post(
            &format!("/sandboxes/{id}/refreshes"),
            r#"{"duration":3601}"#,
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "duration");
    let r = h
        .post(&format!("/sandboxes/{id}/timeout"), r#"{"timeout":-1}"#)
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "timeout");
}

#[tokio::test]
async fn kill_is_204_then_404() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base"})).await;
    let r = h
        .call(Method::DELETE, &format!("/sandboxes/{id}"), Some(KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(h.node.was_killed(&id) && !h.node.is_live(&id));
    assert_eq!(h.state_of(&id).await, SandboxState::Stopped);
    let r = h
        .call(Method::DELETE, &format!("/sandboxes/{id}"), Some(KEY), None)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, &id);
    assert_error(
        &h.get(&format!("/sandboxes/{id}")).await,
        StatusCode::NOT_FOUND,
        "not found",
    );
}

#[tokio::test]
async fn another_team_cannot_see_or_kill_a_sandbox() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base"})).await;
    let store = h.control.store();
    let other = store.ensure_team("other").await.expect("team");
    store
        .add_api_key(&other, &paddock_api::hash_api_key("e2b_other"))
        .await
        .expect("key");
    let r = h
        .call(
            Method::DELETE,
            &format!("/sandboxes/{id}"),
            Some("e2b_other"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h
        .call(Method::GET, "/v2/sandboxes", Some("e2b_other"), None)
        .await;
    assert_eq!(r.body, json!([]));
    assert!(h.node.is_live(&id));
}
