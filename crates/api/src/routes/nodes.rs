//! E2B's admin node routes, guarded by `X-Admin-Token` ([`Admin`]):
//! - `GET /nodes[?clusterID=]`: every node as E2B's `Node`, sorted by id;
//! - `GET /nodes/{nodeID}[?clusterID=]`: E2B's `NodeDetail`, plus `sandboxes` (the ids of the
//!   sandboxes the node last reported holding, a Paddock extension);
//! - `POST /nodes/{nodeID}` with E2B's `NodeStatusChange` (`{"status": "draining"|"ready",
//!   "clusterID"?}`): 204;
//! - `GET /nodes/events[?limit=&offset=&nodeID=&type=]` (a Paddock extension): the history of
//!   the registry's events (`node.joined`, `node.left`, `node.unhealthy`,
//!   `node.status_changed`), newest first, kept for 7 days; `limit` 1..=1000 (default 100),
//!   `offset` skips that many (after the filters), `type` is one event name. Each entry:
//!   `{"seq", "type", "nodeID", "status", "previousStatus" (or null), "timestamp"}`. `events`
//!   is therefore not a node id (the registry refuses it).
//!
//! Without `clusterID` every node is listed (Paddock has no default cluster to fall back to, as
//! E2B does); with it, only that cluster's, and a node of another cluster is not found.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;

use crate::auth::Admin;
use crate::cluster::{AdminStatus, NodeInfo, RegistryEventKind};
use crate::error::ApiError;
use crate::events::rfc3339;
use crate::extract::Json;
use crate::AppState;

const MIB: u64 = 1024 * 1024;

/// E2B's `MachineInfo`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MachineInfoJson<'a> {
    cpu_family: &'a str,
    cpu_model: &'a str,
    cpu_model_name: &'a str,
    cpu_architecture: &'a str,
}

/// E2B's `DiskMetrics`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DiskMetricsJson<'a> {
    mount_point: &'a str,
    device: &'a str,
    filesystem_type: &'a str,
    used_bytes: u64,
    total_bytes: u64,
}

/// E2B's `NodeMetrics`: zero (and no disks) before the node's first report.
#[derive(Debug, Serialize)]
struct NodeMetricsJson<'a> {
    #[serde(rename = "allocatedCPU")]
    allocated_cpu: u32,
    #[serde(rename = "allocatedMemoryBytes")]
    allocated_memory_bytes: u64,
    #[serde(rename = "cpuPercent")]
    cpu_percent: u32,
    #[serde(rename = "cpuCount")]
    cpu_count: u32,
    #[serde(rename = "memoryUsedBytes")]
    memory_used_bytes: u64,
    #[serde(rename = "memoryTotalBytes")]
    memory_total_bytes: u64,
    #[serde(rename = "hugePagesTotal")]
    huge_pages_total: u64,
    #[serde(rename = "hugePagesUsed")]
    huge_pages_used: u64,
    #[serde(rename = "hugePagesReserved")]
    huge_pages_reserved: u64,
    #[serde(rename = "hugePageSizeBytes")]
    huge_page_size_bytes: u64,
    disks: Vec<DiskMetricsJson<'a>>,
}

