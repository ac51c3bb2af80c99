//! Coordination between states, runs and agents: how often something may start (rate
//! limits), how many at once (semaphores), one at a time (mutexes, leases) and how much in
//! all (quotas). Each is a gate of the scheduler's admission (see `scheduler::admission`) and
//! is usable on its own; deadlocks between them are detected as they close.

mod attach;
mod barrier;
mod deadlock;
mod gate;
mod hold;
mod primitives;
mod rate_limit;
mod shared;
mod wakers;

use std::sync::Arc;
use std::time::Duration;

pub use attach::DeclaredPrimitives;
pub use barrier::FlowBarrier;
pub use hold::PrimitiveKind;
pub use primitives::{FlowMutex, FlowSemaphore, HoldGuard, Lease, Quota};
pub use rate_limit::RateLimit;
pub use shared::{NamedPrimitive, SharedAcquire, SharedGate, SharedHold};

pub(crate) use deadlock::{Actor, AttemptIdentity, Owner, cycles_found};
pub(crate) use gate::{Asker, Gate, Taken, Ticket, Verdict, WaitRule};
pub(crate) use hold::{Engine, HeldUnits};
pub(crate) use shared::SharedSlot;

/// One primitive as it stands (see [`crate::Agent::coordination_status`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PrimitiveStatus {
    /// Semaphore, mutex, lease or quota.
    pub kind: PrimitiveKind,
    /// Its name.
    pub name: Arc<str>,
    /// Permits, 1 for a mutex or lease, or a quota's limit per period.
    pub capacity: String,
    /// Held now (a quota: consumed in this period).
    pub in_use: String,
    /// Who holds it now, oldest first.
    pub holders: Vec<HolderStatus>,
    /// States of the agent's runs waiting for it now.
    pub waiting: usize,
    /// How long one hold may last.
    pub ttl: Option<Duration>,
    /// A quota's period.
    pub reset_every: Option<Duration>,
    /// Acquisitions granted so far.
    pub granted: u64,
    /// Holds taken away past their TTL so far.
    pub revoked: u64,
}

/// One holder of a primitive.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HolderStatus {
    /// The state and run (or task) holding it.
    pub holder: String,
    /// How much it holds.
    pub amount: String,
    /// For how long.
    pub held_for: Duration,
    /// Until its TTL takes it away.
    pub expires_in: Option<Duration>,
}

/// The coordination primitives of an agent's states, and the deadlock detector's count.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CoordinationStatus {
    /// Each primitive the agent's states name, in the order first named.
    pub primitives: Vec<PrimitiveStatus>,
    /// Deadlocks found (and refused) in this process so far.
    pub deadlocks: u64,
}

impl crate::Agent {
    /// Where the coordination primitives of this agent's states stand: per primitive its
    /// kind, holders (state and run, for how long, until when), waiting count, counts and
    /// TTL; and how many deadlocks the detector has refused in this process. (Rate limits
    /// keep no holders and are not listed.)
    pub fn coordination_status(&self) -> Result<CoordinationStatus, flow_core::FlowError> {
        let compiled = self.compiled()?;
        Ok(CoordinationStatus {
            primitives: compiled.gates.iter().filter_map(Gate::status).collect(),
            deadlocks: cycles_found(),
        })
    }

    /// Releases everything the primitives of this agent's states hold, whoever holds it (a
    /// state of this agent or anything sharing the primitive), and wakes their waiters. For
    /// recovery after a fault: holders are not cancelled, they find their guards lost
    /// ([`HoldGuard::is_lost`]). A quota's consumption starts again.
    pub fn reset_coordination(&self) -> Result<(), flow_core::FlowError> {
        for engine in self.compiled()?.gates.iter().filter_map(Gate::engine) {
            engine.reset();
        }
        Ok(())
    }
}
