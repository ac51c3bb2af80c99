//! Branches, forks and exactly-once joins.
//!
//! The branches of a run live in *groups*. The run starts as the root group, with one branch
//! per entry state. A fork (`Next::Parallel`) at a state with declared successors replaces the
//! forking branch by one branch per target *in the same group*; a fork at a state whose
//! successors are not declared opens a child group instead, whose
//! branches stand, from the parent's point of view, for the one branch that forked, positioned
//! at the forking state.
//!
//! **The join rule.** A branch that arrives at state `s` is *held* at `s` while another branch
//! of its group may still reach `s`. Branches held at the same `s` merge: when nothing else in
//! the group may reach `s`, `s` runs once, for all of them. If every live branch of a child
//! group merged there, the group is done and `s` runs as the branch that forked it (so the
//! parent group can join it in turn); otherwise `s` runs as one merged branch of the group.
//!
//! "May still reach" is decided per position. A branch at a state with declared successors
//! reaches what the declared edges reach; a branch at a wild state may reach anything. Fork
//! targets differ from arrivals in one way: only declared reachability holds them (a fan-out
//! starts all its targets at once unless one target leads to another), while an arrival is
//! also held by a sibling at a wild state. When every live branch of a group is held and none
//! of the held sets is free to go (they may reach each other, as always without declared
//! successors), one is released: among the held sets no other held set reaches along declared
//! edges, one at a state that is not a declared join first, then the most recently created
//! (the most recent of all when every set is reached by another). Without any declared
//! successors that is simply the most recent held set. An ended branch never
//! blocks anything. A state that transitions to itself (a loop) is never held unless branches
//! already wait there; longer loops inside a branch need declared successors to be told apart
//! from joins.
//!
//! With every successor declared (as the macros do), all branches of a run share the root
//! group, so each state of a DAG runs once per visit however the fan-outs nest; without
//! declarations, a fan-out's branches wait only for each other.
//!
//! **Cost.** Each held set keeps a count of the branches that may still reach it, updated as
//! branches move: a move costs O(number of held sets in the group), and creating a held set
//! costs O(declared ancestors of its state that lie between it and the group's furthest-back
//! branch). A group with one live branch does no bookkeeping at all, so a plain chain costs
//! O(1) per step.

use std::collections::BTreeMap;

use flow_core::{FxHashMap, FxHashSet, StateGraph, StateId};
use serde::{Deserialize, Serialize};

/// Index of a group in [`Joins`].
pub(crate) type GroupId = u32;

pub(crate) struct Joins {
    groups: Vec<Option<Group>>,
    free: Vec<GroupId>,
    /// Branches to run now, as (state, group); the caller drains it.
    pub(crate) released: Vec<(StateId, GroupId)>,
    /// Branches that just started to wait, as (state, group); the caller drains it.
    pub(crate) blocked: Vec<(StateId, GroupId)>,
    held_total: usize,
    /// Groups without a parent that still have live branches: the run's own, and one per
    /// state started by the dependency rules.
    roots: u32,
    stamps: Vec<u32>,
    epoch: u32,
    stack: Vec<StateId>,
    found: Vec<StateId>,
    /// Moves of branches still to apply. A group folding into its parent moves the parent's
    /// branch; queueing that move instead of recursing keeps the stack flat however deep
    /// groups nest.
    moves: Vec<Move>,
}

/// The branches and joins of a run, as a checkpoint keeps them.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct JoinsImage {
    groups: Vec<Option<Group>>,
    free: Vec<GroupId>,
    held_total: usize,
    roots: u32,
}

enum Move {
    Goto {
        group: GroupId,
        from: StateId,
        to: StateId,
    },
    End {
        group: GroupId,
        at: StateId,
    },
}

