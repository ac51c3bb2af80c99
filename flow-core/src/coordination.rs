//! Coordination declared on states: rate limits (and, as they come, the other primitives),
//! as plain data the macros write at compile time and the runtime builds from.

use std::fmt;
use std::time::Duration;

/// About thirty years: the longest interval or window a rate limit takes.
pub const LONGEST_RATE_PERIOD: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// A rate limit's strategy and values (see `RateLimit` in the runtime for their meaning).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateLimitSpec {
    /// `burst` at once from a full bucket, refilled at `rate` per second.
    TokenBucket {
        /// Tokens per second.
        rate: f64,
        /// Bucket size.
        burst: u32,
    },
    /// One every `1 / rate` seconds; at most `capacity` waiting.
    LeakyBucket {
        /// Admissions per second.
        rate: f64,
        /// Acquisitions that may wait.
        capacity: u32,
    },
    /// `max` per window, windows back to back.
    FixedWindow {
        /// Admissions per window.
        max: u32,
        /// The window's length.
        window: Duration,
    },
    /// At most `max` in any interval of length `window`.
    SlidingWindow {
        /// Admissions per window.
        max: u32,
        /// The window's length.
        window: Duration,
    },
}

impl RateLimitSpec {
    /// Why these values cannot work, if they cannot (the same rule for the builder, at run
    /// time, and for the macros, at compile time).
    pub fn problem(&self) -> Option<&'static str> {
        match *self {
            RateLimitSpec::TokenBucket { rate, burst } => rate_problem(rate)
                .or_else(|| (burst == 0).then_some("a burst of 0 admits nothing; use 1 or more")),
            RateLimitSpec::LeakyBucket { rate, capacity } => rate_problem(rate).or_else(|| {
                (capacity == 0).then_some("a capacity of 0 lets no acquisition wait; use 1 or more")
            }),
            RateLimitSpec::FixedWindow { max, window }
            | RateLimitSpec::SlidingWindow { max, window } => {
                if max == 0 {
                    Some("a max of 0 admits nothing; use 1 or more")
                } else if window.is_zero() || window > LONGEST_RATE_PERIOD {
                    Some("the window must be a positive duration of at most thirty years")
                } else {
                    None
                }
            }
        }
    }

    /// The interval between two admissions at the steady rate (token and leaky buckets).
    pub fn interval(&self) -> Option<Duration> {
        match *self {
            RateLimitSpec::TokenBucket { rate, .. } | RateLimitSpec::LeakyBucket { rate, .. } => {
                Duration::try_from_secs_f64(1.0 / rate).ok()
            }
            _ => None,
        }
    }
}

fn rate_problem(rate: f64) -> Option<&'static str> {
    if !(rate.is_finite() && rate > 0.0) {
        return Some("the rate must be a positive number of acquisitions per second");
    }
    match Duration::try_from_secs_f64(1.0 / rate) {
        Ok(interval) if interval >= Duration::from_nanos(1) && interval <= LONGEST_RATE_PERIOD => {
            None
        }
        _ => Some(
            "the rate is out of range: use between one per thirty years and a billion per second",
        ),
    }
}

impl fmt::Display for RateLimitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateLimitSpec::TokenBucket { rate, burst } => {
                write!(f, "token_bucket(rate = {rate}, burst = {burst})")
            }
            RateLimitSpec::LeakyBucket { rate, capacity } => {
                write!(f, "leaky_bucket(rate = {rate}, capacity = {capacity})")
            }
            RateLimitSpec::FixedWindow { max, window } => {
                write!(f, "fixed_window(max = {max}, window = {window:?})")
            }
            RateLimitSpec::SlidingWindow { max, window } => {
                write!(f, "sliding_window(max = {max}, window = {window:?})")
            }
        }
    }
}

/// A coordination primitive declared on a state with `#[state(...)]`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum CoordinationDecl {
    /// `rate_limit(strategy(..), name = "..")`: states of one workflow naming the same limit
    /// share it; an unnamed limit is the state's own.
    RateLimit {
        /// The shared name, if any.
        name: Option<&'static str>,
        /// Strategy and values.
        limit: RateLimitSpec,
    },
    /// `semaphore(name = "..", permits = N)`: shared by the states naming it; each start
    /// takes `take` permits (1 unless `take = ..`).
    Semaphore {
        /// Its name.
        name: &'static str,
        /// Its permits.
        permits: u32,
        /// Permits the state takes.
        take: u32,
    },
    /// `mutex = ".."` or `mutex(name = "..", ttl = "..")`.
    Mutex {
        /// Its name.
        name: &'static str,
        /// How long one hold may last.
        ttl: Option<Duration>,
    },
    /// `lease(name = "..", ttl = "..")`.
    Lease {
        /// Its name.
        name: &'static str,
        /// How long one hold may last.
        ttl: Duration,
    },
    /// `barrier(name = "..", parties = N, timeout = "..")`.
    Barrier {
        /// Its name.
        name: &'static str,
        /// Arrivals that complete a round.
        parties: u32,
        /// How long a round may take from its first arrival.
        timeout: Duration,
    },
    /// `quota(name = "..", limit = .., reset = "..", amount = ..)`.
    Quota {
        /// Its name.
        name: &'static str,
        /// What may be consumed per period (or in all).
        limit: f64,
        /// The period, if it resets.
        reset_every: Option<Duration>,
        /// What each start consumes.
        amount: f64,
    },
}
