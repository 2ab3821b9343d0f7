//! One simulated run of a [`Strategy`] over a [`Workload`]: one create per simulated
//! millisecond, `concurrency` creates in flight (answered in order), sandboxes killed when
//! their lifetime ends, failed creates retried elsewhere (3 tries), warm pools claimed and
//! refilled, and every node reporting its allocation and a measured load each second. Only
//! the placer's decisions are timed; node utilisation is sampled every 500 creates.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use paddock_placement::{Answer, Load, PlaceError, Request, Usage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::strategy::Strategy;
use crate::workload::{Shape, Workload};

/// Node utilisation at one moment: each node's dominant share (the largest fraction of CPUs,
/// memory, disk or sandbox slots its sandboxes hold).
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    /// Live sandboxes.
    pub live: usize,
    /// Mean utilisation over nodes.
    pub mean: f64,
    /// The emptiest node's.
    pub min: f64,
    /// The fullest node's.
    pub max: f64,
    /// Standard deviation over nodes.
    pub stddev: f64,
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Each decision's time, ns.
    pub decisions_ns: Vec<u64>,
    /// Utilisation when the mean was highest.
    pub peak: Spread,
    /// Utilisation at the end.
    pub end: Spread,
    /// Creates placed and created.
    pub created: usize,
    /// Creates given up (no node with room, or three failed tries).
    pub refused: usize,
    /// Tries sent to a failing node.
    pub failed_tries: usize,
    /// Creates that claimed a warm sandbox.
    pub warm_hits: usize,
}

struct Pending<T> {
    ticket: T,
    node: usize,
    create: usize,
    request: Request,
    tries: u32,
}

const WARM_PER_POOL: u8 = 2;
const REPORT_EVERY: u64 = 1000;
const SAMPLE_EVERY: u64 = 500;

/// The state of one run.
struct Sim<'a, S: Strategy> {
    s: &'a mut S,
    w: &'a Workload,
    ids: Vec<String>,
    /// What each node really holds (what it reports).
    truth: Vec<Usage>,
    /// Warm sandboxes left per node and pool (`w.pools`).
    warm: Vec<Vec<u8>>,
    pending: VecDeque<Pending<S::Ticket>>,
    /// (end, node, create) of live sandboxes.
    ends: BinaryHeap<Reverse<(u64, usize, usize)>>,
    out: Outcome,
}

impl<S: Strategy> Sim<'_, S> {
    /// One decision, timed; a warm claim uses up one of the node's warm sandboxes.
    fn decide(&mut self, create: usize, request: Request, tries: u32, now: Instant) {
        let started = Instant::now();
        let result = self.s.place(&request, now);
        let took = started.elapsed();
        self.out
            .decisions_ns
            .push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        match result {
            Ok((node, was_warm, ticket)) => {
                if was_warm {
                    self.out.warm_hits += 1;
                    let t = request.template.as_ref().expect("warm implies a template");
                    if let Some(k) = self.w.pools[node].iter().position(|p| p == t) {
                        self.warm[node][k] -= 1;
                        if self.warm[node][k] == 0 {
                            self.s.set_warm(node, t, false);
                        }
                    }
                }
                self.pending.push_back(Pending {
                    ticket,
                    node,
                    create,
                    request,
                    tries,
                });
            }
            Err(PlaceError::AllFull { .. } | PlaceError::NoReadyNode) => self.out.refused += 1,
            Err(e) => panic!("unexpected placement error: {e}"),
        }
    }

    /// The oldest create in flight is answered: created, or failed and tried elsewhere.
    fn answer(&mut self, step: u64, now: Instant) {
        let Some(p) = self.pending.pop_front() else {
            return;
        };
        let w = self.w;
        if w.faulty.contains(&p.node) && (w.fail_from..w.fail_until).contains(&step) {
            self.out.failed_tries += 1;
            self.s.release(&p.ticket, Answer::NodeFailed, now);
            if p.tries < 3 {
                let request = p.request.excluding(self.ids[p.node].clone());
                self.decide(p.create, request, p.tries + 1, now);
            } else {
                self.out.refused += 1;
            }
        } else {
            self.s.release(&p.ticket, Answer::Created, now);
            self.truth[p.node].add(&p.request.demand);
            let (u, c) = (&self.truth[p.node], &w.nodes[p.node].capacity);
            assert!(
                u.cpus <= c.cpus
                    && u.memory_mb <= c.memory_mb
                    && u.disk_mb <= c.disk_mb
                    && u.sandboxes <= c.max_sandboxes,
                "node {} overcommitted: {u:?} of {c:?}",
                p.node
            );
            self.out.created += 1;
            let end = step + w.creates[p.create].lifetime;
            self.ends.push(Reverse((end, p.node, p.create)));
        }
    }

    /// Sandboxes whose lifetime ended by `step` are killed.
    fn kill(&mut self, step: u64) {
        while let Some(&Reverse((end, node, create))) = self.ends.peek() {
            if end > step {
                break;
            }
            self.ends.pop();
            let r = &self.w.creates[create].request;
            self.s.free(node, r);
            self.truth[node].remove(&r.demand);
        }
    }

    /// Every node reports its allocation and a measured load (the same busy factors for every
    /// strategy: one generator per report), and its warm pools are full again.
    fn report(&mut self, step: u64, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed ^ step);
        for i in 0..self.w.nodes.len() {
            let cap = &self.w.nodes[i].capacity;
            let u = self.truth[i];
            let load = Load {
                cpu: f64::from(u.cpus) / f64::from(cap.cpus) * rng.gen_range(0.3..1.0),
                memory: u.memory_mb as f64 / cap.memory_mb as f64 * rng.gen_range(0.5..1.0),
            };
            self.s.report(i, u, load);
            for (k, t) in self.w.pools[i].iter().enumerate() {
                if self.warm[i][k] == 0 {
                    self.s.set_warm(i, t, true);
                }
                self.warm[i][k] = WARM_PER_POOL;
            }
        }
    }
}

