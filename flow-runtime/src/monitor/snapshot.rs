//! What a [`Monitor`](super::Monitor) reports: plain serde data.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Everything a monitor has seen, aggregated across the runs of the agents it watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// By workflow (agent name).
    pub workflows: BTreeMap<String, WorkflowMetrics>,
    /// The resource pools of the agents watched (with `MetricType::RESOURCES`).
    pub pools: Option<Vec<PoolMetrics>>,
}

/// One resource pool, as the monitor reads it when the snapshot is taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolMetrics {
    /// The workflows watched that draw from it.
    pub workflows: Vec<String>,
    /// Each kind the pool has some of.
    pub kinds: Vec<ResourceMetrics>,
}

/// One kind of resource in a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceMetrics {
    /// `cpu`, `memory_mb`, `io`, `network` or `gpu`.
    pub kind: String,
    /// The pool's total.
    pub capacity: f64,
    /// Held now.
    pub in_use: f64,
    /// The most held at once.
    pub peak: f64,
    /// The share of the capacity held on average since the pool's first grant (0 to 1).
    pub utilisation: f64,
    /// Grants that included this kind.
    pub grants: u64,
    /// Times a state had to wait for this kind.
    pub waits: u64,
}

/// One workflow's metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowMetrics {
    /// Runs by outcome.
    pub runs: RunOutcomes,
    /// How long runs took, start to end (with `MetricType::TIMING`).
    pub run_duration: Option<Summary>,
    /// How long completed attempts of all its states ran (with `MetricType::TIMING`).
    pub state_duration: Option<Summary>,
    /// By state.
    pub states: BTreeMap<String, StateMetrics>,
    /// States and runs per second (with `MetricType::THROUGHPUT`).
    pub throughput: Option<Throughput>,
    /// States running now, and the most at once (with `MetricType::STATE`).
    pub concurrency: Option<Concurrency>,
    /// Failures by kind (with `MetricType::ERRORS`).
    pub errors: Option<BTreeMap<String, u64>>,
    /// The longest chain of required dependencies a run of it resolved (with
    /// `MetricType::TIMING`; `None` until one state has waited for another).
    pub longest_dependency_chain: Option<DependencyChain>,
}

/// Runs by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutcomes {
    /// Runs started.
    pub started: u64,
    /// Runs that completed.
    pub completed: u64,
    /// Runs that failed.
    pub failed: u64,
    /// Runs that were cancelled.
    pub cancelled: u64,
    /// Runs that suspended waiting for input.
    pub awaiting_input: u64,
}

/// One state's metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateMetrics {
    /// Attempts started.
    pub started: u64,
    /// Attempts that completed.
    pub completed: u64,
    /// Attempts that failed and were retried (not counted in `failed`).
    pub retried: u64,
    /// Runs that failed for good, after their retries.
    pub failed: u64,
    /// Attempts cancelled because their run stopped.
    pub cancelled: u64,
    /// How long completed attempts ran (with `MetricType::TIMING`).
    pub duration: Option<Summary>,
    /// How long attempts waited from ready to started: for a slot, the resource pool and
    /// admission gates (with `MetricType::TIMING`).
    pub queue_wait: Option<Summary>,
    /// How long the state waited blocked before it became ready: at a join for sibling
    /// branches, or on its dependencies (with `MetricType::TIMING`).
    pub blocked: Option<Summary>,
    /// Input requests (with `MetricType::INPUT`).
    pub input: Option<InputMetrics>,
    /// What released the state when it waited on its dependencies, by the dependency that
    /// completed last before it could start (the one it was held up by), with how long it
    /// waited in all (with `MetricType::TIMING`; empty for a state without dependencies).
    pub blocked_on: BTreeMap<String, BlockedOn>,
}

/// How often, and how long, a state waited for one dependency last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockedOn {
    /// Times this dependency was the last one the state waited for.
    pub times: u64,
    /// How long the state had waited by then (blocked to ready).
    pub waited: Summary,
}

/// The longest chain of required dependencies one run resolved: each state waited for the
/// one before it (`a` ← `b` ← `c`: `c` requires `b`, which requires `a`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependencyChain {
    /// How many states it links (2 for one state and its dependency).
    pub length: u32,
    /// The states, the first dependency first.
    pub states: Vec<String>,
}

/// A state's input requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputMetrics {
    /// Requests made.
    pub requested: u64,
    /// Requests answered.
    pub answered: u64,
    /// Answers refused.
    pub refused: u64,
    /// Requests that timed out.
    pub timed_out: u64,
    /// How long answered requests waited for their answer.
    pub wait: Option<Summary>,
}

