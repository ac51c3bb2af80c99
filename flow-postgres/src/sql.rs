//! Every statement the backend runs, prepared once per connection. Each is one statement and
//! so one transaction.

use tokio_postgres::{Client, Error, Statement};

/// Saves a checkpoint, replacing one with the same three keys.
const SAVE: &str = "INSERT INTO fluffy_checkpoints (workflow, run_key, sequence, created_at, body)
     VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (workflow, run_key, sequence)
     DO UPDATE SET created_at = EXCLUDED.created_at, body = EXCLUDED.body";

/// `SAVE`, then keeps the latest `$6` (≥ 1) of the run: the new one and the `$6 - 1` highest
/// below it. (The statement's other parts do not see the row it inserts: the prune looks at
/// the older ones only.)
const SAVE_PRUNED: &str = "WITH saved AS (
         INSERT INTO fluffy_checkpoints (workflow, run_key, sequence, created_at, body)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (workflow, run_key, sequence)
         DO UPDATE SET created_at = EXCLUDED.created_at, body = EXCLUDED.body
         RETURNING 1
     )
     DELETE FROM fluffy_checkpoints
     WHERE workflow = $1 AND run_key = $2 AND sequence < $3
       AND EXISTS (SELECT 1 FROM saved)
       AND sequence < coalesce((
           SELECT min(sequence) FROM (
               SELECT sequence FROM fluffy_checkpoints
               WHERE workflow = $1 AND run_key = $2 AND sequence < $3
               ORDER BY sequence DESC LIMIT $6::bigint - 1
           ) AS kept
       ), $3)";

/// Every run with a checkpoint, sorted (for listings: not prepared, rarely run).
pub(crate) const RUNS: &str =
    "SELECT DISTINCT workflow, run_key FROM fluffy_checkpoints ORDER BY workflow, run_key";

const LATEST: &str = "SELECT body FROM fluffy_checkpoints
     WHERE workflow = $1 AND run_key = $2 ORDER BY sequence DESC LIMIT 1";

const SEQUENCES: &str = "SELECT sequence FROM fluffy_checkpoints
     WHERE workflow = $1 AND run_key = $2 ORDER BY sequence";

const LOAD: &str = "SELECT body FROM fluffy_checkpoints
     WHERE workflow = $1 AND run_key = $2 AND sequence = $3";

const DELETE: &str = "DELETE FROM fluffy_checkpoints
     WHERE workflow = $1 AND run_key = $2 AND sequence = $3";

/// A run's checkpoints and answers, together.
const DELETE_RUN: &str = "WITH answers AS (
         DELETE FROM fluffy_answers WHERE workflow = $1 AND run_key = $2
     )
     DELETE FROM fluffy_checkpoints WHERE workflow = $1 AND run_key = $2";

/// Keeps the latest `$3` (≥ 1): deletes those below the `$3`-th highest sequence.
const PRUNE_KEEP: &str = "DELETE FROM fluffy_checkpoints
     WHERE workflow = $1 AND run_key = $2 AND sequence < (
         SELECT sequence FROM fluffy_checkpoints WHERE workflow = $1 AND run_key = $2
         ORDER BY sequence DESC OFFSET $3::bigint - 1 LIMIT 1
     )";

/// Deletes, oldest first, the checkpoints taken at or before `$3` (as old as the limit or
/// older), stopping at the first one taken after it, and always keeping the latest (the
/// trait's rule, in the database).
const PRUNE_OLDER: &str = "DELETE FROM fluffy_checkpoints
     WHERE workflow = $1 AND run_key = $2
       AND sequence < (SELECT max(sequence) FROM fluffy_checkpoints
                       WHERE workflow = $1 AND run_key = $2)
       AND sequence < coalesce((SELECT min(sequence) FROM fluffy_checkpoints
                                WHERE workflow = $1 AND run_key = $2 AND created_at > $3),
                               9223372036854775807)";

