//! `GET /metrics`: the node's gauges and counters in the Prometheus text format (version
//! 0.0.4), for an operator's scraper. Needs an API key (`X-API-Key`, as every other endpoint);
//! a warm pool is shown by template name only to a team that may start that template (the
//! public ones and its own); the others count in the unlabelled totals.
//!
//! Series:
//! - `paddock_sandboxes_running`: sandboxes live on the node (warm ones not included);
//! - `paddock_creates_in_flight`: creates admitted and not finished;
//! - `paddock_warm_pool_ready{template}`, `paddock_warm_pool_filling{template}`,
//!   `paddock_warm_pool_size{template}`: one template's pool;
//! - `paddock_warm_pools_ready`, `paddock_warm_pools_filling`, `paddock_warm_pools_claimed`:
//!   all pools together;
//! - `paddock_warm_pool_hits_total`, `paddock_warm_pool_misses_total`,
//!   `paddock_warm_pool_fill_failures_total`: counters since the server started;
//! - `paddock_team_sandboxes{state,template}`: the calling team's sandboxes that are not over;
//! - the cluster's nodes (`paddock api` only, and only with `X-Admin-Token` as well, as
//!   `GET /nodes`): `paddock_node_up{node,status}` and each node's capacity and use from its
//!   latest report (`paddock_node_sandboxes{node}`, `paddock_node_cpu_load`, ...);
//! - this process's histograms and counters ([`paddock_telemetry`]): request durations by
//!   route (`paddock_http_request_duration_seconds`, the REST API's and, in `serve`, the
//!   proxy's), create phases (`paddock_create_phase_seconds`) and create outcomes
//!   (`paddock_creates_total`), store calls (`paddock_store_seconds`).

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use paddock_domain::SandboxState;

use crate::auth::Team;
use crate::error::ApiError;
use crate::AppState;
use crate::LifecycleError;

/// Reads one value of a template's pool.
type PoolValue = fn(&paddock_node_contract::TemplatePoolStats) -> usize;

/// The exposition format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
pub(super) async fn metrics(
    State(state): State<AppState>,
    team: Team,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let core = &state.core;
    let pools = core.node.pool_stats().await.map_err(LifecycleError::from)?;
    let running = core.node.live().await.map_err(LifecycleError::from)?.len();
    let mut visible = Vec::new();
    for pool in &pools.pools {
        let owner = core.template_owner(&pool.template).await?;
        let shown = match owner {
            crate::lifecycle::build::Owner::Hidden => false,
            o => o.team().is_none_or(|t| *t == team.0),
        };
        if shown {
            visible.push(pool);
        }
    }
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: usize| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge(
        "paddock_sandboxes_running",
        "Sandboxes live on the node (warm pool sandboxes not included).",
        running,
    );
    gauge(
        "paddock_creates_in_flight",
        "Sandbox creates admitted and not finished.",
        core.admission.in_flight_total(),
    );
    gauge(
        "paddock_warm_pools_ready",
        "Warm sandboxes ready, all pools.",
        pools.pools.iter().map(|p| p.ready).sum(),
    );
    gauge(
        "paddock_warm_pools_filling",
        "Warm sandboxes being started, all pools.",
        pools.pools.iter().map(|p| p.filling).sum(),
    );
    gauge(
        "paddock_warm_pools_claimed",
        "Warm sandboxes claimed by a create and not yet handed over.",
        pools.claimed,
    );
    let series: [(&str, &str, PoolValue); 3] = [
        (
            "paddock_warm_pool_ready",
            "Warm sandboxes ready in a template's pool.",
            |p| p.ready,
        ),
        (
            "paddock_warm_pool_filling",
            "Warm sandboxes being started for a template's pool.",
            |p| p.filling,
        ),
        (
            "paddock_warm_pool_size",
            "Target size of a template's pool.",
            |p| p.size,
        ),
    ];
    for (name, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for pool in &visible {
            let _ = writeln!(
                out,
                "{name}{{template=\"{}\"}} {}",
                label(pool.template.as_str()),
                value(pool)
            );
        }
    }
    let counters = [
        (
            "paddock_warm_pool_hits_total",
            "Creates served by a warm sandbox.",
            pools.hits,
        ),
        (
            "paddock_warm_pool_misses_total",
            "Creates that could have used a warm sandbox but found none ready.",
            pools.misses,
        ),
        (
            "paddock_warm_pool_fill_failures_total",
            "Warm sandboxes that failed to start.",
            pools.fill_failures,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    // The caller's team's sandboxes that are not over, by state and template.
    let live = core
        .store
        .sandboxes_in_states(&[
            SandboxState::Creating,
            SandboxState::Running,
            SandboxState::Paused,
            SandboxState::Stopping,
        ])
        .await
        .map_err(LifecycleError::from)?;
    let mut by_state: std::collections::BTreeMap<(&'static str, String), usize> =
        Default::default();
    for rec in live.iter().filter(|r| r.team_id == team.0) {
        let key = (rec.state.as_str(), rec.template.as_str().to_string());
        *by_state.entry(key).or_default() += 1;
    }
    let name = "paddock_team_sandboxes";
    let _ = writeln!(
        out,
        "# HELP {name} The calling team's sandboxes that are not over, by state and template.\n# TYPE {name} gauge"
    );
    for ((state_name, template), n) in by_state {
        let _ = writeln!(
            out,
            "{name}{{state=\"{state_name}\",template=\"{}\"}} {n}",
            label(&template)
        );
    }
    // The nodes (their ids, load and allocations) are the operator's to see, as `GET /nodes`:
    // a team's key alone gets the series' descriptions and no samples.
    let nodes = if crate::auth::presents_admin_token(&state, &headers) {
        state.nodes.list()
    } else {
        Vec::new()
    };
    write_nodes(&mut out, &nodes);
    out.push_str(&paddock_telemetry::metrics::render(
        &paddock_telemetry::all(),
    ));
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], out).into_response())
}

