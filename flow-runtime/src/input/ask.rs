//! Asking from inside a state: `ctx.human_input(prompt)` for text, `ctx.ask::<T>(prompt)` for
//! any serde type; both are builders awaited for the answer.

use std::fmt::Display;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flow_core::FlowError;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::hub::{Checker, InputHub, Opened};
use super::{DEFAULT_INPUT_TIMEOUT, InputId, InputOutcome, InputRequest, now_ms};
use crate::context::Context;

/// A user's check of an answer: `Err` says why it is refused.
type Validator<T> = Arc<dyn Fn(&T) -> Result<(), String> + Send + Sync>;

/// A request for text, made by [`Context::human_input`]; await it for the answer.
#[must_use = "a request does nothing until it is awaited"]
pub struct HumanInput<'a> {
    ctx: &'a Context,
    prompt: String,
    timeout: Option<Duration>,
    validator: Option<Validator<str>>,
    default: Option<String>,
}

impl<'a> HumanInput<'a> {
    pub(crate) fn new(ctx: &'a Context, prompt: String) -> Self {
        Self {
            ctx,
            prompt,
            timeout: Some(DEFAULT_INPUT_TIMEOUT),
            validator: None,
            default: None,
        }
    }

    /// Waits at most this long (default [`DEFAULT_INPUT_TIMEOUT`]); then the default is used
    /// if there is one, else the attempt fails with `FlowError::InputTimeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Waits for an answer however long it takes.
    pub fn no_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// Refuses answers `check` rejects, before they are recorded: the answerer gets
    /// `FlowError::InvalidAnswer` with the reason, and the request stays pending.
    pub fn validator<F, E>(mut self, check: F) -> Self
    where
        F: Fn(&str) -> Result<(), E> + Send + Sync + 'static,
        E: Display,
    {
        self.validator = Some(Arc::new(move |text| {
            check(text).map_err(|reason| reason.to_string())
        }));
        self
    }

    /// What the request gives if nobody answers in time.
    pub fn default(mut self, value: impl Into<String>) -> Self {
        self.default = Some(value.into());
        self
    }
}

impl<'a> IntoFuture for HumanInput<'a> {
    type Output = Result<String, FlowError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        let validator = self.validator;
        let check: Checker = Arc::new(move |value: &Value| {
            let Some(text) = value.as_str() else {
                return Err(format!("the answer must be text, not {value}"));
            };
            match &validator {
                Some(validator) => validator(text),
                None => Ok(()),
            }
        });
        let spec = Spec {
            prompt: self.prompt,
            schema: serde_json::json!({ "type": "string" }),
            timeout: self.timeout,
            default: self.default.map(Value::String),
            check,
        };
        let ctx = self.ctx;
        let index = place(ctx);
        Box::pin(async move {
            let (_, value) = request(ctx, spec, index).await?;
            match value {
                Value::String(text) => Ok(text),
                other => Ok(other.to_string()),
            }
        })
    }
}

/// A request for a value of type `T`, made by [`Context::ask`]; await it for the answer. The
/// request carries `T`'s JSON Schema, so that a UI can render a form for it.
#[must_use = "a request does nothing until it is awaited"]
pub struct Ask<'a, T> {
    ctx: &'a Context,
    prompt: String,
    timeout: Option<Duration>,
    validator: Option<Validator<T>>,
    default: Option<T>,
    _answer: PhantomData<fn() -> T>,
}

impl<'a, T> Ask<'a, T>
where
    T: Serialize + DeserializeOwned + JsonSchema + Send + 'static,
{
    pub(crate) fn new(ctx: &'a Context, prompt: String) -> Self {
        Self {
            ctx,
            prompt,
            timeout: Some(DEFAULT_INPUT_TIMEOUT),
            validator: None,
            default: None,
            _answer: PhantomData,
        }
    }

    /// Waits at most this long (default [`DEFAULT_INPUT_TIMEOUT`]); then the default is used
    /// if there is one, else the attempt fails with `FlowError::InputTimeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Waits for an answer however long it takes.
    pub fn no_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// Refuses answers `check` rejects (after they were read as a `T`), before they are
    /// recorded.
    pub fn validator<F, E>(mut self, check: F) -> Self
    where
        F: Fn(&T) -> Result<(), E> + Send + Sync + 'static,
        E: Display,
    {
        self.validator = Some(Arc::new(move |value| {
            check(value).map_err(|reason| reason.to_string())
        }));
        self
    }

    /// What the request gives if nobody answers in time.
    pub fn default(mut self, value: T) -> Self {
        self.default = Some(value);
        self
    }
}

