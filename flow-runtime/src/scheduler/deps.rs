//! Dependencies: the gate a state passes before it is queued.
//!
//! A state with dependencies that a branch reaches (or that starts by itself, see
//! [`DependencyConfig`](crate::DependencyConfig)) is checked here. If every dependency lets it
//! start, it is queued at once; otherwise it *waits* here (status `Blocked`) and is checked
//! again when something it waits on changes: a dependency completes, fails or is cancelled
//! (only the waiters of that dependency's dependents are checked), any state completes (only
//! waiters with a condition: states are what change the context), a dependency timeout fires,
//! or the run has nothing else to do (then "nothing left could start it" is known, and
//! sequential waits end or required ones fail).
//!
//! A run without dependencies pays one flag test per queued state and nothing else.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use flow_core::{DependencyLifecycle, DependencyType, FlowError, StateId, StateStatus};
use serde::{Deserialize, Serialize};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::Coordinator;
use super::failures::Failure;
use super::joins::Branch;
use super::task::Message;
use crate::agent::CompiledDependency;
use crate::probe::StateEvent;

/// Why a state came to the gate, and where it goes on when it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Origin {
    /// A transition: this branch, which reached it, goes on.
    Branch(Branch),
    /// A dependent asked for it (a parallel dependency, or a periodic one gone stale): it
    /// runs as a branch of its own, and counts as scheduled while it waits.
    Requested,
    /// It starts by itself once its dependencies let it, as a branch of its own; while it
    /// waits, it does not count as scheduled.
    SelfStart,
}

impl Origin {
    /// Whether a state waiting with this origin counts as scheduled for its dependents.
    fn is_scheduled(self) -> bool {
        self != Self::SelfStart
    }
}

/// What the run knows of one state, for its dependents.
#[derive(Default)]
struct Record {
    /// Its last completion: when, and its number among the run's completions.
    completed: Option<(Instant, u64)>,
    /// Age the completion had beyond what the clock can go back to (a checkpoint restored on
    /// a machine up for less time than the completion's age).
    older_by: Duration,
    /// The run's completion count when it last started: a completion numbered higher is newer.
    started_at_count: Option<u64>,
    /// Why its last run failed, when it did (cleared when it completes).
    failure: Option<String>,
    /// Runs queued, running or waiting for a retry.
    active: u32,
    /// Branches waiting here at the gate.
    waiting_branches: u32,
    /// Whether a transition has brought it in this run: then it is not parked to start by
    /// itself again.
    by_transition: bool,
    /// Branches released to it by the joins and about to reach the gate in this same step:
    /// already scheduled for the states checked before them.
    incoming: u32,
}

struct Waiter {
    state: StateId,
    origin: Origin,
    since: Instant,
    /// The timer of its dependency timeout, when one is armed.
    timer: Option<AbortHandle>,
    /// Tells this waiter from an earlier one that used the same slot.
    token: u64,
}

/// Why a state waits on one of its dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WaitReason {
    /// The condition does not hold.
    Condition,
    /// It is scheduled or running.
    Scheduled,
    /// It has not completed (in a way that counts) yet.
    NotCompleted,
    /// Its completion went stale and it runs again.
    Refreshing,
    /// It has not run since the dependent last started, and still could.
    NotRunYet,
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Condition => "its condition does not hold",
            Self::Scheduled => "it is scheduled or running",
            Self::NotCompleted => "it has not completed in a way that counts",
            Self::Refreshing => "its completion is stale; it runs again",
            Self::NotRunYet => "it has not run yet and still could",
        })
    }
}

/// How much the run knows is over when a state's dependencies are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Quiet {
    /// Things still run: any dependency may yet change.
    No,
    /// Nothing runs, is queued or waits for a retry: a dependency that is not scheduled will
    /// not run unless a waiting state is released; waits for "if it runs" end.
    Release,
    /// As `Release`, and no waiting state could be released: required dependencies that are
    /// not scheduled never will be.
    Fail,
}

/// The outcome of checking a state's dependencies.
enum Verdict {
    /// It may start; these parallel dependencies start with it.
    Go(Vec<StateId>),
    /// It waits, for these (dependency index, reason); these stale dependencies run again.
    Wait(Vec<(usize, WaitReason)>, Vec<StateId>),
    /// It cannot run.
    Fail(FlowError),
}

