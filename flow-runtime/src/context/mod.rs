//! The context store shared by the states of a run.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use flow_core::{FlowError, FxHashMap};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::checkpoint::CheckpointContext;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

/// What a context value must be: serializable (for checkpoints and reports), and shareable
/// between the parallel states of a run. Implemented for every such type.
pub trait ContextValue: Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> ContextValue for T {}

mod branch;
mod reducer;
mod store;

use branch::Op;
pub(crate) use branch::{
    BranchCell, BranchData, BranchesImage, Node, Ops, OpsImage, RestoredBranches, ordered,
};
pub use reducer::Reducer;
pub(crate) use reducer::WriteKind;
pub(crate) use store::Frozen;
pub(crate) use store::Slot;
use store::{Store, Writable, decode_text, decode_value, missing, wrong_type};

/// The data the states of a run share.
///
/// A `Context` is a cheap handle (an `Arc`): cloning it shares the store. Values are kept as the
/// Rust values they were stored as: reading one back is a downcast, not a JSON round trip, and
/// JSON is made only when a snapshot is taken ([`Context::snapshot`]). A context built from JSON
/// ([`Context::from_json`]) decodes each value on its first typed read and keeps the result.
///
/// Parallel states may read and write concurrently; each call is atomic. Reading a key that is
/// not there gives [`FlowError::MissingKey`]; reading it as the wrong type gives
/// [`FlowError::WrongType`].
///
/// ```
/// # use flow_runtime::Context;
/// let ctx = Context::new();
/// ctx.set_state("scores", vec![95, 87, 92]);
/// assert_eq!(ctx.get_state::<Vec<i32>>("scores").unwrap(), vec![95, 87, 92]);
/// assert_eq!(ctx.get_state_or("missing", 7).unwrap(), 7);
/// assert!(ctx.get_state::<String>("scores").is_err());
/// ```
#[derive(Clone)]
pub struct Context {
    values: Arc<RwLock<Arc<Store>>>,
    /// Cancelled when the run this handle belongs to stops (see [`Context::cancelled`]).
    /// (Behind an `Arc`: cloning a token takes a lock, and every state run clones its handle.)
    cancellation: Arc<CancellationToken>,
    /// The cancellation of the run this handle (or a clone of it) was last given to with
    /// `run_with`/`start_with`: the caller's handle reports that run stopping too.
    /// (`None` for the run's own handles: they have their run's cancellation already, and
    /// cloning them for every state costs nothing more.)
    given_to: Option<Arc<Mutex<Option<CancellationToken>>>>,
    /// The run this handle belongs to (a state's handle, or one of the run's own).
    run: Option<Arc<RunInfo>>,
    /// The state run this handle was given to.
    at: Option<StateRun>,
    /// The view of the branch that state runs on, when it has one (see `branch`).
    branch: Option<Arc<BranchCell>>,
}

/// The reducers of a run's keys.
pub(crate) type Reducers = FxHashMap<String, Reducer>;

/// The run a context handle belongs to.
pub(crate) struct RunInfo {
    pub(crate) key: Arc<str>,
    pub(crate) id: u64,
    pub(crate) graph: Arc<flow_core::StateGraph>,
    /// The workflow's name.
    pub(crate) workflow: Arc<str>,
    /// The run's input requests.
    pub(crate) inputs: Arc<crate::input::InputHub>,
    /// The agent's reducers, by key.
    pub(crate) reducers: Arc<Reducers>,
    /// The readers of the run's stream.
    pub(crate) stream: Arc<crate::stream::StreamHub>,
    /// Where the run's events go: its agent's hub, or, for a subgraph's run, the outermost
    /// run's (see `crate::subgraph`).
    pub(crate) events: crate::events::EventHub,
    /// The run id its events carry (the outermost run's, for a subgraph's run).
    pub(crate) event_run_id: u64,
    /// For a subgraph's run: its subgraph state's path in the outermost run (`a/b`).
    pub(crate) path: Option<Arc<str>>,
    /// The runs of the run's subgraph states, when it has any.
    pub(crate) subgraphs: Option<Arc<crate::subgraph::SubgraphRuns>>,
}

