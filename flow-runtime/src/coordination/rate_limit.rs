//! Rate limits: how often something may start, by one of four strategies.
//!
//! Every strategy answers the same question at an instant `now`: admitted (and counted), or
//! not before some later instant. Arithmetic is exact on tokio's clock (whole nanoseconds), so
//! a test on the paused clock sees admissions at exactly the instants the strategy defines.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use flow_core::{FlowError, LONGEST_RATE_PERIOD, RateLimitSpec};
use tokio::time::Instant;

/// A rate limit: attach it to states (`StateOptions::rate_limit`, `#[state(rate_limit(..))]`)
/// or use it directly ([`RateLimit::acquire`], [`RateLimit::try_acquire`]).
///
/// Clones share one limit: states, runs and agents given clones of one `RateLimit` draw from
/// the same budget. Time is tokio's, so a paused clock drives it in tests.
///
/// | strategy | admits |
/// |---|---|
/// | [`token_bucket(rate, burst)`](RateLimit::token_bucket) | up to `burst` at once from a full bucket, refilled at `rate` per second (GCRA: exact, no refill task) |
/// | [`leaky_bucket(rate, capacity)`](RateLimit::leaky_bucket) | one every `1 / rate` seconds, never in bursts; at most `capacity` acquisitions wait, one more is refused with [`FlowError::RateLimited`] |
/// | [`fixed_window(max, window)`](RateLimit::fixed_window) | `max` per window; windows are back to back from the first acquisition, so up to `2 × max` may pass around a window's edge |
/// | [`sliding_window(max, window)`](RateLimit::sliding_window) | at most `max` in any interval of length `window` (it keeps the last `max` admission instants) |
///
/// A limit's state lives in this process: it is not part of checkpoints (it is shared by
/// every run that uses it, so no one run's checkpoint could own it). A run restored elsewhere
/// meets the limit as that process has it.
#[derive(Clone)]
pub struct RateLimit {
    shared: Arc<Shared>,
}

struct Shared {
    name: Mutex<Arc<str>>,
    /// Named by the user (`named`), not the spec's text: a primitive shared by name.
    named: std::sync::atomic::AtomicBool,
    strategy: Strategy,
    state: Mutex<Clocked>,
}

/// A meter and the latest instant it was asked at: asks never go back in time (callers may
/// ask at the instant the limit named rather than the slightly later one their timer woke
/// at, and several callers share one limit), so each meter sees a clock that only advances.
struct Clocked {
    latest: Option<Instant>,
    meter: Meter,
}

impl Clocked {
    fn at(&mut self, now: Instant) -> Instant {
        let now = self.latest.map_or(now, |latest| latest.max(now));
        self.latest = Some(now);
        now
    }
}

#[derive(Clone, Copy)]
enum Strategy {
    /// `interval` between tokens; up to `tolerance / interval + 1` at once.
    TokenBucket {
        interval: Duration,
        tolerance: Duration,
    },
    LeakyBucket {
        interval: Duration,
        capacity: u32,
    },
    FixedWindow {
        max: u32,
        window: Duration,
    },
    SlidingWindow {
        max: u32,
        window: Duration,
    },
}

enum Meter {
    /// Theoretical arrival time of the next admission (GCRA); `None`: never used (full).
    Cell {
        next: Option<Instant>,
        waiting: u32,
    },
    Window {
        /// The start of the first window: the first admission.
        epoch: Option<Instant>,
        index: u128,
        count: u32,
    },
    Log(VecDeque<Instant>),
}

/// A refused acquisition: when to ask again.
pub(crate) struct NotBefore(pub(crate) Instant);

impl RateLimit {
    /// A token bucket holding `burst` tokens, refilled at `rate` tokens per second: from a
    /// full bucket `burst` acquisitions go at once, then one every `1 / rate` seconds.
    /// `token_bucket(10.0, 5)`: five at t = 0, then t = 100 ms, 200 ms, ...
    pub fn token_bucket(rate: f64, burst: u32) -> Result<Self, FlowError> {
        Self::from_spec(RateLimitSpec::TokenBucket { rate, burst })
    }

    /// A leaky bucket: acquisitions leave it one every `1 / rate` seconds, never in bursts;
    /// at most `capacity` may wait in it, and one more is refused at once with
    /// [`FlowError::RateLimited`] (a state's attempt fails; its retry policy applies).
    pub fn leaky_bucket(rate: f64, capacity: u32) -> Result<Self, FlowError> {
        Self::from_spec(RateLimitSpec::LeakyBucket { rate, capacity })
    }

    /// At most `max` acquisitions per window of `window`; windows follow each other from the
    /// first acquisition, and the count starts again at each.
    pub fn fixed_window(max: u32, window: Duration) -> Result<Self, FlowError> {
        Self::from_spec(RateLimitSpec::FixedWindow { max, window })
    }

    /// At most `max` acquisitions in any interval of length `window`.
    pub fn sliding_window(max: u32, window: Duration) -> Result<Self, FlowError> {
        Self::from_spec(RateLimitSpec::SlidingWindow { max, window })
    }