/// Leaves an answer (the latest per request wins, and moves last) and wakes whoever listens;
/// a queued run that had ended suspended on input goes back to the queue to continue with it.
const POST_ANSWER: &str = "WITH posted AS (
         INSERT INTO fluffy_answers (workflow, run_key, request, body) VALUES ($1, $2, $3, $4)
         ON CONFLICT (workflow, run_key, request)
         DO UPDATE SET body = EXCLUDED.body, posted = DEFAULT
         RETURNING 1
     ), requeued AS (
         UPDATE fluffy_runs
         SET status = 'queued', worker = NULL, lease_until = NULL, finished_at = NULL
         WHERE workflow = $1 AND run_key = $2 AND status = 'awaiting_input'
           AND EXISTS (SELECT 1 FROM posted)
         RETURNING workflow
     ), answered AS (
         SELECT pg_notify('fluffy_answers', $1 || '/' || $2) FROM posted
     ), queued AS (
         SELECT pg_notify('fluffy_runs', workflow) FROM requeued
     )
     SELECT (SELECT count(*) FROM answered), (SELECT count(*) FROM queued)";

const ANSWERS: &str = "SELECT body FROM fluffy_answers
     WHERE workflow = $1 AND run_key = $2 ORDER BY posted";

const CLEAR_ANSWERS: &str = "DELETE FROM fluffy_answers WHERE workflow = $1 AND run_key = $2";

/// Submits a run (nothing if its key was submitted before) and wakes idle workers. Returns
/// the run's id and whether this call submitted it.
const SUBMIT: &str = "WITH inserted AS (
         INSERT INTO fluffy_runs (workflow, run_key, context, priority) VALUES ($1, $2, $3, $4)
         ON CONFLICT (workflow, run_key) DO NOTHING
         RETURNING id
     ), woken AS (
         SELECT pg_notify('fluffy_runs', $1) FROM inserted
     )
     SELECT id, true FROM inserted CROSS JOIN (SELECT count(*) FROM woken) AS sent
     UNION ALL
     SELECT id, false FROM fluffy_runs
     WHERE workflow = $1 AND run_key = $2 AND NOT EXISTS (SELECT 1 FROM inserted)";

/// Submits the runs `$2` (keys) with contexts `$3` of workflow `$1` (keys submitted before
/// are kept as they are) and wakes idle workers. Returns, for each key in order, the run's id
/// and whether this statement submitted it; a key whose concurrent submit committed after
/// this statement's snapshot has no id (the caller asks again).
const SUBMIT_MANY: &str = "WITH input AS (
         SELECT k.key, k.context, k.ord
         FROM unnest($2::text[], $3::bytea[]) WITH ORDINALITY AS k(key, context, ord)
     ), inserted AS (
         INSERT INTO fluffy_runs (workflow, run_key, context, priority)
         SELECT $1, key, context, $4 FROM input ORDER BY ord
         ON CONFLICT (workflow, run_key) DO NOTHING
         RETURNING id, run_key
     ), woken AS (
         SELECT pg_notify('fluffy_runs', $1) WHERE EXISTS (SELECT 1 FROM inserted)
     )
     SELECT coalesce(i.id, r.id), i.id IS NOT NULL
     FROM input
     LEFT JOIN inserted AS i ON i.run_key = input.key
     LEFT JOIN fluffy_runs AS r
       ON i.id IS NULL AND r.workflow = $1 AND r.run_key = input.key
     CROSS JOIN (SELECT count(*) FROM woken) AS sent
     ORDER BY input.ord";

