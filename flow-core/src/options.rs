//! Per-state options shared by the macros (which parse, validate and record them in a
//! workflow's [`crate::WorkflowSpec`]) and the runtime (which acts on them): resources, retry
//! policies, dependency kinds and lifecycles, durations.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a state needs from the resource pool to start: the runtime starts the state only when
/// its pool can grant all of it at once, and takes it back when the attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ResourceRequirements {
    /// CPU cores (fractions allowed).
    pub cpu: f64,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// I/O weight.
    pub io: f64,
    /// Network weight.
    pub network: f64,
    /// GPU units.
    pub gpu: f64,
}

impl ResourceRequirements {
    /// Nothing requested.
    pub const NONE: Self = Self {
        cpu: 0.0,
        memory_mb: 0,
        io: 0.0,
        network: 0.0,
        gpu: 0.0,
    };
}

impl Default for ResourceRequirements {
    fn default() -> Self {
        Self::NONE
    }
}

/// How a failing state is retried.
///
/// Total attempts = `1 + max_retries`. The delay before retry `k` (0 for the first retry) is
/// `min(initial_delay × exponential_base^k, max_delay)`, then randomised by `jitter`. The delay
/// is a pure function of the policy, `k` and a seed (see [`RetryPolicy::delay`]), so a run
/// restored from a checkpoint continues the same schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt (total attempts = 1 + this).
    pub max_retries: u32,
    /// Delay before the first retry.
    pub initial_delay: Duration,
    /// The longest delay between attempts.
    pub max_delay: Duration,
    /// Growth factor of the delay per retry.
    pub exponential_base: f64,
    /// How delays are randomised, so that many failing states do not retry in lockstep.
    pub jitter: Jitter,
    /// Which failures are retried (default [`RetryOn::ALL`]); the others are final at once.
    #[serde(default = "RetryOn::all")]
    pub on: RetryOn,
}

/// Which failures of an attempt a [`RetryPolicy`] retries; combine with `|`. A dependency's
/// failure is never retried (the dependency would have to run again, not the state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RetryOn(u8);

impl RetryOn {
    /// The state returned an error.
    pub const ERROR: Self = Self(1);
    /// The state panicked.
    pub const PANIC: Self = Self(1 << 1);
    /// The attempt ran past its timeout, or an input request of it was not answered in time.
    pub const TIMEOUT: Self = Self(1 << 2);
    /// The attempt was refused before the state was called: its circuit breaker was open, its
    /// bulkhead full, a rate limit or coordination primitive refused it, or it waited too long
    /// for the resource pool or an admission gate.
    pub const REFUSED: Self = Self(1 << 3);
    /// Every failure above.
    pub const ALL: Self = Self(0b1111);
    /// No failure: nothing is retried.
    pub const NOTHING: Self = Self(0);

    fn all() -> Self {
        Self::ALL
    }

    /// Whether every failure of `other` is in this set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets together.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The set a name stands for in `retry(on = [..])`: `error`, `panic`, `timeout`,
    /// `refused`.
    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "error" => Self::ERROR,
            "panic" => Self::PANIC,
            "timeout" => Self::TIMEOUT,
            "refused" => Self::REFUSED,
            _ => return None,
        })
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        self.union(other)
    }
}

/// Randomisation of retry delays.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// The computed delay exactly.
    None,
    /// "Full jitter": uniformly between zero and the computed delay.
    Full,
    /// Uniformly between `(1 − ratio) ×` the computed delay and the computed delay; `ratio` is
    /// clamped to `0.0..=1.0`.
    Bounded(f64),
}

impl RetryPolicy {
    /// The most retries a policy may ask for.
    pub const MAX_RETRIES: u32 = 1000;

