//! What the scheduler's admission sees of a primitive: one shape for all of them (see
//! `scheduler::admission`). Asked for a ready state, a gate admits it (with units to hold while
//! it runs, or none), names the instant to ask again, asks to be woken by a release, or
//! refuses the attempt.

use std::sync::Arc;

use flow_core::FlowError;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::barrier::{Arrival, ArrivalTicket, BarrierInner};
use super::hold::{Busy, Engine, HeldUnits, PrimitiveKind};
use super::rate_limit::{NotBefore, RateLimit};
use super::shared::SharedSlot;
use super::{FlowBarrier, FlowMutex, FlowSemaphore, Lease, Owner, Quota};
use crate::resilience::{BreakerPermit, CircuitBreaker};
use crate::resources::{Amounts, Claimant, Grant, ResourcePool};
use crate::scheduler::Message;

/// A primitive a state passes before it starts.
#[derive(Clone)]
pub(crate) enum Gate {
    /// The agent's resource pool: grants everything a state needs at once, or makes it wait
    /// for something to come back (or preempts, see `Coordinator::preempt_for`).
    Pool(ResourcePool),
    /// The state's circuit breaker: admits (with a permit the attempt's outcome settles) or
    /// refuses while open. It never makes a state wait.
    Breaker(CircuitBreaker),
    /// A rate limit: admits, or names the instant to ask again.
    Rate(RateLimit),
    /// A semaphore, mutex, lease, quota or bulkhead: units held while the attempt runs (a
    /// quota's consumed).
    Hold(Arc<Engine>),
    /// A barrier: every arrival waits until the round is complete.
    Barrier(Arc<BarrierInner>),
    /// A primitive kept outside the process: acquired in the background while the state
    /// waits (see `coordination::shared`).
    Shared(Arc<SharedSlot>),
}

/// How the states of one run waiting at a gate take turns asking it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum WaitRule {
    /// The first in ready order asks; the others wait behind it without asking, and a state
    /// that becomes ready later waits behind them all.
    InOrder,
    /// As `InOrder`, but a state that goes before every waiting one in ready order (a higher
    /// priority) asks at once: at the pool, a smaller request may fit, or preempt, where the
    /// first waiting one cannot. Others of the run that need the pool wait behind the first
    /// (the pool's head-of-queue rule: a large request is not overtaken by small ones).
    ByRank,
    /// Every waiting state asks when the gate wakes, none behind another (a barrier, where
    /// each must arrive).
    Together,
}

/// What an admission took, to keep while the attempt runs or to give back.
pub(crate) enum Taken {
    /// A grant of the resource pool.
    Grant(Grant),
    /// A rate limit's admission, counted at this instant.
    Rate(RateLimit, Instant),
    /// Units of a hold.
    Units(HeldUnits),
    /// Passage through a barrier (nothing to give back).
    Passage,
    /// A circuit breaker's permission for the attempt.
    Breaker(BreakerPermit),
    /// What a shared primitive's acquisition holds.
    Shared(super::SharedHold),
}

impl Taken {
    /// Gives it back: a later gate of the same state refused.
    pub(crate) fn undo(self) {
        match self {
            Taken::Rate(limit, counted) => limit.refund(counted),
            Taken::Units(units) => units.give_back(),
            // Dropping a grant gives it back.
            Taken::Grant(_) => {}
            // A permission dropped unsettled gives its trial slot back; a shared hold
            // dropped gives back what it took.
            Taken::Passage | Taken::Breaker(_) | Taken::Shared(_) => {}
        }
    }
}

/// A gate's answer.
pub(crate) enum Verdict {
    /// Admitted, with what it took.
    Admitted(Taken),
    /// Ask again at this instant (and, for a hold, when woken by a release).
    At(Instant),
    /// Ask again when woken by a release.
    OnRelease,
    /// The attempt fails.
    Refused(FlowError),
}