/// Claims up to `$3` runs of the workflows `$1` for worker `$2`: queued ones, and running
/// ones whose lease lapsed, highest priority and oldest first, skipping rows other workers
/// are claiming. Each claim raises the fencing token and leases the run for `$4` ms; taking
/// over a lapsed lease counts in `lapses`.
///
/// The runs `$5` are left out: this worker still runs them (maybe under a lease it let
/// lapse and has not noticed yet). Claiming one again would run it twice in one process,
/// and the two would share what the worker keeps per run (its lease for remote attempts,
/// its place among the runs it renews), each taking the other's away as it ends.
///
/// The two kinds are looked up apart, each through its index (the front of the queue, the
/// leases that ended), so a claim costs the same behind a backlog of any length; a row one
/// of them locked and the final choice left out is free again when the statement ends.
const CLAIM: &str = "WITH lapsed AS (
         SELECT id, priority FROM fluffy_runs
         WHERE status = 'running' AND lease_until < clock_timestamp() AND workflow = ANY($1)
           AND NOT (id = ANY($5::bigint[]))
         ORDER BY priority DESC, id
         LIMIT $3::bigint
         FOR UPDATE SKIP LOCKED
     ), queued AS (
         SELECT id, priority FROM fluffy_runs
         WHERE status = 'queued' AND workflow = ANY($1)
         ORDER BY priority DESC, id
         LIMIT $3::bigint
         FOR UPDATE SKIP LOCKED
     ), next AS (
         SELECT id FROM (SELECT * FROM lapsed UNION ALL SELECT * FROM queued) AS c
         ORDER BY priority DESC, id
         LIMIT $3::bigint
     )
     UPDATE fluffy_runs AS r
     SET status = 'running', worker = $2, fence = r.fence + 1, claims = r.claims + 1,
         lapses = r.lapses + CASE WHEN r.status = 'running' THEN 1 ELSE 0 END,
         claimed_at = clock_timestamp(), started_at = coalesce(r.started_at, clock_timestamp()),
         lease_until = clock_timestamp() + $4::bigint * interval '1 millisecond'
     FROM next WHERE r.id = next.id
     RETURNING r.id, r.workflow, r.run_key, r.context, r.fence, r.claims, r.lapses";

/// Renews the leases `(id, fence)` still held, for `$3` ms; returns the ids renewed, each
/// with the request to cancel it if one was made (see `ASK_TO_CANCEL`).
///
/// Statements that change many runs' rows lock them in the order of their ids first (here, in
/// `COMPLETE` and in `RELEASE`), so that two of them, on one worker's runs, never wait for
/// each other in a cycle (a deadlock, which the database would break by failing one).
const HEARTBEAT: &str = "WITH locked AS (
         SELECT r.id FROM fluffy_runs AS r
         JOIN unnest($1::bigint[], $2::bigint[]) AS held(id, fence)
           ON r.id = held.id AND r.fence = held.fence
         WHERE r.status = 'running'
         ORDER BY r.id
         FOR UPDATE OF r
     )
     UPDATE fluffy_runs AS r
     SET lease_until = clock_timestamp() + $3::bigint * interval '1 millisecond'
     FROM locked WHERE r.id = locked.id
     RETURNING r.id, r.cancel_request";

/// Keeps the request `$3` (JSON; a request made before stays) to cancel run `$2` of workflow
/// `$1` on its row while it is queued or running, for whichever worker holds it or claims it
/// next (its heartbeat returns it), and wakes the workers with `fluffy_cancels`. Returns the
/// row's status, its worker, and whether that worker's lease is live. (Not prepared: rarely
/// run.)
pub(crate) const ASK_TO_CANCEL: &str = "WITH asked AS (
         UPDATE fluffy_runs SET cancel_request = coalesce(cancel_request, $3)
         WHERE workflow = $1 AND run_key = $2 AND status IN ('queued', 'running')
         RETURNING status, worker, coalesce(lease_until > clock_timestamp(), false) AS live
     ), woken AS (
         SELECT pg_notify('fluffy_cancels', $1) FROM asked
     )
     SELECT status, worker, live FROM asked CROSS JOIN (SELECT count(*) FROM woken) AS sent";

/// Puts run `$2` of workflow `$1` back in the queue when it has ended but not completed
/// (cancelled, failed, awaiting input), its cancel request dropped, and wakes idle workers:
/// a resume that a worker carries out. Returns how many rows were queued (0 or 1). (Not
/// prepared: rarely run.)
pub(crate) const REQUEUE: &str = "WITH requeued AS (
         UPDATE fluffy_runs
         SET status = 'queued', worker = NULL, lease_until = NULL, finished_at = NULL,
             cancel_request = NULL, error = NULL
         WHERE workflow = $1 AND run_key = $2
           AND status IN ('cancelled', 'failed', 'awaiting_input')
         RETURNING workflow
     ), woken AS (
         SELECT pg_notify('fluffy_runs', workflow) FROM requeued
     )
     SELECT (SELECT count(*) FROM requeued), (SELECT count(*) FROM woken)";

