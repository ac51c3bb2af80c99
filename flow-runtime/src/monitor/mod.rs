//! Metrics computed from runs' events: a [`Monitor`] is attached to agents, each of their
//! runs folds its own events into a recorder (no lock, no channel), and hands them to the
//! monitor's totals in batches. A run of an agent no monitor watches pays one atomic load.

mod aggregate;
#[cfg(feature = "metrics")]
mod export;
mod histogram;
mod recorder;
mod snapshot;

use std::ops::BitOr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use flow_core::FlowError;
use futures_core::Stream;
use tokio::task::AbortHandle;

use crate::agent::{Agent, Compiled};
use crate::probe::{Probe, RunProbe};
use crate::resources::ResourcePool;
use aggregate::Aggregate;
#[cfg(feature = "metrics")]
pub use export::MetricsExporter;
use recorder::Recorder;
pub use snapshot::{
    BlockedOn, Concurrency, DependencyChain, InputMetrics, PoolMetrics, ResourceMetrics,
    RunOutcomes, Snapshot, StateMetrics, Summary, Throughput, WorkflowMetrics,
};

/// Which metrics a [`Monitor`] keeps; combine with `|`. Counts of runs and states are always
/// kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MetricType(u32);

impl MetricType {
    /// Durations of states and runs, and how long states waited from ready to started.
    pub const TIMING: Self = Self(1);
    /// States and runs per second, over a window and overall.
    pub const THROUGHPUT: Self = Self(1 << 1);
    /// States running and queued now, and the peak.
    pub const STATE: Self = Self(1 << 2);
    /// Failures by kind.
    pub const ERRORS: Self = Self(1 << 3);
    /// Input requests: made, answered, refused, timed out, and how long answers took.
    pub const INPUT: Self = Self(1 << 4);
    /// The resource pools the agents draw from: capacity, in use, peak, utilisation over time.
    pub const RESOURCES: Self = Self(1 << 5);
    /// Everything above.
    pub const ALL: Self = Self(0b11_1111);

    /// Whether every metric of `other` is in this set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for MetricType {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// How long the throughput window is unless set with [`Monitor::window`]: 10 s.
pub const DEFAULT_THROUGHPUT_WINDOW: Duration = Duration::from_secs(10);

/// Watches the runs of one or several agents and keeps their metrics: counts by outcome
/// (retries apart from final failures), duration and queue-wait histograms (p50, p95, p99),
/// throughput, concurrency, failures by kind, dependency waits, input waits. Aggregated across
/// runs; clones share one monitor; dropping the last clone stops it.
///
/// Each run folds its own events as they happen, on its own coordinator and without a lock,
/// and hands the monitor what it gathered before it waits for anything, every thousand or so
/// events of a run that never waits, and when it ends: a snapshot taken after
/// [`RunHandle::wait`](crate::RunHandle::wait) returns counts the whole run. Times are the
/// events' own, on tokio's clock, so the paused clock gives exact figures.
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

struct Inner {
    totals: Arc<Mutex<Aggregate>>,
    /// The pools of the agents watched, with their names.
    pools: Mutex<Vec<(ResourcePool, Vec<String>)>>,
}

impl Probe for Inner {
    fn open(&self, compiled: &Arc<Compiled>) -> Box<dyn RunProbe> {
        Box::new(Recorder::new(
            Arc::clone(compiled),
            Arc::clone(&self.totals),
        ))
    }
}

impl Monitor {
    /// A monitor keeping `types` of metrics.
    pub fn new(types: MetricType) -> Self {
        Self {
            inner: Arc::new(Inner {
                totals: Arc::new(Mutex::new(Aggregate::new(types, DEFAULT_THROUGHPUT_WINDOW))),
                pools: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The throughput window (default [`DEFAULT_THROUGHPUT_WINDOW`]); set it before
    /// attaching: it forgets what it saw.
    pub fn window(self, window: Duration) -> Self {
        self.totals()
            .set_window(window.max(Duration::from_millis(1)));
        self
    }

    fn totals(&self) -> MutexGuard<'_, Aggregate> {
        self.inner
            .totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches every run `agent` (or a clone of it) starts from now on; attaching twice
    /// counts once. Fails only if the agent's definition is invalid.
    pub fn attach(&self, agent: &Agent) -> Result<(), FlowError> {
        if let Some(pool) = agent.compiled()?.pool.clone() {
            let workflow = agent.name().to_owned();
            let mut pools = self
                .inner
                .pools
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match pools.iter_mut().find(|(known, _)| known.same(&pool)) {
                Some((_, names)) if !names.contains(&workflow) => names.push(workflow),
                Some(_) => {}
                None => pools.push((pool, vec![workflow])),
            }
        }
        let inner: Arc<dyn Probe> = self.inner.clone();
        agent.probes().add(Arc::downgrade(&inner));
        Ok(())
    }

    /// The metrics now.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = self.totals().snapshot(tokio::time::Instant::now());
        if self.totals().types().contains(MetricType::RESOURCES) {
            let pools = self
                .inner
                .pools
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            snapshot.pools = Some(
                pools
                    .iter()
                    .map(|(pool, workflows)| PoolMetrics {
                        workflows: workflows.clone(),
                        kinds: pool
                            .usage_stats()
                            .into_iter()
                            .filter(|usage| usage.capacity > 0.0)
                            .map(|usage| ResourceMetrics {
                                kind: format!("{:?}", usage.kind).to_lowercase(),
                                capacity: usage.capacity,
                                in_use: usage.in_use,
                                peak: usage.peak,
                                utilisation: usage.utilisation,
                                grants: usage.grants,
                                waits: usage.waits,
                            })
                            .collect(),
                    })
                    .collect(),
            );
        }
        snapshot
    }

    /// Forgets everything seen so far; keeps watching.
    pub fn reset(&self) {
        self.totals().reset();
    }

    /// A snapshot every `every` (the first at once), as a `Stream`; it ends only when
    /// dropped. Ticks on tokio's clock (the paused clock works); a consumer slower than
    /// `every` gets the latest snapshot when it asks, not a backlog.
    pub fn subscribe(&self, every: Duration) -> MonitorUpdates {
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        MonitorUpdates {
            monitor: self.clone(),
            ticks,
        }
    }

    /// Calls `update` with a snapshot every `every` until the returned guard is dropped.
    pub fn on_update(
        &self,
        every: Duration,
        mut update: impl FnMut(Snapshot) + Send + 'static,
    ) -> Result<UpdateGuard, FlowError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| FlowError::NoRuntime {
            agent: "(a monitor's update callback)".into(),
        })?;
        let mut updates = self.subscribe(every);
        let task = runtime.spawn(async move {
            while let Some(snapshot) = updates.next().await {
                update(snapshot);
            }
        });
        Ok(UpdateGuard(task.abort_handle()))
    }
}

/// Snapshots at an interval (see [`Monitor::subscribe`]).
pub struct MonitorUpdates {
    monitor: Monitor,
    ticks: tokio::time::Interval,
}

impl MonitorUpdates {
    /// The next snapshot, at the next tick.
    pub async fn next(&mut self) -> Option<Snapshot> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for MonitorUpdates {
    type Item = Snapshot;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Snapshot>> {
        match self.ticks.poll_tick(cx) {
            Poll::Ready(_) => Poll::Ready(Some(self.monitor.snapshot())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Stops a [`Monitor::on_update`] callback when dropped.
pub struct UpdateGuard(AbortHandle);

impl Drop for UpdateGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
