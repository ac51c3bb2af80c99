//! A workflow described at compile time: what `#[workflow]` generates as `GRAPH`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::options::{DependencyLifecycle, DependencyType, ResourceRequirements, RetryPolicy};
use crate::priority::Priority;

/// The static description of a workflow: its states, their transitions, dependencies and
/// options. Built by `#[workflow]` as a constant, so it exists before anything runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkflowSpec {
    /// The workflow's name.
    pub name: &'static str,
    /// The run-wide cap on running states, if set.
    pub max_concurrent: Option<usize>,
    /// The run-wide timeout, if set.
    pub timeout: Option<Duration>,
    /// How long running states get to finish when a run stops, if set.
    pub cleanup_timeout: Option<Duration>,
    /// The most state runs one run may take, if set (see `Agent::max_steps`).
    pub max_steps: Option<u64>,
    /// Every state, in the order the methods appear.
    pub states: &'static [StateDecl],
}

/// One state of a [`WorkflowSpec`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StateDecl {
    /// The state's name (its method's name).
    pub name: &'static str,
    /// Whether the run starts here.
    pub entry: bool,
    /// Every state it transitions to, found in its `next!`/`parallel!` calls; `None` when it
    /// also makes dynamic transitions (`goto!`), checked at run time only.
    pub successors: Option<&'static [&'static str]>,
    /// Scheduling priority.
    pub priority: Priority,
    /// Per-run timeout.
    pub timeout: Option<Duration>,
    /// Resource needs (see [`ResourceRequirements`]).
    pub resources: ResourceRequirements,
    /// Retry policy (see [`RetryPolicy`]).
    pub retry: Option<RetryPolicy>,
    /// Dependencies on other states, in the order written.
    pub dependencies: &'static [DependencyDecl],
    /// The state that handles this one's failure.
    pub on_error: Option<&'static str>,
    /// The circuit breaker guarding this state, if any.
    pub circuit_breaker: Option<BreakerSpec>,
    /// The bulkhead this state's attempts run in, if any.
    pub bulkhead: Option<BulkheadSpec>,
    /// How long it may wait for its resources once ready.
    pub acquire_timeout: Option<Duration>,
    /// Whether a higher-priority state of its run may preempt it.
    pub preemptible: bool,
    /// Whether its attempts may run on another worker (`#[state(remote)]`; see the runtime's
    /// `StateOptions::remote`).
    pub remote: bool,
    /// The coordination primitives it passes before it starts, in the order written.
    pub coordination: &'static [crate::CoordinationDecl],
}

/// One dependency declared with `#[state(deps(...))]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DependencyDecl {
    /// The state depended on.
    pub state: &'static str,
    /// How (see [`DependencyType`]).
    pub kind: DependencyType,
    /// Whether a completion still counts (see [`DependencyLifecycle`]).
    pub lifecycle: DependencyLifecycle,
    /// How long a completion counts under [`DependencyLifecycle::Periodic`].
    pub interval: Option<Duration>,
    /// How long any completion counts, whatever the lifecycle.
    pub expiry: Option<Duration>,
    /// How long the dependent may wait for this dependency before it fails.
    pub timeout: Option<Duration>,
    /// The method of the workflow that must also return `true`, if any.
    pub condition: Option<&'static str>,
}

impl DependencyDecl {
    /// A dependency of this kind with the defaults: lifecycle `Once`, no interval, expiry,
    /// timeout or condition.
    pub const fn new(state: &'static str, kind: DependencyType) -> Self {
        Self {
            state,
            kind,
            lifecycle: DependencyLifecycle::Once,
            interval: None,
            expiry: None,
            timeout: None,
            condition: None,
        }
    }
}

/// A circuit breaker declared on a state: see the runtime's `CircuitBreaker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSpec {
    /// Consecutive failures that open it.
    pub failures: u32,
    /// How long it stays open.
    pub recovery: Duration,
    /// Trial attempts while half-open.
    pub half_open: u32,
}

/// A bulkhead declared on a state: states naming the same bulkhead share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadSpec {
    /// Its name.
    pub name: &'static str,
    /// Attempts inside at once.
    pub max_concurrent: usize,
    /// Attempts waiting for a place.
    pub max_queued: usize,
}

