//! [`Placer`]: the table of nodes the control plane places on, and the decision itself.
//!
//! A decision samples K ready nodes (default 3) and takes the one with the best
//! [`NodeView::score`], never one without room ([`NodeView::fits`]), never one whose circuit
//! breaker is open, never one the request excludes. Nodes with a warm sandbox of the requested
//! template are sampled too (K more, from that template's own index) and get a bonus. A pinned
//! request (resume on the node holding a paused sandbox's disk, a fork on its parent's node)
//! goes to that node or fails with [`PlaceError::PinnedUnavailable`] or
//! [`PlaceError::PinnedFull`]. Sampling is O(K): ready nodes and warm nodes are kept in
//! [`SlotSet`]s; only when K samples find no node with room does a decision scan all ready
//! nodes (so a full cluster is told apart from an unlucky sample).
//!
//! The decision reserves the demand as in flight on the chosen node ([`Placer::place`]); the
//! node's answer releases it ([`Placer::release`]), adds it to the node's allocation when
//! created, and feeds the node's breaker. Node reports replace allocation and load
//! ([`Placer::report`]) but keep what is in flight.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use paddock_domain::TemplateName;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::breaker::{Admit, Breaker, BreakerConfig};
use crate::error::{PlaceError, Unavailable};
use crate::node::{Demand, Load, NodeStatus, NodeView, ScoreWeights, Usage};
use crate::slots::SlotSet;

/// How the placer decides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlacerConfig {
    /// Nodes sampled per decision (best of K), from the ready nodes and again from the nodes
    /// with a warm sandbox of the template.
    pub k: usize,
    /// Nodes a create is tried on before giving up (see [`crate::tries`]).
    pub max_tries: u32,
    /// How scores weigh reserved share, measured load and warm sandboxes.
    pub weights: ScoreWeights,
    /// When a node's circuit breaker trips.
    pub breaker: BreakerConfig,
}

impl Default for PlacerConfig {
    fn default() -> Self {
        PlacerConfig {
            k: 3,
            max_tries: 3,
            weights: ScoreWeights::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

/// One sandbox to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its resources.
    pub demand: Demand,
    /// Its template, to prefer a node with a warm sandbox of it.
    pub template: Option<TemplateName>,
    /// The only node it may go to (where its state lives).
    pub pin: Option<String>,
    /// Nodes it must not go to (previous tries failed there).
    pub exclude: Vec<String>,
}

impl Request {
    /// A request for `demand` on any node.
    pub fn new(demand: Demand) -> Self {
        Request {
            demand,
            template: None,
            pin: None,
            exclude: Vec::new(),
        }
    }

    /// Prefers nodes with a warm sandbox of `template`.
    pub fn with_template(mut self, template: TemplateName) -> Self {
        self.template = Some(template);
        self
    }

    /// Only `node` may take it.
    pub fn pinned_to(mut self, node: impl Into<String>) -> Self {
        self.pin = Some(node.into());
        self
    }

    /// `node` must not take it.
    pub fn excluding(mut self, node: impl Into<String>) -> Self {
        self.exclude.push(node.into());
        self
    }
}

/// A decision: the node chosen, with the demand reserved there as in flight until
/// [`Placer::release`] is called with the node's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    node: String,
    slot: usize,
    generation: u64,
    demand: Demand,
    warm: bool,
    probe: bool,
}

impl Placement {
    /// The chosen node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The demand reserved there.
    pub fn demand(&self) -> Demand {
        self.demand
    }

    /// Whether the node had a warm sandbox of the requested template.
    pub fn warm(&self) -> bool {
        self.warm
    }

    /// Whether this create is the probe of a half-open circuit breaker.
    pub fn probe(&self) -> bool {
        self.probe
    }
}

/// How a node answered a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The sandbox runs there.
    Created,
    /// The node had no room (retry elsewhere; says nothing of the node's health).
    Full,
    /// The node failed or did not answer (retry elsewhere; counts against its breaker).
    NodeFailed,
    /// The node refused the request for a reason of its own (unknown template, bad input):
    /// final, and the node is healthy.
    Rejected,
    /// Nothing was sent: the placement only chose the node (e.g. for a warm claim or a build
    /// that holds no room). The reservation goes, the node's breaker learns nothing.
    Withdrawn,
}

impl Answer {
    /// Whether another node may succeed where this one did not.
    pub fn retry_elsewhere(self) -> bool {
        matches!(self, Answer::Full | Answer::NodeFailed)
    }
}

#[derive(Debug, Clone)]
struct Slot {
    view: NodeView,
    breaker: Breaker,
    generation: u64,
}

