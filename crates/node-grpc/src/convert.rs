//! Between the contract's types and the wire's. Decoding checks what the types check (ids,
//! template names, CIDRs, domain patterns, times) and fails with [`Invalid`], which the server
//! answers with `INVALID_ARGUMENT` and the client reports as an internal error of the node.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use paddock_domain::egress::DomainPattern;
use paddock_domain::{Cidr, EgressPolicy, Resources, SandboxId, TemplateName};
use paddock_node_contract as c;

use crate::proto as p;

/// A message that does not hold what its field says.
#[derive(Debug, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct Invalid {
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl ToString) -> Invalid {
    Invalid {
        field,
        reason: reason.to_string(),
    }
}

pub(crate) fn sandbox_id(raw: &str) -> Result<SandboxId, Invalid> {
    SandboxId::parse(raw).map_err(|e| invalid("sandbox id", e))
}

pub(crate) fn template_name(raw: &str) -> Result<TemplateName, Invalid> {
    TemplateName::parse(raw).map_err(|e| invalid("template name", e))
}

pub(crate) fn sandbox_ids(raw: &[String]) -> Result<Vec<SandboxId>, Invalid> {
    raw.iter().map(|id| sandbox_id(id)).collect()
}

pub(crate) fn ids_out(ids: &[SandboxId]) -> p::SandboxIds {
    p::SandboxIds {
        ids: ids.iter().map(|id| id.to_string()).collect(),
    }
}