/// Saves checkpoints of leased runs (one row per save, as arrays: workflow, key, sequence,
/// time, body, how many of the run's checkpoints to keep (0: all), and the lease's run id and
/// fencing token), and prunes each run as `SAVE_PRUNED` does. The runs' rows are
/// share-locked first, in the order of their ids (as `HEARTBEAT` locks them): a claim that
/// raises a token waits for the save, and a save after it finds the token changed and writes
/// nothing. Returns the run ids whose lease was held (their checkpoint is saved). The prune
/// does not see the rows the statement inserts: it looks at the older ones only.
const FENCED_SAVES: &str = "WITH saving AS (
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[],
                              $5::bytea[], $6::bigint[], $7::bigint[], $8::bigint[])
             AS s(workflow, run_key, sequence, created_at, body, keep, id, fence)
     ), lease AS (
         SELECT s.* FROM saving AS s
         JOIN fluffy_runs AS r ON r.id = s.id AND r.fence = s.fence AND r.status = 'running'
         ORDER BY r.id
         FOR SHARE OF r
     ), saved AS (
         INSERT INTO fluffy_checkpoints (workflow, run_key, sequence, created_at, body)
         SELECT workflow, run_key, sequence, created_at, body FROM lease
         ON CONFLICT (workflow, run_key, sequence)
         DO UPDATE SET created_at = EXCLUDED.created_at, body = EXCLUDED.body
         RETURNING 1
     ), pruned AS (
         DELETE FROM fluffy_checkpoints AS c
         USING lease AS l
         WHERE l.keep > 0 AND c.workflow = l.workflow AND c.run_key = l.run_key
           AND c.sequence < l.sequence
           AND c.sequence < coalesce((
               SELECT min(k.sequence) FROM (
                   SELECT sequence FROM fluffy_checkpoints
                   WHERE workflow = l.workflow AND run_key = l.run_key
                     AND sequence < l.sequence
                   ORDER BY sequence DESC LIMIT greatest(l.keep - 1, 0)
               ) AS k
           ), l.sequence)
     )
     SELECT id FROM lease";

/// Ends runs under their leases (arrays of id, fence, status, final context, error: one
/// statement for a batch of ends); wakes whoever waits. Returns the ids whose lease was still
/// held (and so whose end is recorded, once).
const COMPLETE: &str = "WITH ended AS (
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bytea[], $5::text[])
             AS e(id, fence, status, result, error)
     ), locked AS (
         SELECT r.id FROM fluffy_runs AS r
         JOIN ended AS e ON r.id = e.id AND r.fence = e.fence
         WHERE r.status = 'running'
         ORDER BY r.id
         FOR UPDATE OF r
     ), done AS (
         UPDATE fluffy_runs AS r
         SET status = e.status, finished_at = clock_timestamp(), result = e.result,
             error = e.error, lease_until = NULL
         FROM ended AS e, locked
         WHERE r.id = e.id AND r.id = locked.id
         RETURNING r.id, r.workflow, r.run_key
     ), woken AS (
         SELECT pg_notify('fluffy_done', workflow || '/' || run_key) FROM done
     )
     SELECT id FROM done CROSS JOIN (SELECT count(*) FROM woken) AS sent";

/// A run of the queue, by workflow and key.
const RUN: &str = "SELECT id, status, claims, worker, fence, result, error,
            submitted_at, started_at, finished_at, lapses
     FROM fluffy_runs WHERE workflow = $1 AND run_key = $2";

/// Gives runs back to the queue (a worker that stops): those it still holds.
const RELEASE: &str = "WITH locked AS (
         SELECT r.id FROM fluffy_runs AS r
         JOIN unnest($1::bigint[], $2::bigint[]) AS held(id, fence)
           ON r.id = held.id AND r.fence = held.fence
         WHERE r.status = 'running'
         ORDER BY r.id
         FOR UPDATE OF r
     ), released AS (
         UPDATE fluffy_runs AS r
         SET status = 'queued', worker = NULL, lease_until = NULL
         FROM locked WHERE r.id = locked.id
         RETURNING r.id, r.workflow
     ), woken AS (
         SELECT pg_notify('fluffy_runs', workflow) FROM released
     )
     SELECT id FROM released CROSS JOIN (SELECT count(*) FROM woken) AS sent";

/// The lease `(id $4, fence $5)` share-locked, for the fenced deletions below: each returns
/// whether the lease was held, and deletes only if it was.
const LEASE: &str = "WITH lease AS (
         SELECT 1 FROM fluffy_runs WHERE id = $4 AND fence = $5 AND status = 'running'
         FOR SHARE
     )";

