//! The input desk of one run: pending requests with their checks and the states waiting on
//! them, recorded answers, and the audit of everything that happened.
//!
//! Touched only by runs that ask for input (its state is made on the first request): the
//! states asking and whoever answers take its lock, the coordinator only when it writes a
//! checkpoint or the report.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use flow_core::{FlowError, FxHashMap};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::{
    InputId, InputOutcome, InputProvider, InputRecord, InputRequest, PostedAnswer, Refusal, now_ms,
};
use crate::events::EventKind;
use crate::scheduler::Message;

/// Checks an answer before it is recorded: `Err` says why it is refused.
pub(crate) type Checker = Arc<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

/// One run's requests for input.
pub(crate) struct InputHub {
    desk: Mutex<Option<Box<Desk>>>,
    /// The run's coordinator, which publishes the events and checkpoints answers.
    notify: UnboundedSender<Message>,
    provider: Option<Arc<dyn InputProvider>>,
    /// The run is checkpointed: the provider hears of a request once a saved checkpoint
    /// holds it.
    durable: bool,
    /// The hubs of the runs of this run's subgraph states: their requests are pending in
    /// this run too, and answered through it.
    nested: Mutex<Vec<Weak<InputHub>>>,
    /// The hub of a `remote` state's attempt run in another process than its run's: nobody
    /// here can answer, so requests fail (see `crate::remote`).
    remote: bool,
}

#[derive(Default)]
struct Desk {
    /// Every request, in the order first asked.
    records: Vec<InputRecord>,
    by_id: FxHashMap<InputId, usize>,
    /// The states waiting for an answer, by request.
    waiting: FxHashMap<InputId, Waiter>,
    /// The next request index of each (state, visit, attempt).
    next_index: FxHashMap<(u32, u32, u32), u32>,
    /// Answers left in the checkpoint store for requests not waiting when they were read:
    /// given (after the request's checks) when their state asks.
    inbox: FxHashMap<InputId, (Value, String)>,
    /// The answers read from the store so far (by request, the posting's id), so that each
    /// posting is taken once.
    seen: FxHashMap<InputId, String>,
    /// In a checkpointed run, requests not yet in a saved checkpoint: handed to the provider
    /// once they are (so that whoever it hands them to can answer through the store).
    unannounced: Vec<InputRequest>,
    /// Those in the checkpoint being saved.
    in_save: Vec<InputRequest>,
    /// The last wait's token.
    next_token: u64,
}

struct Waiter {
    check: Checker,
    reply: oneshot::Sender<Value>,
    token: u64,
}

/// What opening a request gave.
pub(crate) enum Opened {
    /// It was answered before (in an earlier attempt or before a restore): the recorded
    /// answer.
    Answered(Value),
    /// It waits; the answer comes through `answer`.
    Waiting {
        answer: oneshot::Receiver<Value>,
        /// Identifies this wait (a later wait for the same request has another).
        token: u64,
        /// When a request restored as pending was first asked (ms since the Unix epoch).
        asked_at_ms: Option<u64>,
    },
}

impl InputHub {
    pub(crate) fn new(
        notify: UnboundedSender<Message>,
        provider: Option<Arc<dyn InputProvider>>,
        durable: bool,
    ) -> Self {
        Self {
            desk: Mutex::new(None),
            notify,
            provider,
            durable,
            nested: Mutex::default(),
            remote: false,
        }
    }

    /// The hub of a remote state's attempt: its requests fail at once.
    pub(crate) fn remote() -> Self {
        let (notify, _) = tokio::sync::mpsc::unbounded_channel();
        Self {
            remote: true,
            ..Self::new(notify, None, false)
        }
    }

    /// Whether requests fail here (see [`InputHub::remote`]).
    pub(crate) fn is_remote(&self) -> bool {
        self.remote
    }

    /// The provider told of this run's requests.
    pub(crate) fn provider(&self) -> Option<Arc<dyn InputProvider>> {
        self.provider.clone()
    }

    /// Makes the requests of `child` (the run of one of this run's subgraph states) pending
    /// in this run, and answerable through it.
    pub(crate) fn adopt(&self, child: &Arc<InputHub>) {
        let mut nested = self.nested.lock().unwrap_or_else(PoisonError::into_inner);
        nested.retain(|hub| hub.strong_count() > 0);
        nested.push(Arc::downgrade(child));
    }

