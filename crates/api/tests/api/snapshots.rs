//! Snapshots and forks through the REST API with the fake node (which cannot copy files, so the
//! real copies are covered end to end in tests/e2e/python/test_snapshots.py): team scoping of
//! snapshots (listing, starting sandboxes from them, deleting), request validation, and honest
//! errors where the node cannot help.

use crate::harness::*;
use chrono::Utc;
use paddock_api::store::SnapshotRecord;
use paddock_domain::TemplateName;

const OTHER_KEY: &str = "e2b_other_team_key";

async fn other_team(h: &Harness) -> paddock_api::store::TeamId {
    let store = h.control.store();
    let team = store.ensure_team("other").await.expect("team");
    store
        .add_api_key(&team, &paddock_api::hash_api_key(OTHER_KEY))
        .await
        .expect("key");
    team
}

/// Records `name` as a snapshot of `team`, as a successful `POST …/snapshots` would.
async fn record(h: &Harness, team: &paddock_api::store::TeamId, name: &str) {
    let rec = SnapshotRecord {
        name: TemplateName::parse(name).expect("name"),
        team_id: team.clone(),
        sandbox_id: SandboxId::generate(),
        created_at: Utc::now(),
        size_bytes: 4096,
    };
    assert!(h
        .control
        .store()
        .insert_snapshot(&rec)
        .await
        .expect("insert"));
    assert!(
        !h.control
            .store()
            .insert_snapshot(&rec)
            .await
            .expect("insert"),
        "a name is recorded once"
    );
}

