//! The state graph: names, declared transitions, entries, and what the scheduler's join rule
//! needs to know about reachability.

use std::collections::hash_map::Entry;
use std::sync::Arc;

use crate::error::FlowError;
use crate::hash::FxHashMap;
use crate::options::DependencyType;
use crate::spec::find_cycle;
use crate::suggest::closest_name;

/// Dense index of a state in its [`StateGraph`] (states are interned: the scheduler passes these
/// around, never names).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct StateId(u32);

impl StateId {
    /// The id of the state at this index.
    pub const fn new(index: u32) -> Self {
        Self(index)
    }

    /// The index into per-state tables.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// One state as the graph sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSpec {
    /// Its unique name.
    pub name: String,
    /// The states it may transition to, when declared. `None` means "unknown": the state may go
    /// anywhere, and the join rule treats it conservatively.
    pub successors: Option<Vec<String>>,
    /// Whether the run starts here.
    pub entry: bool,
    /// The state that runs when this one fails after its last attempt.
    pub on_error: Option<String>,
    /// The states this one depends on, and how.
    pub dependencies: Vec<(String, DependencyType)>,
}

impl StateSpec {
    /// A state with unknown successors that is not an entry.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            successors: None,
            entry: false,
            on_error: None,
            dependencies: Vec::new(),
        }
    }
}

/// A validated state graph.
///
/// Built with [`StateGraph::build`], which checks it; afterwards every name in it resolves.
/// Besides names and edges it holds two facts the runtime's join rule uses:
/// - *wild* states: states with undeclared successors, or from which such a state can be
///   reached along declared edges; from a wild state any state may be reachable.
/// - a topological *order* of the strongly connected components (sinks first): a state can
///   only reach states whose order is at most its own.
#[derive(Debug, Clone)]
pub struct StateGraph {
    names: Vec<Arc<str>>,
    index: FxHashMap<Arc<str>, StateId>,
    successors: Vec<Option<Box<[StateId]>>>,
    predecessors: Vec<Vec<StateId>>,
    order: Vec<u32>,
    wild: Vec<bool>,
    entries: Vec<StateId>,
    handlers: Vec<Option<StateId>>,
    dependencies: Vec<Box<[(StateId, DependencyType)]>>,
}

impl StateGraph {
    /// Validates the states of workflow `agent` and builds the graph.
    ///
    /// `extra_entries` names entry states besides those whose spec says `entry`. With no entry at
    /// all, the first state is the entry. Every problem found is reported: one as itself, several
    /// as [`FlowError::Invalid`].
    pub fn build(
        agent: &str,
        specs: &[StateSpec],
        extra_entries: &[String],
    ) -> Result<Self, FlowError> {
        if specs.is_empty() {
            return Err(FlowError::NoStates {
                agent: agent.to_owned(),
            });
        }
        let mut errors = Vec::new();
        let mut names = Vec::with_capacity(specs.len());
        let mut index = FxHashMap::with_capacity_and_hasher(specs.len(), Default::default());
        for (i, spec) in specs.iter().enumerate() {
            let name: Arc<str> = Arc::from(spec.name.as_str());
            match index.entry(name.clone()) {
                Entry::Occupied(_) => errors.push(FlowError::DuplicateState {
                    agent: agent.to_owned(),
                    state: spec.name.clone(),
                }),
                Entry::Vacant(slot) => {
                    slot.insert(StateId(i as u32));
                }
            }
            names.push(name);
        }
        let suggest = |name: &str| {
            closest_name(name, specs.iter().map(|s| s.name.as_str())).map(str::to_owned)
        };

        let mut handlers = Vec::with_capacity(specs.len());
        for spec in specs {
            let handler =
                spec.on_error
                    .as_ref()
                    .and_then(|handler| match index.get(handler.as_str()) {
                        Some(&id) => Some(id),
                        None => {
                            errors.push(FlowError::UnknownErrorHandler {
                                agent: agent.to_owned(),
                                state: spec.name.clone(),
                                handler: handler.clone(),
                                suggestion: suggest(handler),
                            });
                            None
                        }
                    });
            handlers.push(handler);
        }

        let mut successors = Vec::with_capacity(specs.len());
        let mut predecessors = vec![Vec::new(); specs.len()];
        for (i, spec) in specs.iter().enumerate() {
            let Some(declared) = &spec.successors else {
                successors.push(None);
                continue;
            };
            let mut ids = Vec::with_capacity(declared.len());
            for target in declared {
                match index.get(target.as_str()) {
                    Some(&id) => ids.push(id),
                    None => errors.push(FlowError::UnknownSuccessor {
                        agent: agent.to_owned(),
                        state: spec.name.clone(),
                        target: target.clone(),
                        suggestion: suggest(target),
                    }),
                }
            }
            // A failure goes to the handler: for joins, the handler is reachable from here.
            ids.extend(handlers[i]);
            // Sorted, so that checking a transition against a long list is a binary search.
            ids.sort_unstable();
            ids.dedup();
            for &id in &ids {
                predecessors[id.index()].push(StateId(i as u32));
            }
            successors.push(Some(ids.into_boxed_slice()));
        }

        let mut entries: Vec<StateId> = (0..specs.len())
            .filter(|&i| specs[i].entry)
            .map(|i| StateId(i as u32))
            .collect();
        for entry in extra_entries {
            match index.get(entry.as_str()) {
                Some(&id) if !entries.contains(&id) => entries.push(id),
                Some(_) => {}
                None => errors.push(FlowError::UnknownEntry {
                    agent: agent.to_owned(),
                    entry: entry.clone(),
                    suggestion: suggest(entry),
                }),
            }
        }
        if entries.is_empty() {
            entries.push(StateId(0));
        }

        let dependencies = resolve_dependencies(agent, specs, &index, &mut errors);

        FlowError::from_problems(agent, errors)?;

        let order = component_order(&successors);
        let wild = wild_states(&successors, &predecessors);
        Ok(Self {
            names,
            index,
            successors,
            predecessors,
            order,
            wild,
            entries,
            handlers,
            dependencies,
        })
    }

