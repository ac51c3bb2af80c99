//! A workflow's graph drawn from its definition: Mermaid, Graphviz DOT, or an SVG laid out
//! here (states in layers by their distance from an entry, transitions as arrows, each state
//! filled with its status's colour when a run is shown).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;

use flow_core::{StateGraph, StateId};

use crate::dashboard::html::{colour, escape};

/// One arrow of the drawing.
struct Edge {
    from: usize,
    to: usize,
    /// `None`: a transition; else a dependency's kind, or `on error`.
    label: Option<&'static str>,
}

fn edges(graph: &StateGraph) -> Vec<Edge> {
    let mut edges = Vec::new();
    for from in 0..graph.len() {
        let id = StateId::new(from as u32);
        for to in graph.successors(id).unwrap_or(&[]) {
            edges.push(Edge {
                from,
                to: to.index(),
                label: None,
            });
        }
        for (dependency, kind) in graph.dependencies(id) {
            edges.push(Edge {
                from: dependency.index(),
                to: from,
                label: Some(kind.as_str()),
            });
        }
        if let Some(handler) = graph.error_handler(id) {
            edges.push(Edge {
                from,
                to: handler.index(),
                label: Some("on error"),
            });
        }
    }
    edges
}

/// A name as a Mermaid or DOT node id (the label keeps the name itself).
fn node_id(index: usize) -> String {
    format!("s{index}")
}

/// A state's label: its name, and `(dynamic)` when its transitions are decided at run time.
fn label(graph: &StateGraph, index: usize) -> String {
    let name = graph.names()[index].to_string();
    if graph.is_wild(StateId::new(index as u32)) {
        format!("{name} (dynamic)")
    } else {
        name
    }
}

/// The graph as a Mermaid flowchart: entries rounded, transitions solid, dependencies dotted
/// with their kind, error handlers labelled `on error`.
pub fn mermaid(graph: &StateGraph) -> String {
    let mut out = String::from("flowchart TD\n");
    let entries: Vec<usize> = graph.entries().iter().map(|e| e.index()).collect();
    for index in 0..graph.len() {
        // (Quoted labels, with Mermaid's entity codes for what it would read as syntax or
        // markup: a name is shown as it is.)
        let text = label(graph, index)
            .replace('#', "#35;")
            .replace('"', "#quot;")
            .replace('<', "#lt;")
            .replace('>', "#gt;")
            .replace('`', "#96;");
        if entries.contains(&index) {
            let _ = writeln!(out, "    {}([\"{text}\"])", node_id(index));
        } else {
            let _ = writeln!(out, "    {}[\"{text}\"]", node_id(index));
        }
    }
    for edge in edges(graph) {
        let (from, to) = (node_id(edge.from), node_id(edge.to));
        let _ = match edge.label {
            None => writeln!(out, "    {from} --> {to}"),
            Some("on error") => writeln!(out, "    {from} -->|on error| {to}"),
            Some(kind) => writeln!(out, "    {from} -.->|{kind}| {to}"),
        };
    }
    out
}

/// The graph in Graphviz DOT, with the conventions of [`mermaid`].
pub fn dot(graph: &StateGraph) -> String {
    let quoted = |text: &str| text.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::from("digraph workflow {\n    rankdir=TB;\n");
    let entries: Vec<usize> = graph.entries().iter().map(|e| e.index()).collect();
    for index in 0..graph.len() {
        let shape = if entries.contains(&index) {
            "oval"
        } else {
            "box"
        };
        let _ = writeln!(
            out,
            "    {} [label=\"{}\", shape={shape}];",
            node_id(index),
            quoted(&label(graph, index))
        );
    }
    for edge in edges(graph) {
        let (from, to) = (node_id(edge.from), node_id(edge.to));
        let _ = match edge.label {
            None => writeln!(out, "    {from} -> {to};"),
            Some(text) => writeln!(out, "    {from} -> {to} [label=\"{text}\", style=dashed];"),
        };
    }
    out.push_str("}\n");
    out
}

const WIDTH: usize = 150;
const HEIGHT: usize = 46;
const GAP_X: usize = 30;
const GAP_Y: usize = 50;

