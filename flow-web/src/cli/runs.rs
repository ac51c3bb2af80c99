//! `fluffy runs …`: what the store keeps of each run.

use std::io::Write;
use std::time::{Duration, SystemTime};

use flow_core::AgentStatus;
use flow_runtime::{Checkpoint, CheckpointStore, InputOutcome, QueuePlace, StoredRun};
use serde::Serialize;
use serde_json::Value;

use super::table::Table;
use super::{Failure, Output, status_name, time};

/// One run in `runs list`.
#[derive(Serialize)]
pub(crate) struct RunSummary {
    pub(crate) workflow: String,
    pub(crate) key: String,
    /// `None` when its latest checkpoint cannot be read (then `error` says why).
    pub(crate) status: Option<AgentStatus>,
    /// The latest checkpoint's number and time.
    pub(crate) checkpoint: Option<u64>,
    pub(crate) updated: Option<String>,
    #[serde(skip)]
    pub(crate) updated_at: Option<SystemTime>,
    pub(crate) elapsed_ms: Option<u128>,
    pub(crate) pending_inputs: usize,
    pub(crate) error: Option<String>,
}

/// Filters of `runs list`.
pub(crate) struct ListFilter {
    pub(crate) workflow: Option<String>,
    pub(crate) statuses: Vec<AgentStatus>,
    pub(crate) since: Option<Duration>,
}

/// Every run of the store (those `filter` keeps), newest first, each from its latest
/// checkpoint. A run whose checkpoint cannot be read is listed with the error, not left out.
pub(crate) fn summaries(
    store: &dyn CheckpointStore,
    filter: &ListFilter,
) -> Result<Vec<RunSummary>, Failure> {
    let cutoff = filter.since.map(|since| {
        SystemTime::now()
            .checked_sub(since)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    });
    let mut summaries = Vec::new();
    for run in store.runs().map_err(Failure::from)? {
        if filter.workflow.as_ref().is_some_and(|w| *w != run.workflow) {
            continue;
        }
        let summary = summary(store, run);
        let status_kept = filter.statuses.is_empty()
            || summary
                .status
                .is_some_and(|status| filter.statuses.contains(&status));
        let recent = match (cutoff, summary.updated_at) {
            (Some(cutoff), Some(updated)) => updated >= cutoff,
            _ => true,
        };
        if status_kept && recent {
            summaries.push(summary);
        }
    }
    summaries.sort_by_key(|summary| std::cmp::Reverse(summary.updated_at));
    Ok(summaries)
}

fn summary(store: &dyn CheckpointStore, run: StoredRun) -> RunSummary {
    let mut summary = RunSummary {
        workflow: run.workflow,
        key: run.run_key,
        status: None,
        checkpoint: None,
        updated: None,
        updated_at: None,
        elapsed_ms: None,
        pending_inputs: 0,
        error: None,
    };
    match store.latest(&summary.workflow, &summary.key) {
        Ok(Some(checkpoint)) => {
            summary.status = Some(checkpoint.status);
            summary.checkpoint = Some(checkpoint.sequence);
            summary.updated = Some(time(checkpoint.created_at));
            summary.updated_at = Some(checkpoint.created_at);
            summary.elapsed_ms = Some(checkpoint.elapsed.as_millis());
            summary.pending_inputs = pending(&checkpoint).count();
            summary.error = last_error(&checkpoint);
        }
        // (Deleted between the listing and the read.)
        Ok(None) => summary.error = Some("no checkpoint any more".into()),
        Err(error) => summary.error = Some(error.to_string()),
    }
    summary
}

/// The run's input requests still waiting for an answer.
pub(crate) fn pending(checkpoint: &Checkpoint) -> impl Iterator<Item = &flow_runtime::InputRecord> {
    checkpoint
        .inputs
        .iter()
        .filter(|record| matches!(record.outcome, InputOutcome::Pending))
}

