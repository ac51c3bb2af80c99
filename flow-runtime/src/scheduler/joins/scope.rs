//! One fork scope: its branches' positions, its held sets, and what each held set waits for.

use std::collections::BTreeMap;

use flow_core::{FxHashMap, FxHashSet, StateGraph, StateId};
use serde::{Deserialize, Serialize};

use super::{BranchId, ScopeId};

/// The branches opened by one visit of a fork (or the run's root, or a state started by the
/// dependency rules).
///
/// Only `parent`, `opener` and the held sets' states and member counts are kept by a
/// checkpoint; every count is rebuilt from the branches when it is restored.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Scope {
    /// The enclosing scope and the state whose fork opened this one: the branches of this
    /// scope stand there, as one branch of the parent. `None` for root scopes.
    pub(super) parent: Option<(ScopeId, StateId)>,
    /// Whether a branch of this scope went on from the fork state to the next pass while
    /// others stayed: then none of those may reach the fork state any more, and in the parent
    /// this scope holds nothing at it.
    #[serde(default)]
    pub(super) spent: bool,
    /// Live members: branches running, queued, waiting or held, and child scopes.
    #[serde(skip)]
    pub(super) live: u32,
    /// Members that are child scopes.
    #[serde(skip)]
    pub(super) children: u32,
    /// Branches held at joins.
    #[serde(skip)]
    pub(super) held_members: u32,
    /// How many members stand at each state (a child scope at its fork state; nothing at this
    /// scope's own fork state, from which no member reaches anything of this scope). Kept only
    /// while more than one member lives.
    #[serde(skip)]
    pub(super) positions: FxHashMap<StateId, u32>,
    /// The same positions by graph order: the highest bounds every ancestor search.
    #[serde(skip)]
    pub(super) orders: BTreeMap<u32, u32>,
    /// How many members stand at wild states (which may reach anything).
    #[serde(skip)]
    pub(super) wild: u32,
    /// Spent child scopes, by fork state: they hold nothing at that state.
    #[serde(skip)]
    pub(super) spent_at: FxHashMap<StateId, u32>,
    /// Held sets, oldest first.
    pub(super) held: Vec<Held>,
    /// The branch whose fork opened this scope: it goes on when the scope closes.
    #[serde(default)]
    pub(super) branch: BranchId,
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
    /// The members' ids (kept only while branches are told apart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) branches: Vec<BranchId>,
}

impl Held {
    /// Whether a branch at `position` may still reach this set's state.
    pub(super) fn counts(&self, graph: &StateGraph, position: StateId) -> bool {
        graph.is_wild(position) || self.ancestors.contains(&position)
    }
}

impl Scope {
    pub(super) fn new(parent: Option<(ScopeId, StateId)>, live: u32) -> Self {
        Self {
            parent,
            spent: false,
            live,
            children: 0,
            held_members: 0,
            positions: FxHashMap::default(),
            orders: BTreeMap::new(),
            wild: 0,
            spent_at: FxHashMap::default(),
            held: Vec::new(),
            branch: 0,
        }
    }

    /// The state whose fork opened this scope.
    pub(super) fn opener(&self) -> Option<StateId> {
        self.parent.map(|(_, opener)| opener)
    }

    pub(super) fn add_position(&mut self, graph: &StateGraph, state: StateId) {
        if Some(state) == self.opener() {
            return;
        }
        *self.positions.entry(state).or_insert(0) += 1;
        *self.orders.entry(graph.order(state)).or_insert(0) += 1;
        if graph.is_wild(state) {
            self.wild += 1;
        }
    }

    pub(super) fn remove_position(&mut self, graph: &StateGraph, state: StateId, n: u32) {
        if Some(state) == self.opener() {
            return;
        }
        decrement_position(&mut self.positions, state, n);
        decrement_order(&mut self.orders, graph.order(state), n);
        if graph.is_wild(state) {
            debug_assert!(self.wild >= n, "wild count drift");
            self.wild = self.wild.saturating_sub(n);
        }
    }

