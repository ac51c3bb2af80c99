//! The attempts of a checkpointed run, with their times: when each became ready, started and
//! ended, and how it ended. Kept in the run's checkpoints (the latest [`ATTEMPT_HISTORY`]) for
//! timelines: `fluffy runs steps`, the dashboard's chart. A run without checkpoints keeps none.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flow_core::FxHashMap;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How many attempts a run's checkpoints keep (the latest; older ones are dropped): each
/// checkpoint carries them, so a long run's checkpoints stay small.
pub const ATTEMPT_HISTORY: usize = 256;

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// Still running when the checkpoint was taken.
    Running,
    /// The state returned its transition.
    Completed,
    /// The state returned an error (retried, handled or failing the run: the next attempt,
    /// or the run, says which).
    Failed,
    /// The state panicked.
    Panicked,
    /// The state ran past its timeout.
    TimedOut,
    /// An admission gate refused it (an open breaker, a full bulkhead, a spent quota): the
    /// state was not called.
    Refused,
    /// Stopped before it ended: the run stopped, or a higher priority took its resources
    /// (then it runs again from its start).
    Cancelled,
}

/// One attempt of a state, its times in milliseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The state.
    pub state: String,
    /// Which run of the state (1: its first).
    pub visit: u32,
    /// Which attempt of that run (1: the first, more after retries).
    pub attempt: u32,
    /// When it became ready: from here it waited for its turn (a free slot, states of
    /// higher priority first), then, from `gated_at_ms` if set, at its admission gates until
    /// `started_at_ms` (a wait for a slot after a gate let it out counts there too).
    pub ready_at_ms: u64,
    /// When it first had to wait at an admission gate (the resource pool, a rate limit, a
    /// primitive); `None` when it never waited at one (checkpoint format 6; not written when
    /// `None`, as most attempts never wait at a gate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gated_at_ms: Option<u64>,
    /// When it started.
    pub started_at_ms: u64,
    /// When it ended; `None` while running.
    pub ended_at_ms: Option<u64>,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// Its error, for the attempts that did not complete.
    pub error: Option<String>,
}

/// One attempt as the coordinator keeps it: its state by index (a name is written only when
/// a checkpoint is taken), its times on the run's clock.
struct Entry {
    state: u32,
    attempt: (u32, u32),
    ready: Instant,
    gated: Option<Instant>,
    started: Instant,
    ended: Option<Instant>,
    outcome: AttemptOutcome,
    error: Option<String>,
}

/// Where an entry's name comes from: the run's graph, or a restored record's own.
enum Kept {
    Entry(Entry),
    Restored(AttemptRecord),
}

/// The history of one run, kept by its coordinator (never shared).
pub(crate) struct AttemptLog {
    kept: VecDeque<Kept>,
    /// When attempts now running first waited at a gate, by state, attempt and visit (only
    /// those that did).
    gated: FxHashMap<(u32, u32, u32), Instant>,
    /// The wall clock at `origin`: instants of the run become wall times from it.
    wall: SystemTime,
    origin: Instant,
}

impl AttemptLog {
    /// A log that goes on from `restored` (a restored run's checkpoint's attempts).
    pub(crate) fn new(restored: Vec<AttemptRecord>) -> Self {
        let mut kept: VecDeque<Kept> = restored.into_iter().map(Kept::Restored).collect();
        while kept.len() > ATTEMPT_HISTORY {
            kept.pop_front();
        }
        Self {
            kept,
            gated: FxHashMap::default(),
            wall: SystemTime::now(),
            origin: Instant::now(),
        }
    }

    /// `at` as milliseconds since the Unix epoch.
    fn ms(&self, at: Instant) -> u64 {
        let wall = if at >= self.origin {
            self.wall.checked_add(at - self.origin)
        } else {
            self.wall.checked_sub(self.origin - at)
        };
        wall.map_or(0, epoch_ms)
    }

    /// The attempt (`(attempt, visit)`) of the state with index `state`, starting now, first
    /// had to wait at a gate at `since`.
    pub(crate) fn gated(&mut self, state: u32, (attempt, visit): (u32, u32), since: Instant) {
        self.gated.insert((state, attempt, visit), since);
    }

