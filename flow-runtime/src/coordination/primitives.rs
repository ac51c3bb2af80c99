//! The coordination primitives users create: semaphore, mutex, lease and quota. Named
//! `Flow…` where tokio has a type of the same name, so both can be imported.
//!
//! Each is a handle: clones share one primitive. Attach them to states (the scheduler takes
//! them before the state starts and gives them back when its attempt ends, however it ends),
//! or take them inside any code as a scoped guard.

use std::sync::Arc;
use std::time::Duration;

use flow_core::FlowError;

use super::deadlock::Owner;
use super::hold::{Engine, HeldUnits, PrimitiveKind, QUOTA_SCALE};

/// A counting semaphore: at most `permits` held at once.
///
/// ```
/// use flow_runtime::FlowSemaphore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), flow_core::FlowError> {
/// let gpu = FlowSemaphore::new("gpu", 2);
/// let first = gpu.acquire().await?;
/// let _second = gpu.acquire().await?;
/// assert!(gpu.try_acquire().is_none()); // both taken
/// drop(first);
/// assert!(gpu.try_acquire().is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct FlowSemaphore {
    pub(crate) engine: Arc<Engine>,
}

/// A mutual-exclusion lock over whatever states agree to take it: one holder at a time. With
/// [`FlowMutex::with_ttl`], a holder that keeps it longer loses it to the next waiter (see
/// [`HoldGuard::is_lost`]; a state that holds it through the scheduler is cancelled).
#[derive(Clone)]
pub struct FlowMutex {
    pub(crate) engine: Arc<Engine>,
}

/// A lease: exclusive, for at most `ttl` unless renewed ([`HoldGuard::renew`]). Past its TTL
/// the lease goes to the next waiter; the holder is told ([`HoldGuard::is_lost`]) or, holding
/// it through the scheduler, cancelled.
#[derive(Clone)]
pub struct Lease {
    pub(crate) engine: Arc<Engine>,
}

/// A quota: an amount that may be consumed per period (`limit` per `reset_every`), or in all
/// without a period. What is taken is not given back; a take waits for the next period when
/// the current one has too little left, and fails with [`FlowError::QuotaExhausted`] when no
/// period will come.
#[derive(Clone)]
pub struct Quota {
    pub(crate) engine: Arc<Engine>,
}

/// Units of a semaphore, a mutex or a lease, held until dropped.
#[must_use = "the hold ends when the guard is dropped"]
pub struct HoldGuard {
    units: HeldUnits,
}

impl HoldGuard {
    /// Whether the hold was taken away: its TTL passed and another holder has it, or the
    /// coordination of an agent was reset. Work that needed exclusivity should stop.
    pub fn is_lost(&self) -> bool {
        self.units.is_lost()
    }

    /// Extends the hold's TTL to a full TTL from now; `false` if it was lost already. Does
    /// nothing for a primitive without a TTL.
    pub fn renew(&self) -> bool {
        self.units.renew()
    }
}

impl std::fmt::Debug for HoldGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldGuard")
            .field("primitive", &self.units.engine().describe())
            .finish()
    }
}

macro_rules! common {
    ($type:ident) => {
        impl $type {
            /// Its name.
            pub fn name(&self) -> &str {
                &self.engine.name
            }

            /// Who holds it, who waits, and its counts.
            pub fn status(&self) -> super::PrimitiveStatus {
                self.engine.status()
            }
        }

        impl std::fmt::Debug for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.engine.describe())
            }
        }
    };
}

common!(FlowSemaphore);
common!(FlowMutex);
common!(Lease);
common!(Quota);

impl FlowSemaphore {
    /// A semaphore of `permits` (0 is raised to 1: a semaphore nobody can pass is a bug).
    pub fn new(name: impl AsRef<str>, permits: u32) -> Self {
        Self {
            engine: Arc::new(Engine::new(
                PrimitiveKind::Semaphore,
                name.as_ref(),
                u64::from(permits.max(1)),
                None,
                None,
            )),
        }
    }

    /// Waits for a permit. Refused with [`FlowError::Deadlock`] if waiting would close a
    /// cycle of waits (see the README's coordination section).
    pub async fn acquire(&self) -> Result<HoldGuard, FlowError> {
        self.acquire_many(1).await
    }