#[derive(Clone, Serialize, Deserialize)]
struct Group {
    /// For a child group: the parent, and the wild state that forked it (the position of the
    /// branch it stands for in the parent).
    parent: Option<(GroupId, StateId)>,
    live: u32,
    held_members: u32,
    /// How many live branches are at each state (running, ready, held, or forked from there).
    /// Kept only while more than one branch lives.
    positions: FxHashMap<StateId, u32>,
    /// The same positions by graph order: the highest bounds every ancestor search.
    orders: BTreeMap<u32, u32>,
    /// How many live branches are at wild states.
    wild: u32,
    /// Held sets, oldest first.
    held: Vec<Held>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Held {
    state: StateId,
    members: u32,
    /// Live branches of the group, other than the members, that may still reach `state`.
    blockers: u32,
    /// Whether branches at wild states count as blockers (arrivals) or not (fork targets).
    counts_wild: bool,
    /// Declared ancestors of `state` among the group's possible positions.
    ancestors: FxHashSet<StateId>,
}

impl Held {
    fn counts(&self, graph: &StateGraph, position: StateId) -> bool {
        (self.counts_wild && graph.is_wild(position)) || self.ancestors.contains(&position)
    }
}

impl Group {
    fn new(parent: Option<(GroupId, StateId)>, live: u32) -> Self {
        Self {
            parent,
            live,
            held_members: 0,
            positions: FxHashMap::default(),
            orders: BTreeMap::new(),
            wild: 0,
            held: Vec::new(),
        }
    }

    fn add_position(&mut self, graph: &StateGraph, state: StateId) {
        *self.positions.entry(state).or_insert(0) += 1;
        *self.orders.entry(graph.order(state)).or_insert(0) += 1;
        if graph.is_wild(state) {
            self.wild += 1;
        }
    }

    fn remove_position(&mut self, graph: &StateGraph, state: StateId, n: u32) {
        decrement_position(&mut self.positions, state, n);
        decrement_order(&mut self.orders, graph.order(state), n);
        if graph.is_wild(state) {
            debug_assert!(self.wild >= n, "wild count drift");
            self.wild = self.wild.saturating_sub(n);
        }
    }

    /// The branch at `from` moves away (to `to`, or nowhere when it ends): the held sets it
    /// counted for lose a blocker.
    fn forget_blocker(&mut self, graph: &StateGraph, from: StateId, n: u32) {
        for h in &mut self.held {
            if h.counts(graph, from) {
                debug_assert!(h.blockers >= n, "blocker count drift");
                h.blockers = h.blockers.saturating_sub(n);
            }
        }
    }

    /// A branch is now at `at`: the held sets it may reach gain a blocker.
    fn note_blocker(&mut self, graph: &StateGraph, at: StateId) {
        for h in &mut self.held {
            if h.counts(graph, at) {
                h.blockers += 1;
            }
        }
    }

    /// The held set to release when every branch is held and each may reach another. Of the
    /// sets that no other held set reaches along declared edges (so that a set further down a
    /// declared path waits for the branches upstream of it), one at a state that is not a
    /// declared join (at most one declared predecessor) goes first, then the latest; the
    /// latest of all when every set is reached by another.
    fn fallback_release(&self, graph: &StateGraph) -> usize {
        let reached = |h: &Held| {
            self.held
                .iter()
                .any(|other| h.ancestors.contains(&other.state))
        };
        let not_a_join = |h: &Held| graph.predecessors(h.state).len() <= 1;
        let upstream = |i: &usize| !reached(&self.held[*i]);
        let indices = 0..self.held.len();
        indices
            .clone()
            .rev()
            .find(|i| upstream(i) && not_a_join(&self.held[*i]))
            .or_else(|| indices.clone().rev().find(upstream))
            .unwrap_or(self.held.len() - 1)
    }

    fn held_at(&self, state: StateId) -> Option<usize> {
        self.held.iter().position(|h| h.state == state)
    }