    /// The hubs of subgraph runs still going.
    fn children(&self) -> Vec<Arc<InputHub>> {
        let nested = self.nested.lock().unwrap_or_else(PoisonError::into_inner);
        nested.iter().filter_map(Weak::upgrade).collect()
    }

    /// The hub that knows `id`: this one, or one of its subgraph runs' — the newest where it
    /// waits for an answer (an attempt started again asks with the same ids while its
    /// predecessor's run may still be ending), else the newest that knows it.
    fn holder(self: &Arc<Self>, id: &InputId) -> Option<Arc<InputHub>> {
        if self
            .desk()
            .as_ref()
            .is_some_and(|desk| desk.by_id.contains_key(id))
        {
            return Some(Arc::clone(self));
        }
        let known: Vec<Arc<InputHub>> = (self.children().iter().rev())
            .filter_map(|child| child.holder(id))
            .collect();
        let waiting = known.iter().find(|hub| hub.is_waiting(id));
        waiting.or(known.first()).cloned()
    }

    fn announce(self: &Arc<Self>, request: InputRequest) {
        if let Some(provider) = &self.provider {
            let answerer = InputAnswerer {
                hub: Arc::clone(self),
                id: request.id.clone(),
            };
            provider.requested(request, answerer);
        }
    }

    /// A checkpoint is being captured: the requests not yet saved go with it.
    pub(crate) fn saving(&self) {
        if self.provider.is_none() {
            return;
        }
        if let Some(desk) = self.desk().as_mut() {
            let unannounced = std::mem::take(&mut desk.unannounced);
            desk.in_save.extend(unannounced);
        }
    }

    /// The checkpoint captured last is saved: the provider hears of the requests it holds
    /// that still wait.
    pub(crate) fn saved(self: &Arc<Self>) {
        if self.provider.is_none() {
            return;
        }
        let requests: Vec<InputRequest> = {
            let mut desk = self.desk();
            let Some(desk) = desk.as_mut() else { return };
            let saved = std::mem::take(&mut desk.in_save);
            saved
                .into_iter()
                .filter(|r| desk.waiting.contains_key(&r.id))
                .collect()
        };
        for request in requests {
            self.announce(request);
        }
    }

    fn desk(&self) -> MutexGuard<'_, Option<Box<Desk>>> {
        self.desk.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The index of the next request of this state's attempt.
    pub(crate) fn next_index(&self, state: u32, visit: u32, attempt: u32) -> u32 {
        let mut desk = self.desk();
        let desk = desk.get_or_insert_with(Box::default);
        let next = desk.next_index.entry((state, visit, attempt)).or_insert(0);
        let index = *next;
        *next = next.saturating_add(1);
        index
    }

    /// Opens `request`: its recorded answer if it was answered before, else a wait (the
    /// provider, if any, is told; so are the run's events). An answer left in the store for
    /// it meanwhile is taken now, checked like any answer.
    pub(crate) fn open(self: &Arc<Self>, mut request: InputRequest, check: Checker) -> Opened {
        let (reply, answer) = oneshot::channel();
        let (token, left, restored) = {
            let mut desk = self.desk();
            let desk = desk.get_or_insert_with(Box::default);
            let mut restored = false;
            match desk.by_id.get(&request.id) {
                Some(&at) => {
                    let record = &mut desk.records[at];
                    if let InputOutcome::Answered { value, .. } = &record.outcome {
                        return Opened::Answered(value.clone());
                    }
                    // Still pending (the run was restored or suspended): asked when it was
                    // first asked, so that its timeout runs from then. Otherwise (a retry
                    // after a timeout, ...) asked anew. The history is kept either way.
                    if record.outcome == InputOutcome::Pending {
                        request.asked_at_ms = record.request.asked_at_ms;
                        restored = true;
                    }
                    record.request = request.clone();
                    record.outcome = InputOutcome::Pending;
                }
                None => {
                    desk.by_id.insert(request.id.clone(), desk.records.len());
                    desk.records.push(InputRecord {
                        request: request.clone(),
                        refusals: Vec::new(),
                        outcome: InputOutcome::Pending,
                    });
                }
            }
            desk.next_token += 1;
            let token = desk.next_token;
            desk.waiting.insert(
                request.id.clone(),
                Waiter {
                    check,
                    reply,
                    token,
                },
            );
            if self.durable && self.provider.is_some() {
                desk.unannounced.push(request.clone());
            }
            // Taken in the same step as the wait is registered: a posting read meanwhile
            // finds the request waiting.
            (token, desk.inbox.remove(&request.id), restored)
        };
        let _ = self.notify.send(Message::Input(EventKind::InputRequested {
            state: Arc::from(request.id.state.as_str()),
            id: request.id.clone(),
            prompt: request.prompt.clone(),
        }));
        let id = request.id.clone();
        let asked_at_ms = request.asked_at_ms;
        // A checkpointed run hands it out once it is saved (see `saved`).
        if !self.durable {
            self.announce(request);
        }
        if let Some((value, by)) = left {
            // Recorded, or refused (in the audit) with the request waiting on.
            let _ = self.answer(&id, value, &by);
        }
        Opened::Waiting {
            answer,
            token,
            asked_at_ms: restored.then_some(asked_at_ms),
        }
    }