/// The dependency bookkeeping of one run.
pub(super) struct Dependencies {
    /// Whether any state has dependencies; when not, nothing else here is used.
    pub(super) enabled: bool,
    records: Vec<Record>,
    waiters: Vec<Option<Waiter>>,
    free: Vec<u32>,
    /// Waiter ids, by state.
    by_state: Vec<Vec<u32>>,
    count: usize,
    /// Waiters whose state has a dependency with a condition.
    conditional: usize,
    /// Waiters with an armed timeout.
    pub(super) armed: usize,
    completions: u64,
    tokens: u64,
    /// States that failed because of a dependency, whose dependents are still to learn it.
    failed: Vec<StateId>,
    cascading: bool,
    /// Whether each state starts by itself.
    self_starting: Vec<bool>,
}

/// A waiting state, as [`RunHandle::blocked`](crate::RunHandle::blocked) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedState {
    /// The state that waits.
    pub state: Arc<str>,
    /// What it waits for: one line per dependency, like "`load` (required): it has not
    /// completed in a way that counts".
    pub waits_for: Vec<String>,
    /// How long it has waited.
    pub waited: Duration,
}

impl Dependencies {
    pub(super) fn new(states: usize, any: bool, self_starting: &[StateId]) -> Self {
        let mut flags = vec![false; if any { states } else { 0 }];
        for state in self_starting {
            flags[state.index()] = true;
        }
        Self {
            enabled: any,
            records: if any {
                (0..states).map(|_| Record::default()).collect()
            } else {
                Vec::new()
            },
            waiters: Vec::new(),
            free: Vec::new(),
            by_state: if any {
                vec![Vec::new(); states]
            } else {
                Vec::new()
            },
            count: 0,
            conditional: 0,
            armed: 0,
            completions: 0,
            tokens: 0,
            failed: Vec::new(),
            cascading: false,
            self_starting: flags,
        }
    }

    /// States waiting at the gate.
    pub(super) fn waiting(&self) -> usize {
        self.count
    }

    fn remove(&mut self, id: u32) -> Option<Waiter> {
        let waiter = self.waiters.get_mut(id as usize)?.take()?;
        self.free.push(id);
        self.count -= 1;
        self.by_state[waiter.state.index()].retain(|&w| w != id);
        if waiter.origin.is_scheduled() {
            self.records[waiter.state.index()].waiting_branches -= 1;
        }
        if let Some(timer) = &waiter.timer {
            timer.abort();
            self.armed -= 1;
        }
        Some(waiter)
    }
}

impl Coordinator {
    /// Where a branch that reached `state` (or a state starting by itself) goes: the ready
    /// queue, or the gate.
    pub(super) fn arrive(&mut self, state: StateId, origin: Origin) {
        if !self.deps.enabled || self.compiled.states[state.index()].dependencies.is_empty() {
            let branch = match origin {
                Origin::Branch(branch) => branch,
                Origin::Requested | Origin::SelfStart => self.new_branch(state),
            };
            self.make_ready(state, branch);
            return;
        }
        if let Origin::Branch(_) = origin {
            self.deps.records[state.index()].by_transition = true;
        }
        // A transition, or a dependent asking for it, brings the state: it no longer needs to
        // start by itself (nor, for a transition, as a dependent asked).
        let superseded: Vec<u32> = self.deps.by_state[state.index()]
            .iter()
            .copied()
            .filter(|&id| {
                self.deps.waiters[id as usize]
                    .as_ref()
                    .is_some_and(|w| match (origin, w.origin) {
                        (_, Origin::Branch(_)) | (Origin::SelfStart, _) => false,
                        (Origin::Branch(_), _) => true,
                        (Origin::Requested, waiting) => waiting == Origin::SelfStart,
                    })
            })
            .collect();
        for id in superseded {
            self.drop_waiter(id);
        }
        self.check_gate(state, origin, None, Quiet::No);
    }

    /// Parks every state that starts by itself; called once the entries are queued.
    pub(super) fn park_self_starting(&mut self) {
        for index in 0..self.compiled.self_starting.len() {
            let state = self.compiled.self_starting[index];
            self.check_gate(state, Origin::SelfStart, None, Quiet::No);
        }
    }

