//! Creating sandboxes: schemas, defaults, auth, validation, node failures, idempotency.

use crate::harness::*;

#[tokio::test]
async fn health_needs_no_key() {
    let h = start().await;
    let r = h.call(Method::GET, "/health", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn create_v2_returns_the_sandbox_schema_and_runs_it() {
    let h = start().await;
    let r = h
        .post(
            "/v2/sandboxes",
            r#"{"templateID":"base","metadata":{"a":"b"},"envVars":{"X":"1"}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["sandboxID"].as_str().expect("id").to_string();
    assert_eq!(r.body["templateID"], "base");
    assert_eq!(r.body["clientID"], "6532622b");
    assert_eq!(r.body["envdVersion"], paddock_domain::ENVD_VERSION);
    assert_eq!(r.body["trafficAccessToken"], Value::Null);
    assert_eq!(r.body["domain"], "sbx.example.com");
    let token = r.body["envdAccessToken"].as_str().expect("token");
    assert_eq!(token.len(), 64);
    assert!(h.node.is_live(&id));
    {
        let created = h.node.created.lock().expect("lock");
        assert_eq!(created[0].access_token, token);
        assert_eq!(created[0].env_vars.get("X").map(String::as_str), Some("1"));
    }

    let detail = h.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(detail.status, StatusCode::OK);
    assert_eq!(detail.body["state"], "running");
    assert_eq!(detail.body["metadata"], json!({"a": "b"}));
    assert_eq!(detail.body["diskSizeMB"], 2048);
    let ttl = end_at(&detail) - chrono::Utc::now();
    assert!(ttl > chrono::Duration::seconds(290) && ttl <= chrono::Duration::seconds(300));
}

#[tokio::test]
async fn create_v1_defaults_to_15_seconds() {
    let h = start().await;
    let r = h
        .post("/sandboxes", r#"{"templateID":"base","secure":true}"#)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["sandboxID"].as_str().expect("id");
    let detail = h.get(&format!("/sandboxes/{id}")).await;
    let ttl = end_at(&detail) - chrono::Utc::now();
    assert!(
        ttl > chrono::Duration::seconds(10) && ttl <= chrono::Duration::seconds(15),
        "{ttl}"
    );
}

#[tokio::test]
async fn wrong_or_missing_key_is_401() {
    let h = start().await;
    let r = h
        .call(Method::GET, "/v2/sandboxes", Some("e2b_wrong"), None)
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid API key");
    let r = h
        .call(
            Method::POST,
            "/v2/sandboxes",
            None,
            Some(r#"{"templateID":"base"}"#),
        )
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "X-API-Key");
}

#[tokio::test]
async fn malformed_input_is_400_naming_the_problem() {
    let h = start().await;
    let r = h.post("/v2/sandboxes", r#"{"templateID": "base""#).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid request body");
    let r = h.post("/v2/sandboxes", r#"{"metadata":{}}"#).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "templateID");
    let r = h
        .post("/v2/sandboxes", r#"{"templateID":"base","timeout":90000}"#)
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "timeout");
    let r = h
        .post(
            "/v2/sandboxes",
            r#"{"templateID":"base","envVars":{"A=B":"x"}}"#,
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "envVars");
}

#[tokio::test]
async fn malformed_sandbox_ids_are_404_not_found() {
    let h = start().await;
    let r = h.get("/sandboxes/NOT_AN_ID").await;
    assert_error(&r, StatusCode::NOT_FOUND, "sandbox 'NOT_AN_ID' not found");
    let r = h
        .call(Method::DELETE, "/sandboxes/NOT_AN_ID", Some(KEY), None)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "sandbox 'NOT_AN_ID' not found");
    let r = h
        .post("/sandboxes/NOT_AN_ID/connect", r#"{"timeout":10}"#)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "sandbox 'NOT_AN_ID' not found");
}

#[tokio::test]
async fn unknown_template_is_404_with_a_clear_message() {
    let h = start().await;
    let r = h.post("/v2/sandboxes", r#"{"templateID":"nope"}"#).await;
    assert_error(&r, StatusCode::NOT_FOUND, "template 'nope' not found");
    let r = h
        .post("/v2/sandboxes", r#"{"templateID":"team/custom:v2"}"#)
        .await;
    assert_error(
        &r,
        StatusCode::NOT_FOUND,
        "template 'team/custom:v2' not found",
    );
}

/// A node that cannot be reached (in a cluster: no node can) is a 503 with `Retry-After`, not
/// an internal error, and a node that answers "busy" a 429 whose message is the node's.
#[tokio::test]
async fn an_unreachable_node_is_retryable() {
    let h = start().await;
    h.node.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = h.post("/v2/sandboxes", r#"{"templateID":"base"}"#).await;
    assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "down");
    assert_eq!(r.headers["retry-after"], "1");
    h.node
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    h.node.full.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = h.post("/v2/sandboxes", r#"{"templateID":"base"}"#).await;
    assert_error(
        &r,
        StatusCode::TOO_MANY_REQUESTS,
        "node is at capacity: the fake node is full",
    );
    assert!(
        !r.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("capacity: node is"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn node_failures_are_reported_and_recorded() {
    let h = start().await;
    let r = h.post("/v2/sandboxes", r#"{"templateID":"busy"}"#).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "capacity");
    assert_eq!(r.headers["retry-after"], "1");
    let r = h.post("/v2/sandboxes", r#"{"templateID":"broken"}"#).await;
    assert_error(
        &r,
        StatusCode::INTERNAL_SERVER_ERROR,
        "envd did not answer /init",
    );
    // Both attempts are history: stopped, cleaned on the node, invisible to clients.
    let records = h
        .control
        .store()
        .sandboxes_in_states(&[SandboxState::Stopped])
        .await
        .expect("store");
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| h.node.was_killed(r.id.as_str())));
    assert!(records.iter().all(|r| r.end_reason.is_some()));
    let list = h.get("/v2/sandboxes").await;
    assert_eq!(list.body, json!([]));
}

#[tokio::test]
async fn idempotency_key_returns_the_same_sandbox() {
    let h = start().await;
    let send = || async {
        let req = Request::post("/v2/sandboxes")
            .header("x-api-key", KEY)
            .header("idempotency-key", "retry-1")
            .body(Body::from(r#"{"templateID":"base"}"#))
            .expect("request");
        let res = h.router.clone().oneshot(req).await.expect("infallible");
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value =
            serde_json::from_slice(&res.into_body().collect().await.expect("body").to_bytes())
                .expect("json");
        body["sandboxID"].as_str().expect("id").to_string()
    };
    let (a, b) = tokio::join!(send(), send());
    assert_eq!(a, b);
    assert_eq!(h.node.created.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn auto_pause_is_accepted_and_unknown_pause_is_404() {
    let h = start().await;
    let r = h
        .post("/v2/sandboxes", r#"{"templateID":"base","autoPause":true}"#)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = h.post("/sandboxes/iunknown000/pause", "{}").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