impl<'a> NodeMetricsJson<'a> {
    fn of(node: &'a NodeInfo) -> Self {
        let Some(r) = &node.last_report else {
            return NodeMetricsJson {
                allocated_cpu: 0,
                allocated_memory_bytes: 0,
                cpu_percent: 0,
                cpu_count: 0,
                memory_used_bytes: 0,
                memory_total_bytes: 0,
                huge_pages_total: 0,
                huge_pages_used: 0,
                huge_pages_reserved: 0,
                huge_page_size_bytes: 0,
                disks: Vec::new(),
            };
        };
        NodeMetricsJson {
            allocated_cpu: r.allocated.cpus,
            allocated_memory_bytes: r.allocated.memory_mb.saturating_mul(MIB),
            // A fraction in 0..=1 becomes a whole percentage in 0..=100 (`as` saturates).
            cpu_percent: (r.cpu_load.clamp(0.0, 1.0) * 100.0).round() as u32,
            cpu_count: r.cpu_count,
            memory_used_bytes: r.memory_used_bytes,
            memory_total_bytes: r.memory_total_bytes,
            huge_pages_total: r.huge_pages.total,
            huge_pages_used: r.huge_pages.used,
            huge_pages_reserved: r.huge_pages.reserved,
            huge_page_size_bytes: r.huge_pages.page_size_bytes,
            disks: r
                .disks
                .iter()
                .map(|d| DiskMetricsJson {
                    mount_point: &d.mount_point,
                    device: &d.device,
                    filesystem_type: &d.filesystem_type,
                    used_bytes: d.used_bytes,
                    total_bytes: d.total_bytes,
                })
                .collect(),
        }
    }
}

/// The fields E2B's `Node` and `NodeDetail` share.
#[derive(Debug, Serialize)]
struct NodeCommonJson<'a> {
    id: &'a str,
    #[serde(rename = "serviceInstanceID")]
    service_instance_id: &'a str,
    #[serde(rename = "clusterID")]
    cluster_id: &'a str,
    status: &'static str,
    #[serde(rename = "statusChangedAt")]
    status_changed_at: String,
    #[serde(rename = "sandboxCount")]
    sandbox_count: u32,
    metrics: NodeMetricsJson<'a>,
    #[serde(rename = "createSuccesses")]
    create_successes: u64,
    #[serde(rename = "createFails")]
    create_fails: u64,
    version: &'a str,
    commit: &'a str,
    #[serde(rename = "machineInfo")]
    machine_info: MachineInfoJson<'a>,
}

impl<'a> NodeCommonJson<'a> {
    fn of(node: &'a NodeInfo) -> Self {
        let reg = &node.registration;
        let m = &reg.machine_info;
        let report = node.last_report.as_ref();
        NodeCommonJson {
            id: &reg.id,
            service_instance_id: &reg.service_instance_id,
            cluster_id: &reg.cluster_id,
            status: node.status.as_str(),
            status_changed_at: rfc3339(node.status_changed_at),
            sandbox_count: report.map_or(0, |r| r.sandbox_count),
            metrics: NodeMetricsJson::of(node),
            create_successes: report.map_or(0, |r| r.create_successes),
            create_fails: report.map_or(0, |r| r.create_fails),
            version: &reg.version,
            commit: &reg.commit,
            machine_info: MachineInfoJson {
                cpu_family: &m.cpu_family,
                cpu_model: &m.cpu_model,
                cpu_model_name: &m.cpu_model_name,
                cpu_architecture: &m.cpu_architecture,
            },
        }
    }
}

/// E2B's `Node`.
#[derive(Debug, Serialize)]
struct NodeJson<'a> {
    #[serde(flatten)]
    common: NodeCommonJson<'a>,
    #[serde(rename = "sandboxStartingCount")]
    sandbox_starting_count: u32,
}

/// E2B's `NodeDetail`, plus `sandboxes` (ids).
#[derive(Debug, Serialize)]
struct NodeDetailJson<'a> {
    #[serde(flatten)]
    common: NodeCommonJson<'a>,
    sandboxes: &'a [String],
}

/// The `clusterID` query parameter, if given.
fn cluster_filter(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let pairs = super::query::parse_pairs(query.unwrap_or(""))?;
    Ok(pairs
        .into_iter()
        .rev()
        .find(|(k, _)| k == "clusterID")
        .map(|(_, v)| v))
}

fn in_cluster(node: &NodeInfo, cluster: Option<&str>) -> bool {
    cluster.is_none_or(|c| node.registration.cluster_id == c)
}

