//! Admission control of creates: how many sandbox creates may be in flight at once on the node
//! the control plane drives, and per team. A create (a fork's child, a start from disk) takes
//! an [`AdmissionPermit`] with a synchronous [`Admission::try_admit`] before any node work; over
//! a limit it is refused at once with [`Rejected`] (429 with `Retry-After`). Admitted creates
//! may wait in the node's start queue (the node starts a few at a time); these limits bound
//! that queue, so a burst waits its turn up to them and is refused beyond. The
//! permit gives its slots back when it is dropped: when the create's task ends, however it
//! ends (success, failure, panic), or when the create never started.
//!
//! Not here: how many sandboxes the node runs at once (`max_sandboxes`); the node checks that
//! itself, so a remote node enforces its own capacity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::store::TeamId;

use super::snapshot::MAX_FORK_COUNT;

/// Limits on creates in flight. Both must be at least 1 (0 refuses every create).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Creates in flight on the node, all teams together.
    pub node: usize,
    /// Creates in flight for one team.
    pub per_team: usize,
}

impl AdmissionLimits {
    /// Default node limit per CPU. Admitted creates do not all start at once: the node starts
    /// a few per CPU at a time and queues the rest in order (a warm sandbox's hand-over does
    /// not queue), so this bounds the queue, not the parallelism. 64 per CPU lets a burst of
    /// 50 creates of one team on a 2-CPU node wait its turn instead of being refused.
    pub const NODE_PER_CPU: usize = 64;
    /// Smallest default node limit.
    pub const NODE_FLOOR: usize = 128;

    /// The defaults for a machine with `cpus` CPUs: `max(64 × cpus, 128)` on the node, and
    /// [`AdmissionLimits::per_team_default`] of that per team.
    pub fn for_cpus(cpus: usize) -> Self {
        Self::with_node(
            cpus.saturating_mul(Self::NODE_PER_CPU)
                .max(Self::NODE_FLOOR),
        )
    }

    /// A node limit with the default per-team limit for it.
    pub fn with_node(node: usize) -> Self {
        AdmissionLimits {
            node,
            per_team: Self::per_team_default(node),
        }
    }

    /// The default per-team limit under a node limit: half of it, so one team cannot take
    /// the whole node, but at least a whole fork (20 children) when the node allows that.
    pub fn per_team_default(node: usize) -> usize {
        (node / 2).max((MAX_FORK_COUNT as usize).min(node)).max(1)
    }
}

impl Default for AdmissionLimits {
    /// [`AdmissionLimits::for_cpus`] of this machine's available parallelism.
    fn default() -> Self {
        Self::for_cpus(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// Why a create was refused admission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The team already has `limit` creates in flight.
    #[error(
        "too many sandbox creates in flight for this team (limit {limit} concurrent creates \
         per team); retry later"
    )]
    Team {
        /// The per-team limit.
        limit: usize,
    },
    /// The node already has `limit` creates in flight.
    #[error(
        "too many sandbox creates in flight on this node (limit {limit} concurrent creates); \
         retry later"
    )]
    Node {
        /// The node limit.
        limit: usize,
    },
}

/// Creates in flight, on the node and per team (teams with none are not kept).
#[derive(Debug, Default)]
struct Counts {
    node: usize,
    teams: HashMap<TeamId, usize>,
}

/// The limiter: counts of creates in flight under [`AdmissionLimits`].
#[derive(Debug)]
pub(crate) struct Admission {
    limits: AdmissionLimits,
    counts: Arc<Mutex<Counts>>,
}

/// One admitted create's slots (one on the node, one for its team); dropping it frees them.
#[derive(Debug)]
pub(crate) struct AdmissionPermit {
    counts: Arc<Mutex<Counts>>,
    team: TeamId,
}

impl Admission {
    pub(crate) fn new(limits: AdmissionLimits) -> Self {
        Admission {
            limits,
            counts: Arc::default(),
        }
    }

    /// Takes a slot for one create of `team`, or says which limit is reached. Never waits.
    pub(crate) fn try_admit(&self, team: &TeamId) -> Result<AdmissionPermit, Rejected> {
        let mut counts = lock(&self.counts);
        let team_count = counts.teams.get(team).copied().unwrap_or(0);
        if team_count >= self.limits.per_team {
            return Err(Rejected::Team {
                limit: self.limits.per_team,
            });
        }
        if counts.node >= self.limits.node {
            return Err(Rejected::Node {
                limit: self.limits.node,
            });
        }
        counts.node += 1;
        counts.teams.insert(team.clone(), team_count + 1);
        Ok(AdmissionPermit {
            counts: Arc::clone(&self.counts),
            team: team.clone(),
        })
    }