/// A waiting acquisition's place at a gate (a leaky bucket's capacity, a primitive's waiting
/// count, an arrival at a barrier); it is given up when dropped.
pub(crate) enum Ticket {
    Place(#[allow(dead_code)] Box<dyn Send>),
    Arrival(ArrivalTicket),
}

/// Who asks, and how to wake it.
pub(crate) struct Asker<'a> {
    pub(crate) state: &'a Arc<str>,
    /// Its workflow and run (the pool lists who holds and who waits).
    pub(crate) workflow: &'a Arc<str>,
    pub(crate) run_id: u64,
    /// What it needs from the resource pool.
    pub(crate) needs: &'a Amounts,
    /// Who would hold units (made only for states with a hold among their gates).
    pub(crate) owner: Option<&'a Owner>,
    pub(crate) run_key: u64,
    pub(crate) wake: &'a UnboundedSender<Message>,
    pub(crate) gate: usize,
    /// Its arrival, at a barrier.
    pub(crate) arrival: Option<u64>,
    /// Which attempt of the state this is (for refusals).
    pub(crate) attempt: u32,
    /// The current instant: holds, quotas and barriers are asked at it (a rate limit is
    /// asked at the instant it named, see `Gate::ask`).
    pub(crate) now: Instant,
}

impl Gate {
    pub(crate) fn same(&self, other: &Gate) -> bool {
        match (self, other) {
            (Gate::Pool(a), Gate::Pool(b)) => a.same(b),
            (Gate::Rate(a), Gate::Rate(b)) => a.same(b),
            (Gate::Hold(a), Gate::Hold(b)) => Arc::ptr_eq(a, b),
            (Gate::Barrier(a), Gate::Barrier(b)) => Arc::ptr_eq(a, b),
            (Gate::Breaker(a), Gate::Breaker(b)) => a.same(b),
            (Gate::Shared(a), Gate::Shared(b)) => a.same(b),
            _ => false,
        }
    }

    /// "rate limit `api`", "semaphore `gpu`", ...
    pub(crate) fn describe(&self) -> String {
        match self {
            Gate::Pool(_) => "the resource pool".to_owned(),
            Gate::Rate(limit) => format!("rate limit `{}`", limit.name()),
            Gate::Hold(engine) => engine.describe(),
            Gate::Barrier(barrier) => barrier.describe(),
            Gate::Breaker(_) => "circuit breaker".to_owned(),
            Gate::Shared(slot) => slot.gate.describe(),
        }
    }

    /// Asks for `amount` (units of a hold; rate limits admit one). A rate limit is asked at
    /// `at`, the instant it named to a state let out to ask again (so that the timer's
    /// millisecond rounding adds no drift); everything else at the current instant (a hold
    /// must start its TTL now, not at an earlier instant).
    pub(crate) fn ask(&self, at: Instant, amount: u64, asker: &Asker<'_>) -> Verdict {
        match self {
            Gate::Pool(pool) => {
                let who = Claimant {
                    run_key: asker.run_key,
                    agent: Arc::clone(asker.workflow),
                    run_id: asker.run_id,
                    state: Arc::clone(asker.state),
                };
                match pool.try_grant(&who, asker.needs, (asker.wake, asker.gate)) {
                    Some(grant) => Verdict::Admitted(Taken::Grant(grant)),
                    None => Verdict::OnRelease,
                }
            }
            Gate::Breaker(breaker) => match breaker.try_acquire() {
                Ok(permit) => Verdict::Admitted(Taken::Breaker(permit)),
                Err(retry_in) => Verdict::Refused(FlowError::CircuitOpen {
                    state: asker.state.to_string(),
                    attempts: asker.attempt,
                    retry_in,
                }),
            },
            Gate::Rate(limit) => match limit.try_acquire_at(at) {
                Ok(counted) => Verdict::Admitted(Taken::Rate(limit.clone(), counted)),
                Err(NotBefore(until)) => Verdict::At(until),
            },
            Gate::Hold(engine) => {
                let wake = Some((asker.run_key, asker.wake, asker.gate));
                let owner = asker.owner.cloned().unwrap_or_else(|| Owner {
                    task: None,
                    label: Arc::from(describe_state(asker.state)),
                });
                match engine.try_take(amount, owner, asker.now, wake) {
                    Ok(units) => Verdict::Admitted(Taken::Units(units)),
                    // A quota with nothing left and no period to come: waiting is forever.
                    Err(Busy { until: None }) if engine.kind == PrimitiveKind::Quota => {
                        Verdict::Refused(engine.exhausted(amount, describe_state(asker.state)))
                    }
                    Err(Busy { until: Some(until) }) => Verdict::At(until),
                    Err(Busy { until: None }) => Verdict::OnRelease,
                }
            }
            Gate::Barrier(barrier) => {
                let Some(arrival) = asker.arrival else {
                    // The coordinator arrives first (see `Gate::arrive`); not reached.
                    return Verdict::OnRelease;
                };
                let wake = Some((asker.run_key, asker.wake, asker.gate));
                match barrier.check(arrival, asker.now, wake) {
                    Arrival::Passed => Verdict::Admitted(Taken::Passage),
                    Arrival::TimedOut => {
                        Verdict::Refused(barrier.timed_out(&describe_state(asker.state)))
                    }
                    Arrival::Waiting(Some(deadline)) => Verdict::At(deadline),
                    Arrival::Waiting(None) => Verdict::OnRelease,
                }
            }
            Gate::Shared(slot) => slot.ask(amount, asker),
        }
    }

