//! Primitives kept outside the process (in a database, shared by every worker of a
//! deployment) that the scheduler's admission asks like its own.
//!
//! A shared primitive is acquired with a round trip, which the coordinator must not wait for:
//! asked for a state, the gate starts the acquisition as a task of its own and answers "wait
//! for a release"; when the acquisition completes, the task wakes the gate
//! (`Message::GateReleased`), the state asks again and is admitted with what was taken. One
//! acquisition per run and gate is in flight at a time (only the first state of a run waiting
//! at a gate asks it, see `WaitRule::InOrder`); it is dropped (and what it took given back)
//! when the states of the run stop waiting there.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flow_core::{FlowError, FxHashMap};

use super::gate::{Asker, Taken, Ticket, Verdict};
use crate::scheduler::Message;

/// A coordination primitive kept outside the process (see `flow-postgres`'s `PgSemaphore` and
/// `PgRateLimit`), used as a state's gate with [`crate::StateOptions::shared_gate`].
pub trait SharedGate: Send + Sync + 'static {
    /// What it is, for messages (`semaphore "gpu" in postgres db.internal/flows`).
    fn describe(&self) -> String;

    /// Takes `amount` (a semaphore's units, a rate limit's cost), waiting as long as it takes;
    /// resolves with what is held while the state's attempt runs (dropping it gives back what
    /// can be given back). An error fails the attempt (retries apply): an amount that can
    /// never be granted must be an error, not a wait that never ends.
    fn acquire(&self, amount: u64) -> SharedAcquire;

    /// Whether what it takes is consumed (a rate limit's tokens) rather than given back when
    /// the attempt ends (a semaphore's permits): consumed ones are asked after the others, so
    /// that nothing is consumed for a state that then waits at another gate.
    fn consumes(&self) -> bool {
        false
    }
}

/// What [`SharedGate::acquire`] returns.
pub type SharedAcquire = Pin<Box<dyn Future<Output = Result<SharedHold, FlowError>> + Send>>;

/// What a shared primitive's acquisition holds until the attempt ends.
pub type SharedHold = Box<dyn Any + Send + Sync>;

/// A named primitive a workflow's states use (declared with `#[state(semaphore(..))]` and
/// the like, or attached with a name) that a deployment may keep elsewhere instead (see
/// [`crate::Agent::named_primitives`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum NamedPrimitive {
    /// A semaphore (a mutex or a lease: one permit), with its TTL if it has one.
    Semaphore {
        /// `semaphore/gpu`, `mutex/db`, `lease/leader`: its kind and name.
        key: String,
        /// How many may hold it at once.
        permits: u32,
        /// How long one hold may last.
        ttl: Option<Duration>,
    },
    /// A token bucket: `rate` tokens per second, up to `burst` at once.
    TokenBucket {
        /// `rate_limit/openai`.
        key: String,
        /// Tokens per second.
        rate: f64,
        /// The most at once.
        burst: u32,
    },
    /// One that no shared backend stands in for (a quota, a barrier, a bulkhead, a rate
    /// limit of another algorithm): it stays in each process.
    Local {
        /// `quota/tokens`.
        key: String,
    },
}

impl NamedPrimitive {
    /// Its kind and name, as `kind/name`.
    pub fn key(&self) -> &str {
        match self {
            Self::Semaphore { key, .. } | Self::TokenBucket { key, .. } | Self::Local { key } => {
                key
            }
        }
    }
}

/// A shared primitive as a gate: the acquisitions in flight, by run.
pub(crate) struct SharedSlot {
    pub(crate) gate: Arc<dyn SharedGate>,
    pending: Mutex<FxHashMap<u64, Pending>>,
}

/// One run's acquisition.
struct Pending {
    amount: u64,
    outcome: Arc<Mutex<Option<Result<SharedHold, FlowError>>>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Pending {
    fn drop(&mut self) {
        // (What it took, if it completed, is dropped with `outcome`: given back.)
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SharedSlot {
    pub(crate) fn new(gate: Arc<dyn SharedGate>) -> Self {
        Self {
            gate,
            pending: Mutex::default(),
        }
    }

    /// Whether both stand for the same primitive.
    pub(crate) fn same(&self, other: &SharedSlot) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.gate), Arc::as_ptr(&other.gate))
    }

    /// Admits with what the run's completed acquisition took, or starts one (or lets the one
    /// in flight go on) and waits for it.
    pub(crate) fn ask(&self, amount: u64, asker: &Asker<'_>) -> Verdict {
        let mut pending = lock(&self.pending);
        if let Some(acquisition) = pending.get(&asker.run_key) {
            let done = lock(&acquisition.outcome).take();
            match done {
                None => return Verdict::OnRelease,
                Some(outcome) => {
                    let same_amount = acquisition.amount == amount;
                    pending.remove(&asker.run_key);
                    match outcome {
                        Ok(held) if same_amount => return Verdict::Admitted(Taken::Shared(held)),
                        // Taken for a state that needed another amount: given back, and
                        // asked again for this one.
                        Ok(_) => {}
                        Err(error) => return Verdict::Refused(error),
                    }
                }
            }
        }
        let outcome = Arc::new(Mutex::new(None));
        let (gate, index, wake) = (Arc::clone(&self.gate), asker.gate, asker.wake.clone());
        let done = Arc::clone(&outcome);
        let task = tokio::spawn(async move {
            let taken = gate.acquire(amount).await;
            *lock(&done) = Some(taken);
            let _ = wake.send(Message::GateReleased { gate: index });
        });
        pending.insert(
            asker.run_key,
            Pending {
                amount,
                outcome,
                task: task.abort_handle(),
            },
        );
        Verdict::OnRelease
    }

    /// The run's states no longer wait here: its acquisition goes.
    pub(crate) fn forget(&self, run_key: u64) {
        let gone = lock(&self.pending).remove(&run_key);
        drop(gone);
    }

    /// A waiting state's place: when it stops waiting, the run's acquisition goes too (the
    /// next state of the run to ask starts another), so nothing is held for nobody.
    pub(crate) fn ticket(self: &Arc<Self>, run_key: u64) -> Ticket {
        Ticket::Place(Box::new(Forget {
            slot: Arc::clone(self),
            run_key,
        }))
    }
}

/// Drops a run's acquisition when dropped.
struct Forget {
    slot: Arc<SharedSlot>,
    run_key: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.slot.forget(self.run_key);
    }
}
