//! Metrics computed from the event stream: a [`Monitor`] subscribes to the agents it is
//! attached to and folds their events into counts, histograms and rates; runs pay nothing for
//! it but publishing their events (one atomic load each when nobody subscribes).

mod aggregate;
#[cfg(feature = "metrics")]
mod export;
mod snapshot;

use std::ops::BitOr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use flow_core::FlowError;
use futures_core::Stream;
use tokio::task::AbortHandle;

use crate::agent::Agent;
use crate::events::EventStreamError;
use crate::resources::ResourcePool;
use aggregate::Aggregate;
#[cfg(feature = "metrics")]
pub use export::MetricsExporter;
pub use snapshot::{
    Concurrency, InputMetrics, PoolMetrics, ResourceMetrics, RunOutcomes, Snapshot, StateMetrics,
    Summary, Throughput, WorkflowMetrics,
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

/// A reader that took this many events at once pauses for `BATCH_PAUSE` before reading on.
const BATCH: usize = 256;
const BATCH_PAUSE: Duration = Duration::from_micros(200);

/// How long the throughput window is unless set with [`Monitor::window`]: 10 s.
pub const DEFAULT_THROUGHPUT_WINDOW: Duration = Duration::from_secs(10);

/// Watches the runs of one or several agents and keeps their metrics: counts by outcome
/// (retries apart from final failures), duration and queue-wait histograms (p50, p95, p99),
/// throughput, concurrency, failures by kind, input waits. Aggregated across runs; clones
/// share one monitor; dropping the last clone stops it.
///
/// The monitor reads events as they come, on a task of its own per agent: a snapshot shows
/// what it has read (a run's last events reach it just after the run ends; on a paused clock,
/// `tokio::task::yield_now().await` lets it catch up). Times are the events' own, on tokio's
/// clock, so the paused clock gives exact figures.
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

struct Inner {
    aggregate: Arc<Mutex<Aggregate>>,
    /// The pools of the agents watched, with their names.
    pools: Mutex<Vec<(ResourcePool, Vec<String>)>>,
    /// The tasks reading the agents' events: stopped with the monitor.
    readers: Mutex<Vec<AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for reader in self
            .readers
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            reader.abort();
        }
    }
}

impl Monitor {
    /// A monitor keeping `types` of metrics.
    pub fn new(types: MetricType) -> Self {
        Self {
            inner: Arc::new(Inner {
                aggregate: Arc::new(Mutex::new(Aggregate::new(types, DEFAULT_THROUGHPUT_WINDOW))),
                pools: Mutex::new(Vec::new()),
                readers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The throughput window (default [`DEFAULT_THROUGHPUT_WINDOW`]); set it before
    /// attaching: it forgets what it saw.
    pub fn window(self, window: Duration) -> Self {
        {
            let mut aggregate = self.aggregate();
            let types = aggregate.types();
            *aggregate = Aggregate::new(types, window.max(Duration::from_millis(1)));
        }
        self
    }

    fn aggregate(&self) -> MutexGuard<'_, Aggregate> {
        self.inner
            .aggregate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches every run `agent` (or a clone of it) starts from now on. Needs a tokio
    /// runtime (it reads on a task of its own).
    pub fn attach(&self, agent: &Agent) -> Result<(), FlowError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| FlowError::NoRuntime {
            agent: agent.name().to_owned(),
        })?;
        let workflow: Arc<str> = Arc::from(agent.name());
        if let Some(pool) = agent.compiled()?.pool.clone() {
            let mut pools = self
                .inner
                .pools
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match pools.iter_mut().find(|(known, _)| known.same(&pool)) {
                Some((_, names)) => names.push(workflow.to_string()),
                None => pools.push((pool, vec![workflow.to_string()])),
            }
        }
        let mut events = agent.subscribe();
        let aggregate = Arc::clone(&self.inner.aggregate);
        let reader = runtime.spawn(async move {
            // Waits for an event, then takes every event already there in one go: a busy
            // run's events are read in batches, under one lock, without waking this task
            // (and its worker) once per event.
            while let Some(first) = events.next().await {
                let mut taken = 0usize;
                {
                    let mut aggregate = aggregate.lock().unwrap_or_else(PoisonError::into_inner);
                    let mut next = Some(first);
                    while let Some(event) = next {
                        taken += 1;
                        match event {
                            Ok(event) => aggregate.apply(&workflow, &event),
                            Err(EventStreamError::Lagged(missed)) => aggregate.missed += missed,
                            Err(EventStreamError::Closed) => return,
                        }
                        next = events.try_recv();
                    }
                }
                // Events come faster than one at a time: let more gather before reading on,
                // rather than being woken by each (well within the buffer at any rate a run
                // reaches: see `event_capacity`).
                if taken >= BATCH {
                    tokio::time::sleep(BATCH_PAUSE).await;
                }
            }
        });
        self.inner
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(reader.abort_handle());
        Ok(())
    }

    /// The metrics now.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = self.aggregate().snapshot(tokio::time::Instant::now());
        if self.aggregate().types().contains(MetricType::RESOURCES) {
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
        self.aggregate().reset();
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
