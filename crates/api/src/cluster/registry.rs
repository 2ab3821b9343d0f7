//! [`NodeRegistry`]: the table of the cluster's nodes, their status and its changes.
//!
//! A node's status is derived from two things kept apart:
//! - its health: `connecting` from (re)registration until its first report, healthy while it
//!   reports, `unhealthy` once its last report (or its registration) is older than
//!   [`HEALTH_TIMEOUT`] at a [`NodeRegistry::tick`], healthy again at its next report;
//! - its [`AdminStatus`] (`ready` or `draining`), which it shows while healthy. Draining
//!   survives health changes, re-registration, and the node leaving and joining again.
//!
//! Every change of the shown status records `status_changed_at` and publishes a
//! [`RegistryEvent`]; joins and leaves do too.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, TimeDelta, Utc};
use paddock_placement::NodeStatus;
use tokio::sync::{broadcast, watch};

use super::node::{AdminStatus, NodeInfo, NodeRegistration, NodeReport};

/// A node whose last report is older than this is `unhealthy`.
pub const HEALTH_TIMEOUT: TimeDelta = TimeDelta::seconds(10);

/// How often [`NodeRegistry::run_health`] sweeps.
pub const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// How many registry events a subscriber may fall behind before it misses some.
const EVENT_CAPACITY: usize = 1024;

/// Longest node id accepted.
const MAX_ID_LEN: usize = 128;

/// Ids no node may have: `GET /nodes/events` is the node event history, not a node.
pub const RESERVED_IDS: [&str; 1] = ["events"];

/// The registry's source of the current time (the system clock unless a test injects one).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Why a registry call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No node with this id is registered.
    #[error("node '{0}' not found")]
    UnknownNode(String),
    /// The id is empty, too long, or has characters other than `[A-Za-z0-9._-]`.
    #[error("invalid node id {0:?}: use 1 to 128 of A-Z a-z 0-9 . _ -")]
    InvalidId(String),
    /// The id is one of the admin routes' own path segments ([`RESERVED_IDS`]).
    #[error("node id {0:?} is reserved: /nodes/{0} is another admin route")]
    ReservedId(String),
}

/// What happened to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistryEventKind {
    /// It registered (first join or rejoin).
    Joined,
    /// It left the cluster (its connection ended for good); it is no longer listed.
    Left,
    /// It stopped reporting and is now `unhealthy`.
    Unhealthy,
    /// Its status changed for another reason (first report, reports resumed, admin change).
    StatusChanged,
}

impl RegistryEventKind {
    /// Every kind.
    pub const ALL: [RegistryEventKind; 4] = [
        RegistryEventKind::Joined,
        RegistryEventKind::Left,
        RegistryEventKind::Unhealthy,
        RegistryEventKind::StatusChanged,
    ];

    /// The kind named `name` ([`RegistryEventKind::as_str`]'s output).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The event's name (`node.joined`, `node.left`, `node.unhealthy`, `node.status_changed`).
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryEventKind::Joined => "node.joined",
            RegistryEventKind::Left => "node.left",
            RegistryEventKind::Unhealthy => "node.unhealthy",
            RegistryEventKind::StatusChanged => "node.status_changed",
        }
    }
}

impl std::fmt::Display for RegistryEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change in the registry, as published to [`NodeRegistry::subscribe`]rs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEvent {
    /// What happened.
    pub kind: RegistryEventKind,
    /// The node.
    pub node_id: String,
    /// Its status after the change (for `node.left`: the status it had).
    pub status: NodeStatus,
    /// Its status before the change (`None` for a node that was not registered).
    pub previous: Option<NodeStatus>,
    /// When it happened.
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Connecting,
    Healthy,
    Unhealthy,
}

#[derive(Debug)]
struct Entry {
    registration: NodeRegistration,
    admin: AdminStatus,
    health: Health,
    status: NodeStatus,
    status_changed_at: DateTime<Utc>,
    registered_at: DateTime<Utc>,
    last_report: Option<NodeReport>,
}

