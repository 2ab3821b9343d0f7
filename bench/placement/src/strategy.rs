//! The two placers the simulator compares, behind one [`Strategy`] trait: [`Sampled`] is
//! `paddock_placement::Placer` (best of K), [`FullScan`] the naive baseline that looks at
//! every ready node for each decision (same fit check, score, warm bonus and breakers, so the
//! two differ only in how many nodes they look at).

use std::collections::HashMap;
use std::time::Instant;

use paddock_domain::TemplateName;
use paddock_placement::{
    Admit, Answer, Breaker, BreakerConfig, Demand, Load, NodeStatus, NodeView, PlaceError,
    Placement, Placer, PlacerConfig, Request, ScoreWeights, Usage,
};

/// A placer as the simulator drives it; nodes are numbered 0..n (id `n{i}`).
pub trait Strategy {
    /// What a decision hands back to be answered.
    type Ticket;
    /// Chooses a node for `req` and reserves its demand there.
    fn place(
        &mut self,
        req: &Request,
        now: Instant,
    ) -> Result<(usize, bool, Self::Ticket), PlaceError>;
    /// The node answered.
    fn release(&mut self, ticket: &Self::Ticket, answer: Answer, now: Instant);
    /// A sandbox of `req` on node `i` ended.
    fn free(&mut self, i: usize, req: &Request);
    /// Node `i` reported.
    fn report(&mut self, i: usize, allocated: Usage, load: Load);
    /// Node `i` has (or no longer has) a warm sandbox of `t`.
    fn set_warm(&mut self, i: usize, t: &TemplateName, warm: bool);
}

/// `paddock_placement::Placer`.
pub struct Sampled {
    placer: Placer,
    index: HashMap<String, usize>,
    ids: Vec<String>,
}

impl Sampled {
    /// A placer over `nodes`, seeded.
    pub fn new(nodes: Vec<NodeView>, seed: u64) -> Self {
        let mut placer = Placer::with_seed(PlacerConfig::default(), seed);
        let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
        let index = ids
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, id)| (id, i))
            .collect();
        for n in nodes {
            placer.upsert(n);
        }
        Sampled { placer, index, ids }
    }
}

impl Strategy for Sampled {
    type Ticket = Placement;

    fn place(
        &mut self,
        req: &Request,
        now: Instant,
    ) -> Result<(usize, bool, Placement), PlaceError> {
        let p = self.placer.place(req, now)?;
        Ok((self.index[p.node()], p.warm(), p))
    }

    fn release(&mut self, ticket: &Placement, answer: Answer, now: Instant) {
        self.placer.release(ticket, answer, now);
    }

    fn free(&mut self, i: usize, req: &Request) {
        self.placer.free(&self.ids[i], &req.demand);
    }

    fn report(&mut self, i: usize, allocated: Usage, load: Load) {
        self.placer.report(&self.ids[i], allocated, load);
    }

    fn set_warm(&mut self, i: usize, t: &TemplateName, warm: bool) {
        self.placer.set_warm(&self.ids[i], t, warm);
    }
}

/// The baseline: every ready node is scored for every decision.
pub struct FullScan {
    nodes: Vec<(NodeView, Breaker)>,
    index: HashMap<String, usize>,
    weights: ScoreWeights,
    breaker: BreakerConfig,
}

impl FullScan {
    /// A baseline over `nodes`.
    pub fn new(nodes: Vec<NodeView>) -> Self {
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        let cfg = PlacerConfig::default();
        FullScan {
            nodes: nodes.into_iter().map(|n| (n, Breaker::default())).collect(),
            index,
            weights: cfg.weights,
            breaker: cfg.breaker,
        }
    }
}

impl Strategy for FullScan {
    type Ticket = (usize, Demand);

    fn place(
        &mut self,
        req: &Request,
        now: Instant,
    ) -> Result<(usize, bool, (usize, Demand)), PlaceError> {
        let excluded: Vec<usize> = req
            .exclude
            .iter()
            .filter_map(|id| self.index.get(id).copied())
            .collect();
        let mut best: Option<(usize, f64, bool)> = None;
        let mut any_available = false;
        for (i, (n, b)) in self.nodes.iter().enumerate() {
            if n.status != NodeStatus::Ready || excluded.contains(&i) || b.admit(now) == Admit::No {
                continue;
            }
            any_available = true;
            if !n.fits(&req.demand) {
                continue;
            }
            let warm = req.template.as_ref().is_some_and(|t| n.warm.contains(t));
            let score = n.score(&req.demand, warm, &self.weights);
            if best.is_none_or(|(_, s, _)| score < s) {
                best = Some((i, score, warm));
            }
        }
        let Some((i, _, warm)) = best else {
            return Err(if any_available {
                PlaceError::AllFull { demand: req.demand }
            } else {
                PlaceError::NoReadyNode
            });
        };
        let (n, b) = &mut self.nodes[i];
        b.on_send(now);
        n.in_flight.add(&req.demand);
        Ok((i, warm, (i, req.demand)))
    }

    fn release(&mut self, (i, demand): &(usize, Demand), answer: Answer, now: Instant) {
        let (n, b) = &mut self.nodes[*i];
        n.in_flight.remove(demand);
        match answer {
            Answer::Created => {
                n.allocated.add(demand);
                b.on_success();
            }
            Answer::Rejected => b.on_success(),
            Answer::Full => b.on_full(),
            Answer::NodeFailed => b.on_failure(now, &self.breaker),
            Answer::Withdrawn => b.on_withdrawn(now),
        }
    }

    fn free(&mut self, i: usize, req: &Request) {
        self.nodes[i].0.allocated.remove(&req.demand);
    }

    fn report(&mut self, i: usize, allocated: Usage, load: Load) {
        let n = &mut self.nodes[i].0;
        n.allocated = allocated;
        n.load = load;
    }

    fn set_warm(&mut self, i: usize, t: &TemplateName, warm: bool) {
        let n = &mut self.nodes[i].0;
        if warm {
            n.warm.insert(t.clone());
        } else {
            n.warm.remove(t);
        }
    }
}
