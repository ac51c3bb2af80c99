//! The engine behind the semaphore, mutex, lease and quota: units held by owners, with
//! optional time limits (a hold past its TTL is revoked and goes to the next waiter) and an
//! optional reset period (a quota's consumption starts again at each period).
//!
//! Waiters are of two kinds: run coordinators, woken with one message when something comes
//! back (they ask again; see `scheduler::admission`), and tasks that await a guard directly,
//! woken through a `Notify`. A refused ask also says when, at the latest, to ask again (the
//! earliest TTL expiry or quota reset), so no waiter depends on a release that never comes.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::deadlock::{self, Actor, Owner};
use super::wakers::{Wake, Wakers};

/// Which primitive an engine is, for messages and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimitiveKind {
    /// [`FlowSemaphore`](super::FlowSemaphore): permits, given back when done.
    Semaphore,
    /// [`FlowMutex`](super::FlowMutex): one holder at a time, optionally with a TTL.
    Mutex,
    /// [`Lease`](super::Lease): one holder at a time, for at most its TTL unless renewed.
    Lease,
    /// [`Quota`](super::Quota): an amount consumed, not given back, reset each period.
    Quota,
    /// [`FlowBarrier`](super::FlowBarrier): parties that start together.
    Barrier,
    /// [`Bulkhead`](crate::Bulkhead): places for attempts, with a bounded queue.
    Bulkhead,
}

impl PrimitiveKind {
    /// Its name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            PrimitiveKind::Semaphore => "semaphore",
            PrimitiveKind::Mutex => "mutex",
            PrimitiveKind::Lease => "lease",
            PrimitiveKind::Quota => "quota",
            PrimitiveKind::Barrier => "barrier",
            PrimitiveKind::Bulkhead => "bulkhead",
        }
    }
}

/// Quotas count in thousandths, so that `take(0.5)` is exact.
pub(crate) const QUOTA_SCALE: f64 = 1000.0;

pub(crate) struct Engine {
    pub(crate) kind: PrimitiveKind,
    pub(crate) name: Arc<str>,
    /// Units that may be held (or, for a quota, consumed per period) at once.
    pub(crate) capacity: u64,
    /// How long one hold may last (mutex, lease).
    pub(crate) ttl: Option<Duration>,
    /// How often a quota's consumption starts again.
    pub(crate) reset_every: Option<Duration>,
    /// How many may wait at most (a bulkhead's queue); one more is refused.
    pub(crate) queue_limit: Option<usize>,
    state: Mutex<Ledger>,
    /// Wakes tasks awaiting a guard.
    released: Notify,
}

#[derive(Default)]
struct Ledger {
    used: u64,
    holds: Vec<Hold>,
    next_id: u64,
    /// Coordinators with states waiting here.
    coordinators: Wakers,
    /// A quota's current period began here (the first take).
    period_start: Option<Instant>,
    /// How many holds were revoked past their TTL.
    revoked: u64,
    /// How many acquisitions were granted.
    granted: u64,
    /// How many wait now (states of runs, and tasks).
    waiting: usize,
}

/// One acquisition waiting; it stops counting when dropped.
pub(crate) struct Waiting(Arc<Engine>);

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut ledger = self.0.ledger();
        ledger.waiting = ledger.waiting.saturating_sub(1);
    }
}

pub(crate) struct Hold {
    pub(crate) id: u64,
    pub(crate) amount: u64,
    pub(crate) since: Instant,
    pub(crate) expires: Option<Instant>,
    pub(crate) owner: Owner,
}

/// A refused acquisition: ask again when woken, or at `until` at the latest.
pub(crate) struct Busy {
    pub(crate) until: Option<Instant>,
}

/// Units held; given back when dropped (except a quota's, which are consumed).
pub(crate) struct HeldUnits {
    engine: Arc<Engine>,
    id: u64,
    amount: u64,
    /// The quota period they were taken in.
    period: Option<Instant>,
}