#[tokio::test]
async fn a_teams_snapshots_are_invisible_to_other_teams() {
    let h = start().await;
    let other = other_team(&h).await;
    // "base" stands in for the snapshot's template on the fake node.
    record(&h, &other, "base").await;

    // Not listed, not usable, not deletable for the default team.
    let r = h.get("/snapshots").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!([]));
    assert_error(
        &h.post("/v2/sandboxes", r#"{"templateID":"base:default"}"#)
            .await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        &h.call(Method::DELETE, "/templates/base%3Adefault", Some(KEY), None)
            .await,
        StatusCode::NOT_FOUND,
        "not found",
    );

    // Its owner sees it and starts sandboxes from it.
    let r = h
        .call(Method::GET, "/snapshots", Some(OTHER_KEY), None)
        .await;
    assert_eq!(
        r.body,
        json!([{"snapshotID": "base:default", "names": ["base"]}])
    );
    let r = h
        .call(
            Method::POST,
            "/v2/sandboxes",
            Some(OTHER_KEY),
            Some(r#"{"templateID":"base:default"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn listing_pages_and_filters() {
    let h = start().await;
    let team = h
        .control
        .store()
        .ensure_team("default")
        .await
        .expect("team");
    for i in 0..5 {
        record(&h, &team, &format!("s{i}")).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let uri = match &token {
            Some(t) => format!("/snapshots?limit=2&nextToken={t}"),
            None => "/snapshots?limit=2".to_string(),
        };
        let r = h.get(&uri).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        for s in r.body.as_array().expect("list") {
            seen.push(s["snapshotID"].as_str().expect("id").to_string());
        }
        token = r
            .headers
            .get("x-next-token")
            .map(|v| v.to_str().expect("ascii").to_string());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(
        seen,
        ["s4", "s3", "s2", "s1", "s0"].map(|s| format!("{s}:default"))
    );
    let r = h.get("/snapshots?name=s2").await;
    assert_eq!(
        r.body,
        json!([{"snapshotID": "s2:default", "names": ["s2"]}])
    );
    let r = h.get("/snapshots?sandboxID=inosuchsandbox00").await;
    assert_eq!(r.body, json!([]));
    for bad in [
        "/snapshots?limit=0",
        "/snapshots?limit=101",
        "/snapshots?nextToken=junk",
    ] {
        assert_error(&h.get(bad).await, StatusCode::BAD_REQUEST, "");
    }
}

#[tokio::test]
async fn requests_are_validated_and_the_fake_node_says_it_cannot() {
    let h = start().await;
    let id = h.create(json!({"templateID": "base"})).await;
    let snap = format!("/sandboxes/{id}/snapshots");
    assert_error(
        &h.post(&snap, r#"{"memory":true}"#).await,
        StatusCode::BAD_REQUEST,
        "memory",
    );
    assert_error(
        &h.post(&snap, r#"{"name":"Not Valid"}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid snapshot name",
    );
    assert_error(
        &h.post(&snap, r#"{"name":"base"}"#).await,
        StatusCode::CONFLICT,
        "already exists",
    );
    assert_error(
        &h.post(&snap, "{}").await,
        StatusCode::NOT_IMPLEMENTED,
        "snapshots",
    );
    assert_error(
        &h.post("/sandboxes/inosuchsandbox00/snapshots", "{}").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    let fork = format!("/sandboxes/{id}/fork");
    for body in [r#"{"count":0}"#, r#"{"count":21}"#, r#"{"count":-1}"#] {
        assert_error(&h.post(&fork, body).await, StatusCode::BAD_REQUEST, "count");
    }
    assert_error(
        &h.post(&fork, r#"{"count":2}"#).await,
        StatusCode::NOT_IMPLEMENTED,
        "snapshots",
    );
    assert_error(
        &h.post("/sandboxes/inosuchsandbox00/fork", "{}").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    // A node template is not a snapshot.
    assert_error(
        &h.call(Method::DELETE, "/templates/base", Some(KEY), None)
            .await,
        StatusCode::FORBIDDEN,
        "not a snapshot",
    );
    assert_error(
        &h.call(
            Method::DELETE,
            "/templates/nothing%3Adefault",
            Some(KEY),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not found",
    );
}

#[tokio::test]
async fn templates_are_listed_with_the_teams_own_snapshots_only() {
    let h = start().await;
    let other = other_team(&h).await;
    let mine = h
        .control
        .store()
        .ensure_team("default")
        .await
        .expect("team");
    record(&h, &other, "busy").await;
    record(&h, &mine, "slow").await;
    h.create(json!({"templateID": "base"})).await;
    h.create(json!({"templateID": "base"})).await;

    let r = h.get("/templates").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let list = r.body.as_array().expect("list");
    let names: Vec<&str> = list
        .iter()
        .map(|t| t["templateID"].as_str().expect("id"))
        .collect();
    assert_eq!(
        names,
        ["base", "broken", "fragile", "slow"],
        "busy is another team's"
    );
    let base = &list[0];
    for key in [
        "templateID",
        "buildID",
        "cpuCount",
        "memoryMB",
        "diskSizeMB",
        "public",
        "aliases",
        "names",
        "createdAt",
        "updatedAt",
        "createdBy",
        "lastSpawnedAt",
        "spawnCount",
        "buildCount",
        "envdVersion",
        "buildStatus",
    ] {
        assert!(base.get(key).is_some(), "{key} missing in {base}");
    }
    assert_eq!(base["public"], true);
    assert_eq!(base["spawnCount"], 2);
    assert!(base["lastSpawnedAt"].is_string());
    assert_eq!(base["buildStatus"], "ready");
    assert_eq!(base["buildID"].as_str().expect("uuid").len(), 36);
    assert_eq!(list[1]["spawnCount"], 0);
    assert_eq!(list[1]["lastSpawnedAt"], Value::Null);
    assert_eq!(list[3]["public"], false, "own snapshot");
    assert_eq!(h.get("/v2/templates").await.body, r.body);

    let r = h.get("/templates/base").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["builds"][0]["buildID"], base["buildID"]);
    assert_error(
        &h.get("/templates/busy").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        &h.get("/templates/nothing").await,
        StatusCode::NOT_FOUND,
        "not found",
    );

    let r = h.get("/templates/aliases/base").await;
    assert_eq!(r.body, json!({"templateID": "base", "public": true}));
    let r = h.get("/templates/aliases/slow").await;
    assert_eq!(r.body, json!({"templateID": "slow", "public": false}));
    assert_error(
        &h.get("/templates/aliases/busy").await,
        StatusCode::FORBIDDEN,
        "another team",
    );
    assert_error(
        &h.get("/templates/aliases/nothing").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
}