    /// Checks `state`'s dependencies and acts on the verdict. `waiter` is its place at the
    /// gate if it already waits there.
    fn check_gate(&mut self, state: StateId, origin: Origin, waiter: Option<u32>, quiet: Quiet) {
        match self.verdict(state, quiet) {
            Verdict::Go(parallel) => {
                if let Some(id) = waiter {
                    self.drop_waiter(id);
                }
                let branch = match origin {
                    Origin::Branch(branch) => branch,
                    Origin::Requested | Origin::SelfStart => self.new_branch(state),
                };
                self.make_ready(state, branch);
                for dependency in parallel {
                    self.arrive(dependency, Origin::Requested);
                }
            }
            Verdict::Wait(_, refresh) => {
                if waiter.is_none() {
                    self.park(state, origin);
                }
                for dependency in refresh {
                    self.arrive(dependency, Origin::Requested);
                }
            }
            Verdict::Fail(error) => {
                if let Some(id) = waiter {
                    self.drop_waiter(id);
                }
                self.dependency_failure(state, origin, error);
            }
        }
    }

    /// Whether every dependency of `state` lets it start now, given what `quiet` says is over.
    fn verdict(&self, state: StateId, quiet: Quiet) -> Verdict {
        let dependencies = &self.compiled.states[state.index()].dependencies;
        let mut waits = Vec::new();
        let mut parallel = Vec::new();
        let mut refresh = Vec::new();
        for (index, dependency) in dependencies.iter().enumerate() {
            let CompiledDependency { on, config } = dependency;
            let on = *on;
            if let Some(condition) = &config.condition
                && !holds(condition, &self.context)
            {
                waits.push((index, WaitReason::Condition));
                continue;
            }
            let record = &self.deps.records[on.index()];
            let counts = self.completion_counts(state, dependency);
            let pending = self.is_pending(on);
            match config.kind {
                DependencyType::Required => {
                    if counts {
                        continue;
                    }
                    if pending {
                        waits.push((index, WaitReason::Scheduled));
                    } else if let Some(error) = &record.failure {
                        return Verdict::Fail(FlowError::DependencyFailed {
                            state: self.graph.name(state).to_string(),
                            dependency: self.graph.name(on).to_string(),
                            error: error.clone(),
                        });
                    } else if config.lifecycle == DependencyLifecycle::Periodic
                        && record.completed.is_some()
                    {
                        waits.push((index, WaitReason::Refreshing));
                        refresh.push(on);
                    } else if quiet == Quiet::Fail {
                        let reason = if record.completed.is_some() {
                            "completed, but that completion no longer counts"
                        } else {
                            "has not completed in this run"
                        };
                        return Verdict::Fail(FlowError::DependencyUnsatisfied {
                            state: self.graph.name(state).to_string(),
                            dependency: self.graph.name(on).to_string(),
                            reason: reason.into(),
                        });
                    } else {
                        waits.push((index, WaitReason::NotCompleted));
                    }
                }
                DependencyType::Optional => {
                    if pending {
                        waits.push((index, WaitReason::Scheduled));
                    }
                }
                DependencyType::Sequential => {
                    if pending {
                        waits.push((index, WaitReason::Scheduled));
                    } else if !(counts || record.failure.is_some() || quiet != Quiet::No) {
                        waits.push((index, WaitReason::NotRunYet));
                    }
                }
                DependencyType::Parallel => {
                    if !counts && !pending {
                        parallel.push(on);
                    }
                }
            }
        }
        if waits.is_empty() {
            Verdict::Go(parallel)
        } else {
            Verdict::Wait(waits, refresh)
        }
    }

