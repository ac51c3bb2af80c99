//! Workers: processes that claim runs from the queue and run them under leases.
//!
//! A worker claims runs with `FOR UPDATE SKIP LOCKED` (so workers never wait for each other),
//! leases each for [`Worker::lease`], renews every lease it holds in one statement per
//! [`Worker::heartbeat`], and runs each claimed run durably in a [`FencedStore`]: a
//! checkpoint or a result written after the lease passed to another worker is refused by the
//! database. A run whose worker died is claimed again once its lease lapsed (the claim query
//! takes lapsed leases as it takes queued runs) and continues from its latest checkpoint:
//! the states that were running when the worker died run again (at least once); the run's
//! end is recorded once.

mod batch;
mod ends;
mod fenced;
mod run;
mod saves;

pub use fenced::FencedStore;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flow_core::FlowError;
use flow_runtime::Agent;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::db_error;
use crate::tasks::{Executor, PgDispatch};
use crate::{PgBackend, PgRateLimit, PgSemaphore};
use ends::Ends;
use flow_runtime::NamedPrimitive;
use flow_runtime::remote::Dispatch;
use run::{Claimed, RunSite};
use saves::Saves;

/// The default lease: a worker lost is replaced within this and one heartbeat.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// The default heartbeat (and poll) interval.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// The default number of lapsed leases a run may have (see [`Worker::max_lapses`]).
pub const DEFAULT_MAX_LAPSES: u32 = 5;

/// A process's worker: claims runs of the workflows registered with it and runs them.
///
/// ```no_run
/// # async fn example(backend: flow_postgres::PgBackend, agent: flow_runtime::Agent) -> Result<(), flow_core::FlowError> {
/// let shutdown = flow_postgres::CancellationToken::new();
/// let report = flow_postgres::Worker::new(&backend)
///     .register(&agent)
///     .concurrency(16)
///     .run(shutdown)
///     .await?;
/// # let _ = report;
/// # Ok(())
/// # }
/// ```
pub struct Worker {
    backend: PgBackend,
    name: String,
    agents: HashMap<String, Agent>,
    lease: Duration,
    heartbeat: Duration,
    concurrency: usize,
    /// How many lapsed leases a run may have before it fails instead of running again.
    max_lapses: u32,
    /// How many remote states' attempts it runs at once.
    remote_concurrency: usize,
    /// Whether the named primitives of its workflows are kept in the database.
    share_gates: bool,
}

/// What a worker did, when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Runs it claimed.
    pub claimed: u64,
    /// Runs it ended (any final status) and recorded.
    pub finished: u64,
    /// Runs whose lease it lost (their end, if it came, was refused), including those it
    /// still held as it stopped whose lease had passed on to another worker.
    pub lost: u64,
    /// Runs it gave back to the queue as it stopped.
    pub released: u64,
    /// Attempts of remote states it ran (for its own runs or other workers') and answered.
    pub remote_attempts: u64,
}

/// A run this worker holds.
struct Held {
    fence: i64,
    cancel: CancellationToken,
    /// Its workflow and key (a request to cancel it names them to the runtime).
    workflow: String,
    key: String,
    /// A request to cancel it reached the run (it is stopping, as cancelled).
    cancel_asked: bool,
    /// When its lease was last renewed (this worker's clock): past the lease, the worker
    /// gives the run up even if it could not hear from the database.
    renewed: Instant,
    /// Its lease was found gone (it is being stopped).
    lost: bool,
}

/// How one of its runs ended here.
enum Ended {
    /// Its end was recorded.
    Recorded,
    /// The lease had passed on: nothing recorded.
    Lost,
    /// Stopped here (lease lost, or the worker stopping) before it ended.
    Stopped,
    /// Given back to the queue (the database failed under it).
    Released,
}