/// Where an input request is made from (see `input::ask`).
pub(crate) struct InputSite<'a> {
    pub(crate) hub: &'a Arc<crate::input::InputHub>,
    pub(crate) run_key: &'a str,
    pub(crate) workflow: &'a str,
    pub(crate) state: &'a str,
    pub(crate) state_index: u32,
    pub(crate) visit: u32,
    pub(crate) attempt: u32,
}

/// The state run a context handle was given to.
#[derive(Clone, Copy)]
struct StateRun {
    state: flow_core::StateId,
    attempt: u32,
    visit: u32,
}

impl Default for Context {
    fn default() -> Self {
        Self::holding(Store::default())
    }
}

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// A context holding the values of a JSON object (for example a snapshot taken earlier).
    /// Each value is decoded into a Rust type on its first typed read.
    pub fn from_json(values: Map<String, Value>) -> Self {
        let map = values
            .into_iter()
            .map(|(k, v)| (k, Slot::Json(Arc::new(v))))
            .collect();
        Self::holding(map)
    }

    /// A context of its own (not a run's) holding `values`.
    fn holding(values: Store) -> Self {
        Self {
            values: Arc::new(RwLock::new(Arc::new(values))),
            cancellation: Arc::default(),
            given_to: Some(Arc::default()),
            run: None,
            at: None,
            branch: None,
        }
    }

    /// A context holding the values a checkpoint kept, as JSON text decoded on first read.
    pub(crate) fn from_checkpoint(values: CheckpointContext) -> Result<Self, FlowError> {
        let (text, entries) = values.into_parts()?;
        let mut map = FxHashMap::with_capacity_and_hasher(entries.len(), Default::default());
        for (key, range) in entries {
            let text = Arc::clone(&text);
            map.insert(key, Slot::Text { text, range });
        }
        Ok(Self::holding(map))
    }

    /// A context of its own holding the same values now (shared, not copied: values are
    /// replaced, never changed in place, so later writes to either do not reach the other).
    pub(crate) fn detached_copy(&self) -> Self {
        Self::holding(Store::clone(&self.read()))
    }

    /// The values now, for a checkpoint (O(1): see [`Frozen`]).
    pub(crate) fn freeze(&self) -> Frozen {
        Frozen(Arc::clone(&self.read()))
    }

    /// The same store, seen by one run: its cancellation is the run's. This handle (the
    /// caller's) reports that run's cancellation from now on too.
    pub(crate) fn for_run(&self, cancellation: CancellationToken) -> Self {
        if let Some(given_to) = &self.given_to {
            *given_to.lock().unwrap_or_else(PoisonError::into_inner) = Some(cancellation.clone());
        }
        Self {
            values: Arc::clone(&self.values),
            cancellation: Arc::new(cancellation),
            given_to: None,
            run: None,
            at: None,
            branch: None,
        }
    }

    /// This (run's) handle belongs to the run `info` describes.
    pub(crate) fn set_run(&mut self, info: RunInfo) {
        self.run = Some(Arc::new(info));
    }

    /// The handle a state's run is given: this run's, saying which state, attempt and visit.
    /// `branch`: the view of its branch, when it has one.
    pub(crate) fn for_state(
        &self,
        state: flow_core::StateId,
        attempt: u32,
        visit: u32,
        branch: Option<Arc<BranchCell>>,
    ) -> Self {
        Self {
            at: Some(StateRun {
                state,
                attempt,
                visit,
            }),
            branch,
            ..self.clone()
        }
    }

    /// Applies the writes of branch views to the store, in the views' order (a branch runs
    /// alone now, or the run's branches all ended).
    pub(crate) fn commit(&self, nodes: &[Arc<Node>]) -> Result<(), FlowError> {
        if nodes.is_empty() {
            return Ok(());
        }
        let empty = Reducers::default();
        let reducers = self.run.as_deref().map_or(&empty, |run| &*run.reducers);
        branch::commit(&mut self.write(), nodes, reducers)
    }

    /// The run this handle belongs to, and the state run it was given to (state, attempt,
    /// visit), for a subgraph state's body.
    pub(crate) fn state_run(&self) -> Option<(&RunInfo, flow_core::StateId, u32, u32)> {
        let at = self.at?;
        Some((self.run.as_deref()?, at.state, at.attempt, at.visit))
    }

    /// The value under `key` as this handle sees it, whatever its type (for copying it to
    /// another context).
    pub(crate) fn slot(&self, key: &str) -> Result<Option<Slot>, FlowError> {
        match self.overlay(key) {
            Some(cell) => self.resolve(cell, key),
            None => Ok(self.read().get(key).cloned()),
        }
    }

    /// Stores `slot` under `key` as a state's write would (through its branch's view, a
    /// contribution to a key with a reducer).
    pub(crate) fn put_slot(&self, key: String, slot: Slot) {
        if self.plain_writes() {
            self.write().insert(key, slot);
        } else {
            self.set_observed(key, slot, false);
        }
    }

    /// The reducer of `key`, for a write made by a state.
    fn reducer(&self, key: &str) -> Option<&Reducer> {
        let reducers = &self.run.as_deref()?.reducers;
        if reducers.is_empty() {
            return None;
        }
        reducers.get(key)
    }

    /// The branch view reads and writes of `key` go through, if any: a key with a
    /// reducer (its contributions wait for the attempt's end, and for the join), or any key
    /// of an isolated branch that does not run alone.
    fn overlay(&self, key: &str) -> Option<&BranchCell> {
        let cell = self.branch.as_deref()?;
        (cell.is_isolated() || self.reducer(key).is_some()).then_some(cell)
    }

    /// The value of `key` as this handle's branch sees it.
    fn resolve(&self, cell: &BranchCell, key: &str) -> Result<Option<Slot>, FlowError> {
        cell.resolve(key, &self.read(), self.reducer(key))
    }

    /// The item this branch of a `Next::map` was given (see the README's "Map over data").
    /// A branch a map's branch forks keeps its item. Fails with [`FlowError::NoInput`] in a
    /// state that is not on a map's branch, and [`FlowError::WrongType`] when the item does
    /// not decode as a `T`.
    pub fn input<T: ContextValue + Clone>(&self) -> Result<T, FlowError> {
        let no_input = || FlowError::NoInput {
            state: self.state().unwrap_or("(no state)").to_owned(),
        };
        let slot = self.branch.as_deref().and_then(BranchCell::input);
        let slot = slot.ok_or_else(no_input)?;
        slot.typed::<T>("(input)").map(Arc::unwrap_or_clone)
    }

    /// The item of this handle's map branch, whatever its type (for a subgraph's input).
    pub(crate) fn input_slot(&self) -> Option<Slot> {
        self.branch.as_deref().and_then(BranchCell::input).cloned()
    }

    /// Sends `value` to the run's streams opened in [`StreamMode::CUSTOM`](crate::StreamMode)
    /// (tokens of a model's answer, progress), as JSON, tagged with this state. Waits while
    /// a reader's stream is full (back-pressure on this state only); returns at once when
    /// nobody streams the run. A value that does not serialize is
    /// [`FlowError::Serialization`].
    pub async fn emit(&self, value: impl Serialize) -> Result<(), FlowError> {
        let Some(run) = self.run.as_deref() else {
            return Ok(());
        };
        if !run.stream.wants(crate::StreamMode::CUSTOM) {
            return Ok(());
        }
        let value = serde_json::to_value(value).map_err(|error| FlowError::Serialization {
            key: format!(
                "(a value emitted by `{}`)",
                self.state().unwrap_or("the run")
            ),
            message: error.to_string(),
        })?;
        let state = self.stream_name(run);
        run.stream
            .emit(crate::StreamPart::Custom { state, value })
            .await;
        Ok(())
    }

    fn stream_name(&self, run: &RunInfo) -> Arc<str> {
        match self.at {
            Some(at) => Arc::clone(run.graph.name(at.state)),
            None => Arc::from("(run)"),
        }
    }

    /// Tells the run's update streams that `key` was written (`value` makes its JSON; `None`
    /// for a removal). One atomic load when nobody streams updates.
    #[inline]
    fn stream_update(&self, key: &str, value: impl FnOnce() -> Option<Value>) {
        let Some(run) = self.run.as_deref() else {
            return;
        };
        if !run.stream.wants(crate::StreamMode::UPDATES) {
            return;
        }
        let state = self.stream_name(run);
        let value = value();
        run.stream
            .publish(crate::StreamMode::UPDATES, || crate::StreamPart::Update {
                state,
                key: key.to_owned(),
                value,
            });
    }

    /// The value of `key` as JSON, as this handle sees it (for update streams).
    fn value_json(&self, key: &str) -> Option<Value> {
        let slot = match self.overlay(key) {
            Some(cell) => self.resolve(cell, key).ok()??,
            None => self.read().get(key)?.clone(),
        };
        Some(slot.to_value(key).unwrap_or(Value::Null))
    }

    /// A write of `slot` to `key`: through the branch view where it has one. `replace`: a
    /// write to a key with a reducer replaces its value rather than contributing.
    #[inline]
    fn write_slot(&self, key: String, slot: Slot, replace: bool) {
        let Some(cell) = self.branch.as_deref() else {
            self.write().insert(key, slot);
            return;
        };
        let op = match self.reducer(&key) {
            // A plain key of a branch that is not isolated: straight to the store.
            None if !cell.is_isolated() => {
                self.write().insert(key, slot);
                return;
            }
            None => Op::Set(slot),
            Some(reducer) => match slot.native_type().and_then(|t| reducer.combine.classify(t)) {
                Some(WriteKind::Contribute) if !replace => Op::Add(slot),
                Some(WriteKind::Replace) => Op::Set(slot),
                // A contribution's type replaces only where it is the value's type too.
                Some(WriteKind::Contribute) if reducer.combine.contribution_is_value() => {
                    Op::Set(slot)
                }
                _ => return cell.fail(reducer.refuse(&key, slot.type_name())),
            },
        };
        cell.push(key, op);
    }

    /// The run's key in checkpoint stores (`run_durable`'s key, or the generated one): with
    /// [`Context::state`] and [`Context::attempt`], what to key a side effect by so that a
    /// state run again after a restore or a retry can tell it already happened. `None` for a
    /// handle that belongs to no run (the one given to `run_with` is the caller's).
    pub fn run_key(&self) -> Option<&str> {
        self.run.as_deref().map(|run| &*run.key)
    }

    /// The run's id (unique among the runs of one agent in this process); `None` outside a run.
    pub fn run_id(&self) -> Option<u64> {
        self.run.as_deref().map(|run| run.id)
    }

    /// The name of the state this handle was given to; `None` outside a state.
    pub fn state(&self) -> Option<&str> {
        let (run, at) = (self.run.as_deref()?, self.at?);
        Some(&**run.graph.name(at.state))
    }

    /// Asks a person for text and waits for the answer: await the returned request, after
    /// setting its `timeout` (default [`crate::DEFAULT_INPUT_TIMEOUT`]) or `no_timeout`, its
    /// `validator` and its `default`. The request is answered through the run's handle, the
    /// agent's input provider, or (for a durable run) the checkpoint store; see the README's
    /// "Human input".
    ///
    /// Its id is stable (run key, state, visit, index of the call in the attempt): when the
    /// state runs again (a retry, a restore), a request answered before returns its recorded
    /// answer at once. Code before the request runs again: put side effects that must not
    /// repeat in a state of their own.
    pub fn human_input(&self, prompt: impl Into<String>) -> crate::input::HumanInput<'_> {
        crate::input::HumanInput::new(self, prompt.into())
    }

    /// Asks for a value of type `T` (any serde type with a JSON Schema, which the request
    /// carries so that a UI can render a form); the answer must deserialize into `T`. Otherwise
    /// as [`Context::human_input`].
    pub fn ask<T>(&self, prompt: impl Into<String>) -> crate::input::Ask<'_, T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + schemars::JsonSchema + Send + 'static,
    {
        crate::input::Ask::new(self, prompt.into())
    }

    /// What an input request made with this handle is made from; `None` outside a state.
    pub(crate) fn input_site(&self) -> Option<InputSite<'_>> {
        let (run, at) = (self.run.as_deref()?, self.at?);
        Some(InputSite {
            hub: &run.inputs,
            run_key: &run.key,
            workflow: &run.workflow,
            state: run.graph.name(at.state),
            state_index: at.state.index() as u32,
            visit: at.visit,
            attempt: at.attempt,
        })
    }

    /// The attempt of the state's current run (1, or more after retries); `None` outside a
    /// state.
    pub fn attempt(&self) -> Option<u32> {
        self.at.map(|at| at.attempt)
    }

    /// Which run of the state this is in the run (1 for the first; more in a loop), counted
    /// across restores from checkpoints: a run a restore starts again because it was in
    /// flight keeps its number. `None` outside a state.
    pub fn visit(&self) -> Option<u32> {
        self.at.map(|at| at.visit)
    }

    fn given_to(&self) -> Option<CancellationToken> {
        self.given_to
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The failure an `on_error` handler is handling: the dead letter of the state that failed
    /// (stored under [`crate::FAILURE_KEY`]); `None` when no state has failed over to a handler.
    pub fn failure(&self) -> Option<crate::DeadLetter> {
        self.get_state(crate::FAILURE_KEY).ok()
    }

    /// True once the run this context belongs to is stopping (cancelled, failed, timed out).
    /// A state doing long work can check it between steps and return early.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled() || self.given_to().is_some_and(|run| run.is_cancelled())
    }

    /// Completes when the run this context belongs to is stopping. Use it in `tokio::select!`
    /// to end long waits promptly; the run gives running states its `cleanup_timeout` to
    /// finish before it aborts them.
    pub async fn cancelled(&self) {
        match self.given_to() {
            Some(run) => {
                tokio::select! {
                    () = self.cancellation.cancelled() => {}
                    () = run.cancelled() => {}
                }
            }
            None => self.cancellation.cancelled().await,
        }
    }

    // A panic inside `update_typed`'s closure poisons the lock; the store itself is still
    // consistent (the value is either updated or not), so the poison is cleared.
    fn read(&self) -> RwLockReadGuard<'_, Arc<Store>> {
        self.values.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> Writable<'_> {
        Writable(self.values.write().unwrap_or_else(PoisonError::into_inner))
    }

    /// Stores `value` under `key`, replacing what was there.
    ///
    /// Inside a state, on a key with a [`Reducer`], this is a contribution the reducer folds
    /// in (see [`Reducer`]); on a branch of a `Next::map`, the write stays with the branch
    /// until it joins.
    pub fn set_state<T: ContextValue>(&self, key: impl Into<String>, value: T) {
        let slot = Slot::native(Arc::new(value));
        if self.plain_writes() {
            self.write().insert(key.into(), slot);
        } else {
            self.set_observed(key.into(), slot, false);
        }
    }

    /// Whether writes go straight to the store with nothing else to do: no branch view, and
    /// nobody streaming updates (the common case, kept to two loads).
    #[inline]
    fn plain_writes(&self) -> bool {
        self.branch.is_none()
            && self
                .run
                .as_deref()
                .is_none_or(|run| !run.stream.wants(crate::StreamMode::UPDATES))
    }

    /// A write someone watches, or through a branch view. `replace`: never a contribution.
    #[cold]
    #[inline(never)]
    fn set_observed(&self, key: String, slot: Slot, replace: bool) {
        self.stream_update(&key, || Some(slot.to_value(&key).unwrap_or(Value::Null)));
        self.write_slot(key, slot, replace);
    }

    /// Stores `value` under `key`, replacing what was there, also on a key with a reducer
    /// (where [`Context::set_state`] contributes; for reducers whose value and contribution
    /// have one type, `sum`, `min`, `max`, `extend`, `merge_map`, this is the way to reset
    /// the value). On a branch of a fork the replacement applies at the join, in fork order.
    pub fn replace_state<T: ContextValue>(&self, key: impl Into<String>, value: T) {
        let slot = Slot::native(Arc::new(value));
        if self.plain_writes() {
            self.write().insert(key.into(), slot);
        } else {
            self.set_observed(key.into(), slot, true);
        }
    }

    /// Stores a typed value under `key`. The same store as [`Context::set_state`]: a value set
    /// either way can be read either way; this name pairs with [`Context::get_typed`] and
    /// [`Context::update_typed`] for structured data.
    pub fn set_typed<T: ContextValue>(&self, key: impl Into<String>, value: T) {
        self.set_state(key, value);
    }

    /// A copy of the value under `key`.
    pub fn get_state<T: ContextValue + Clone>(&self, key: &str) -> Result<T, FlowError> {
        self.get_typed::<T>(key).map(|value| T::clone(&value))
    }

    /// The value under `key`, or `default` when the key is absent. A value of another type is
    /// still an error: a default would hide the bug.
    pub fn get_state_or<T: ContextValue + Clone>(
        &self,
        key: &str,
        default: T,
    ) -> Result<T, FlowError> {
        match self.get_state(key) {
            Err(FlowError::MissingKey { .. }) => Ok(default),
            other => other,
        }
    }

    /// A shared handle to the value under `key`, without copying it.
    pub fn get_typed<T: ContextValue>(&self, key: &str) -> Result<Arc<T>, FlowError> {
        if let Some(cell) = self.overlay(key) {
            return match self.resolve(cell, key)? {
                Some(slot) => slot.into_typed::<T>(key),
                None => Err(missing(key)),
            };
        }
        {
            let values = self.read();
            match values.get(key) {
                None => return Err(missing(key)),
                Some(slot @ Slot::Native { .. }) => return slot.typed(key),
                Some(Slot::Json(_) | Slot::Text { .. }) => {}
            }
        }
        // Decode under the write lock, re-checking: another reader may have decoded it first.
        let mut values = self.write();
        let slot = values.get_mut(key).ok_or_else(|| missing(key))?;
        match slot {
            Slot::Native { .. } => slot.typed(key),
            Slot::Json(json) => {
                let decoded: T = decode_value(key, json)?;
                let decoded = Arc::new(decoded);
                *slot = Slot::native(Arc::clone(&decoded));
                Ok(decoded)
            }
            Slot::Text { text, range } => {
                let decoded: T = decode_text(key, &text[range.clone()])?;
                let decoded = Arc::new(decoded);
                *slot = Slot::native(Arc::clone(&decoded));
                Ok(decoded)
            }
        }
    }

    /// Changes the value under `key` in place and returns what `update` returns.
    ///
    /// The update is atomic with respect to other context calls: `update` runs while the store
    /// is locked for writing, so it must not call this context itself (that would deadlock).
    /// If the value is shared with a handle from [`Context::get_typed`], it is copied first, so
    /// that handle keeps the old value. If `update` panics, the key is removed: a half-updated
    /// value is never left behind.
    pub fn update_typed<T, R>(
        &self,
        key: &str,
        update: impl FnOnce(&mut T) -> R,
    ) -> Result<R, FlowError>
    where
        T: ContextValue + Clone,
    {
        if let Some(cell) = self.overlay(key) {
            if !cell.is_alone() && self.reducer(key).is_some() {
                return Err(FlowError::ReducerUpdate {
                    key: key.to_owned(),
                });
            }
            let mut value = Arc::unwrap_or_clone(self.get_typed::<T>(key)?);
            let result = update(&mut value);
            cell.push(key.to_owned(), Op::Set(Slot::native(Arc::new(value))));
            self.stream_update(key, || self.value_json(key));
            return Ok(result);
        }
        // Decode a JSON value first, so that the slot below is native.
        self.get_typed::<T>(key)?;
        let mut values = self.write();
        let (owned_key, slot) = values.remove_entry(key).ok_or_else(|| missing(key))?;
        let Slot::Native {
            value,
            type_name: found,
            to_json,
            write_json,
        } = slot
        else {
            values.insert(owned_key, slot);
            return Err(wrong_type::<T>(key, "serialized data"));
        };
        match value.downcast::<T>() {
            Ok(mut typed) => {
                let result = update(Arc::make_mut(&mut typed));
                values.insert(owned_key, Slot::native(typed));
                drop(values);
                self.stream_update(key, || self.value_json(key));
                Ok(result)
            }
            Err(value) => {
                values.insert(
                    owned_key,
                    Slot::Native {
                        value,
                        type_name: found,
                        to_json,
                        write_json,
                    },
                );
                Err(wrong_type::<T>(key, found))
            }
        }
    }

    /// Whether a value is stored under `key`.
    pub fn has_state(&self, key: &str) -> bool {
        match self.overlay(key) {
            Some(cell) => self.resolve(cell, key).is_ok_and(|v| v.is_some()),
            None => self.read().contains_key(key),
        }
    }

    /// Removes the value under `key`; true if there was one.
    pub fn remove_state(&self, key: &str) -> bool {
        self.stream_update(key, || None);
        match self.overlay(key) {
            Some(cell) => {
                let had = self.has_state(key);
                cell.push(key.to_owned(), Op::Remove);
                had
            }
            None => self.write().remove(key).is_some(),
        }
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.read().keys().cloned().collect();
        if let Some(cell) = self.branch.as_deref() {
            keys.extend(cell.written_keys());
            keys.sort_unstable();
            keys.dedup();
            keys.retain(|key| self.has_state(key));
        }
        keys.sort_unstable();
        keys
    }

    /// Number of stored values.
    pub fn len(&self) -> usize {
        match self.branch {
            Some(_) => self.keys().len(),
            None => self.read().len(),
        }
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every value as JSON, keyed by name (values keep their native form in the store).
    pub fn snapshot(&self) -> Result<Map<String, Value>, FlowError> {
        if self.branch.is_some() {
            let mut map = Map::new();
            for key in self.keys() {
                if let Some(cell) = self.overlay(&key)
                    && let Some(slot) = self.resolve(cell, &key)?
                {
                    map.insert(key.clone(), slot.to_value(&key)?);
                } else if let Some(slot) = self.read().get(&key) {
                    map.insert(key.clone(), slot.to_value(&key)?);
                }
            }
            return Ok(map);
        }
        let values = self.read();
        let mut keys: Vec<&String> = values.keys().collect();
        keys.sort_unstable();
        let mut map = Map::new();
        for key in keys {
            let json = values[key].to_value(key)?;
            map.insert(key.clone(), json);
        }
        Ok(map)
    }
}