/// The status to show for `state` of the run `checkpoint` holds. An ended run's checkpoint
/// keeps what was due as due again (so that continuing the run runs it): shown, a state
/// that failed for good is `failed` (as its dead letter says), and one that was stopped
/// when the run ended is `cancelled`.
pub(crate) fn shown_status(
    checkpoint: &Checkpoint,
    state: &flow_runtime::StateCheckpoint,
) -> String {
    use flow_core::StateStatus;
    let ended = matches!(
        checkpoint.status,
        AgentStatus::Failed | AgentStatus::CompletedWithFailures | AgentStatus::Cancelled
    );
    if ended && state.status != StateStatus::Completed {
        let failed_for_good = checkpoint
            .dead_letters
            .iter()
            .any(|letter| letter.state == state.name);
        if failed_for_good {
            return "failed".into();
        }
        if matches!(state.status, StateStatus::Running | StateStatus::Ready) {
            return "cancelled".into();
        }
    }
    status_name(state.status)
}

/// What failed last: the latest dead letter's error, else the first state (in definition
/// order) that has one.
fn last_error(checkpoint: &Checkpoint) -> Option<String> {
    if let Some(letter) = checkpoint
        .dead_letters
        .iter()
        .max_by_key(|letter| letter.at)
    {
        // (Its error names the state: "state `load` failed after 1 attempt(s): …".)
        return Some(letter.error.clone());
    }
    checkpoint
        .states
        .iter()
        .find_map(|state| Some(format!("{}: {}", state.name, state.last_error.as_ref()?)))
}

pub(crate) fn list(
    store: &dyn CheckpointStore,
    filter: &ListFilter,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let summaries = summaries(store, filter)?;
    if output.json {
        return output.json_to(out, &summaries);
    }
    let mut table = Table::new([
        "WORKFLOW", "KEY", "STATUS", "UPDATED", "ELAPSED", "INPUTS", "ERROR",
    ]);
    for run in &summaries {
        table.row(vec![
            run.workflow.clone(),
            run.key.clone(),
            run.status.map_or_else(|| "?".into(), status_name),
            run.updated.clone().unwrap_or_default(),
            run.elapsed_ms.map_or_else(String::new, millis),
            run.pending_inputs.to_string(),
            run.error.clone().unwrap_or_default(),
        ]);
    }
    if table.is_empty() {
        return output.say(out, "no runs");
    }
    table.write(out).map_err(Failure::io)
}

/// The run `key` (of `workflow`, or of the only workflow that has a run under that key).
pub(crate) fn find(
    store: &dyn CheckpointStore,
    key: &str,
    workflow: Option<&str>,
) -> Result<(StoredRun, Checkpoint), Failure> {
    let matches: Vec<StoredRun> = store
        .runs()
        .map_err(Failure::from)?
        .into_iter()
        .filter(|run| run.run_key == key && workflow.is_none_or(|w| w == run.workflow))
        .collect();
    let run = match matches.as_slice() {
        [] => {
            return Err(Failure::not_found(match workflow {
                Some(workflow) => format!(
                    "no run `{key}` of workflow `{workflow}` in {} (`fluffy runs list` shows them)",
                    store.describe()
                ),
                None => format!(
                    "no run `{key}` in {} (`fluffy runs list` shows them)",
                    store.describe()
                ),
            }));
        }
        [run] => run.clone(),
        several => {
            let workflows: Vec<&str> = several.iter().map(|r| r.workflow.as_str()).collect();
            return Err(Failure::usage(format!(
                "`{key}` is a run of {} workflows ({}): say which with --workflow",
                several.len(),
                workflows.join(", ")
            )));
        }
    };
    let checkpoint = store
        .latest(&run.workflow, &run.run_key)
        .map_err(Failure::from)?
        .ok_or_else(|| Failure::not_found(format!("run `{key}` has no checkpoint any more")))?;
    Ok((run, checkpoint))
}

/// `runs show` in JSON.
#[derive(Serialize)]
struct RunDetail<'a> {
    workflow: &'a str,
    key: &'a str,
    status: AgentStatus,
    checkpoint: u64,
    updated: String,
    elapsed_ms: u128,
    /// The numbers of the checkpoints kept (to fork from).
    checkpoints: Vec<u64>,
    states: &'a [flow_runtime::StateCheckpoint],
    queue: &'a [flow_runtime::QueuedState],
    waiting: &'a [String],
    inputs: &'a [flow_runtime::InputRecord],
    dead_letters: usize,
    last_error: Option<String>,
    /// Who cancelled the run, why and when, if it was cancelled on request.
    cancelled: Option<&'a flow_runtime::CancelRecord>,
}

