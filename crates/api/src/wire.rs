//! The E2B REST JSON schemas (spec 2.4), keys exactly as on the wire. Requests ignore unknown
//! keys; responses are built from [`SandboxRecord`]s.

use std::collections::{BTreeMap, HashMap};

use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};

use crate::store::SandboxRecord;

/// `NewSandbox` (v1) and `NewSandboxV2`: the create body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    /// Template reference.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds until the sandbox is killed.
    pub timeout: Option<i64>,
    /// Pause instead of kill on timeout.
    pub auto_pause: Option<bool>,
    /// Resume on traffic (only meaningful with `autoPause`).
    pub auto_resume: Option<AutoResume>,
    /// `false` = filesystem-only auto-pause.
    pub auto_pause_memory: Option<bool>,
    /// v1 only: issue an envd access token (Paddock always does).
    pub secure: Option<bool>,
    /// Outbound network access (snake_case on the wire).
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    /// Egress configuration (`SandboxNetworkConfig`).
    pub network: Option<NetworkBody>,
    /// Metadata (`null` = none).
    pub metadata: Option<BTreeMap<String, String>>,
    /// Environment variables (`null` = none).
    pub env_vars: Option<HashMap<String, String>>,
}

/// `SandboxNetworkConfig` (create) and `SandboxNetworkUpdateConfig` (`PUT …/network`, which
/// also carries `allow_internet_access`). Fields Paddock cannot honour yet are kept so that
/// validation can refuse them instead of ignoring them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkBody {
    /// Allowed destinations (CIDR, IP, `domain` or `*.domain`), checked before `denyOut`.
    pub allow_out: Option<Vec<String>>,
    /// Denied destinations (CIDR or IP).
    pub deny_out: Option<Vec<String>>,
    /// Update only: outbound access at all.
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    /// Public traffic to the sandbox's ports (only `true`/`null` is supported).
    pub allow_public_traffic: Option<bool>,
    /// DNS servers (not supported yet).
    pub dns_servers: Option<Vec<String>>,
    /// Egress proxy (not supported).
    pub egress_proxy: Option<serde_json::Value>,
    /// Host masking (not supported).
    pub mask_request_host: Option<String>,
    /// TLS interception ports (not supported).
    pub https_ports: Option<Vec<serde_json::Value>>,
    /// Header rules per domain (not supported).
    pub rules: Option<serde_json::Value>,
}

/// `autoResume` of a create body.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct AutoResume {
    /// Whether traffic resumes a paused sandbox.
    #[serde(default)]
    pub enabled: bool,
}

/// `ConnectSandbox` (v1, `timeout` required) and `ConnectSandboxV2` (optional).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConnectBody {
    /// Seconds the sandbox should live at least from now.
    pub timeout: Option<i64>,
    /// `false`: a paused sandbox starts again from its files (a cold boot), not from memory.
    pub memory: Option<bool>,
}

/// `SandboxTimeoutRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TimeoutBody {
    /// New timeout in seconds from now.
    pub timeout: Option<i64>,
}

/// `SandboxRefreshRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RefreshBody {
    /// Keep-alive in seconds.
    pub duration: Option<i64>,
}

/// `Sandbox`: the create/connect result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Deprecated constant client id.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// envd version the SDKs gate features on.
    pub envd_version: &'static str,
    /// Template alias as requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Token for envd's `X-Access-Token`.
    pub envd_access_token: String,
    /// Token for non-envd ports; Paddock issues none.
    pub traffic_access_token: Option<String>,
    /// Sandbox domain overriding the client's (may be `null`).
    pub domain: Option<String>,
}

/// `SandboxDetail` and `ListedSandbox`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Deprecated constant client id.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// Template alias as requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Start time, RFC 3339.
    pub started_at: String,
    /// End time, RFC 3339.
    pub end_at: String,
    /// vCPUs.
    pub cpu_count: u32,
    /// Memory in MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    /// Disk in MiB.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    /// `running` or `paused`.
    pub state: &'static str,
    /// envd version.
    pub envd_version: &'static str,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// envd token (detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// Sandbox domain (detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<Option<String>>,
    /// `{"autoResume", "onTimeout"}` (detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleInfo>,
    /// How a paused sandbox is kept: `full` (memory) or `filesystem` (detail only, when
    /// paused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_mode: Option<&'static str>,
}

/// `lifecycle` of a `SandboxDetail`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleInfo {
    /// Traffic resumes the sandbox while it is paused.
    pub auto_resume: bool,
    /// `kill` or `pause`.
    pub on_timeout: &'static str,
}