    fn highest_order(&self) -> u32 {
        self.orders.keys().next_back().copied().unwrap_or(0)
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

impl Joins {
    pub(crate) fn new(graph: &StateGraph) -> Self {
        Self {
            groups: Vec::new(),
            free: Vec::new(),
            released: Vec::new(),
            blocked: Vec::new(),
            held_total: 0,
            roots: 0,
            stamps: vec![0; graph.len()],
            epoch: 0,
            stack: Vec::new(),
            found: Vec::new(),
            moves: Vec::new(),
        }
    }

    /// What a checkpoint keeps of the branches: every group and held set. (Taken between
    /// events, when nothing is being released or blocked.)
    pub(crate) fn image(&self) -> JoinsImage {
        JoinsImage {
            groups: self.groups.clone(),
            free: self.free.clone(),
            held_total: self.held_total,
            roots: self.roots,
        }
    }

    /// The branches of a checkpoint, for a graph of the same definition. `branches` are the
    /// checkpoint's due attempts and waits, by state and group: with the held sets and the
    /// child groups they are every live branch, so every count (live branches, positions,
    /// blockers, held totals, roots) is recomputed from them rather than trusted; only the
    /// groups, their parents and the held sets' states, members and ancestors are read.
    /// Anything that does not fit together is an error (a damaged checkpoint), never a panic
    /// later.
    pub(crate) fn restore(
        graph: &StateGraph,
        image: &JoinsImage,
        branches: &[(StateId, GroupId)],
    ) -> Result<Self, String> {
        let n = graph.len();
        let state_ok = |s: StateId| s.index() < n;
        let mut groups = image.groups.clone();
        let len = groups.len();
        for (id, group) in groups.iter().enumerate() {
            let Some(g) = group else { continue };
            // Parents exist, and following them ends (no cycle).
            let mut at = g.parent;
            let mut steps = 0;
            while let Some((parent, fork)) = at {
                let exists = (parent as usize) < len && groups[parent as usize].is_some();
                if !exists || !state_ok(fork) || steps > len || parent as usize == id {
                    return Err(format!("group {id} has a missing or circular parent"));
                }
                at = groups[parent as usize].as_ref().and_then(|p| p.parent);
                steps += 1;
            }
            for (i, h) in g.held.iter().enumerate() {
                if !state_ok(h.state) || h.members == 0 || !h.ancestors.iter().all(|a| state_ok(*a))
                {
                    return Err(format!(
                        "group {id} holds branches at a state that does not exist"
                    ));
                }
                if g.held[..i].iter().any(|other| other.state == h.state) {
                    return Err(format!("group {id} holds two sets at one state"));
                }
            }
        }
        for g in groups.iter_mut().flatten() {
            g.live = 0;
            g.held_members = 0;
            g.positions.clear();
            g.orders.clear();
            g.wild = 0;
        }
        let place = |groups: &mut [Option<Group>], group: GroupId, state: StateId, count: u32| {
            let Some(Some(g)) = groups.get_mut(group as usize) else {
                return Err(format!(
                    "a branch is in group {group}, which does not exist"
                ));
            };
            if !state_ok(state) {
                return Err("a branch is at a state that does not exist".to_owned());
            }
            g.live = g.live.saturating_add(count);
            for _ in 0..count.min(1 << 20) {
                g.add_position(graph, state);
            }
            Ok(())
        };
        for &(state, group) in branches {
            place(&mut groups, group, state, 1)?;
        }
        let children: Vec<(GroupId, StateId)> =
            groups.iter().flatten().filter_map(|g| g.parent).collect();
        for (parent, fork) in children {
            place(&mut groups, parent, fork, 1)?;
        }
        let held: Vec<(GroupId, StateId, u32)> = groups
            .iter()
            .enumerate()
            .filter_map(|(id, g)| g.as_ref().map(|g| (id as GroupId, g)))
            .flat_map(|(id, g)| g.held.iter().map(move |h| (id, h.state, h.members)))
            .collect();
        for (group, state, members) in held {
            if members > 1 << 20 {
                return Err(format!("group {group} holds {members} branches"));
            }
            place(&mut groups, group, state, members)?;
        }
        let mut held_total = 0usize;
        let mut roots = 0u32;
        for (id, group) in groups.iter_mut().enumerate() {
            let Some(g) = group else { continue };
            if g.live == 0 {
                return Err(format!("group {id} has no branch left"));
            }
            if g.parent.is_none() {
                roots += 1;
            }
            g.held_members = g.held.iter().map(|h| h.members).sum();
            if g.live == 1 {
                if !g.held.is_empty() {
                    return Err(format!("group {id} holds its only branch"));
                }
                // Positions are kept only while more than one branch lives.
                g.positions.clear();
                g.orders.clear();
                g.wild = 0;
                continue;
            }
            held_total += g.held_members as usize;
            let positions: Vec<(StateId, u32)> =
                g.positions.iter().map(|(s, c)| (*s, *c)).collect();
            for h in &mut g.held {
                let reach: u32 = positions
                    .iter()
                    .filter(|(p, _)| h.counts(graph, *p))
                    .map(|(_, c)| *c)
                    .sum();
                let own = if h.counts(graph, h.state) {
                    h.members
                } else {
                    0
                };
                h.blockers = reach.saturating_sub(own);
            }
        }
        let mut joins = Self::new(graph);
        joins.free = (0..len as GroupId)
            .filter(|&id| groups[id as usize].is_none())
            .collect();
        joins.groups = groups;
        joins.held_total = held_total;
        joins.roots = roots;
        Ok(joins)
    }

    /// Whether `other` (rebuilt from a checkpoint of this) counts the same branches: live
    /// branches, positions, held sets and their blockers, totals. For the debug check that
    /// every checkpoint restores to what it was taken of.
    #[cfg(debug_assertions)]
    pub(crate) fn same_counts(&self, other: &Self) -> Result<(), String> {
        if (self.roots, self.held_total) != (other.roots, other.held_total) {
            return Err(format!(
                "roots/held {:?} vs {:?}",
                (self.roots, self.held_total),
                (other.roots, other.held_total)
            ));
        }
        for (id, (a, b)) in self.groups.iter().zip(&other.groups).enumerate() {
            let (Some(a), Some(b)) = (a, b) else {
                if a.is_some() != b.is_some() {
                    return Err(format!("group {id} exists in one only"));
                }
                continue;
            };
            if (a.live, a.held_members) != (b.live, b.held_members) {
                return Err(format!(
                    "group {id}: live/held {:?} vs {:?}",
                    (a.live, a.held_members),
                    (b.live, b.held_members)
                ));
            }
            if a.live > 1
                && (a.positions != b.positions || a.wild != b.wild || a.orders != b.orders)
            {
                return Err(format!(
                    "group {id}: positions {:?} vs {:?}",
                    a.positions, b.positions
                ));
            }
            let held = |g: &Group| -> Vec<(StateId, u32, u32)> {
                g.held
                    .iter()
                    .map(|h| (h.state, h.members, h.blockers))
                    .collect()
            };
            if held(a) != held(b) {
                return Err(format!("group {id}: held {:?} vs {:?}", held(a), held(b)));
            }
        }
        Ok(())
    }

    /// True once every branch of the run has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.roots == 0
    }

    /// Whether a branch is held at `state`.
    pub(crate) fn holds(&self, state: StateId) -> bool {
        self.held_total > 0 && self.held_states().any(|held| held == state)
    }

    /// A branch of its own, at `state`, for a state started by the dependency rules rather
    /// than by a transition: its transitions join nothing the rest of the run does.
    pub(crate) fn spawn(&mut self) -> GroupId {
        self.roots += 1;
        self.alloc(Group::new(None, 1))
    }

    /// Branches held at joins right now.
    pub(crate) fn held_total(&self) -> usize {
        self.held_total
    }

    /// The states at which branches are held.
    pub(crate) fn held_states(&self) -> impl Iterator<Item = StateId> + '_ {
        self.groups
            .iter()
            .flatten()
            .flat_map(|g| g.held.iter().map(|h| h.state))
    }

