//! A live progress line for examples that run many states: a bar of completed states, and a
//! message with throughput, p95 duration, failures and CPU in use, refreshed from a `Monitor`'s
//! snapshots. (indicatif draws only on a terminal; elsewhere the bar stays silent.)

use std::time::Duration;

use fluffy_flow::{Snapshot, UpdateGuard};
use indicatif::{ProgressBar, ProgressStyle};

/// The figures a progress line shows, from one snapshot of `workflow`.
pub struct Progress {
    pub completed: u64,
    pub states_per_s: f64,
    pub p95_ms: f64,
    pub failed: u64,
    pub cpu_in_use: f64,
    pub cpu_capacity: f64,
}

impl Progress {
    pub fn of(snapshot: &Snapshot, workflow: &str) -> Self {
        let metrics = snapshot.workflows.get(workflow);
        let states = metrics
            .map(|w| w.states.values().collect::<Vec<_>>())
            .unwrap_or_default();
        let cpu = snapshot
            .pools
            .iter()
            .flatten()
            .flat_map(|pool| pool.kinds.iter())
            .find(|kind| kind.kind == "cpu");
        Self {
            completed: states.iter().map(|s| s.completed).sum(),
            states_per_s: metrics
                .and_then(|w| w.throughput.as_ref())
                .map_or(0.0, |t| t.states_per_s),
            p95_ms: metrics
                .and_then(|w| w.state_duration.as_ref())
                .map_or(0.0, |d| d.p95_ms),
            failed: states.iter().map(|s| s.failed + s.retried).sum(),
            cpu_in_use: cpu.map_or(0.0, |c| c.in_use),
            cpu_capacity: cpu.map_or(0.0, |c| c.capacity),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{:.0} states/s · p95 {:.1} ms · {} failed attempts · CPU {:.1}/{:.0}",
            self.states_per_s, self.p95_ms, self.failed, self.cpu_in_use, self.cpu_capacity
        )
    }
}

/// Shows a bar of `total` states of `workflow`, refreshed every `every`, until the returned
/// guard is dropped.
pub fn show(
    monitor: &fluffy_flow::Monitor,
    workflow: &'static str,
    total: u64,
    every: Duration,
) -> (ProgressBar, UpdateGuard) {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").expect("a valid template"),
    );
    let shown = bar.clone();
    let guard = monitor
        .on_update(every, move |snapshot| {
            let progress = Progress::of(&snapshot, workflow);
            shown.set_position(progress.completed);
            shown.set_message(progress.line());
        })
        .expect("inside a tokio runtime");
    (bar, guard)
}
