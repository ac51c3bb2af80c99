-- Attempts of remote states: sent by the worker that coordinates a run (under the run's
-- lease), taken by any worker (under a lease of their own), answered with a reply.

CREATE TABLE fluffy_tasks (
    id          bigserial   PRIMARY KEY,
    -- The run, and the fencing token of the lease it was sent under: a task of a run whose
    -- lease has passed on is not taken (and is deleted), its reply never awaited.
    run_id      bigint      NOT NULL REFERENCES fluffy_runs (id) ON DELETE CASCADE,
    run_fence   bigint      NOT NULL,
    workflow    text        NOT NULL,
    state       text        NOT NULL,
    -- The call (JSON): the context as the state's branch sees it, its map item.
    call        bytea       NOT NULL,
    -- queued -> running (leased) -> done; a running task whose lease lapsed is taken again.
    status      text        NOT NULL DEFAULT 'queued',
    worker      text,
    fence       bigint      NOT NULL DEFAULT 0,
    lease_until timestamptz,
    claims      integer     NOT NULL DEFAULT 0,
    -- The reply (JSON): the transition and the writes, or the error.
    reply       bytea,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX fluffy_tasks_open ON fluffy_tasks (workflow, id) WHERE status <> 'done';
CREATE INDEX fluffy_tasks_run ON fluffy_tasks (run_id);
