//! The run's attempts on a time line, drawn on the server: per attempt a light bar while it
//! waited for its turn (a slot), an amber one while it waited for resources (the pool, rate
//! limits, primitives) and a bar in its outcome's colour while it ran; retries are rows of
//! their own.

use std::fmt::Write;

use flow_runtime::{AttemptOutcome, AttemptRecord};

use super::html::{colour, escape};
use crate::cli::{runs::millis, status_name};

const LABEL: u64 = 170;
const WIDTH: u64 = 640;
const ROW: u64 = 20;

/// The colour of an attempt's run bar.
fn outcome_colour(outcome: AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Completed => colour("completed"),
        AttemptOutcome::Running => colour("running"),
        AttemptOutcome::Cancelled => colour("cancelled"),
        AttemptOutcome::Refused => colour("blocked"),
        AttemptOutcome::TimedOut => colour("timeout"),
        _ => colour("failed"),
    }
}

/// The chart of `attempts`; `now_ms` ends the bars of those still running. Each bar carries
/// its state, attempt and outcome (`data-state`, `data-attempt`, `data-outcome`).
pub(crate) fn chart(attempts: &[AttemptRecord], now_ms: u64) -> String {
    if attempts.is_empty() {
        return "<p class=\"muted\">No attempts recorded (a run without checkpoints keeps none).</p>".into();
    }
    let start = attempts.iter().map(|a| a.ready_at_ms).min().unwrap_or(0);
    let end = attempts
        .iter()
        .map(|a| a.ended_at_ms.unwrap_or(now_ms).max(a.started_at_ms))
        .max()
        .unwrap_or(start)
        .max(start + 1);
    let span = end - start;
    let x = |at: u64| LABEL + (at.saturating_sub(start)).min(span) * WIDTH / span;
    let rows = attempts.len() as u64;
    let (width, height) = (LABEL + WIDTH + 10, rows * ROW + 30);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"timeline\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"attempts over time\">"
    );
    for (row, attempt) in attempts.iter().enumerate() {
        let y = row as u64 * ROW;
        let ended = attempt
            .ended_at_ms
            .unwrap_or(now_ms)
            .max(attempt.started_at_ms);
        let outcome = status_name(attempt.outcome);
        let times = flow_runtime::attempt_times(attempt, now_ms);
        let gated_at = attempt
            .started_at_ms
            .saturating_sub(u64::try_from(times.gated.as_millis()).unwrap_or(u64::MAX));
        let title = format!(
            "{} attempt {}: {outcome}; queued {}, waited for resources {}, ran {}{}",
            attempt.state,
            attempt.attempt,
            millis(times.queued.as_millis()),
            millis(times.gated.as_millis()),
            millis(u128::from(ended - attempt.started_at_ms)),
            attempt
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        let label = if attempt.attempt > 1 {
            format!("{} #{}", attempt.state, attempt.attempt)
        } else {
            attempt.state.clone()
        };
        let short: String = if label.chars().count() > 24 {
            label.chars().take(23).chain(['…']).collect()
        } else {
            label
        };
        let (ready_x, gated_x, start_x, end_x) = (
            x(attempt.ready_at_ms),
            x(gated_at),
            x(attempt.started_at_ms),
            x(ended),
        );
        let _ = write!(
            svg,
            "<g class=\"attempt\" data-state=\"{state}\" data-attempt=\"{number}\" data-outcome=\"{outcome}\"><title>{title}</title>\
<text x=\"4\" y=\"{ty}\" font-size=\"12\">{short}</text>\
<rect class=\"wait\" x=\"{ready_x}\" y=\"{by}\" width=\"{wait_w}\" height=\"12\" fill=\"#e0e0e0\"/>\
<rect class=\"gated\" x=\"{gated_x}\" y=\"{by}\" width=\"{gated_w}\" height=\"12\" fill=\"#ffcc80\"/>\
<rect class=\"run\" x=\"{start_x}\" y=\"{by}\" width=\"{run_w}\" height=\"12\" fill=\"{fill}\"/></g>",
            state = escape(&attempt.state),
            number = attempt.attempt,
            title = escape(&title),
            ty = y + 14,
            short = escape(&short),
            by = y + 4,
            wait_w = gated_x - ready_x,
            gated_w = start_x - gated_x,
            // (At least a sliver: an attempt of no time is still seen.)
            run_w = (end_x - start_x).max(2),
            fill = outcome_colour(attempt.outcome),
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{LABEL}\" y=\"{ty}\" font-size=\"11\" fill=\"#666\">0</text><text x=\"{right}\" y=\"{ty}\" font-size=\"11\" fill=\"#666\" text-anchor=\"end\">{total}</text></svg>",
        ty = rows * ROW + 20,
        right = LABEL + WIDTH,
        total = escape(&millis(u128::from(span))),
    );
    svg
}