    /// How the states of one run waiting here take turns.
    pub(crate) fn wait_rule(&self) -> WaitRule {
        match self {
            Gate::Barrier(_) => WaitRule::Together,
            Gate::Pool(_) => WaitRule::ByRank,
            Gate::Rate(_) | Gate::Hold(_) | Gate::Breaker(_) | Gate::Shared(_) => WaitRule::InOrder,
        }
    }

    /// A state's arrival at a barrier gate (none for other gates).
    pub(crate) fn arrive(
        &self,
        at: Instant,
        run_key: u64,
        wake: &UnboundedSender<Message>,
        gate: usize,
    ) -> Option<Ticket> {
        match self {
            Gate::Barrier(barrier) => Some(Ticket::Arrival(
                barrier.arrive(at, Some((run_key, wake, gate))),
            )),
            _ => None,
        }
    }

    /// The order gates are asked in: the pool, then holds that give back exactly (semaphores,
    /// mutexes, leases), then rate limits, then quotas, so that nothing is consumed for a
    /// state that then waits.
    pub(crate) fn rank(&self) -> u8 {
        match self {
            // First, as before gates existed: a grant goes back exactly.
            Gate::Pool(_) => 0,
            // Its permission goes back losslessly, where a later refusal could not give back
            // a quota's amount or a barrier's passage.
            Gate::Breaker(_) => 1,
            Gate::Hold(engine) if engine.kind == PrimitiveKind::Quota => 4,
            Gate::Hold(_) => 2,
            Gate::Shared(slot) if !slot.gate.consumes() => 2,
            Gate::Rate(_) | Gate::Shared(_) => 3,
            // Last: a passage cannot be given back.
            Gate::Barrier(_) => 5,
        }
    }

    /// A place among the acquisitions waiting here (none needed at the pool, which lists only
    /// the states that asked it), or a refusal when there is none.
    pub(crate) fn enter_wait(
        &self,
        state: &str,
        attempt: u32,
        run_key: u64,
    ) -> Result<Option<Ticket>, FlowError> {
        let ticket = match self {
            Gate::Pool(_) => return Ok(None),
            Gate::Rate(limit) => Ticket::Place(Box::new(limit.enter_wait(Some(state))?)),
            Gate::Hold(engine) => match engine.enter_wait() {
                Some(waiting) => Ticket::Place(Box::new(waiting)),
                None => return Err(engine.queue_full(state.to_owned(), attempt)),
            },
            // Its arrival is its place (taken before it is asked); a breaker never waits.
            Gate::Barrier(_) | Gate::Breaker(_) => Ticket::Place(Box::new(())),
            Gate::Shared(slot) => slot.ticket(run_key),
        };
        Ok(Some(ticket))
    }

    /// A request larger than the primitive: it could never be admitted.
    pub(crate) fn too_large(&self, amount: u64, state: &str) -> Option<FlowError> {
        match self {
            Gate::Hold(engine) if !engine.fits_at_all(amount) => {
                Some(engine.too_large(amount, describe_state(state)))
            }
            _ => None,
        }
    }