    /// Waits for `permits` at once; more than the semaphore has is an error at once.
    pub async fn acquire_many(&self, permits: u32) -> Result<HoldGuard, FlowError> {
        let units = self
            .engine
            .take(u64::from(permits), Owner::current())
            .await?;
        Ok(HoldGuard { units })
    }

    /// A permit if one is free now.
    pub fn try_acquire(&self) -> Option<HoldGuard> {
        try_hold(&self.engine, 1)
    }
}

impl FlowMutex {
    /// A mutex without a time limit.
    pub fn new(name: impl AsRef<str>) -> Self {
        Self::build(name.as_ref(), None)
    }

    /// A mutex whose holder loses it after `ttl` (a zero TTL is raised to 1 ms).
    pub fn with_ttl(name: impl AsRef<str>, ttl: Duration) -> Self {
        Self::build(name.as_ref(), Some(ttl.max(Duration::from_millis(1))))
    }

    fn build(name: &str, ttl: Option<Duration>) -> Self {
        Self {
            engine: Arc::new(Engine::new(PrimitiveKind::Mutex, name, 1, ttl, None)),
        }
    }

    /// Waits for the lock (see [`FlowSemaphore::acquire`] for deadlocks).
    pub async fn lock(&self) -> Result<HoldGuard, FlowError> {
        let units = self.engine.take(1, Owner::current()).await?;
        Ok(HoldGuard { units })
    }

    /// The lock if it is free now.
    pub fn try_lock(&self) -> Option<HoldGuard> {
        try_hold(&self.engine, 1)
    }
}

impl Lease {
    /// A lease held for at most `ttl` at a time (a zero TTL is raised to 1 ms).
    pub fn new(name: impl AsRef<str>, ttl: Duration) -> Self {
        Self {
            engine: Arc::new(Engine::new(
                PrimitiveKind::Lease,
                name.as_ref(),
                1,
                Some(ttl.max(Duration::from_millis(1))),
                None,
            )),
        }
    }

    /// Waits for the lease.
    pub async fn acquire(&self) -> Result<HoldGuard, FlowError> {
        let units = self.engine.take(1, Owner::current()).await?;
        Ok(HoldGuard { units })
    }

    /// The lease if it is free now.
    pub fn try_acquire(&self) -> Option<HoldGuard> {
        try_hold(&self.engine, 1)
    }
}

impl Quota {
    /// A quota of `limit` in all (it never refills). Amounts are kept to a thousandth.
    pub fn new(name: impl AsRef<str>, limit: f64) -> Self {
        Self::build(name.as_ref(), limit, None)
    }

    /// A quota of `limit` per `period`, periods back to back from the first take.
    pub fn per(name: impl AsRef<str>, limit: f64, period: Duration) -> Self {
        Self::build(
            name.as_ref(),
            limit,
            Some(period.max(Duration::from_millis(1))),
        )
    }

    fn build(name: &str, limit: f64, period: Option<Duration>) -> Self {
        Self {
            engine: Arc::new(Engine::new(
                PrimitiveKind::Quota,
                name,
                units(limit),
                None,
                period,
            )),
        }
    }

    /// Consumes `amount`, waiting for the next period if this one has too little left.
    /// More than the whole limit, or more than is left of a quota without a period, is an
    /// error at once.
    pub async fn take(&self, amount: f64) -> Result<(), FlowError> {
        self.engine
            .take(units(amount), Owner::current())
            .await
            .map(drop)
    }

    /// Consumes `amount` if this period has that much left.
    pub fn try_take(&self, amount: f64) -> bool {
        try_hold(&self.engine, units(amount)).is_some()
    }
}

/// A quota amount in thousandths; negative and NaN amounts are zero.
pub(crate) fn units(amount: f64) -> u64 {
    let scaled = (amount * QUOTA_SCALE).round();
    if scaled.is_finite() && scaled > 0.0 {
        scaled.min(u64::MAX as f64) as u64
    } else {
        0
    }
}

fn try_hold(engine: &Arc<Engine>, amount: u64) -> Option<HoldGuard> {
    engine
        .try_take(amount, Owner::current(), tokio::time::Instant::now(), None)
        .ok()
        .map(|units| HoldGuard { units })
}