/// Node `id` (of `cluster`, when given), or 404.
fn find(state: &AppState, id: &str, cluster: Option<&str>) -> Result<NodeInfo, ApiError> {
    state
        .nodes
        .get(id)
        .filter(|n| in_cluster(n, cluster))
        .ok_or_else(|| ApiError::NotFound(format!("node '{id}' not found")))
}

pub(super) async fn list(
    _: Admin,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<Value>, ApiError> {
    let cluster = cluster_filter(query.as_deref())?;
    let nodes = state.nodes.list();
    let body: Vec<NodeJson<'_>> = nodes
        .iter()
        .filter(|n| in_cluster(n, cluster.as_deref()))
        .map(|n| NodeJson {
            common: NodeCommonJson::of(n),
            sandbox_starting_count: n.last_report.as_ref().map_or(0, |r| r.starting_count),
        })
        .collect();
    serde_json::to_value(body)
        .map(axum::Json)
        .map_err(|e| ApiError::Internal(Box::new(e)))
}

pub(super) async fn get(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<Value>, ApiError> {
    let cluster = cluster_filter(query.as_deref())?;
    let node = find(&state, &id, cluster.as_deref())?;
    let body = NodeDetailJson {
        common: NodeCommonJson::of(&node),
        sandboxes: node.sandboxes(),
    };
    serde_json::to_value(body)
        .map(axum::Json)
        .map_err(|e| ApiError::Internal(Box::new(e)))
}

/// Default and largest page of `GET /nodes/events`.
const EVENTS_PAGE: (u64, u64) = (100, 1000);

/// The query of `GET /nodes/events`.
fn events_query(query: Option<&str>) -> Result<crate::store::NodeEventQuery, ApiError> {
    let bad = |msg: String| ApiError::BadRequest(msg);
    let number = |name: &str, value: &str| {
        value.trim().parse::<u64>().map_err(|_| {
            bad(format!(
                "'{name}' must be a non-negative integer, not {value:?}"
            ))
        })
    };
    let mut q = crate::store::NodeEventQuery {
        node_id: None,
        kind: None,
        offset: 0,
        limit: EVENTS_PAGE.0,
    };
    for (key, value) in super::query::parse_pairs(query.unwrap_or(""))? {
        match key.as_str() {
            "limit" => {
                q.limit = number("limit", &value)?;
                if !(1..=EVENTS_PAGE.1).contains(&q.limit) {
                    return Err(bad(format!(
                        "'limit' must be 1 to {}, not {}",
                        EVENTS_PAGE.1, q.limit
                    )));
                }
            }
            "offset" => q.offset = number("offset", &value)?,
            "nodeID" => q.node_id = Some(value),
            "type" => {
                q.kind = Some(RegistryEventKind::parse(&value).ok_or_else(|| {
                    let names: Vec<&str> =
                        RegistryEventKind::ALL.iter().map(|k| k.as_str()).collect();
                    bad(format!(
                        "'type' must be one of {}, not {value:?}",
                        names.join(", ")
                    ))
                })?)
            }
            _ => {}
        }
    }
    Ok(q)
}

/// One entry of `GET /nodes/events`.
#[derive(Debug, Serialize)]
struct NodeEventJson<'a> {
    seq: i64,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "nodeID")]
    node_id: &'a str,
    status: &'static str,
    #[serde(rename = "previousStatus")]
    previous_status: Option<&'static str>,
    timestamp: String,
}

pub(super) async fn events(
    _: Admin,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<Value>, ApiError> {
    let query = events_query(query.as_deref())?;
    let records = state
        .core
        .store
        .node_events(&query)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Unsupported(what) => {
                ApiError::NotImplemented(format!("this store keeps no {what}"))
            }
            e => ApiError::Internal(Box::new(e)),
        })?;
    let body: Vec<NodeEventJson<'_>> = records
        .iter()
        .map(|r| NodeEventJson {
            seq: r.seq,
            kind: r.event.kind.as_str(),
            node_id: &r.event.node_id,
            status: r.event.status.as_str(),
            previous_status: r.event.previous.map(|p| p.as_str()),
            timestamp: rfc3339(r.event.at),
        })
        .collect();
    serde_json::to_value(body)
        .map(axum::Json)
        .map_err(|e| ApiError::Internal(Box::new(e)))
}

