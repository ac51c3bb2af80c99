//! Human input: requests a state makes while it runs (`ctx.human_input(..)`, `ctx.ask::<T>(..)`),
//! answered from code (`handle.answer`), a provider (a channel, the terminal) or another
//! process (through the checkpoint store).
//!
//! Each request has a stable id: the run's key, the state, its visit and the index of the
//! call within the state's attempt, so that a state run again (after a retry, a restore or a
//! crash) asks the same requests again, and a request answered before gets its recorded answer
//! at once. An answer is checked (type and validator) before it is recorded; an answer to an
//! unknown or closed request is an error. Every request, refusal and answer is kept for the
//! run's report and its checkpoints.

mod ask;
mod hub;
mod providers;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use ask::{Ask, HumanInput};
pub(crate) use hub::{InputHub, to_value};
pub use providers::{ChannelProvider, InputRequests, PendingInput, TerminalProvider};

/// How long a request waits for an answer when it is given no timeout: one hour. Waiting
/// forever is `.no_timeout()`, said explicitly.
pub const DEFAULT_INPUT_TIMEOUT: Duration = Duration::from_secs(3600);

/// The stable id of an input request: the run's key, the state, the state's visit (1 for its
/// first run in the run, more in a loop) and the index of the request among those the state's
/// attempt made (0 for the first).
///
/// Its text form is `run_key/state/visit/index`, with `%` and `/` in the key and the state
/// written `%25` and `%2F`; [`InputId::from_str`] reads it back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InputId {
    /// The run's key in checkpoint stores.
    pub run_key: String,
    /// The state that asks.
    pub state: String,
    /// Which visit of the state.
    pub visit: u32,
    /// Which request of the state's attempt.
    pub index: u32,
}

impl fmt::Display for InputId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            escape(&self.run_key),
            escape(&self.state),
            self.visit,
            self.index
        )
    }
}

impl FromStr for InputId {
    type Err = flow_core::FlowError;

    /// Reads the text form (`run_key/state/visit/index`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || flow_core::FlowError::UnknownInput {
            id: text.to_owned(),
            run_key: "(none: the id does not read as run_key/state/visit/index)".to_owned(),
        };
        let mut parts = text.split('/');
        let (Some(run_key), Some(state), Some(visit), Some(index), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        Ok(Self {
            run_key: unescape(run_key).ok_or_else(bad)?,
            state: unescape(state).ok_or_else(bad)?,
            visit: visit.parse().map_err(|_| bad())?,
            index: index.parse().map_err(|_| bad())?,
        })
    }
}

fn escape(text: &str) -> String {
    text.replace('%', "%25").replace('/', "%2F")
}

fn unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("%25") => out.push('%'),
            Some("%2F") => out.push('/'),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// A request for input, as the person (or program) answering it sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRequest {
    /// Its stable id.
    pub id: InputId,
    /// The workflow.
    pub workflow: String,
    /// What to ask.
    pub prompt: String,
    /// The JSON Schema of the answer (`{"type": "string"}` for `human_input`), so that a UI
    /// can render a form.
    pub schema: Value,
    /// When it was asked, in milliseconds since the Unix epoch.
    pub asked_at_ms: u64,
    /// How long it waits for an answer (`None`: forever).
    pub timeout: Option<Duration>,
    /// What is used if nobody answers in time.
    pub default: Option<Value>,
}

/// An answer that was refused, kept for the audit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// The answer given.
    pub value: Value,
    /// Who gave it (the name the provider or caller gave).
    pub by: String,
    /// Why it was refused.
    pub reason: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Where an input request stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum InputOutcome {
    /// Waiting for an answer.
    Pending,
    /// Answered: the recorded value, who answered and when (ms since the Unix epoch).
    Answered {
        /// The answer.
        value: Value,
        /// Who gave it.
        by: String,
        /// When.
        at_ms: u64,
    },
    /// Nobody answered in time; the default was used if there was one (else the attempt
    /// failed with `FlowError::InputTimeout`).
    TimedOut {
        /// The default used.
        default: Option<Value>,
    },
    /// The state stopped waiting before an answer came (cancelled, or the run stopped).
    Withdrawn,
}

/// An answer left in a checkpoint store for a durable run (see
/// [`crate::CheckpointStore::answer`] and [`crate::AnswerInbox`]): the run picks it up, checks
/// it and records it (or records its refusal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostedAnswer {
    /// The request it answers.
    pub id: InputId,
    /// The answer.
    pub value: Value,
    /// Who gave it.
    pub by: String,
    /// When it was posted, in milliseconds since the Unix epoch (a later answer to the same
    /// request replaces an earlier one).
    pub at_ms: u64,
    /// What tells this posting from any other (the process, the instant, a counter): a run
    /// takes each posting once.
    #[serde(default)]
    pub posting: String,
}

impl PostedAnswer {
    /// `by`'s answer `value` to `id`, posted now.
    pub fn new(id: InputId, value: Value, by: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            id,
            value,
            by: by.to_owned(),
            at_ms: now_ms(),
            posting: format!("{}-{nanos}-{count}", std::process::id()),
        }
    }
}

/// One input request with everything that happened to it: the audit trail kept in the
/// run's report, its checkpoints and (as they happen) its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRecord {
    /// The request.
    pub request: InputRequest,
    /// Answers refused before it was answered, oldest first.
    pub refusals: Vec<Refusal>,
    /// Where it stands.
    pub outcome: InputOutcome,
}

/// Receives the input requests of the runs of an agent it is given to
/// (`Agent::input_provider`), and answers them through the [`InputAnswerer`] it is handed.
///
/// Called from the run's tasks: hand each request to a task or a channel rather than
/// blocking in the call.
pub trait InputProvider: Send + Sync + 'static {
    /// A request was made; answer it with `answerer` (now or later, from any thread). Called
    /// from the run's own tasks (the asking state's, or, for a checkpointed run, the run's
    /// coordinator once the request is saved): hand the request on rather than block here.
    fn requested(&self, request: InputRequest, answerer: InputAnswerer);

    /// A request is no longer waiting (answered elsewhere, timed out, or withdrawn): stop
    /// asking for it.
    fn closed(&self, id: &InputId) {
        let _ = id;
    }
}

pub use hub::InputAnswerer;

/// Milliseconds since the Unix epoch, for the audit.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back_from_their_text_whatever_the_names_hold() {
        let id = InputId {
            run_key: "nightly/2026%12".into(),
            state: "review/legal".into(),
            visit: 3,
            index: 1,
        };
        let text = id.to_string();
        assert_eq!(text, "nightly%2F2026%2512/review%2Flegal/3/1");
        assert_eq!(text.parse::<InputId>().unwrap(), id);
        assert!("a/b/c".parse::<InputId>().is_err());
        assert!("a/b/1/x".parse::<InputId>().is_err());
        assert!("a%zz/b/1/2".parse::<InputId>().is_err());
    }
}
