-- Checkpoints of runs, and answers left for their input requests.

CREATE TABLE fluffy_checkpoints (
    workflow   text        NOT NULL,
    run_key    text        NOT NULL,
    sequence   bigint      NOT NULL,
    -- When the checkpoint was taken (the wall clock of the process that took it): pruning by
    -- age reads this column, never the body.
    created_at timestamptz NOT NULL,
    -- The checkpoint's JSON, as every store writes it (the context spliced in unparsed).
    body       bytea       NOT NULL,
    PRIMARY KEY (workflow, run_key, sequence)
);

CREATE TABLE fluffy_answers (
    workflow   text      NOT NULL,
    run_key    text      NOT NULL,
    request    text      NOT NULL,
    -- Order of posting (a later answer to the same request replaces it and moves it last).
    posted     bigserial NOT NULL,
    body       bytea     NOT NULL,
    PRIMARY KEY (workflow, run_key, request)
);
