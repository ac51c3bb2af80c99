-- A request to cancel a run that a worker holds (`CheckpointStore::cancel_run`, `fluffy runs
-- cancel`, the dashboard), as JSON (who, why, when): the worker holding the run's lease reads
-- it with its heartbeat, or at once when `fluffy_cancels` is notified, and stops the run.
ALTER TABLE fluffy_runs ADD COLUMN cancel_request text;
