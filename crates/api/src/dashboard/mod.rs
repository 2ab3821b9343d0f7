//! The web dashboard: a static bundle (HTML, ES modules, CSS from `crates/api/dashboard/`,
//! embedded in the binary) served under `/dashboard/`, and `/dashboard/config.json`, which tells
//! the browser where the sandbox proxy is (its terminal reaches envd through it).
//!
//! Nothing here needs a key: the bundle is static and the config holds no secret. The pages
//! sign in with an API key (and optionally the admin token) kept in the browser's
//! `sessionStorage` and read everything through the authenticated REST API.
//!
//! Every answer carries a restrictive `Content-Security-Policy` (scripts, styles and requests
//! from this origin only; requests also to the sandbox proxy's origin), `nosniff`, no referrer
//! and an `ETag` (`Cache-Control: no-cache`: the browser revalidates, a `304` costs nothing).
//! An unknown path under `/dashboard/` is a 404.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::AppState;

/// One file of the bundle.
#[derive(Debug)]
struct Asset {
    /// Its name under `/dashboard/`.
    name: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its bytes.
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_str!(concat!("../../dashboard/", $name)),
        }
    };
}

/// The bundle. `index.html` is also served at `/dashboard/`.
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("ui.js", JS),
    asset!("charts.js", JS),
    asset!("terminal.js", JS),
    asset!("envd.js", JS),
    asset!("sandboxes.js", JS),
    asset!("sandbox.js", JS),
    asset!("templates.js", JS),
    asset!("nodes.js", JS),
    asset!("webhooks.js", JS),
];

/// The strong `ETag` of each asset (in [`ASSETS`] order): a prefix of its SHA-256.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            format!(
                "\"{}\"",
                &hex::encode(Sha256::digest(a.body.as_bytes()))[..20]
            )
        })
        .collect()
});

/// The dashboard's routes, merged into the REST API's router.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route("/dashboard/", get(index))
        .route("/dashboard/config.json", get(config))
        .route("/dashboard/{file}", get(file))
}

/// The asset called `name` and its `ETag`.
fn find(name: &str) -> Option<(&'static Asset, &'static str)> {
    ASSETS
        .iter()
        .zip(ETAGS.iter())
        .find(|(a, _)| a.name == name)
        .map(|(a, e)| (a, e.as_str()))
}

async fn index(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    file(State(state), Path("index.html".to_string()), headers).await
}

async fn file(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (asset, etag) =
        find(&name).ok_or_else(|| ApiError::NotFound(format!("no dashboard file {name:?}")))?;
    Ok(serve(
        asset,
        etag,
        &headers,
        sandbox_url(&state, &headers).as_deref(),
    ))
}