    /// Number of states.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when the graph has no states (never, for a built graph).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The id of the state with this name.
    pub fn id(&self, name: &str) -> Option<StateId> {
        self.index.get(name).copied()
    }

    /// The name of a state (shared: cloning it allocates nothing).
    pub fn name(&self, id: StateId) -> &Arc<str> {
        &self.names[id.index()]
    }

    /// Every state name, in the order the states were added.
    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// The states the run starts with.
    pub fn entries(&self) -> &[StateId] {
        &self.entries
    }

    /// The declared successors of a state, sorted by id, or `None` when it declared none.
    pub fn successors(&self, id: StateId) -> Option<&[StateId]> {
        self.successors[id.index()].as_deref()
    }

    /// Whether `from` may transition to `to`: true when `to` is among its declared successors,
    /// or when `from` declared none.
    pub fn allows(&self, from: StateId, to: StateId) -> bool {
        match self.successors(from) {
            Some(declared) => declared.binary_search(&to).is_ok(),
            None => true,
        }
    }

    /// The states that declare this one as a successor.
    pub fn predecessors(&self, id: StateId) -> &[StateId] {
        &self.predecessors[id.index()]
    }

    /// The state that runs when this one fails after its last attempt.
    pub fn error_handler(&self, id: StateId) -> Option<StateId> {
        self.handlers[id.index()]
    }

    /// The states this one depends on, and how, in the order they were declared.
    pub fn dependencies(&self, id: StateId) -> &[(StateId, DependencyType)] {
        &self.dependencies[id.index()]
    }

    /// Whether any state may be reachable from this one (see the type's docs).
    pub fn is_wild(&self, id: StateId) -> bool {
        self.wild[id.index()]
    }

    /// Topological order of the state's strongly connected component, sinks first: a state
    /// reaches only states whose order is at most its own.
    pub fn order(&self, id: StateId) -> u32 {
        self.order[id.index()]
    }

    /// The closest state name to `name`, for "did you mean" hints.
    pub fn suggest(&self, name: &str) -> Option<String> {
        closest_name(name, self.names.iter().map(|n| &**n)).map(str::to_owned)
    }
}