pub(crate) fn show(
    store: &dyn CheckpointStore,
    key: &str,
    workflow: Option<&str>,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let (run, checkpoint) = find(store, key, workflow)?;
    let last_error = last_error(&checkpoint);
    if output.json {
        let checkpoints = store
            .sequences(&run.workflow, &run.run_key)
            .map_err(Failure::from)?;
        return output.json_to(
            out,
            &RunDetail {
                workflow: &run.workflow,
                key: &run.run_key,
                status: checkpoint.status,
                checkpoint: checkpoint.sequence,
                updated: time(checkpoint.created_at),
                elapsed_ms: checkpoint.elapsed.as_millis(),
                checkpoints,
                states: &checkpoint.states,
                queue: &checkpoint.queue,
                waiting: &checkpoint.waiting,
                inputs: &checkpoint.inputs,
                dead_letters: checkpoint.dead_letters.len(),
                last_error,
                cancelled: checkpoint.cancelled.as_ref(),
            },
        );
    }
    let kept = store
        .sequences(&run.workflow, &run.run_key)
        .map_err(Failure::from)?;
    let mut head = Table::new([
        "RUN",
        "WORKFLOW",
        "STATUS",
        "CHECKPOINT",
        "UPDATED",
        "ELAPSED",
    ]);
    head.row(vec![
        run.run_key.clone(),
        run.workflow.clone(),
        status_name(checkpoint.status),
        checkpoint.sequence.to_string(),
        time(checkpoint.created_at),
        millis(checkpoint.elapsed.as_millis()),
    ]);
    head.write(out).map_err(Failure::io)?;
    let mut states = Table::new([
        "STATE",
        "STATUS",
        "RUNS",
        "ATTEMPTS",
        "COMPLETIONS",
        "TIME",
        "LAST ERROR",
    ]);
    for state in &checkpoint.states {
        states.row(vec![
            state.name.clone(),
            shown_status(&checkpoint, state),
            state.runs.to_string(),
            state.attempts.to_string(),
            state.completions.to_string(),
            millis(state.total_time.as_millis()),
            state.last_error.clone().unwrap_or_default(),
        ]);
    }
    writeln!(out).map_err(Failure::io)?;
    states.write(out).map_err(Failure::io)?;
    if kept.len() > 1 {
        let kept: Vec<String> = kept.iter().map(u64::to_string).collect();
        writeln!(out, "checkpoints kept: {}", kept.join(", ")).map_err(Failure::io)?;
    }
    if !checkpoint.queue.is_empty() {
        let mut due = Table::new(["DUE", "ATTEMPT", "WHERE"]);
        for queued in &checkpoint.queue {
            due.row(vec![
                queued.state.clone(),
                queued.attempt.to_string(),
                match queued.place {
                    QueuePlace::Ready => "ready".into(),
                    QueuePlace::Running => "running (again when continued)".into(),
                    QueuePlace::Retry(delay) => format!("retry in {}", millis(delay.as_millis())),
                },
            ]);
        }
        writeln!(out).map_err(Failure::io)?;
        due.write(out).map_err(Failure::io)?;
    }
    let mut inputs = Table::new(["PENDING INPUT", "PROMPT", "ANSWER"]);
    for record in pending(&checkpoint) {
        inputs.row(vec![
            record.request.id.to_string(),
            record.request.prompt.clone(),
            schema_summary(&record.request.schema),
        ]);
    }
    if !inputs.is_empty() {
        writeln!(out).map_err(Failure::io)?;
        inputs.write(out).map_err(Failure::io)?;
    }
    if let Some(cancelled) = &checkpoint.cancelled {
        writeln!(out).map_err(Failure::io)?;
        writeln!(
            out,
            "{}",
            super::table::printable(&cancelled_line(cancelled))
        )
        .map_err(Failure::io)?;
    }
    if let Some(error) = last_error {
        writeln!(out).map_err(Failure::io)?;
        writeln!(out, "last error: {}", super::table::printable(&error)).map_err(Failure::io)?;
    }
    Ok(())
}

