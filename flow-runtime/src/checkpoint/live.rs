//! The durable runs of this process, by store, workflow and key: what reaches a run that runs
//! here, for a cancel request (`CheckpointStore::cancel_run`) and for an answer given through
//! its store (`CheckpointStore::answer`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError, Weak};

use tokio_util::sync::CancellationToken;

use super::{CancelRecord, CheckpointStore};
use crate::input::InputHub;

/// What reaches a durable run that runs in this process.
pub(crate) struct CancelSlot {
    /// Stops it.
    token: CancellationToken,
    /// The cancel request that stopped it (the first).
    request: OnceLock<CancelRecord>,
    /// Its input requests, from its coordinator's start until it concludes.
    inputs: Mutex<Weak<InputHub>>,
    /// Its last checkpoint is saved (see [`ListedRun::conclude`]): a request no longer stops
    /// it, and is made through its store instead. The lock orders a request against the
    /// conclusion, so that each request is either seen by the run or made to its checkpoint.
    concluded: Mutex<bool>,
}

/// A durable run: its store (as [`CheckpointStore::describe`] names it: the same key in two
/// stores is two runs), workflow and key.
type RunName = (String, String, String);

/// The runs listed under each name (one, unless a program runs one key twice at once).
type Listing = HashMap<RunName, Vec<Weak<CancelSlot>>>;

/// The durable runs of this process. Written once when a run starts and once when it ends,
/// never per event.
static LISTED: LazyLock<Mutex<Listing>> = LazyLock::new(Mutex::default);

fn listing() -> std::sync::MutexGuard<'static, Listing> {
    LISTED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps a durable run reachable in this process (by [`CheckpointStore::cancel_run`] and
/// [`CheckpointStore::answer`]) while it is held: from before `run_durable` reads the run's latest checkpoint (so that a request
/// made while it starts reaches it) to the end of its coordinator.
pub(crate) struct ListedRun {
    key: RunName,
    slot: Arc<CancelSlot>,
}

impl ListedRun {
    /// Lists the run `run` of `workflow` in `store`, stopped through `token` (the run's), or
    /// through a token of its own that the run is then given (see [`Self::token`]).
    pub(crate) fn register(
        store: &dyn CheckpointStore,
        workflow: &str,
        run: &str,
        token: Option<CancellationToken>,
    ) -> Self {
        let slot = Arc::new(CancelSlot {
            token: token.unwrap_or_default(),
            request: OnceLock::new(),
            inputs: Mutex::default(),
            concluded: Mutex::new(false),
        });
        let key = (store.describe(), workflow.to_owned(), run.to_owned());
        let mut listing = listing();
        let listed = listing.entry(key.clone()).or_default();
        listed.retain(|slot| slot.strong_count() > 0);
        listed.push(Arc::downgrade(&slot));
        drop(listing);
        Self { key, slot }
    }

    /// What stops the run: a request cancels it.
    pub(crate) fn token(&self) -> CancellationToken {
        self.slot.token.clone()
    }

    /// The request that cancelled the run, if one did.
    pub(crate) fn request(&self) -> Option<&CancelRecord> {
        self.slot.request.get()
    }

    /// Its last checkpoint is saved: from now on a cancel request passes it by (and is made
    /// to that checkpoint). The request that came before, if one did.
    pub(crate) fn conclude(&self) -> Option<&CancelRecord> {
        *self
            .slot
            .concluded
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.slot.request.get()
    }

    /// From now on, answers given through its store in this process go to `inputs` at once
    /// (`None`: to the store, as the run concludes).
    pub(crate) fn answer_through(&self, inputs: Option<&Arc<InputHub>>) {
        *self
            .slot
            .inputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            inputs.map_or_else(Weak::new, Arc::downgrade);
    }
}

impl Drop for ListedRun {
    fn drop(&mut self) {
        let mut listing = listing();
        if let Some(listed) = listing.get_mut(&self.key) {
            // Only its own listing: another run of the same key may be listed too.
            listed.retain(|slot| {
                slot.strong_count() > 0 && !std::ptr::eq(slot.as_ptr(), Arc::as_ptr(&self.slot))
            });
            if listed.is_empty() {
                listing.remove(&self.key);
            }
        }
    }
}

/// Whether the durable run `run` of `workflow` in `store` runs in this process now (started by
/// `run_durable`, `resume_durable` or a worker, not yet ended): what a dashboard asks before it
/// continues a run, so that one run never goes on twice side by side.
pub fn runs_in_this_process(store: &dyn CheckpointStore, workflow: &str, run: &str) -> bool {
    listing()
        .get(&(store.describe(), workflow.to_owned(), run.to_owned()))
        .is_some_and(|listed| listed.iter().any(|slot| slot.strong_count() > 0))
}

/// Stops the durable run `run` of `workflow` in `store` if it runs in this process, keeping
/// `record` for its last checkpoint; whether it did. What [`CheckpointStore::cancel_run`] does
/// first, and what a worker does when asked through its store.
pub fn cancel_in_this_process(
    store: &dyn CheckpointStore,
    workflow: &str,
    run: &str,
    record: &CancelRecord,
) -> bool {
    stop_live(&store.describe(), workflow, run, record)
}

/// Stops the runs `run` of `workflow` in the store `store` names that run in this process and
/// have not saved their last checkpoint; whether there was one.
pub(super) fn stop_live(store: &str, workflow: &str, run: &str, record: &CancelRecord) -> bool {
    let slots: Vec<Arc<CancelSlot>> = listing()
        .get(&(store.to_owned(), workflow.to_owned(), run.to_owned()))
        .map(|listed| listed.iter().filter_map(Weak::upgrade).collect())
        .unwrap_or_default();
    let mut reached = false;
    for slot in &slots {
        let concluded = slot
            .concluded
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !*concluded {
            // The first request is the one kept.
            let _ = slot.request.set(record.clone());
            slot.token.cancel();
            reached = true;
        }
    }
    reached
}

/// The input requests of the durable run `run` of `workflow` in the store `store` names, if it
/// runs in this process and its coordinator has started.
pub(crate) fn live_inputs(store: &str, workflow: &str, run: &str) -> Option<Arc<InputHub>> {
    listing()
        .get(&(store.to_owned(), workflow.to_owned(), run.to_owned()))?
        .iter()
        .filter_map(Weak::upgrade)
        .find_map(|slot| {
            slot.inputs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .upgrade()
        })
}