/// The writes of a remote state's attempt as its reply carries them (none: it failed).
pub(crate) fn writes_image(ops: Option<Ops>) -> Result<OpsImage, FlowError> {
    ops.map_or(Ok(Vec::new()), |ops| branch::ops_image(&ops))
}

/// Remote states (see `crate::remote`): the call a run sends out, the context the attempt
/// runs with elsewhere, and its writes applied back here.
impl Context {
    /// What an attempt of this (state's) handle is sent out with.
    pub(crate) fn remote_call(&self) -> Result<crate::remote::RemoteCall, FlowError> {
        let (Some(run), Some(at)) = (self.run.as_deref(), self.at) else {
            return Err(FlowError::InvalidConfig {
                agent: "(remote state)".into(),
                message: "a remote state's body was called outside a run".into(),
            });
        };
        let input = self
            .input_slot()
            .map(|slot| slot.to_value("(input)"))
            .transpose()?;
        Ok(crate::remote::RemoteCall {
            workflow: run.workflow.to_string(),
            run_key: run.key.to_string(),
            state: run.graph.name(at.state).to_string(),
            attempt: at.attempt,
            visit: at.visit,
            context: self.snapshot()?,
            input,
        })
    }

    /// The handle a remote attempt runs with, in the process that took it: `values` as the
    /// state's branch saw them, and a cell that keeps every write it makes (returned too).
    pub(crate) fn for_remote(
        values: Map<String, Value>,
        input: Option<Value>,
        run: RunInfo,
        (state, attempt, visit): (flow_core::StateId, u32, u32),
    ) -> (Self, Arc<BranchCell>) {
        let cell = BranchCell::remote(input.map(Slot::json));
        let mut context = Self::from_json(values);
        context.given_to = None;
        context.run = Some(Arc::new(run));
        context.at = Some(StateRun {
            state,
            attempt,
            visit,
        });
        context.branch = Some(Arc::clone(&cell));
        (context, cell)
    }