fn worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".to_owned());
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{host}-{}-{n}", std::process::id())
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Worker {
    /// A worker of `backend`'s queue, named after the host and process, with the default
    /// lease (10 s), heartbeat (5 s) and 32 runs at once.
    pub fn new(backend: &PgBackend) -> Self {
        Self {
            backend: backend.clone(),
            name: worker_name(),
            agents: HashMap::new(),
            lease: DEFAULT_LEASE,
            heartbeat: DEFAULT_HEARTBEAT,
            concurrency: 32,
            max_lapses: DEFAULT_MAX_LAPSES,
            remote_concurrency: 32,
            share_gates: false,
        }
    }

    /// Names it (in the queue's `worker` column and in lease errors).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Runs the workflow `agent` when one of its runs is claimed (by the agent's name).
    pub fn register(mut self, agent: &Agent) -> Self {
        self.agents.insert(agent.name().to_owned(), agent.clone());
        self
    }

    /// How long a claim lasts without renewal (default 10 s).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often it renews its leases and looks for runs without a notification (default
    /// 5 s; shorter than the lease).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// How many runs it runs at once (default 32).
    pub fn concurrency(mut self, runs: usize) -> Self {
        self.concurrency = runs.max(1);
        self
    }

    /// How many times a run may be taken over after its worker stopped renewing its lease
    /// (the worker died or stalled) before a worker that claims it again records it failed
    /// instead of running it (default 5): a state that kills its process (an abort, out of
    /// memory) does not take every worker down in turn. The run's `error` says so; fix what
    /// killed the workers and submit it again under a new key.
    pub fn max_lapses(mut self, lapses: u32) -> Self {
        self.max_lapses = lapses;
        self
    }

    /// Keeps the named coordination primitives of its workflows' states in the database,
    /// shared by every worker that does the same, instead of in this process: semaphores,
    /// mutexes and leases (`#[state(semaphore(name = "gpu", permits = 2))]`, ...) become
    /// [`crate::PgSemaphore`]s named `semaphore/gpu`, `mutex/..`, `lease/..` with their
    /// permits (and TTL: a crashed worker's permits come back after it; a running attempt's
    /// are renewed), and named token-bucket rate limits become [`crate::PgRateLimit`]s named
    /// `rate_limit/..`. They are created (or their permits and rates set) as the worker
    /// starts. Quotas, barriers, bulkheads and other rate-limit algorithms stay in each
    /// process (a warning names them).
    pub fn share_gates(mut self) -> Self {
        self.share_gates = true;
        self
    }

    /// How many attempts of remote states (`#[state(remote)]`, of any worker's runs) it
    /// runs at once (default 32). A worker takes them only for the workflows registered
    /// with it that have remote states.
    pub fn remote_concurrency(mut self, attempts: usize) -> Self {
        self.remote_concurrency = attempts.max(1);
        self
    }

    /// Its name.
    pub fn worker_name(&self) -> &str {
        &self.name
    }

    /// Claims and runs runs until `shutdown` is cancelled; then stops its runs, gives back
    /// to the queue those it still holds (another worker continues them from their latest
    /// checkpoint at once), and returns what it did.
    pub async fn run(self, shutdown: CancellationToken) -> Result<WorkerReport, FlowError> {
        if self.heartbeat >= self.lease || self.heartbeat.is_zero() {
            return Err(FlowError::InvalidConfig {
                agent: self.name.clone(),
                message: format!(
                    "the heartbeat ({:?}) must be shorter than the lease ({:?}), or leases lapse between renewals",
                    self.heartbeat, self.lease
                ),
            });
        }
        if self.agents.is_empty() {
            return Err(FlowError::InvalidConfig {
                agent: self.name.clone(),
                message: "no workflow is registered: add one with `register(&agent)`".into(),
            });
        }
        for agent in self.agents.values() {
            agent.validate()?;
        }
        // A database it cannot use at all (no schema, no privileges) is an error now, not
        // a worker that waits forever.
        self.backend.connection().await?;
        // Workflows with remote states: their runs here send those states' attempts out,
        // and this worker takes attempts of them (its own runs' and others').
        let remote: HashMap<String, Agent> = self
            .agents
            .iter()
            .filter(|(_, agent)| agent.has_remote_states())
            .map(|(name, agent)| (name.clone(), agent.clone()))
            .collect();
        let dispatch = (!remote.is_empty())
            .then(|| PgDispatch::start(&self.backend, &self.name, self.heartbeat));
        let mut shared: HashMap<String, Agent> = HashMap::new();
        if self.share_gates {
            for (name, agent) in &self.agents {
                shared.insert(name.clone(), self.shared_gates_of(agent).await?);
            }
        }
        let runners: HashMap<String, Agent> = self
            .agents
            .iter()
            .map(|(name, agent)| {
                let agent = shared.get(name).unwrap_or(agent);
                let runner = match &dispatch {
                    Some(dispatch) if remote.contains_key(name) => {
                        agent.dispatching(Arc::clone(dispatch) as Arc<dyn Dispatch>)
                    }
                    _ => agent.clone(),
                };
                (name.clone(), runner)
            })
            .collect();
        let executor = (!remote.is_empty()).then(|| {
            let executor = Executor {
                backend: self.backend.clone(),
                worker: self.name.clone(),
                agents: remote,
                lease: self.lease,
                heartbeat: self.heartbeat,
                capacity: self.remote_concurrency,
            };
            AbortOnDrop(tokio::spawn(executor.run(shutdown.clone())))
        });
        // Ends are recorded, and checkpoints saved, in batches by tasks of the backend's
        // (stopped with the worker).
        let ends: Ends = ends::start(&self.backend);
        let saves: Saves = saves::start(&self.backend);
        let signal = self.backend.notifications(crate::backend::Channel::Runs);
        let cancels = self.backend.notifications(crate::backend::Channel::Cancels);
        let mut held: HashMap<i64, Held> = HashMap::new();
        let mut tasks: JoinSet<(i64, Ended)> = JoinSet::new();
        // Which run each task runs: a task that panicked says only its task id.
        let mut runs_of_tasks: HashMap<tokio::task::Id, i64> = HashMap::new();
        let mut report = WorkerReport::default();
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut claim_now = true;
        loop {
            let woken = signal.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let asked_to_cancel = cancels.notified();
            tokio::pin!(asked_to_cancel);
            asked_to_cancel.as_mut().enable();
            if claim_now && held.len() < self.concurrency {
                let wanted = self.concurrency - held.len();
                // (The database unreachable or slow: tried again at the next heartbeat or
                // wake-up.)
                let running: Vec<i64> = held.keys().copied().collect();
                let claimed = match self.bounded(self.lease, self.claim(wanted, running)).await {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        tracing::warn!(worker = %self.name, %error, "claiming runs failed");
                        Vec::new()
                    }
                };
                // A full batch: more may be waiting.
                claim_now = claimed.len() == wanted;
                for run in claimed {
                    report.claimed += 1;
                    let Some(agent) = runners.get(&run.workflow).cloned() else {
                        continue; // (claimed by name among the registered ones)
                    };
                    let cancel = shutdown.child_token();
                    held.insert(
                        run.id,
                        Held {
                            fence: run.fence,
                            cancel: cancel.clone(),
                            workflow: run.workflow.clone(),
                            key: run.key.clone(),
                            cancel_asked: false,
                            renewed: Instant::now(),
                            lost: false,
                        },
                    );
                    let (backend, worker) = (self.backend.clone(), self.name.clone());
                    let id = run.id;
                    let lease = dispatch
                        .as_ref()
                        .map(|d| d.hold(&run.workflow, &run.key, run.id, run.fence));
                    let site = RunSite {
                        backend,
                        worker,
                        ends: ends.clone(),
                        saves: saves.clone(),
                        max_lapses: self.max_lapses,
                    };
                    let task = tasks.spawn(async move {
                        let ended = run::execute(site, agent, run, cancel).await;
                        drop(lease);
                        (id, ended)
                    });
                    runs_of_tasks.insert(task.id(), id);
                }
                if claim_now {
                    continue;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(joined) = tasks.join_next_with_id() => {
                    // This run's end, and those of the runs that ended with it: one claim
                    // for all their places (not one claim each, behind a backlog).
                    let mut next = Some(joined);
                    while let Some(joined) = next {
                        match joined {
                            Ok((task, (id, ended))) => {
                                runs_of_tasks.remove(&task);
                                // (A run stopped by the worker's own stop, seen before the
                                // stop itself: it stays held, to be given back below.)
                                if !stopped_by_shutdown(&held, id, &ended) {
                                    account(&mut report, &mut held, id, ended);
                                }
                            }
                            Err(error) => {
                                // A run that panicked: no longer renewed, its lease lapses
                                // and another worker continues it from its latest checkpoint.
                                if let Some(id) = runs_of_tasks.remove(&error.id()) {
                                    held.remove(&id);
                                    report.lost += 1;
                                    tracing::error!(worker = %self.name, run = id, %error, "a run's task panicked");
                                }
                            }
                        }
                        next = tasks.try_join_next_with_id();
                    }
                    claim_now = true;
                }
                _ = heartbeat.tick() => {
                    self.renew(&mut held).await;
                    claim_now = true;
                }
                () = &mut woken => claim_now = true,
                // A run was asked to be cancelled (maybe one of ours): the heartbeat reads the
                // requests now rather than at its next tick.
                () = &mut asked_to_cancel => self.renew(&mut held).await,
            }
        }
        // Stopping: runs stop here (those that ended meanwhile are counted), then those
        // still held go back to the queue.
        for run in held.values() {
            run.cancel.cancel();
        }
        while let Some(joined) = tasks.join_next().await {
            if let Ok((id, ended)) = joined
                && !stopped_by_shutdown(&held, id, &ended)
            {
                account(&mut report, &mut held, id, ended);
            }
        }
        match self.bounded(self.lease, self.release(&held)).await {
            Ok(released) => {
                report.released += released;
                // The others had passed on (taken over while this worker stalled, before it
                // noticed): lost here.
                report.lost += (held.len() as u64).saturating_sub(released);
            }
            // (Their leases lapse, and other workers take them then.)
            Err(error) => tracing::warn!(worker = %self.name, %error, "giving runs back failed"),
        }
        if let Some(mut executor) = executor {
            report.remote_attempts = (&mut executor.0).await.unwrap_or_default();
        }
        Ok(report)
    }

    /// `agent` with its named primitives kept in the database (see [`Worker::share_gates`]).
    async fn shared_gates_of(&self, agent: &Agent) -> Result<Agent, FlowError> {
        let mut gates: HashMap<String, Arc<dyn flow_runtime::SharedGate>> = HashMap::new();
        for primitive in agent.named_primitives() {
            let gate: Arc<dyn flow_runtime::SharedGate> = match &primitive {
                NamedPrimitive::Semaphore { key, permits, ttl } => {
                    let semaphore = PgSemaphore::create(&self.backend, key, *permits).await?;
                    Arc::new(match ttl {
                        Some(ttl) => semaphore.ttl(*ttl),
                        None => semaphore,
                    })
                }
                NamedPrimitive::TokenBucket { key, rate, burst } => {
                    Arc::new(PgRateLimit::create(&self.backend, key, *rate, *burst).await?)
                }
                other => {
                    tracing::warn!(
                        worker = %self.name,
                        workflow = agent.name(),
                        primitive = other.key(),
                        "this primitive has no shared counterpart: it stays in each process"
                    );
                    continue;
                }
            };
            gates.insert(primitive.key().to_owned(), gate);
        }
        Ok(agent.sharing(&gates))
    }

    /// `call`, or an error if the database has not answered within `limit` (a silent
    /// network must not hold the worker's loop up). A claim is given the whole lease: one
    /// that commits after its caller stopped waiting leaves its runs leased to nobody
    /// until the lease lapses.
    async fn bounded<T>(
        &self,
        limit: Duration,
        call: impl Future<Output = Result<T, FlowError>>,
    ) -> Result<T, FlowError> {
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(db_error(
                self.backend.describe(),
                "waiting for the database",
                format!("no answer within {limit:?}"),
            ))
        })
    }

    /// Claims up to `count` runs, none of the runs `running` this worker still runs.
    async fn claim(&self, count: usize, running: Vec<i64>) -> Result<Vec<Claimed>, FlowError> {
        let names: Vec<String> = self.agents.keys().cloned().collect();
        let (worker, lease) = (self.name.clone(), millis(self.lease));
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        self.backend
            .query("claiming runs", move |c| async move {
                let rows = c
                    .client
                    .query(&c.sql.claim, &[&names, &worker, &count, &lease, &running])
                    .await?;
                Ok(rows
                    .iter()
                    .map(|row| Claimed {
                        id: row.get(0),
                        workflow: row.get(1),
                        key: row.get(2),
                        context: row.get(3),
                        fence: row.get(4),
                        claims: row.get(5),
                        lapses: row.get(6),
                    })
                    .collect())
            })
            .await
    }

    /// Renews every lease held; stops the runs whose lease is gone (another worker claimed
    /// them, or the database could not be reached for a whole lease). (A run that ended
    /// meanwhile is not renewed either: its task's outcome says what happened.)
    async fn renew(&self, held: &mut HashMap<i64, Held>) {
        if held.is_empty() {
            return;
        }
        let (ids, fences): (Vec<i64>, Vec<i64>) = held.iter().map(|(&id, h)| (id, h.fence)).unzip();
        let lease = millis(self.lease);
        // (Bounded so that a silent database cannot hold renewals up past the lease.)
        let limit = self.lease.saturating_sub(self.heartbeat);
        let renewed = self
            .bounded(
                limit,
                self.backend.query("renewing leases", move |c| async move {
                    let rows = c
                        .client
                        .query(&c.sql.heartbeat, &[&ids, &fences, &lease])
                        .await?;
                    Ok(rows
                        .iter()
                        .map(|row| (row.get::<_, i64>(0), row.get::<_, Option<String>>(1)))
                        .collect::<Vec<_>>())
                }),
            )
            .await;
        if let Err(error) = &renewed {
            tracing::warn!(worker = %self.name, %error, "renewing leases failed");
        }
        let now = Instant::now();
        if let Ok(renewed) = &renewed {
            self.pass_on_cancel_requests(held, renewed);
        }
        for (id, run) in held.iter_mut() {
            let gone = match &renewed {
                Ok(renewed) if renewed.iter().any(|(renewed, _)| renewed == id) => {
                    run.renewed = now;
                    false
                }
                Ok(_) => true,
                // Unreachable: a lease not renewed for its whole length may be another's now.
                Err(_) => now.duration_since(run.renewed) >= self.lease,
            };
            if gone && !run.lost {
                run.lost = true;
                run.cancel.cancel();
            }
        }
    }

    /// Gives the requests to cancel runs it holds (read with their leases) to those runs: each
    /// stops as cancelled, keeping the request in its last checkpoint. A run whose coordinator
    /// has not started yet is asked again at the next heartbeat.
    fn pass_on_cancel_requests(
        &self,
        held: &mut HashMap<i64, Held>,
        renewed: &[(i64, Option<String>)],
    ) {
        let store = crate::PgStore::new(&self.backend);
        for (id, request) in renewed {
            let (Some(request), Some(run)) = (request, held.get_mut(id)) else {
                continue;
            };
            if run.cancel_asked {
                continue;
            }
            match serde_json::from_str::<flow_runtime::CancelRecord>(request) {
                Ok(record) => {
                    run.cancel_asked = flow_runtime::cancel_in_this_process(
                        &store,
                        &run.workflow,
                        &run.key,
                        &record,
                    );
                }
                Err(error) => {
                    // (Written by `ask_holder_to_cancel`; unreadable only if edited by hand.)
                    tracing::warn!(worker = %self.name, run = id, %error, "a request to cancel a run is not readable");
                    run.cancel_asked = true;
                }
            }
        }
    }

    /// Gives the runs still held back to the queue.
    async fn release(&self, held: &HashMap<i64, Held>) -> Result<u64, FlowError> {
        if held.is_empty() {
            return Ok(0);
        }
        let (ids, fences): (Vec<i64>, Vec<i64>) = held.iter().map(|(&id, h)| (id, h.fence)).unzip();
        self.backend
            .query("releasing runs", move |c| async move {
                let rows = c.client.query(&c.sql.release, &[&ids, &fences]).await?;
                Ok(rows.len() as u64)
            })
            .await
    }
}

/// A task stopped if the worker's future is dropped before it was awaited (the remote
/// attempts it runs go back to other workers when their leases lapse).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether run `id` was stopped by the worker's stop (not for a lost lease): it is still
/// the worker's, to give back.
fn stopped_by_shutdown(held: &HashMap<i64, Held>, id: i64, ended: &Ended) -> bool {
    matches!(ended, Ended::Stopped) && held.get(&id).is_some_and(|run| !run.lost)
}

/// Counts how run `id` ended and forgets it.
fn account(report: &mut WorkerReport, held: &mut HashMap<i64, Held>, id: i64, ended: Ended) {
    let lost = held.remove(&id).is_some_and(|run| run.lost);
    match ended {
        Ended::Recorded => report.finished += 1,
        Ended::Lost => report.lost += 1,
        Ended::Stopped if lost => report.lost += 1,
        Ended::Stopped => {}
        Ended::Released => report.released += 1,
    }
}