/// The nodes the control plane places on and the decisions over them. Not thread-safe by
/// itself: the API keeps it behind a mutex (a decision takes microseconds; never hold the lock
/// across a call to a node).
#[derive(Debug)]
pub struct Placer {
    config: PlacerConfig,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    by_id: HashMap<String, usize>,
    ready: SlotSet,
    warm: HashMap<TemplateName, SlotSet>,
    next_generation: u64,
    rng: StdRng,
    /// Scratch of one decision: nodes sampled so far.
    seen: Vec<usize>,
    /// Scratch of one decision: the request's excluded nodes as slots.
    excluded: Vec<usize>,
}

/// What one decision checks a node against.
struct Ask<'a> {
    demand: &'a Demand,
    warm: Option<&'a SlotSet>,
    excluded: &'a [usize],
    now: Instant,
    weights: &'a ScoreWeights,
}

/// Why a node is not a candidate.
enum Skip {
    /// Not ready, cut off, excluded.
    Unavailable,
    /// Available but without room.
    NoRoom,
}

impl Ask<'_> {
    /// The node's score if it may take the demand.
    fn consider(&self, slot: usize, s: &Slot) -> Result<f64, Skip> {
        if s.view.status != NodeStatus::Ready
            || self.excluded.contains(&slot)
            || s.breaker.admit(self.now) == Admit::No
        {
            return Err(Skip::Unavailable);
        }
        if !s.view.fits(self.demand) {
            return Err(Skip::NoRoom);
        }
        let warm = self.warm.is_some_and(|w| w.contains(slot));
        Ok(s.view.score(self.demand, warm, self.weights))
    }
}

/// The best-scored slot so far; among equal scores, each is as likely to be kept (so a
/// small, idle cluster, whose nodes all score the same, does not send everything to its
/// first node).
#[derive(Default)]
struct Best {
    pick: Option<(usize, f64)>,
    ties: u32,
}

/// Scores this close are equal.
const SCORE_EPSILON: f64 = 1e-9;

impl Best {
    fn offer(&mut self, slot: usize, score: f64, rng: &mut StdRng) {
        match self.pick {
            Some((_, b)) if score > b + SCORE_EPSILON => {}
            Some((_, b)) if score >= b - SCORE_EPSILON => {
                self.ties += 1;
                if rng.gen_range(0..self.ties) == 0 {
                    self.pick = Some((slot, score));
                }
            }
            _ => {
                self.pick = Some((slot, score));
                self.ties = 1;
            }
        }
    }
}

impl Placer {
    /// An empty placer seeded from the OS.
    pub fn new(config: PlacerConfig) -> Self {
        Self::with_rng(config, StdRng::from_entropy())
    }

    /// An empty placer whose samples follow `seed` (tests, the simulator).
    pub fn with_seed(config: PlacerConfig, seed: u64) -> Self {
        Self::with_rng(config, StdRng::seed_from_u64(seed))
    }

    fn with_rng(config: PlacerConfig, rng: StdRng) -> Self {
        Placer {
            config,
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            ready: SlotSet::default(),
            warm: HashMap::new(),
            next_generation: 0,
            rng,
            seen: Vec::new(),
            excluded: Vec::new(),
        }
    }

    /// How it decides.
    pub fn config(&self) -> &PlacerConfig {
        &self.config
    }

    /// Number of nodes known.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Number of ready nodes.
    pub fn ready_count(&self) -> usize {
        self.ready.len()
    }

    /// The node `id`, if known.
    pub fn node(&self, id: &str) -> Option<&NodeView> {
        self.slot(id).map(|s| &s.view)
    }