pub(crate) fn micros(t: &DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn time(field: &'static str, us: i64) -> Result<DateTime<Utc>, Invalid> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| invalid(field, "time out of range"))
}

pub(crate) fn resources_out(r: &Resources) -> p::Resources {
    p::Resources {
        cpu_count: r.cpu_count,
        memory_mb: r.memory_mb,
        disk_mb: r.disk_mb,
        pids_max: r.pids_max,
    }
}

pub(crate) fn resources(r: Option<p::Resources>) -> Result<Resources, Invalid> {
    let r = r.ok_or_else(|| invalid("resources", "missing"))?;
    Ok(Resources {
        cpu_count: r.cpu_count,
        memory_mb: r.memory_mb,
        disk_mb: r.disk_mb,
        pids_max: r.pids_max,
    })
}

pub(crate) fn egress_out(e: &EgressPolicy) -> p::EgressPolicy {
    p::EgressPolicy {
        allow_internet_access: e.allow_internet_access,
        allow_out: e.allow_out.iter().map(Cidr::to_string).collect(),
        deny_out: e.deny_out.iter().map(Cidr::to_string).collect(),
        allow_domains: e
            .allow_domains
            .iter()
            .map(DomainPattern::to_string)
            .collect(),
    }
}

pub(crate) fn egress(e: Option<p::EgressPolicy>) -> Result<EgressPolicy, Invalid> {
    let e = e.ok_or_else(|| invalid("egress policy", "missing"))?;
    let cidrs = |field, list: Vec<String>| -> Result<Vec<Cidr>, Invalid> {
        list.iter()
            .map(|c| c.parse::<Cidr>().map_err(|err| invalid(field, err)))
            .collect()
    };
    Ok(EgressPolicy {
        allow_internet_access: e.allow_internet_access,
        allow_out: cidrs("allow_out", e.allow_out)?,
        deny_out: cidrs("deny_out", e.deny_out)?,
        allow_domains: e
            .allow_domains
            .iter()
            .map(|d| {
                d.parse::<DomainPattern>()
                    .map_err(|err| invalid("allow_domains", err))
            })
            .collect::<Result<_, _>>()?,
    })
}

pub(crate) fn create_out(r: &c::CreateRequest) -> p::CreateRequest {
    p::CreateRequest {
        id: r.id.to_string(),
        template: r.template.to_string(),
        env_vars: r.env_vars.clone(),
        access_token: r.access_token.clone(),
        resources: r.resources.as_ref().map(resources_out),
        network: Some(egress_out(&r.network)),
        start_cmd: r.start_cmd,
    }
}

pub(crate) fn create(r: p::CreateRequest) -> Result<c::CreateRequest, Invalid> {
    Ok(c::CreateRequest {
        id: sandbox_id(&r.id)?,
        template: template_name(&r.template)?,
        env_vars: r.env_vars,
        access_token: r.access_token,
        resources: match r.resources {
            Some(res) => Some(resources(Some(res))?),
            None => None,
        },
        network: egress(r.network)?,
        start_cmd: r.start_cmd,
    })
}

pub(crate) fn sandbox_out(s: &c::NodeSandbox) -> p::Sandbox {
    p::Sandbox {
        id: s.id.to_string(),
        template: s.template.to_string(),
        resources: Some(resources_out(&s.resources)),
    }
}

pub(crate) fn sandbox(s: p::Sandbox) -> Result<c::NodeSandbox, Invalid> {
    Ok(c::NodeSandbox {
        id: sandbox_id(&s.id)?,
        template: template_name(&s.template)?,
        resources: resources(s.resources)?,
    })
}

pub(crate) fn template_info_out(t: &c::TemplateInfo) -> p::TemplateInfo {
    p::TemplateInfo {
        name: t.name.to_string(),
        resources: Some(resources_out(&t.resources)),
    }
}

pub(crate) fn template_info(t: Option<p::TemplateInfo>) -> Result<c::TemplateInfo, Invalid> {
    let t = t.ok_or_else(|| invalid("template", "missing"))?;
    Ok(c::TemplateInfo {
        name: template_name(&t.name)?,
        resources: resources(t.resources)?,
    })
}

pub(crate) fn pool_stats_out(s: &c::PoolStats) -> p::PoolStatsReply {
    p::PoolStatsReply {
        pools: s
            .pools
            .iter()
            .map(|t| p::TemplatePoolStats {
                template: t.template.to_string(),
                ready: t.ready as u64,
                filling: t.filling as u64,
                size: t.size as u64,
            })
            .collect(),
        hits: s.hits,
        misses: s.misses,
        fill_failures: s.fill_failures,
        claimed: s.claimed as u64,
    }
}

fn count(field: &'static str, n: u64) -> Result<usize, Invalid> {
    usize::try_from(n).map_err(|e| invalid(field, e))
}

pub(crate) fn pool_stats(s: p::PoolStatsReply) -> Result<c::PoolStats, Invalid> {
    Ok(c::PoolStats {
        pools: s
            .pools
            .into_iter()
            .map(|t| {
                Ok(c::TemplatePoolStats {
                    template: template_name(&t.template)?,
                    ready: count("ready", t.ready)?,
                    filling: count("filling", t.filling)?,
                    size: count("size", t.size)?,
                })
            })
            .collect::<Result<_, Invalid>>()?,
        hits: s.hits,
        misses: s.misses,
        fill_failures: s.fill_failures,
        claimed: count("claimed", s.claimed)?,
    })
}

pub(crate) fn event_out(e: &c::NodeEvent) -> p::Event {
    use p::exited::Reason;
    match e {
        c::NodeEvent::Exited { id, reason } => {
            let reason = match reason {
                c::ExitReason::Exited => Reason::Exited,
                c::ExitReason::OutOfMemory => Reason::OutOfMemory,
                c::ExitReason::NodeLost => Reason::NodeLost,
            };
            p::Event {
                kind: Some(p::event::Kind::Exited(p::Exited {
                    id: id.to_string(),
                    reason: reason as i32,
                })),
            }
        }
    }
}

/// Why a sandbox ended; a reason this side does not know (a newer node) is
/// [`c::ExitReason::Exited`], as is the absent field of an older node.
fn exit_reason(raw: i32) -> c::ExitReason {
    use p::exited::Reason;
    match Reason::try_from(raw) {
        Ok(Reason::OutOfMemory) => c::ExitReason::OutOfMemory,
        Ok(Reason::NodeLost) => c::ExitReason::NodeLost,
        Ok(Reason::Exited) | Err(_) => c::ExitReason::Exited,
    }
}

/// `None` for an event kind this side does not know (a newer node): skipped.
pub(crate) fn event(e: p::Event) -> Result<Option<c::NodeEvent>, Invalid> {
    Ok(match e.kind {
        Some(p::event::Kind::Exited(x)) => Some(c::NodeEvent::Exited {
            id: sandbox_id(&x.id)?,
            reason: exit_reason(x.reason),
        }),
        None => None,
    })
}

pub(crate) fn status_out(s: Option<c::SandboxStatus>) -> p::StatusReply {
    use p::status_reply::State;
    let state = match s {
        None => State::Absent,
        Some(c::SandboxStatus::Running) => State::Running,
        Some(c::SandboxStatus::Paused(c::PauseMode::Memory)) => State::PausedMemory,
        Some(c::SandboxStatus::Paused(c::PauseMode::Disk)) => State::PausedDisk,
    };
    p::StatusReply {
        state: state as i32,
    }
}

pub(crate) fn status(s: p::StatusReply) -> Result<Option<c::SandboxStatus>, Invalid> {
    use p::status_reply::State;
    Ok(
        match State::try_from(s.state).map_err(|e| invalid("status", e))? {
            State::Absent => None,
            State::Running => Some(c::SandboxStatus::Running),
            State::PausedMemory => Some(c::SandboxStatus::Paused(c::PauseMode::Memory)),
            State::PausedDisk => Some(c::SandboxStatus::Paused(c::PauseMode::Disk)),
        },
    )
}

pub(crate) fn sample_out(m: &c::MetricSample) -> p::MetricSample {
    p::MetricSample {
        timestamp_us: micros(&m.timestamp),
        cpu_count: m.cpu_count,
        cpu_used_pct: m.cpu_used_pct,
        mem_used: m.mem_used,
        mem_total: m.mem_total,
        mem_cache: m.mem_cache,
        disk_used: m.disk_used,
        disk_total: m.disk_total,
    }
}

pub(crate) fn sample(m: p::MetricSample) -> Result<c::MetricSample, Invalid> {
    Ok(c::MetricSample {
        timestamp: time("sample time", m.timestamp_us)?,
        cpu_count: m.cpu_count,
        cpu_used_pct: m.cpu_used_pct,
        mem_used: m.mem_used,
        mem_total: m.mem_total,
        mem_cache: m.mem_cache,
        disk_used: m.disk_used,
        disk_total: m.disk_total,
    })
}

pub(crate) fn latest_out(m: &HashMap<SandboxId, c::MetricSample>) -> p::LatestMetricsReply {
    p::LatestMetricsReply {
        samples: m
            .iter()
            .map(|(id, s)| (id.to_string(), sample_out(s)))
            .collect(),
    }
}

pub(crate) fn latest(
    m: p::LatestMetricsReply,
) -> Result<HashMap<SandboxId, c::MetricSample>, Invalid> {
    m.samples
        .into_iter()
        .map(|(id, s)| Ok((sandbox_id(&id)?, sample(s)?)))
        .collect()
}

fn level(field: &'static str, raw: &str) -> Result<c::LogLevel, Invalid> {
    c::LogLevel::parse(raw).ok_or_else(|| invalid(field, format!("unknown level {raw:?}")))
}

pub(crate) fn log_out(e: &c::LogEntry) -> p::LogEntry {
    p::LogEntry {
        timestamp_us: micros(&e.timestamp),
        level: e.level.as_str().to_string(),
        message: e.message.clone(),
        fields: e.fields.clone().into_iter().collect(),
    }
}

pub(crate) fn log(e: p::LogEntry) -> Result<c::LogEntry, Invalid> {
    Ok(c::LogEntry {
        timestamp: time("log time", e.timestamp_us)?,
        level: level("log level", &e.level)?,
        message: e.message,
        fields: e.fields.into_iter().collect(),
    })
}

pub(crate) fn summary_out(t: &c::TemplateSummary) -> p::TemplateSummary {
    p::TemplateSummary {
        name: t.name.to_string(),
        resources: Some(resources_out(&t.resources)),
        created_at_us: micros(&t.created_at),
        layer_ids: t.layer_ids.clone(),
    }
}

pub(crate) fn summary(t: p::TemplateSummary) -> Result<c::TemplateSummary, Invalid> {
    Ok(c::TemplateSummary {
        name: template_name(&t.name)?,
        resources: resources(t.resources)?,
        created_at: time("created_at", t.created_at_us)?,
        layer_ids: t.layer_ids,
    })
}

pub(crate) fn build_request_out(r: &c::build::BuildRequest) -> Result<p::BuildRequest, Invalid> {
    Ok(p::BuildRequest {
        name: r.name.to_string(),
        recipe_json: serde_json::to_string(&r.recipe).map_err(|e| invalid("recipe", e))?,
        resources: Some(resources_out(&r.resources)),
        files_dir: r.files_dir.to_string_lossy().into_owned(),
        images_dir: r
            .images_dir
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned()),
    })
}

