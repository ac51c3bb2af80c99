//! The statements of remote states' attempts (`fluffy_tasks`), prepared with the others.

use tokio_postgres::{Client, Error, Statement};

/// Sends an attempt under the run's lease `(id $1, fence $2)` (share-locked, as a fenced
/// checkpoint is) and wakes idle workers; returns its id, or no row if the lease is gone.
const DISPATCH: &str = "WITH lease AS (
         SELECT 1 FROM fluffy_runs
         WHERE id = $1 AND fence = $2 AND status = 'running'
         FOR SHARE
     ), sent AS (
         INSERT INTO fluffy_tasks (run_id, run_fence, workflow, state, call)
         SELECT $1::bigint, $2::bigint, $3::text, $4::text, $5::bytea FROM lease
         RETURNING id
     ), woken AS (
         SELECT pg_notify('fluffy_tasks', $3) FROM sent
     )
     SELECT id FROM sent CROSS JOIN (SELECT count(*) FROM woken) AS notified";

/// Takes the replies among the attempts `$1` (deleting them): `(id, reply)`.
const COLLECT: &str = "DELETE FROM fluffy_tasks
     WHERE id = ANY($1) AND status = 'done'
     RETURNING id, reply";

/// Withdraws an attempt whose run stopped waiting for it.
const WITHDRAW: &str = "DELETE FROM fluffy_tasks WHERE id = $1";

/// Deletes the attempts of runs whose lease passed on or that ended (nobody awaits their
/// replies), then claims up to `$3` attempts of the workflows `$1` for worker `$2`: queued
/// ones, and running ones whose lease lapsed, oldest first, each under a lease of `$4` ms
/// with a raised fencing token. Returns `(id, fence, workflow, call, claims)`. The attempts
/// `$5` are left out: this worker still runs them (see the runs' `CLAIM`).
const CLAIM: &str = "WITH stale AS (
         DELETE FROM fluffy_tasks WHERE id IN (
             SELECT t.id FROM fluffy_tasks AS t JOIN fluffy_runs AS r ON r.id = t.run_id
             WHERE r.fence <> t.run_fence OR r.status <> 'running'
             FOR UPDATE OF t SKIP LOCKED
         )
     ), next AS (
         SELECT t.id FROM fluffy_tasks AS t
         JOIN fluffy_runs AS r
           ON r.id = t.run_id AND r.fence = t.run_fence AND r.status = 'running'
         WHERE t.workflow = ANY($1) AND t.status <> 'done'
           AND (t.status = 'queued' OR t.lease_until < clock_timestamp())
           AND NOT (t.id = ANY($5::bigint[]))
         ORDER BY t.id
         LIMIT $3::bigint
         FOR UPDATE OF t SKIP LOCKED
     )
     UPDATE fluffy_tasks AS t
     SET status = 'running', worker = $2, fence = t.fence + 1, claims = t.claims + 1,
         lease_until = clock_timestamp() + $4::bigint * interval '1 millisecond'
     FROM next WHERE t.id = next.id
     RETURNING t.id, t.fence, t.workflow, t.call, t.claims";

/// Renews the leases `(id, fence)` of attempts still held, for `$3` ms; returns the ids.
/// (Rows locked in id order, as the runs' heartbeat does.)
const RENEW: &str = "WITH locked AS (
         SELECT t.id FROM fluffy_tasks AS t
         JOIN unnest($1::bigint[], $2::bigint[]) AS held(id, fence)
           ON t.id = held.id AND t.fence = held.fence
         WHERE t.status = 'running'
         ORDER BY t.id
         FOR UPDATE OF t
     )
     UPDATE fluffy_tasks AS t
     SET lease_until = clock_timestamp() + $3::bigint * interval '1 millisecond'
     FROM locked WHERE t.id = locked.id
     RETURNING t.id";

/// Writes an attempt's reply under its lease `(id $1, fence $2)` and wakes the run's worker;
/// no row if the lease is gone (the reply is dropped: another worker runs the attempt).
const REPLY: &str = "WITH replied AS (
         UPDATE fluffy_tasks
         SET status = 'done', reply = $3, lease_until = NULL
         WHERE id = $1 AND fence = $2 AND status = 'running'
         RETURNING workflow
     ), woken AS (
         SELECT pg_notify('fluffy_replies', workflow) FROM replied
     )
     SELECT 1 FROM replied CROSS JOIN (SELECT count(*) FROM woken) AS notified";

/// Gives attempts `(id, fence)` still held back (a worker that stops), and wakes workers; a
/// take given back does not count towards the limit of takes.
const RELEASE: &str = "WITH locked AS (
         SELECT t.id FROM fluffy_tasks AS t
         JOIN unnest($1::bigint[], $2::bigint[]) AS held(id, fence)
           ON t.id = held.id AND t.fence = held.fence
         WHERE t.status = 'running'
         ORDER BY t.id
         FOR UPDATE OF t
     ), released AS (
         UPDATE fluffy_tasks AS t
         SET status = 'queued', worker = NULL, lease_until = NULL, claims = t.claims - 1
         FROM locked WHERE t.id = locked.id
         RETURNING t.id, t.workflow
     ), woken AS (
         SELECT pg_notify('fluffy_tasks', workflow) FROM released
     )
     SELECT id FROM released CROSS JOIN (SELECT count(*) FROM woken) AS notified";

/// The prepared statements of attempts.
pub(crate) struct TaskStatements {
    pub(crate) dispatch: Statement,
    pub(crate) collect: Statement,
    pub(crate) withdraw: Statement,
    pub(crate) claim: Statement,
    pub(crate) renew: Statement,
    pub(crate) reply: Statement,
    pub(crate) release: Statement,
}

impl TaskStatements {
    /// Prepares them, pipelined.
    pub(crate) async fn prepare(client: &Client) -> Result<Self, Error> {
        let (dispatch, collect, withdraw, claim, renew, reply, release) = tokio::try_join!(
            client.prepare(DISPATCH),
            client.prepare(COLLECT),
            client.prepare(WITHDRAW),
            client.prepare(CLAIM),
            client.prepare(RENEW),
            client.prepare(REPLY),
            client.prepare(RELEASE),
        )?;
        Ok(Self {
            dispatch,
            collect,
            withdraw,
            claim,
            renew,
            reply,
            release,
        })
    }
}