/// E2B's `NodeStatusChange`, checked field by field so that every 400 names its field.
fn parse_status_change(body: Value) -> Result<(AdminStatus, Option<String>), ApiError> {
    let bad = |msg: String| ApiError::BadRequest(msg);
    let Value::Object(fields) = body else {
        return Err(bad("request body must be a JSON object".into()));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "status" | "clusterID"))
    {
        return Err(bad(format!(
            "unknown field '{unknown}': expected 'status' and optionally 'clusterID'"
        )));
    }
    let status = match fields.get("status") {
        None | Some(Value::Null) => return Err(bad("'status' is required".into())),
        Some(Value::String(s)) => AdminStatus::parse(s).ok_or_else(|| {
            bad(format!(
                "'status' must be \"ready\" or \"draining\", not {s:?}"
            ))
        })?,
        Some(other) => {
            return Err(bad(format!(
                "'status' must be \"ready\" or \"draining\", not {other}"
            )))
        }
    };
    let cluster = match fields.get("clusterID") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(bad(format!("'clusterID' must be a string, not {other}"))),
    };
    Ok((status, cluster))
}

pub(super) async fn set_status(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<StatusCode, ApiError> {
    let (status, cluster) = parse_status_change(body)?;
    find(&state, &id, cluster.as_deref())?;
    state
        .nodes
        .set_status(&id, status)
        .map_err(|e| ApiError::NotFound(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(body: Value) -> String {
        match parse_status_change(body) {
            Err(ApiError::BadRequest(msg)) => msg,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn status_changes_are_checked_field_by_field() {
        assert!(matches!(
            parse_status_change(json!({"status": "draining"})),
            Ok((AdminStatus::Draining, None))
        ));
        assert!(matches!(
            parse_status_change(json!({"status": "ready", "clusterID": "c1"})),
            Ok((AdminStatus::Ready, Some(c))) if c == "c1"
        ));
        assert!(err(json!({"status": "standby"})).contains("'status'"));
        assert!(err(json!({"status": 3})).contains("'status'"));
        assert!(err(json!({})).contains("'status' is required"));
        assert!(err(json!({"status": "ready", "force": true})).contains("'force'"));
        assert!(err(json!({"status": "ready", "clusterID": 1})).contains("'clusterID'"));
        assert!(err(json!(["ready"])).contains("JSON object"));
    }

    #[test]
    fn event_queries_are_checked() {
        let q = events_query(None).expect("ok");
        assert_eq!((q.limit, q.offset, q.node_id, q.kind), (100, 0, None, None));
        let q = events_query(Some(
            "limit=5&offset=10&nodeID=n1&type=node.left&clusterID=c",
        ))
        .expect("ok");
        assert_eq!(
            (q.limit, q.offset, q.node_id.as_deref(), q.kind),
            (5, 10, Some("n1"), Some(RegistryEventKind::Left))
        );
        for (query, field) in [
            ("limit=0", "'limit'"),
            ("limit=1001", "'limit'"),
            ("limit=-1", "'limit'"),
            ("offset=x", "'offset'"),
            ("type=node.exploded", "'type'"),
        ] {
            match events_query(Some(query)) {
                Err(ApiError::BadRequest(msg)) => assert!(msg.contains(field), "{query}: {msg}"),
                other => panic!("{query}: expected a 400, got {other:?}"),
            }
        }
    }

    #[test]
    fn cluster_filter_reads_the_query() {
        assert_eq!(cluster_filter(None).expect("ok"), None);
        assert_eq!(
            cluster_filter(Some("x=1&clusterID=abc")).expect("ok"),
            Some("abc".into())
        );
        assert!(cluster_filter(Some("clusterID=%zz")).is_err());
    }
}