pub(crate) fn build_request(r: p::BuildRequest) -> Result<c::build::BuildRequest, Invalid> {
    Ok(c::build::BuildRequest {
        name: template_name(&r.name)?,
        recipe: serde_json::from_str(&r.recipe_json).map_err(|e| invalid("recipe", e))?,
        resources: resources(r.resources)?,
        files_dir: r.files_dir.into(),
        images_dir: r.images_dir.map(Into::into),
    })
}

pub(crate) fn build_log_out(l: &c::build::BuildLog) -> p::BuildLog {
    p::BuildLog {
        timestamp_us: micros(&l.timestamp),
        level: l.level.as_str().to_string(),
        step: l.step.clone(),
        message: l.message.clone(),
    }
}

pub(crate) fn build_log(l: p::BuildLog) -> Result<c::build::BuildLog, Invalid> {
    Ok(c::build::BuildLog {
        timestamp: time("build log time", l.timestamp_us)?,
        level: level("build log level", &l.level)?,
        step: l.step,
        message: l.message,
    })
}

pub(crate) fn built_out(b: &c::build::Built) -> p::Built {
    p::Built {
        template: Some(template_info_out(&b.template)),
        layer_ids: b.layer_ids.clone(),
        cached_steps: b.cached_steps as u64,
        built_steps: b.built_steps as u64,
    }
}