    /// Whether the last completion of `dependency.on` still counts for `state`.
    fn completion_counts(&self, state: StateId, dependency: &CompiledDependency) -> bool {
        let record = &self.deps.records[dependency.on.index()];
        let Some((at, number)) = record.completed else {
            return false;
        };
        let age = self
            .now
            .saturating_duration_since(at)
            .saturating_add(record.older_by);
        if dependency.config.expiry.is_some_and(|expiry| age >= expiry) {
            return false;
        }
        match dependency.config.lifecycle {
            DependencyLifecycle::Once => true,
            // A parallel dependency starts with every run of its dependent.
            DependencyLifecycle::Always if dependency.config.kind == DependencyType::Parallel => {
                false
            }
            DependencyLifecycle::Always => self.deps.records[state.index()]
                .started_at_count
                .is_none_or(|started| number > started),
            DependencyLifecycle::Periodic => dependency
                .config
                .interval
                .is_some_and(|interval| age < interval),
        }
    }

    /// Whether `state` is scheduled or running: queued, running, waiting for a retry, held at
    /// a join, or a branch waiting here at the gate.
    fn is_pending(&self, state: StateId) -> bool {
        let record = &self.deps.records[state.index()];
        record.active > 0
            || record.waiting_branches > 0
            || record.incoming > 0
            || self.joins.holds(state)
    }

    /// The joins released these branches in one step: each counts as scheduled until it
    /// reaches the gate, so that a state checked first does not start (as its parallel
    /// dependency) one that is on its way.
    pub(super) fn note_incoming(&mut self, released: &[(StateId, Branch)], incoming: bool) {
        if !self.deps.enabled {
            return;
        }
        for (state, _) in released {
            let record = &mut self.deps.records[state.index()];
            if incoming {
                record.incoming += 1;
            } else {
                record.incoming = record.incoming.saturating_sub(1);
            }
        }
    }

    fn park(&mut self, state: StateId, origin: Origin) {
        self.deps.tokens += 1;
        let token = self.deps.tokens;
        let id = match self.deps.free.pop() {
            Some(id) => id,
            None => {
                self.deps.waiters.push(None);
                (self.deps.waiters.len() - 1) as u32
            }
        };
        let timeout = self.compiled.states[state.index()]
            .dependencies
            .iter()
            .filter_map(|d| d.config.timeout)
            .min();
        // Counted from `since` (earlier than now for a waiter restored from a checkpoint).
        let waited = Instant::now().saturating_duration_since(self.now);
        // A state that already ran and is parked to run again after fresh completions owes
        // nothing: it has no timeout.
        let repark = origin == Origin::SelfStart
            && self.deps.records[state.index()].started_at_count.is_some();
        let timer = timeout
            .filter(|_| !repark)
            .map(|timeout| self.arm(id, token, timeout.saturating_sub(waited)));
        if timer.is_some() {
            self.deps.armed += 1;
        }
        if self.has_condition(state) {
            self.deps.conditional += 1;
        }
        if origin.is_scheduled() {
            self.deps.records[state.index()].waiting_branches += 1;
        }
        self.deps.waiters[id as usize] = Some(Waiter {
            state,
            origin,
            since: self.now,
            timer,
            token,
        });
        self.deps.by_state[state.index()].push(id);
        self.deps.count += 1;
        self.set_status(state, StateStatus::Blocked);
        self.publish_state(state, StateEvent::Blocked);
    }

