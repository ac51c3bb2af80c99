-- The queue in claim order across workflows: a worker that serves several workflows takes
-- its next runs from the front of this index (`workflow = ANY(..)` cannot walk
-- fluffy_runs_queued in order, and would sort every queued run of its workflows per claim).
CREATE INDEX fluffy_runs_queue_order ON fluffy_runs (priority DESC, id) WHERE status = 'queued';
