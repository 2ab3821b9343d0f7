//! The circuit breaker kept for each node: after `failures` consecutive failed creates the node
//! is cut off for a cool-down, then half-open (one probe create may go to it), and a success
//! closes it again. A probe that fails opens it for twice the last cool-down, up to a maximum.
//! Time is passed in as [`Instant`]s, so the breaker holds no clock of its own.

use std::time::{Duration, Instant};

/// When a node's breaker trips and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failures: u32,
    /// The first cool-down.
    pub cool_down: Duration,
    /// The longest cool-down (each failed probe doubles the previous one, up to this).
    pub max_cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 3,
            cool_down: Duration::from_secs(30),
            max_cool_down: Duration::from_secs(300),
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Creates go to the node; `failures` in a row so far.
    Closed {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// No creates go to the node before `until`; then one probe may.
    Open {
        /// End of the cool-down.
        until: Instant,
        /// The cool-down this opening uses (the next one doubles it).
        cool_down: Duration,
    },
    /// A probe create was sent after the cool-down; no other create goes until it is answered.
    Probing {
        /// The cool-down of the opening before the probe.
        cool_down: Duration,
    },
}

/// One node's circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    state: BreakerState,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: BreakerState::Closed { failures: 0 },
        }
    }
}

/// Whether a create may go to the node now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Yes, the breaker is closed.
    Yes,
    /// Yes, as the one probe of a half-open breaker.
    Probe,
    /// No: open, or a probe is already out.
    No,
}

impl Breaker {
    /// Where the breaker stands.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a create may go to the node at `now` (does not change the breaker: see
    /// [`Breaker::on_send`]).
    pub fn admit(&self, now: Instant) -> Admit {
        match self.state {
            BreakerState::Closed { .. } => Admit::Yes,
            BreakerState::Open { until, .. } if now >= until => Admit::Probe,
            BreakerState::Open { .. } | BreakerState::Probing { .. } => Admit::No,
        }
    }

    /// A create was sent at `now`: after the cool-down it is the probe, and no other create is
    /// admitted until it is answered.
    pub fn on_send(&mut self, now: Instant) {
        if let BreakerState::Open { until, cool_down } = self.state {
            if now >= until {
                self.state = BreakerState::Probing { cool_down };
            }
        }
    }

    /// What [`Breaker::on_send`] counted as sent was not sent after all: a probe it started is
    /// open to be taken again at once; nothing else changes.
    pub fn on_withdrawn(&mut self, now: Instant) {
        if let BreakerState::Probing { cool_down } = self.state {
            self.state = BreakerState::Open {
                until: now,
                cool_down,
            };
        }
    }

    /// The node answered a create sensibly (created it, or refused it for a reason of the
    /// request's own): the breaker closes.
    pub fn on_success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    /// The node answered that it is full: says nothing of its health, but a probe is over
    /// (the breaker closes, as the node answered).
    pub fn on_full(&mut self) {
        if let BreakerState::Probing { .. } = self.state {
            self.state = BreakerState::Closed { failures: 0 };
        }
    }

    /// A create failed on the node at `now` (an error of the node, or no answer).
    pub fn on_failure(&mut self, now: Instant, cfg: &BreakerConfig) {
        self.state = match self.state {
            BreakerState::Closed { failures } => {
                let failures = failures + 1;
                if failures >= cfg.failures {
                    BreakerState::Open {
                        until: now + cfg.cool_down,
                        cool_down: cfg.cool_down,
                    }
                } else {
                    BreakerState::Closed { failures }
                }
            }
            BreakerState::Probing { cool_down } => {
                let cool_down = cool_down.saturating_mul(2).min(cfg.max_cool_down);
                BreakerState::Open {
                    until: now + cool_down,
                    cool_down,
                }
            }
            // An answer to a create sent before the breaker opened: it stays open as it is.
            open @ BreakerState::Open { .. } => open,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failures: 3,
            cool_down: Duration::from_secs(30),
            max_cool_down: Duration::from_secs(100),
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let (c, t0) = (cfg(), Instant::now());
        let mut b = Breaker::default();
        b.on_failure(t0, &c);
        b.on_failure(t0, &c);
        b.on_success();
        b.on_failure(t0, &c);
        b.on_failure(t0, &c);
        assert_eq!(b.admit(t0), Admit::Yes, "two in a row after the success");
        b.on_failure(t0, &c);
        assert_eq!(b.admit(t0), Admit::No);
        assert_eq!(b.admit(t0 + Duration::from_secs(29)), Admit::No);
        assert_eq!(b.admit(t0 + Duration::from_secs(30)), Admit::Probe);
    }

    #[test]
    fn a_withdrawn_probe_can_be_taken_again_and_counts_nothing() {
        let (c, t0) = (cfg(), Instant::now());
        let mut b = Breaker::default();
        b.on_failure(t0, &c);
        b.on_withdrawn(t0);
        assert_eq!(b.state(), BreakerState::Closed { failures: 1 });
        b.on_failure(t0, &c);
        b.on_failure(t0, &c);
        let t1 = t0 + Duration::from_secs(31);
        b.on_send(t1);
        assert_eq!(b.admit(t1), Admit::No, "the probe is out");
        b.on_withdrawn(t1);
        assert_eq!(b.admit(t1), Admit::Probe, "it was never sent");
    }

    #[test]
    fn half_open_lets_one_probe_and_success_closes() {
        let (c, t0) = (cfg(), Instant::now());
        let mut b = Breaker::default();
        for _ in 0..3 {
            b.on_failure(t0, &c);
        }
        let t1 = t0 + Duration::from_secs(31);
        b.on_send(t1);
        assert_eq!(b.admit(t1), Admit::No, "the probe is out");
        b.on_success();
        assert_eq!(b.admit(t1), Admit::Yes);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn failed_probes_double_the_cool_down_up_to_the_max() {
        let (c, t0) = (cfg(), Instant::now());
        let mut b = Breaker::default();
        for _ in 0..3 {
            b.on_failure(t0, &c);
        }
        let mut now = t0;
        for expected in [60, 100, 100] {
            let BreakerState::Open { until, .. } = b.state() else {
                panic!("open expected: {:?}", b.state());
            };
            now = until;
            b.on_send(now);
            b.on_failure(now, &c);
            assert_eq!(
                b.state(),
                BreakerState::Open {
                    until: now + Duration::from_secs(expected),
                    cool_down: Duration::from_secs(expected)
                }
            );
        }
        assert_eq!(b.admit(now + Duration::from_secs(99)), Admit::No);
    }

    #[test]
    fn a_full_answer_ends_a_probe_but_does_not_count_as_failure() {
        let (c, t0) = (cfg(), Instant::now());
        let mut b = Breaker::default();
        b.on_failure(t0, &c);
        b.on_full();
        assert_eq!(b.state(), BreakerState::Closed { failures: 1 });
        b.on_failure(t0, &c);
        b.on_failure(t0, &c);
        let t1 = t0 + Duration::from_secs(30);
        b.on_send(t1);
        b.on_full();
        assert_eq!(b.admit(t1), Admit::Yes);
    }
}
