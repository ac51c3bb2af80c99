//! Input providers that come with the crate: a channel, for programs and tests, and the
//! terminal.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use flow_core::FlowError;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::{InputAnswerer, InputId, InputProvider, InputRequest};

/// A request handed out by a [`ChannelProvider`], with the means to answer it.
pub struct PendingInput {
    /// The request.
    pub request: InputRequest,
    answerer: InputAnswerer,
}

impl PendingInput {
    /// Answers it, as `by`: `Err(FlowError::InvalidAnswer)` with the reason when its check
    /// refuses the answer (it is then still pending: answer again), `Err(FlowError::InputClosed)`
    /// when it is no longer waiting.
    pub fn answer(&self, by: &str, value: impl Serialize) -> Result<(), FlowError> {
        self.answerer.answer(by, value)
    }
}

/// Hands each request to a channel: for programs that answer requests themselves, and tests.
///
/// ```no_run
/// # use flow_runtime::{Agent, ChannelProvider};
/// # async fn demo(mut agent: Agent) -> Result<(), flow_core::FlowError> {
/// let (provider, mut requests) = ChannelProvider::new();
/// agent.input_provider(provider);
/// let handle = agent.start()?;
/// while let Some(pending) = requests.recv().await {
///     pending.answer("reviewer bot", "approve")?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ChannelProvider {
    sender: UnboundedSender<PendingInput>,
}

/// The requests a [`ChannelProvider`] received, in the order they were made.
pub struct InputRequests {
    receiver: UnboundedReceiver<PendingInput>,
}

impl ChannelProvider {
    /// A provider and the receiving end of its requests.
    pub fn new() -> (Self, InputRequests) {
        let (sender, receiver) = unbounded_channel();
        (Self { sender }, InputRequests { receiver })
    }
}

impl InputRequests {
    /// The next request; `None` once every provider clone is gone.
    pub async fn recv(&mut self) -> Option<PendingInput> {
        self.receiver.recv().await
    }

    /// The next request if one is waiting.
    pub fn try_recv(&mut self) -> Option<PendingInput> {
        self.receiver.try_recv().ok()
    }
}

impl InputProvider for ChannelProvider {
    fn requested(&self, request: InputRequest, answerer: InputAnswerer) {
        // Nobody listens any more: the request waits for another answerer or its timeout.
        let _ = self.sender.send(PendingInput { request, answerer });
    }
}

/// Asks on a terminal: shows each request's prompt (with its default and its type when it is
/// not text), reads one line as the answer (text as it is; anything else as JSON) and, when the
/// answer is refused, says why and asks again, up to a set number of times
/// ([`TerminalProvider::attempts`], default 3). Requests are asked one at a time, in the order
/// made; one closed meanwhile (answered elsewhere, timed out) is skipped.
///
/// Reading happens on a thread of its own (a blocked read of standard input holds neither a
/// tokio worker nor the runtime's shutdown). At the end of the input, nothing more is read:
/// the remaining requests wait for another answerer or their timeout.
#[derive(Clone)]
pub struct TerminalProvider {
    inner: Arc<Terminal>,
}

struct Terminal {
    jobs: Mutex<Option<mpsc::Sender<(InputRequest, InputAnswerer)>>>,
    io: Mutex<Option<Io>>,
    closed: Arc<Mutex<HashSet<InputId>>>,
    attempts: u32,
    name: String,
}

type Io = (Box<dyn BufRead + Send>, Box<dyn Write + Send>);

impl TerminalProvider {
    /// Reads standard input, writes to standard output; answers as "terminal".
    pub fn new() -> Self {
        Self::with_io(std::io::BufReader::new(std::io::stdin()), std::io::stdout())
    }

    /// Reads answers from `input` and writes prompts to `output` (for tests, or a terminal
    /// opened elsewhere).
    pub fn with_io(
        input: impl BufRead + Send + 'static,
        output: impl Write + Send + 'static,
    ) -> Self {
        Self::build(Box::new(input), Box::new(output), 3, "terminal".into())
    }

    fn build(
        input: Box<dyn BufRead + Send>,
        output: Box<dyn Write + Send>,
        attempts: u32,
        name: String,
    ) -> Self {
        Self {
            inner: Arc::new(Terminal {
                jobs: Mutex::new(None),
                io: Mutex::new(Some((input, output))),
                closed: Arc::default(),
                attempts,
                name,
            }),
        }
    }