/// A distribution of durations, in milliseconds.
///
/// Kept in an HDR histogram of microseconds with 2 significant digits: each figure is within
/// 1% of the exact value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// How many.
    pub count: u64,
    /// The shortest.
    pub min_ms: f64,
    /// The mean.
    pub mean_ms: f64,
    /// The median.
    pub p50_ms: f64,
    /// The 95th percentile.
    pub p95_ms: f64,
    /// The 99th percentile.
    pub p99_ms: f64,
    /// The longest.
    pub max_ms: f64,
}

/// States and runs per second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// States completed per second over the last window.
    pub states_per_s_window: f64,
    /// Runs finished per second over the last window.
    pub runs_per_s_window: f64,
    /// The window, in seconds (see `Monitor::window`).
    pub window_s: f64,
    /// States completed per second since the monitor saw its first event of this workflow.
    pub states_per_s: f64,
    /// Runs finished per second since then.
    pub runs_per_s: f64,
}

/// States running and queued.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concurrency {
    /// Running now.
    pub running: u64,
    /// The most that ran at once.
    pub peak: u64,
    /// Ready and waiting to start now (for a slot, the pool or a gate).
    pub queued: u64,
}

/// A histogram of durations in microseconds, 2 significant digits, growing with the largest
/// value recorded (a state of microseconds keeps a few hundred bytes; one of minutes a few
/// kilobytes). The first few values are kept as they are, and exact, so that the many states
/// of a large graph that run once or twice cost no histogram each.
#[derive(Default)]
pub(crate) struct Durations {
    /// The first values, until there are more than `FEW`.
    few: [u64; FEW],
    len: usize,
    /// Every value, once there were more than `FEW`.
    histogram: Option<Box<Histogram<u32>>>,
}

/// How many values are kept as they are before a histogram is built.
const FEW: usize = 4;

impl Durations {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn record(&mut self, duration: Duration) {
        // (Without `as_micros`: its 128-bit division costs more than the rest together.)
        let micros = duration
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(duration.subsec_micros()));
        self.record_micros(micros);
    }

    fn record_micros(&mut self, micros: u64) {
        let micros = micros.max(1);
        if self.histogram.is_none() && self.len < FEW {
            self.few[self.len] = micros;
            self.len += 1;
        } else {
            // (Auto-resizing: records any value; a count past u32::MAX saturates.)
            let _ = self.histogram().record(micros);
        }
    }

    /// This as a histogram, built from the few values kept until now.
    fn histogram(&mut self) -> &mut Histogram<u32> {
        let few = &self.few[..self.len];
        self.histogram.get_or_insert_with(|| {
            let mut histogram = Histogram::new(2).expect("2 significant digits are valid");
            for &value in few {
                let _ = histogram.record(value);
            }
            Box::new(histogram)
        })
    }

    /// All the values of `parts` in one.
    pub(crate) fn merged<'a>(parts: impl IntoIterator<Item = &'a Durations>) -> Self {
        let mut all = Self::new();
        for part in parts {
            match &part.histogram {
                // (Both auto-resize: adding cannot fail for want of range.)
                Some(histogram) => drop(all.histogram().add(&**histogram)),
                None => {
                    for &micros in &part.few[..part.len] {
                        all.record_micros(micros);
                    }
                }
            }
        }
        all
    }

    pub(crate) fn summary(&self) -> Option<Summary> {
        let ms = |micros: u64| micros as f64 / 1000.0;
        match &self.histogram {
            None if self.len == 0 => None,
            None => {
                let mut sorted = self.few[..self.len].to_vec();
                sorted.sort_unstable();
                // The nearest rank, as the histogram counts it.
                let at = |quantile: f64| {
                    let rank = (quantile * sorted.len() as f64).ceil() as usize;
                    ms(sorted[rank.clamp(1, sorted.len()) - 1])
                };
                Some(Summary {
                    count: sorted.len() as u64,
                    min_ms: ms(sorted[0]),
                    mean_ms: sorted.iter().sum::<u64>() as f64 / sorted.len() as f64 / 1000.0,
                    p50_ms: at(0.5),
                    p95_ms: at(0.95),
                    p99_ms: at(0.99),
                    max_ms: ms(sorted[sorted.len() - 1]),
                })
            }
            Some(h) if h.is_empty() => None,
            Some(h) => Some(Summary {
                count: h.len(),
                min_ms: ms(h.min()),
                mean_ms: h.mean() / 1000.0,
                p50_ms: ms(h.value_at_quantile(0.5)),
                p95_ms: ms(h.value_at_quantile(0.95)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                max_ms: ms(h.max()),
            }),
        }
    }
}
