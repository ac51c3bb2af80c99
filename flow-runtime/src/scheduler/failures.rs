//! What happens when a state's attempt fails: a retry after its policy's delay, or, after the
//! last attempt, a dead letter and either its `on_error` handler or the run's failure.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flow_core::{FlowError, RetryOn, StateError, StateId, StateStatus};
use tokio::task::AbortHandle;

use super::Coordinator;
use super::joins::Branch;
use super::task::Message;
use crate::failure::{DeadLetter, FAILURE_KEY, FailureKind, FailureOutcome};
use crate::probe::StateEvent;

/// A retry waiting for its delay.
pub(super) struct RetryTimer {
    abort: AbortHandle,
    pub(super) state: StateId,
    pub(super) branch: Branch,
    pub(super) attempt: u32,
    /// The run of the state it retries (see `ReadyEntry::visit`).
    pub(super) visit: u32,
    /// When it is due (a checkpoint keeps the time left).
    pub(super) due: tokio::time::Instant,
}

/// How an attempt failed.
pub(super) enum Failure {
    Error(StateError),
    Panic(String),
    Timeout(Duration),
    ResourceTimeout(Duration),
    /// It waited at an admission gate past its acquisition timeout (how long, and which gate).
    AdmissionTimeout(Duration, String),
    /// A gate refused it outright (a full leaky bucket).
    Refused(FlowError),
    /// A dependency failed, could no longer run, or timed out: the state never started.
    Dependency(FlowError),
}

/// The class of failure a retry policy's `on` names for `kind`; `None` for a dependency's
/// failure, which is never retried.
fn retried_on(kind: FailureKind) -> Option<RetryOn> {
    Some(match kind {
        FailureKind::Error => RetryOn::ERROR,
        FailureKind::Panic => RetryOn::PANIC,
        FailureKind::Timeout | FailureKind::InputTimeout => RetryOn::TIMEOUT,
        FailureKind::CircuitOpen
        | FailureKind::BulkheadFull
        | FailureKind::ResourceTimeout
        | FailureKind::AdmissionTimeout
        | FailureKind::RateLimited
        | FailureKind::Coordination => RetryOn::REFUSED,
        FailureKind::Dependency => return None,
    })
}