    /// Every known node, in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeView> {
        self.slots.iter().flatten().map(|s| &s.view)
    }

    /// The circuit breaker of node `id`, if known.
    pub fn breaker(&self, id: &str) -> Option<&Breaker> {
        self.slot(id).map(|s| &s.breaker)
    }

    fn slot(&self, id: &str) -> Option<&Slot> {
        self.by_id.get(id).and_then(|&i| self.slots[i].as_ref())
    }

    fn slot_mut(&mut self, id: &str) -> Option<(usize, &mut Slot)> {
        let i = *self.by_id.get(id)?;
        self.slots[i].as_mut().map(|s| (i, s))
    }

    /// Adds node `view.id`, or replaces everything known of it (in flight included) but its
    /// circuit breaker.
    pub fn upsert(&mut self, view: NodeView) {
        let i = match self.by_id.get(&view.id) {
            Some(&i) => {
                if let Some(old) = self.slots[i].as_mut() {
                    let old_view = std::mem::replace(&mut old.view, view);
                    for t in &old_view.warm {
                        remove_warm(&mut self.warm, t, i);
                    }
                }
                i
            }
            None => {
                let i = self.free.pop().unwrap_or(self.slots.len());
                if i == self.slots.len() {
                    self.slots.push(None);
                }
                self.by_id.insert(view.id.clone(), i);
                self.slots[i] = Some(Slot {
                    view,
                    breaker: Breaker::default(),
                    generation: self.next_generation,
                });
                self.next_generation += 1;
                i
            }
        };
        let Some(s) = self.slots[i].as_ref() else {
            return;
        };
        for t in &s.view.warm {
            self.warm.entry(t.clone()).or_default().insert(i);
        }
        self.index_status(i);
    }

    /// Forgets node `id` (it left); answers to creates placed on it are then ignored.
    pub fn remove(&mut self, id: &str) -> Option<NodeView> {
        let i = self.by_id.remove(id)?;
        let s = self.slots[i].take()?;
        self.ready.remove(i);
        for t in &s.view.warm {
            remove_warm(&mut self.warm, t, i);
        }
        self.free.push(i);
        Some(s.view)
    }

    /// Sets node `id`'s status; false if unknown.
    pub fn set_status(&mut self, id: &str, status: NodeStatus) -> bool {
        let Some((i, s)) = self.slot_mut(id) else {
            return false;
        };
        s.view.status = status;
        self.index_status(i);
        true
    }

    /// A node's report: its allocation and measured load replace what was known (what is in
    /// flight stays); false if unknown.
    pub fn report(&mut self, id: &str, allocated: Usage, load: Load) -> bool {
        let Some((_, s)) = self.slot_mut(id) else {
            return false;
        };
        s.view.allocated = allocated;
        s.view.load = load;
        true
    }

    /// Records that node `id` has ready warm sandboxes of `templates` and of no other
    /// template; false if unknown.
    pub fn set_warm_templates(&mut self, id: &str, templates: &HashSet<TemplateName>) -> bool {
        let Some(view) = self.node(id) else {
            return false;
        };
        let gone: Vec<TemplateName> = view.warm.difference(templates).cloned().collect();
        for t in gone {
            self.set_warm(id, &t, false);
        }
        for t in templates {
            self.set_warm(id, t, true);
        }
        true
    }

    /// Records whether node `id` has a ready warm sandbox of `template`; false if unknown.
    pub fn set_warm(&mut self, id: &str, template: &TemplateName, warm: bool) -> bool {
        let Some((i, s)) = self.slot_mut(id) else {
            return false;
        };
        if warm {
            if !s.view.warm.contains(template) {
                s.view.warm.insert(template.clone());
            }
            self.warm.entry(template.clone()).or_default().insert(i);
        } else {
            s.view.warm.remove(template);
            remove_warm(&mut self.warm, template, i);
        }
        true
    }

    /// A sandbox of `demand` on node `id` ended: its resources are free again (until the next
    /// report says otherwise); false if unknown.
    pub fn free(&mut self, id: &str, demand: &Demand) -> bool {
        let Some((_, s)) = self.slot_mut(id) else {
            return false;
        };
        s.view.allocated.remove(demand);
        true
    }

    fn index_status(&mut self, i: usize) {
        match self.slots[i].as_ref() {
            Some(s) if s.view.status == NodeStatus::Ready => self.ready.insert(i),
            _ => self.ready.remove(i),
        }
    }

    /// Chooses a node for `req` at `now` and reserves its demand there as in flight.
    pub fn place(&mut self, req: &Request, now: Instant) -> Result<Placement, PlaceError> {
        let slot = match &req.pin {
            Some(pin) => self.check_pinned(pin, req, now)?,
            None => self.choose(req, now)?,
        };
        Ok(self.reserve(slot, req, now))
    }

    fn check_pinned(&self, pin: &str, req: &Request, now: Instant) -> Result<usize, PlaceError> {
        let unavailable = |reason| PlaceError::PinnedUnavailable {
            node: pin.to_string(),
            reason,
        };
        let (i, s) = match self.by_id.get(pin) {
            Some(&i) => match self.slots[i].as_ref() {
                Some(s) => (i, s),
                None => return Err(unavailable(Unavailable::Unknown)),
            },
            None => return Err(unavailable(Unavailable::Unknown)),
        };
        if s.view.status != NodeStatus::Ready {
            return Err(unavailable(Unavailable::Status(s.view.status)));
        }
        if req.exclude.iter().any(|e| e == pin) {
            return Err(unavailable(Unavailable::Excluded));
        }
        if s.breaker.admit(now) == Admit::No {
            return Err(unavailable(Unavailable::CircuitOpen));
        }
        if !s.view.fits(&req.demand) {
            return Err(PlaceError::PinnedFull {
                node: pin.to_string(),
                demand: req.demand,
            });
        }
        Ok(i)
    }

    fn choose(&mut self, req: &Request, now: Instant) -> Result<usize, PlaceError> {
        let Placer {
            config,
            slots,
            by_id,
            ready,
            warm,
            rng,
            seen,
            excluded,
            ..
        } = self;
        excluded.clear();
        excluded.extend(req.exclude.iter().filter_map(|id| by_id.get(id).copied()));
        let ask = Ask {
            demand: &req.demand,
            warm: req.template.as_ref().and_then(|t| warm.get(t)),
            excluded,
            now,
            weights: &config.weights,
        };
        let mut best = Best::default();
        seen.clear();
        if let Some(w) = ask.warm {
            sample(slots, w, config.k, rng, seen, &ask, &mut best);
        }
        sample(slots, ready, config.k, rng, seen, &ask, &mut best);
        if let Some((i, _)) = best.pick {
            return Ok(i);
        }
        // No sample had room: look at every ready node, so that a full cluster (or one
        // node with room among many full ones) is not mistaken for bad luck.
        let mut any_available = false;
        for i in ready.iter() {
            let Some(s) = slots[i].as_ref() else { continue };
            match ask.consider(i, s) {
                Ok(score) => best.offer(i, score, rng),
                Err(Skip::NoRoom) => any_available = true,
                Err(Skip::Unavailable) => {}
            }
        }
        match best.pick {
            Some((i, _)) => Ok(i),
            None if any_available => Err(PlaceError::AllFull { demand: req.demand }),
            None => Err(PlaceError::NoReadyNode),
        }
    }

    fn reserve(&mut self, i: usize, req: &Request, now: Instant) -> Placement {
        let warm = req
            .template
            .as_ref()
            .and_then(|t| self.warm.get(t))
            .is_some_and(|w| w.contains(i));
        let s = self.slots[i]
            .as_mut()
            .expect("a chosen slot holds a node: choose and reserve run under one &mut self");
        let probe = s.breaker.admit(now) == Admit::Probe;
        s.breaker.on_send(now);
        s.view.in_flight.add(&req.demand);
        Placement {
            node: s.view.id.clone(),
            slot: i,
            generation: s.generation,
            demand: req.demand,
            warm,
            probe,
        }
    }

    /// The node answered the create `p` at `now`: its reservation is released, a created
    /// sandbox counts as allocated, and the node's breaker learns of the answer. False if the
    /// node has left since (nothing to do).
    pub fn release(&mut self, p: &Placement, answer: Answer, now: Instant) -> bool {
        let cfg = self.config.breaker;
        let Some(s) = self.slots.get_mut(p.slot).and_then(Option::as_mut) else {
            return false;
        };
        if s.generation != p.generation {
            return false;
        }
        s.view.in_flight.remove(&p.demand);
        match answer {
            Answer::Created => {
                s.view.allocated.add(&p.demand);
                s.breaker.on_success();
            }
            Answer::Rejected => s.breaker.on_success(),
            Answer::Full => s.breaker.on_full(),
            Answer::NodeFailed => s.breaker.on_failure(now, &cfg),
            Answer::Withdrawn => s.breaker.on_withdrawn(now),
        }
        true
    }
}

