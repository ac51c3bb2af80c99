//! Circuit breakers and bulkheads: protection for the services states call.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

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
/// `FlowError::BulkheadFull`. Shareable by several states, runs and agents. Waiting for a place
/// happens inside the state's attempt (its status is `Running`), but the state's timeout does
/// not count while it waits: it covers the call, from the moment the attempt has a place.
#[derive(Debug, Clone)]
pub struct Bulkhead {
    shared: Arc<BulkheadShared>,
}

#[derive(Debug)]
struct BulkheadShared {
    name: String,
    max_concurrent: usize,
    max_queued: usize,
    places: Arc<Semaphore>,
    queued: AtomicUsize,
}

/// Why an attempt could not enter a bulkhead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BulkheadFull {
    pub(crate) name: String,
    pub(crate) max_concurrent: usize,
    pub(crate) max_queued: usize,
}

impl Bulkhead {
    /// A bulkhead named `name` (for errors and reports). `max_concurrent` is raised to one.
    pub fn new(name: impl Into<String>, max_concurrent: usize, max_queued: usize) -> Self {
        let max_concurrent = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            shared: Arc::new(BulkheadShared {
                name: name.into(),
                max_concurrent,
                max_queued,
                places: Arc::new(Semaphore::new(max_concurrent)),
                queued: AtomicUsize::new(0),
            }),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Attempts inside now.
    pub fn in_use(&self) -> usize {
        self.shared.max_concurrent - self.shared.places.available_permits()
    }

    /// Attempts waiting for a place now.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Waits for a place (released when the permit is dropped), or fails at once when the
    /// queue is full.
    pub(crate) async fn enter(&self) -> Result<OwnedSemaphorePermit, BulkheadFull> {
        let places = Arc::clone(&self.shared.places);
        if let Ok(permit) = Arc::clone(&places).try_acquire_owned() {
            return Ok(permit);
        }
        let full = || BulkheadFull {
            name: self.shared.name.clone(),
            max_concurrent: self.shared.max_concurrent,
            max_queued: self.shared.max_queued,
        };
        if self.shared.queued.fetch_add(1, Ordering::AcqRel) >= self.shared.max_queued {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(full());
        }
        // Leaves the queue however the wait ends, also when the attempt is aborted.
        let _in_queue = QueueSlot(&self.shared.queued);
        // The semaphore is never closed.
        places.acquire_owned().await.map_err(|_| full())
    }
}

struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