    /// Applies a remote attempt's writes to this (state's) handle, as if its body had made
    /// them here: through its branch's view where it has one.
    pub(crate) fn apply_writes(&self, image: OpsImage) -> Result<(), FlowError> {
        for (key, ops) in branch::ops_from(image).into_entries() {
            match self.overlay(&key) {
                Some(cell) => {
                    for op in ops {
                        cell.push(key.clone(), op);
                    }
                }
                None => {
                    let reducer = self.reducer(&key);
                    let mut store = self.write();
                    let current = store.get(&key).cloned();
                    match branch::apply(&key, current, &ops, reducer)? {
                        Some(value) => store.insert(key.clone(), value),
                        None => store.remove(&key),
                    };
                }
            }
            self.stream_update(&key, || self.value_json(&key));
        }
        Ok(())
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("keys", &self.keys())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_image_keeps_its_moment_while_the_context_changes() {
        let ctx = Context::new();
        ctx.set_state("count", 1u32);
        ctx.set_state("name", "a".to_string());
        let frozen = ctx.freeze();
        // Writes after the image copy the map; the image keeps what it had.
        ctx.update_typed::<u32, _>("count", |c| *c += 1).unwrap();
        ctx.remove_state("name");
        ctx.set_state("late", true);
        let image = frozen.to_checkpoint().unwrap();
        assert_eq!(image.get::<u32>("count").unwrap(), 1);
        assert_eq!(image.get::<String>("name").unwrap(), "a");
        assert!(image.raw("late").is_none());
        assert_eq!(ctx.get_state::<u32>("count").unwrap(), 2);

        // And a context restored from it decodes on read, and can be written again.
        let restored = Context::from_checkpoint(image).unwrap();
        assert_eq!(restored.get_state::<u32>("count").unwrap(), 1);
        assert!(restored.get_state::<u32>("name").is_err());
        restored.set_state("count", 5u32);
        assert_eq!(restored.keys(), ["count", "name"]);
    }

    #[test]
    fn keys_needing_escapes_and_unicode_round_trip() {
        let ctx = Context::new();
        ctx.set_state("quote\"back\\slash", 1u8);
        ctx.set_state("ünïcödé ✓", vec!["x".to_string()]);
        ctx.set_state("", 0.5f64);
        let image = ctx.freeze().to_checkpoint().unwrap();
        let json = serde_json::to_string(&image).unwrap();
        let read: CheckpointContext = serde_json::from_str(&json).unwrap();
        let restored = Context::from_checkpoint(read).unwrap();
        assert_eq!(restored.get_state::<u8>("quote\"back\\slash").unwrap(), 1);
        assert_eq!(
            restored.get_state::<Vec<String>>("ünïcödé ✓").unwrap(),
            ["x"]
        );
        assert_eq!(restored.get_state::<f64>("").unwrap(), 0.5);
    }
}