    fn arm(&self, waiter: u32, token: u64, after: Duration) -> AbortHandle {
        let sender = self.sender.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = sender.send(Message::DependencyDeadline { waiter, token });
        })
        .abort_handle()
    }

    fn has_condition(&self, state: StateId) -> bool {
        self.compiled.states[state.index()]
            .dependencies
            .iter()
            .any(|d| d.config.condition.is_some())
    }

    fn drop_waiter(&mut self, id: u32) -> Option<Waiter> {
        let waiter = self.deps.remove(id)?;
        if self.has_condition(waiter.state) {
            self.deps.conditional -= 1;
        }
        Some(waiter)
    }

    /// `state` cannot run because of a dependency: it fails without retries (it never
    /// started), its `on_error` handler runs if it has one, and its own dependents learn it.
    fn dependency_failure(&mut self, state: StateId, origin: Origin, error: FlowError) {
        let branch = match origin {
            Origin::Branch(branch) => branch,
            Origin::Requested | Origin::SelfStart => self.new_branch(state),
        };
        let message = error.to_string();
        if let Err(error) = self.attempt_failed(state, branch, (0, 0), Failure::Dependency(error)) {
            self.deferred_failure.get_or_insert(error);
            return;
        }
        self.deps.records[state.index()].failure = Some(message);
        // Its dependents fail in turn, through a worklist rather than recursion (a long chain
        // of handled failures must not grow the stack).
        self.deps.failed.push(state);
        if self.deps.cascading {
            return;
        }
        self.deps.cascading = true;
        while let Some(failed) = self.deps.failed.pop() {
            self.recheck_dependents(failed, false);
        }
        self.deps.cascading = false;
    }

    /// A state's run was queued for its first attempt.
    pub(super) fn dependency_started(&mut self, state: StateId) {
        if self.deps.enabled {
            self.deps.records[state.index()].active += 1;
        }
    }

    /// A state's attempt began: a later completion of a dependency is newer than this.
    pub(super) fn dependency_began(&mut self, state: StateId) {
        if self.deps.enabled {
            self.deps.records[state.index()].started_at_count = Some(self.deps.completions);
        }
    }

    /// A state completed: recorded before its branch moves on.
    pub(super) fn dependency_completed(&mut self, state: StateId) {
        if !self.deps.enabled {
            return;
        }
        self.deps.completions = self.deps.completions.saturating_add(1);
        let record = &mut self.deps.records[state.index()];
        record.active = record.active.saturating_sub(1);
        record.completed = Some((self.now, self.deps.completions));
        record.older_by = Duration::ZERO;
        record.failure = None;
    }

    /// After a completion's branch moved on: its dependents (and waiters on conditions) are
    /// checked again, and a state that starts by itself after every fresh completion is
    /// parked again.
    pub(super) fn after_completion(&mut self, state: StateId) {
        if !self.deps.enabled {
            return;
        }
        self.repark(state);
        self.recheck_dependents(state, true);
    }

    /// A state that starts by itself after every fresh completion of an `always` required
    /// dependency waits for the next one once its run ended (however it ended).
    fn repark(&mut self, state: StateId) {
        if self.deps.self_starting[state.index()]
            && !self.deps.records[state.index()].by_transition
            && self.deps.by_state[state.index()].is_empty()
            && !self.is_pending(state)
            && self.compiled.states[state.index()]
                .dependencies
                .iter()
                .any(|d| {
                    d.config.kind == DependencyType::Required
                        && d.config.lifecycle == DependencyLifecycle::Always
                })
        {
            let status = self.states[state.index()].status;
            self.check_gate(state, Origin::SelfStart, None, Quiet::No);
            // Waiting for a next run is not being blocked: it keeps the status its run left.
            if self.deps.by_state[state.index()].len() == 1 {
                self.set_status(state, status);
            }
        }
    }

    /// A state's run ended without completing (its last attempt failed, or it was cancelled).
    pub(super) fn dependency_ended(&mut self, state: StateId, failure: Option<String>) {
        if !self.deps.enabled {
            return;
        }
        let record = &mut self.deps.records[state.index()];
        record.active = record.active.saturating_sub(1);
        if failure.is_some() {
            record.failure = failure;
        }
        self.repark(state);
        self.recheck_dependents(state, false);
    }

    /// Checks again the waiters that `state`'s news may concern.
    pub(super) fn recheck_dependents(&mut self, state: StateId, completed: bool) {
        if self.deps.count == 0 {
            return;
        }
        let mut ids: Vec<u32> = Vec::new();
        for &dependent in &self.compiled.dependents[state.index()] {
            ids.extend_from_slice(&self.deps.by_state[dependent.index()]);
        }
        if completed && self.deps.conditional > 0 {
            for (id, waiter) in self.deps.waiters.iter().enumerate() {
                if waiter.as_ref().is_some_and(|w| self.has_condition(w.state)) {
                    ids.push(id as u32);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            self.recheck(id, Quiet::No);
        }
    }

    /// Checks one waiter again; returns whether it left the gate.
    fn recheck(&mut self, id: u32, quiet: Quiet) -> bool {
        let Some((state, origin)) = self.deps.waiters[id as usize]
            .as_ref()
            .map(|w| (w.state, w.origin))
        else {
            return false;
        };
        if origin == Origin::SelfStart
            && self.deps.records[state.index()].started_at_count.is_some()
        {
            if quiet == Quiet::Fail {
                // A state that already ran, parked to run again after fresh completions that
                // can no longer come: nothing is owed.
                self.drop_waiter(id);
                return true;
            }
            if quiet == Quiet::Release {
                return false;
            }
        }
        self.check_gate(state, origin, Some(id), quiet);
        self.deps.waiters[id as usize].is_none()
    }

    /// Nothing runs, is queued or waits for a retry: dependencies that only waited for the
    /// rest of the run are settled, one waiter at a time (what it starts may change the rest),
    /// releases first, failures only when nothing can be released. Returns whether one left
    /// the gate.
    pub(super) fn settle_dependencies(&mut self) -> bool {
        for quiet in [Quiet::Release, Quiet::Fail] {
            for id in 0..self.deps.waiters.len() as u32 {
                let before = (self.ready.len(), self.deps.count, self.timer_count);
                let left = self.recheck(id, quiet);
                // A waiter that stays may still have queued a dependency to refresh.
                let after = (self.ready.len(), self.deps.count, self.timer_count);
                if left || before != after || self.deferred_failure.is_some() {
                    return true;
                }
            }
        }
        false
    }

    /// A waiter's dependency timeout fired.
    pub(super) fn dependency_deadline(&mut self, id: u32, token: u64) {
        let Some(waiter) = self
            .deps
            .waiters
            .get_mut(id as usize)
            .and_then(Option::as_mut)
        else {
            return;
        };
        if waiter.token != token {
            return;
        }
        waiter.timer = None;
        self.deps.armed -= 1;
        let (state, origin, since) = (waiter.state, waiter.origin, waiter.since);
        let waited = self.now.saturating_duration_since(since);
        let waits = match self.verdict(state, Quiet::No) {
            Verdict::Wait(waits, _) => waits,
            Verdict::Go(_) | Verdict::Fail(_) => {
                self.recheck(id, Quiet::No);
                return;
            }
        };
        let dependencies = &self.compiled.states[state.index()].dependencies;
        let expired = waits.iter().find(|(index, _)| {
            dependencies[*index]
                .config
                .timeout
                .is_some_and(|timeout| timeout <= waited)
        });
        if let Some(&(index, reason)) = expired {
            let dependency = &dependencies[index];
            let error = FlowError::DependencyTimeout {
                state: self.graph.name(state).to_string(),
                dependency: self.graph.name(dependency.on).to_string(),
                timeout: dependency.config.timeout.unwrap_or_default(),
                waiting_for: reason.to_string(),
            };
            self.drop_waiter(id);
            self.dependency_failure(state, origin, error);
            return;
        }
        // The dependency that timed out is satisfied now; wait for the next timeout, if any.
        let next = waits
            .iter()
            .filter_map(|(index, _)| dependencies[*index].config.timeout)
            .filter(|timeout| *timeout > waited)
            .min();
        if let Some(timeout) = next {
            let timer = self.arm(id, token, timeout - waited);
            if let Some(waiter) = self.deps.waiters[id as usize].as_mut() {
                waiter.timer = Some(timer);
                self.deps.armed += 1;
            }
        }
    }

    /// Cancels the waits of `state` at the gate; returns the branches of those that came by a
    /// branch (`None` for the others).
    pub(super) fn cancel_waiting(&mut self, state: StateId) -> Vec<Option<Branch>> {
        if !self.deps.enabled {
            return Vec::new();
        }
        let ids = self.deps.by_state[state.index()].clone();
        ids.into_iter()
            .filter_map(|id| self.drop_waiter(id))
            .map(|waiter| match waiter.origin {
                Origin::Branch(branch) => Some(branch),
                Origin::Requested | Origin::SelfStart => None,
            })
            .collect()
    }

    /// Every waiter, with what it waits for.
    pub(super) fn blocked_states(&self) -> Vec<BlockedState> {
        let mut blocked = Vec::new();
        for waiter in self.deps.waiters.iter().flatten() {
            let dependencies = &self.compiled.states[waiter.state.index()].dependencies;
            let waits = match self.verdict(waiter.state, Quiet::No) {
                Verdict::Wait(waits, _) => waits,
                Verdict::Go(_) | Verdict::Fail(_) => Vec::new(),
            };
            blocked.push(BlockedState {
                state: Arc::clone(self.graph.name(waiter.state)),
                waits_for: waits
                    .iter()
                    .map(|&(index, reason)| {
                        let dependency = &dependencies[index];
                        format!(
                            "`{}` ({}): {reason}",
                            self.graph.name(dependency.on),
                            dependency.config.kind.as_str()
                        )
                    })
                    .collect(),
                waited: self.now.saturating_duration_since(waiter.since),
            });
        }
        blocked.extend(self.blocked_at_gates());
        blocked.sort_by(|a, b| a.state.cmp(&b.state));
        blocked
    }

    /// Stops every dependency timer and empties the gate; returns the states that waited.
    pub(super) fn abort_dependency_waits(&mut self) -> Vec<StateId> {
        let ids: Vec<u32> = (0..self.deps.waiters.len() as u32).collect();
        ids.into_iter()
            .filter_map(|id| self.drop_waiter(id))
            .map(|waiter| waiter.state)
            .collect()
    }
}

/// Calls a user's condition; one that panics does not hold (the scheduler must not unwind).
fn holds(condition: &crate::Condition, context: &crate::Context) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| condition(context))).unwrap_or(false)
}