    /// Takes answers read from the checkpoint store: each posting once; to a waiting request
    /// as any answer (checked, recorded or refused), else kept until its state asks. Answers
    /// to requests answered already are ignored.
    pub(crate) fn deliver_posted(&self, answers: Vec<PostedAnswer>) {
        for posted in answers {
            let waiting = {
                let mut desk = self.desk();
                let desk = desk.get_or_insert_with(Box::default);
                if desk.seen.get(&posted.id) == Some(&posted.posting) {
                    continue;
                }
                desk.seen.insert(posted.id.clone(), posted.posting.clone());
                let answered = desk.by_id.get(&posted.id).is_some_and(|&at| {
                    matches!(desk.records[at].outcome, InputOutcome::Answered { .. })
                });
                if answered {
                    continue;
                }
                let waiting = desk.waiting.contains_key(&posted.id);
                if !waiting {
                    desk.inbox
                        .insert(posted.id.clone(), (posted.value.clone(), posted.by.clone()));
                }
                waiting
            };
            if waiting {
                // A refusal is recorded in the audit (and is an event); the request waits on.
                // One that stopped waiting meanwhile keeps the answer for when it is asked.
                let (value, by) = (posted.value.clone(), posted.by.clone());
                if let Err(FlowError::InputClosed { .. }) =
                    self.answer_here(&posted.id, posted.value, &posted.by)
                {
                    let mut desk = self.desk();
                    let desk = desk.get_or_insert_with(Box::default);
                    let answered = desk.by_id.get(&posted.id).is_some_and(|&at| {
                        matches!(desk.records[at].outcome, InputOutcome::Answered { .. })
                    });
                    if !answered {
                        desk.inbox.insert(posted.id, (value, by));
                    }
                }
            }
        }
    }

    /// The runs of states waiting for an answer now: (state, visit).
    pub(crate) fn waiting_runs(&self) -> Vec<(String, u32)> {
        let desk = self.desk();
        let Some(desk) = desk.as_ref() else {
            return Vec::new();
        };
        desk.waiting
            .keys()
            .map(|id| (id.state.clone(), id.visit))
            .collect()
    }

    /// The run suspends: its states stop waiting, their requests stay pending (in the report
    /// and the checkpoint) to be answered through the store. The provider is told they are
    /// closed here.
    pub(crate) fn suspend(&self) {
        let ids: Vec<InputId> = {
            let mut desk = self.desk();
            let Some(desk) = desk.as_mut() else { return };
            desk.waiting.drain().map(|(id, _)| id).collect()
        };
        if let Some(provider) = &self.provider {
            for id in &ids {
                provider.closed(id);
            }
        }
    }

    /// Whether a state waits for `id` now.
    pub(crate) fn is_waiting(&self, id: &InputId) -> bool {
        self.desk()
            .as_ref()
            .is_some_and(|desk| desk.waiting.contains_key(id))
    }

    /// Whether any request waits for an answer.
    pub(crate) fn has_waiting(&self) -> bool {
        self.desk()
            .as_ref()
            .is_some_and(|desk| !desk.waiting.is_empty())
    }