    /// What is wrong with this policy, if anything: more than [`Self::MAX_RETRIES`] retries,
    /// or a growth factor below 1 or not finite. The same rules as `#[state(retry(..))]`
    /// checks at compile time; the builder checks them when the definition is validated.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_retries > Self::MAX_RETRIES {
            problems.push(format!(
                "`max_retries` is {}; at most {} are allowed",
                self.max_retries,
                Self::MAX_RETRIES
            ));
        }
        if !(self.exponential_base >= 1.0 && self.exponential_base.is_finite()) {
            problems.push(format!(
                "`exponential_base` must be at least 1.0 (the delay never shrinks), not {}",
                self.exponential_base
            ));
        }
        problems
    }

    /// Defaults: 3 retries, 100 ms doubling up to 30 s, no jitter.
    pub const DEFAULT: Self = Self {
        max_retries: 3,
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(30),
        exponential_base: 2.0,
        jitter: Jitter::None,
        on: RetryOn::ALL,
    };

    /// No retries: the first failure is final.
    pub const NONE: Self = Self {
        max_retries: 0,
        ..Self::DEFAULT
    };

    /// The delay before retry `retry` (0 for the first retry). `seed` picks the random part
    /// of a jittered delay: the same seed and retry give the same delay.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flow_core::{Jitter, RetryPolicy};
    /// let policy = RetryPolicy { max_delay: Duration::from_millis(500), ..RetryPolicy::DEFAULT };
    /// let delays: Vec<_> = (0..4).map(|k| policy.delay(k, 0).as_millis()).collect();
    /// assert_eq!(delays, [100, 200, 400, 500]);
    /// let full = RetryPolicy { jitter: Jitter::Full, ..policy };
    /// assert!(full.delay(2, 7) <= Duration::from_millis(400));
    /// assert_eq!(full.delay(2, 7), full.delay(2, 7));
    /// ```
    pub fn delay(&self, retry: u32, seed: u64) -> Duration {
        let initial = self.initial_delay.as_secs_f64();
        let ceiling = self.max_delay.as_secs_f64();
        let exponent = i32::try_from(retry).unwrap_or(i32::MAX);
        let grown = initial * self.exponential_base.max(1.0).powi(exponent);
        let base = if grown.is_finite() {
            grown.min(ceiling)
        } else {
            ceiling
        };
        let factor = match self.jitter {
            Jitter::None => 1.0,
            Jitter::Full => unit_interval(seed, retry),
            Jitter::Bounded(ratio) => {
                let ratio = ratio.clamp(0.0, 1.0);
                1.0 - ratio * unit_interval(seed, retry)
            }
        };
        Duration::try_from_secs_f64(base * factor).unwrap_or(self.max_delay)
    }
}

/// A number in `[0, 1)` from a seed and a retry number (splitmix64).
fn unit_interval(seed: u64, retry: u32) -> f64 {
    let mut z = seed ^ (u64::from(retry).wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How a state (the *dependent*) depends on another (its *dependency*).
///
/// The runtime's `DependencyConfig` documents exactly when each kind lets the dependent start;
/// in short:
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyType {
    /// Waits until the dependency has completed in this run (and the completion still counts
    /// under the lifecycle). If the dependency fails, or nothing left in the run can run it,
    /// the dependent fails with an error naming both. A state with required dependencies that
    /// no transition leads to starts by itself once they are satisfied.
    Required,
    /// Waits only while the dependency is scheduled or running; otherwise goes ahead.
    Optional,
    /// Does not wait: when the dependent starts, the dependency is started alongside it,
    /// unless it is already scheduled or its last completion still counts.
    Parallel,
    /// Runs after the dependency if the dependency runs: waits while it is scheduled or
    /// running, and, when it has not run (no completion that counts under the lifecycle, no
    /// failed run), until nothing else in the run is left that could start it.
    Sequential,
}

impl DependencyType {
    /// The kind's name as written in `deps(...)`: `required`, `optional`, `parallel`,
    /// `sequential`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Optional => "optional",
            Self::Parallel => "parallel",
            Self::Sequential => "sequential",
        }
    }
}

/// Whether a completed dependency still counts for its dependent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyLifecycle {
    /// One completion counts for the rest of the run.
    #[default]
    Once,
    /// Each run of the dependent needs a completion newer than the dependent's previous start.
    Always,
    /// A completion counts for the dependency's `interval`; when it is older, the dependency
    /// is run again first (for a required or parallel dependency) and the dependent waits for
    /// that fresh completion.
    Periodic,
}