pub(crate) fn built(b: p::Built) -> Result<c::build::Built, Invalid> {
    Ok(c::build::Built {
        template: template_info(b.template)?,
        layer_ids: b.layer_ids,
        cached_steps: count("cached_steps", b.cached_steps)?,
        built_steps: count("built_steps", b.built_steps)?,
    })
}

pub(crate) fn manifest_out(m: &c::TemplateManifest) -> p::Manifest {
    p::Manifest {
        name: m.name.to_string(),
        meta_json: m.meta_json.clone(),
        layers: m
            .layers
            .iter()
            .map(|l| p::LayerRef {
                digest: l.digest.clone(),
                size: l.size,
            })
            .collect(),
    }
}

pub(crate) fn manifest(m: p::Manifest) -> Result<c::TemplateManifest, Invalid> {
    Ok(c::TemplateManifest {
        name: template_name(&m.name)?,
        meta_json: m.meta_json,
        layers: m
            .layers
            .into_iter()
            .map(|l| c::LayerRef {
                digest: l.digest,
                size: l.size,
            })
            .collect(),
    })
}

pub(crate) fn chunk_out(c: c::LayerChunk) -> p::LayerChunk {
    p::LayerChunk {
        digest: c.digest,
        data: c.data,
    }
}

pub(crate) fn chunk(c: p::LayerChunk) -> c::LayerChunk {
    c::LayerChunk {
        digest: c.digest,
        data: c.data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SubsecRound;

    #[test]
    fn a_create_request_survives_the_wire() {
        let req = c::CreateRequest {
            id: SandboxId::generate(),
            template: TemplateName::parse("base").expect("name"),
            env_vars: [("A".to_string(), "1".to_string())].into(),
            access_token: "tok".into(),
            resources: Some(Resources::default()),
            network: EgressPolicy {
                allow_internet_access: false,
                allow_out: vec!["10.0.0.0/8".parse().expect("cidr")],
                deny_out: vec!["0.0.0.0/0".parse().expect("cidr")],
                allow_domains: vec!["*.example.com".parse().expect("domain")],
            },
            start_cmd: true,
        };
        let back = create(create_out(&req)).expect("decode");
        assert_eq!(back.id, req.id);
        assert_eq!(back.network, req.network);
        assert_eq!(back.resources, req.resources);
        assert_eq!(back.env_vars, req.env_vars);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut wire = create_out(&c::CreateRequest {
            id: SandboxId::generate(),
            template: TemplateName::parse("base").expect("name"),
            env_vars: HashMap::new(),
            access_token: String::new(),
            resources: None,
            network: EgressPolicy::default(),
            start_cmd: false,
        });
        wire.network.as_mut().expect("policy").deny_out = vec!["not a cidr".into()];
        let err = create(wire.clone()).expect_err("bad cidr");
        assert_eq!(err.field, "deny_out");
        wire.id = "../etc".into();
        assert_eq!(create(wire).expect_err("bad id").field, "sandbox id");
    }

    #[test]
    fn statuses_and_times_round_trip() {
        for s in [
            None,
            Some(c::SandboxStatus::Running),
            Some(c::SandboxStatus::Paused(c::PauseMode::Memory)),
            Some(c::SandboxStatus::Paused(c::PauseMode::Disk)),
        ] {
            assert_eq!(status(status_out(s)).expect("status"), s);
        }
        let now = Utc::now();
        assert_eq!(time("t", micros(&now)).expect("time"), now.trunc_subsecs(6));
        assert!(time("t", i64::MAX).is_err());
    }

    #[test]
    fn exit_reasons_cross_the_wire() {
        let id = SandboxId::generate();
        for reason in c::ExitReason::ALL {
            let e = c::NodeEvent::exited(id.clone(), reason);
            assert_eq!(event(event_out(&e)).expect("event"), Some(e));
        }
        // An older node sends no reason, a newer one may send one this side does not know.
        for raw in [0, 99] {
            let wire = p::Event {
                kind: Some(p::event::Kind::Exited(p::Exited {
                    id: id.to_string(),
                    reason: raw,
                })),
            };
            assert_eq!(
                event(wire).expect("event"),
                Some(c::NodeEvent::exited(id.clone(), c::ExitReason::Exited))
            );
        }
    }
}
