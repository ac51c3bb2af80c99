//! Per-state options whose runtime features are built by later issues. They are part of the
//! vocabulary now so that the macros can parse, validate and record them in a workflow's
//! [`crate::WorkflowSpec`]; the runtime does not act on them yet (each type says so).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a state needs from the resource pool to start.
///
/// **Recorded, not yet enforced:** the resource-aware scheduler is a later issue; until then
/// these values are validated and kept in the workflow's graph only.
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
/// **Recorded, not yet enforced:** retries are a later issue; until then a failing state fails
/// the run on its first attempt.
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
    /// Whether delays are randomised.
    pub jitter: bool,
}

impl RetryPolicy {
    /// The most retries a policy may ask for.
    pub const MAX_RETRIES: u32 = 1000;

    /// Defaults: 3 retries, 100 ms doubling up to 30 s, no jitter.
    pub const DEFAULT: Self = Self {
        max_retries: 3,
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(30),
        exponential_base: 2.0,
        jitter: false,
    };
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How a state depends on another.
///
/// **Recorded, not yet enforced:** dependency scheduling is a later issue; until then
/// dependencies are validated (unknown states, cycles of required ones) and kept in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyType {
    /// Waits until the dependency completed in this run.
    Required,
    /// Waits only while the dependency is scheduled or running.
    Optional,
    /// Starts together with the dependency.
    Parallel,
    /// Runs after the dependency, if it runs.
    Sequential,
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
            format!("`{text}` is not a duration: `{number}` is not a number; write it like \"30s\", \"250ms\" or \"1h30m\"")
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
        assert!(parse_duration("abc").unwrap_err().contains("not a number"));
    }
}