/// What a checkpoint keeps of one state's dependency record.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct RecordImage {
    /// Its last completion: how long before the checkpoint, and its number.
    completed: Option<(Duration, u64)>,
    started_at_count: Option<u64>,
    failure: Option<String>,
    by_transition: bool,
}

/// What a checkpoint keeps of a state waiting at the gate.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct WaiterImage {
    pub(super) state: StateId,
    pub(super) origin: Origin,
    /// How long it had waited.
    pub(super) waited: Duration,
}

/// The dependency bookkeeping as a checkpoint keeps it.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct DependenciesImage {
    pub(super) records: Vec<RecordImage>,
    pub(super) waiters: Vec<WaiterImage>,
    pub(super) completions: u64,
}

impl Coordinator {
    pub(super) fn dependencies_image(&self) -> DependenciesImage {
        let now = self.now;
        DependenciesImage {
            records: self
                .deps
                .records
                .iter()
                .map(|r| RecordImage {
                    completed: r.completed.map(|(at, n)| {
                        (
                            now.saturating_duration_since(at).saturating_add(r.older_by),
                            n,
                        )
                    }),
                    started_at_count: r.started_at_count,
                    failure: r.failure.clone(),
                    by_transition: r.by_transition,
                })
                .collect(),
            waiters: self
                .deps
                .waiters
                .iter()
                .flatten()
                .map(|w| WaiterImage {
                    state: w.state,
                    origin: w.origin,
                    waited: now.saturating_duration_since(w.since),
                })
                .collect(),
            completions: self.deps.completions,
        }
    }

