//! What the scheduler decided without knowing: reported in the run's report, in the trace,
//! and under `strict_joins` as the run's failure.

use std::sync::Arc;

use flow_core::{FlowError, StateGraph, StateId};

use super::Coordinator;
use crate::run::RunWarning;

/// Distinct warnings a report keeps (a loop repeating one counts its `times` instead).
const MAX_WARNINGS: usize = 64;

impl Coordinator {
    /// Reports the ambiguous joins the join bookkeeping met since the last call.
    pub(super) fn report_ambiguities(&mut self) {
        for ambiguity in std::mem::take(&mut self.joins.ambiguities) {
            let name = |s: StateId| Arc::clone(self.graph.name(s));
            let fork = ambiguity.opener.map(name);
            let held: Vec<Arc<str>> = ambiguity.held.iter().map(|&s| name(s)).collect();
            let released = name(ambiguity.released);
            let declare: Vec<Arc<str>> = undeclared_behind(&self.graph, &ambiguity.held)
                .into_iter()
                .map(name)
                .collect();
            let list = |states: &[Arc<str>]| {
                states
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            tracing::warn!(
                fork = fork.as_deref().unwrap_or("(entries)"),
                held = %list(&held),
                released = %released,
                declare = %list(&declare),
                strict = self.compiled.strict_joins,
                "ambiguous join: every branch of a fork is held at states that may reach each other"
            );
            if self.compiled.strict_joins {
                if self.deferred_failure.is_none() {
                    self.deferred_failure = Some(FlowError::AmbiguousJoin {
                        agent: self.compiled.name.to_string(),
                        fork: fork.as_deref().map(str::to_owned),
                        held: held.iter().map(|s| s.to_string()).collect(),
                        declare: declare.iter().map(|s| s.to_string()).collect(),
                    });
                }
                continue;
            }
            let same = |w: &RunWarning| match w {
                RunWarning::AmbiguousJoin {
                    fork: f,
                    held: h,
                    released: r,
                    ..
                } => *f == fork && *h == held && *r == released,
                _ => false,
            };
            if let Some(RunWarning::AmbiguousJoin { times, .. }) =
                self.warnings.iter_mut().find(|w| same(w))
            {
                *times = times.saturating_add(1);
            } else if self.warnings.len() < MAX_WARNINGS {
                self.warnings.push(RunWarning::AmbiguousJoin {
                    fork,
                    held,
                    released,
                    declare,
                    times: 1,
                });
            }
        }
    }
}

/// The states with undeclared successors that the held states are, or reach along declared
/// edges (what makes them "may reach anything"), sorted.
fn undeclared_behind(graph: &StateGraph, held: &[StateId]) -> Vec<StateId> {
    let mut seen = vec![false; graph.len()];
    let mut stack: Vec<StateId> = held.iter().copied().filter(|&s| graph.is_wild(s)).collect();
    let mut found = Vec::new();
    while let Some(state) = stack.pop() {
        if std::mem::replace(&mut seen[state.index()], true) {
            continue;
        }
        match graph.successors(state) {
            None => found.push(state),
            Some(next) => stack.extend(next.iter().copied().filter(|&s| graph.is_wild(s))),
        }
    }
    found.sort_unstable();
    found
}

impl Coordinator {
    /// A state held its thread for `held` in one poll.
    pub(super) fn report_blocking(&mut self, state: StateId, held: std::time::Duration) {
        let name = Arc::clone(self.graph.name(state));
        tracing::warn!(
            state = %name,
            ?held,
            "a state held its thread without yielding; run blocking work with tokio::task::spawn_blocking"
        );
        let count = self.warnings.len();
        let existing = self.warnings.iter_mut().find_map(|w| match w {
            RunWarning::BlockingState {
                state,
                held_for,
                times,
            } if *state == name => Some((held_for, times)),
            _ => None,
        });
        match existing {
            Some((held_for, times)) => {
                *held_for = (*held_for).max(held);
                *times = times.saturating_add(1);
            }
            None if count < MAX_WARNINGS => {
                self.warnings.push(RunWarning::BlockingState {
                    state: name,
                    held_for: held,
                    times: 1,
                });
            }
            None => {}
        }
    }
}
