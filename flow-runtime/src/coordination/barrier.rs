//! A barrier: `parties` arrivals wait for each other, then all go at once; if they are not
//! all there within `timeout` of the first, every one waiting fails with
//! [`FlowError::BarrierTimeout`] and the barrier starts over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use flow_core::FlowError;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::wakers::{Wake, Wakers};

/// A barrier for `parties` states or tasks (named so as not to clash with tokio's). Attach it to
/// states (`.barrier(b)`, `#[state(barrier(name = "merge", parties = 5, timeout = "30s"))]`):
/// a state starts only when `parties` states sharing the barrier have arrived; or wait on it
/// in code with [`FlowBarrier::wait`]. Clones share one barrier.
#[derive(Clone)]
pub struct FlowBarrier {
    pub(crate) inner: Arc<BarrierInner>,
}

pub(crate) struct BarrierInner {
    pub(crate) name: Arc<str>,
    pub(crate) parties: u32,
    pub(crate) timeout: Duration,
    state: Mutex<Gathering>,
    passed: Notify,
}

#[derive(Default)]
struct Gathering {
    next_id: u64,
    /// Arrivals of the current round, in order.
    waiting: Vec<u64>,
    /// When the current round fails if not complete.
    deadline: Option<Instant>,
    /// Decided arrivals not yet collected: true passed, false timed out.
    decided: HashMap<u64, bool>,
    /// Coordinators with states waiting here.
    coordinators: Wakers,
    /// Rounds completed and rounds that timed out.
    passed: u64,
    broken: u64,
}

/// Where one arrival stands.
pub(crate) enum Arrival {
    Waiting(Option<Instant>),
    Passed,
    TimedOut,
}

/// One arrival at a barrier; withdrawn when dropped before its round completes.
pub(crate) struct ArrivalTicket {
    barrier: Arc<BarrierInner>,
    pub(crate) id: u64,
}

impl Drop for ArrivalTicket {
    fn drop(&mut self) {
        let mut gathering = self.barrier.gathering();
        gathering.decided.remove(&self.id);
        gathering.waiting.retain(|&id| id != self.id);
        if gathering.waiting.is_empty() {
            gathering.deadline = None;
        }
    }
}

impl FlowBarrier {
    /// A barrier for `parties` (0 is raised to 1) that fails a round not complete within
    /// `timeout` of its first arrival.
    pub fn new(name: impl AsRef<str>, parties: u32, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(BarrierInner {
                name: Arc::from(name.as_ref()),
                parties: parties.max(1),
                timeout,
                state: Mutex::new(Gathering::default()),
                passed: Notify::new(),
            }),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Arrives and waits for the others: `Ok` when the round is complete, or
    /// [`FlowError::BarrierTimeout`] when it is not within the timeout (every waiter of that
    /// round fails, and the barrier starts over).
    pub async fn wait(&self) -> Result<(), FlowError> {
        let ticket = self.inner.arrive(Instant::now(), None);
        loop {
            let passed = self.inner.passed.notified();
            tokio::pin!(passed);
            passed.as_mut().enable();
            match self.inner.check(ticket.id, Instant::now(), None) {
                Arrival::Passed => return Ok(()),
                Arrival::TimedOut => return Err(self.inner.timed_out("a task")),
                Arrival::Waiting(deadline) => match deadline {
                    Some(deadline) => {
                        tokio::select! {
                            _ = passed => {}
                            _ = tokio::time::sleep_until(deadline) => {}
                        }
                    }
                    None => passed.await,
                },
            }
        }
    }

    /// Rounds completed and rounds timed out so far, and how many wait now.
    pub fn counts(&self) -> (u64, u64, usize) {
        let gathering = self.inner.gathering();
        (gathering.passed, gathering.broken, gathering.waiting.len())
    }
}

impl std::fmt::Debug for FlowBarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "barrier `{}` ({} parties)",
            self.inner.name, self.inner.parties
        )
    }
}

impl BarrierInner {
    fn gathering(&self) -> MutexGuard<'_, Gathering> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn describe(&self) -> String {
        format!("barrier `{}`", self.name)
    }

    /// A new arrival at `now`; the round completes if it is the last party.
    pub(crate) fn arrive(self: &Arc<Self>, now: Instant, wake: Wake<'_>) -> ArrivalTicket {
        let mut gathering = self.gathering();
        self.expire(&mut gathering, now);
        gathering.next_id += 1;
        let id = gathering.next_id;
        gathering.waiting.push(id);
        if gathering.deadline.is_none() {
            gathering.deadline = now.checked_add(self.timeout);
        }
        gathering.coordinators.register(wake);
        if gathering.waiting.len() >= self.parties as usize {
            let round = std::mem::take(&mut gathering.waiting);
            gathering
                .decided
                .extend(round.into_iter().map(|id| (id, true)));
            gathering.deadline = None;
            gathering.passed += 1;
            self.wake(&mut gathering);
        }
        ArrivalTicket {
            barrier: Arc::clone(self),
            id,
        }
    }

    /// Where arrival `id` stands at `now` (a coordinator passes `wake` to hear of a change).
    pub(crate) fn check(&self, id: u64, now: Instant, wake: Wake<'_>) -> Arrival {
        let mut gathering = self.gathering();
        self.expire(&mut gathering, now);
        match gathering.decided.get(&id) {
            Some(true) => Arrival::Passed,
            Some(false) => Arrival::TimedOut,
            None => {
                gathering.coordinators.register(wake);
                Arrival::Waiting(gathering.deadline)
            }
        }
    }

    /// A round past its deadline fails: each of its arrivals times out.
    fn expire(&self, gathering: &mut Gathering, now: Instant) {
        if gathering.deadline.is_some_and(|deadline| deadline <= now) {
            let round = std::mem::take(&mut gathering.waiting);
            gathering
                .decided
                .extend(round.into_iter().map(|id| (id, false)));
            gathering.deadline = None;
            gathering.broken += 1;
            self.wake(gathering);
        }
    }

    fn wake(&self, gathering: &mut Gathering) {
        gathering.coordinators.take().wake();
        self.passed.notify_waiters();
    }

    pub(crate) fn timed_out(&self, who: &str) -> FlowError {
        FlowError::BarrierTimeout {
            who: who.to_owned(),
            barrier: self.name.to_string(),
            parties: self.parties,
            timeout: self.timeout,
        }
    }

    pub(crate) fn forget(&self, run_key: u64) {
        self.gathering().coordinators.forget(run_key);
    }
}

impl BarrierInner {
    /// A snapshot for `coordination_status()`: capacity is the parties, in use and waiting
    /// the arrivals of the current round, granted the rounds completed and revoked the rounds
    /// timed out.
    pub(crate) fn status(&self) -> super::PrimitiveStatus {
        let mut gathering = self.gathering();
        self.expire(&mut gathering, Instant::now());
        super::PrimitiveStatus {
            kind: super::PrimitiveKind::Barrier,
            name: Arc::clone(&self.name),
            capacity: self.parties.to_string(),
            in_use: gathering.waiting.len().to_string(),
            holders: Vec::new(),
            waiting: gathering.waiting.len(),
            ttl: Some(self.timeout),
            reset_every: None,
            granted: gathering.passed,
            revoked: gathering.broken,
        }
    }
}