/// Runs `s` over `w`.
pub fn run<S: Strategy>(s: &mut S, w: &Workload, shape: &Shape) -> Outcome {
    for (i, pool) in w.pools.iter().enumerate() {
        for t in pool {
            s.set_warm(i, t, true);
        }
    }
    let mut sim = Sim {
        s,
        w,
        ids: w.nodes.iter().map(|v| v.id.clone()).collect(),
        truth: vec![Usage::default(); w.nodes.len()],
        warm: w
            .pools
            .iter()
            .map(|p| vec![WARM_PER_POOL; p.len()])
            .collect(),
        pending: VecDeque::new(),
        ends: BinaryHeap::new(),
        out: Outcome {
            decisions_ns: Vec::with_capacity(w.creates.len() * 11 / 10),
            ..Outcome::default()
        },
    };
    let t0 = Instant::now();
    let mut best_mean = -1.0;
    for (step, c) in (0u64..).zip(&w.creates) {
        let now = t0 + Duration::from_millis(step);
        sim.kill(step);
        while sim.pending.len() >= shape.concurrency {
            sim.answer(step, now);
        }
        sim.decide(step as usize, c.request.clone(), 1, now);
        if step % REPORT_EVERY == REPORT_EVERY - 1 {
            sim.report(step, shape.seed);
        }
        if step % SAMPLE_EVERY == 0 {
            let sp = spread(w, &sim.truth, sim.ends.len());
            if sp.mean > best_mean {
                best_mean = sp.mean;
                sim.out.peak = sp;
            }
        }
    }
    let mut out = sim.out;
    out.end = spread(w, &sim.truth, sim.ends.len());
    out
}

fn spread(w: &Workload, truth: &[Usage], live: usize) -> Spread {
    let shares: Vec<f64> = w
        .nodes
        .iter()
        .zip(truth)
        .map(|(v, u)| {
            let c = &v.capacity;
            (f64::from(u.cpus) / f64::from(c.cpus))
                .max(u.memory_mb as f64 / c.memory_mb as f64)
                .max(u.disk_mb as f64 / c.disk_mb as f64)
                .max(f64::from(u.sandboxes) / f64::from(c.max_sandboxes))
        })
        .collect();
    let mean = shares.iter().sum::<f64>() / shares.len() as f64;
    let var = shares.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / shares.len() as f64;
    Spread {
        live,
        mean,
        min: shares.iter().copied().fold(f64::INFINITY, f64::min),
        max: shares.iter().copied().fold(0.0, f64::max),
        stddev: var.sqrt(),
    }
}