/// Resolves every dependency to an id; reports unknown names, a state depending on itself and
/// cycles of required dependencies (whose states could never start).
fn resolve_dependencies(
    agent: &str,
    specs: &[StateSpec],
    index: &FxHashMap<Arc<str>, StateId>,
    errors: &mut Vec<FlowError>,
) -> Vec<Box<[(StateId, DependencyType)]>> {
    let mut resolved = Vec::with_capacity(specs.len());
    let mut required = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let mut ids: Vec<(StateId, DependencyType)> = Vec::with_capacity(spec.dependencies.len());
        for (name, kind) in &spec.dependencies {
            match index.get(name.as_str()) {
                None => errors.push(FlowError::UnknownDependency {
                    agent: agent.to_owned(),
                    state: spec.name.clone(),
                    dependency: name.clone(),
                    suggestion: closest_name(name, specs.iter().map(|s| s.name.as_str()))
                        .map(str::to_owned),
                }),
                Some(&id) if id.index() == i => errors.push(FlowError::InvalidConfig {
                    agent: agent.to_owned(),
                    message: format!(
                        "state `{name}` depends on itself, so it could never start; remove that dependency"
                    ),
                }),
                Some(&id) if ids.iter().any(|(known, _)| *known == id) => {
                    errors.push(FlowError::InvalidConfig {
                        agent: agent.to_owned(),
                        message: format!(
                            "state `{}` depends on `{name}` twice; keep one dependency",
                            spec.name
                        ),
                    })
                }
                Some(&id) => {
                    ids.push((id, *kind));
                    if *kind == DependencyType::Required {
                        required.push((id.index(), i));
                    }
                }
            }
        }
        resolved.push(ids.into_boxed_slice());
    }
    if required.is_empty() {
        return resolved;
    }
    if let Some((_, cycle)) = find_cycle(specs.len(), &required) {
        let mut names: Vec<String> = cycle.iter().map(|&i| specs[i].name.clone()).collect();
        names.push(names[0].clone());
        errors.push(FlowError::DependencyCycle {
            agent: agent.to_owned(),
            cycle: names,
        });
    }
    resolved
}

/// Tarjan's algorithm, iterative (a chain of 100 000 states must not overflow the stack).
/// Components are numbered in the order Tarjan completes them, which is reverse topological.
fn component_order(successors: &[Option<Box<[StateId]>>]) -> Vec<u32> {
    const UNVISITED: u32 = u32::MAX;
    let n = successors.len();
    let edges = |v: usize| successors[v].as_deref().unwrap_or(&[]);
    let mut index = vec![UNVISITED; n];
    let mut lowlink = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut component = vec![0u32; n];
    let mut stack = Vec::new();
    let mut call: Vec<(usize, usize)> = Vec::new();
    let mut next_index = 0u32;
    let mut next_component = 0u32;

    for root in 0..n {
        if index[root] != UNVISITED {
            continue;
        }
        call.push((root, 0));
        while let Some(&mut (v, ref mut edge)) = call.last_mut() {
            if *edge == 0 && index[v] == UNVISITED {
                index[v] = next_index;
                lowlink[v] = next_index;
                next_index += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = edges(v).get(*edge) {
                *edge += 1;
                let w = w.index();
                if index[w] == UNVISITED {
                    call.push((w, 0));
                } else if on_stack[w] {
                    lowlink[v] = lowlink[v].min(index[w]);
                }
                continue;
            }
            call.pop();
            if let Some(&(parent, _)) = call.last() {
                lowlink[parent] = lowlink[parent].min(lowlink[v]);
            }
            if lowlink[v] == index[v] {
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component[w] = next_component;
                    if w == v {
                        break;
                    }
                }
                next_component += 1;
            }
        }
    }
    component
}

