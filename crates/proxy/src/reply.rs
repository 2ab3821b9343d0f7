//! The JSON answers the proxy gives itself, byte-exact with the reference edge (spec 1.7):
//! SDKs match on the substrings `was not found` and `port is not open`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use paddock_domain::SandboxId;
use serde::Serialize;

use crate::handler::ProxyBody;

/// `Content-Type` of every proxy-generated answer.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The message the SDKs map to "sandbox not running".
pub const SANDBOX_NOT_FOUND: &str = "The sandbox was not found";
/// The message the SDKs map to "sandbox unreachable".
pub const PORT_NOT_OPEN: &str = "The sandbox is running but port is not open";

/// The edge's error body; fields in the reference order.
#[derive(Serialize)]
struct EdgeError<'a> {
    #[serde(rename = "sandboxId")]
    sandbox_id: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    code: u16,
}

/// The control plane's error body.
#[derive(Serialize)]
struct ApiError<'a> {
    code: u16,
    message: &'a str,
}

/// 502 for an unknown or dead sandbox.
pub fn sandbox_not_found(id: &SandboxId) -> Response<ProxyBody> {
    edge_error(id, SANDBOX_NOT_FOUND, None, StatusCode::BAD_GATEWAY)
}

/// The message of the reference edge for a paused sandbox.
pub const SANDBOX_PAUSED: &str = "The sandbox is paused";

/// The reference edge's body for a paused sandbox that does not resume on traffic.
#[derive(Serialize)]
struct PausedError<'a> {
    #[serde(rename = "sandboxId")]
    sandbox_id: &'a str,
    message: &'a str,
    code: u16,
    #[serde(rename = "canAutoResume")]
    can_auto_resume: bool,
}

/// The answer for traffic to a paused sandbox that does not resume on traffic: on envd's port
/// a 502 edge error (the SDKs' `is_running()` reads 502 as "not running" and raise
/// `SandboxUnreachableException` for other envd calls), on any other port the reference edge's
/// 409 [`sandbox_paused`].
pub fn paused(id: &SandboxId, envd_port: bool) -> Response<ProxyBody> {
    if envd_port {
        edge_error(id, SANDBOX_PAUSED, None, StatusCode::BAD_GATEWAY)
    } else {
        sandbox_paused(id)
    }
}

/// 409 for a paused sandbox that does not resume on traffic (the reference edge's answer).
pub fn sandbox_paused(id: &SandboxId) -> Response<ProxyBody> {
    let body = PausedError {
        sandbox_id: id.as_str(),
        message: SANDBOX_PAUSED,
        code: StatusCode::CONFLICT.as_u16(),
        can_auto_resume: false,
    };
    json_response(StatusCode::CONFLICT, &body)
}

/// 502 for a running sandbox where nothing listens on `port`.
pub fn port_not_open(id: &SandboxId, port: u16) -> Response<ProxyBody> {
    edge_error(id, PORT_NOT_OPEN, Some(port), StatusCode::BAD_GATEWAY)
}

/// 502 when the sandbox accepted the connection but the exchange failed.
pub fn upstream_failed(id: &SandboxId, port: u16) -> Response<ProxyBody> {
    let message = "The sandbox did not answer the request";
    edge_error(id, message, Some(port), StatusCode::BAD_GATEWAY)
}

/// The message when the proxy cannot reach the sandbox's node, or cannot learn which it is.
pub const SANDBOX_UNREACHABLE: &str = "The sandbox could not be reached";

/// 502 when the sandbox's node cannot be reached, or the directory cannot tell where the
/// sandbox runs: it may still exist, so this does not say it was not found.
pub fn sandbox_unreachable(id: &SandboxId) -> Response<ProxyBody> {
    edge_error(id, SANDBOX_UNREACHABLE, None, StatusCode::BAD_GATEWAY)
}

/// 403 for envd paths only the node may call.
pub fn forbidden_path(id: &SandboxId, path: &str) -> Response<ProxyBody> {
    let message = format!("The path {path} is not reachable through the proxy");
    edge_error(id, &message, None, StatusCode::FORBIDDEN)
}

/// 400 in the control plane's shape, for requests that cannot be routed.
pub fn bad_request(message: &str) -> Response<ProxyBody> {
    json_response(StatusCode::BAD_REQUEST, &ApiError { code: 400, message })
}

/// Methods a preflight answered by [`routing_preflight`] allows.
const PREFLIGHT_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS";

/// 204 for a browser's CORS preflight of a request routed by headers (see
/// `handler::is_routing_preflight`): any origin (envd answers its own preflights the same
/// way; the request itself still needs the sandbox's access token), the methods envd serves
/// and the headers the browser asked for.
pub fn routing_preflight(request: &http::HeaderMap) -> Response<ProxyBody> {
    let body = Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::NO_CONTENT;
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(PREFLIGHT_METHODS),
    );
    if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("7200"),
    );
    response
}

fn edge_error(
    id: &SandboxId,
    message: &str,
    port: Option<u16>,
    status: StatusCode,
) -> Response<ProxyBody> {
    let body = EdgeError {
        sandbox_id: id.as_str(),
        message,
        port,
        code: status.as_u16(),
    };
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<ProxyBody> {
    // Serialising these plain structs cannot fail (string keys, no maps, no custom impls).
    let bytes = serde_json::to_vec(body).expect("error bodies serialise");
    let body = Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response<ProxyBody>) -> String {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("full body")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn bodies_match_the_reference_edge() {
        let id = SandboxId::parse("iabc").expect("id");
        let r = sandbox_not_found(&id);
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(r.headers()[header::CONTENT_TYPE], JSON_CONTENT_TYPE);
        assert_eq!(
            body_of(r).await,
            r#"{"sandboxId":"iabc","message":"The sandbox was not found","code":502}"#
        );
        let r = port_not_open(&id, 8080);
        assert_eq!(
            body_of(r).await,
            r#"{"sandboxId":"iabc","message":"The sandbox is running but port is not open","port":8080,"code":502}"#
        );
        assert_eq!(
            body_of(bad_request("missing")).await,
            r#"{"code":400,"message":"missing"}"#
        );
    }
}