    /// Records `value` as the answer to `id` if it passes the request's check, and hands it
    /// to the waiting state. A refused answer is kept in the audit and the request stays
    /// pending.
    pub(crate) fn answer(
        self: &Arc<Self>,
        id: &InputId,
        value: Value,
        by: &str,
    ) -> Result<(), FlowError> {
        match self.holder(id) {
            Some(hub) if !Arc::ptr_eq(&hub, self) => hub.answer_here(id, value, by),
            _ => self.answer_here(id, value, by),
        }
    }

    /// `answer`, for a request of this hub's own run.
    fn answer_here(&self, id: &InputId, value: Value, by: &str) -> Result<(), FlowError> {
        let check = {
            let mut desk = self.desk();
            let Some(desk) = desk.as_mut() else {
                return Err(unknown(id));
            };
            match desk.waiting.get(id) {
                Some(waiter) => Arc::clone(&waiter.check),
                None => return Err(closed_or_unknown(desk, id)),
            }
        };
        // Checked outside the lock: a validator is the user's code.
        let verdict = check(&value);
        let mut guard = self.desk();
        let Some(desk) = guard.as_mut() else {
            return Err(unknown(id));
        };
        let at = desk.by_id[id];
        if let Err(reason) = verdict {
            desk.records[at].refusals.push(Refusal {
                value: value.clone(),
                by: by.to_owned(),
                reason: reason.clone(),
                at_ms: now_ms(),
            });
            drop(guard);
            let _ = self.notify.send(Message::Input(EventKind::InputRefused {
                state: Arc::from(id.state.as_str()),
                id: id.clone(),
                by: by.to_owned(),
                reason: reason.clone(),
            }));
            return Err(FlowError::InvalidAnswer {
                id: id.to_string(),
                answer: value.to_string(),
                reason,
            });
        }
        // Another answer may have won while the check ran.
        let Some(waiter) = desk.waiting.remove(id) else {
            return Err(closed_or_unknown(desk, id));
        };
        desk.records[at].outcome = InputOutcome::Answered {
            value: value.clone(),
            by: by.to_owned(),
            at_ms: now_ms(),
        };
        // Sent before the lock is released: a timeout closing the request after this finds
        // the answer waiting for it. (The state may be gone, cancelled meanwhile: the answer
        // is recorded all the same, and a state asking again gets it.)
        let _ = waiter.reply.send(value);
        drop(guard);
        let _ = self.notify.send(Message::Input(EventKind::InputAnswered {
            state: Arc::from(id.state.as_str()),
            id: id.clone(),
            by: by.to_owned(),
        }));
        if let Some(provider) = &self.provider {
            provider.closed(id);
        }
        Ok(())
    }

    /// The wait `token` for `id` ended without an answer: it timed out (with the default used,
    /// if any) or was withdrawn. Nothing happens if it was answered meanwhile, or if another
    /// wait for the request has begun.
    pub(crate) fn close(&self, id: &InputId, token: u64, outcome: InputOutcome) {
        {
            let mut desk = self.desk();
            let Some(desk) = desk.as_mut() else { return };
            // Only its own wait: a later attempt may wait for the same request now.
            if desk
                .waiting
                .get(id)
                .is_none_or(|waiter| waiter.token != token)
            {
                return;
            }
            desk.waiting.remove(id);
            let at = desk.by_id[id];
            desk.records[at].outcome = outcome.clone();
        }
        let state = Arc::from(id.state.as_str());
        let event = match outcome {
            InputOutcome::TimedOut { default } => EventKind::InputTimedOut {
                state,
                id: id.clone(),
                used_default: default.is_some(),
            },
            _ => EventKind::InputWithdrawn {
                state,
                id: id.clone(),
            },
        };
        let _ = self.notify.send(Message::Input(event));
        if let Some(provider) = &self.provider {
            provider.closed(id);
        }
    }

