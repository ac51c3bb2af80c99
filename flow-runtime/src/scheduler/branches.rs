//! Branch-local writes from the coordinator's side: which branch has an overlay or a map's
//! item, lending them to the states that run on the branch, forking and merging them as the
//! join rules decide, and keeping them in checkpoints.
//!
//! A run with no reducer that never maps over data has none of this: no overlay is made and
//! branches are not told apart (see `Joins::track_branches`).

use std::sync::Arc;

use flow_core::{FlowError, FxHashMap, StateId};
use serde_json::Value;

use super::Coordinator;
use super::joins::{Branch, BranchId, Merge};
use crate::context::{BranchCell, BranchData, BranchImage, Layers};

/// The branches of a run that have an overlay or an input.
#[derive(Default)]
pub(super) struct Branches {
    data: FxHashMap<BranchId, BranchData>,
    /// Overlays lent to the state running on their branch, taken back when it ends.
    lent: FxHashMap<BranchId, Arc<BranchCell>>,
    /// Whether branches have overlays at all: the agent has reducers, or a state mapped.
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
    /// Takes back the overlay a state of branch `id` was lent; returns the error a write of
    /// that state met, if any.
    /// `keep`: the attempt completed, so its writes are the branch's.
    fn reclaim(&mut self, id: BranchId, keep: bool) -> Option<FlowError> {
        let cell = self.lent.remove(&id)?;
        let data = self.data.entry(id).or_default();
        let error = data.returned(&cell, keep);
        if data.is_empty() {
            self.data.remove(&id);
        }
        error
    }

    fn take(&mut self, id: BranchId) -> BranchData {
        // A state still lent the overlay was stopped: its attempt's writes go.
        self.reclaim(id, false);
        self.data.remove(&id).unwrap_or_default()
    }

    fn put(&mut self, id: BranchId, data: BranchData) {
        if !data.is_empty() {
            self.data.insert(id, data);
        }
    }
}

impl Coordinator {
    /// Branches have overlays from now on (the agent has reducers, or a state mapped).
    pub(super) fn activate_branches(&mut self) {
        if !self.branches.active {
            self.branches.active = true;
            self.joins.track_branches();
        }
    }

    /// The overlay a state about to run on `branch` reads and writes through. A branch
    /// running alone in its run gets its overlay applied to the store first, and writes
    /// there directly. `None` when branches have no overlays.
    pub(super) fn lend_branch(&mut self, branch: Branch) -> Option<Arc<BranchCell>> {
        if !self.branches.active {
            return None;
        }
        let alone = self.joins.alone(branch.scope);
        let mut data = self.branches.take(branch.id);
        if alone {
            let writes = data.take_writes();
            if let Err(error) = self.context.commit(writes) {
                self.deferred_failure.get_or_insert(error);
            }
        }
        let cell = data.lend(alone);
        self.branches.data.insert(branch.id, data);
        self.branches.lent.insert(branch.id, Arc::clone(&cell));
        Some(cell)
    }

    /// The state that ran on branch `id` ended: its writes are the branch's again, with its
    /// attempt's if `completed`. Returns the error a write met (it fails the attempt).
    pub(super) fn return_branch(&mut self, id: BranchId, completed: bool) -> Option<FlowError> {
        if !self.branches.active {
            return None;
        }
        self.branches.reclaim(id, completed)
    }

    /// Before `branch` forks into `count` branches whose ids start at `first`: they read
    /// through what it wrote so far; a map's branches get an item each and are isolated.
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
                let keys: Vec<Vec<u32>> =
                    (0..count).map(|i| parent.child_key(branch.id, i)).collect();
                let (items, isolated) = match inputs {
                    ForkInputs::Items(items) => (items.into_iter().map(Some).collect(), true),
                    ForkInputs::Inherit => {
                        (vec![parent.input_json()?; count], parent.is_isolated())
                    }
                };
                let layer = parent.fork(branch.id);
                for (offset, (input, key)) in items.into_iter().zip(keys).enumerate() {
                    let child = BranchData::child(&layer, input, isolated, key);
                    self.branches.put(first + offset as BranchId, child);
                }
            }
        }
        self.branches.put(branch.id, parent);
        Ok(())
    }

    /// Applies the merges the join rules decided. A merge into the context (a root scope
    /// ended) that fails (a contribution that does not fold) fails the run.
    pub(super) fn apply_merges(&mut self) {
        if self.joins.merges.is_empty() {
            return;
        }
        let merges = std::mem::take(&mut self.joins.merges);
        for Merge {
            into,
            unlayer,
            parts,
        } in merges
        {
            let mut target = into.map(|id| self.branches.take(id));
            let mut first = None;
            if let (Some(target), Some(id)) = (target.as_mut(), into)
                && unlayer
            {
                target.unlayer();
                first = Some(target.take_own(id));
            }
            let mut writes: Vec<(Vec<u32>, BranchId, BranchData)> = parts
                .into_iter()
                .map(|id| {
                    let data = match (&mut target, into) {
                        (Some(target), Some(into)) if into == id => target.take_own(id),
                        _ => self.branches.take(id),
                    };
                    (data.order(id), id, data)
                })
                .collect();
            // Fork order, whatever order they arrived in.
            writes.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            let writes = first
                .into_iter()
                .chain(writes.into_iter().map(|(_, _, data)| data))
                .collect();
            let merged = BranchData::merge(target, writes, unlayer);
            match into {
                Some(id) => self.branches.put(id, merged),
                None => {
                    let mut merged = merged;
                    if let Err(error) = self.context.commit(merged.take_writes()) {
                        self.deferred_failure.get_or_insert(error);
                    }
                }
            }
        }
    }

    /// The branches with overlays or inputs, for a checkpoint.
    pub(super) fn branch_images(&self) -> Result<(Vec<BranchImage>, Layers), FlowError> {
        let mut layers = Layers::default();
        let mut seen = FxHashMap::default();
        let mut images = Vec::with_capacity(self.branches.data.len());
        let mut ids: Vec<&BranchId> = self.branches.data.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let data = &self.branches.data[id];
            let running = self.branches.lent.get(id).map(|cell| &**cell);
            images.push(layers.add(&mut seen, *id, data, running)?);
        }
        Ok((images, layers))
    }

    /// The branches of a checkpoint; `active`: whether branches have overlays.
    pub(super) fn restore_branches(&mut self, branches: Vec<(BranchId, BranchData)>, active: bool) {
        for (id, data) in branches {
            self.branches.put(id, data);
        }
        if active {
            self.activate_branches();
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
