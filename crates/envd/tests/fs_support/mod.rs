//! Shared helpers of the filesystem integration tests: a temp "sandbox" with `/etc/passwd`,
//! a router, and small clients for unary RPCs, Connect streams and `/files`.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use paddock_envd::process::ProcessRegistry;
use paddock_envd::users::UserDb;
use paddock_envd::{BootConfig, EnvdState};
use paddock_envd_proto::connect::{encode, Decoder, Frame};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;
use tempfile::TempDir;
use tower::ServiceExt;

/// A sandbox-like environment: `/etc` with `root` and `user`, and `user`'s home in a temp dir.
pub struct Env {
    _etc: TempDir,
    root: TempDir,
    app: Router,
    pub uid: u32,
}

impl Env {
    pub fn new(token: Option<&str>) -> Env {
        let etc = tempfile::tempdir().expect("etc");
        let root = tempfile::tempdir().expect("root");
        let home = root.path().join("home/user");
        std::fs::create_dir_all(&home).expect("home");
        // As root, `user` gets its own uid so ownership changes are observable.
        let uid = if nix::unistd::geteuid().is_root() {
            1000
        } else {
            nix::unistd::geteuid().as_raw()
        };
        std::fs::write(
            etc.path().join("passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/bash\nuser:x:{uid}:{uid}::{}:/bin/bash\n",
                home.display()
            ),
        )
        .expect("passwd");
        std::fs::write(
            etc.path().join("group"),
            format!("root:x:0:\nuser:x:{uid}:\n"),
        )
        .expect("group");
        let boot = BootConfig {
            access_token: token.map(str::to_string),
            default_user: Some("user".into()),
            ..Default::default()
        };
        let state = EnvdState::new(boot, UserDb::at(etc.path()), root.path().join("run"));
        let app = paddock_envd::router(state, ProcessRegistry::default());
        Env {
            _etc: etc,
            root,
            app,
            uid,
        }
    }

    pub fn home(&self) -> PathBuf {
        self.root.path().join("home/user")
    }

    pub async fn call(&self, req: Request<Body>) -> Response<Body> {
        self.app
            .clone()
            .oneshot(req)
            .await
            .expect("router is infallible")
    }

    /// A unary RPC; returns the status and the JSON body.
    pub async fn rpc(&self, method: &str, msg: Value, user: Option<&str>) -> (StatusCode, Value) {
        let mut req = Request::post(format!("/filesystem.Filesystem/{method}"))
            .header("content-type", "application/json")
            .header("connect-protocol-version", "1");
        if let Some(u) = user {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{u}:"));
            req = req.header("authorization", format!("Basic {b64}"));
        }
        let resp = self
            .call(req.body(Body::from(msg.to_string())).expect("request"))
            .await;
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&body).expect("JSON body"))
    }

    /// Opens a server stream with the SDKs' header `Keepalive-Ping-Interval: 50`.
    pub async fn open_stream(&self, method: &str, msg: Value) -> EnvelopeStream {
        self.open_stream_with(method, msg, &[("keepalive-ping-interval", "50")])
            .await
    }

    /// Opens a server stream with the given extra headers.
    pub async fn open_stream_with(
        &self,
        method: &str,
        msg: Value,
        extra: &[(&str, &str)],
    ) -> EnvelopeStream {
        let framed = encode(0, msg.to_string().as_bytes());
        let mut req = Request::post(format!("/filesystem.Filesystem/{method}"))
            .header("content-type", "application/connect+json")
            .header("connect-protocol-version", "1");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::from(framed)).expect("request");
        let resp = self.call(req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/connect+json");
        EnvelopeStream {
            body: resp.into_body(),
            decoder: Decoder::new(usize::MAX),
        }
    }

    pub async fn get_file(&self, query: &str) -> (StatusCode, http::HeaderMap, Bytes) {
        self.get_file_with(query, &[]).await
    }

    /// `GET /files` with extra request headers; returns the status, headers and raw body.
    pub async fn get_file_with(
        &self,
        query: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, http::HeaderMap, Bytes) {
        let mut req = Request::get(format!("/files?{query}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self.call(req.body(Body::empty()).expect("request")).await;
        let (parts, body) = resp.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.expect("body").to_bytes(),
        )
    }

    pub async fn post_file(
        &self,
        query: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> (StatusCode, Value) {
        let mut req = Request::post(format!("/files?{query}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self.call(req.body(body).expect("request")).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

pub fn q(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// Reads Connect envelopes off a streaming response: `Ok(msg)` per message, `Err(end)` at the end.
pub struct EnvelopeStream {
    body: Body,
    decoder: Decoder,
}

impl EnvelopeStream {
    pub async fn next(&mut self) -> Result<Value, Value> {
        loop {
            let json = |payload: &[u8]| -> Value {
                serde_json::from_slice(payload).expect("JSON envelope")
            };
            match self.decoder.next_frame().expect("well-formed envelopes") {
                Some(Frame::Message(payload)) => return Ok(json(&payload)),
                Some(Frame::End(payload)) => return Err(json(&payload)),
                None => {}
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("stream message within 10 s")
                .expect("stream not finished without end envelope")
                .expect("body frame");
            if let Ok(data) = frame.into_data() {
                self.decoder.push(&data);
            }
        }
    }
}

pub fn multipart(parts: &[(&str, &str, &[u8])]) -> (String, Body) {
    let boundary = "paddock-test-boundary";
    let mut body = Vec::new();
    for (name, filename, data) in parts {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .expect("write");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").expect("write");
    (
        format!("multipart/form-data; boundary={boundary}"),
        Body::from(body),
    )
}

pub fn owner_uid(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").uid()
}