    /// Starts the run: one branch per entry state, in the root group.
    pub(crate) fn start(&mut self, graph: &StateGraph, entries: &[StateId]) {
        self.roots += 1;
        let root = self.alloc(Group::new(None, entries.len() as u32));
        if let [entry] = entries {
            self.released.push((*entry, root));
        } else {
            self.spread(graph, root, entries);
        }
        self.apply_moves(graph);
    }

    /// The branch of `group` that ran `at` ends.
    pub(crate) fn end(&mut self, graph: &StateGraph, group: GroupId, at: StateId) {
        self.moves.push(Move::End { group, at });
        self.apply_moves(graph);
    }

    /// The branch of `group` that ran `from` goes to `to`.
    pub(crate) fn goto(&mut self, graph: &StateGraph, group: GroupId, from: StateId, to: StateId) {
        self.moves.push(Move::Goto { group, from, to });
        self.apply_moves(graph);
    }

    fn apply_moves(&mut self, graph: &StateGraph) {
        while let Some(next) = self.moves.pop() {
            match next {
                Move::Goto { group, from, to } => self.apply_goto(graph, group, from, to),
                Move::End { group, at } => self.apply_end(graph, group, at),
            }
        }
    }

    fn apply_end(&mut self, graph: &StateGraph, group: GroupId, at: StateId) {
        let g = group_of(&mut self.groups, group);
        if g.live > 1 {
            g.remove_position(graph, at, 1);
            g.forget_blocker(graph, at, 1);
        }
        g.live -= 1;
        if g.live == 0 {
            let parent = g.parent;
            self.release_group(group);
            match parent {
                Some((parent, fork)) => self.moves.push(Move::End {
                    group: parent,
                    at: fork,
                }),
                None => self.roots -= 1,
            }
            return;
        }
        self.settle(graph, group);
    }

