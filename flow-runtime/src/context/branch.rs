//! Branch-local writes: what a branch of a fork wrote that its siblings must not see yet.
//!
//! A branch writes into its own *overlay* where its siblings' writes could otherwise reach it
//! in an order that depends on timing: contributions to keys with a reducer (every fork), and
//! every write of a branch of `Next::map` (isolated branches). Its reads see the store, then
//! the overlays of the branches it came from (frozen *layers*, one per fork above it), then
//! its own. When branches join, the scheduler merges their overlays in fork order (see
//! `scheduler::joins::branch`); when a root branch runs alone again, its overlay is applied
//! to the store.
//!
//! Each overlay keeps, per key, the last replacing write (a set or a removal) and the
//! contributions after it; a layer is shared, never changed, by the branches of its fork.

use std::sync::{Arc, Mutex, PoisonError};

use flow_core::{FlowError, FxHashMap};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reducer::Reducer;
use super::store::{Slot, Store};

/// One write in an overlay.
#[derive(Clone)]
pub(super) enum Op {
    /// The key now has this value.
    Set(Slot),
    /// The key has no value now.
    Remove,
    /// A contribution for the key's reducer.
    Add(Slot),
}

impl Op {
    fn replaces(&self) -> bool {
        !matches!(self, Op::Add(_))
    }
}

/// A branch's writes, by key: for each, at most one replacing write, first, and the
/// contributions after it in the order they were made.
#[derive(Clone, Default)]
pub(crate) struct Ops(FxHashMap<String, Vec<Op>>);

impl Ops {
    pub(super) fn push(&mut self, key: String, op: Op) {
        let ops = self.0.entry(key).or_default();
        if op.replaces() {
            ops.clear();
        }
        ops.push(op);
    }

