//! Template tags as the SDKs drive them (`Template.build(t, "name:tag")`, `assign_tags`,
//! `remove_tags`, `get_tags`) against the fake node: every build keeps its own hidden template
//! (`build-<id>`), `name:tag` starts the build the tag names, `name` is `name:default`, tags
//! move and go, untagged builds lose their template; all of it per team.

use crate::harness::*;
use paddock_domain::TemplateName;

const OTHER_KEY: &str = "e2b_other_tagger_key";

async fn other_team(h: &Harness) {
    let store = h.control.store();
    let team = store.ensure_team("other").await.expect("team");
    store
        .add_api_key(&team, &paddock_api::hash_api_key(OTHER_KEY))
        .await
        .expect("key");
}

fn hidden(build: &str) -> String {
    format!("build-{}", build.replace('-', ""))
}

/// Builds `name` (`name` or `name:tag`) with extra `tags` from `from` with `steps` RUN steps
/// (the fake node's layers differ by step count); returns the build id once it is ready.
async fn build(h: &Harness, name: &str, tags: &[&str], from: &str, steps: usize) -> String {
    let body = json!({ "name": name, "tags": tags });
    let r = h.post("/v3/templates", &body.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let id = r.body["buildID"].as_str().expect("buildID").to_string();
    let template = r.body["templateID"]
        .as_str()
        .expect("templateID")
        .to_string();
    let steps: Vec<Value> = (0..steps)
        .map(|i| json!({"type": "RUN", "args": [format!("echo {i}")]}))
        .collect();
    let start = json!({ "fromTemplate": from, "steps": steps });
    let r = h
        .post(
            &format!("/v2/templates/{template}/builds/{id}"),
            &start.to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = h
            .get(&format!("/templates/{template}/builds/{id}/status"))
            .await;
        match r.body["status"].as_str().expect("status") {
            "ready" => return id,
            "error" => panic!("build failed: {}", r.body),
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "build never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A create that did not answer 201.
struct Refused(Reply);

impl std::fmt::Debug for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0.status, self.0.body)
    }
}

/// Creates a sandbox of `template`; returns the node template it started from and the
/// `templateID` the response shows.
async fn create_from(h: &Harness, key: &str, template: &str) -> Result<(String, Value), Refused> {
    let body = json!({ "templateID": template }).to_string();
    let r = h
        .call(Method::POST, "/v2/sandboxes", Some(key), Some(&body))
        .await;
    if r.status != StatusCode::CREATED {
        return Err(Refused(r));
    }
    let created = h.node.created.lock().expect("lock");
    let last = created.last().expect("a create reached the node");
    Ok((last.template.to_string(), r.body["templateID"].clone()))
}

fn layers_of(h: &Harness, name: &str) -> Option<Vec<String>> {
    let name = TemplateName::parse(name).expect("name");
    h.node
        .built
        .lock()
        .expect("lock")
        .get(&name)
        .map(|t| t.layer_ids.clone())
}

async fn tags_of(h: &Harness, template: &str) -> Vec<(String, String)> {
    let r = h.get(&format!("/templates/{template}/tags")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
        .as_array()
        .expect("list")
        .iter()
        .map(|t| {
            let at = t["createdAt"].as_str().expect("createdAt");
            chrono::DateTime::parse_from_rfc3339(at).expect("RFC 3339");
            (
                t["tag"].as_str().expect("tag").to_string(),
                t["buildID"].as_str().expect("buildID").to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(t, b)| (t.to_string(), b.to_string()))
        .collect()
}

async fn delete_tags(h: &Harness, key: &str, body: Value) -> Reply {
    h.call(
        Method::DELETE,
        "/templates/tags",
        Some(key),
        Some(&body.to_string()),
    )
    .await
}

#[tokio::test]
async fn tagged_builds_stay_apart_and_tags_name_what_creates_start() {
    let h = start().await;
    let v1 = build(&h, "app:v1", &[], "base", 1).await;
    // Only `v1` exists: `app` (= `app:default`) names nothing yet, as on E2B.
    assert!(layers_of(&h, "app").is_none());
    for missing in ["app", "app:default"] {
        let r = create_from(&h, KEY, missing).await.expect_err("404");
        assert_error(&r.0, StatusCode::NOT_FOUND, missing);
    }
    let (node_template, shown) = create_from(&h, KEY, "app:v1").await.expect("create");
    assert_eq!(node_template, hidden(&v1));
    assert_eq!(shown, "app", "sandboxes show the template's name");

    let v2 = build(&h, "app:v2", &["beta"], "base", 2).await;
    let latest = build(&h, "app", &[], "base", 3).await;
    assert_eq!(layers_of(&h, "app"), layers_of(&h, &hidden(&latest)));
    for (reference, want) in [
        ("app:v1", hidden(&v1)),
        ("app:v2", hidden(&v2)),
        ("app:beta", hidden(&v2)),
        ("team/app:v2", hidden(&v2)),
        ("app", "app".to_string()),
        ("app:default", "app".to_string()),
    ] {
        let (node_template, _) = create_from(&h, KEY, reference).await.expect("create");
        assert_eq!(node_template, want, "{reference}");
    }
    // A build id works as a tag.
    let (node_template, _) = create_from(&h, KEY, &format!("app:{v1}"))
        .await
        .expect("create");
    assert_eq!(node_template, hidden(&v1));
    let r = create_from(&h, KEY, "app:v9").await.expect_err("404");
    assert_error(&r.0, StatusCode::NOT_FOUND, "app:v9");
    assert_eq!(
        tags_of(&h, "app").await,
        pairs(&[
            ("beta", &v2),
            ("default", &latest),
            ("v1", &v1),
            ("v2", &v2)
        ])
    );

    // Assign: from a tag, from `name` (= default), from a build id.
    let r = h
        .post(
            "/templates/tags",
            &json!({"target": "app:v1", "tags": ["stable", "prod", "stable"]}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body, json!({"tags": ["stable", "prod"], "buildID": v1}));
    let (node_template, _) = create_from(&h, KEY, "app:stable").await.expect("create");
    assert_eq!(node_template, hidden(&v1));
    let r = h
        .post(
            "/templates/tags",
            &json!({"target": "app", "tags": ["latest"]}).to_string(),
        )
        .await;
    assert_eq!(r.body["buildID"], latest.as_str(), "{}", r.body);
    // `default` moves to v2: `app` is v2 now; the newest build keeps `latest`.
    let r = h
        .post(
            "/templates/tags",
            &json!({"target": format!("app:{v2}"), "tags": ["default"]}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(layers_of(&h, "app"), layers_of(&h, &hidden(&v2)));
    assert!(layers_of(&h, &hidden(&latest)).is_some());
    // Moving `latest` off the newest build leaves it untagged: its template goes.
    h.post(
        "/templates/tags",
        &json!({"target": "app:v2", "tags": ["latest"]}).to_string(),
    )
    .await;
    assert!(layers_of(&h, &hidden(&latest)).is_none());
    let r = create_from(&h, KEY, &format!("app:{latest}"))
        .await
        .expect_err("gone");
    assert_error(&r.0, StatusCode::NOT_FOUND, "not found");

    // Remove: all or nothing; a build keeps its template while a tag names it.
    let r = delete_tags(&h, KEY, json!({"name": "app", "tags": ["v1", "nope"]})).await;
    assert_error(&r, StatusCode::NOT_FOUND, "app:nope");
    assert!(tags_of(&h, "app").await.iter().any(|(t, _)| t == "v1"));
    let r = delete_tags(&h, KEY, json!({"name": "app", "tags": ["v1", "prod"]})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(r.body, Value::Null);
    assert!(layers_of(&h, &hidden(&v1)).is_some(), "`stable` names it");
    let r = create_from(&h, KEY, "app:v1").await.expect_err("404");
    assert_error(&r.0, StatusCode::NOT_FOUND, "app:v1");
    delete_tags(&h, KEY, json!({"name": "app", "tags": ["stable"]})).await;
    assert!(layers_of(&h, &hidden(&v1)).is_none(), "untagged");
    // Removing `default` takes the name off the node: `app` is 404 until it is assigned.
    let r = delete_tags(&h, KEY, json!({"name": "app:v2", "tags": ["default"]})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(layers_of(&h, "app").is_none());
    create_from(&h, KEY, "app").await.expect_err("404");
    create_from(&h, KEY, "app:beta")
        .await
        .expect("still tagged");
    assert_eq!(
        tags_of(&h, "app").await,
        pairs(&[("beta", &v2), ("latest", &v2), ("v2", &v2)])
    );

    // Deleting the template deletes every build's template.
    let r = h
        .call(Method::DELETE, "/templates/app", Some(KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(h.node.built.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn build_templates_are_hidden_and_bases_follow_tags() {
    let h = start().await;
    let v1 = build(&h, "app:v1", &[], "base", 1).await;
    // Not listed, not a name to start from or to build.
    let r = h.get("/templates").await;
    assert!(r
        .body
        .as_array()
        .expect("list")
        .iter()
        .all(|t| !t["templateID"].as_str().expect("id").starts_with("build-")));
    let r = create_from(&h, KEY, &hidden(&v1))
        .await
        .expect_err("hidden");
    assert_eq!(r.0.status, StatusCode::NOT_FOUND);
    let r = h.get(&format!("/templates/{}/tags", hidden(&v1))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h
        .post("/v3/templates", &json!({ "name": hidden(&v1) }).to_string())
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "reserved");
    // Names that only look alike are ordinary names.
    let r = h
        .post("/v3/templates", &json!({"name": "build-tools"}).to_string())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);

    // A build from `app:v1` starts from that build's template.
    build(&h, "derived", &[], "app:v1", 1).await;
    let requests = h.node.build_requests.lock().expect("lock").clone();
    let last = requests.last().expect("a build");
    assert_eq!(
        last.recipe.base,
        paddock_template::Base::Template(hidden(&v1))
    );
    let r = h
        .post("/v3/templates", &json!({"name": "x"}).to_string())
        .await;
    let id = r.body["buildID"].as_str().expect("buildID");
    let r = h
        .post(
            &format!("/v2/templates/x/builds/{id}"),
            &json!({"fromTemplate": "app:v7"}).to_string(),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "app:v7");
}

#[tokio::test]
async fn tags_are_the_team_s_and_checked() {
    let h = start().await;
    other_team(&h).await;
    let v1 = build(&h, "app:v1", &[], "base", 1).await;

    // Another team sees none of it.
    let r = h
        .call(
            Method::POST,
            "/templates/tags",
            Some(OTHER_KEY),
            Some(&json!({"target": "app:v1", "tags": ["mine"]}).to_string()),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "app:v1");
    let r = delete_tags(&h, OTHER_KEY, json!({"name": "app", "tags": ["v1"]})).await;
    assert_error(&r, StatusCode::NOT_FOUND, "app");
    let r = h
        .call(Method::GET, "/templates/app/tags", Some(OTHER_KEY), None)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "app");
    let r = create_from(&h, OTHER_KEY, "app:v1")
        .await
        .expect_err("not theirs");
    assert_error(&r.0, StatusCode::NOT_FOUND, "app:v1");
    assert_eq!(tags_of(&h, "app").await, pairs(&[("v1", &v1)]));
    let r = h.call(Method::GET, "/templates/app/tags", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Templates not built through the API have one version, `default`, and no tags to change.
    let base = tags_of(&h, "base").await;
    assert_eq!(base.len(), 1);
    assert_eq!(base[0].0, "default");
    assert_eq!(base[0].1.len(), 36);
    let r = h
        .post(
            "/templates/tags",
            &json!({"target": "base", "tags": ["mine"]}).to_string(),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "only templates built");
    let r = h.get("/templates/nothing/tags").await;
    assert_error(&r, StatusCode::NOT_FOUND, "nothing");

    // Malformed requests.
    for (body, status, needle) in [
        (
            json!({"target": "app:v1", "tags": []}),
            StatusCode::BAD_REQUEST,
            "at least one",
        ),
        (
            json!({"target": "app:v1", "tags": ["a b"]}),
            StatusCode::BAD_REQUEST,
            "invalid tag",
        ),
        (json!({"tags": ["x"]}), StatusCode::BAD_REQUEST, "target"),
        (
            json!({"target": "app:nope", "tags": ["x"]}),
            StatusCode::NOT_FOUND,
            "app:nope",
        ),
        (
            json!({"target": "ghost:v1", "tags": ["x"]}),
            StatusCode::NOT_FOUND,
            "ghost:v1",
        ),
    ] {
        let r = h.post("/templates/tags", &body.to_string()).await;
        assert_error(&r, status, needle);
    }
    let r = delete_tags(&h, KEY, json!({"name": "app", "tags": []})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "at least one");
    // A failed build's id names nothing.
    let r = h
        .post("/v3/templates", &json!({"name": "app:broken"}).to_string())
        .await;
    let failed = r.body["buildID"].as_str().expect("buildID").to_string();
    h.post(
        &format!("/v2/templates/app/builds/{failed}"),
        &json!({"fromTemplate": "base", "steps": [{"type": "RUN", "args": ["exit 3"]}]})
            .to_string(),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h
        .get(&format!("/templates/app/builds/{failed}/status"))
        .await
        .body["status"]
        != "error"
    {
        assert!(tokio::time::Instant::now() < deadline, "build never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = h
        .post(
            "/templates/tags",
            &json!({"target": format!("app:{failed}"), "tags": ["x"]}).to_string(),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, &failed);
    assert_eq!(tags_of(&h, "app").await, pairs(&[("v1", &v1)]));
}