    /// Withdraws the requests waiting for an answer (of `state` only, if given): their state
    /// was cancelled or the run stopped. The provider is told; the events are returned for
    /// the coordinator to publish in order.
    pub(crate) fn withdraw(&self, state: Option<&str>) -> Vec<EventKind> {
        let withdrawn: Vec<InputId> = {
            let mut desk = self.desk();
            let Some(desk) = desk.as_mut() else {
                return Vec::new();
            };
            let ids: Vec<InputId> = desk
                .waiting
                .keys()
                .filter(|id| state.is_none_or(|state| id.state == state))
                .cloned()
                .collect();
            for id in &ids {
                desk.waiting.remove(id);
                let at = desk.by_id[id];
                desk.records[at].outcome = InputOutcome::Withdrawn;
            }
            // In the order asked, for the events.
            let mut ids = ids;
            ids.sort_by_key(|id| desk.by_id[id]);
            ids
        };
        if let Some(provider) = &self.provider {
            for id in &withdrawn {
                provider.closed(id);
            }
        }
        withdrawn
            .into_iter()
            .map(|id| EventKind::InputWithdrawn {
                state: Arc::from(id.state.as_str()),
                id,
            })
            .collect()
    }

    /// The requests waiting for an answer, in the order asked.
    pub(crate) fn pending(&self) -> Vec<InputRequest> {
        let mut pending: Vec<InputRequest> = {
            let desk = self.desk();
            desk.as_ref().map_or_else(Vec::new, |desk| {
                desk.records
                    .iter()
                    .filter(|r| desk.waiting.contains_key(&r.request.id))
                    .map(|r| r.request.clone())
                    .collect()
            })
        };
        // Then those of its subgraph runs (in the order they started).
        for child in self.children() {
            pending.extend(child.pending());
        }
        pending
    }

    /// Every request and what happened to it, in the order asked.
    pub(crate) fn records(&self) -> Vec<InputRecord> {
        self.desk()
            .as_ref()
            .map_or_else(Vec::new, |desk| desk.records.clone())
    }

    /// Takes the records of a checkpoint: answered requests are answered at once when asked
    /// again; pending ones wait for their state to ask again.
    pub(crate) fn restore(&self, records: Vec<InputRecord>) {
        if records.is_empty() {
            return;
        }
        let mut desk = self.desk();
        let desk = desk.get_or_insert_with(Box::default);
        desk.by_id = records
            .iter()
            .enumerate()
            .map(|(at, r)| (r.request.id.clone(), at))
            .collect();
        desk.records = records;
    }
}

fn unknown(id: &InputId) -> FlowError {
    FlowError::UnknownInput {
        id: id.to_string(),
        run_key: id.run_key.clone(),
    }
}

fn closed_or_unknown(desk: &Desk, id: &InputId) -> FlowError {
    let Some(&at) = desk.by_id.get(id) else {
        return unknown(id);
    };
    let how = match &desk.records[at].outcome {
        InputOutcome::Answered { by, .. } => format!("answered by {by}"),
        InputOutcome::TimedOut { default: Some(_) } => "timed out; its default was used".into(),
        InputOutcome::TimedOut { default: None } => "timed out".into(),
        // Pending but not waiting: restored from a checkpoint, its state not asking yet.
        InputOutcome::Pending => "its state is not waiting for it now".into(),
        InputOutcome::Withdrawn => "withdrawn: its state stopped waiting".into(),
    };
    FlowError::InputClosed {
        id: id.to_string(),
        how,
    }
}

/// Answers one input request: handed to an [`InputProvider`] with each request.
#[derive(Clone)]
pub struct InputAnswerer {
    hub: Arc<InputHub>,
    id: InputId,
}

impl InputAnswerer {
    /// The request this answers.
    pub fn id(&self) -> &InputId {
        &self.id
    }

    /// Answers, as `by` (a name kept in the audit: a person, a program). `Err` with
    /// `FlowError::InvalidAnswer` (and the reason) when the request's check refuses it; the
    /// request is then still pending, so the provider may ask again.
    pub fn answer(&self, by: &str, value: impl Serialize) -> Result<(), FlowError> {
        let value = to_value(&self.id, value)?;
        self.hub.answer(&self.id, value, by)
    }
}

/// An answer as JSON.
pub(crate) fn to_value(id: &InputId, value: impl Serialize) -> Result<Value, FlowError> {
    serde_json::to_value(value).map_err(|error| FlowError::InvalidAnswer {
        id: id.to_string(),
        answer: "(not representable as JSON)".into(),
        reason: error.to_string(),
    })
}