    fn apply_goto(&mut self, graph: &StateGraph, group: GroupId, from: StateId, to: StateId) {
        let g = group_of(&mut self.groups, group);
        if g.live == 1 {
            // Nobody left to wait for: a child group is only a wrapper around one branch.
            self.arrive_as_one(group, to);
            return;
        }
        g.remove_position(graph, from, 1);
        g.forget_blocker(graph, from, 1);
        g.add_position(graph, to);
        g.note_blocker(graph, to);
        if let Some(i) = g.held_at(to) {
            // Joining the set at `to`: a member of it, not a blocker.
            let h = &mut g.held[i];
            if h.counts(graph, to) {
                h.blockers = h.blockers.saturating_sub(1);
            }
            h.members += 1;
            g.held_members += 1;
            self.held_total += 1;
            self.blocked.push((to, group));
        } else if from == to {
            // A state looping on itself is in the middle of its own work, not at a join:
            // held, the fallback could release a real join before it.
            self.released.push((to, group));
        } else {
            self.arrive_fresh(graph, group, to, true);
        }
        self.settle(graph, group);
    }

    /// The branch of `group` that ran `at` forks into `targets`.
    pub(crate) fn fork(
        &mut self,
        graph: &StateGraph,
        group: GroupId,
        at: StateId,
        targets: &[StateId],
    ) {
        match targets {
            [] => self.end(graph, group, at),
            [only] => self.goto(graph, group, at, *only),
            _ => {
                let g = group_of(&mut self.groups, group);
                let split = if g.live == 1 {
                    // The only branch forks: its group can hold the new branches, whatever the
                    // fork (a loop that forks every round must not nest groups without end).
                    // Positions are not kept for a single branch; start them afresh.
                    g.positions.clear();
                    g.orders.clear();
                    g.wild = 0;
                    g.live = targets.len() as u32;
                    group
                } else if graph.successors(at).is_some() {
                    // Declared successors: the new branches are siblings of every branch in
                    // this group, so joins between them and their cousins are exact.
                    g.remove_position(graph, at, 1);
                    g.forget_blocker(graph, at, 1);
                    g.live += targets.len() as u32 - 1;
                    group
                } else {
                    // Undeclared successors: a family of its own, whose branches wait only for
                    // each other, standing for one branch (at `at`) in this group.
                    self.alloc(Group::new(Some((group, at)), targets.len() as u32))
                };
                self.spread(graph, split, targets);
            }
        }
        self.apply_moves(graph);
    }

    /// Places new branches of `group` at `targets` and starts or holds each.
    fn spread(&mut self, graph: &StateGraph, group: GroupId, targets: &[StateId]) {
        let g = group_of(&mut self.groups, group);
        for &target in targets {
            g.add_position(graph, target);
            g.note_blocker(graph, target);
        }
        for &target in targets {
            let g = group_of(&mut self.groups, group);
            if let Some(i) = g.held_at(target) {
                let h = &mut g.held[i];
                h.members += 1;
                if h.counts(graph, target) {
                    h.blockers = h.blockers.saturating_sub(1);
                }
                g.held_members += 1;
                self.held_total += 1;
                self.blocked.push((target, group));
            } else {
                self.arrive_fresh(graph, group, target, false);
            }
        }
        self.settle(graph, group);
    }