/// Reads one value of a node's latest report.
type NodeValue = fn(&crate::cluster::NodeReport) -> f64;

/// The cluster's nodes (none in `serve`, whose one node is in-process): `paddock_node_up`
/// with the node's status as a label, then capacity and use from its latest report (a node
/// that has not reported yet has only `paddock_node_up`).
fn write_nodes(out: &mut String, nodes: &[crate::cluster::NodeInfo]) {
    let name = "paddock_node_up";
    let _ = writeln!(
        out,
        "# HELP {name} Nodes registered with the control plane, by status (1 per node).\n# TYPE {name} gauge"
    );
    for node in nodes {
        let _ = writeln!(
            out,
            "{name}{{node=\"{}\",status=\"{}\"}} 1",
            label(node.id()),
            node.status.as_str()
        );
    }
    const MIB: f64 = 1024.0 * 1024.0;
    let series: [(&str, &str, NodeValue); 9] = [
        (
            "paddock_node_sandboxes",
            "Sandboxes a node holds (running or paused in memory).",
            |r| r.sandbox_count.into(),
        ),
        (
            "paddock_node_sandboxes_starting",
            "Creates a node is working on.",
            |r| r.starting_count.into(),
        ),
        ("paddock_node_cpus", "CPUs of a node's host.", |r| {
            r.cpu_count.into()
        }),
        (
            "paddock_node_cpu_load",
            "CPU busy fraction of a node's host (0 to 1).",
            |r| r.cpu_load,
        ),
        (
            "paddock_node_memory_used_bytes",
            "Memory of a node's host in use.",
            |r| r.memory_used_bytes as f64,
        ),
        (
            "paddock_node_memory_total_bytes",
            "Memory of a node's host.",
            |r| r.memory_total_bytes as f64,
        ),
        (
            "paddock_node_allocated_cpus",
            "vCPUs given to a node's sandboxes.",
            |r| r.allocated.cpus.into(),
        ),
        (
            "paddock_node_allocated_memory_bytes",
            "Memory given to a node's sandboxes.",
            |r| r.allocated.memory_mb as f64 * MIB,
        ),
        (
            "paddock_node_allocated_disk_bytes",
            "Disk given to a node's sandboxes.",
            |r| r.allocated.disk_mb as f64 * MIB,
        ),
    ];
    for (name, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for node in nodes {
            if let Some(report) = &node.last_report {
                let _ = writeln!(
                    out,
                    "{name}{{node=\"{}\"}} {}",
                    label(node.id()),
                    value(report)
                );
            }
        }
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::label;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("base"), "base");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