/// `DELETE` under a lease.
const FENCED_DELETE: &str = "gone AS (
         DELETE FROM fluffy_checkpoints
         WHERE workflow = $1 AND run_key = $2 AND sequence = $3 AND EXISTS (SELECT 1 FROM lease)
         RETURNING 1
     )
     SELECT (SELECT count(*) FROM lease) FROM (SELECT count(*) FROM gone) AS done";

/// `PRUNE_KEEP` under a lease.
const FENCED_PRUNE_KEEP: &str = "gone AS (
         DELETE FROM fluffy_checkpoints
         WHERE workflow = $1 AND run_key = $2 AND EXISTS (SELECT 1 FROM lease) AND sequence < (
             SELECT sequence FROM fluffy_checkpoints WHERE workflow = $1 AND run_key = $2
             ORDER BY sequence DESC OFFSET $3::bigint - 1 LIMIT 1
         )
         RETURNING 1
     )
     SELECT (SELECT count(*) FROM lease) FROM (SELECT count(*) FROM gone) AS done";

/// `PRUNE_OLDER` under a lease.
const FENCED_PRUNE_OLDER: &str = "gone AS (
         DELETE FROM fluffy_checkpoints
         WHERE workflow = $1 AND run_key = $2 AND EXISTS (SELECT 1 FROM lease)
           AND sequence < (SELECT max(sequence) FROM fluffy_checkpoints
                           WHERE workflow = $1 AND run_key = $2)
           AND sequence < coalesce((SELECT min(sequence) FROM fluffy_checkpoints
                                    WHERE workflow = $1 AND run_key = $2 AND created_at > $3::timestamptz),
                                   9223372036854775807)
         RETURNING 1
     )
     SELECT (SELECT count(*) FROM lease) FROM (SELECT count(*) FROM gone) AS done";

const CREATE_SEMAPHORE: &str = "INSERT INTO fluffy_semaphores (name, permits) VALUES ($1, $2)
     ON CONFLICT (name) DO UPDATE SET permits = EXCLUDED.permits";

/// Takes permits (see `fluffy_acquire` in the migrations): the token, or NULL.
const ACQUIRE: &str = "SELECT fluffy_acquire($1, $2, $3, $4::bigint)";

const PERMITS_IN_USE: &str = "SELECT coalesce(sum(units), 0)::bigint FROM fluffy_permits
     WHERE name = $1 AND expires_at >= clock_timestamp()";

const RENEW_PERMIT: &str = "UPDATE fluffy_permits
     SET expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond'
     WHERE name = $1 AND holder = $2 AND expires_at >= clock_timestamp()";

/// Gives a permit back and wakes waiters; counts it if it had not lapsed.
const RELEASE_PERMIT: &str = "WITH gone AS (
         DELETE FROM fluffy_permits WHERE name = $1 AND holder = $2
         RETURNING expires_at >= clock_timestamp() AS live
     ), woken AS (
         SELECT pg_notify('fluffy_permits', $1) FROM gone
     )
     SELECT (SELECT count(*) FILTER (WHERE live) FROM gone), (SELECT count(*) FROM woken)";

const CREATE_RATE_LIMIT: &str = "INSERT INTO fluffy_rate_limits (name, rate, burst, tokens)
     VALUES ($1, $2, $3, $3)
     ON CONFLICT (name) DO UPDATE SET rate = EXCLUDED.rate, burst = EXCLUDED.burst,
         tokens = least(fluffy_rate_limits.tokens, EXCLUDED.burst)";

/// Takes tokens (see `fluffy_take_tokens` in the migrations): 0, or the seconds to wait.
const TAKE_TOKENS: &str = "SELECT fluffy_take_tokens($1, $2::float8)";