/// States with undeclared successors, and every state that reaches one along declared edges.
fn wild_states(successors: &[Option<Box<[StateId]>>], predecessors: &[Vec<StateId>]) -> Vec<bool> {
    let mut wild: Vec<bool> = successors.iter().map(Option::is_none).collect();
    let mut queue: Vec<usize> = (0..wild.len()).filter(|&i| wild[i]).collect();
    while let Some(v) = queue.pop() {
        for p in &predecessors[v] {
            if !wild[p.index()] {
                wild[p.index()] = true;
                queue.push(p.index());
            }
        }
    }
    wild
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, successors: &[&str]) -> StateSpec {
        StateSpec {
            name: name.into(),
            successors: Some(successors.iter().map(|s| s.to_string()).collect()),
            entry: false,
            on_error: None,
            dependencies: Vec::new(),
        }
    }

    #[test]
    fn first_state_is_the_entry_unless_one_is_marked() {
        let g = StateGraph::build("w", &[spec("a", &["b"]), spec("b", &[])], &[]).unwrap();
        assert_eq!(g.entries(), &[StateId(0)]);
        let mut b = spec("b", &[]);
        b.entry = true;
        let g = StateGraph::build("w", &[spec("a", &["b"]), b], &[]).unwrap();
        assert_eq!(g.entries(), &[StateId(1)]);
    }

    #[test]
    fn every_problem_is_reported_with_names() {
        let err = StateGraph::build(
            "w",
            &[spec("a", &["bb"]), spec("a", &[]), spec("b", &[])],
            &["nope".into()],
        )
        .unwrap_err();
        let FlowError::Invalid { errors, .. } = err else {
            panic!("expected Invalid, got {err}")
        };
        assert_eq!(
            errors,
            vec![
                FlowError::DuplicateState {
                    agent: "w".into(),
                    state: "a".into()
                },
                FlowError::UnknownSuccessor {
                    agent: "w".into(),
                    state: "a".into(),
                    target: "bb".into(),
                    suggestion: Some("b".into()),
                },
                FlowError::UnknownEntry {
                    agent: "w".into(),
                    entry: "nope".into(),
                    suggestion: None
                },
            ]
        );
        assert_eq!(
            StateGraph::build("w", &[], &[]).unwrap_err(),
            FlowError::NoStates { agent: "w".into() }
        );
    }

    #[test]
    fn order_is_topological_and_cycles_share_a_component() {
        // a -> b -> c -> b, c -> d
        let g = StateGraph::build(
            "w",
            &[
                spec("a", &["b"]),
                spec("b", &["c"]),
                spec("c", &["b", "d"]),
                spec("d", &[]),
            ],
            &[],
        )
        .unwrap();
        let order = |n: &str| g.order(g.id(n).unwrap());
        assert!(order("a") > order("b"));
        assert_eq!(order("b"), order("c"));
        assert!(order("c") > order("d"));
    }

    #[test]
    fn a_long_chain_does_not_overflow_the_stack() {
        let n = 200_000;
        let specs: Vec<StateSpec> = (0..n)
            .map(|i| {
                let next = if i + 1 < n {
                    vec![format!("s{}", i + 1)]
                } else {
                    vec![]
                };
                StateSpec {
                    name: format!("s{i}"),
                    successors: Some(next),
                    entry: false,
                    on_error: None,
                    dependencies: Vec::new(),
                }
            })
            .collect();
        let g = StateGraph::build("w", &specs, &[]).unwrap();
        assert_eq!(g.order(StateId(0)), n as u32 - 1);
        assert_eq!(g.order(StateId(n as u32 - 1)), 0);
    }

    #[test]
    fn wildness_flows_backwards_from_undeclared_states() {
        let g = StateGraph::build(
            "w",
            &[
                spec("a", &["b"]),
                StateSpec::new("b"),
                spec("c", &["d"]),
                spec("d", &[]),
            ],
            &[],
        )
        .unwrap();
        let wild = |n: &str| g.is_wild(g.id(n).unwrap());
        assert!(wild("a") && wild("b"));
        assert!(!wild("c") && !wild("d"));
    }

    #[test]
    fn dependencies_are_resolved_and_checked() {
        use DependencyType::*;
        let with = |name: &str, deps: &[(&str, DependencyType)]| StateSpec {
            dependencies: deps.iter().map(|(d, k)| (d.to_string(), *k)).collect(),
            ..spec(name, &[])
        };
        let g = StateGraph::build(
            "w",
            &[
                with("a", &[]),
                with("b", &[("a", Required), ("c", Optional)]),
                with("c", &[]),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            g.dependencies(StateId(1)),
            &[(StateId(0), Required), (StateId(2), Optional)]
        );
        let err = StateGraph::build(
            "w",
            &[
                with("a", &[("b", Required), ("zz", Optional)]),
                with("b", &[("c", Required), ("b", Optional)]),
                with("c", &[("a", Required)]),
            ],
            &[],
        )
        .unwrap_err();
        let FlowError::Invalid { errors, .. } = err else {
            panic!("expected Invalid, got {err}")
        };
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            matches!(&errors[0], FlowError::UnknownDependency { dependency, .. } if dependency == "zz")
        );
        assert!(errors[1].to_string().contains("`b` depends on itself"));
        assert_eq!(
            errors[2],
            FlowError::DependencyCycle {
                agent: "w".into(),
                cycle: vec!["a".into(), "c".into(), "b".into(), "a".into()],
            }
        );
        // A cycle through a non-required dependency can still start.
        assert!(
            StateGraph::build(
                "w",
                &[with("a", &[("b", Required)]), with("b", &[("a", Optional)])],
                &[],
            )
            .is_ok()
        );
    }
}
