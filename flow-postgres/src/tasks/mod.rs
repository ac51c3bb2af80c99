//! Remote states through the database: a worker sends the attempts of its runs' `remote`
//! states to `fluffy_tasks` (under each run's lease), any worker takes them (under a lease
//! of its own, with a fencing token, as runs are taken), and the reply comes back to the
//! run's worker, woken by `NOTIFY`. See `flow_runtime::remote` for what a call and a reply
//! carry and how a reply is applied.

mod executor;
pub(crate) mod sql;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flow_core::FlowError;
use flow_runtime::remote::{Dispatch, DispatchFuture, RemoteCall, RemoteReply};
use tokio::sync::{Notify, oneshot};

use crate::PgBackend;
use crate::backend::{Channel, db_error};
pub(crate) use executor::Executor;

/// The runs a worker coordinates, by workflow and key: their lease (id, fencing token).
type Leases = HashMap<(String, String), (i64, i64)>;

/// What a worker's runs send their remote states' attempts through.
pub(crate) struct PgDispatch {
    shared: Arc<Shared>,
    collector: tokio::task::AbortHandle,
}

struct Shared {
    backend: PgBackend,
    worker: String,
    leases: Mutex<Leases>,
    /// The attempts sent and not answered yet, by id.
    waiting: Mutex<HashMap<i64, oneshot::Sender<Option<Vec<u8>>>>>,
    /// An attempt was sent: the collector looks for its reply from now on.
    kick: Notify,
    /// How often the collector looks without a notification.
    poll: Duration,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PgDispatch {
    /// Starts collecting replies for worker `worker`, looking every `poll` at the latest.
    pub(crate) fn start(backend: &PgBackend, worker: &str, poll: Duration) -> Arc<Self> {
        let shared = Arc::new(Shared {
            backend: backend.clone(),
            worker: worker.to_owned(),
            leases: Mutex::default(),
            waiting: Mutex::default(),
            kick: Notify::new(),
            poll,
        });
        let collector = backend.spawn(collect(Arc::clone(&shared)));
        Arc::new(Self { shared, collector })
    }

    /// Run `key` of `workflow` is coordinated here under lease `(id, fence)` until the guard
    /// is dropped: its attempts are sent under that lease.
    pub(crate) fn hold(&self, workflow: &str, key: &str, id: i64, fence: i64) -> HeldLease {
        let run = (workflow.to_owned(), key.to_owned());
        lock(&self.shared.leases).insert(run.clone(), (id, fence));
        HeldLease {
            shared: Arc::clone(&self.shared),
            run,
            lease: (id, fence),
        }
    }
}

impl Drop for PgDispatch {
    fn drop(&mut self) {
        self.collector.abort();
    }
}

/// A run's lease, known to the dispatch while it is held (see [`PgDispatch::hold`]).
pub(crate) struct HeldLease {
    shared: Arc<Shared>,
    run: (String, String),
    lease: (i64, i64),
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        // (Only its own: a later lease of the run, held here since, stays.)
        let mut leases = lock(&self.shared.leases);
        if leases.get(&self.run) == Some(&self.lease) {
            leases.remove(&self.run);
        }
    }
}

impl Dispatch for PgDispatch {
    fn dispatch(&self, call: RemoteCall) -> DispatchFuture {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let run = (call.workflow.clone(), call.run_key.clone());
            let Some((id, fence)) = lock(&shared.leases).get(&run).copied() else {
                return Err(FlowError::InvalidConfig {
                    agent: call.workflow,
                    message: format!(
                        "run `{}` is not coordinated by worker `{}`: a dispatching agent of a worker runs only the runs that worker claims",
                        call.run_key, shared.worker
                    ),
                });
            };
            let body = serde_json::to_vec(&call).map_err(|e| FlowError::Serialization {
                key: format!("(the call of state `{}`)", call.state),
                message: e.to_string(),
            })?;
            let (workflow, state) = (call.workflow.clone(), call.state.clone());
            let sent: Option<i64> = shared
                .backend
                .query("sending a remote state's attempt", move |c| async move {
                    let rows = c
                        .client
                        .query(
                            &c.sql.tasks.dispatch,
                            &[&id, &fence, &workflow, &state, &body],
                        )
                        .await?;
                    Ok(rows.first().map(|row| row.get(0)))
                })
                .await?;
            let Some(task) = sent else {
                return Err(FlowError::LeaseLost {
                    workflow: call.workflow,
                    run: call.run_key,
                    worker: shared.worker.clone(),
                    fence: u64::try_from(fence).unwrap_or_default(),
                    action: format!("remote attempt of state `{}`", call.state),
                });
            };
            let (sender, receiver) = oneshot::channel();
            lock(&shared.waiting).insert(task, sender);
            shared.kick.notify_one();
            let mut withdraw = Withdraw {
                shared: Arc::clone(&shared),
                task,
                armed: true,
            };
            let reply = receiver.await;
            withdraw.armed = false;
            let reply = reply.ok().flatten().ok_or_else(|| {
                db_error(
                    shared.backend.describe(),
                    "waiting for a remote reply",
                    "the worker stopped collecting replies",
                )
            })?;
            serde_json::from_slice::<RemoteReply>(&reply).map_err(|e| FlowError::Serialization {
                key: format!("(the reply of state `{}`)", call.state),
                message: e.to_string(),
            })
        })
    }
}

/// Withdraws an attempt whose run stopped waiting for it (cancelled, timed out, stopped):
/// its row goes, and the worker running it loses its lease at its next renewal and stops.
struct Withdraw {
    shared: Arc<Shared>,
    task: i64,
    armed: bool,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        lock(&self.shared.waiting).remove(&self.task);
        let (backend, task) = (self.shared.backend.clone(), self.task);
        self.shared.backend.spawn(async move {
            // (Not withdrawn: the run's lease passes on or the run ends, and the next
            // claim deletes it.)
            let _ = backend
                .query("withdrawing a remote attempt", move |c| async move {
                    c.client.execute(&c.sql.tasks.withdraw, &[&task]).await
                })
                .await;
        });
    }
}

/// Hands the replies of the attempts sent to their runs: looks when a reply is announced,
/// when an attempt was sent, and every `poll`.
async fn collect(shared: Arc<Shared>) {
    let signal = shared.backend.notifications(Channel::Replies);
    loop {
        let woken = signal.notified();
        let kicked = shared.kick.notified();
        tokio::pin!(woken, kicked);
        woken.as_mut().enable();
        kicked.as_mut().enable();
        let ids: Vec<i64> = lock(&shared.waiting).keys().copied().collect();
        if !ids.is_empty() {
            let collected = shared
                .backend
                .query("collecting remote replies", move |c| async move {
                    let rows = c.client.query(&c.sql.tasks.collect, &[&ids]).await?;
                    Ok(rows
                        .iter()
                        .map(|row| (row.get::<_, i64>(0), row.get::<_, Option<Vec<u8>>>(1)))
                        .collect::<Vec<_>>())
                })
                .await;
            match collected {
                Ok(replies) => {
                    let mut waiting = lock(&shared.waiting);
                    for (id, reply) in replies {
                        if let Some(sender) = waiting.remove(&id) {
                            let _ = sender.send(reply);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(worker = %shared.worker, %error, "collecting remote replies failed");
                }
            }
        }
        tokio::select! {
            () = woken => {}
            () = kicked => {}
            () = tokio::time::sleep(shared.poll) => {}
        }
    }
}