impl Entry {
    fn derived(&self) -> NodeStatus {
        match self.health {
            Health::Connecting => NodeStatus::Connecting,
            Health::Unhealthy => NodeStatus::Unhealthy,
            Health::Healthy => self.admin.into(),
        }
    }

    /// Brings the shown status in line with health and admin state; returns the previous
    /// status if it changed.
    fn settle(&mut self, now: DateTime<Utc>) -> Option<NodeStatus> {
        let next = self.derived();
        (next != self.status).then(|| {
            let previous = self.status;
            self.status = next;
            self.status_changed_at = now;
            previous
        })
    }

    fn last_seen(&self) -> DateTime<Utc> {
        self.last_report
            .as_ref()
            .map_or(self.registered_at, |r| r.at.max(self.registered_at))
    }

    fn info(&self) -> NodeInfo {
        NodeInfo {
            registration: self.registration.clone(),
            status: self.status,
            status_changed_at: self.status_changed_at,
            admin_status: self.admin,
            registered_at: self.registered_at,
            last_report: self.last_report.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    nodes: BTreeMap<String, Entry>,
    /// Nodes that left while draining: they come back draining.
    departed_draining: HashSet<String>,
}

struct Shared {
    table: RwLock<Table>,
    events: broadcast::Sender<RegistryEvent>,
    clock: Clock,
}

/// The cluster's nodes. Cheap to clone (clones share the table); every method takes `&self`
/// and none blocks on I/O, so it may be called from async code and from the gRPC service's
/// tasks alike.
///
/// Lifecycle of a node: [`NodeRegistry::register`] (`connecting`) → [`NodeRegistry::report`]
/// every second or two (`ready` or `draining`) → [`NodeRegistry::mark_gone`] when it leaves.
/// [`NodeRegistry::tick`] (run by [`NodeRegistry::run_health`]) turns silent nodes
/// `unhealthy`; [`NodeRegistry::set_status`] is the admin's drain switch.
#[derive(Clone)]
pub struct NodeRegistry {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NodeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRegistry")
            .field("nodes", &self.read().nodes.len())
            .finish_non_exhaustive()
    }
}

impl Default for NodeRegistry {
    fn default() -> Self {
        Self::new()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl NodeRegistry {
    /// An empty registry on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(Utc::now))
    }

    /// An empty registry whose registrations and admin changes are timed by `clock` (reports
    /// carry their own time, [`NodeRegistry::tick`] takes it as an argument).
    pub fn with_clock(clock: Clock) -> Self {
        NodeRegistry {
            shared: Arc::new(Shared {
                table: RwLock::new(Table::default()),
                events: broadcast::channel(EVENT_CAPACITY).0,
                clock,
            }),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        (self.shared.clock)()
    }

    // A panic while the lock is held cannot leave the table half-updated in a way that matters
    // more than losing it: every update is a few field assignments. Keep serving.
    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.shared.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.shared.table.write().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(
        &self,
        kind: RegistryEventKind,
        node_id: &str,
        status: NodeStatus,
        previous: Option<NodeStatus>,
        at: DateTime<Utc>,
    ) {
        tracing::info!(node_id, event = %kind, status = %status, previous = ?previous.map(NodeStatus::as_str), "node registry");
        // No subscriber is not an error.
        let _ = self.shared.events.send(RegistryEvent {
            kind,
            node_id: node_id.to_string(),
            status,
            previous,
            at,
        });
    }

    /// Adds a node, or replaces the registration of a node with the same id (a rejoin: a
    /// reconnect or a restart). The node is `connecting` until its first report. Its admin
    /// state is kept across a rejoin (a draining node stays draining, also if it left in
    /// between); a new node is `ready`. Publishes `node.joined`.
    pub fn register(&self, registration: NodeRegistration) -> Result<NodeInfo, RegistryError> {
        if !valid_id(&registration.id) {
            return Err(RegistryError::InvalidId(registration.id));
        }
        if RESERVED_IDS.contains(&registration.id.as_str()) {
            return Err(RegistryError::ReservedId(registration.id));
        }
        let now = self.now();
        let mut table = self.write();
        let id = registration.id.clone();
        let came_back_draining = table.departed_draining.remove(&id);
        let (info, previous) = match table.nodes.get_mut(&id) {
            Some(entry) => {
                let previous = entry.status;
                entry.registration = registration;
                entry.registered_at = now;
                entry.last_report = None;
                entry.health = Health::Connecting;
                entry.settle(now);
                (entry.info(), Some(previous))
            }
            None => {
                let admin = if came_back_draining {
                    AdminStatus::Draining
                } else {
                    AdminStatus::Ready
                };
                let entry = Entry {
                    registration,
                    admin,
                    health: Health::Connecting,
                    status: NodeStatus::Connecting,
                    status_changed_at: now,
                    registered_at: now,
                    last_report: None,
                };
                let info = entry.info();
                table.nodes.insert(id.clone(), entry);
                (info, None)
            }
        };
        self.publish(RegistryEventKind::Joined, &id, info.status, previous, now);
        Ok(info)
    }

    /// Records a report of node `id`. A connecting or unhealthy node becomes healthy and shows
    /// its admin state again. Returns the status it shows now.
    pub fn report(&self, id: &str, report: NodeReport) -> Result<NodeStatus, RegistryError> {
        let mut table = self.write();
        let entry = table
            .nodes
            .get_mut(id)
            .ok_or_else(|| RegistryError::UnknownNode(id.to_string()))?;
        let at = report.at;
        entry.last_report = Some(report);
        entry.health = Health::Healthy;
        let changed = entry.settle(at);
        let status = entry.status;
        if let Some(previous) = changed {
            self.publish(
                RegistryEventKind::StatusChanged,
                id,
                status,
                Some(previous),
                at,
            );
        }
        Ok(status)
    }

    /// Sets the admin state of node `id` (`ready` or `draining`). A healthy node shows it at
    /// once; a connecting or unhealthy one when its reports resume. Returns the node.
    pub fn set_status(&self, id: &str, status: AdminStatus) -> Result<NodeInfo, RegistryError> {
        let now = self.now();
        let mut table = self.write();
        let entry = table
            .nodes
            .get_mut(id)
            .ok_or_else(|| RegistryError::UnknownNode(id.to_string()))?;
        entry.admin = status;
        if let Some(previous) = entry.settle(now) {
            self.publish(
                RegistryEventKind::StatusChanged,
                id,
                entry.status,
                Some(previous),
                now,
            );
        }
        Ok(entry.info())
    }

    /// The status node `id` shows, if it is registered.
    pub fn status(&self, id: &str) -> Option<NodeStatus> {
        self.read().nodes.get(id).map(|e| e.status)
    }

    /// A snapshot of node `id`, if it is registered.
    pub fn get(&self, id: &str) -> Option<NodeInfo> {
        self.read().nodes.get(id).map(Entry::info)
    }

    /// Snapshots of every registered node, by id.
    pub fn list(&self) -> Vec<NodeInfo> {
        self.read().nodes.values().map(Entry::info).collect()
    }

    /// Removes node `id` (it left: its connection ended for good, or it was shut down). A node
    /// that was draining is remembered as such and comes back draining. Publishes `node.left`.
    /// Returns its last snapshot.
    pub fn mark_gone(&self, id: &str) -> Result<NodeInfo, RegistryError> {
        let now = self.now();
        let mut table = self.write();
        let entry = table
            .nodes
            .remove(id)
            .ok_or_else(|| RegistryError::UnknownNode(id.to_string()))?;
        if entry.admin == AdminStatus::Draining {
            table.departed_draining.insert(id.to_string());
        }
        self.publish(RegistryEventKind::Left, id, entry.status, None, now);
        Ok(entry.info())
    }

    /// The health sweep at time `now`: every node not yet `unhealthy` whose last report (or,
    /// before its first report, its registration) is older than [`HEALTH_TIMEOUT`] becomes
    /// `unhealthy` (publishing `node.unhealthy`). Returns the ids of the nodes it changed.
    pub fn tick(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut table = self.write();
        let mut changed = Vec::new();
        for (id, entry) in table.nodes.iter_mut() {
            if entry.health == Health::Unhealthy || now - entry.last_seen() <= HEALTH_TIMEOUT {
                continue;
            }
            entry.health = Health::Unhealthy;
            if let Some(previous) = entry.settle(now) {
                self.publish(
                    RegistryEventKind::Unhealthy,
                    id,
                    entry.status,
                    Some(previous),
                    now,
                );
                changed.push(id.clone());
            }
        }
        changed
    }

    /// Runs [`NodeRegistry::tick`] every [`HEALTH_INTERVAL`] on the registry's clock until
    /// `stop` turns `true` (or its sender is dropped).
    pub async fn run_health(&self, mut stop: watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(HEALTH_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    self.tick(self.now());
                }
                _ = stop.wait_for(|stopped| *stopped) => break,
            }
        }
    }

