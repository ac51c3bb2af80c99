//! The run's states as an SVG drawn on the server: one box per state, in the workflow's
//! order, filled with its status's colour. (A store holds no transitions: the edges come
//! with the workflow's code, which a store-only dashboard does not have.)

use std::fmt::Write;

use flow_runtime::Checkpoint;

use super::html::{colour, escape};
use crate::cli::runs::shown_status;

const PER_ROW: usize = 5;
const WIDTH: usize = 150;
const HEIGHT: usize = 54;
const GAP: usize = 24;

/// The SVG of the run's states; each box carries its state (`data-state`) and status (`data-status`).
pub(crate) fn states(checkpoint: &Checkpoint) -> String {
    let states = &checkpoint.states;
    let rows = states.len().div_ceil(PER_ROW).max(1);
    let columns = states.len().clamp(1, PER_ROW);
    let (width, height) = (columns * (WIDTH + GAP) + GAP, rows * (HEIGHT + GAP) + GAP);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="states by status">"#
    );
    for (i, state) in states.iter().enumerate() {
        let (x, y) = corner(i);
        let status = shown_status(checkpoint, state);
        let name = escape(&state.name);
        let _ = write!(
            svg,
            "<g class=\"state\" data-state=\"{name}\" data-status=\"{status}\">\
<title>{name}: {status}</title>\
<rect x=\"{x}\" y=\"{y}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" rx=\"8\" fill=\"{fill}\"/>\
<text x=\"{tx}\" y=\"{ty}\" fill=\"#fff\" font-size=\"14\" text-anchor=\"middle\">{short}</text>\
<text x=\"{tx}\" y=\"{sy}\" fill=\"#fff\" font-size=\"11\" text-anchor=\"middle\">{status}</text></g>",
            fill = colour(&status),
            tx = x + WIDTH / 2,
            ty = y + 22,
            sy = y + 40,
            short = escape(&shortened(&state.name)),
        );
    }
    svg.push_str("</svg>");
    svg
}

fn corner(i: usize) -> (usize, usize) {
    (
        GAP + (i % PER_ROW) * (WIDTH + GAP),
        GAP + (i / PER_ROW) * (HEIGHT + GAP),
    )
}

/// A name that fits its box (the whole name is in the box's title).
fn shortened(name: &str) -> String {
    const FITS: usize = 18;
    if name.chars().count() <= FITS {
        name.to_owned()
    } else {
        let mut short: String = name.chars().take(FITS - 1).collect();
        short.push('…');
        short
    }
}