    /// Asks again after a refused answer up to `attempts` times in all (at least 1); then
    /// leaves the request pending for another answerer or its timeout.
    pub fn attempts(self, attempts: u32) -> Self {
        self.rebuild(|terminal| terminal.attempts = attempts.max(1))
    }

    /// The name answers are recorded under (default "terminal"), e.g. the user's login.
    pub fn answering_as(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.rebuild(move |terminal| terminal.name = name)
    }

    fn rebuild(self, change: impl FnOnce(&mut Terminal)) -> Self {
        let io = self
            .inner
            .io
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut terminal = Terminal {
            jobs: Mutex::new(None),
            io: Mutex::new(io),
            closed: Arc::default(),
            attempts: self.inner.attempts,
            name: self.inner.name.clone(),
        };
        change(&mut terminal);
        Self {
            inner: Arc::new(terminal),
        }
    }
}

impl Default for TerminalProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl InputProvider for TerminalProvider {
    fn requested(&self, request: InputRequest, answerer: InputAnswerer) {
        // Asked again (a retry after a timeout, a continued run): open again.
        self.inner
            .closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&request.id);
        let mut jobs = self
            .inner
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if jobs.is_none() {
            // The first request starts the reading thread.
            let Some(io) = self
                .inner
                .io
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            else {
                return;
            };
            let (sender, receiver) = mpsc::channel();
            let (closed, attempts, name) = (
                Arc::clone(&self.inner.closed),
                self.inner.attempts,
                self.inner.name.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name("fluffy-flow terminal input".into())
                .spawn(move || ask_on_terminal(io, &receiver, &closed, attempts, &name));
            if spawned.is_err() {
                return; // the request waits for another answerer or its timeout
            }
            *jobs = Some(sender);
        }
        if let Some(jobs) = jobs.as_ref() {
            let _ = jobs.send((request, answerer));
        }
    }

    fn closed(&self, id: &InputId) {
        self.inner
            .closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone());
    }
}

/// The terminal's thread: one request at a time, until the input ends or the provider goes.
fn ask_on_terminal(
    (mut input, mut output): Io,
    jobs: &mpsc::Receiver<(InputRequest, InputAnswerer)>,
    closed: &Mutex<HashSet<InputId>>,
    attempts: u32,
    name: &str,
) {
    let is_closed = |id: &InputId| {
        closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    };
    while let Ok((request, answerer)) = jobs.recv() {
        if is_closed(&request.id) {
            continue;
        }
        let text = request.schema.get("type").and_then(Value::as_str) == Some("string");
        for attempt in 1..=attempts {
            let _ = write!(output, "{}", request.prompt);
            if !text {
                let _ = write!(output, " [JSON]");
            }
            if let Some(default) = &request.default {
                let _ = write!(output, " (default: {})", shown(default));
            }
            let _ = write!(output, " > ");
            let _ = output.flush();
            let mut line = String::new();
            match input.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    // The input ended: nothing more can be answered here.
                    let _ = writeln!(
                        output,
                        "\n(no more input: the request waits for another answer or its timeout)"
                    );
                    let _ = output.flush();
                    return;
                }
                Ok(_) => {}
            }
            if is_closed(&request.id) {
                let _ = writeln!(output, "(this request was closed meanwhile)");
                break;
            }
            let line = line.trim_end_matches(['\n', '\r']);
            let value = if text {
                Ok(Value::String(line.to_owned()))
            } else {
                serde_json::from_str::<Value>(line).map_err(|error| format!("not JSON: {error}"))
            };
            let result = value.and_then(|value| match answerer.answer(name, value) {
                Ok(()) => Ok(()),
                Err(FlowError::InvalidAnswer { reason, .. }) => Err(reason),
                Err(other) => {
                    let _ = writeln!(output, "{other}");
                    Ok(()) // closed or unknown: nothing more to ask
                }
            });
            match result {
                Ok(()) => break,
                Err(reason) if attempt < attempts => {
                    let _ = writeln!(output, "refused: {reason}; try again");
                }
                Err(reason) => {
                    let _ = writeln!(
                        output,
                        "refused: {reason}; giving up after {attempts} attempts (the request stays pending)"
                    );
                }
            }
        }
    }
}

fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