/// The graph as an SVG: states in layers (an entry's distance along transitions), each
/// filled with the colour of `statuses[name]` (grey without one). Every box carries its
/// state and status (`data-state`, `data-status`).
pub fn svg(graph: &StateGraph, statuses: &HashMap<String, String>) -> String {
    let n = graph.len();
    // Layers: breadth first from the entries along transitions; states no transition
    // reaches (dependents, handlers, dynamic targets) go below what reaches them.
    let mut layer: Vec<Option<usize>> = vec![None; n];
    let mut queue: VecDeque<usize> = graph.entries().iter().map(|e| e.index()).collect();
    for &entry in &queue {
        layer[entry] = Some(0);
    }
    let all = edges(graph);
    loop {
        while let Some(at) = queue.pop_front() {
            let depth = layer[at].unwrap_or(0);
            for edge in all.iter().filter(|e| e.from == at) {
                if layer[edge.to].is_none() {
                    layer[edge.to] = Some(depth + 1);
                    queue.push_back(edge.to);
                }
            }
        }
        // (Unreached states start new layers of their own below, in definition order.)
        let Some(unreached) = (0..n).find(|&i| layer[i].is_none()) else {
            break;
        };
        let below = layer
            .iter()
            .flatten()
            .max()
            .map_or(0, |deepest| deepest + 1);
        layer[unreached] = Some(below);
        queue.push_back(unreached);
    }
    let mut rows: Vec<Vec<usize>> = Vec::new();
    for (index, depth) in layer.iter().enumerate() {
        let depth = depth.unwrap_or(0);
        if rows.len() <= depth {
            rows.resize(depth + 1, Vec::new());
        }
        rows[depth].push(index);
    }
    let widest = rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let (width, height) = (
        widest * (WIDTH + GAP_X) + GAP_X,
        rows.len().max(1) * (HEIGHT + GAP_Y) + GAP_Y / 2,
    );
    let mut at: Vec<(usize, usize)> = vec![(0, 0); n];
    for (depth, row) in rows.iter().enumerate() {
        // (Each row centred.)
        let offset = (width - row.len() * (WIDTH + GAP_X) - GAP_X) / 2;
        for (column, &index) in row.iter().enumerate() {
            at[index] = (
                offset + GAP_X + column * (WIDTH + GAP_X),
                GAP_Y / 2 + depth * (HEIGHT + GAP_Y),
            );
        }
    }
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"graph\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"workflow graph\">\
<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#888\"/></marker></defs>"
    );
    for edge in &all {
        let (fx, fy) = at[edge.from];
        let (tx, ty) = at[edge.to];
        let (x1, y1) = (fx + WIDTH / 2, fy + HEIGHT);
        let (x2, y2) = (tx + WIDTH / 2, ty);
        let dash = if edge.label.is_some() {
            " stroke-dasharray=\"5 4\""
        } else {
            ""
        };
        if ty > fy {
            let _ = write!(
                svg,
                "<line x1=\"{x1}\" y1=\"{y1}\" x2=\"{x2}\" y2=\"{y2}\" stroke=\"#888\" stroke-width=\"1.5\"{dash} marker-end=\"url(#arrow)\"/>"
            );
        } else {
            // A loop back (or a step across a row): a curve out to the right.
            let (sx, sy) = (fx + WIDTH, fy + HEIGHT / 2);
            let (ex, ey) = (tx + WIDTH, ty + HEIGHT / 2);
            let bulge = sx.max(ex) + GAP_X;
            let _ = write!(
                svg,
                "<path d=\"M {sx} {sy} C {bulge} {sy}, {bulge} {ey}, {ex} {ey}\" fill=\"none\" stroke=\"#888\" stroke-width=\"1.5\"{dash} marker-end=\"url(#arrow)\"/>"
            );
        }
        if let Some(text) = edge.label {
            let _ = write!(
                svg,
                "<text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#666\">{}</text>",
                (x1 + x2) / 2 + 4,
                (y1 + y2) / 2,
                escape(text)
            );
        }
    }
    for (index, &(x, y)) in at.iter().enumerate() {
        let name = graph.names()[index].to_string();
        let status = statuses.get(&name).map_or("", String::as_str);
        let fill = if status.is_empty() {
            "#9e9e9e"
        } else {
            colour(status)
        };
        let shown = label(graph, index);
        let short: String = if shown.chars().count() > 20 {
            shown.chars().take(19).chain(['…']).collect()
        } else {
            shown.clone()
        };
        let _ = write!(
            svg,
            "<g class=\"state\" data-state=\"{n}\" data-status=\"{s}\"><title>{t}</title>\
<rect x=\"{x}\" y=\"{y}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" rx=\"8\" fill=\"{fill}\"/>\
<text x=\"{cx}\" y=\"{ty}\" fill=\"#fff\" font-size=\"13\" text-anchor=\"middle\">{short}</text>",
            n = escape(&name),
            s = escape(status),
            t = escape(&if status.is_empty() {
                shown.clone()
            } else {
                format!("{shown}: {status}")
            }),
            cx = x + WIDTH / 2,
            ty = y + if status.is_empty() { 28 } else { 20 },
            short = escape(&short),
        );
        if !status.is_empty() {
            let _ = write!(
                svg,
                "<text x=\"{}\" y=\"{}\" fill=\"#fff\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                x + WIDTH / 2,
                y + 36,
                escape(status)
            );
        }
        svg.push_str("</g>");
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_core::{StateGraph, StateSpec};

    #[test]
    fn names_with_markup_are_shown_as_they_are() {
        let graph = StateGraph::build(
            "odd",
            &[StateSpec::new("a#1;\"<b>`"), StateSpec::new("plain")],
            &[],
        )
        .unwrap();
        let text = mermaid(&graph);
        assert!(
            text.contains("s0([\"a#35;1;#quot;#lt;b#gt;#96; (dynamic)\"])"),
            "{text}"
        );
        let drawn = dot(&graph);
        assert!(
            drawn.contains("label=\"a#1;\\\"<b>` (dynamic)\""),
            "{drawn}"
        );
    }
}