    /// The hold's TTL, for the scheduler's timer.
    pub(crate) fn ttl(&self) -> Option<std::time::Duration> {
        match self {
            Gate::Hold(engine) => engine.ttl,
            Gate::Pool(_) | Gate::Rate(_) | Gate::Barrier(_) | Gate::Breaker(_) => None,
            Gate::Shared(_) => None,
        }
    }

    /// The run no longer waits here.
    pub(crate) fn forget(&self, run_key: u64) {
        match self {
            Gate::Hold(engine) => engine.forget(run_key),
            Gate::Barrier(barrier) => barrier.forget(run_key),
            Gate::Pool(pool) => pool.forget_run(run_key),
            Gate::Shared(slot) => slot.forget(run_key),
            Gate::Rate(_) | Gate::Breaker(_) => {}
        }
    }

    /// Where the primitive stands (rate limits keep no holders: `None`).
    pub(crate) fn status(&self) -> Option<super::PrimitiveStatus> {
        match self {
            Gate::Hold(engine) => Some(engine.status()),
            Gate::Barrier(barrier) => Some(barrier.status()),
            Gate::Pool(_) | Gate::Rate(_) | Gate::Breaker(_) | Gate::Shared(_) => None,
        }
    }

    /// The named primitive it is, for a deployment that may keep it elsewhere (`None`: the
    /// pool, a breaker, a barrier, an unnamed rate limit, one already shared).
    pub(crate) fn named(&self) -> Option<super::NamedPrimitive> {
        use super::NamedPrimitive;
        match self {
            Gate::Hold(engine) => {
                let kind = match engine.kind {
                    PrimitiveKind::Semaphore => "semaphore",
                    PrimitiveKind::Mutex => "mutex",
                    PrimitiveKind::Lease => "lease",
                    PrimitiveKind::Quota => "quota",
                    PrimitiveKind::Barrier => "barrier",
                    PrimitiveKind::Bulkhead => "bulkhead",
                };
                let key = format!("{kind}/{}", engine.name);
                Some(match engine.kind {
                    PrimitiveKind::Semaphore | PrimitiveKind::Mutex | PrimitiveKind::Lease => {
                        NamedPrimitive::Semaphore {
                            key,
                            permits: u32::try_from(engine.capacity).unwrap_or(u32::MAX),
                            ttl: engine.ttl,
                        }
                    }
                    _ => NamedPrimitive::Local { key },
                })
            }
            Gate::Rate(limit) if limit.is_named() => {
                let key = format!("rate_limit/{}", limit.name());
                Some(match limit.token_bucket_spec() {
                    Some((rate, burst)) => NamedPrimitive::TokenBucket { key, rate, burst },
                    None => NamedPrimitive::Local { key },
                })
            }
            _ => None,
        }
    }

    pub(crate) fn engine(&self) -> Option<&Arc<Engine>> {
        match self {
            Gate::Hold(engine) => Some(engine),
            Gate::Pool(_) | Gate::Rate(_) | Gate::Barrier(_) | Gate::Breaker(_) => None,
            Gate::Shared(_) => None,
        }
    }
}

fn describe_state(state: &str) -> String {
    format!("state `{state}`")
}

impl From<RateLimit> for Gate {
    fn from(limit: RateLimit) -> Self {
        Gate::Rate(limit)
    }
}

impl From<FlowSemaphore> for Gate {
    fn from(primitive: FlowSemaphore) -> Self {
        Gate::Hold(primitive.engine)
    }
}

impl From<FlowMutex> for Gate {
    fn from(primitive: FlowMutex) -> Self {
        Gate::Hold(primitive.engine)
    }
}

impl From<Lease> for Gate {
    fn from(primitive: Lease) -> Self {
        Gate::Hold(primitive.engine)
    }
}

impl From<crate::Bulkhead> for Gate {
    fn from(bulkhead: crate::Bulkhead) -> Self {
        Gate::Hold(bulkhead.engine)
    }
}

impl From<Quota> for Gate {
    fn from(primitive: Quota) -> Self {
        Gate::Hold(primitive.engine)
    }
}

impl From<FlowBarrier> for Gate {
    fn from(barrier: FlowBarrier) -> Self {
        Gate::Barrier(barrier.inner)
    }
}
