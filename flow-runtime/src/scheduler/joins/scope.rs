//! One fork scope: its branches' positions, its held sets, and what each held set waits for.

use std::collections::BTreeMap;

use flow_core::{FxHashMap, FxHashSet, StateGraph, StateId};
use serde::{Deserialize, Serialize};

use super::ScopeId;

/// The branches opened by one visit of a fork (or the run's root, or a state started by the
/// dependency rules).
///
/// Only `parent`, `opener` and the held sets' states and member counts are kept by a
/// checkpoint; every count is rebuilt from the branches when it is restored.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Scope {
    /// The enclosing scope, and the state where this scope's branches stand, as one branch of
    /// it (the fork state; after an empty scope in between was removed, that scope's).
    pub(super) parent: Option<(ScopeId, StateId)>,
    /// The state whose fork opened this scope: paths through it lead into the next visit's
    /// scope, never to a join of this one. `None` for root scopes. (Checkpoints of format 1
    /// have no opener: their child groups were opened at their parent's fork state.)
    #[serde(default)]
    pub(super) opener: Option<StateId>,
    /// Live branches: running, queued, waiting, held, or standing for a child scope.
    #[serde(skip)]
    pub(super) live: u32,
    /// Live branches that stand for a child scope.
    #[serde(skip)]
    pub(super) children: u32,
    /// The sum of the ids of the child scopes: with one child, its id.
    #[serde(skip)]
    pub(super) child_sum: u64,
    /// Branches held at joins.
    #[serde(skip)]
    pub(super) held_members: u32,
    /// How many live branches stand at each state. Kept only while more than one lives.
    #[serde(skip)]
    pub(super) positions: FxHashMap<StateId, u32>,
    /// The same positions by graph order: the highest bounds every ancestor search.
    #[serde(skip)]
    pub(super) orders: BTreeMap<u32, u32>,
    /// How many live branches stand at wild states (which may reach anything).
    #[serde(skip)]
    pub(super) wild: u32,
    /// Held sets, oldest first.
    pub(super) held: Vec<Held>,
}

/// Branches of one scope held at one state, waiting to run it once together.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Held {
    pub(super) state: StateId,
    pub(super) members: u32,
    /// Live branches of the scope, other than the members, that may still reach `state`.
    #[serde(skip)]
    pub(super) blockers: u32,
    /// The declared states from which `state` may be reached without passing through the
    /// scope's opener. (Wild states always may.)
    #[serde(skip)]
    pub(super) ancestors: FxHashSet<StateId>,
}

impl Held {
    /// Whether a branch at `position` may still reach this set's state.
    pub(super) fn counts(&self, graph: &StateGraph, position: StateId) -> bool {
        graph.is_wild(position) || self.ancestors.contains(&position)
    }
}

impl Scope {
    pub(super) fn new(
        parent: Option<(ScopeId, StateId)>,
        opener: Option<StateId>,
        live: u32,
    ) -> Self {
        Self {
            parent,
            opener,
            live,
            children: 0,
            child_sum: 0,
            held_members: 0,
            positions: FxHashMap::default(),
            orders: BTreeMap::new(),
            wild: 0,
            held: Vec::new(),
        }
    }

    pub(super) fn add_position(&mut self, graph: &StateGraph, state: StateId) {
        *self.positions.entry(state).or_insert(0) += 1;
        *self.orders.entry(graph.order(state)).or_insert(0) += 1;
        if graph.is_wild(state) {
            self.wild += 1;
        }
    }

    pub(super) fn remove_position(&mut self, graph: &StateGraph, state: StateId, n: u32) {
        decrement_position(&mut self.positions, state, n);
        decrement_order(&mut self.orders, graph.order(state), n);
        if graph.is_wild(state) {
            debug_assert!(self.wild >= n, "wild count drift");
            self.wild = self.wild.saturating_sub(n);
        }
    }

    /// One branch is left: nothing can be held for it, so positions are not kept.
    pub(super) fn clear_positions(&mut self) {
        self.positions.clear();
        self.orders.clear();
        self.wild = 0;
    }