/// Who cancelled a run, when and why, in a line.
pub(crate) fn cancelled_line(record: &flow_runtime::CancelRecord) -> String {
    let at = std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_millis(record.at_ms))
        .unwrap_or(std::time::UNIX_EPOCH);
    let mut line = format!("cancelled by {} at {}", record.by, time(at));
    if !record.reason.is_empty() {
        line.push_str(": ");
        line.push_str(&record.reason);
    }
    line
}

/// What an answer must be, in a few words: the schema's type (and its choices).
pub(crate) fn schema_summary(schema: &Value) -> String {
    if let Some(choices) = schema.get("enum").and_then(Value::as_array) {
        let choices: Vec<String> = choices.iter().map(Value::to_string).collect();
        return format!("one of {}", choices.join(", "));
    }
    if let Some(Value::Object(fields)) = schema.get("properties") {
        let names: Vec<&str> = fields.keys().map(String::as_str).collect();
        return format!("object: {}", names.join(", "));
    }
    match schema.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(other) => other.to_string(),
        None => "any JSON".into(),
    }
}

/// Milliseconds as people read them (`1.5s`, `2m 3s`).
pub(crate) fn millis(ms: u128) -> String {
    let ms = u64::try_from(ms).unwrap_or(u64::MAX);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let rounded = if ms < 60_000 {
        ms / 100 * 100
    } else {
        ms / 1000 * 1000
    };
    humantime::format_duration(Duration::from_millis(rounded)).to_string()
}

/// Prometheus text of `runs`: how many by workflow and status, and the input requests
/// waiting by workflow (`fluffy metrics`, the dashboard's `/metrics`).
pub(crate) fn prometheus(runs: &[RunSummary]) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let mut counts: BTreeMap<(&str, String), u64> = BTreeMap::new();
    let mut waiting: BTreeMap<&str, u64> = BTreeMap::new();
    for run in runs {
        let status = run.status.map_or_else(|| "unreadable".into(), status_name);
        *counts.entry((run.workflow.as_str(), status)).or_default() += 1;
        *waiting.entry(run.workflow.as_str()).or_default() += run.pending_inputs as u64;
    }
    let mut text = String::from(
        "# HELP fluffy_runs Runs kept in the store, by workflow and status (of their latest checkpoint).\n# TYPE fluffy_runs gauge\n",
    );
    for ((workflow, status), count) in &counts {
        let _ = writeln!(
            text,
            "fluffy_runs{{workflow=\"{}\",status=\"{}\"}} {count}",
            label(workflow),
            label(status)
        );
    }
    text.push_str("# HELP fluffy_input_requests_waiting Input requests waiting for an answer, by workflow.\n# TYPE fluffy_input_requests_waiting gauge\n");
    for (workflow, count) in &waiting {
        let _ = writeln!(
            text,
            "fluffy_input_requests_waiting{{workflow=\"{}\"}} {count}",
            label(workflow)
        );
    }
    text
}

/// A Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `runs steps KEY`: the run's attempts on its time line.
pub(crate) fn steps(
    store: &dyn CheckpointStore,
    key: &str,
    workflow: Option<&str>,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let (_, checkpoint) = find(store, key, workflow)?;
    if output.json {
        return output.json_to(out, &checkpoint.attempts);
    }
    if checkpoint.attempts.is_empty() {
        return output.say(
            out,
            "no attempts recorded (a run without checkpoints keeps none, nor do checkpoints older than format 5)",
        );
    }
    let now_ms = flow_runtime::epoch_ms(SystemTime::now());
    let origin = checkpoint
        .attempts
        .iter()
        .map(|a| a.ready_at_ms)
        .min()
        .unwrap_or(0);
    let mut table = Table::new([
        "STATE",
        "ATTEMPT",
        "OUTCOME",
        "READY",
        "QUEUED",
        "RESOURCES",
        "RAN",
        "ERROR",
    ]);
    for attempt in &checkpoint.attempts {
        let times = flow_runtime::attempt_times(attempt, now_ms);
        table.row(vec![
            attempt.state.clone(),
            attempt.attempt.to_string(),
            status_name(attempt.outcome),
            format!("+{}", millis(u128::from(attempt.ready_at_ms - origin))),
            millis(times.queued.as_millis()),
            millis(times.gated.as_millis()),
            millis(times.ran.as_millis()),
            attempt.error.clone().unwrap_or_default(),
        ]);
    }
    table.write(out).map_err(Failure::io)
}
