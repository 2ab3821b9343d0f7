//! Webhook registrations as E2B documents them: the request body of `POST` and `PATCH
//! /events/webhooks[/{id}]` (`name`, `url`, `enabled`, `events`, `signatureSecret`), its
//! validation (every message names the field), the response shape (`id`, `teamId`, `name`,
//! `createdAt`, `enabled`, `url`, `events`; the secret is never returned) and the delivery
//! signature: `e2b-signature` = base64 (standard alphabet, `=` padding stripped) of
//! SHA-256(secret ‖ raw body), with `e2b-signature-version: v1`.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::destination::WebhookDestinations;
use super::store::Webhook;
use super::{new_uuid, rfc3339, EventType};
use crate::store::TeamId;

/// Longest webhook name, in bytes.
pub const MAX_NAME: usize = 255;
/// Longest webhook URL, in bytes.
pub const MAX_URL: usize = 2048;
/// Longest signature secret, in bytes.
pub const MAX_SECRET: usize = 1024;
/// Most webhooks a team may register.
pub const MAX_WEBHOOKS_PER_TEAM: usize = 100;
/// The `e2b-signature-version` sent with every delivery.
pub const SIGNATURE_VERSION: &str = "v1";

/// Body of `POST /events/webhooks` (name, url, events and signatureSecret required) and of
/// `PATCH /events/webhooks/{id}` (every field optional; given fields replace the old ones).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookBody {
    /// Display name.
    pub name: Option<String>,
    /// Target URL (http or https).
    pub url: Option<String>,
    /// Deliver or not (default `true`).
    pub enabled: Option<bool>,
    /// Event types to deliver (at least one).
    pub events: Option<Vec<String>>,
    /// Secret the deliveries are signed with.
    pub signature_secret: Option<String>,
}

/// A webhook as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookWire {
    /// Webhook id.
    pub id: String,
    /// Owning team.
    pub team_id: String,
    /// Display name.
    pub name: String,
    /// Registration time (RFC 3339).
    pub created_at: String,
    /// Whether events are delivered.
    pub enabled: bool,
    /// Target URL.
    pub url: String,
    /// Delivered event types.
    pub events: Vec<&'static str>,
}

impl From<&Webhook> for WebhookWire {
    fn from(h: &Webhook) -> Self {
        WebhookWire {
            id: h.id.clone(),
            team_id: h.team_id.to_string(),
            name: h.name.clone(),
            created_at: rfc3339(h.created_at),
            enabled: h.enabled,
            url: h.url.clone(),
            events: h.events.iter().map(|e| e.as_str()).collect(),
        }
    }
}

/// Checks a webhook URL: absolute http or https, with a host, no whitespace, at most
/// [`MAX_URL`] bytes, and not aimed at an address `destinations` refuses (IP literals and
/// `localhost`; names are checked after resolution, at delivery). Returns it as given.
pub fn validate_url(raw: &str, destinations: &WebhookDestinations) -> Result<String, String> {
    if raw.is_empty() || raw.len() > MAX_URL {
        return Err(format!("url must be 1 to {MAX_URL} bytes long"));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("url {raw:?} must not contain whitespace"));
    }
    let url = reqwest::Url::parse(raw).map_err(|e| format!("url {raw:?} is invalid: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "url {raw:?} must use http or https, not {}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("url {raw:?} has no host"));
    }
    destinations
        .check_url(&url)
        .map_err(|e| format!("url {raw:?}: {e}"))?;
    Ok(raw.to_string())
}

