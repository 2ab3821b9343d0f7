//! A create tried on up to [`PlacerConfig::max_tries`](crate::PlacerConfig) nodes (3 by
//! default): a node that answers "full" or fails is excluded and the create placed again
//! elsewhere; a refusal of the request itself is final. The caller says which is which by
//! classifying its error as a [`Failure`]. A pinned request has one try (there is no
//! elsewhere).
//!
//! [`place_with_tries`] drives a synchronous attempt; [`place_with_tries_async`] an async one,
//! taking the placer's lock only around decisions and answers, never across the call to the
//! node.

use std::future::Future;
use std::ops::{ControlFlow, DerefMut};
use std::time::Instant;

use crate::error::PlaceError;
use crate::placer::{Answer, Placement, Placer, Request};

/// How a node's error counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The node had no room: try another; its breaker is not charged.
    Full,
    /// The node failed or did not answer: try another; charged to its breaker.
    NodeFailed,
    /// The request itself was refused (unknown template, invalid input): final.
    Rejected,
}

impl From<Failure> for Answer {
    fn from(f: Failure) -> Answer {
        match f {
            Failure::Full => Answer::Full,
            Failure::NodeFailed => Answer::NodeFailed,
            Failure::Rejected => Answer::Rejected,
        }
    }
}

/// A create that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed<T> {
    /// What the attempt returned.
    pub value: T,
    /// The node it succeeded on.
    pub node: String,
    /// Tries it took (1 when the first node succeeded).
    pub tries: u32,
}

/// A create that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum TriesError<E> {
    /// No node to try (first or after `tries` failed tries; `last` is the last node's error).
    #[error("no node to place the sandbox on after {tries} tries")]
    Place {
        /// Why nothing could be placed.
        #[source]
        source: PlaceError,
        /// Tries made before.
        tries: u32,
        /// The error of the last try, if any.
        last: Option<E>,
    },
    /// The node refused the request itself.
    #[error("node {node} refused the create")]
    Rejected {
        /// The node.
        node: String,
        /// Its error.
        #[source]
        source: E,
    },
    /// Every try failed.
    #[error("the create failed on {tries} nodes, the last {node}")]
    Exhausted {
        /// The last node tried.
        node: String,
        /// Tries made.
        tries: u32,
        /// The last node's error.
        #[source]
        source: E,
    },
}

/// The state of one create's tries.
struct Tries<E> {
    request: Request,
    max: u32,
    tried: u32,
    last: Option<E>,
}

impl<E> Tries<E> {
    fn new(placer: &Placer, request: Request) -> Self {
        let max = if request.pin.is_some() {
            1
        } else {
            placer.config().max_tries.max(1)
        };
        Tries {
            request,
            max,
            tried: 0,
            last: None,
        }
    }

    fn next(&mut self, placer: &mut Placer, now: Instant) -> Result<Placement, TriesError<E>> {
        match placer.place(&self.request, now) {
            Ok(p) => {
                self.tried += 1;
                Ok(p)
            }
            Err(source) => Err(TriesError::Place {
                source,
                tries: self.tried,
                last: self.last.take(),
            }),
        }
    }

    fn answer<T>(
        &mut self,
        placer: &mut Placer,
        p: Placement,
        result: Result<T, E>,
        classify: impl Fn(&E) -> Failure,
        now: Instant,
    ) -> ControlFlow<Result<Placed<T>, TriesError<E>>> {
        let answer = match &result {
            Ok(_) => Answer::Created,
            Err(e) => classify(e).into(),
        };
        placer.release(&p, answer, now);
        let node = p.node().to_string();
        match result {
            Ok(value) => ControlFlow::Break(Ok(Placed {
                value,
                node,
                tries: self.tried,
            })),
            Err(source) if !answer.retry_elsewhere() => {
                ControlFlow::Break(Err(TriesError::Rejected { node, source }))
            }
            Err(source) if self.tried >= self.max => {
                ControlFlow::Break(Err(TriesError::Exhausted {
                    node,
                    tries: self.tried,
                    source,
                }))
            }
            Err(e) => {
                self.request.exclude.push(node);
                self.last = Some(e);
                ControlFlow::Continue(())
            }
        }
    }
}

