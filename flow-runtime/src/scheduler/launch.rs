//! Starting ready states: a slot, the pool, the gates and the breaker, then a task (or one
//! poll inline, when nothing else runs).

use super::*;
use ready::ReadyEntry;

impl Coordinator {
    /// The one ready state, when nothing else runs: its first poll happens right here, and
    /// only if it does not finish at once does it move to a task of its own. Nothing else of
    /// this run can be delayed by that (there is nothing else), and a chain of quick states
    /// then costs no spawn and no channel hop per step.
    pub(super) async fn run_solo(&mut self) -> Result<(), Stop> {
        // Cancellation and the deadline arrive as messages; a long chain must still see them.
        if let Ok(message) = self.inbox.try_recv() {
            self.handle(message)?;
            // The message may have paused the run or queued other states (some needing the
            // pool): then the main loop decides what starts.
            if self.paused || self.ready.len() != 1 || !self.head_needs_nothing() {
                return Ok(());
            }
        }
        // Yield to the tokio scheduler when this task's budget is spent, so that a long chain
        // of instant states does not starve other tasks on this worker.
        tokio::task::consume_budget().await;
        let Some(entry) = self.ready.pop() else {
            return Ok(());
        };
        self.dequeued(entry.seq());
        if self.over_step_limit(&entry) {
            return Ok(());
        }
        let (state, branch) = (entry.state, entry.branch);
        self.max_concurrency = self.max_concurrency.max(1);
        self.now = Instant::now();
        let started = self.now;
        let (span, attempt) = self.begin(state, (entry.attempt, entry.visit));
        // Only a state without gates runs here: it has no breaker either.
        let breaker = None;
        let context = self.state_context(state, branch, attempt);
        let spec = &self.compiled.states[state.index()];
        let mut run = match task::start(&spec.func, &context) {
            Ok(run) => self.attempt(state, run),
            Err(outcome) => {
                record_breaker(breaker, &outcome);
                super::telemetry::attempt_ended(&span, &outcome);
                return self
                    .finish(
                        state,
                        branch,
                        attempt,
                        (entry.virtual_start(), started),
                        outcome,
                    )
                    .map_err(Stop::Failed);
            }
        };
        let polled = {
            let _entered = span.enter();
            std::future::poll_fn(|cx| std::task::Poll::Ready(task::poll_once(&mut run, cx))).await
        };
        if let Some(threshold) = self.compiled.blocking_threshold {
            let held = Instant::now() - started;
            if held > threshold {
                self.report_blocking(state, held);
            }
        }
        match polled {
            Some(outcome) => {
                self.now = Instant::now();
                record_breaker(breaker, &outcome);
                super::telemetry::attempt_ended(&span, &outcome);
                let finished = self.finish(
                    state,
                    branch,
                    attempt,
                    (entry.virtual_start(), started),
                    outcome,
                );
                self.publish_counts();
                finished.map_err(Stop::Failed)
            }
            None => {
                let admission = Admission {
                    breaker,
                    ..Admission::default()
                };
                let queued_at = entry.virtual_start();
                self.launch(
                    state, branch, attempt, started, run, admission, queued_at, span,
                );
                Ok(())
            }
        }
    }

    /// Whether `entry`, just taken from the queue, is a new run of its state that the step
    /// limit forbids: then the run fails with `StepLimit`, and the entry goes back to the queue
    /// (so that the report lists it as cancelled, not lost).
    fn over_step_limit(&mut self, entry: &ReadyEntry) -> bool {
        if entry.visit != 0 || self.steps < self.compiled.max_steps {
            return false;
        }
        if self.deferred_failure.is_none() {
            self.deferred_failure = Some(FlowError::StepLimit {
                agent: self.compiled.name.to_string(),
                limit: self.compiled.max_steps,
                state: self.graph.name(entry.state).to_string(),
            });
        }
        self.requeue(
            entry.state,
            entry.branch,
            (entry.attempt, entry.visit),
            entry.virtual_start(),
        );
        true
    }

    /// Starts ready states while slots are free.
    pub(super) fn dispatch(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        // Retries, resumes and cancellations arrive without a fresh clock reading.
        self.now = Instant::now();
        while self.running_count < self.compiled.max_concurrent {
            self.release_gates();
            let Some(entry) = self.ready.pop() else { break };
            if self.over_step_limit(&entry) {
                self.dequeued(entry.seq());
                break;
            }
            let (entry, admission) = match self.through_gates(entry) {
                GateVerdict::Admitted(entry, admission) => (entry, admission),
                GateVerdict::Waiting => continue,
                // An open breaker, a full bulkhead, a spent quota...: the attempt fails
                // without calling the state.
                GateVerdict::Refused(entry, error) => {
                    self.dequeued(entry.seq());
                    let (state, branch) = (entry.state, entry.branch);
                    let (span, attempt) = self.begin(state, (entry.attempt, entry.visit));
                    let queued_at = entry.virtual_start();
                    self.launch_outcome(
                        state,
                        branch,
                        (attempt, queued_at),
                        Outcome::Refused(error),
                        span,
                    );
                    continue;
                }
            };
            self.dequeued(entry.seq());
            let (state, branch) = (entry.state, entry.branch);
            let queued_at = entry.virtual_start();
            let (span, attempt) = self.begin(state, (entry.attempt, entry.visit));
            if let Some(since) = admission.gated_since {
                self.note_gated(state, attempt, since);
            }
            let context = self.state_context(state, branch, attempt);
            match task::start(&self.compiled.states[state.index()].func, &context) {
                Ok(run) => {
                    let run = self.attempt(state, run);
                    let now = self.now;
                    self.launch(state, branch, attempt, now, run, admission, queued_at, span)
                }
                Err(outcome) => {
                    // The body panicked before it produced a future: report it like any panic.
                    record_breaker(admission.breaker, &outcome);
                    self.launch_outcome(state, branch, (attempt, queued_at), outcome, span);
                }
            }
        }
        self.max_concurrency = self.max_concurrency.max(self.running_count);
        self.arm_gate_timer();
    }