impl WorkflowSpec {
    /// The state with this name.
    pub fn state(&self, name: &str) -> Option<&'static StateDecl> {
        self.states.iter().find(|s| s.name == name)
    }

    /// The entry states: those marked `entry`, or the first state when none is.
    pub fn entries(&self) -> Vec<&'static str> {
        let marked: Vec<&'static str> = self
            .states
            .iter()
            .filter(|s| s.entry)
            .map(|s| s.name)
            .collect();
        if marked.is_empty() {
            self.states.first().map(|s| s.name).into_iter().collect()
        } else {
            marked
        }
    }

    /// Every transition edge `(from, to)`, in declaration order.
    pub fn edges(&self) -> Vec<(&'static str, &'static str)> {
        self.states
            .iter()
            .flat_map(|s| {
                s.successors
                    .unwrap_or(&[])
                    .iter()
                    .map(move |t| (s.name, *t))
            })
            .collect()
    }

    /// Every dependency edge `(dependency, dependent, kind)`.
    pub fn dependency_edges(&self) -> Vec<(&'static str, &'static str, DependencyType)> {
        self.states
            .iter()
            .flat_map(|s| {
                s.dependencies
                    .iter()
                    .map(move |d| (d.state, s.name, d.kind))
            })
            .collect()
    }

    /// The graph as a Mermaid flowchart: entries are rounded, transitions solid, dependencies
    /// dotted with their kind, error handlers labelled `on error`, and states with dynamic
    /// transitions marked `dynamic`.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart TD\n");
        let entries = self.entries();
        for s in self.states {
            let label = if s.successors.is_none() {
                format!("{} (dynamic)", s.name)
            } else {
                s.name.to_owned()
            };
            if entries.contains(&s.name) {
                let _ = writeln!(out, "    {}([{}])", s.name, label);
            } else {
                let _ = writeln!(out, "    {}[{}]", s.name, label);
            }
        }
        for (from, to) in self.edges() {
            let _ = writeln!(out, "    {from} --> {to}");
        }
        for (dependency, dependent, kind) in self.dependency_edges() {
            let _ = writeln!(out, "    {dependency} -.->|{}| {dependent}", kind.as_str());
        }
        for s in self.states {
            if let Some(handler) = s.on_error {
                let _ = writeln!(out, "    {} -->|on error| {handler}", s.name);
            }
        }
        out
    }

    /// The graph in Graphviz DOT, with the same conventions as [`WorkflowSpec::to_mermaid`].
    pub fn to_dot(&self) -> String {
        let mut out = format!("digraph \"{}\" {{\n", self.name);
        let entries = self.entries();
        for s in self.states {
            let shape = if entries.contains(&s.name) {
                "oval"
            } else {
                "box"
            };
            let style = if s.successors.is_none() {
                ", style=dashed"
            } else {
                ""
            };
            let _ = writeln!(out, "    \"{}\" [shape={shape}{style}];", s.name);
        }
        for (from, to) in self.edges() {
            let _ = writeln!(out, "    \"{from}\" -> \"{to}\";");
        }
        for (dependency, dependent, kind) in self.dependency_edges() {
            let _ = writeln!(
                out,
                "    \"{dependency}\" -> \"{dependent}\" [style=dotted, label=\"{}\"];",
                kind.as_str()
            );
        }
        for s in self.states {
            if let Some(handler) = s.on_error {
                let _ = writeln!(
                    out,
                    "    \"{}\" -> \"{handler}\" [color=red, label=\"on error\"];",
                    s.name
                );
            }
        }
        out.push_str("}\n");
        out
    }
}

/// Finds a cycle in a directed graph of `n` nodes given as edges `(from, to)`: the index of an
/// edge that closes a cycle (the first found, in edge order) and the cycle's nodes, starting
/// at that edge's target and ending at its source.
pub fn find_cycle(n: usize, edges: &[(usize, usize)]) -> Option<(usize, Vec<usize>)> {
    let mut outgoing = vec![Vec::new(); n];
    for (index, &(from, to)) in edges.iter().enumerate() {
        outgoing[from].push((to, index));
    }
    // 0 unvisited, 1 on the current path, 2 done.
    let mut color = vec![0u8; n];
    let mut path: Vec<usize> = Vec::new();
    for root in 0..n {
        if color[root] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        color[root] = 1;
        path.push(root);
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&(target, edge)) = outgoing[node].get(*next) {
                *next += 1;
                match color[target] {
                    0 => {
                        color[target] = 1;
                        path.push(target);
                        stack.push((target, 0));
                    }
                    1 => {
                        let start = path.iter().position(|&p| p == target).unwrap_or(0);
                        return Some((edge, path[start..].to_vec()));
                    }
                    _ => {}
                }
            } else {
                color[node] = 2;
                path.pop();
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn state(name: &'static str, successors: Option<&'static [&'static str]>) -> StateDecl {
        StateDecl {
            name,
            entry: false,
            successors,
            priority: Priority::Normal,
            timeout: None,
            resources: ResourceRequirements::NONE,
            retry: None,
            dependencies: &[],
            on_error: None,
            circuit_breaker: None,
            bulkhead: None,
            acquire_timeout: None,
            preemptible: false,
            remote: false,
            coordination: &[],
        }
    }

    const SPEC: WorkflowSpec = WorkflowSpec {
        name: "demo",
        max_concurrent: None,
        timeout: None,
        cleanup_timeout: None,
        max_steps: None,
        states: &[
            state("a", Some(&["b", "c"])),
            StateDecl {
                dependencies: &[DependencyDecl::new("a", DependencyType::Required)],
                ..state("b", Some(&[]))
            },
            StateDecl {
                on_error: Some("b"),
                ..state("c", None)
            },
        ],
    };

    #[test]
    fn mermaid_and_dot_show_every_kind_of_edge() {
        assert_eq!(
            SPEC.to_mermaid(),
            "flowchart TD\n    a([a])\n    b[b]\n    c[c (dynamic)]\n    a --> b\n    a --> c\n    a -.->|required| b\n    c -->|on error| b\n"
        );
        let dot = SPEC.to_dot();
        assert!(dot.starts_with("digraph \"demo\" {\n    \"a\" [shape=oval];\n"));
        assert!(dot.contains("    \"c\" [shape=box, style=dashed];\n"));
        assert!(dot.contains("    \"a\" -> \"b\" [style=dotted, label=\"required\"];\n"));
        assert!(dot.ends_with("    \"c\" -> \"b\" [color=red, label=\"on error\"];\n}\n"));
        assert_eq!(SPEC.entries(), ["a"]);
        assert_eq!(SPEC.edges(), [("a", "b"), ("a", "c")]);
    }

    #[test]
    fn cycles_are_found_at_the_closing_edge() {
        assert_eq!(find_cycle(3, &[(0, 1), (1, 2)]), None);
        assert_eq!(
            find_cycle(3, &[(0, 1), (1, 2), (2, 0)]),
            Some((2, vec![0, 1, 2]))
        );
        assert_eq!(find_cycle(2, &[(1, 1)]), Some((0, vec![1])));
        assert_eq!(
            find_cycle(4, &[(0, 1), (2, 3), (3, 2)]),
            Some((2, vec![2, 3]))
        );
    }
}
