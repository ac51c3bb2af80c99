//! Branch-local writes: what the branches of forks write where timing must not decide what
//! others see, or in which order writes apply.
//!
//! Those writes are contributions to keys with a reducer (on every branch), and every write
//! of a branch of `Next::map` (an *isolated* branch). They are kept as a graph of *nodes*:
//! one node per completed state run that made such writes, whose parents are the nodes its
//! branch could see when it ran. A branch's *view* is its latest nodes (its heads) and their
//! ancestors: a fork's branches start from the forking branch's view; a join's view is the
//! union of the views of the branches it joins; a branch that ends joins nothing, and its
//! writes reach only the run's result. Nothing a sibling writes reaches a branch before they
//! join, whatever the timing.
//!
//! A view is applied in one deterministic order: parents before children, and among nodes
//! neither before the other, by their place in fork order (see [`BranchData::order`]), then by
//! creation. The run's result applies every node in that order; a branch running alone in its
//! run has its view applied to the store, and writes there directly (see `Context::commit`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use flow_core::{FlowError, FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reducer::Reducer;
use super::store::{Slot, Store};

/// One write.
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

/// Writes by key: for each, at most one replacing write, first, and the contributions after
/// it in the order they were made.
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

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each key's writes, in the order made.
    pub(super) fn into_entries(self) -> impl Iterator<Item = (String, Vec<Op>)> {
        self.0.into_iter()
    }

    fn get(&self, key: &str) -> Option<&[Op]> {
        self.0.get(key).map(Vec::as_slice)
    }
}

/// The writes of one completed state run, and the nodes its branch saw.
pub(crate) struct Node {
    /// Creation order within the run (unique): the last tie-break of the order, and identity.
    serial: u64,
    /// Its branch's place in fork order, and the run's place in the branch.
    key: Vec<u32>,
    ops: Ops,
    parents: Vec<Arc<Node>>,
}

/// Every node of `heads` and their ancestors, each once, parents before children, ties
/// broken by fork order then creation (Kahn's algorithm with a min-heap).
pub(crate) fn ordered(heads: &[Arc<Node>]) -> Vec<Arc<Node>> {
    let mut all: FxHashMap<u64, Arc<Node>> = FxHashMap::default();
    let mut stack: Vec<&Arc<Node>> = heads.iter().collect();
    while let Some(node) = stack.pop() {
        if all.contains_key(&node.serial) {
            continue;
        }
        all.insert(node.serial, Arc::clone(node));
        stack.extend(node.parents.iter());
    }
    let mut waiting: FxHashMap<u64, usize> = FxHashMap::default();
    let mut children: FxHashMap<u64, Vec<u64>> = FxHashMap::default();
    let mut ready = BinaryHeap::new();
    for node in all.values() {
        let mut parents: Vec<u64> = node.parents.iter().map(|p| p.serial).collect();
        parents.sort_unstable();
        parents.dedup();
        for parent in &parents {
            children.entry(*parent).or_default().push(node.serial);
        }
        if parents.is_empty() {
            ready.push(Reverse((node.key.clone(), node.serial)));
        } else {
            waiting.insert(node.serial, parents.len());
        }
    }
    let mut order = Vec::with_capacity(all.len());
    while let Some(Reverse((_, serial))) = ready.pop() {
        for child in children.get(&serial).into_iter().flatten() {
            let left = waiting
                .get_mut(child)
                .expect("a child waits for its parents");
            *left -= 1;
            if *left == 0 {
                ready.push(Reverse((all[child].key.clone(), *child)));
            }
        }
        order.push(Arc::clone(&all[&serial]));
    }
    order
}

/// What the scheduler keeps of a branch between its states.
#[derive(Default)]
pub(crate) struct BranchData {
    /// Its view: these nodes and their ancestors.
    heads: Vec<Arc<Node>>,
    /// Its place in fork order: the place of the branch that forked it, that branch's step
    /// then, and its index in the fork. Never from timing. Empty: the branch never had one
    /// (see [`BranchData::order`]).
    key: Vec<u32>,
    /// Its nodes and forks so far (the last part of their places).
    step: u32,
    /// Its item, for a branch of `Next::map`.
    input: Option<Slot>,
    /// Whether every write stays in its view until it joins (a branch of `Next::map`, or one
    /// that joined one), rather than only contributions.
    isolated: bool,
    /// Whether its view holds nodes no other live branch holds: it wrote, or joined (or goes
    /// on for) a branch that did. A branch that ends without them hands nothing to the run's
    /// result (its view is its fork's, which others hold), so the run may go back to the
    /// store when one branch is left.
    contributed: bool,
}