    /// A started state's future as an attempt with an identity of its own (see
    /// `coordination::Actor`): the primitives its body takes are held by it.
    pub(super) fn attempt(&mut self, state: StateId, run: StateFuture) -> task::Attempt {
        self.next_ticket += 1;
        task::Attempt {
            run,
            identity: Some(AttemptIdentity {
                actor: Actor::Attempt {
                    run: self.run_key,
                    serial: self.next_ticket,
                },
                compiled: Arc::clone(&self.compiled),
                state,
                run_id: self.observer.run_id,
            }),
        }
    }

    /// Records that `state` starts attempt `attempt` of run `visit` (0: a new run) now;
    /// returns the span it is traced in, and the attempt with its visit number.
    pub(super) fn begin(
        &mut self,
        state: StateId,
        (attempt, mut visit): (u32, u32),
    ) -> (tracing::Span, (u32, u32)) {
        let now = self.now;
        if visit == 0 {
            self.steps += 1;
        }
        let record = &mut self.states[state.index()];
        if attempt == 1 {
            record.runs = record.runs.saturating_add(1);
            self.dependency_began(state);
        }
        // A new run of the state takes the next visit number; a retry, a restarted or a
        // preempted attempt keeps its own.
        let record = &mut self.states[state.index()];
        if visit == 0 {
            record.visits = record.visits.saturating_add(1);
            visit = record.visits;
        }
        let record = &mut self.states[state.index()];
        record.attempts = attempt;
        record.status = StateStatus::Running;
        record.first_started.get_or_insert(now);
        let run = record.runs;
        self.observer.set_state(state.index(), StateStatus::Running);
        self.publish_state(state, StateEvent::Started { run, attempt });
        let span = super::telemetry::attempt_span(
            &self.durable_key,
            self.graph.name(state),
            (run, attempt, visit),
        );
        (span, (attempt, visit))
    }

    /// The context handle a state's attempt is given (which state, attempt and visit).
    #[inline]
    pub(super) fn state_context(
        &mut self,
        state: StateId,
        branch: Branch,
        (attempt, visit): (u32, u32),
    ) -> Context {
        let cell = self.lend_branch(branch);
        self.context.for_state(state, attempt, visit, cell)
    }

    /// A free slot for a running attempt, and a ticket no earlier attempt had.
    pub(super) fn take_slot(&mut self) -> (u32, u64) {
        self.next_ticket += 1;
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.running.push(None);
                (self.running.len() - 1) as u32
            }
        };
        (slot, self.next_ticket)
    }

    /// Runs a started state's future as a task of its own.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch(
        &mut self,
        state: StateId,
        branch: Branch,
        (attempt, visit): (u32, u32),
        started: Instant,
        run: task::Attempt,
        Admission {
            grant,
            held,
            breaker,
            shared,
            gated_since: _,
        }: Admission,
        queued_at: i64,
        span: tracing::Span,
    ) {
        let (slot, ticket) = self.take_slot();
        // Recorded before the task can run: it may wait for another primitive at once.
        let hold_timer = match &run.identity {
            Some(identity) if !held.is_empty() => {
                self.holding(state, slot, ticket, identity, &held)
            }
            _ => None,
        };
        let spec = &self.compiled.states[state.index()];
        let (limit, link) = (spec.timeout, Arc::clone(&self.link));
        let call = task::plain(run);
        let attempt_span = span.clone();
        let task = tokio::spawn(task::supervise(call, limit, slot, ticket, link).instrument(span));
        let abort = Some(task.abort_handle());
        // The task's own timeout cannot fire while its state blocks the thread or never
        // yields: the coordinator keeps a timer too, and fails the attempt on time whatever
        // the state does (its task is abandoned).
        let deadline = limit.map(|limit| {
            AbortOnDrop(self.message_after(
                limit,
                Message::StateDeadline {
                    slot,
                    ticket,
                    limit,
                },
            ))
        });
        self.running[slot as usize] = Some(Running {
            state,
            branch,
            attempt,
            visit,
            started,
            abort,
            breaker,
            ticket,
            queued_at,
            grant,
            _deadline: deadline,
            _held: held,
            _shared: shared,
            _hold_timer: hold_timer,
            span: attempt_span,
        });
        self.running_count += 1;
    }

    /// Accounts for a state that ended as it started, through the same channel as the rest.
    pub(super) fn launch_outcome(
        &mut self,
        state: StateId,
        branch: Branch,
        ((attempt, visit), queued_at): ((u32, u32), i64),
        outcome: Outcome,
        span: tracing::Span,
    ) {
        let (slot, ticket) = self.take_slot();
        let started = self.now;
        self.running[slot as usize] = Some(Running {
            state,
            branch,
            attempt,
            visit,
            started,
            abort: None,
            breaker: None,
            ticket,
            grant: None,
            queued_at,
            _deadline: None,
            _held: Vec::new(),
            _shared: Vec::new(),
            _hold_timer: None,
            span,
        });
        self.running_count += 1;
        let _ = self.sender.send(Message::Done {
            slot,
            ticket,
            outcome,
        });
    }
}