    /// A limit from its description (what `#[state(rate_limit(..))]` declares).
    pub fn from_spec(spec: RateLimitSpec) -> Result<Self, FlowError> {
        if let Some(reason) = spec.problem() {
            return Err(FlowError::InvalidRateLimit {
                limit: spec.to_string(),
                reason: reason.to_owned(),
            });
        }
        let strategy = match spec {
            RateLimitSpec::TokenBucket { burst, .. } => {
                let interval = spec.interval().unwrap_or(FAR);
                Strategy::TokenBucket {
                    interval,
                    // Saturating: a tolerance past thirty years is "always a token".
                    tolerance: interval.checked_mul(burst - 1).unwrap_or(Duration::MAX),
                }
            }
            RateLimitSpec::LeakyBucket { capacity, .. } => Strategy::LeakyBucket {
                interval: spec.interval().unwrap_or(FAR),
                capacity,
            },
            RateLimitSpec::FixedWindow { max, window } => Strategy::FixedWindow { max, window },
            RateLimitSpec::SlidingWindow { max, window } => Strategy::SlidingWindow { max, window },
        };
        Ok(Self::new(spec.to_string(), strategy))
    }

    fn new(name: String, strategy: Strategy) -> Self {
        let meter = match strategy {
            Strategy::TokenBucket { .. } | Strategy::LeakyBucket { .. } => Meter::Cell {
                next: None,
                waiting: 0,
            },
            Strategy::FixedWindow { .. } => Meter::Window {
                epoch: None,
                index: 0,
                count: 0,
            },
            Strategy::SlidingWindow { max, .. } => {
                Meter::Log(VecDeque::with_capacity(max.min(1024) as usize))
            }
        };
        Self {
            shared: Arc::new(Shared {
                name: Mutex::new(Arc::from(name)),
                named: std::sync::atomic::AtomicBool::new(false),
                strategy,
                state: Mutex::new(Clocked {
                    latest: None,
                    meter,
                }),
            }),
        }
    }

