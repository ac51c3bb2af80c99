-- How many times a run was taken over from a worker that stopped renewing its lease (died,
-- stalled): past a worker's limit, the run fails instead of killing more workers.
ALTER TABLE fluffy_runs ADD COLUMN lapses integer NOT NULL DEFAULT 0;