    /// An attempt (`(attempt, visit)`) of the state with index `state` ended at `ended`;
    /// `times`: when it became ready, and when it started.
    pub(crate) fn ended(
        &mut self,
        state: u32,
        attempt: (u32, u32),
        (ready, started): (Instant, Instant),
        ended: Instant,
        (outcome, error): (AttemptOutcome, Option<String>),
    ) {
        if self.kept.len() == ATTEMPT_HISTORY {
            self.kept.pop_front();
        }
        let gated = if self.gated.is_empty() {
            None
        } else {
            self.gated.remove(&(state, attempt.0, attempt.1))
        };
        self.kept.push_back(Kept::Entry(Entry {
            state,
            attempt,
            ready,
            gated,
            started,
            ended: Some(ended),
            outcome,
            error,
        }));
    }

    fn record(&self, entry: &Entry, name: &str) -> AttemptRecord {
        let (attempt, visit) = entry.attempt;
        AttemptRecord {
            state: name.to_owned(),
            visit,
            attempt,
            ready_at_ms: self.ms(entry.ready.min(entry.started)),
            gated_at_ms: entry
                .gated
                .map(|gated| self.ms(gated.clamp(entry.ready.min(entry.started), entry.started))),
            started_at_ms: self.ms(entry.started),
            ended_at_ms: entry.ended.map(|ended| self.ms(ended)),
            outcome: entry.outcome,
            error: entry.error.clone(),
        }
    }

    /// What a checkpoint keeps: the ended attempts, then `running` (state index, attempt,
    /// ready and start) as still running; the latest [`ATTEMPT_HISTORY`] in all. `name`
    /// names a state by its index.
    pub(crate) fn snapshot<'a>(
        &self,
        name: impl Fn(u32) -> &'a str,
        running: impl Iterator<Item = (u32, (u32, u32), (Instant, Instant))>,
    ) -> Vec<AttemptRecord> {
        let mut records: Vec<AttemptRecord> = self
            .kept
            .iter()
            .map(|kept| match kept {
                Kept::Entry(entry) => self.record(entry, name(entry.state)),
                Kept::Restored(record) => record.clone(),
            })
            .collect();
        records.extend(running.map(|(state, attempt, (ready, started))| {
            let entry = Entry {
                state,
                attempt,
                ready,
                gated: self.gated.get(&(state, attempt.0, attempt.1)).copied(),
                started,
                ended: None,
                outcome: AttemptOutcome::Running,
                error: None,
            };
            self.record(&entry, name(state))
        }));
        let excess = records.len().saturating_sub(ATTEMPT_HISTORY);
        records.drain(..excess);
        records
    }
}

/// `at` in milliseconds since the Unix epoch (0 before it, `u64::MAX` past what fits): the
/// unit of the times in an [`AttemptRecord`] and a [`super::CancelRecord`].
pub fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// How long `record` waited for its turn, then for its resources (rate limits,
/// primitives), and how long it ran (until `now_ms` if it still runs).
pub fn attempt_times(record: &AttemptRecord, now_ms: u64) -> AttemptTimes {
    let gated = record.gated_at_ms.unwrap_or(record.started_at_ms).clamp(
        record.ready_at_ms,
        record.started_at_ms.max(record.ready_at_ms),
    );
    let ran = record
        .ended_at_ms
        .unwrap_or(now_ms)
        .saturating_sub(record.started_at_ms);
    AttemptTimes {
        queued: Duration::from_millis(gated.saturating_sub(record.ready_at_ms)),
        gated: Duration::from_millis(record.started_at_ms.saturating_sub(gated)),
        ran: Duration::from_millis(ran),
    }
}

/// An attempt's time, apart ([`attempt_times`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptTimes {
    /// Ready, waiting for its turn: a free slot, states of higher priority first.
    pub queued: Duration,
    /// From its first wait at an admission gate (the resource pool, a rate limit, a
    /// primitive) until it started.
    pub gated: Duration,
    /// Running.
    pub ran: Duration,
}
