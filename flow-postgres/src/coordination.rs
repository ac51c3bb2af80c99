//! Coordination shared by every process of a deployment, in the database: semaphores (a
//! mutex is a semaphore of one permit; every permit is a lease that lapses unless renewed)
//! and token-bucket rate limits. Each acquisition is one round trip (a function call that
//! locks the primitive's row, so concurrent acquisitions in any process are serialized by
//! the database).
//!
//! Use them in a state's body (`let permit = semaphore.acquire(1).await?;` …
//! `permit.release()`), or as a state's admission gate: both are `flow_runtime::SharedGate`s
//! (`StateOptions::shared_gate`, or `Worker::share_gates` for the named primitives a
//! workflow declares).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flow_core::FlowError;

use crate::PgBackend;

/// How long a permit lasts without renewal, by default.
pub const DEFAULT_PERMIT_TTL: Duration = Duration::from_secs(30);

/// A semaphore shared by every process that connects to the database: at most `permits`
/// units are held at once, across all of them. A permit lasts its TTL unless renewed, so a
/// crashed holder's permits come back by themselves.
#[derive(Clone)]
pub struct PgSemaphore {
    backend: PgBackend,
    name: String,
    ttl: Duration,
    poll: Duration,
}

/// Units of a [`PgSemaphore`] held until released (or dropped, which releases them in the
/// background), or until their TTL passes without renewal.
pub struct PgPermit {
    backend: PgBackend,
    name: String,
    holder: String,
    units: u32,
    token: u64,
    ttl: Duration,
    released: bool,
}

/// A unique id for one acquisition: the process and a counter.
fn holder_id() -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl PgSemaphore {
    /// Creates the semaphore `name` with `permits` permits (or sets the number of an existing
    /// one) and returns it.
    pub async fn create(backend: &PgBackend, name: &str, permits: u32) -> Result<Self, FlowError> {
        let permits = i32::try_from(permits.max(1)).unwrap_or(i32::MAX);
        let n = name.to_owned();
        backend
            .query("creating a semaphore", move |c| async move {
                c.client
                    .execute(&c.sql.create_semaphore, &[&n, &permits])
                    .await
            })
            .await?;
        Ok(Self::open(backend, name))
    }

    /// The semaphore `name`, created before (by any process).
    pub fn open(backend: &PgBackend, name: &str) -> Self {
        Self {
            backend: backend.clone(),
            name: name.to_owned(),
            ttl: DEFAULT_PERMIT_TTL,
            poll: Duration::from_millis(200),
        }
    }

    /// How long a permit lasts without renewal (default 30 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How often a waiting acquisition asks again without a notification (default 200 ms;
    /// a release wakes waiters at once, an expiry does not).
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes `units` permits if they fit now.
    pub async fn try_acquire(&self, units: u32) -> Result<Option<PgPermit>, FlowError> {
        let holder = holder_id();
        let (n, h) = (self.name.clone(), holder.clone());
        let (count, ttl) = (i32::try_from(units).unwrap_or(i32::MAX), millis(self.ttl));
        let token: Option<i64> = self
            .backend
            .query("acquiring a semaphore", move |c| async move {
                let row = c
                    .client
                    .query_one(&c.sql.acquire, &[&n, &h, &count, &ttl])
                    .await?;
                Ok(row.get(0))
            })
            .await?;
        Ok(token.map(|token| PgPermit {
            backend: self.backend.clone(),
            name: self.name.clone(),
            holder,
            units,
            token: u64::try_from(token).unwrap_or(0),
            ttl: self.ttl,
            released: false,
        }))
    }

    /// Takes `units` permits, waiting until they fit: woken when another process releases
    /// some, and asking again every poll interval (permits that expire notify nobody).
    pub async fn acquire(&self, units: u32) -> Result<PgPermit, FlowError> {
        let signal = self.backend.notifications(crate::backend::Channel::Permits);
        loop {
            let woken = signal.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(permit) = self.try_acquire(units).await? {
                return Ok(permit);
            }
            let _ = tokio::time::timeout(self.poll, woken).await;
        }
    }

    /// The units held now (unexpired), across every process.
    pub async fn in_use(&self) -> Result<u64, FlowError> {
        let n = self.name.clone();
        self.backend
            .query("counting permits", move |c| async move {
                let row = c.client.query_one(&c.sql.permits_in_use, &[&n]).await?;
                Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
            })
            .await
    }
}

impl PgPermit {
    /// Its fencing token: larger for every later acquisition of any semaphore, so that a
    /// system the holder writes to can refuse a holder whose permit lapsed.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// How many units it holds.
    pub fn units(&self) -> u32 {
        self.units
    }

    /// Extends it by its TTL from now; false if it had lapsed (and may be another's).
    pub async fn renew(&self) -> Result<bool, FlowError> {
        let (n, h, ttl) = (self.name.clone(), self.holder.clone(), millis(self.ttl));
        self.backend
            .query("renewing a permit", move |c| async move {
                let renewed = c
                    .client
                    .execute(&c.sql.renew_permit, &[&n, &h, &ttl])
                    .await?;
                Ok(renewed == 1)
            })
            .await
    }