    /// `later`'s writes, after these.
    pub(crate) fn append(&mut self, later: Ops) {
        if self.0.is_empty() {
            *self = later;
            return;
        }
        for (key, ops) in later.0 {
            let mine = self.0.entry(key).or_default();
            if ops.first().is_some_and(Op::replaces) {
                mine.clear();
            }
            mine.extend(ops);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn get(&self, key: &str) -> Option<&[Op]> {
        self.0.get(key).map(Vec::as_slice)
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.keys()
    }
}

/// The overlay a branch had when it forked, shared by the branches of the fork.
pub(crate) struct Layer {
    ops: Ops,
    parent: Option<Arc<Layer>>,
}

fn depth(mut layer: Option<&Arc<Layer>>) -> usize {
    let mut depth = 0;
    while let Some(l) = layer {
        depth += 1;
        layer = l.parent.as_ref();
    }
    depth
}

/// What the scheduler keeps of a branch between its states.
#[derive(Default)]
pub(crate) struct BranchData {
    /// The overlays of the branches it came from, nearest first.
    base: Option<Arc<Layer>>,
    /// Its own writes.
    own: Ops,
    /// Its item, for a branch of `Next::map`.
    input: Option<Slot>,
    /// Whether every write stays in its overlay (a branch of `Next::map`, or one that
    /// joined such branches), rather than only contributions.
    isolated: bool,
    /// Its place in fork order: the place of the branch that forked it, how many forks that
    /// branch had made before, and its index in the fork. Merges apply writes in this order,
    /// which follows from the graph, never from timing. Empty: not known (see
    /// [`BranchData::order`]).
    key: Vec<u32>,
    /// How many forks it made.
    forks: u32,
}

impl BranchData {
    /// Nothing to keep: no overlay, no input, not isolated.
    pub(crate) fn is_empty(&self) -> bool {
        self.base.is_none() && self.own.is_empty() && self.input.is_none() && !self.isolated
    }

    /// The branch forks: its writes so far become the layer its new branches (and itself,
    /// while they run) read through.
    pub(crate) fn fork(&mut self, id: u64) -> Arc<Layer> {
        self.key = self.order(id);
        self.forks += 1;
        let layer = Arc::new(Layer {
            ops: std::mem::take(&mut self.own),
            parent: self.base.take(),
        });
        self.base = Some(Arc::clone(&layer));
        layer
    }

    /// Its place in fork order (see `key`); a branch that never had data is placed by its
    /// id, which is its entry's index for the run's first branches.
    pub(crate) fn order(&self, id: u64) -> Vec<u32> {
        if self.key.is_empty() {
            vec![u32::try_from(id).unwrap_or(u32::MAX)]
        } else {
            self.key.clone()
        }
    }

    /// The key of the `index`th branch of the fork it is making now (call before `fork`).
    pub(crate) fn child_key(&self, id: u64, index: usize) -> Vec<u32> {
        let mut key = self.order(id);
        key.push(self.forks);
        key.push(u32::try_from(index).unwrap_or(u32::MAX));
        key
    }

    /// A branch of a fork of a branch whose writes are `layer`. `input`: a map's item.
    pub(crate) fn child(
        layer: &Arc<Layer>,
        input: Option<Value>,
        isolated: bool,
        key: Vec<u32>,
    ) -> Self {
        Self {
            base: Some(Arc::clone(layer)),
            own: Ops::default(),
            input: input.map(Slot::json),
            isolated,
            key,
            forks: 0,
        }
    }

    /// The input its new branches inherit (a parallel fork's branches keep the map item of
    /// the branch that forked).
    pub(crate) fn input_json(&self) -> Result<Option<Value>, FlowError> {
        self.input
            .as_ref()
            .map(|input| input.to_value("(input)"))
            .transpose()
    }

    pub(crate) fn is_isolated(&self) -> bool {
        self.isolated
    }

    /// The branch runs a map's single item itself (a map of one item forks nothing).
    pub(crate) fn take_input(&mut self, input: Value) {
        self.input = Some(Slot::json(input));
        self.isolated = true;
    }

    /// The scope of its fork closed: what it wrote before the fork is its own again, before
    /// what it is about to merge.
    pub(crate) fn unlayer(&mut self) {
        if let Some(layer) = self.base.take() {
            let mut ops = layer.ops.clone();
            ops.append(std::mem::take(&mut self.own));
            self.own = ops;
            self.base = layer.parent.clone();
        }
    }

    /// `parts` (in order) become one branch: their writes in that order, the input and
    /// isolation of `into` (isolated too if any part was), the base nearest the root (parts
    /// that came from nested scopes read through layers their fork's branch owns), and the
    /// first place in fork order (of `into`, when `first` says so).
    pub(crate) fn merge(
        into: Option<BranchData>,
        parts: Vec<BranchData>,
        keep_key: bool,
    ) -> BranchData {
        let mut merged = into.unwrap_or_default();
        let mut base = merged.base.take();
        let mut own = Ops::default();
        let mut key: Option<Vec<u32>> = keep_key.then(|| merged.key.clone());
        for part in parts {
            merged.isolated |= part.isolated;
            if depth(part.base.as_ref()) < depth(base.as_ref()) {
                base = part.base;
            }
            own.append(part.own);
            if !part.key.is_empty() && key.as_ref().is_none_or(|k| k.is_empty() || part.key < *k)
            {
                key = Some(part.key);
            }
        }
        merged.base = base;
        merged.own = own;
        merged.key = key.unwrap_or_default();
        merged
    }

    /// Splits off its own writes (to merge into another branch), keeping base, isolation and
    /// place.
    pub(crate) fn take_own(&mut self, id: u64) -> BranchData {
        BranchData {
            base: self.base.clone(),
            own: std::mem::take(&mut self.own),
            input: None,
            isolated: self.isolated,
            key: self.order(id),
            forks: 0,
        }
    }

    /// Its writes, for the store: the branch runs alone in its run now.
    pub(crate) fn take_writes(&mut self) -> Ops {
        self.base = None;
        std::mem::take(&mut self.own)
    }

    /// The handle a state run on this branch gets. `alone`: it runs alone in its run (its
    /// overlay was applied to the store), so only its contributions wait, for the attempt's
    /// end. Its writes come back with [`BranchData::returned`].
    pub(crate) fn lend(&mut self, alone: bool) -> Arc<BranchCell> {
        Arc::new(BranchCell {
            base: self.base.clone(),
            input: self.input.clone(),
            isolated: self.isolated && !alone,
            writes: Mutex::new(Writes {
                before: std::mem::take(&mut self.own),
                attempt: Ops::default(),
            }),
            error: Mutex::new(None),
        })
    }

    /// Takes back the branch's writes from the state run `cell` was lent to, with that
    /// attempt's if `keep` (it completed) and none failed. Returns the error a write met, if
    /// any (it fails the attempt).
    pub(crate) fn returned(&mut self, cell: &BranchCell, keep: bool) -> Option<FlowError> {
        let writes = std::mem::take(&mut *lock(&cell.writes));
        let error = lock(&cell.error).take();
        self.own = writes.before;
        if keep && error.is_none() {
            self.own.append(writes.attempt);
        }
        error
    }
}

/// The writes a state run sees in its own branch: the branch's, and its attempt's (kept only
/// if the attempt completes; a checkpoint taken while it runs keeps only the branch's, since
/// a restore runs the attempt again).
#[derive(Default)]
struct Writes {
    before: Ops,
    attempt: Ops,
}

/// What a state run on a branch with an overlay reads and writes through.
pub(crate) struct BranchCell {
    base: Option<Arc<Layer>>,
    input: Option<Slot>,
    isolated: bool,
    writes: Mutex<Writes>,
    /// The first write that failed (a value of the wrong type for a key's reducer).
    error: Mutex<Option<FlowError>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BranchCell {
    pub(super) fn input(&self) -> Option<&Slot> {
        self.input.as_ref()
    }

    pub(super) fn is_isolated(&self) -> bool {
        self.isolated
    }

    pub(super) fn push(&self, key: String, op: Op) {
        lock(&self.writes).attempt.push(key, op);
    }

    /// Records a failed write; the first one fails the state.
    pub(super) fn fail(&self, error: FlowError) {
        lock(&self.error).get_or_insert(error);
    }

    /// The value of `key` as this branch sees it: the store's, then each layer's writes,
    /// then its own.
    pub(super) fn resolve(
        &self,
        key: &str,
        store: &Store,
        reducer: Option<&Reducer>,
    ) -> Result<Option<Slot>, FlowError> {
        let writes = lock(&self.writes);
        // The levels that write `key`, nearest first, down to one that replaces it.
        let mut levels: Vec<&[Op]> = Vec::new();
        let mut reaches_store = true;
        let mut layer = self.base.as_ref();
        let own = [&writes.attempt, &writes.before];
        let mut own = own.into_iter();
        while let Some(ops) = own.next().or_else(|| {
            let ops = layer.map(|l| &l.ops);
            layer = layer.and_then(|l| l.parent.as_ref());
            ops
        }) {
            if let Some(written) = ops.get(key) {
                levels.push(written);
                if written.first().is_some_and(Op::replaces) {
                    reaches_store = false;
                    break;
                }
            }
        }
        let mut value = if reaches_store {
            store.get(key).cloned()
        } else {
            None
        };
        for ops in levels.iter().rev() {
            value = apply(key, value, ops, reducer)?;
        }
        Ok(value)
    }

    /// Every key with a value, as this branch sees it (unsorted, may repeat).
    pub(super) fn written_keys(&self) -> Vec<String> {
        let writes = lock(&self.writes);
        let mut keys: Vec<String> = writes.attempt.keys().cloned().collect();
        keys.extend(writes.before.keys().cloned());
        let mut layer = self.base.as_ref();
        while let Some(l) = layer {
            keys.extend(l.ops.keys().cloned());
            layer = l.parent.as_ref();
        }
        keys
    }
}

/// `ops` applied to `value`.
pub(super) fn apply(
    key: &str,
    mut value: Option<Slot>,
    ops: &[Op],
    reducer: Option<&Reducer>,
) -> Result<Option<Slot>, FlowError> {
    for op in ops {
        value = match op {
            Op::Set(slot) => Some(slot.clone()),
            Op::Remove => None,
            Op::Add(slot) => match reducer {
                Some(reducer) => Some(reducer.combine.fold(key, value, slot)?),
                None => {
                    return Err(FlowError::WrongType {
                        key: key.to_owned(),
                        expected: format!(
                            "a reducer to combine its contributions: register it with \
                             `agent.reducer(\"{key}\", ..)`"
                        ),
                        found: "contributions made under a reducer the agent no longer has \
                                (a checkpoint restored into another definition?)"
                            .to_owned(),
                    });
                }
            },
        };
    }
    Ok(value)
}

/// Applies `ops` to `store`, in order.
pub(super) fn commit(
    store: &mut Store,
    ops: Ops,
    reducers: &FxHashMap<String, Reducer>,
) -> Result<(), FlowError> {
    for (key, ops) in ops.0 {
        let value = apply(&key, store.remove(&key), &ops, reducers.get(&key))?;
        if let Some(value) = value {
            store.insert(key, value);
        }
    }
    Ok(())
}

// ---- Checkpoints -------------------------------------------------------------------------

/// One write as a checkpoint keeps it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OpImage {
    Set(Value),
    Remove,
    Add(Value),
}

type OpsImage = Vec<(String, Vec<OpImage>)>;

fn ops_image(ops: &Ops) -> Result<OpsImage, FlowError> {
    let mut image: OpsImage = Vec::with_capacity(ops.0.len());
    for (key, list) in &ops.0 {
        let mut written = Vec::with_capacity(list.len());
        for op in list {
            written.push(match op {
                Op::Set(slot) => OpImage::Set(slot.to_value(key)?),
                Op::Remove => OpImage::Remove,
                Op::Add(slot) => OpImage::Add(slot.to_value(key)?),
            });
        }
        image.push((key.clone(), written));
    }
    image.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(image)
}

fn ops_from(image: OpsImage) -> Ops {
    let mut ops = Ops::default();
    for (key, list) in image {
        let list = list
            .into_iter()
            .map(|op| match op {
                OpImage::Set(value) => Op::Set(Slot::json(value)),
                OpImage::Remove => Op::Remove,
                OpImage::Add(value) => Op::Add(Slot::json(value)),
            })
            .collect();
        ops.0.insert(key, list);
    }
    ops
}

/// A branch's overlay and input as a checkpoint keeps them.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct BranchImage {
    pub(crate) id: u64,
    /// Its nearest layer, by index in [`Layers`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    own: OpsImage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input: Option<Value>,
    #[serde(default)]
    isolated: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    key: Vec<u32>,
    #[serde(default)]
    forks: u32,
}

/// The layers the branches of a checkpoint read through, each once, a parent before its
/// children.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct Layers(Vec<(OpsImage, Option<usize>)>);

impl Layers {
    /// An image of a branch (its data, or the cell a running state of it has), adding the
    /// layers it reads through that are not here yet.
    pub(crate) fn add(
        &mut self,
        seen: &mut FxHashMap<*const Layer, usize>,
        id: u64,
        data: &BranchData,
        running: Option<&BranchCell>,
    ) -> Result<BranchImage, FlowError> {
        let (base, own, input, isolated) = match running {
            Some(cell) => (
                &cell.base,
                ops_image(&lock(&cell.writes).before)?,
                &cell.input,
                data.isolated,
            ),
            None => (&data.base, ops_image(&data.own)?, &data.input, data.isolated),
        };
        let base = match base {
            Some(layer) => Some(self.layer(seen, layer)?),
            None => None,
        };
        Ok(BranchImage {
            id,
            base,
            own,
            input: input
                .as_ref()
                .map(|input| input.to_value("(input)"))
                .transpose()?,
            isolated,
            key: data.key.clone(),
            forks: data.forks,
        })
    }