/// The prepared statements of one connection.
pub(crate) struct Statements {
    /// Those of remote states' attempts.
    pub(crate) tasks: crate::tasks::sql::TaskStatements,
    pub(crate) save: Statement,
    pub(crate) save_pruned: Statement,
    pub(crate) fenced_saves: Statement,
    pub(crate) latest: Statement,
    pub(crate) sequences: Statement,
    pub(crate) load: Statement,
    pub(crate) delete: Statement,
    pub(crate) delete_run: Statement,
    pub(crate) prune_keep: Statement,
    pub(crate) prune_older: Statement,
    pub(crate) post_answer: Statement,
    pub(crate) answers: Statement,
    pub(crate) clear_answers: Statement,
    pub(crate) submit: Statement,
    pub(crate) submit_many: Statement,
    pub(crate) claim: Statement,
    pub(crate) heartbeat: Statement,
    pub(crate) complete: Statement,
    pub(crate) run: Statement,
    pub(crate) release: Statement,
    pub(crate) fenced_delete: Statement,
    pub(crate) fenced_prune_keep: Statement,
    pub(crate) fenced_prune_older: Statement,
    pub(crate) create_semaphore: Statement,
    pub(crate) acquire: Statement,
    pub(crate) permits_in_use: Statement,
    pub(crate) renew_permit: Statement,
    pub(crate) release_permit: Statement,
    pub(crate) create_rate_limit: Statement,
    pub(crate) take_tokens: Statement,
}

impl Statements {
    /// Prepares them all, pipelined (one round trip's wait for the lot).
    pub(crate) async fn prepare(client: &Client) -> Result<Self, Error> {
        let (save, latest, sequences, load, delete, delete_run) = tokio::try_join!(
            client.prepare(SAVE),
            client.prepare(LATEST),
            client.prepare(SEQUENCES),
            client.prepare(LOAD),
            client.prepare(DELETE),
            client.prepare(DELETE_RUN),
        )?;
        let (prune_keep, prune_older, post_answer, answers, clear_answers) = tokio::try_join!(
            client.prepare(PRUNE_KEEP),
            client.prepare(PRUNE_OLDER),
            client.prepare(POST_ANSWER),
            client.prepare(ANSWERS),
            client.prepare(CLEAR_ANSWERS),
        )?;
        let (save_pruned, fenced_saves) =
            tokio::try_join!(client.prepare(SAVE_PRUNED), client.prepare(FENCED_SAVES))?;
        let (submit, claim, heartbeat, complete, run, release) = tokio::try_join!(
            client.prepare(SUBMIT),
            client.prepare(CLAIM),
            client.prepare(HEARTBEAT),
            client.prepare(COMPLETE),
            client.prepare(RUN),
            client.prepare(RELEASE),
        )?;
        let (create_semaphore, acquire, permits_in_use, renew_permit) = tokio::try_join!(
            client.prepare(CREATE_SEMAPHORE),
            client.prepare(ACQUIRE),
            client.prepare(PERMITS_IN_USE),
            client.prepare(RENEW_PERMIT),
        )?;
        let fenced = |rest: &str| format!("{LEASE}, {rest}");
        let (fenced_delete_sql, fenced_keep_sql, fenced_older_sql) = (
            fenced(FENCED_DELETE),
            fenced(FENCED_PRUNE_KEEP),
            fenced(FENCED_PRUNE_OLDER),
        );
        let (fenced_delete, fenced_prune_keep, fenced_prune_older) = tokio::try_join!(
            client.prepare(&fenced_delete_sql),
            client.prepare(&fenced_keep_sql),
            client.prepare(&fenced_older_sql),
        )?;
        let (release_permit, create_rate_limit, take_tokens, submit_many) = tokio::try_join!(
            client.prepare(RELEASE_PERMIT),
            client.prepare(CREATE_RATE_LIMIT),
            client.prepare(TAKE_TOKENS),
            client.prepare(SUBMIT_MANY),
        )?;
        let tasks = crate::tasks::sql::TaskStatements::prepare(client).await?;
        Ok(Self {
            tasks,
            fenced_delete,
            fenced_prune_keep,
            fenced_prune_older,
            create_semaphore,
            acquire,
            permits_in_use,
            renew_permit,
            release_permit,
            create_rate_limit,
            take_tokens,
            save_pruned,
            fenced_saves,
            submit,
            submit_many,
            claim,
            heartbeat,
            complete,
            run,
            release,
            save,
            latest,
            sequences,
            load,
            delete,
            delete_run,
            prune_keep,
            prune_older,
            post_answer,
            answers,
            clear_answers,
        })
    }
}