impl HeldUnits {
    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Records the task that holds these units, named `label` (for deadlock detection and
    /// status). A quota's units are consumed, not held: nothing to record.
    pub(crate) fn set_task(&self, task: Actor, label: &Arc<str>) {
        let mut ledger = self.engine.ledger();
        if let Some(hold) = ledger.holds.iter_mut().find(|h| h.id == self.id) {
            hold.owner.task = Some(task);
            deadlock::held(task, label, &self.engine);
        }
    }

    /// Whether the hold was revoked (its TTL passed and someone else asked, or the agent's
    /// coordination was reset).
    pub(crate) fn is_lost(&self) -> bool {
        !self.engine.ledger().holds.iter().any(|h| h.id == self.id)
    }

    /// Gives the units back, a quota's too (the state they were taken for did not start),
    /// unless its period has rolled over since (the new period owes nothing).
    pub(crate) fn give_back(self) {
        let mut ledger = self.engine.ledger();
        ledger.granted = ledger.granted.saturating_sub(1);
        if self.engine.kind == PrimitiveKind::Quota && ledger.period_start == self.period {
            ledger.used = ledger.used.saturating_sub(self.amount);
        }
        // Dropping releases a hold (a quota's drop keeps its consumption).
    }

    /// Extends the hold's time limit to `ttl` from now; `false` if it was already lost.
    pub(crate) fn renew(&self) -> bool {
        let now = Instant::now();
        let mut ledger = self.engine.ledger();
        self.engine.evict_expired(&mut ledger, now);
        match ledger.holds.iter_mut().find(|h| h.id == self.id) {
            Some(hold) => {
                hold.expires = self.engine.ttl.and_then(|ttl| now.checked_add(ttl));
                true
            }
            None => false,
        }
    }
}

impl Drop for HeldUnits {
    fn drop(&mut self) {
        self.engine.release(self.id, self.amount);
    }
}

impl Engine {
    pub(crate) fn new(
        kind: PrimitiveKind,
        name: &str,
        capacity: u64,
        ttl: Option<Duration>,
        reset_every: Option<Duration>,
    ) -> Self {
        Self {
            kind,
            name: Arc::from(name),
            capacity,
            ttl,
            reset_every,
            queue_limit: None,
            state: Mutex::new(Ledger::default()),
            released: Notify::new(),
        }
    }

    /// The same engine with at most `limit` acquisitions waiting.
    pub(crate) fn with_queue_limit(mut self, limit: usize) -> Self {
        self.queue_limit = Some(limit);
        self
    }

    /// Units held (or consumed in this period) now.
    pub(crate) fn used(&self) -> u64 {
        self.ledger().used
    }

    /// Acquisitions waiting now.
    pub(crate) fn waiting(&self) -> usize {
        self.ledger().waiting
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// "kind `name`", for messages.
    pub(crate) fn describe(&self) -> String {
        format!("{} `{}`", self.kind.as_str(), self.name)
    }

    /// Takes `amount` units for `owner` at `now`, or says when to ask again. A coordinator
    /// passes `wake` to be told when units come back.
    pub(crate) fn try_take(
        self: &Arc<Self>,
        amount: u64,
        owner: Owner,
        now: Instant,
        wake: Wake<'_>,
    ) -> Result<HeldUnits, Busy> {
        let mut ledger = self.ledger();
        self.evict_expired(&mut ledger, now);
        self.roll_period(&mut ledger, now);
        if ledger.used.saturating_add(amount) > self.capacity {
            ledger.coordinators.register(wake);
            let expiry = ledger.holds.iter().filter_map(|h| h.expires).min();
            let reset = self.next_reset(&ledger);
            let until = match (expiry, reset) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            return Err(Busy { until });
        }
        ledger.used += amount;
        ledger.next_id += 1;
        ledger.granted += 1;
        let id = ledger.next_id;
        if self.kind != PrimitiveKind::Quota {
            if let Some(task) = owner.task {
                deadlock::held(task, &owner.label, self);
            }
            ledger.holds.push(Hold {
                id,
                amount,
                since: now,
                expires: self.ttl.and_then(|ttl| now.checked_add(ttl)),
                owner,
            });
        }
        Ok(HeldUnits {
            engine: Arc::clone(self),
            id,
            amount,
            period: ledger.period_start,
        })
    }

    /// Counts one more acquisition waiting here, until the returned value is dropped; `None`
    /// when the queue is full (a bulkhead's).
    pub(crate) fn enter_wait(self: &Arc<Self>) -> Option<Waiting> {
        let mut ledger = self.ledger();
        if self
            .queue_limit
            .is_some_and(|limit| ledger.waiting >= limit)
        {
            return None;
        }
        ledger.waiting += 1;
        Some(Waiting(Arc::clone(self)))
    }

    /// Forgets a coordinator's interest (its run ended).
    pub(crate) fn forget(&self, run_key: u64) {
        self.ledger().coordinators.forget(run_key);
    }

    fn release(&self, id: u64, amount: u64) {
        if self.kind == PrimitiveKind::Quota {
            return; // consumed
        }
        let waiters = {
            let mut ledger = self.ledger();
            let Some(at) = ledger.holds.iter().position(|h| h.id == id) else {
                return; // revoked already
            };
            let hold = ledger.holds.swap_remove(at);
            if let Some(task) = hold.owner.task {
                deadlock::released(task, self);
            }
            ledger.used = ledger.used.saturating_sub(amount);
            ledger.coordinators.take()
        };
        self.wake(waiters);
    }

    fn wake(&self, waiters: Wakers) {
        waiters.wake();
        self.released.notify_waiters();
    }

    /// Revokes holds past their TTL: their units go to whoever asks next.
    fn evict_expired(&self, ledger: &mut Ledger, now: Instant) {
        if self.ttl.is_none() {
            return;
        }
        let before = ledger.holds.len();
        ledger.holds.retain(|hold| {
            let keep = hold.expires.is_none_or(|at| at > now);
            if !keep && let Some(task) = hold.owner.task {
                deadlock::released(task, self);
            }
            keep
        });
        let revoked = before - ledger.holds.len();
        if revoked > 0 {
            ledger.revoked += revoked as u64;
            ledger.used = ledger.holds.iter().map(|h| h.amount).sum();
        }
    }

    /// A quota's period rolls over: its consumption starts again.
    fn roll_period(&self, ledger: &mut Ledger, now: Instant) {
        let Some(period) = self.reset_every else {
            return;
        };
        let start = *ledger.period_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= period {
            let periods = elapsed.as_nanos() / period.as_nanos();
            let offset = period.as_nanos().saturating_mul(periods);
            ledger.period_start =
                Some(start + Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX)));
            ledger.used = 0;
        }
    }