/// `{"sandboxUrl": <the proxy's URL or null>}`.
async fn config(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let url = sandbox_url(&state, &headers);
    let body = serde_json::json!({ "sandboxUrl": url }).to_string();
    let mut response = (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response();
    secure_headers(response.headers_mut(), url.as_deref());
    response
}

/// The sandbox proxy's URL for a browser: [`crate::ApiConfig::sandbox_url`], else
/// `http://<domain>`; an unspecified host (`0.0.0.0`, `[::]`) is replaced with the host the
/// browser reached the API at (same machine, other port). `None` when neither is set or the
/// result is not an absolute `http(s)` URL.
fn sandbox_url(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let config = &state.core.config;
    let configured = config
        .sandbox_url
        .clone()
        .or_else(|| config.domain.as_ref().map(|d| format!("http://{d}")))?;
    let request_host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .map(|a| a.host().to_string());
    browser_url(&configured, request_host.as_deref())
}

/// `url` reduced to its origin (`scheme://host[:port]`), its unspecified host replaced with
/// `request_host`.
fn browser_url(url: &str, request_host: Option<&str>) -> Option<String> {
    let uri = url.trim().parse::<http::Uri>().ok()?;
    let scheme = uri.scheme_str().filter(|s| *s == "http" || *s == "https")?;
    let authority = uri.authority()?;
    let mut host = authority.host().to_string();
    if matches!(host.as_str(), "0.0.0.0" | "[::]") {
        host = request_host?.to_string();
    }
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        return None;
    }
    Some(match authority.port_u16() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

/// The dashboard's `Content-Security-Policy`: everything from this origin only, requests also
/// to the sandbox proxy (`sandbox`, an origin from [`browser_url`]).
fn content_security_policy(sandbox: Option<&str>) -> String {
    let connect = match sandbox {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".to_string(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

fn secure_headers(headers: &mut HeaderMap, sandbox: Option<&str>) {
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(sandbox)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// `asset`, or `304` when the browser's copy (`If-None-Match`) is `etag`.
fn serve(asset: &Asset, etag: &str, request: &HeaderMap, sandbox: Option<&str>) -> Response {
    let current = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if current {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    secure_headers(headers, sandbox);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    async fn dashboard_router(sandbox_url: Option<&str>) -> (tempfile::TempDir, Router) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = crate::ApiConfig::new(dir.path());
        config.sandbox_url = sandbox_url.map(str::to_string);
        let node = paddock_node_contract::fake::FakeNode::new();
        let control = crate::ControlPlane::open(config, node).await.expect("open");
        (dir, control.router())
    }

    async fn get(router: &Router, uri: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::builder().uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        router
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    async fn json_body(response: Response) -> serde_json::Value {
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        serde_json::from_slice(&body).expect("json")
    }

    fn header(response: &Response, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[tokio::test]
    async fn assets_have_their_types_csp_and_cache_headers() {
        let (_dir, router) = dashboard_router(Some("http://127.0.0.1:3002")).await;
        for (uri, content_type) in [
            ("/dashboard/", "text/html; charset=utf-8"),
            ("/dashboard/index.html", "text/html; charset=utf-8"),
            ("/dashboard/app.js", JS),
            ("/dashboard/terminal.js", JS),
            ("/dashboard/style.css", "text/css; charset=utf-8"),
        ] {
            let response = get(&router, uri, &[]).await;
            assert_eq!(response.status(), StatusCode::OK, "{uri}");
            assert_eq!(header(&response, header::CONTENT_TYPE), content_type);
            assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache");
            assert_eq!(header(&response, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            let csp = header(&response, header::CONTENT_SECURITY_POLICY);
            assert!(
                csp.starts_with("default-src 'none'; script-src 'self';"),
                "{csp}"
            );
            assert!(
                csp.contains("connect-src 'self' http://127.0.0.1:3002;"),
                "{csp}"
            );
            assert!(!csp.contains("unsafe"), "{csp}");
            let etag = header(&response, header::ETAG).to_string();
            let again = get(&router, uri, &[("if-none-match", &etag)]).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{uri}");
        }
        let index = get(&router, "/dashboard/", &[]).await;
        let body = index.into_body().collect().await.expect("body").to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("app.js"));
        let bare = get(&router, "/dashboard", &[]).await;
        assert_eq!(bare.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(header(&bare, header::LOCATION), "/dashboard/");
    }

    #[tokio::test]
    async fn unknown_dashboard_paths_are_404() {
        let (_dir, router) = dashboard_router(None).await;
        for uri in [
            "/dashboard/nope.js",
            "/dashboard/../Cargo.toml",
            "/dashboard/pages/app.js",
            "/dashboard/app.js/",
            "/dashboard/App.js",
        ] {
            let response = get(&router, uri, &[]).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{uri}");
        }
    }

    #[tokio::test]
    async fn config_names_the_sandbox_proxy_for_the_browser() {
        let (_dir, router) = dashboard_router(Some("http://0.0.0.0:3002/")).await;
        let response = get(
            &router,
            "/dashboard/config.json",
            &[("host", "box.lan:3000")],
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let csp = header(&response, header::CONTENT_SECURITY_POLICY).to_string();
        let json = json_body(response).await;
        assert_eq!(json["sandboxUrl"], "http://box.lan:3002");
        assert!(
            csp.contains("connect-src 'self' http://box.lan:3002;"),
            "{csp}"
        );

        let (_dir, router) = dashboard_router(None).await;
        let response = get(&router, "/dashboard/config.json", &[]).await;
        let json = json_body(response).await;
        assert_eq!(json["sandboxUrl"], serde_json::Value::Null);
    }

    #[test]
    fn browser_urls_are_origins() {
        assert_eq!(
            browser_url("https://sbx.example.com/x?y", None).as_deref(),
            Some("https://sbx.example.com")
        );
        assert_eq!(
            browser_url("http://[::]:3002", Some("10.0.0.5")).as_deref(),
            Some("http://10.0.0.5:3002")
        );
        assert_eq!(browser_url("http://0.0.0.0:3002", None), None);
        assert_eq!(browser_url("ftp://example.com", None), None);
        assert_eq!(browser_url("example.com:3002", None), None);
        assert_eq!(
            browser_url("http://a;b.example", None),
            None,
            "a CSP separator never reaches the header"
        );
    }
}