    /// Gives the units back and wakes processes waiting for them; false if it had lapsed.
    pub async fn release(mut self) -> Result<bool, FlowError> {
        self.released = true;
        release(self.backend.clone(), self.name.clone(), self.holder.clone()).await
    }
}

async fn release(backend: PgBackend, name: String, holder: String) -> Result<bool, FlowError> {
    backend
        .query("releasing a permit", move |c| async move {
            let row = c
                .client
                .query_one(&c.sql.release_permit, &[&name, &holder])
                .await?;
            Ok(row.get::<_, i64>(0) == 1)
        })
        .await
}

impl Drop for PgPermit {
    fn drop(&mut self) {
        if !self.released {
            // (In the background; if that fails too, the TTL gives the units back.)
            let (backend, name, holder) =
                (self.backend.clone(), self.name.clone(), self.holder.clone());
            self.backend.spawn(async move {
                let _ = release(backend, name, holder).await;
            });
        }
    }
}

/// A token-bucket rate limit shared by every process: `rate` tokens a second, at most
/// `burst` at once; each acquisition takes its cost in tokens or waits until it can.
#[derive(Clone)]
pub struct PgRateLimit {
    backend: PgBackend,
    name: String,
}

impl PgRateLimit {
    /// Creates the rate limit `name` (full: `burst` tokens), or sets the rate and burst of an
    /// existing one, and returns it.
    pub async fn create(
        backend: &PgBackend,
        name: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<Self, FlowError> {
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(FlowError::InvalidConfig {
                agent: name.to_owned(),
                message: format!(
                    "rate limit `{name}`: {per_second} per second is not a positive rate"
                ),
            });
        }
        let burst = f64::from(burst.max(1));
        let n = name.to_owned();
        backend
            .query("creating a rate limit", move |c| async move {
                c.client
                    .execute(&c.sql.create_rate_limit, &[&n, &per_second, &burst])
                    .await
            })
            .await?;
        Ok(Self::open(backend, name))
    }

    /// The rate limit `name`, created before (by any process).
    pub fn open(backend: &PgBackend, name: &str) -> Self {
        Self {
            backend: backend.clone(),
            name: name.to_owned(),
        }
    }

    /// Takes `cost` tokens if the bucket holds them now (`None`); otherwise takes nothing and
    /// says how long until it will.
    pub async fn try_take(&self, cost: f64) -> Result<Option<Duration>, FlowError> {
        let n = self.name.clone();
        let wait: f64 = self
            .backend
            .query("taking from a rate limit", move |c| async move {
                let row = c.client.query_one(&c.sql.take_tokens, &[&n, &cost]).await?;
                Ok(row.get(0))
            })
            .await?;
        Ok((wait > 0.0).then(|| Duration::from_secs_f64(wait.min(86_400.0))))
    }

    /// Takes one token, waiting as long as the bucket says.
    pub async fn acquire(&self) -> Result<(), FlowError> {
        while let Some(wait) = self.try_take(1.0).await? {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

/// A permit held for a state's attempt (as its admission gate): renewed every third of its
/// TTL while held, so that a long attempt keeps it and a crashed worker's lapses; released
/// when dropped.
struct RenewedPermit {
    renewal: tokio::task::AbortHandle,
}

impl Drop for RenewedPermit {
    fn drop(&mut self) {
        // (The renewal task owns the permit: aborting it drops the permit, which releases.)
        self.renewal.abort();
    }
}

impl flow_runtime::SharedGate for PgSemaphore {
    fn describe(&self) -> String {
        format!("semaphore `{}` in {}", self.name, self.backend.describe())
    }

    fn acquire(&self, amount: u64) -> flow_runtime::SharedAcquire {
        let semaphore = self.clone();
        Box::pin(async move {
            let units = u32::try_from(amount).unwrap_or(u32::MAX);
            let permit = PgSemaphore::acquire(&semaphore, units).await?;
            let every = (permit.ttl / 3).max(Duration::from_millis(10));
            let name = semaphore.name.clone();
            let renewal = semaphore.backend.spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match permit.renew().await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(semaphore = %name, "a held permit had lapsed before its renewal: another holder may have taken it");
                        }
                        Err(error) => {
                            tracing::warn!(semaphore = %name, %error, "renewing a held permit failed");
                        }
                    }
                }
            });
            Ok(Box::new(RenewedPermit { renewal }) as flow_runtime::SharedHold)
        })
    }
}

impl flow_runtime::SharedGate for PgRateLimit {
    fn describe(&self) -> String {
        format!("rate limit `{}` in {}", self.name, self.backend.describe())
    }

    fn acquire(&self, amount: u64) -> flow_runtime::SharedAcquire {
        let limit = self.clone();
        Box::pin(async move {
            // (Precision: a cost is a small count of tokens.)
            let cost = amount as f64;
            while let Some(wait) = limit.try_take(cost).await? {
                tokio::time::sleep(wait).await;
            }
            Ok(Box::new(()) as flow_runtime::SharedHold)
        })
    }

    fn consumes(&self) -> bool {
        true
    }
}