    /// Takes back a checkpoint's dependency records; `active` counts each state's due work.
    /// Waiters are parked again afterwards ([`Coordinator::restore_waiter`]).
    pub(super) fn restore_dependency_records(&mut self, image: &DependenciesImage, active: &[u32]) {
        if !self.deps.enabled {
            return;
        }
        let now = self.now;
        for (index, (record, saved)) in self.deps.records.iter_mut().zip(&image.records).enumerate()
        {
            record.completed = saved.completed.map(|(age, n)| match now.checked_sub(age) {
                Some(at) => {
                    record.older_by = Duration::ZERO;
                    (at, n)
                }
                None => {
                    record.older_by = age;
                    (now, n)
                }
            });
            record.started_at_count = saved.started_at_count;
            record.failure = saved.failure.clone();
            record.by_transition = saved.by_transition;
            record.active = active.get(index).copied().unwrap_or(0);
        }
        self.deps.completions = image.completions;
    }

    /// Parks a waiter of a checkpoint again, as if it had waited `waited` already.
    pub(super) fn restore_waiter(&mut self, waiter: &WaiterImage) {
        if !self.deps.enabled {
            return;
        }
        let now = self.now;
        self.now = now.checked_sub(waiter.waited).unwrap_or(now);
        let origin = match waiter.origin {
            Origin::Branch(branch) => Origin::Branch(self.restored_branch(branch)),
            other => other,
        };
        self.park(waiter.state, origin);
        self.now = now;
    }
}
