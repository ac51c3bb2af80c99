//! `fluffy inputs …`: the input requests runs wait on, and answering them.

use std::io::Write;

use flow_core::FlowError;
use flow_runtime::{CheckpointStore, InputId, InputOutcome, InputRecord};
use serde::Serialize;
use serde_json::Value;

use super::runs::{ListFilter, find, pending, schema_summary, summaries};
use super::table::Table;
use super::{Failure, Output};

/// One waiting request in `inputs list`.
#[derive(Serialize)]
struct Waiting<'a> {
    workflow: &'a str,
    key: &'a str,
    id: String,
    state: &'a str,
    prompt: &'a str,
    asked_at_ms: u64,
    schema: &'a Value,
    default: &'a Option<Value>,
}

pub(crate) fn list(
    store: &dyn CheckpointStore,
    workflow: Option<String>,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let filter = ListFilter {
        workflow,
        statuses: Vec::new(),
        since: None,
    };
    // (Runs read once each; their requests listed oldest first.)
    let mut checkpoints = Vec::new();
    for run in summaries(store, &filter)? {
        if run.pending_inputs > 0
            && let Some(checkpoint) = store
                .latest(&run.workflow, &run.key)
                .map_err(Failure::from)?
        {
            checkpoints.push(checkpoint);
        }
    }
    let mut waiting: Vec<Waiting<'_>> = checkpoints
        .iter()
        .flat_map(|checkpoint| {
            pending(checkpoint).map(|record| Waiting {
                workflow: &checkpoint.agent,
                key: &checkpoint.run_key,
                id: record.request.id.to_string(),
                state: &record.request.id.state,
                prompt: &record.request.prompt,
                asked_at_ms: record.request.asked_at_ms,
                schema: &record.request.schema,
                default: &record.request.default,
            })
        })
        .collect();
    waiting.sort_by_key(|w| w.asked_at_ms);
    if output.json {
        return output.json_to(out, &waiting);
    }
    if waiting.is_empty() {
        return output.say(out, "no input requests waiting");
    }
    let mut table = Table::new(["WORKFLOW", "KEY", "ID", "PROMPT", "ANSWER"]);
    for w in &waiting {
        table.row(vec![
            w.workflow.to_owned(),
            w.key.to_owned(),
            w.id.clone(),
            w.prompt.to_owned(),
            schema_summary(w.schema),
        ]);
    }
    table.write(out).map_err(Failure::io)
}

/// What `inputs answer` prints with `--json`.
#[derive(Serialize)]
struct Answered<'a> {
    workflow: &'a str,
    key: &'a str,
    id: String,
    value: &'a Value,
}

/// Checks `text` against the request `id` of run `key` and leaves it for the run.
pub(crate) fn answer(
    store: &dyn CheckpointStore,
    request: AnswerRequest<'_>,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let (run, checkpoint) = find(store, request.key, request.workflow)?;
    let record = checkpoint
        .inputs
        .iter()
        .find(|record| names(record, request.id))
        .ok_or_else(|| {
            let waiting: Vec<String> = pending(&checkpoint)
                .map(|record| record.request.id.to_string())
                .collect();
            Failure::not_found(format!(
                "run `{}` has no input request `{}`; waiting: {}",
                run.run_key,
                request.id,
                if waiting.is_empty() {
                    "none".to_owned()
                } else {
                    waiting.join(", ")
                }
            ))
        })?;
    match &record.outcome {
        InputOutcome::Pending => {}
        InputOutcome::Answered { by, .. } => {
            return Err(Failure::refused(format!(
                "request `{}` was already answered by {by}",
                record.request.id
            )));
        }
        _ => {
            return Err(Failure::refused(format!(
                "request `{}` no longer waits (it timed out or was withdrawn)",
                record.request.id
            )));
        }
    }
    let value = read_value(request.value, &record.request.schema)?;
    check(&record.request.schema, &value)?;
    store
        .answer(
            &run.workflow,
            &run.run_key,
            &record.request.id,
            request.by,
            value.clone(),
        )
        .map_err(|error| match error {
            FlowError::InvalidAnswer { .. } | FlowError::InputClosed { .. } => {
                Failure::refused(error.to_string())
            }
            FlowError::UnknownInput { .. } => Failure::not_found(error.to_string()),
            error => Failure::from(error),
        })?;
    let id = record.request.id.to_string();
    if output.json {
        return output.json_to(
            out,
            &Answered {
                workflow: &run.workflow,
                key: &run.run_key,
                id,
                value: &value,
            },
        );
    }
    output.say(
        out,
        &format!(
            "answered `{id}` of run `{}` ({}) with {value}: the run takes it when it next looks (a waiting run within its poll interval, a suspended one when it continues)",
            run.run_key, run.workflow
        ),
    )
}

/// What `inputs answer` was given.
pub(crate) struct AnswerRequest<'a> {
    pub(crate) key: &'a str,
    pub(crate) workflow: Option<&'a str>,
    pub(crate) id: &'a str,
    pub(crate) value: &'a str,
    pub(crate) by: &'a str,
}

/// Whether `id` (the full `key/state/visit/index`, or `state/visit/index`) names `record`.
fn names(record: &InputRecord, id: &str) -> bool {
    let full = &record.request.id;
    if id.parse::<InputId>().is_ok_and(|parsed| parsed == *full) {
        return true;
    }
    id == format!("{}/{}/{}", full.state, full.visit, full.index)
}

/// The answer `text` as JSON: a text answer is the text itself (or a JSON string, quoted);
/// any other is read as JSON.
fn read_value(text: &str, schema: &Value) -> Result<Value, Failure> {
    let wants_text = schema.get("type").and_then(Value::as_str) == Some("string");
    match serde_json::from_str::<Value>(text) {
        Ok(Value::String(quoted)) => Ok(Value::String(quoted)),
        _ if wants_text => Ok(Value::String(text.to_owned())),
        Ok(value) => Ok(value),
        Err(error) => Err(Failure::refused(format!(
            "`{text}` is not JSON ({error}), and the request wants {}: write it as JSON, e.g. '{{\"approved\": true}}'",
            schema_summary(schema)
        ))),
    }
}

/// Checks `value` against the request's JSON Schema; the refusal lists every violation.
pub(crate) fn check(schema: &Value, value: &Value) -> Result<(), Failure> {
    let validator = jsonschema::validator_for(schema).map_err(|error| {
        Failure::failed(format!(
            "the request's schema cannot be used to check answers ({error})"
        ))
    })?;
    let problems: Vec<String> = validator
        .iter_errors(value)
        .map(|error| {
            let path = error.instance_path().to_string();
            if path.is_empty() {
                error.to_string()
            } else {
                format!("at {path}: {error}")
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::refused(format!(
            "{value} does not fit the request's schema: {}",
            problems.join("; ")
        )))
    }
}