    /// Creates in flight on the node.
    pub(crate) fn in_flight_total(&self) -> usize {
        lock(&self.counts).node
    }

    /// Creates in flight on the node, and for `team`.
    #[cfg(test)]
    fn in_flight(&self, team: &TeamId) -> (usize, usize) {
        let counts = lock(&self.counts);
        (counts.node, counts.teams.get(team).copied().unwrap_or(0))
    }
}

impl Drop for AdmissionPermit {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.node = counts.node.saturating_sub(1);
        if let Some(n) = counts.teams.get_mut(&self.team) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.teams.remove(&self.team);
            }
        }
    }
}

/// The counts; every update is a single step, so a poisoned lock is still consistent.
fn lock(counts: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
    counts.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(node: usize, per_team: usize) -> Admission {
        Admission::new(AdmissionLimits { node, per_team })
    }

    #[test]
    fn a_team_at_its_limit_is_refused_while_another_is_admitted() {
        let admission = limits(10, 2);
        let (a, b) = (TeamId::generate(), TeamId::generate());
        let _a1 = admission.try_admit(&a).expect("first");
        let _a2 = admission.try_admit(&a).expect("second");
        assert_eq!(
            admission.try_admit(&a).expect_err("third"),
            Rejected::Team { limit: 2 }
        );
        let _b1 = admission.try_admit(&b).expect("other team");
        assert_eq!(admission.in_flight(&a), (3, 2));
    }

    #[test]
    fn the_node_limit_holds_across_teams() {
        let admission = limits(2, 2);
        let (a, b) = (TeamId::generate(), TeamId::generate());
        let _a = admission.try_admit(&a).expect("a");
        let _b = admission.try_admit(&b).expect("b");
        let err = admission.try_admit(&b).expect_err("node full");
        assert_eq!(err, Rejected::Node { limit: 2 });
        assert!(err.to_string().contains("limit 2"), "{err}");
    }

    #[test]
    fn dropping_a_permit_frees_its_slots_and_forgets_idle_teams() {
        let admission = limits(1, 1);
        let team = TeamId::generate();
        let permit = admission.try_admit(&team).expect("first");
        assert!(admission.try_admit(&team).is_err());
        drop(permit);
        assert_eq!(admission.in_flight(&team), (0, 0));
        assert!(lock(&admission.counts).teams.is_empty());
        let _again = admission.try_admit(&team).expect("slot is free again");
    }

    #[test]
    fn a_refusal_takes_nothing() {
        let admission = limits(1, 1);
        let team = TeamId::generate();
        let _held = admission.try_admit(&team).expect("first");
        for _ in 0..5 {
            assert!(admission.try_admit(&team).is_err());
            assert!(admission.try_admit(&TeamId::generate()).is_err());
        }
        assert_eq!(admission.in_flight(&team), (1, 1));
        assert_eq!(lock(&admission.counts).teams.len(), 1);
    }

    #[test]
    fn permits_from_many_threads_never_exceed_the_limits() {
        let admission = Arc::new(limits(8, 8));
        let team = TeamId::generate();
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        let peak = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    for _ in 0..200 {
                        if let Ok(permit) = admission.try_admit(&team) {
                            use std::sync::atomic::Ordering::SeqCst;
                            let now = admitted.fetch_add(1, SeqCst) + 1;
                            peak.fetch_max(now, SeqCst);
                            std::thread::yield_now();
                            admitted.fetch_sub(1, SeqCst);
                            drop(permit);
                        }
                    }
                });
            }
        });
        assert!(peak.into_inner() <= 8);
        assert_eq!(admission.in_flight(&team), (0, 0));
    }

    #[test]
    fn defaults_scale_with_cpus_and_fit_a_whole_fork() {
        assert_eq!(
            AdmissionLimits::for_cpus(2),
            AdmissionLimits {
                node: 128,
                per_team: 64
            }
        );
        assert_eq!(
            AdmissionLimits::for_cpus(16),
            AdmissionLimits {
                node: 1024,
                per_team: 512
            }
        );
        // A small explicit node limit: the team default is at least a whole fork.
        assert_eq!(AdmissionLimits::per_team_default(32), 20);
        // A small explicit node limit: the team default never exceeds it.
        assert_eq!(AdmissionLimits::per_team_default(4), 4);
        assert_eq!(AdmissionLimits::per_team_default(1), 1);
        assert_eq!(AdmissionLimits::per_team_default(0), 1);
    }
}