    fn next_reset(&self, ledger: &Ledger) -> Option<Instant> {
        let period = self.reset_every?;
        ledger.period_start?.checked_add(period)
    }

    /// Whether `amount` could ever be granted.
    pub(crate) fn fits_at_all(&self, amount: u64) -> bool {
        amount <= self.capacity
    }

    /// Waits (as a task, not a coordinator) until `amount` units are granted.
    pub(crate) async fn take(
        self: &Arc<Self>,
        amount: u64,
        owner: Owner,
    ) -> Result<HeldUnits, flow_core::FlowError> {
        if !self.fits_at_all(amount) {
            return Err(self.too_large(amount, owner.label.to_string()));
        }
        // While waiting: an edge in the wait-for graph, and a count in the status.
        let mut edge = None;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.try_take(amount, owner.clone(), Instant::now(), None) {
                Ok(held) => return Ok(held),
                Err(Busy { until }) => {
                    if self.kind == PrimitiveKind::Quota && until.is_none() {
                        return Err(self.exhausted(amount, owner.label.to_string()));
                    }
                    if edge.is_none() {
                        let Some(waiting) = self.enter_wait() else {
                            return Err(self.queue_full(owner.label.to_string(), 1));
                        };
                        edge = Some((deadlock::waits(&owner, self)?, waiting));
                    }
                    match until {
                        Some(until) => {
                            tokio::select! {
                                _ = released => {}
                                _ = tokio::time::sleep_until(until) => {}
                            }
                        }
                        None => released.await,
                    }
                }
            }
        }
    }

    pub(crate) fn too_large(&self, amount: u64, who: String) -> flow_core::FlowError {
        flow_core::FlowError::CoordinationRequestTooLarge {
            who,
            primitive: self.describe(),
            amount: self.show(amount),
            capacity: self.show(self.capacity),
        }
    }

    /// A bulkhead whose queue is full refused `who`.
    pub(crate) fn queue_full(&self, who: String, attempts: u32) -> flow_core::FlowError {
        flow_core::FlowError::BulkheadFull {
            state: who,
            attempts,
            bulkhead: self.name.to_string(),
            max_concurrent: usize::try_from(self.capacity).unwrap_or(usize::MAX),
            max_queued: self.queue_limit.unwrap_or(0),
        }
    }

    pub(crate) fn exhausted(&self, amount: u64, who: String) -> flow_core::FlowError {
        flow_core::FlowError::QuotaExhausted {
            who,
            quota: self.name.to_string(),
            amount: self.show(amount),
            limit: self.show(self.capacity),
        }
    }

    /// Units as the user wrote them (a quota's thousandths as a decimal).
    pub(crate) fn show(&self, units: u64) -> String {
        if self.kind == PrimitiveKind::Quota {
            format!("{}", units as f64 / QUOTA_SCALE)
        } else {
            units.to_string()
        }
    }

    /// A snapshot for `coordination_status()`.
    pub(crate) fn status(&self) -> super::PrimitiveStatus {
        let now = Instant::now();
        let mut ledger = self.ledger();
        self.evict_expired(&mut ledger, now);
        self.roll_period(&mut ledger, now);
        super::PrimitiveStatus {
            kind: self.kind,
            name: Arc::clone(&self.name),
            capacity: self.show(self.capacity),
            in_use: self.show(ledger.used),
            holders: ledger
                .holds
                .iter()
                .map(|h| super::HolderStatus {
                    holder: h.owner.label.to_string(),
                    amount: self.show(h.amount),
                    held_for: now.saturating_duration_since(h.since),
                    expires_in: h.expires.map(|at| at.saturating_duration_since(now)),
                })
                .collect(),
            waiting: ledger.waiting,
            ttl: self.ttl,
            reset_every: self.reset_every,
            granted: ledger.granted,
            revoked: ledger.revoked,
        }
    }

    /// Releases every hold (the agent's coordination is reset); waiters are woken.
    pub(crate) fn reset(&self) {
        let waiters = {
            let mut ledger = self.ledger();
            for hold in ledger.holds.drain(..) {
                if let Some(task) = hold.owner.task {
                    deadlock::released(task, self);
                }
            }
            ledger.used = 0;
            ledger.period_start = None;
            ledger.coordinators.take()
        };
        self.wake(waiters);
    }
}
