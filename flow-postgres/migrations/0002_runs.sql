-- The run queue: runs submitted by any process, claimed by workers under leases.

CREATE TABLE fluffy_runs (
    id           bigserial   PRIMARY KEY,
    workflow     text        NOT NULL,
    run_key      text        NOT NULL,
    -- queued -> running (leased) -> completed | completed_with_failures | failed | cancelled
    -- | awaiting_input; a running run whose lease lapsed is claimed again.
    status       text        NOT NULL DEFAULT 'queued',
    -- The context the run starts with (a JSON object).
    context      bytea       NOT NULL,
    priority     integer     NOT NULL DEFAULT 0,
    submitted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The first claim, the latest claim, the end.
    started_at   timestamptz,
    claimed_at   timestamptz,
    finished_at  timestamptz,
    claims       integer     NOT NULL DEFAULT 0,
    -- The lease: who holds it, until when (the database's clock), and the fencing token,
    -- raised by every claim. A write that names an older token is refused.
    worker       text,
    fence        bigint      NOT NULL DEFAULT 0,
    lease_until  timestamptz,
    -- The end: the final context (a JSON object) or the error.
    result       bytea,
    error        text,
    UNIQUE (workflow, run_key)
);

CREATE INDEX fluffy_runs_queued ON fluffy_runs (workflow, priority DESC, id) WHERE status = 'queued';
CREATE INDEX fluffy_runs_leased ON fluffy_runs (lease_until) WHERE status = 'running';
