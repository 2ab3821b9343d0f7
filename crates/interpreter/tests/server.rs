//! E2B's code-interpreter API over a real IPython kernel, driven over HTTP as the SDKs do
//! (`PADDOCK_TEST_PYTHON` names a python with ipykernel; scripts/test.sh sets it).

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use paddock_interpreter::server::{Config, Interpreter};
use serde_json::{json, Value};

struct Server {
    base: String,
    _dir: tempfile::TempDir,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

async fn start() -> Option<Server> {
    start_with(None).await
}

async fn start_with(envd_url: Option<String>) -> Option<Server> {
    let Ok(python) = std::env::var("PADDOCK_TEST_PYTHON") else {
        eprintln!(
            "skipped: set PADDOCK_TEST_PYTHON to a python with ipykernel (scripts/test.sh does)"
        );
        return None;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).expect("home");
    let mut config = Config::python(&python, &home, dir.path().join("run"));
    config.envd_url = envd_url;
    let it = Interpreter::start(config)
        .await
        .expect("interpreter starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(paddock_interpreter::server::serve(listener, it));
    Some(Server {
        base: format!("http://{addr}"),
        _dir: dir,
        client: Client::builder(TokioExecutor::new()).build_http(),
    })
}

impl Server {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .expect("request");
        let resp = self.client.request(req).await.expect("response");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8(body.to_vec()).expect("utf-8"))
    }

    /// The lines of an execution, each parsed (all must be JSON, ASCII, none blank).
    async fn execute(&self, body: Value) -> Vec<Value> {
        let (status, text) = self.call("POST", "/execute", Some(body)).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.is_ascii());
        assert!(
            text.ends_with("{\"type\": \"end_of_execution\"}\n"),
            "{text}"
        );
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }
}

fn main_text(lines: &[Value]) -> Option<String> {
    lines
        .iter()
        .find(|l| l["type"] == "result" && l["is_main_result"] == true)
        .and_then(|l| l["text"].as_str().map(str::to_string))
}

fn error_name(lines: &[Value]) -> Option<String> {
    lines
        .iter()
        .find(|l| l["type"] == "error")
        .and_then(|l| l["name"].as_str().map(str::to_string))
}

#[tokio::test]
async fn executions_contexts_and_errors_as_the_sdk_sees_them() {
    let Some(s) = start().await else { return };
    assert_eq!(s.call("GET", "/health", None).await, (200, "\"OK\"".into()));
    // CORS for browsers: a preflight, and the origin allowed on answers.
    let preflight = hyper::Request::builder()
        .method("OPTIONS")
        .uri(format!("{}/execute", s.base))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-access-token",
        )
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = s.client.request(preflight).await.expect("preflight");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        resp.headers()["access-control-allow-headers"],
        "content-type,x-access-token"
    );
    let with_origin = hyper::Request::builder()
        .uri(format!("{}/health", s.base))
        .header("origin", "https://app.example")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = s.client.request(with_origin).await.expect("health");
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let (status, listed) = s.call("GET", "/contexts", None).await;
    assert_eq!(status, 200);
    let listed: Vec<Value> = serde_json::from_str(&listed).expect("json");
    assert_eq!(
        listed.len(),
        1,
        "python's default context is there from the start"
    );
    assert_eq!(listed[0]["language"], "python");

    // Python's SDK sends every key, null where unset.
    let lines = s
        .execute(
            json!({"code": "x = 1\nprint('héllo')\n'x' * (x + 1)", "context_id": null,
                        "language": null, "env_vars": null}),
        )
        .await;
    assert_eq!(
        lines[0],
        json!({"type": "number_of_executions", "execution_count": 1})
    );
    assert_eq!(lines[1]["type"], "stdout");
    assert_eq!(lines[1]["text"], "héllo\n");
    assert!(lines[1]["timestamp"].as_str().is_some());
    assert_eq!(
        main_text(&lines).as_deref(),
        Some("xx"),
        "a string without its quotes"
    );
    assert_eq!(lines.last(), Some(&json!({"type": "end_of_execution"})));

    // Errors: the kernel's, with its traceback joined.
    let lines = s.execute(json!({"code": "undefined_name"})).await;
    let err = lines.iter().find(|l| l["type"] == "error").expect("error");
    assert_eq!(err["name"], "NameError");
    assert!(err["traceback"]
        .as_str()
        .expect("string")
        .contains("undefined_name"));

    // Bad requests.
    let (st, body) = s
        .call(
            "POST",
            "/execute",
            Some(json!({"code": "1", "context_id": "a", "language": "python"})),
        )
        .await;
    assert_eq!(
        (st, body.as_str()),
        (400, "Only one of context_id or language can be provided")
    );
    let (st, body) = s
        .call(
            "POST",
            "/execute",
            Some(json!({"code": "1", "context_id": "nope"})),
        )
        .await;
    assert_eq!((st, body.as_str()), (404, "Context nope not found"));
    assert_eq!(
        s.call("POST", "/execute", Some(json!({"code": {"x": 1}})))
            .await
            .0,
        422
    );
    assert_eq!(
        s.call(
            "POST",
            "/execute",
            Some(json!({"code": "1", "env_vars": {"A": 1}}))
        )
        .await
        .0,
        422
    );
    let (st, body) = s
        .call(
            "POST",
            "/execute",
            Some(json!({"code": "1", "language": "cobol"})),
        )
        .await;
    assert_eq!(st, 500, "{body}");

    // Env vars for one execution only.
    let probe = json!({"code": "import os; os.environ.get('PADDOCK_T', 'default')"});
    let lines = s
        .execute(
            json!({"code": "import os; os.environ.get('PADDOCK_T', 'default')",
                        "env_vars": {"PADDOCK_T": "set \"for\" once"}}),
        )
        .await;
    assert_eq!(main_text(&lines).as_deref(), Some("set \"for\" once"));
    assert_eq!(
        main_text(&s.execute(probe.clone()).await).as_deref(),
        Some("default")
    );

    // A context of its own: its cwd, its own state.
    let (st, made) = s
        .call(
            "POST",
            "/contexts",
            Some(json!({"language": "python", "cwd": "/tmp"})),
        )
        .await;
    assert_eq!(st, 200, "{made}");
    let made: Value = serde_json::from_str(&made).expect("json");
    let id = made["id"].as_str().expect("id").to_string();
    assert_eq!(made["cwd"], "/tmp");
    let lines = s
        .execute(json!({"code": "import os; os.getcwd()", "context_id": id}))
        .await;
    assert_eq!(main_text(&lines).as_deref(), Some("/tmp"));
    let lines = s.execute(json!({"code": "x", "context_id": id})).await;
    assert_eq!(
        error_name(&lines).as_deref(),
        Some("NameError"),
        "not shared with the default"
    );
    let (_, listed) = s.call("GET", "/contexts", None).await;
    let listed: Vec<Value> = serde_json::from_str(&listed).expect("json");
    assert_eq!(
        listed.last().expect("last")["id"],
        id.as_str(),
        "in the order made"
    );

    // Restart: state gone, same id, cwd kept.
    s.execute(json!({"code": "y = 5", "context_id": id})).await;
    assert_eq!(
        s.call("POST", &format!("/contexts/{id}/restart"), None)
            .await,
        (200, "null".into())
    );
    let lines = s.execute(json!({"code": "y", "context_id": id})).await;
    assert_eq!(error_name(&lines).as_deref(), Some("NameError"));
    let lines = s
        .execute(json!({"code": "import os; os.getcwd()", "context_id": id}))
        .await;
    assert_eq!(main_text(&lines).as_deref(), Some("/tmp"));

    // A kernel that dies: ContextRestarting, then the context works again.
    let lines = s
        .execute(json!({"code": "import os; os._exit(1)", "context_id": id}))
        .await;
    assert_eq!(
        error_name(&lines).as_deref(),
        Some("ContextRestarting"),
        "{lines:?}"
    );
    let lines = s.execute(json!({"code": "40 + 2", "context_id": id})).await;
    assert_eq!(main_text(&lines).as_deref(), Some("42"));

    // Delete.
    assert_eq!(
        s.call("DELETE", &format!("/contexts/{id}"), None).await,
        (200, "null".into())
    );
    assert_eq!(
        s.call("DELETE", &format!("/contexts/{id}"), None).await.0,
        404
    );
}