    /// Joins the stream of registry changes: every event published after this call.
    pub fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.shared.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::cluster::{Capacity, MachineInfo};

    /// A clock the test moves by hand.
    struct TestClock(Mutex<DateTime<Utc>>);

    impl TestClock {
        fn advance(&self, by: TimeDelta) -> DateTime<Utc> {
            let mut t = self.0.lock().expect("clock");
            *t += by;
            *t
        }
        fn now(&self) -> DateTime<Utc> {
            *self.0.lock().expect("clock")
        }
    }

    fn registry() -> (NodeRegistry, Arc<TestClock>) {
        let start: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().expect("time");
        let clock = Arc::new(TestClock(Mutex::new(start)));
        let c = Arc::clone(&clock);
        (NodeRegistry::with_clock(Arc::new(move || c.now())), clock)
    }

    fn registration(id: &str, instance: &str) -> NodeRegistration {
        NodeRegistration {
            id: id.into(),
            service_instance_id: instance.into(),
            cluster_id: "00000000-0000-0000-0000-000000000000".into(),
            version: "0.1.0".into(),
            commit: "abc123".into(),
            machine_info: MachineInfo {
                cpu_family: "6".into(),
                cpu_model: "85".into(),
                cpu_model_name: "Xeon".into(),
                cpu_architecture: "x86_64".into(),
            },
            capacity: Capacity {
                cpus: 8,
                memory_mb: 16384,
                disk_mb: 100_000,
                max_sandboxes: 50,
            },
            labels: BTreeMap::from([("zone".into(), "a".into())]),
        }
    }