fn remove_warm(warm: &mut HashMap<TemplateName, SlotSet>, t: &TemplateName, i: usize) {
    if let Some(set) = warm.get_mut(t) {
        set.remove(i);
        if set.is_empty() {
            warm.remove(t);
        }
    }
}

/// Offers up to `k` candidates of `set` to `best`: all of a small set, else random draws
/// (at most `4 * k`, skipping nodes seen already).
fn sample(
    slots: &[Option<Slot>],
    set: &SlotSet,
    k: usize,
    rng: &mut StdRng,
    seen: &mut Vec<usize>,
    ask: &Ask<'_>,
    best: &mut Best,
) {
    let offer = |i: usize, rng: &mut StdRng, seen: &mut Vec<usize>, best: &mut Best| -> bool {
        if seen.contains(&i) {
            return false;
        }
        seen.push(i);
        match slots[i].as_ref().map(|s| ask.consider(i, s)) {
            Some(Ok(score)) => {
                best.offer(i, score, rng);
                true
            }
            _ => false,
        }
    };
    if set.len() <= 2 * k {
        for i in set.iter() {
            offer(i, rng, seen, best);
        }
        return;
    }
    let (mut found, mut draws) = (0, 0);
    while found < k && draws < 4 * k {
        draws += 1;
        if let Some(i) = set.pick(rng) {
            if offer(i, rng, seen, best) {
                found += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