    /// A member at `at` leaves the scope (it ended, or goes on elsewhere): its position goes,
    /// and the held sets it counted for lose it. `spent`: it is a spent child scope.
    pub(super) fn remove_member(&mut self, graph: &StateGraph, at: StateId, spent: bool) {
        if self.live > 1 {
            self.remove_position(graph, at, 1);
            self.forget_blocker(graph, at, 1, spent);
            if spent {
                self.forget_spent(at);
            }
        }
        self.live -= 1;
    }

    /// One member is left: nothing can be held for it, so positions are not kept.
    pub(super) fn clear_positions(&mut self) {
        self.positions.clear();
        self.orders.clear();
        self.wild = 0;
        self.spent_at.clear();
    }

    /// `n` members at `from` move away (or end): the held sets they counted for lose them.
    /// `spent`: they are a spent child scope, which counted for no set at `from`.
    pub(super) fn forget_blocker(
        &mut self,
        graph: &StateGraph,
        from: StateId,
        n: u32,
        spent: bool,
    ) {
        if Some(from) == self.opener() {
            return;
        }
        for h in &mut self.held {
            if h.counts(graph, from) && !(spent && h.state == from) {
                debug_assert!(h.blockers >= n, "blocker count drift");
                h.blockers = h.blockers.saturating_sub(n);
            }
        }
    }

    /// A member now stands at `at`: the held sets it may reach gain a blocker.
    pub(super) fn note_blocker(&mut self, graph: &StateGraph, at: StateId) {
        if Some(at) == self.opener() {
            return;
        }
        for h in &mut self.held {
            if h.counts(graph, at) {
                h.blockers += 1;
            }
        }
    }

    /// The child scope standing at `at` became spent: a set held at `at` no longer waits
    /// for it.
    pub(super) fn mark_spent(&mut self, graph: &StateGraph, at: StateId) {
        *self.spent_at.entry(at).or_insert(0) += 1;
        if let Some(i) = self.held_at(at)
            && self.held[i].counts(graph, at)
        {
            let h = &mut self.held[i];
            debug_assert!(h.blockers >= 1, "blocker count drift");
            h.blockers = h.blockers.saturating_sub(1);
        }
    }

    /// A spent child scope at `at` is gone (it closed or ended): no longer discounted.
    pub(super) fn forget_spent(&mut self, at: StateId) {
        decrement_position(&mut self.spent_at, at, 1);
    }

    pub(super) fn held_at(&self, state: StateId) -> Option<usize> {
        self.held.iter().position(|h| h.state == state)
    }

    /// The highest graph order of a position: no member of this scope can reach a state of
    /// higher order along declared edges.
    pub(super) fn highest_order(&self) -> u32 {
        self.orders.keys().next_back().copied().unwrap_or(0)
    }

    /// The live members at declared (not wild) states among `ancestors`.
    pub(super) fn declared_reach(&self, ancestors: &[StateId]) -> u32 {
        ancestors
            .iter()
            .map(|p| self.positions.get(p).copied().unwrap_or(0))
            .sum()
    }

    /// The live members of this scope (other than the `members` at `state` itself) that may
    /// still reach `state`, given its ancestors.
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
            members + self.spent_at.get(&state).copied().unwrap_or(0)
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
    /// along declared edges without passing through any of `openers` (the fork states of a
    /// scope and of the scopes around it: beyond them lies a next pass; never collected), of
    /// order at most `limit`: no branch can stand at a state of higher order. `state` itself
    /// is collected only through a cycle. Wild states are not collected (they count anyway)
    /// nor searched through (only wild states reach them).
    pub(super) fn collect(
        &mut self,
        graph: &StateGraph,
        state: StateId,
        limit: u32,
        openers: &[StateId],
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
                if openers.contains(&p)
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
