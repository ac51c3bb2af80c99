//! A worker's side that takes remote attempts from `fluffy_tasks` and runs them.

use std::collections::HashMap;
use std::time::Duration;

use flow_runtime::Agent;
use flow_runtime::remote::{RemoteCall, RemoteReply};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::PgBackend;
use crate::backend::Channel;

/// How many times an attempt is taken before it fails instead: an attempt whose workers
/// keep dying under it (a crash, a kill, memory) is not a reason to kill every worker.
const MAX_TAKES: i32 = 5;

/// Takes and runs remote attempts of its workflows.
pub(crate) struct Executor {
    pub(crate) backend: PgBackend,
    pub(crate) worker: String,
    /// The workflows with remote states, by name, as defined (not dispatching).
    pub(crate) agents: HashMap<String, Agent>,
    pub(crate) lease: Duration,
    pub(crate) heartbeat: Duration,
    /// How many attempts it runs at once.
    pub(crate) capacity: usize,
}

/// An attempt it holds.
struct Held {
    fence: i64,
    cancel: CancellationToken,
    renewed: Instant,
}

/// An attempt just taken.
struct Taken {
    id: i64,
    fence: i64,
    workflow: String,
    call: Vec<u8>,
    takes: i32,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Executor {
    /// Takes and runs attempts until `shutdown`; then stops those it runs and gives them
    /// back. Returns how many it answered.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> u64 {
        let signal = self.backend.notifications(Channel::Tasks);
        let mut held: HashMap<i64, Held> = HashMap::new();
        let mut running: JoinSet<(i64, bool)> = JoinSet::new();
        let mut attempts_of_tasks: HashMap<tokio::task::Id, i64> = HashMap::new();
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut answered = 0;
        let mut take_now = true;
        loop {
            let woken = signal.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if take_now && held.len() < self.capacity {
                let wanted = self.capacity - held.len();
                let held_ids: Vec<i64> = held.keys().copied().collect();
                let taken = match tokio::time::timeout(self.lease, self.take(wanted, held_ids))
                    .await
                {
                    Ok(Ok(taken)) => taken,
                    Ok(Err(error)) => {
                        tracing::warn!(worker = %self.worker, %error, "taking remote attempts failed");
                        Vec::new()
                    }
                    Err(_) => Vec::new(),
                };
                take_now = taken.len() == wanted;
                for attempt in taken {
                    let cancel = shutdown.child_token();
                    held.insert(
                        attempt.id,
                        Held {
                            fence: attempt.fence,
                            cancel: cancel.clone(),
                            renewed: Instant::now(),
                        },
                    );
                    let agent = self.agents.get(&attempt.workflow).cloned();
                    let (backend, id) = (self.backend.clone(), attempt.id);
                    let task = running
                        .spawn(async move { (id, execute(backend, agent, attempt, cancel).await) });
                    attempts_of_tasks.insert(task.id(), id);
                }
                if take_now {
                    continue;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(joined) = running.join_next_with_id() => {
                    let (task, replied) = match joined {
                        Ok((task, (_, replied))) => (task, replied),
                        // (A panic outside the state's body, which `execute_remote` catches:
                        // its lease lapses and another worker takes it.)
                        Err(error) => (error.id(), false),
                    };
                    if let Some(id) = attempts_of_tasks.remove(&task) {
                        held.remove(&id);
                    }
                    answered += u64::from(replied);
                    take_now = true;
                }
                _ = heartbeat.tick() => {
                    self.renew(&mut held).await;
                    take_now = true;
                }
                () = &mut woken => take_now = true,
            }
        }
        for attempt in held.values() {
            attempt.cancel.cancel();
        }
        while let Some(joined) = running.join_next_with_id().await {
            if let Ok((task, (id, replied))) = joined {
                attempts_of_tasks.remove(&task);
                if replied {
                    held.remove(&id);
                    answered += 1;
                }
            }
        }
        if let Err(error) = self.release(&held).await {
            tracing::warn!(worker = %self.worker, %error, "giving remote attempts back failed");
        }
        answered
    }

    /// Takes up to `count` attempts, none of the attempts `running` this worker still runs.
    async fn take(
        &self,
        count: usize,
        running: Vec<i64>,
    ) -> Result<Vec<Taken>, flow_core::FlowError> {
        let names: Vec<String> = self.agents.keys().cloned().collect();
        let (worker, lease) = (self.worker.clone(), millis(self.lease));
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        self.backend
            .query("taking remote attempts", move |c| async move {
                let rows = c
                    .client
                    .query(
                        &c.sql.tasks.claim,
                        &[&names, &worker, &count, &lease, &running],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|row| Taken {
                        id: row.get(0),
                        fence: row.get(1),
                        workflow: row.get(2),
                        call: row.get(3),
                        takes: row.get(4),
                    })
                    .collect())
            })
            .await
    }

