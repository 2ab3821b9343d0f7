//! The request helpers shared by every test module; the node is the contract's shared fake.

use axum::http::HeaderMap;
use axum::Router;
pub use paddock_node_contract::fake::FakeNode;

pub use std::sync::Arc;
pub use std::time::Duration;

pub use axum::body::Body;
pub use axum::http::{Method, Request, StatusCode};
pub use http_body_util::BodyExt as _;
pub use paddock_api::{ApiConfig, ControlPlane};
pub use paddock_domain::{SandboxId, SandboxState};
pub use serde_json::{json, Value};
pub use tower::ServiceExt as _;

pub const KEY: &str = "e2b_test_key";

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub data_dir: std::path::PathBuf,
    pub node: Arc<FakeNode>,
    pub control: ControlPlane,
    pub router: Router,
}

pub async fn start_in(dir: tempfile::TempDir, node: Arc<FakeNode>) -> Harness {
    start_configured(dir, node, |_| {}).await
}

/// Like [`start_in`], with the configuration adjusted by `adjust` first.
pub async fn start_configured(
    dir: tempfile::TempDir,
    node: Arc<FakeNode>,
    adjust: impl FnOnce(&mut ApiConfig),
) -> Harness {
    let data_dir = dir.path().to_path_buf();
    let mut config = ApiConfig::new(&data_dir);
    config.domain = Some("sbx.example.com".into());
    adjust(&mut config);
    let control = ControlPlane::open(config, node.clone())
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
        node,
        control,
        router,
    }
}

pub async fn start() -> Harness {
    start_in(tempfile::tempdir().expect("tempdir"), FakeNode::new()).await
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Harness {
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            req = req.header("X-API-KEY", key);
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .expect("request");
        self.send(req).await
    }

    /// Sends a request built by the caller through the router and reads the reply.
    pub async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, uri: &str, body: &str) -> Reply {
        self.call(Method::POST, uri, Some(KEY), Some(body)).await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, Some(KEY), None).await
    }

    pub async fn create(&self, body: Value) -> String {
        let r = self.post("/v2/sandboxes", &body.to_string()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["sandboxID"].as_str().expect("sandboxID").to_string()
    }

    pub async fn state_of(&self, id: &str) -> SandboxState {
        let id = SandboxId::parse(id).expect("valid");
        self.control
            .store()
            .sandbox(&id)
            .await
            .expect("store")
            .expect("record")
            .state
    }
}

pub fn assert_error(r: &Reply, status: StatusCode, needle: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["code"], status.as_u16(), "{}", r.body);
    let message = r.body["message"].as_str().expect("message");
    assert!(
        message.contains(needle),
        "{message:?} should contain {needle:?}"
    );
}

pub fn end_at(r: &Reply) -> chrono::DateTime<chrono::Utc> {
    r.body["endAt"]
        .as_str()
        .expect("endAt")
        .parse()
        .expect("RFC 3339")
}
