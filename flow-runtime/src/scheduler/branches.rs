//! Branch-local writes from the coordinator's side (see `crate::context::branch`): which
//! branch sees what, lending that view to the state that runs on the branch, recording what
//! the state wrote, forking and joining views as the join rules decide, and keeping them in
//! checkpoints.
//!
//! A run with no reducer that never maps over data has none of this: no view is made and
//! branches are not told apart (see `Joins::track_branches`).

use std::sync::Arc;

use flow_core::{FlowError, FxHashMap, StateId};
use serde_json::Value;

use super::Coordinator;
use super::joins::{Branch, BranchEvent, BranchId};
use crate::context::{BranchCell, BranchData, BranchesImage, Node, RestoredBranches, ordered};

/// The branches of a run that have a view, a place in fork order or an input.
#[derive(Default)]
pub(super) struct Branches {
    data: FxHashMap<BranchId, BranchData>,
    /// Views lent to the state running on their branch, taken back when it ends.
    lent: FxHashMap<BranchId, Arc<BranchCell>>,
    /// The heads of ended branches' views: only the run's result gets them.
    finished: Vec<Arc<Node>>,
    /// The serial of the next node.
    next_serial: u64,
    /// Whether branches have views at all: the agent has reducers, or a state mapped.
    active: bool,
}

/// What a fork gives its new branches.
pub(super) enum ForkInputs {
    /// Each new branch inherits the forking branch's item (if any).
    Inherit,
    /// One item per new branch: a map, whose branches are isolated.
    Items(Vec<Value>),
}

impl Branches {
    /// Takes back the view a state of branch `id` was lent; `completed`: the state completed,
    /// so its writes become a node of the branch. Returns the error a write met, if any.
    fn reclaim(&mut self, id: BranchId, completed: bool) -> Option<FlowError> {
        let cell = self.lent.remove(&id)?;
        let (writes, error) = cell.finish(completed);
        if let Some(writes) = writes {
            let serial = self.next_serial;
            self.next_serial += 1;
            self.data.entry(id).or_default().record(id, serial, writes);
        }
        error
    }

    fn take(&mut self, id: BranchId) -> BranchData {
        // A state still lent the view was stopped: its attempt's writes go.
        self.reclaim(id, false);
        self.data.remove(&id).unwrap_or_default()
    }

    fn put(&mut self, id: BranchId, data: BranchData) {
        if !data.is_empty() {
            self.data.insert(id, data);
        }
    }

    /// Joins the views of `parts`; the joined branch takes the place in fork order of the
    /// first of them (which part that is follows from the graph; whether a join closes a
    /// scope or happens inside it may follow from timing).
    fn join(&mut self, parts: Vec<BranchId>) -> BranchData {
        let mut parts: Vec<(Vec<u32>, BranchId, BranchData)> = parts
            .into_iter()
            .map(|id| {
                let data = self.take(id);
                (data.order(id), id, data)
            })
            .collect();
        parts.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mut parts = parts.into_iter().map(|(_, _, data)| data);
        let first = parts.next().unwrap_or_default();
        BranchData::join(first, parts.collect())
    }
}

impl Coordinator {
    /// Branches have views from now on (the agent has reducers, or a state mapped).
    pub(super) fn activate_branches(&mut self) {
        if !self.branches.active {
            self.branches.active = true;
            self.joins.track_branches();
        }
    }

    /// The view a state about to run on `branch` reads and writes through. A branch alone in
    /// its run, with no ended branch's writes waiting, has its view applied to the store
    /// first, and writes there directly. `None` when branches have no views.
    #[inline]
    pub(super) fn lend_branch(&mut self, branch: Branch) -> Option<Arc<BranchCell>> {
        if !self.branches.active {
            return None;
        }
        self.lend_view(branch)
    }

    fn lend_view(&mut self, branch: Branch) -> Option<Arc<BranchCell>> {
        let alone = self.joins.alone(branch.scope) && self.branches.finished.is_empty();
        let mut data = self.branches.take(branch.id);
        if alone {
            let heads = data.take_heads();
            if !heads.is_empty()
                && let Err(error) = self.context.commit(&ordered(&heads))
            {
                self.deferred_failure.get_or_insert(error);
            }
        }
        let cell = data.lend(alone);
        self.branches.data.insert(branch.id, data);
        self.branches.lent.insert(branch.id, Arc::clone(&cell));
        Some(cell)
    }