#[tokio::test]
async fn a_client_that_goes_away_interrupts_its_execution() {
    let Some(s) = start().await else { return };
    let req = hyper::Request::builder()
        .method("POST")
        .uri(format!("{}/execute", s.base))
        .body(Full::new(Bytes::from(
            json!({"code": "import time\ntime.sleep(120)"}).to_string(),
        )))
        .expect("request");
    let resp = s.client.request(req).await.expect("headers at once");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a line").expect("ok");
    assert!(
        String::from_utf8_lossy(first.data_ref().expect("data")).contains("number_of_executions")
    );
    // Gone (the connection closes with the body).
    drop(body);
    let t = Instant::now();
    // The next execution on the context runs once the sleep was interrupted (the closed
    // connection is noticed at once).
    let lines = tokio::time::timeout(Duration::from_secs(30), s.execute(json!({"code": "1 + 1"})))
        .await
        .expect("the context is free again");
    assert_eq!(main_text(&lines).as_deref(), Some("2"));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test]
async fn the_sandboxs_env_vars_come_from_envd_with_the_callers_token() {
    use axum::http::{HeaderMap, StatusCode};
    // envd's /envs, answering only with the sandbox's access token.
    let envd = axum::Router::new().route(
        "/envs",
        axum::routing::get(|headers: HeaderMap| async move {
            if headers.get("x-access-token").and_then(|v| v.to_str().ok()) != Some("tok") {
                return (StatusCode::UNAUTHORIZED, String::new());
            }
            (StatusCode::OK, json!({"SBX_VAR": "from-envd"}).to_string())
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let envd_addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, envd).await });
    let Some(s) = start_with(Some(format!("http://{envd_addr}"))).await else {
        return;
    };
    let run = |body: Value| {
        let req = hyper::Request::builder()
            .method("POST")
            .uri(format!("{}/execute", s.base))
            .header("x-access-token", "tok")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let client = s.client.clone();
        async move {
            let resp = client.request(req).await.expect("response");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            String::from_utf8(body.to_vec())
                .expect("utf-8")
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("json"))
                .collect::<Vec<_>>()
        }
    };
    let probe = json!({"code": "import os; os.environ.get('SBX_VAR', 'unset')"});
    assert_eq!(
        main_text(&run(probe.clone()).await).as_deref(),
        Some("from-envd")
    );
    // Overridden for one execution, then the sandbox's value again.
    let lines =
        run(json!({"code": "import os; os.environ['SBX_VAR']", "env_vars": {"SBX_VAR": "mine"}}))
            .await;
    assert_eq!(main_text(&lines).as_deref(), Some("mine"));
    assert_eq!(main_text(&run(probe).await).as_deref(), Some("from-envd"));
}