    /// `n` branches at `from` move away (or end): the held sets they counted for lose them.
    pub(super) fn forget_blocker(&mut self, graph: &StateGraph, from: StateId, n: u32) {
        for h in &mut self.held {
            if h.counts(graph, from) {
                debug_assert!(h.blockers >= n, "blocker count drift");
                h.blockers = h.blockers.saturating_sub(n);
            }
        }
    }

    /// A branch now stands at `at`: the held sets it may reach gain a blocker.
    pub(super) fn note_blocker(&mut self, graph: &StateGraph, at: StateId) {
        for h in &mut self.held {
            if h.counts(graph, at) {
                h.blockers += 1;
            }
        }
    }

    pub(super) fn held_at(&self, state: StateId) -> Option<usize> {
        self.held.iter().position(|h| h.state == state)
    }

    /// The highest graph order of a position: no branch of this scope can reach a state of
    /// higher order along declared edges.
    pub(super) fn highest_order(&self) -> u32 {
        self.orders.keys().next_back().copied().unwrap_or(0)
    }

    /// The live branches of this scope (other than those at `state` itself when `state`
    /// counts) that may still reach `state`, given its ancestors.
    pub(super) fn blockers_of(
        &self,
        graph: &StateGraph,
        state: StateId,
        ancestors: &[StateId],
        members: u32,
    ) -> u32 {
        let declared: u32 = ancestors
            .iter()
            .map(|p| self.positions.get(p).copied().unwrap_or(0))
            .sum();
        let all = declared + self.wild;
        let own = if graph.is_wild(state) || ancestors.contains(&state) {
            members
        } else {
            0
        };
        all.saturating_sub(own)
    }
}

fn decrement_position(positions: &mut FxHashMap<StateId, u32>, state: StateId, n: u32) {
    if let Some(count) = positions.get_mut(&state) {
        debug_assert!(*count >= n, "position count underflow");
        *count = count.saturating_sub(n);
        if *count == 0 {
            positions.remove(&state);
        }
    }
}

fn decrement_order(orders: &mut BTreeMap<u32, u32>, order: u32, n: u32) {
    if let Some(count) = orders.get_mut(&order) {
        debug_assert!(*count >= n, "order count underflow");
        *count = count.saturating_sub(n);
        if *count == 0 {
            orders.remove(&order);
        }
    }
}

/// The reverse search that finds a held set's ancestors, with buffers reused across searches.
pub(super) struct AncestorSearch {
    stamps: Vec<u32>,
    epoch: u32,
    stack: Vec<StateId>,
    /// The result of the last search.
    pub(super) found: Vec<StateId>,
}

impl AncestorSearch {
    pub(super) fn new(states: usize) -> Self {
        Self {
            stamps: vec![0; states],
            epoch: 0,
            stack: Vec::new(),
            found: Vec::new(),
        }
    }

    /// Collects into `found` the declared (not wild) states from which `state` is reachable
    /// along declared edges without passing through `opener` (which is never collected), of
    /// order at most `limit`: no branch can stand at a state of higher order. `state` itself
    /// is collected only through a cycle. Wild states are not collected (they count anyway)
    /// nor searched through (only wild states reach them).
    pub(super) fn collect(
        &mut self,
        graph: &StateGraph,
        state: StateId,
        limit: u32,
        opener: Option<StateId>,
    ) {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.stamps.fill(0);
            self.epoch = 1;
        }
        self.found.clear();
        self.stack.clear();
        self.stack.push(state);
        while let Some(v) = self.stack.pop() {
            for &p in graph.predecessors(v) {
                if Some(p) == opener
                    || graph.is_wild(p)
                    || graph.order(p) > limit
                    || self.stamps[p.index()] == self.epoch
                {
                    continue;
                }
                self.stamps[p.index()] = self.epoch;
                self.found.push(p);
                self.stack.push(p);
            }
        }
    }
}