    /// Names the limit (for errors, `blocked()` and traces; by default it is the limit as
    /// written, e.g. `token_bucket(rate = 10, burst = 5)`). Every clone shares the name.
    pub fn named(self, name: impl Into<String>) -> Self {
        *self
            .shared
            .name
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::from(name.into());
        self.shared
            .named
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Whether it was given a name (see [`RateLimit::named`]).
    pub(crate) fn is_named(&self) -> bool {
        self.shared.named.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A token bucket's rate (per second) and burst; `None` for other algorithms.
    pub(crate) fn token_bucket_spec(&self) -> Option<(f64, u32)> {
        match self.shared.strategy {
            Strategy::TokenBucket {
                interval,
                tolerance,
            } if !interval.is_zero() => {
                let burst = tolerance.as_secs_f64() / interval.as_secs_f64() + 1.0;
                Some((1.0 / interval.as_secs_f64(), burst.round() as u32))
            }
            _ => None,
        }
    }

    /// The limit's name.
    pub fn name(&self) -> Arc<str> {
        Arc::clone(
            &self
                .shared
                .name
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Takes one admission now if the limit allows it; otherwise `Err` with the earliest
    /// instant it may (another caller may take it first).
    pub fn try_acquire(&self) -> Result<(), Instant> {
        self.try_acquire_at(Instant::now())
            .map(drop)
            .map_err(|NotBefore(at)| at)
    }

    /// Waits until the limit admits one acquisition, and takes it. Only a full leaky bucket
    /// refuses ([`FlowError::RateLimited`]); the others wait as long as it takes. Cancel-safe:
    /// dropping the future takes nothing.
    pub async fn acquire(&self) -> Result<(), FlowError> {
        let waiting = match self.try_acquire_at(Instant::now()) {
            Ok(_) => return Ok(()),
            Err(NotBefore(at)) => {
                let ticket = self.enter_wait(None)?;
                tokio::time::sleep_until(at).await;
                (ticket, at)
            }
        };
        let (_ticket, mut at) = waiting;
        loop {
            // Ask at the instant the limit named, not the later one the timer woke at (it
            // rounds to the millisecond): waiting adds no drift.
            match self.try_acquire_at(at) {
                Ok(_) => return Ok(()),
                Err(NotBefore(next)) => {
                    tokio::time::sleep_until(next).await;
                    at = next;
                }
            }
        }
    }

    fn meter(&self) -> MutexGuard<'_, Clocked> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn same(&self, other: &RateLimit) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Admits one acquisition at `now`, or says when to ask again. Returns the instant it
    /// was counted at (for [`RateLimit::refund`]).
    pub(crate) fn try_acquire_at(&self, now: Instant) -> Result<Instant, NotBefore> {
        let mut clocked = self.meter();
        let now = clocked.at(now);
        self.admit(&mut clocked.meter, now).map(|()| now)
    }

    fn admit(&self, meter: &mut Meter, now: Instant) -> Result<(), NotBefore> {
        match (self.shared.strategy, meter) {
            (
                Strategy::TokenBucket {
                    interval,
                    tolerance,
                },
                Meter::Cell { next, .. },
            ) => gcra(next, now, interval, tolerance),
            (Strategy::LeakyBucket { interval, .. }, Meter::Cell { next, .. }) => {
                gcra(next, now, interval, Duration::ZERO)
            }
            (
                Strategy::FixedWindow { max, window },
                Meter::Window {
                    epoch,
                    index,
                    count,
                },
            ) => {
                let epoch = *epoch.get_or_insert(now);
                let current = now.duration_since(epoch).as_nanos() / window.as_nanos();
                if current != *index {
                    *index = current;
                    *count = 0;
                }
                if *count < max {
                    *count += 1;
                    return Ok(());
                }
                Err(NotBefore(window_start(epoch, window, current + 1)))
            }
            (Strategy::SlidingWindow { max, window }, Meter::Log(log)) => {
                while log.front().is_some_and(|&at| at + window <= now) {
                    log.pop_front();
                }
                if log.len() < max as usize {
                    log.push_back(now);
                    return Ok(());
                }
                // Full: the oldest admission in the window leaves it first.
                Err(NotBefore(log.front().map_or(now, |&at| at + window)))
            }
            // The meter is made for the strategy in `new` and never replaced by another kind.
            _ => Ok(()),
        }
    }

    /// Gives back an admission counted at `counted` that was not used (another gate of the
    /// same state refused): the next caller may have it.
    pub(crate) fn refund(&self, counted: Instant) {
        let mut clocked = self.meter();
        let now = clocked.at(counted);
        match (self.shared.strategy, &mut clocked.meter) {
            (
                Strategy::TokenBucket { interval, .. } | Strategy::LeakyBucket { interval, .. },
                Meter::Cell {
                    next: Some(next), ..
                },
            ) => {
                // One cell less ahead; never back past the present (the bucket was full).
                *next = next.checked_sub(interval).unwrap_or(now).max(now);
            }
            (
                Strategy::FixedWindow { window, .. },
                Meter::Window {
                    epoch: Some(epoch),
                    index,
                    count,
                },
            ) => {
                // Only while the window it was counted in is still the current one.
                let counted_in =
                    counted.saturating_duration_since(*epoch).as_nanos() / window.as_nanos();
                if counted_in == *index {
                    *count = count.saturating_sub(1);
                }
            }
            (Strategy::SlidingWindow { .. }, Meter::Log(log)) => {
                // Others may have been counted since: remove this one, wherever it is.
                if let Some(at) = log.iter().rposition(|&at| at == counted) {
                    log.remove(at);
                }
            }
            _ => {}
        }
    }

    /// Counts one more acquisition waiting at a leaky bucket, or refuses it when the bucket
    /// is full. Other strategies let any number wait.
    pub(crate) fn enter_wait(&self, state: Option<&str>) -> Result<Option<WaitTicket>, FlowError> {
        let Strategy::LeakyBucket { capacity, .. } = self.shared.strategy else {
            return Ok(None);
        };
        let mut clocked = self.meter();
        let Meter::Cell { waiting, .. } = &mut clocked.meter else {
            return Ok(None);
        };
        if *waiting >= capacity {
            return Err(FlowError::RateLimited {
                state: state.map(str::to_owned),
                limit: self.name().to_string(),
                capacity,
            });
        }
        *waiting += 1;
        Ok(Some(WaitTicket {
            limit: self.clone(),
        }))
    }
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RateLimit").field(&self.name()).finish()
    }
}

/// One acquisition waiting at a leaky bucket; it stops counting when dropped.
pub(crate) struct WaitTicket {
    limit: RateLimit,
}

impl Drop for WaitTicket {
    fn drop(&mut self) {
        if let Meter::Cell { waiting, .. } = &mut self.limit.meter().meter {
            *waiting = waiting.saturating_sub(1);
        }
    }
}

/// The generic cell rate algorithm: `next` is when the next admission is due at the steady
/// rate; one is admitted if that is at most `tolerance` ahead of `now`.
fn gcra(
    next: &mut Option<Instant>,
    now: Instant,
    interval: Duration,
    tolerance: Duration,
) -> Result<(), NotBefore> {
    let due = next.unwrap_or(now).max(now);
    let ahead = due.duration_since(now);
    if ahead > tolerance {
        return Err(NotBefore(now + (ahead - tolerance)));
    }
    *next = Some(due + interval);
    Ok(())
}

/// The start of window number `index` after `epoch`.
fn window_start(epoch: Instant, window: Duration, index: u128) -> Instant {
    let nanos = window.as_nanos().saturating_mul(index);
    let offset = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
    epoch.checked_add(offset).unwrap_or(epoch + FAR)
}

/// About thirty years: "later than anything a run will see".
const FAR: Duration = LONGEST_RATE_PERIOD;
