//! Circuit breakers and bulkheads: protection for the services states call.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::coordination::{Engine, PrimitiveKind};

/// About thirty years: "open until further notice" for recovery times the clock cannot add.
const FOREVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// Where a [`CircuitBreaker`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; consecutive failures are counted.
    Closed {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// Calls fail fast until the recovery timeout has passed.
    Open,
    /// A limited number of trial calls go through; their outcome closes or reopens it.
    HalfOpen,
}

#[derive(Debug)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

/// A circuit breaker, attachable to states (see `StateOptions::circuit_breaker`) and shareable
/// by several states, runs and agents that call the same service.
///
/// After `failure_threshold` consecutive failed attempts it *opens*: attempts fail fast with
/// `FlowError::CircuitOpen` (counting as failures for the state's retry policy) without calling
/// the state. After `recovery_timeout` it is *half-open*: up to `half_open_trials` attempts run
/// as trials; that many successes close it, any failure opens it again. Time is tokio's, so
/// tests run it on a paused clock.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    shared: Arc<BreakerShared>,
}

#[derive(Debug)]
struct BreakerShared {
    failure_threshold: u32,
    recovery_timeout: Duration,
    half_open_trials: u32,
    phase: Mutex<Phase>,
}

/// Permission for one attempt through a breaker. Dropped without an outcome (the attempt was
/// cancelled), it gives its trial slot back without counting either way.
#[derive(Debug)]
pub(crate) struct BreakerPermit {
    breaker: CircuitBreaker,
    trial: bool,
    recorded: bool,
}

impl CircuitBreaker {
    /// A closed breaker. Thresholds of zero are raised to one.
    pub fn new(failure_threshold: u32, recovery_timeout: Duration, half_open_trials: u32) -> Self {
        Self {
            shared: Arc::new(BreakerShared {
                failure_threshold: failure_threshold.max(1),
                recovery_timeout,
                half_open_trials: half_open_trials.max(1),
                phase: Mutex::new(Phase::Closed { failures: 0 }),
            }),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.shared
            .phase
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn same(&self, other: &CircuitBreaker) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Where it stands now.
    pub fn state(&self) -> BreakerState {
        match &*self.phase() {
            Phase::Closed { failures } => BreakerState::Closed {
                failures: *failures,
            },
            Phase::Open { until } if Instant::now() < *until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Lets an attempt through, or says how long until the breaker half-opens.
    pub(crate) fn try_acquire(&self) -> Result<BreakerPermit, Duration> {
        let now = Instant::now();
        let mut phase = self.phase();
        if let Phase::Open { until } = *phase {
            if now < until {
                return Err(until - now);
            }
            *phase = Phase::HalfOpen {
                in_flight: 0,
                successes: 0,
            };
        }
        let trial = match &mut *phase {
            Phase::Closed { .. } => false,
            Phase::HalfOpen { in_flight, .. } => {
                if *in_flight >= self.shared.half_open_trials {
                    // Every trial slot is taken: fail fast as if open, for one recovery period.
                    return Err(self.shared.recovery_timeout);
                }
                *in_flight += 1;
                true
            }
            Phase::Open { until } => return Err(until.saturating_duration_since(now)),
        };
        Ok(BreakerPermit {
            breaker: self.clone(),
            trial,
            recorded: false,
        })
    }

    fn record(&self, trial: bool, success: bool) {
        let mut phase = self.phase();
        let reopen = || {
            let now = Instant::now();
            // A recovery too long for the clock keeps it open for a very long time instead.
            let until = now
                .checked_add(self.shared.recovery_timeout)
                .unwrap_or(now + FOREVER);
            Phase::Open { until }
        };
        *phase = match (&*phase, success) {
            (Phase::Closed { .. }, true) => Phase::Closed { failures: 0 },
            (Phase::Closed { failures }, false)
                if failures + 1 >= self.shared.failure_threshold =>
            {
                reopen()
            }
            (Phase::Closed { failures }, false) => Phase::Closed {
                failures: failures + 1,
            },
            (
                Phase::HalfOpen {
                    in_flight,
                    successes,
                },
                true,
            ) if trial => {
                if successes + 1 >= self.shared.half_open_trials {
                    Phase::Closed { failures: 0 }
                } else {
                    Phase::HalfOpen {
                        in_flight: in_flight.saturating_sub(1),
                        successes: successes + 1,
                    }
                }
            }
            (Phase::HalfOpen { .. }, false) if trial => reopen(),
            // An attempt let through before the breaker opened: it no longer decides anything.
            (
                Phase::HalfOpen {
                    in_flight,
                    successes,
                },
                _,
            ) => Phase::HalfOpen {
                in_flight: *in_flight,
                successes: *successes,
            },
            (Phase::Open { until }, _) => Phase::Open { until: *until },
        };
    }

    fn release_trial(&self) {
        if let Phase::HalfOpen { in_flight, .. } = &mut *self.phase() {
            *in_flight = in_flight.saturating_sub(1);
        }
    }
}

impl BreakerPermit {
    /// Records the attempt's outcome.
    pub(crate) fn record(mut self, success: bool) {
        self.recorded = true;
        self.breaker.record(self.trial, success);
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.recorded && self.trial {
            self.breaker.release_trial();
        }
    }
}

/// A bulkhead: at most `max_concurrent` attempts of the states that share it run at once, at
/// most `max_queued` more wait for a place, and any beyond that fail fast with
/// `FlowError::BulkheadFull`. Shareable by several states, runs and agents.
///
/// A bulkhead is one of the scheduler's admission gates (like a semaphore with a bounded
/// queue): a state waits for its place before its attempt starts, holding no slot, and the
/// state's timeout covers the call only. Its circuit breaker is asked first; a full bulkhead
/// says nothing about the service behind the breaker, so the breaker's permission goes back
/// unrecorded.
#[derive(Clone)]
pub struct Bulkhead {
    pub(crate) engine: Arc<Engine>,
}

impl Bulkhead {
    /// A bulkhead named `name` (for errors and reports). `max_concurrent` is raised to one.
    pub fn new(name: impl Into<String>, max_concurrent: usize, max_queued: usize) -> Self {
        let name = name.into();
        let places = u64::try_from(max_concurrent.max(1)).unwrap_or(u64::MAX);
        Self {
            engine: Arc::new(
                Engine::new(PrimitiveKind::Bulkhead, &name, places, None, None)
                    .with_queue_limit(max_queued),
            ),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.engine.name
    }

    /// Attempts inside now.
    pub fn in_use(&self) -> usize {
        usize::try_from(self.engine.used()).unwrap_or(usize::MAX)
    }

    /// Attempts waiting for a place now.
    pub fn queued(&self) -> usize {
        self.engine.waiting()
    }
}

impl std::fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.engine.describe())
    }
}