    fn layer(
        &mut self,
        seen: &mut FxHashMap<*const Layer, usize>,
        layer: &Arc<Layer>,
    ) -> Result<usize, FlowError> {
        if let Some(&index) = seen.get(&Arc::as_ptr(layer)) {
            return Ok(index);
        }
        let parent = match &layer.parent {
            Some(parent) => Some(self.layer(seen, parent)?),
            None => None,
        };
        self.0.push((ops_image(&layer.ops)?, parent));
        let index = self.0.len() - 1;
        seen.insert(Arc::as_ptr(layer), index);
        Ok(index)
    }

    /// The branches of a checkpoint, by id; an error names what does not fit together.
    pub(crate) fn restore(
        self,
        branches: Vec<BranchImage>,
    ) -> Result<Vec<(u64, BranchData)>, String> {
        let mut layers: Vec<Arc<Layer>> = Vec::with_capacity(self.0.len());
        for (index, (ops, parent)) in self.0.into_iter().enumerate() {
            let parent = match parent {
                Some(p) if p < index => Some(Arc::clone(&layers[p])),
                Some(p) => return Err(format!("layer {index} has parent {p}, not before it")),
                None => None,
            };
            layers.push(Arc::new(Layer {
                ops: ops_from(ops),
                parent,
            }));
        }
        branches
            .into_iter()
            .map(|image| {
                let base = match image.base {
                    Some(i) => Some(Arc::clone(layers.get(i).ok_or_else(|| {
                        format!("branch {} reads through layer {i}, which is missing", image.id)
                    })?)),
                    None => None,
                };
                Ok((
                    image.id,
                    BranchData {
                        base,
                        own: ops_from(image.own),
                        input: image.input.map(Slot::json),
                        isolated: image.isolated,
                        key: image.key,
                        forks: image.forks,
                    },
                ))
            })
            .collect()
    }
}