impl Coordinator {
    /// Handles a failed attempt (error, panic or timeout) of `state`.
    pub(super) fn attempt_failed(
        &mut self,
        state: StateId,
        branch: Branch,
        (attempt, visit): (u32, u32),
        failure: Failure,
    ) -> Result<(), FlowError> {
        let name = self.graph.name(state).to_string();
        // Whether the state's `retry_if` lets this error be retried (asked before the error
        // is wrapped; a predicate that panics refuses).
        let mut retryable = true;
        let (error, kind, status) = match failure {
            Failure::Error(cause) => {
                if let Some(retry_if) = &self.compiled.states[state.index()].retry_if {
                    retryable =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| retry_if(&cause)))
                            .unwrap_or(false);
                }
                // Nobody answered an input request in time: a timeout of its own kind.
                let (kind, status) = match cause.downcast_ref::<FlowError>() {
                    Some(FlowError::InputTimeout { .. }) => {
                        (FailureKind::InputTimeout, StateStatus::Timeout)
                    }
                    _ => (FailureKind::Error, StateStatus::Failed),
                };
                (
                    FlowError::StateFailed {
                        state: name,
                        attempts: attempt,
                        cause,
                    },
                    kind,
                    status,
                )
            }
            Failure::Panic(message) => (
                FlowError::StatePanicked {
                    state: name,
                    attempts: attempt,
                    message,
                },
                FailureKind::Panic,
                StateStatus::Failed,
            ),
            Failure::Timeout(timeout) => (
                FlowError::StateTimedOut {
                    state: name,
                    attempts: attempt,
                    timeout,
                },
                FailureKind::Timeout,
                StateStatus::Timeout,
            ),
            Failure::ResourceTimeout(waited) => (
                FlowError::ResourceTimeout {
                    state: name,
                    attempts: attempt,
                    waited,
                },
                FailureKind::ResourceTimeout,
                StateStatus::Timeout,
            ),
            Failure::Dependency(error) => {
                let status = if matches!(error, FlowError::DependencyTimeout { .. }) {
                    StateStatus::Timeout
                } else {
                    StateStatus::Failed
                };
                (error, FailureKind::Dependency, status)
            }
            Failure::AdmissionTimeout(waited, gate) => (
                FlowError::AdmissionTimeout {
                    state: name,
                    attempts: attempt,
                    waited,
                    gate,
                },
                FailureKind::AdmissionTimeout,
                StateStatus::Timeout,
            ),
            Failure::Refused(error) => {
                let (kind, status) = match error {
                    FlowError::RateLimited { .. } => {
                        (FailureKind::RateLimited, StateStatus::Failed)
                    }
                    FlowError::BulkheadFull { .. } => {
                        (FailureKind::BulkheadFull, StateStatus::Failed)
                    }
                    FlowError::CircuitOpen { .. } => {
                        (FailureKind::CircuitOpen, StateStatus::Failed)
                    }
                    FlowError::HoldExpired { .. } => {
                        (FailureKind::Coordination, StateStatus::Timeout)
                    }
                    _ => (FailureKind::Coordination, StateStatus::Failed),
                };
                (error, kind, status)
            }
        };
        self.set_status(state, status);
        let message = error.to_string();
        self.states[state.index()].last_error = Some(message.clone());
        tracing::debug!(%error, "state attempt failed");

        let policy = self.compiled.states[state.index()].retry;
        let from_dependency = kind == FailureKind::Dependency;
        if retryable
            && retried_on(kind).is_some_and(|class| policy.on.contains(class))
            && attempt <= policy.max_retries
        {
            let delay = policy.delay(attempt - 1, self.retry_seed(state));
            self.schedule_retry(state, branch, (attempt + 1, visit), delay, message);
            return Ok(());
        }

        self.publish_state(
            state,
            StateEvent::Failed {
                error: &message,
                kind,
            },
        );
        let letter = DeadLetter {
            run_id: self.observer.run_id,
            state: self.graph.name(state).to_string(),
            error: message.clone(),
            kind,
            attempts: attempt,
            timed_out: matches!(
                kind,
                FailureKind::Timeout | FailureKind::ResourceTimeout | FailureKind::AdmissionTimeout
            ) || status == StateStatus::Timeout,
            at: SystemTime::now(),
            context: match self.context.snapshot() {
                Ok(values) => serde_json::Value::Object(values),
                Err(error) => serde_json::json!({ "snapshot_error": error.to_string() }),
            },
            outcome: match self.graph.error_handler(state) {
                Some(handler) => FailureOutcome::Handled {
                    by: self.graph.name(handler).to_string(),
                },
                None if self.compiled.keep_going => FailureOutcome::EndedBranch,
                None => FailureOutcome::FailedRun,
            },
        };
        self.dead_letters.push(letter.clone());
        match self.graph.error_handler(state) {
            Some(handler) => {
                self.context.set_state(FAILURE_KEY, letter);
                let graph = Arc::clone(&self.graph);
                self.arrived(handler);
                self.joins.goto(&graph, branch, state, handler);
                self.absorb_joins();
                if !from_dependency {
                    // Its dependents learn it failed (a dependency failure records itself).
                    self.dependency_ended(state, Some(message));
                }
                Ok(())
            }
            None if self.compiled.keep_going => {
                // Only its branch ends; the rest of the run goes on.
                self.ended_branches = self.ended_branches.saturating_add(1);
                let graph = Arc::clone(&self.graph);
                self.joins.end(&graph, branch, state);
                self.absorb_joins();
                if !from_dependency {
                    self.dependency_ended(state, Some(message));
                }
                Ok(())
            }
            None => {
                if !from_dependency {
                    // A last checkpoint of the failed run has it due again (see
                    // `finish_checkpoints`).
                    self.failed_state = Some((state, branch, visit));
                }
                Err(error)
            }
        }
    }

    /// A seed for this run and state, so that jittered delays differ between states and runs
    /// but a state's schedule is a pure function of it.
    fn retry_seed(&self, state: StateId) -> u64 {
        self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (state.index() as u64)
    }

    pub(super) fn schedule_retry(
        &mut self,
        state: StateId,
        branch: Branch,
        (attempt, visit): (u32, u32),
        delay: Duration,
        error: String,
    ) {
        self.set_status(state, StateStatus::Pending);
        self.publish_state(
            state,
            StateEvent::Retrying {
                attempt,
                delay,
                error: &error,
            },
        );
        let timer = match self.free_timers.pop() {
            Some(timer) => timer,
            None => {
                self.timers.push(None);
                (self.timers.len() - 1) as u32
            }
        };
        let abort = self.message_after(
            delay,
            Message::Retry {
                timer,
                state,
                branch,
                attempt,
            },
        );
        self.timers[timer as usize] = Some(RetryTimer {
            abort,
            state,
            branch,
            attempt,
            visit,
            due: tokio::time::Instant::now()
                .checked_add(delay)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)),
        });
        self.timer_count += 1;
    }

    /// A retry's delay is over: the state is ready for its next attempt.
    pub(super) fn retry_due(&mut self, timer: u32, state: StateId, branch: Branch, attempt: u32) {
        let Some(visit) = self
            .timers
            .get_mut(timer as usize)
            .and_then(Option::take)
            .map(|due| due.visit)
        else {
            return; // cancelled meanwhile
        };
        self.free_timers.push(timer);
        self.timer_count -= 1;
        self.enqueue(state, branch, attempt, visit);
        self.set_status(state, StateStatus::Ready);
        self.publish_state(state, StateEvent::Ready);
    }

    /// Stops every pending retry; returns the states that were waiting.
    pub(super) fn abort_timers(&mut self) -> Vec<StateId> {
        self.timer_count = 0;
        self.timers
            .iter_mut()
            .filter_map(Option::take)
            .map(|timer| {
                timer.abort.abort();
                timer.state
            })
            .collect()
    }

    /// Stops the pending retries of `state`; returns their branches.
    pub(super) fn cancel_timers(&mut self, state: StateId) -> Vec<Branch> {
        let mut branches = Vec::new();
        for (id, slot) in self.timers.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|t| t.state == state)
                && let Some(timer) = slot.take()
            {
                timer.abort.abort();
                self.free_timers.push(id as u32);
                self.timer_count -= 1;
                branches.push(timer.branch);
            }
        }
        branches
    }
}