/// Places `request` and runs `attempt` on the chosen node, up to the placer's `max_tries`
/// times on different nodes while `classify` calls its errors [`Failure::Full`] or
/// [`Failure::NodeFailed`]. Every decision is answered to the placer (reservations released,
/// breakers fed). `now` is read at each decision and answer.
pub fn place_with_tries<T, E>(
    placer: &mut Placer,
    request: Request,
    mut now: impl FnMut() -> Instant,
    mut attempt: impl FnMut(&Placement) -> Result<T, E>,
    classify: impl Fn(&E) -> Failure,
) -> Result<Placed<T>, TriesError<E>> {
    let mut tries = Tries::new(placer, request);
    loop {
        let p = tries.next(placer, now())?;
        let result = attempt(&p);
        if let ControlFlow::Break(done) = tries.answer(placer, p, result, &classify, now()) {
            return done;
        }
    }
}

/// [`place_with_tries`] for an async attempt: `lock` gives the placer (e.g. a
/// `std::sync::Mutex` guard) for each decision and answer and the guard is dropped before
/// `attempt` is awaited.
pub async fn place_with_tries_async<G, T, E, Fut>(
    mut lock: impl FnMut() -> G,
    request: Request,
    mut now: impl FnMut() -> Instant,
    mut attempt: impl FnMut(Placement) -> Fut,
    classify: impl Fn(&E) -> Failure,
) -> Result<Placed<T>, TriesError<E>>
where
    G: DerefMut<Target = Placer>,
    Fut: Future<Output = Result<T, E>>,
{
    let mut tries = {
        let guard = lock();
        Tries::new(&guard, request)
    };
    loop {
        let p = {
            let mut guard = lock();
            tries.next(&mut guard, now())?
        };
        let result = attempt(p.clone()).await;
        let mut guard = lock();
        if let ControlFlow::Break(done) = tries.answer(&mut guard, p, result, &classify, now()) {
            return done;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerState;
    use crate::node::{Capacity, Demand, NodeView};
    use crate::placer::PlacerConfig;
    use std::pin::pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll, Waker};

    #[derive(Debug, PartialEq, Eq, thiserror::Error)]
    enum NodeErr {
        #[error("full")]
        Full,
        #[error("down")]
        Down,
        #[error("no such template")]
        NoTemplate,
    }

    fn classify(e: &NodeErr) -> Failure {
        match e {
            NodeErr::Full => Failure::Full,
            NodeErr::Down => Failure::NodeFailed,
            NodeErr::NoTemplate => Failure::Rejected,
        }
    }

    const D: Demand = Demand {
        cpus: 1,
        memory_mb: 256,
        disk_mb: 1024,
    };

    fn placer(n: usize) -> Placer {
        let mut p = Placer::with_seed(PlacerConfig::default(), 3);
        let cap = Capacity {
            cpus: 8,
            memory_mb: 8192,
            disk_mb: 100_000,
            max_sandboxes: 10,
        };
        for i in 0..n {
            p.upsert(NodeView::new(format!("n{i}"), cap));
        }
        p
    }

    fn in_flight_total(p: &Placer) -> u32 {
        p.nodes().map(|n| n.in_flight.sandboxes).sum()
    }

    #[test]
    fn full_and_failed_nodes_are_retried_elsewhere() {
        let mut p = placer(5);
        let t0 = Instant::now();
        let mut seen = Vec::new();
        let out = place_with_tries(
            &mut p,
            Request::new(D),
            || t0,
            |pl| {
                seen.push(pl.node().to_string());
                match seen.len() {
                    1 => Err(NodeErr::Full),
                    2 => Err(NodeErr::Down),
                    _ => Ok(7),
                }
            },
            classify,
        )
        .expect("third try succeeds");
        assert_eq!(out.value, 7);
        assert_eq!(out.tries, 3);
        assert_eq!(out.node, seen[2]);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3, "three different nodes");
        assert_eq!(in_flight_total(&p), 0);
        assert_eq!(p.node(&out.node).expect("known").allocated.sandboxes, 1);
    }

    #[test]
    fn three_tries_then_exhausted_and_rejections_are_final() {
        let mut p = placer(5);
        let t0 = Instant::now();
        let mut calls = 0;
        let err = place_with_tries(
            &mut p,
            Request::new(D),
            || t0,
            |_| -> Result<(), _> {
                calls += 1;
                Err(NodeErr::Down)
            },
            classify,
        )
        .expect_err("all fail");
        assert_eq!(calls, 3);
        assert!(matches!(
            err,
            TriesError::Exhausted {
                tries: 3,
                source: NodeErr::Down,
                ..
            }
        ));

        let mut calls = 0;
        let err = place_with_tries(
            &mut p,
            Request::new(D),
            || t0,
            |_| -> Result<(), _> {
                calls += 1;
                Err(NodeErr::NoTemplate)
            },
            classify,
        )
        .expect_err("rejected");
        assert_eq!(calls, 1);
        assert!(matches!(
            err,
            TriesError::Rejected {
                source: NodeErr::NoTemplate,
                ..
            }
        ));
        assert_eq!(in_flight_total(&p), 0);
    }

    #[test]
    fn runs_out_of_nodes_with_the_last_error() {
        let mut p = placer(2);
        let t0 = Instant::now();
        let err = place_with_tries(
            &mut p,
            Request::new(D),
            || t0,
            |_| -> Result<(), _> { Err(NodeErr::Full) },
            classify,
        )
        .expect_err("both full");
        match err {
            TriesError::Place {
                source: PlaceError::NoReadyNode,
                tries: 2,
                last: Some(NodeErr::Full),
            } => {}
            other => panic!("unexpected: {other:?}"),
        }
    }

    #[test]
    fn a_pinned_request_gets_one_try() {
        let mut p = placer(3);
        let t0 = Instant::now();
        let mut calls = 0;
        let err = place_with_tries(
            &mut p,
            Request::new(D).pinned_to("n1"),
            || t0,
            |pl| -> Result<(), _> {
                assert_eq!(pl.node(), "n1");
                calls += 1;
                Err(NodeErr::Down)
            },
            classify,
        )
        .expect_err("fails");
        assert_eq!(calls, 1);
        assert!(matches!(err, TriesError::Exhausted { tries: 1, .. }));
        let failures = match p.breaker("n1").expect("known").state() {
            BreakerState::Closed { failures } => failures,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(failures, 1, "the failure is charged to the node's breaker");
    }

    /// Polls a future that never waits to completion (the attempts below are ready at once).
    fn run_ready<F: Future>(f: F) -> F::Output {
        let mut f = pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the test's futures are always ready"),
        }
    }

    #[test]
    fn async_tries_take_the_lock_only_around_decisions() {
        let p = Mutex::new(placer(4));
        let t0 = Instant::now();
        let mut n = 0;
        let out = run_ready(place_with_tries_async(
            || p.lock().expect("not poisoned"),
            Request::new(D),
            || t0,
            |pl| {
                n += 1;
                // The lock is free while the node is called.
                let free = p.try_lock().is_ok();
                let fail = n == 1;
                async move {
                    assert!(free, "placer lock held across the attempt");
                    if fail {
                        Err(NodeErr::Full)
                    } else {
                        Ok(pl.node().to_string())
                    }
                }
            },
            classify,
        ))
        .expect("second try succeeds");
        assert_eq!(out.tries, 2);
        assert_eq!(out.value, out.node);
        let p = p.lock().expect("not poisoned");
        assert_eq!(in_flight_total(&p), 0);
        assert_eq!(p.nodes().map(|n| n.allocated.sandboxes).sum::<u32>(), 1);
    }
}