impl BranchData {
    /// Nothing to keep.
    pub(crate) fn is_empty(&self) -> bool {
        self.heads.is_empty() && self.key.is_empty() && self.input.is_none() && !self.isolated
    }

    /// Its place in fork order; a branch that never had one is placed by its id, which for
    /// the run's first branches is their entry's index.
    pub(crate) fn order(&self, id: u32) -> Vec<u32> {
        if self.key.is_empty() {
            vec![id]
        } else {
            self.key.clone()
        }
    }

    /// The place of the `index`th branch of the fork it makes now (before [`Self::forked`]).
    pub(crate) fn child_key(&self, id: u32, index: usize) -> Vec<u32> {
        let mut key = self.order(id);
        key.push(self.step);
        key.push(u32::try_from(index).unwrap_or(u32::MAX));
        key
    }

    /// It forked: its next writes come after its fork's.
    pub(crate) fn forked(&mut self, id: u32) {
        self.key = self.order(id);
        self.step = self.step.saturating_add(1);
    }

    /// A branch of a fork this branch makes: its view, `input` (a map's item), its place.
    pub(crate) fn child(&self, input: Option<Value>, isolated: bool, key: Vec<u32>) -> Self {
        Self {
            heads: self.heads.clone(),
            key,
            step: 0,
            input: input.map(Slot::json),
            isolated,
            contributed: false,
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

    /// A completed state run's writes become a node of its view.
    pub(crate) fn record(&mut self, id: u32, serial: u64, ops: Ops) {
        if ops.is_empty() {
            return;
        }
        let mut key = self.order(id);
        key.push(self.step);
        self.step = self.step.saturating_add(1);
        let node = Node {
            serial,
            key,
            ops,
            parents: std::mem::take(&mut self.heads),
        };
        self.heads = vec![Arc::new(node)];
        self.contributed = true;
    }

    /// `parts` joined: their views become one. `first`: the branch whose place, input and
    /// step go on.
    pub(crate) fn join(first: BranchData, parts: Vec<BranchData>) -> BranchData {
        let mut joined = first;
        let mut seen: FxHashSet<u64> = joined.heads.iter().map(|n| n.serial).collect();
        for part in parts {
            joined.isolated |= part.isolated;
            joined.contributed |= part.contributed;
            for head in part.heads {
                if seen.insert(head.serial) {
                    joined.heads.push(head);
                }
            }
        }
        joined
    }

    /// The branches of `forked`'s fork joined into this one, which goes on for it: its item
    /// is `forked`'s again (isolated if either was).
    pub(crate) fn inherit(&mut self, forked: &BranchData) {
        self.input = forked.input.clone();
        self.isolated |= forked.isolated;
        self.contributed |= forked.contributed;
    }

    /// Its view, leaving it none (its view went to the store).
    pub(crate) fn take_heads(&mut self) -> Vec<Arc<Node>> {
        self.contributed = false;
        std::mem::take(&mut self.heads)
    }

    /// What it hands to the run's result as it ends: its view if that holds writes of its
    /// own (see `contributed`), nothing otherwise.
    pub(crate) fn take_ended(&mut self) -> Vec<Arc<Node>> {
        let heads = std::mem::take(&mut self.heads);
        if std::mem::take(&mut self.contributed) {
            heads
        } else {
            Vec::new()
        }
    }

    /// The handle a state run on this branch gets. `alone`: it runs alone in its run, its
    /// view applied to the store: only its contributions wait (for the attempt's end).
    pub(crate) fn lend(&self, alone: bool) -> Arc<BranchCell> {
        Arc::new(BranchCell {
            heads: self.heads.clone(),
            order: OnceLock::new(),
            input: self.input.clone(),
            isolated: self.isolated && !alone,
            alone,
            attempt: Mutex::new(Ops::default()),
            error: Mutex::new(None),
        })
    }
}

/// What a state run on a branch with a view reads and writes through.
pub(crate) struct BranchCell {
    heads: Vec<Arc<Node>>,
    /// The view in order, made on the first read that needs it.
    order: OnceLock<Vec<Arc<Node>>>,
    input: Option<Slot>,
    isolated: bool,
    /// The branch runs alone in its run: its writes reach the store as the attempt ends.
    alone: bool,
    /// This attempt's writes: a node of the branch if it completes, dropped otherwise (and
    /// not in a checkpoint taken meanwhile: a restore runs the attempt again).
    attempt: Mutex<Ops>,
    /// The first write that failed (a value of the wrong type for a key's reducer).
    error: Mutex<Option<FlowError>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BranchCell {
    /// The cell of a remote state's attempt (see `crate::remote`): every write it makes is
    /// kept as an op, to be sent back to its run; `input` is its map item.
    pub(super) fn remote(input: Option<Slot>) -> Arc<BranchCell> {
        Arc::new(BranchCell {
            heads: Vec::new(),
            order: OnceLock::new(),
            input,
            isolated: true,
            alone: false,
            attempt: Mutex::new(Ops::default()),
            error: Mutex::new(None),
        })
    }

    pub(super) fn input(&self) -> Option<&Slot> {
        self.input.as_ref()
    }

    pub(super) fn is_isolated(&self) -> bool {
        self.isolated
    }

    pub(crate) fn is_alone(&self) -> bool {
        self.alone
    }

    pub(super) fn push(&self, key: String, op: Op) {
        lock(&self.attempt).push(key, op);
    }

    /// Records a failed write; the first one fails the state.
    pub(super) fn fail(&self, error: FlowError) {
        lock(&self.error).get_or_insert(error);
    }

    /// The attempt's writes if it completed and none failed, and the failed write's error.
    pub(crate) fn finish(&self, completed: bool) -> (Option<Ops>, Option<FlowError>) {
        let attempt = std::mem::take(&mut *lock(&self.attempt));
        let error = lock(&self.error).take();
        ((completed && error.is_none()).then_some(attempt), error)
    }

    fn order(&self) -> &[Arc<Node>] {
        self.order.get_or_init(|| ordered(&self.heads))
    }

    /// The value of `key` as this state run sees it: the store's, then its view's writes in
    /// order, then its own.
    pub(super) fn resolve(
        &self,
        key: &str,
        store: &Store,
        reducer: Option<&Reducer>,
    ) -> Result<Option<Slot>, FlowError> {
        let mut value = store.get(key).cloned();
        if !self.heads.is_empty() {
            for node in self.order() {
                if let Some(ops) = node.ops.get(key) {
                    value = apply(key, value, ops, reducer)?;
                }
            }
        }
        if let Some(ops) = lock(&self.attempt).get(key) {
            value = apply(key, value, ops, reducer)?;
        }
        Ok(value)
    }

    /// Every key its view or its attempt wrote (unsorted, may repeat).
    pub(super) fn written_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.attempt).0.keys().cloned().collect();
        if !self.heads.is_empty() {
            for node in self.order() {
                keys.extend(node.ops.0.keys().cloned());
            }
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

/// Applies `nodes` (in order) to `store`.
pub(super) fn commit(
    store: &mut Store,
    nodes: &[Arc<Node>],
    reducers: &FxHashMap<String, Reducer>,
) -> Result<(), FlowError> {
    // Folded aside and put in place only when every node folds: a failure leaves the store
    // as it was.
    let mut folded: FxHashMap<&str, Option<Slot>> = FxHashMap::default();
    for node in nodes {
        for (key, ops) in &node.ops.0 {
            let current = match folded.remove(key.as_str()) {
                Some(value) => value,
                None => store.get(key).cloned(),
            };
            let value = apply(key, current, ops, reducers.get(key))?;
            folded.insert(key, value);
        }
    }
    for (key, value) in folded {
        match value {
            Some(value) => {
                store.insert(key.to_owned(), value);
            }
            None => {
                store.remove(key);
            }
        }
    }
    Ok(())
}

// ---- Checkpoints -------------------------------------------------------------------------

/// One write as a checkpoint (or a remote state's reply) keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OpImage {
    Set(Value),
    Remove,
    Add(Value),
}

/// Writes by key, as JSON.
pub(crate) type OpsImage = Vec<(String, Vec<OpImage>)>;

pub(super) fn ops_image(ops: &Ops) -> Result<OpsImage, FlowError> {
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

pub(super) fn ops_from(image: OpsImage) -> Ops {
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

#[derive(Clone, Serialize, Deserialize)]
struct NodeImage {
    key: Vec<u32>,
    ops: OpsImage,
    /// By index in the image, each before this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    parents: Vec<usize>,
}

#[derive(Clone, Serialize, Deserialize)]
struct BranchImage {
    id: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    heads: Vec<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    key: Vec<u32>,
    #[serde(default)]
    step: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input: Option<Value>,
    #[serde(default)]
    isolated: bool,
    /// (Absent: taken to be true, which hands the view to the result when it ends.)
    #[serde(default = "contributed_default")]
    contributed: bool,
}

fn contributed_default() -> bool {
    true
}

/// The branches' views and the ended branches' writes, as a checkpoint keeps them.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct BranchesImage {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<NodeImage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    branches: Vec<BranchImage>,
    /// The heads of ended branches' views, by index in `nodes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    finished: Vec<usize>,
}

/// What a checkpoint's [`BranchesImage`] restores to.
pub(crate) struct RestoredBranches {
    pub(crate) branches: Vec<(u32, BranchData)>,
    pub(crate) finished: Vec<Arc<Node>>,
    /// Past every node's serial.
    pub(crate) next_serial: u64,
}

impl BranchesImage {
    /// The image of `branches` and `finished`.
    pub(crate) fn capture<'a>(
        branches: impl Iterator<Item = (u32, &'a BranchData)>,
        finished: &[Arc<Node>],
    ) -> Result<Self, FlowError> {
        let branches: Vec<(u32, &BranchData)> = branches.collect();
        let mut heads: Vec<Arc<Node>> = finished.to_vec();
        for (_, data) in &branches {
            heads.extend(data.heads.iter().cloned());
        }
        let order = ordered(&heads);
        let index: FxHashMap<u64, usize> = order
            .iter()
            .enumerate()
            .map(|(i, node)| (node.serial, i))
            .collect();
        let mut image = BranchesImage::default();
        for node in &order {
            image.nodes.push(NodeImage {
                key: node.key.clone(),
                ops: ops_image(&node.ops)?,
                parents: node.parents.iter().map(|p| index[&p.serial]).collect(),
            });
        }
        for (id, data) in branches {
            image.branches.push(BranchImage {
                id,
                heads: data.heads.iter().map(|h| index[&h.serial]).collect(),
                key: data.key.clone(),
                step: data.step,
                input: data.input_json()?,
                isolated: data.isolated,
                contributed: data.contributed,
            });
        }
        image.finished = finished.iter().map(|h| index[&h.serial]).collect();
        Ok(image)
    }

    /// The branches and nodes of a checkpoint; an error names what does not fit together.
    pub(crate) fn restore(self) -> Result<RestoredBranches, String> {
        let mut nodes: Vec<Arc<Node>> = Vec::with_capacity(self.nodes.len());
        for (serial, image) in self.nodes.into_iter().enumerate() {
            let mut parents = Vec::with_capacity(image.parents.len());
            for p in image.parents {
                if p >= serial {
                    return Err(format!("node {serial} has parent {p}, not before it"));
                }
                parents.push(Arc::clone(&nodes[p]));
            }
            nodes.push(Arc::new(Node {
                serial: serial as u64,
                key: image.key,
                ops: ops_from(image.ops),
                parents,
            }));
        }
        let pick = |indices: Vec<usize>| -> Result<Vec<Arc<Node>>, String> {
            indices
                .into_iter()
                .map(|i| {
                    nodes
                        .get(i)
                        .cloned()
                        .ok_or_else(|| format!("node {i} is missing"))
                })
                .collect()
        };
        let mut branches = Vec::with_capacity(self.branches.len());
        for image in self.branches {
            branches.push((
                image.id,
                BranchData {
                    heads: pick(image.heads)?,
                    key: image.key,
                    step: image.step,
                    input: image.input.map(Slot::json),
                    isolated: image.isolated,
                    contributed: image.contributed,
                },
            ));
        }
        Ok(RestoredBranches {
            branches,
            finished: pick(self.finished)?,
            next_serial: nodes.len() as u64,
        })
    }
}
