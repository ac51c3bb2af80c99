//! Every statement the backend runs, prepared once per connection. Each is one statement and
//! so one transaction.

use tokio_postgres::{Client, Error, Statement};

/// Saves a checkpoint, replacing one with the same three keys.
const SAVE: &str = "INSERT INTO fluffy_checkpoints (workflow, run_key, sequence, created_at, body)
     VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (workflow, run_key, sequence)
     DO UPDATE SET created_at = EXCLUDED.created_at, body = EXCLUDED.body";

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

/// Leaves an answer (the latest per request wins, and moves last) and wakes whoever listens.
const POST_ANSWER: &str = "WITH posted AS (
         INSERT INTO fluffy_answers (workflow, run_key, request, body) VALUES ($1, $2, $3, $4)
         ON CONFLICT (workflow, run_key, request)
         DO UPDATE SET body = EXCLUDED.body, posted = DEFAULT
         RETURNING 1
     )
     SELECT pg_notify('fluffy_answers', $1 || '/' || $2) FROM posted";

const ANSWERS: &str = "SELECT body FROM fluffy_answers
     WHERE workflow = $1 AND run_key = $2 ORDER BY posted";

const CLEAR_ANSWERS: &str = "DELETE FROM fluffy_answers WHERE workflow = $1 AND run_key = $2";

/// The prepared statements of one connection.
pub(crate) struct Statements {
    pub(crate) save: Statement,
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
        Ok(Self {
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