    /// The state that ran on branch `id` ended; `completed`: it completed, so its writes
    /// are the branch's. Returns the error a write met (it fails the attempt).
    #[inline]
    pub(super) fn return_branch(&mut self, id: BranchId, completed: bool) -> Option<FlowError> {
        if !self.branches.active {
            return None;
        }
        let alone = self
            .branches
            .lent
            .get(&id)
            .is_some_and(|cell| cell.is_alone());
        let error = self.branches.reclaim(id, completed);
        if alone && error.is_none() {
            // Alone in its run: its contributions reach the store now (the values stream
            // and dependency conditions after this state see them).
            let heads = self
                .branches
                .data
                .get_mut(&id)
                .map(BranchData::take_heads)
                .unwrap_or_default();
            if !heads.is_empty() {
                return self.context.commit(&ordered(&heads)).err();
            }
        }
        error
    }

    /// Before `branch` forks into `count` branches whose ids start at `first`: they start
    /// from its view; a map's branches get an item each and are isolated.
    pub(super) fn fork_branches(
        &mut self,
        branch: Branch,
        first: BranchId,
        count: usize,
        inputs: ForkInputs,
    ) -> Result<(), FlowError> {
        let mut parent = self.branches.take(branch.id);
        match (count, inputs) {
            (0, _) => {}
            // One target: the branch goes on under its own id.
            (1, ForkInputs::Items(mut items)) => parent.take_input(items.remove(0)),
            (1, ForkInputs::Inherit) => {}
            (_, inputs) => {
                let (items, isolated) = match inputs {
                    ForkInputs::Items(items) => (items.into_iter().map(Some).collect(), true),
                    ForkInputs::Inherit => {
                        (vec![parent.input_json()?; count], parent.is_isolated())
                    }
                };
                for (index, input) in items.into_iter().enumerate() {
                    let key = parent.child_key(branch.id, index);
                    let child = parent.child(input, isolated, key);
                    let id = first.wrapping_add(index as BranchId);
                    self.branches.put(id, child);
                }
                parent.forked(branch.id);
            }
        }
        self.branches.put(branch.id, parent);
        Ok(())
    }

    /// Applies what the join rules did to branches. Once every branch has ended, the run's
    /// result gets the writes of all of them; if they do not combine (a contribution that
    /// does not fold), the run fails.
    #[inline]
    pub(super) fn apply_branch_events(&mut self) {
        if !self.joins.events.is_empty() {
            self.apply_events();
        }
        if self.joins.out_of_branch_ids() && self.deferred_failure.is_none() {
            self.deferred_failure = Some(FlowError::TooManyBranches {
                agent: self.compiled.name.to_string(),
            });
        }
    }

    fn apply_events(&mut self) {
        let events = std::mem::take(&mut self.joins.events);
        for event in events {
            match event {
                BranchEvent::Join { into, parts } => {
                    let joined = self.branches.join(parts);
                    self.branches.put(into, joined);
                }
                BranchEvent::Close { opener, parts } => {
                    let forked = self.branches.take(opener);
                    let goes_on = if parts.is_empty() {
                        forked
                    } else {
                        // The item of the branch that forked, what the joined ones saw.
                        let mut joined = self.branches.join(parts);
                        joined.inherit(&forked);
                        joined
                    };
                    self.branches.put(opener, goes_on);
                }
                BranchEvent::Ended(id) => {
                    let mut data = self.branches.take(id);
                    let heads = data.take_ended();
                    self.branches.finished.extend(heads);
                }
            }
        }
        if self.joins.is_finished() && !self.branches.finished.is_empty() {
            let finished = std::mem::take(&mut self.branches.finished);
            if let Err(error) = self.context.commit(&ordered(&finished)) {
                self.deferred_failure.get_or_insert(error);
            }
        }
    }

    /// The branches' views and ended writes, for a checkpoint.
    pub(super) fn branches_image(&self) -> Result<BranchesImage, FlowError> {
        let mut ids: Vec<&BranchId> = self.branches.data.keys().collect();
        ids.sort_unstable();
        let branches = ids.into_iter().map(|id| (*id, &self.branches.data[id]));
        BranchesImage::capture(branches, &self.branches.finished)
    }

    /// The branches of a checkpoint; `active`: whether branches have views.
    pub(super) fn restore_branches(&mut self, restored: RestoredBranches, active: bool) {
        for (id, data) in restored.branches {
            self.branches.put(id, data);
        }
        self.branches.finished = restored.finished;
        self.branches.next_serial = restored.next_serial;
        // The restored join bookkeeping replaced the one `new` set up: told apart again.
        if active {
            self.branches.active = true;
            self.joins.track_branches();
        }
    }

    /// The items of a map from `from`, or the error naming the one that did not serialize.
    pub(super) fn map_items(
        &self,
        from: StateId,
        target: &str,
        items: Result<Vec<Value>, (usize, String)>,
    ) -> Result<Vec<Value>, FlowError> {
        items.map_err(|(index, message)| FlowError::Serialization {
            key: format!(
                "item {index} of the map from `{}` to `{target}`",
                self.graph.name(from)
            ),
            message,
        })
    }
}