impl From<crate::store::SandboxLifecycle> for LifecycleInfo {
    fn from(l: crate::store::SandboxLifecycle) -> Self {
        LifecycleInfo {
            auto_resume: l.auto_resume,
            on_timeout: if l.auto_pause { "pause" } else { "kill" },
        }
    }
}

impl Sandbox {
    /// The create/connect view of a record.
    pub fn from_record(rec: &SandboxRecord, domain: Option<&str>) -> Self {
        Sandbox {
            template_id: rec.template.to_string(),
            sandbox_id: rec.id.to_string(),
            client_id: rec.client_id.clone(),
            envd_version: paddock_domain::ENVD_VERSION,
            alias: rec.alias.clone(),
            envd_access_token: rec.access_token.clone(),
            traffic_access_token: None,
            domain: domain.map(str::to_string),
        }
    }
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl SandboxDetail {
    /// The list view of a record (`ListedSandbox`).
    pub fn listed(rec: &SandboxRecord) -> Self {
        SandboxDetail {
            template_id: rec.template.to_string(),
            sandbox_id: rec.id.to_string(),
            client_id: rec.client_id.clone(),
            alias: rec.alias.clone(),
            started_at: rfc3339(rec.started_at),
            end_at: rfc3339(rec.end_at),
            cpu_count: rec.resources.cpu_count,
            memory_mb: rec.resources.memory_mb,
            disk_size_mb: rec.resources.disk_mb,
            state: rec.state.as_str(),
            envd_version: paddock_domain::ENVD_VERSION,
            metadata: rec.metadata.clone(),
            envd_access_token: None,
            domain: None,
            lifecycle: None,
            pause_mode: None,
        }
    }

    /// The detail view of a record (`SandboxDetail`), which also carries the envd token and
    /// domain.
    pub fn detail(rec: &SandboxRecord, domain: Option<&str>) -> Self {
        SandboxDetail {
            envd_access_token: Some(rec.access_token.clone()),
            domain: Some(domain.map(str::to_string)),
            ..SandboxDetail::listed(rec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TeamId;
    use chrono::TimeZone;
    use paddock_domain::{Resources, SandboxId, SandboxState, TemplateName};

    fn rec() -> SandboxRecord {
        let t = chrono::Utc
            .with_ymd_and_hms(2024, 1, 2, 3, 4, 5)
            .single()
            .expect("valid");
        SandboxRecord {
            id: SandboxId::parse("iabc").expect("valid"),
            team_id: TeamId::generate(),
            template: TemplateName::parse("base").expect("valid"),
            alias: Some("base".into()),
            state: SandboxState::Running,
            metadata: [("k".to_string(), "v".to_string())].into(),
            access_token: "tok".into(),
            started_at: t,
            end_at: t + chrono::Duration::seconds(300),
            resources: Resources::default(),
            client_id: "6532622b".into(),
            end_reason: None,
        }
    }

    #[test]
    fn sandbox_json_keys_match_the_spec() {
        let v = serde_json::to_value(Sandbox::from_record(&rec(), None)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "templateID": "base", "sandboxID": "iabc", "clientID": "6532622b",
                "envdVersion": paddock_domain::ENVD_VERSION, "alias": "base",
                "envdAccessToken": "tok", "trafficAccessToken": null, "domain": null
            })
        );
    }

    #[test]
    fn detail_json_keys_match_the_spec() {
        let v =
            serde_json::to_value(SandboxDetail::detail(&rec(), Some("example.com"))).expect("json");
        assert_eq!(v["startedAt"], "2024-01-02T03:04:05.000Z");
        assert_eq!(v["endAt"], "2024-01-02T03:09:05.000Z");
        assert_eq!(v["memoryMB"], 512);
        assert_eq!(v["diskSizeMB"], 10240);
        assert_eq!(v["cpuCount"], 2);
        assert_eq!(v["state"], "running");
        assert_eq!(v["domain"], "example.com");
        let listed = serde_json::to_value(SandboxDetail::listed(&rec())).expect("json");
        assert!(listed.get("envdAccessToken").is_none() && listed.get("domain").is_none());
    }

    #[test]
    fn create_bodies_of_both_sdks_parse() {
        let py: NewSandbox =
            serde_json::from_str(r#"{"templateID":"base","metadata":{},"envVars":{}}"#)
                .expect("py");
        assert_eq!(py.template_id, "base");
        let js: NewSandbox = serde_json::from_str(
            r#"{"templateID":"base","autoPause":true,"autoResume":{"enabled":true},
                "allow_internet_access":false,"network":{"denyOut":["0.0.0.0/0"]},"metadata":null}"#,
        )
        .expect("js");
        assert_eq!(js.auto_pause, Some(true));
        assert!(js.metadata.is_none());
    }
}