    /// A branch of `group` (already counted at `state`) arrives where no branch is held: it
    /// runs at once, or starts a held set if another branch may still reach `state`.
    fn arrive_fresh(
        &mut self,
        graph: &StateGraph,
        group: GroupId,
        state: StateId,
        counts_wild: bool,
    ) {
        let g = group_of(&mut self.groups, group);
        // A branch at a wild state may jump anywhere, also to states of higher order.
        let limit = if g.wild > 0 {
            u32::MAX
        } else {
            g.highest_order()
        };
        self.collect_ancestors(graph, state, limit);
        let g = group_of(&mut self.groups, group);
        let mut blockers: u32 = 0;
        let mut wild_among_ancestors: u32 = 0;
        let mut self_counted = false;
        for &p in &self.found {
            let n = g.positions.get(&p).copied().unwrap_or(0);
            blockers += n;
            if graph.is_wild(p) {
                wild_among_ancestors += n;
            }
            self_counted |= p == state;
        }
        if counts_wild {
            debug_assert!(g.wild >= wild_among_ancestors, "wild count drift");
            blockers += g.wild.saturating_sub(wild_among_ancestors);
            self_counted |= graph.is_wild(state);
        }
        // The arriving branch itself is at `state`: a member, not a blocker.
        if self_counted {
            blockers = blockers.saturating_sub(1);
        }
        if blockers == 0 {
            self.released.push((state, group));
            return;
        }
        g.held.push(Held {
            state,
            members: 1,
            blockers,
            counts_wild,
            ancestors: self.found.iter().copied().collect(),
        });
        g.held_members += 1;
        self.held_total += 1;
        self.blocked.push((state, group));
    }

    /// Releases held sets of `group` while any may go.
    fn settle(&mut self, graph: &StateGraph, group: GroupId) {
        loop {
            let Some(g) = self.groups[group as usize].as_ref() else {
                return;
            };
            let index = match g.held.iter().position(|h| h.blockers == 0) {
                Some(i) => i,
                // Every live branch is held and all may reach each other.
                None if !g.held.is_empty() && g.held_members == g.live => g.fallback_release(graph),
                None => return,
            };
            if !self.release(graph, group, index) {
                return;
            }
        }
    }

    /// Runs held set `index` of `group`; false if that dissolved the group.
    fn release(&mut self, graph: &StateGraph, group: GroupId, index: usize) -> bool {
        let g = group_of(&mut self.groups, group);
        let h = g.held.remove(index);
        g.held_members -= h.members;
        self.held_total -= h.members as usize;
        if h.members == g.live {
            return self.arrive_as_one(group, h.state);
        }
        let merged = h.members - 1;
        if merged > 0 {
            g.live -= merged;
            g.remove_position(graph, h.state, merged);
            g.forget_blocker(graph, h.state, merged);
        }
        self.released.push((h.state, group));
        true
    }

    /// Every live branch of `group` is at `to`: a child group folds into its parent (whose
    /// branch moves from the fork to `to`), the root runs `to` as its one branch. Returns
    /// whether the group still exists.
    fn arrive_as_one(&mut self, group: GroupId, to: StateId) -> bool {
        let g = group_of(&mut self.groups, group);
        match g.parent {
            Some((parent, fork)) => {
                self.release_group(group);
                self.moves.push(Move::Goto {
                    group: parent,
                    from: fork,
                    to,
                });
                false
            }
            None => {
                g.live = 1;
                self.released.push((to, group));
                true
            }
        }
    }

    /// Collects into `found` the declared ancestors of `state` (itself included only through
    /// a cycle) whose order is at most `limit`: no branch can be at a state of higher order.
    fn collect_ancestors(&mut self, graph: &StateGraph, state: StateId, limit: u32) {
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
                if graph.order(p) <= limit && self.stamps[p.index()] != self.epoch {
                    self.stamps[p.index()] = self.epoch;
                    self.found.push(p);
                    self.stack.push(p);
                }
            }
        }
    }

    fn alloc(&mut self, group: Group) -> GroupId {
        match self.free.pop() {
            Some(id) => {
                self.groups[id as usize] = Some(group);
                id
            }
            None => {
                self.groups.push(Some(group));
                (self.groups.len() - 1) as GroupId
            }
        }
    }

    fn release_group(&mut self, group: GroupId) {
        self.groups[group as usize] = None;
        self.free.push(group);
    }
}

fn group_of(groups: &mut [Option<Group>], group: GroupId) -> &mut Group {
    groups[group as usize]
        .as_mut()
        .expect("scheduler bug: a branch refers to a dissolved group")
}