    fn report_at(at: DateTime<Utc>) -> NodeReport {
        NodeReport {
            sandbox_count: 2,
            sandboxes: vec!["sb1".into(), "sb2".into()],
            at,
            ..NodeReport::default()
        }
    }

    fn drain(rx: &mut broadcast::Receiver<RegistryEvent>) -> Vec<(RegistryEventKind, NodeStatus)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| (e.kind, e.status))
            .collect()
    }

    #[test]
    fn joins_connecting_then_ready_on_first_report() {
        let (reg, clock) = registry();
        let mut rx = reg.subscribe();
        let info = reg.register(registration("n1", "i1")).expect("register");
        assert_eq!(info.status, NodeStatus::Connecting);
        assert_eq!(info.status_changed_at, clock.now());
        assert_eq!(reg.status("n1"), Some(NodeStatus::Connecting));

        let t = clock.advance(TimeDelta::seconds(1));
        assert_eq!(reg.report("n1", report_at(t)), Ok(NodeStatus::Ready));
        let info = reg.get("n1").expect("known");
        assert_eq!(info.status_changed_at, t);
        assert_eq!(info.sandboxes(), ["sb1", "sb2"]);
        assert_eq!(info.last_seen(), t);
        // A second report changes nothing about the status or its time.
        let t2 = clock.advance(TimeDelta::seconds(1));
        reg.report("n1", report_at(t2)).expect("report");
        assert_eq!(reg.get("n1").expect("known").status_changed_at, t);
        assert_eq!(
            drain(&mut rx),
            [
                (RegistryEventKind::Joined, NodeStatus::Connecting),
                (RegistryEventKind::StatusChanged, NodeStatus::Ready),
            ]
        );
    }

    #[test]
    fn silent_for_ten_seconds_is_unhealthy_and_a_report_heals() {
        let (reg, clock) = registry();
        reg.register(registration("n1", "i1")).expect("register");
        let last = clock.advance(TimeDelta::seconds(1));
        reg.report("n1", report_at(last)).expect("report");
        let mut rx = reg.subscribe();

        // Exactly 10 s is not older than 10 s.
        assert!(reg.tick(last + HEALTH_TIMEOUT).is_empty());
        assert_eq!(reg.status("n1"), Some(NodeStatus::Ready));
        let late = last + HEALTH_TIMEOUT + TimeDelta::milliseconds(100);
        assert_eq!(reg.tick(late), ["n1"]);
        let info = reg.get("n1").expect("known");
        assert_eq!(info.status, NodeStatus::Unhealthy);
        assert_eq!(info.status_changed_at, late);
        // Sweeping again keeps the time it first became unhealthy.
        assert!(reg.tick(late + TimeDelta::seconds(5)).is_empty());
        assert_eq!(reg.get("n1").expect("known").status_changed_at, late);

        let back = late + TimeDelta::seconds(6);
        assert_eq!(reg.report("n1", report_at(back)), Ok(NodeStatus::Ready));
        assert_eq!(reg.get("n1").expect("known").status_changed_at, back);
        assert!(reg.tick(back + TimeDelta::seconds(9)).is_empty());
        assert_eq!(
            drain(&mut rx),
            [
                (RegistryEventKind::Unhealthy, NodeStatus::Unhealthy),
                (RegistryEventKind::StatusChanged, NodeStatus::Ready),
            ]
        );
    }

    #[test]
    fn a_node_that_never_reports_turns_unhealthy() {
        let (reg, clock) = registry();
        reg.register(registration("n1", "i1")).expect("register");
        assert_eq!(reg.tick(clock.advance(TimeDelta::seconds(11))), ["n1"]);
        assert_eq!(reg.status("n1"), Some(NodeStatus::Unhealthy));
    }

    #[test]
    fn draining_survives_health_changes_and_rejoins() {
        let (reg, clock) = registry();
        reg.register(registration("n1", "i1")).expect("register");
        reg.report("n1", report_at(clock.now())).expect("report");
        let t = clock.advance(TimeDelta::seconds(1));
        let info = reg.set_status("n1", AdminStatus::Draining).expect("drain");
        assert_eq!(info.status, NodeStatus::Draining);
        assert_eq!(info.status_changed_at, t);
        assert_eq!(info.admin_status, AdminStatus::Draining);

        // Unhealthy wins while silent; draining comes back with the reports.
        reg.tick(t + TimeDelta::seconds(11));
        assert_eq!(reg.status("n1"), Some(NodeStatus::Unhealthy));
        reg.report("n1", report_at(t + TimeDelta::seconds(12)))
            .expect("report");
        assert_eq!(reg.status("n1"), Some(NodeStatus::Draining));

        // A rejoin (restart: new instance id) is connecting, then draining again.
        clock.advance(TimeDelta::seconds(20));
        let info = reg.register(registration("n1", "i2")).expect("rejoin");
        assert_eq!(info.status, NodeStatus::Connecting);
        assert_eq!(info.registration.service_instance_id, "i2");
        assert_eq!(info.last_report, None);
        assert_eq!(
            reg.report("n1", report_at(clock.now())),
            Ok(NodeStatus::Draining)
        );

        // Leaving and joining again keeps it draining too; a new node starts ready.
        reg.mark_gone("n1").expect("leave");
        assert_eq!(reg.status("n1"), None);
        reg.register(registration("n1", "i3")).expect("back");
        reg.register(registration("n2", "j1")).expect("new");
        assert_eq!(
            reg.report("n1", report_at(clock.now())),
            Ok(NodeStatus::Draining)
        );
        assert_eq!(
            reg.report("n2", report_at(clock.now())),
            Ok(NodeStatus::Ready)
        );

        // Set ready while unhealthy: shown when reports resume.
        reg.tick(clock.advance(TimeDelta::seconds(11)));
        let info = reg.set_status("n1", AdminStatus::Ready).expect("undrain");
        assert_eq!(info.status, NodeStatus::Unhealthy);
        assert_eq!(
            reg.report("n1", report_at(clock.now())),
            Ok(NodeStatus::Ready)
        );
    }

    #[test]
    fn unknown_nodes_and_bad_ids_are_errors() {
        let (reg, clock) = registry();
        let unknown = || RegistryError::UnknownNode("ghost".into());
        assert_eq!(
            reg.set_status("ghost", AdminStatus::Draining),
            Err(unknown())
        );
        assert_eq!(reg.report("ghost", report_at(clock.now())), Err(unknown()));
        assert_eq!(reg.mark_gone("ghost"), Err(unknown()));
        assert_eq!(reg.get("ghost"), None);
        for bad in ["", "a b", "n/1", &"x".repeat(129)] {
            assert!(
                matches!(
                    reg.register(registration(bad, "i")),
                    Err(RegistryError::InvalidId(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            reg.register(registration("events", "i")),
            Err(RegistryError::ReservedId("events".into()))
        );
        assert!(reg.list().is_empty());
    }

    #[test]
    fn list_is_sorted_and_leaving_publishes() {
        let (reg, _clock) = registry();
        for id in ["n3", "n1", "n2"] {
            reg.register(registration(id, "i")).expect("register");
        }
        let ids: Vec<String> = reg.list().iter().map(|n| n.id().to_string()).collect();
        assert_eq!(ids, ["n1", "n2", "n3"]);
        let mut rx = reg.subscribe();
        let gone = reg.mark_gone("n2").expect("leave");
        assert_eq!(gone.id(), "n2");
        assert_eq!(reg.list().len(), 2);
        assert_eq!(
            drain(&mut rx),
            [(RegistryEventKind::Left, NodeStatus::Connecting)]
        );
        assert_eq!(RegistryEventKind::Left.as_str(), "node.left");
        assert_eq!(RegistryEventKind::Joined.to_string(), "node.joined");
        assert_eq!(RegistryEventKind::Unhealthy.as_str(), "node.unhealthy");
        for kind in RegistryEventKind::ALL {
            assert_eq!(RegistryEventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(RegistryEventKind::parse("node.exploded"), None);
    }

    #[tokio::test]
    async fn run_health_sweeps_until_stopped() {
        let (reg, clock) = registry();
        reg.register(registration("n1", "i1")).expect("register");
        let mut rx = reg.subscribe();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn({
            let reg = reg.clone();
            async move { reg.run_health(stop_rx).await }
        });
        clock.advance(TimeDelta::seconds(11));
        let event = tokio::time::timeout(HEALTH_INTERVAL * 4, rx.recv())
            .await
            .expect("swept in time")
            .expect("event");
        assert_eq!(event.kind, RegistryEventKind::Unhealthy);
        assert_eq!(event.previous, Some(NodeStatus::Connecting));
        assert_eq!(reg.status("n1"), Some(NodeStatus::Unhealthy));
        stop.send_replace(true);
        tokio::time::timeout(HEALTH_INTERVAL * 4, task)
            .await
            .expect("stops")
            .expect("no panic");
    }
}