impl<'a, T> IntoFuture for Ask<'a, T>
where
    T: Serialize + DeserializeOwned + JsonSchema + Send + 'static,
{
    type Output = Result<T, FlowError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        let validator = self.validator;
        let check: Checker = Arc::new(move |value: &Value| {
            let typed: T = serde_json::from_value(value.clone())
                .map_err(|error| format!("not a `{}`: {error}", std::any::type_name::<T>()))?;
            match &validator {
                Some(validator) => validator(&typed),
                None => Ok(()),
            }
        });
        let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null);
        let default = self.default.and_then(|d| serde_json::to_value(d).ok());
        let spec = Spec {
            prompt: self.prompt,
            schema,
            timeout: self.timeout,
            default,
            check,
        };
        let ctx = self.ctx;
        let index = place(ctx);
        Box::pin(async move {
            let (id, value) = request(ctx, spec, index).await?;
            serde_json::from_value(value.clone()).map_err(|error| FlowError::InvalidAnswer {
                id: id.to_string(),
                answer: value.to_string(),
                reason: format!(
                    "a recorded answer is not a `{}` (did the type change?): {error}",
                    std::any::type_name::<T>()
                ),
            })
        })
    }
}

/// What a request asks for, whatever its type.
struct Spec {
    prompt: String,
    schema: Value,
    timeout: Option<Duration>,
    default: Option<Value>,
    check: Checker,
}

/// The index of the next request of the state's attempt, taken when the request is turned
/// into a future: in program order, even when several are polled together (`join!`,
/// `select!`), so that a state run again numbers them the same.
fn place(ctx: &Context) -> Option<u32> {
    let site = ctx.input_site()?;
    Some(
        site.hub
            .next_index(site.state_index, site.visit, site.attempt),
    )
}

/// Makes the request and waits for its answer (or its recorded answer, or the timeout).
async fn request(
    ctx: &Context,
    spec: Spec,
    index: Option<u32>,
) -> Result<(InputId, Value), FlowError> {
    let (Some(site), Some(index)) = (ctx.input_site(), index) else {
        return Err(FlowError::InputOutsideState {
            prompt: spec.prompt,
        });
    };
    if site.hub.is_remote() {
        return Err(FlowError::RemoteState {
            state: site.state.to_string(),
            what: "human input (answers reach the run's own process)".into(),
            fix: "ask in a state that is not `remote`, and pass the answer on in the context"
                .into(),
        });
    }
    let id = InputId {
        run_key: site.run_key.to_string(),
        state: site.state.to_string(),
        visit: site.visit,
        index,
    };
    let request = InputRequest {
        id: id.clone(),
        workflow: site.workflow.to_string(),
        prompt: spec.prompt,
        schema: spec.schema,
        asked_at_ms: now_ms(),
        timeout: spec.timeout,
        default: spec.default.clone(),
    };
    let prompt = request.prompt.clone();
    let (mut answer, token, asked_at_ms) = match site.hub.open(request, spec.check) {
        Opened::Answered(value) => return Ok((id, value)),
        Opened::Waiting {
            answer,
            token,
            asked_at_ms,
        } => (answer, token, asked_at_ms),
    };
    // Withdraws the request if the state stops waiting (cancelled, or its run stopped).
    let _waiting = Withdraw {
        hub: site.hub,
        id: id.clone(),
        token,
    };
    // A request restored as pending has waited since it was first asked (wall clock: the
    // wait may span processes).
    let limit = spec.timeout.map(|limit| match asked_at_ms {
        Some(asked) => limit.saturating_sub(Duration::from_millis(now_ms().saturating_sub(asked))),
        None => limit,
    });
    let received = match limit {
        None => (&mut answer).await,
        Some(left) => match tokio::time::timeout(left, &mut answer).await {
            Ok(received) => received,
            Err(_) => {
                site.hub.close(
                    &id,
                    token,
                    InputOutcome::TimedOut {
                        default: spec.default.clone(),
                    },
                );
                // An answer recorded as the time ran out wins (it is sent before the answer
                // releases the desk, so it is here if it was recorded).
                match answer.try_recv().ok().or_else(|| spec.default.clone()) {
                    Some(value) => Ok(value),
                    None => {
                        return Err(FlowError::InputTimeout {
                            state: id.state.clone(),
                            id: id.to_string(),
                            prompt: prompt.clone(),
                            waited: spec.timeout.unwrap_or(left),
                        });
                    }
                }
            }
        },
    };
    match received {
        Ok(value) => Ok((id, value)),
        // The run withdrew the wait (it is stopping, or suspending): the state is about to be
        // stopped. It must not go on as if refused, so it waits for that.
        Err(_) => std::future::pending().await,
    }
}

/// Withdraws a request whose state stopped waiting for it.
struct Withdraw<'a> {
    hub: &'a Arc<InputHub>,
    id: InputId,
    token: u64,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        // (Closing a wait that ended, answered or timed out, does nothing.)
        self.hub
            .close(&self.id, self.token, InputOutcome::Withdrawn);
    }
}