/// What is wrong with a dependency's options, each problem a sentence that says what to do
/// (the caller names the dependency before it); empty when nothing is. Shared by the builder's
/// validation and the macros' compile errors.
pub fn dependency_problems(
    kind: DependencyType,
    lifecycle: DependencyLifecycle,
    interval: Option<Duration>,
    expiry: Option<Duration>,
    timeout: Option<Duration>,
    has_condition: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    match (lifecycle, interval) {
        (DependencyLifecycle::Periodic, None) => problems
            .push("is periodic but has no `interval`; say how long a completion counts".into()),
        (DependencyLifecycle::Periodic, Some(Duration::ZERO)) => {
            problems.push("has a zero `interval`; use a positive duration".into())
        }
        (DependencyLifecycle::Once | DependencyLifecycle::Always, Some(_)) => problems.push(
            "has an `interval` but is not periodic; make it periodic or drop the interval".into(),
        ),
        _ => {}
    }
    for (name, value) in [("expiry", expiry), ("timeout", timeout)] {
        if value == Some(Duration::ZERO) {
            problems.push(format!(
                "has a zero `{name}`; use a positive duration or none"
            ));
        }
    }
    if kind == DependencyType::Optional
        && (lifecycle != DependencyLifecycle::Once || expiry.is_some())
    {
        problems.push(
            "is optional: it waits only while the dependency is scheduled or running, so its completions do not matter and `always`, `periodic` and `expiry` would do nothing; remove them".into(),
        );
    }
    if kind == DependencyType::Parallel && timeout.is_some() && !has_condition {
        problems.push(
            "is parallel without a condition: it never waits, so its `timeout` would never fire; remove the timeout or add a condition".into(),
        );
    }
    problems
}

/// Parses a duration written as a number and a unit, or several such parts: `"250ms"`,
/// `"30s"`, `"5m"`, `"1h30m"`, `"1.5s"`. Units: `ns`, `us`, `ms`, `s`, `m`, `h`, `d`.
///
/// ```
/// use std::time::Duration;
/// use flow_core::parse_duration;
/// assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert!(parse_duration("30 parsecs").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("an empty duration; write it like \"30s\", \"250ms\" or \"1h30m\"".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let value: f64 = number.parse().map_err(|_| {
            if number.is_empty() {
                format!("`{text}` is not a duration: it must start with a number; write it like \"30s\", \"250ms\" or \"1h30m\"")
            } else {
                format!("`{text}` is not a duration: `{number}` is not a number; write it like \"30s\", \"250ms\" or \"1h30m\"")
            }
        })?;
        let seconds = match unit.trim() {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "" => {
                return Err(format!(
                    "`{text}` has no unit; add one of ns, us, ms, s, m, h, d (as in \"{number}s\")"
                ));
            }
            other => {
                return Err(format!(
                    "`{text}` has an unknown unit `{other}`; use one of ns, us, ms, s, m, h, d"
                ));
            }
        };
        let part = Duration::try_from_secs_f64(value * seconds)
            .map_err(|_| format!("`{text}` is too long a duration"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("`{text}` is too long a duration"))?;
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_cap_and_jitter_within_bounds() {
        let policy = RetryPolicy {
            max_retries: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            exponential_base: 3.0,
            jitter: Jitter::None,
            on: RetryOn::ALL,
        };
        let ms = |p: &RetryPolicy, k| p.delay(k, 42).as_millis();
        assert_eq!(
            (0..5).map(|k| ms(&policy, k)).collect::<Vec<_>>(),
            [100, 300, 900, 1000, 1000]
        );
        assert_eq!(
            policy.delay(10_000, 0),
            Duration::from_secs(1),
            "huge exponents are capped"
        );
        let bounded = RetryPolicy {
            jitter: Jitter::Bounded(0.2),
            ..policy
        };
        for seed in 0..200 {
            let d = bounded.delay(1, seed).as_secs_f64();
            assert!((0.24..=0.3).contains(&d), "{d}");
        }
        let full = RetryPolicy {
            jitter: Jitter::Full,
            ..policy
        };
        let spread: Vec<u128> = (0..50)
            .map(|seed| full.delay(1, seed).as_millis())
            .collect();
        assert!(spread.iter().all(|&d| d <= 300));
        assert!(
            spread.iter().any(|&d| d < 150) && spread.iter().any(|&d| d > 150),
            "{spread:?}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m10s"), Ok(Duration::from_secs(130)));
        assert_eq!(parse_duration("10us"), Ok(Duration::from_micros(10)));
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(
            parse_duration("10 fortnights")
                .unwrap_err()
                .contains("unknown unit `fortnights`")
        );
        assert!(
            parse_duration("abc")
                .unwrap_err()
                .contains("must start with a number")
        );
        assert!(
            parse_duration("1..5s")
                .unwrap_err()
                .contains("`1..5` is not a number")
        );
    }
}