/// Checks an `events` list: at least one known type; duplicates are dropped, order is E2B's.
pub fn validate_events(list: &[String]) -> Result<Vec<EventType>, String> {
    if list.is_empty() {
        return Err("events must name at least one event type".into());
    }
    let mut types = list
        .iter()
        .map(|s| {
            EventType::parse(s).ok_or_else(|| {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                format!(
                    "events: unknown event type {s:?} (known: {})",
                    known.join(", ")
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    types.sort();
    types.dedup();
    Ok(types)
}

fn validate_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("name must be 1 to {MAX_NAME} bytes long"));
    }
    Ok(name.to_string())
}

fn validate_secret(secret: &str) -> Result<String, String> {
    if secret.is_empty() || secret.len() > MAX_SECRET {
        return Err(format!(
            "signatureSecret must be 1 to {MAX_SECRET} bytes long"
        ));
    }
    Ok(secret.to_string())
}

/// A new webhook of `team` from a `POST` body; its URL must pass `destinations`.
pub fn new_webhook(
    team: &TeamId,
    body: &WebhookBody,
    destinations: &WebhookDestinations,
) -> Result<Webhook, String> {
    let required = |field: &str| format!("{field} is required");
    let name = validate_name(body.name.as_deref().ok_or_else(|| required("name"))?)?;
    let url = validate_url(
        body.url.as_deref().ok_or_else(|| required("url"))?,
        destinations,
    )?;
    let events = validate_events(body.events.as_deref().ok_or_else(|| required("events"))?)?;
    let secret = validate_secret(
        body.signature_secret
            .as_deref()
            .ok_or_else(|| required("signatureSecret"))?,
    )?;
    Ok(Webhook {
        id: new_uuid(),
        team_id: team.clone(),
        name,
        url,
        enabled: body.enabled.unwrap_or(true),
        events,
        secret,
        created_at: Utc::now(),
    })
}

/// Applies a `PATCH` body to `hook`: given fields replace the old ones. Validates everything
/// before changing anything; a new URL must pass `destinations`.
pub fn apply_patch(
    hook: &mut Webhook,
    body: &WebhookBody,
    destinations: &WebhookDestinations,
) -> Result<(), String> {
    let name = body.name.as_deref().map(validate_name).transpose()?;
    let url = body
        .url
        .as_deref()
        .map(|u| validate_url(u, destinations))
        .transpose()?;
    let events = body.events.as_deref().map(validate_events).transpose()?;
    let secret = body
        .signature_secret
        .as_deref()
        .map(validate_secret)
        .transpose()?;
    if let Some(name) = name {
        hook.name = name;
    }
    if let Some(url) = url {
        hook.url = url;
    }
    if let Some(events) = events {
        hook.events = events;
    }
    if let Some(secret) = secret {
        hook.secret = secret;
    }
    if let Some(enabled) = body.enabled {
        hook.enabled = enabled;
    }
    Ok(())
}

/// The `e2b-signature` of a delivery: base64 (standard alphabet, no padding) of
/// SHA-256(`secret` followed by the raw `body`).
pub fn signature(secret: &str, body: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(secret.as_bytes());
    hasher.update(body.as_bytes());
    STANDARD_NO_PAD.encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: serde_json::Value) -> WebhookBody {
        serde_json::from_value(v).expect("body")
    }

    #[test]
    fn signature_matches_e2b_reference() {
        // E2B's documented check, in Python: base64.b64encode(hashlib.sha256((secret +
        // payload).encode()).digest()).rstrip('=').
        let sig = signature("secret", "{}");
        let mut h = Sha256::new();
        h.update(b"secret{}");
        let want = base64::engine::general_purpose::STANDARD.encode(h.finalize());
        assert_eq!(sig, want.trim_end_matches('='));
        assert!(!sig.contains('='));
        assert_eq!(sig.len(), 43);
        // Known vector: sha256("abc") = ba7816bf...
        assert_eq!(
            signature("a", "bc"),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0"
        );
    }

    /// The policy of a test receiver on 127.0.0.1.
    fn open() -> WebhookDestinations {
        WebhookDestinations {
            allow_private: true,
            ..Default::default()
        }
    }

    #[test]
    fn urls_must_be_http_or_https() {
        for ok in [
            "http://127.0.0.1:8080/hook",
            "https://example.com/webhook?x=1",
            "http://[::1]:9/",
        ] {
            assert_eq!(validate_url(ok, &open()).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "example.com/hook",
            "ftp://example.com/",
            "file:///etc/passwd",
            "http://",
            "http://exa mple.com/",
            "javascript:alert(1)",
        ] {
            let err = validate_url(bad, &open()).expect_err(bad);
            assert!(err.starts_with("url"), "{bad}: {err}");
        }
        assert!(validate_url(&format!("http://a.com/{}", "x".repeat(MAX_URL)), &open()).is_err());
    }

    #[test]
    fn urls_at_refused_literal_addresses_are_refused_by_default() {
        let strict = WebhookDestinations::default();
        for bad in [
            "http://127.0.0.1:8080/hook",
            "http://[::1]:9/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://localhost:3000/",
            "http://0.0.0.0/",
            "http://10.213.0.2/",
        ] {
            let err = validate_url(bad, &strict).expect_err(bad);
            assert!(
                err.starts_with("url") && err.contains("refused"),
                "{bad}: {err}"
            );
        }
        assert!(validate_url("https://example.com/hook", &strict).is_ok());
        let team = TeamId::from_stored("t".into());
        let err = new_webhook(&team, &body(json_body()), &strict).expect_err("loopback");
        assert!(err.starts_with("url"), "{err}");
        let mut hook = new_webhook(&team, &body(json_body()), &open()).expect("allowed");
        let err = apply_patch(
            &mut hook,
            &body(serde_json::json!({"url": "http://169.254.169.254/"})),
            &strict,
        )
        .expect_err("link-local");
        assert!(err.starts_with("url"), "{err}");
    }

    #[test]
    fn create_requires_and_checks_every_field() {
        let team = TeamId::from_stored("t".into());
        let full = json_body();
        let hook = new_webhook(&team, &body(full.clone()), &open()).expect("valid");
        assert!(hook.enabled);
        assert_eq!(hook.events, [EventType::Created, EventType::Killed]);
        assert_eq!(hook.name, "hook");
        for field in ["name", "url", "events", "signatureSecret"] {
            let mut v = full.clone();
            v.as_object_mut().expect("object").remove(field);
            let err = new_webhook(&team, &body(v), &open()).expect_err(field);
            assert!(err.contains(field), "{field}: {err}");
        }
        let mut v = full.clone();
        v["events"] = serde_json::json!(["sandbox.lifecycle.exploded"]);
        assert!(new_webhook(&team, &body(v), &open())
            .expect_err("unknown")
            .contains("exploded"));
        let mut v = full;
        v["events"] = serde_json::json!([]);
        assert!(new_webhook(&team, &body(v), &open())
            .expect_err("empty")
            .starts_with("events"));
    }

    fn json_body() -> serde_json::Value {
        serde_json::json!({
            "name": " hook ",
            "url": "http://127.0.0.1:1/h",
            "events": ["sandbox.lifecycle.killed", "sandbox.lifecycle.created",
                       "sandbox.lifecycle.killed"],
            "signatureSecret": "s3cret",
        })
    }

    #[test]
    fn patch_replaces_given_fields_only_and_is_atomic() {
        let team = TeamId::from_stored("t".into());
        let mut hook = new_webhook(&team, &body(json_body()), &open()).expect("valid");
        let before = hook.clone();
        let err = apply_patch(
            &mut hook,
            &body(serde_json::json!({"name": "new", "url": "gopher://x"})),
            &open(),
        )
        .expect_err("bad url");
        assert!(err.starts_with("url"));
        assert_eq!(hook, before, "nothing changed on a rejected patch");
        apply_patch(
            &mut hook,
            &body(serde_json::json!({"enabled": false, "events": ["sandbox.lifecycle.paused"]})),
            &open(),
        )
        .expect("valid");
        assert!(!hook.enabled);
        assert_eq!(hook.events, [EventType::Paused]);
        assert_eq!(hook.url, before.url);
        assert_eq!(hook.secret, before.secret);
        let wire = WebhookWire::from(&hook);
        let v = serde_json::to_value(&wire).expect("json");
        assert_eq!(v["teamId"], "t");
        assert!(v.get("signatureSecret").is_none());
        assert_eq!(v["events"], serde_json::json!(["sandbox.lifecycle.paused"]));
    }
}