    /// Renews the leases of the attempts it runs; stops those whose lease is gone (the run
    /// withdrew it, or it lapsed and another worker took it).
    async fn renew(&self, held: &mut HashMap<i64, Held>) {
        if held.is_empty() {
            return;
        }
        let (ids, fences): (Vec<i64>, Vec<i64>) = held.iter().map(|(&id, h)| (id, h.fence)).unzip();
        let lease = millis(self.lease);
        let limit = self.lease.saturating_sub(self.heartbeat);
        let renewed = tokio::time::timeout(
            limit,
            self.backend
                .query("renewing remote attempts", move |c| async move {
                    let rows = c
                        .client
                        .query(&c.sql.tasks.renew, &[&ids, &fences, &lease])
                        .await?;
                    Ok(rows
                        .iter()
                        .map(|row| row.get::<_, i64>(0))
                        .collect::<Vec<_>>())
                }),
        )
        .await;
        let now = Instant::now();
        held.retain(|id, attempt| {
            let kept = match &renewed {
                Ok(Ok(renewed)) => renewed.contains(id),
                // Unreachable: past its whole lease, it may be another's now.
                _ => now.duration_since(attempt.renewed) < self.lease,
            };
            if kept {
                if matches!(&renewed, Ok(Ok(_))) {
                    attempt.renewed = now;
                }
            } else {
                attempt.cancel.cancel();
            }
            kept
        });
    }

    async fn release(&self, held: &HashMap<i64, Held>) -> Result<(), flow_core::FlowError> {
        if held.is_empty() {
            return Ok(());
        }
        let (ids, fences): (Vec<i64>, Vec<i64>) = held.iter().map(|(&id, h)| (id, h.fence)).unzip();
        let release = self
            .backend
            .query("giving remote attempts back", move |c| async move {
                c.client.query(&c.sql.tasks.release, &[&ids, &fences]).await
            });
        tokio::time::timeout(self.lease, release)
            .await
            .map_or(Ok(()), |released| released.map(drop))
    }
}

/// Runs one attempt (unless `cancel`) and writes its reply under its lease; whether the
/// reply was taken.
async fn execute(
    backend: PgBackend,
    agent: Option<Agent>,
    attempt: Taken,
    cancel: CancellationToken,
) -> bool {
    let reply = if attempt.takes > MAX_TAKES {
        RemoteReply::failed(
            format!(
                "the attempt was taken {} times and no worker finished it (each stopped while running it: a crash, a kill, out of memory?); it is not taken again",
                attempt.takes - 1
            ),
            false,
        )
    } else {
        match (serde_json::from_slice::<RemoteCall>(&attempt.call), agent) {
            (Err(error), _) => {
                RemoteReply::failed(format!("its call did not decode: {error}"), false)
            }
            (Ok(call), None) => RemoteReply::failed(
                format!(
                    "workflow `{}` is not registered with this worker",
                    call.workflow
                ),
                false,
            ),
            (Ok(call), Some(agent)) => tokio::select! {
                biased;
                reply = agent.execute_remote(call) => {
                    reply.unwrap_or_else(|error| RemoteReply::failed(error.to_string(), false))
                }
                () = cancel.cancelled() => return false,
            },
        }
    };
    let Ok(body) = serde_json::to_vec(&reply) else {
        return false;
    };
    let (id, fence) = (attempt.id, attempt.fence);
    backend
        .query("replying to a remote attempt", move |c| async move {
            c.client
                .query(&c.sql.tasks.reply, &[&id, &fence, &body])
                .await
        })
        .await
        .is_ok_and(|rows| !rows.is_empty())
}
