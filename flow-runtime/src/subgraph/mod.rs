//! Subgraphs: a workflow run as one state of another.
//!
//! A subgraph state's attempt is a whole run of its workflow (the child run): the mapping
//! copies keys of the parent's context into a fresh context for it, and, when it completes,
//! keys of its context back. The child run is part of the parent's:
//! - its events go to the parent's subscribers, under the parent's run id, its states named by
//!   their path (`review/draft`, `outer/review/draft` when nested), and what its states
//!   `emit` reaches the parent's streams (see [`crate::stream::StreamHub::nested`]);
//! - its states appear in the parent's report under their path (see [`SubgraphRuns`]);
//! - in a checkpointed parent, its progress is saved inside the parent's checkpoints, and a
//!   restored parent continues the child run where it was (see [`ProgressSink`]);
//! - retries, timeouts and `on_error` are the subgraph state's: a retry runs the child afresh,
//!   a timeout (or the parent stopping) cancels it.

mod records;

use std::future::Future;
use std::sync::Arc;

use flow_core::{FlowError, Next, StateError, StateSpec};

use crate::RunReport;
use crate::agent::{Agent, StateOptions};
use crate::context::Context;
use crate::state_fn::{BoxError, StateFn, StateFuture};

pub(crate) use records::{ProgressSink, SubgraphRuns, SubgraphsImage};

/// How a subgraph state hands data to the workflow it runs and takes its results back, and
/// where its run goes next (see [`Agent::add_subgraph`]).
///
/// ```
/// use flow_runtime::SubgraphMapping;
/// let mapping = SubgraphMapping::new()
///     .input("draft", "text") // parent's `draft` becomes the subgraph's `text`
///     .output("verdict", "review_verdict") // the subgraph's `verdict` comes back
///     .then("publish");
/// # let _ = mapping;
/// ```
#[derive(Clone, Debug, Default)]
pub struct SubgraphMapping {
    /// (parent key, subgraph key): copied in before the subgraph runs.
    inputs: Vec<(String, String)>,
    /// The subgraph key a map branch's item is copied to.
    item: Option<String>,
    /// (subgraph key, parent key): copied back when it completed.
    outputs: Vec<(String, String)>,
    /// The state the parent's branch goes to afterwards (`None`: the branch ends).
    then: Option<String>,
}

impl SubgraphMapping {
    /// A mapping that copies nothing, after which the branch ends.
    pub fn new() -> Self {
        Self::default()
    }

    /// Copies the parent's `parent_key` into the subgraph's context as `child_key` before it
    /// runs. A key the parent's context does not hold fails the attempt with
    /// [`FlowError::SubgraphKey`].
    pub fn input(mut self, parent_key: impl Into<String>, child_key: impl Into<String>) -> Self {
        self.inputs.push((parent_key.into(), child_key.into()));
        self
    }

    /// Copies the item of the `Next::map` branch the subgraph state runs on (what
    /// `ctx.input()` reads) into the subgraph's context as `child_key`: `Next::map("review",
    /// documents)` runs the subgraph once per document. Off a map's branch, the attempt fails
    /// with [`FlowError::NoInput`].
    pub fn input_item(mut self, child_key: impl Into<String>) -> Self {
        self.item = Some(child_key.into());
        self
    }

    /// Copies each of `keys` into the subgraph's context under the same name.
    pub fn inputs<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        for key in keys {
            let key = key.into();
            self.inputs.push((key.clone(), key));
        }
        self
    }

    /// Copies the subgraph's `child_key` into the parent's context as `parent_key` once the
    /// subgraph completed (a write of the subgraph state: a key with a reducer takes it as a
    /// contribution). A key the subgraph's context does not hold then fails the attempt with
    /// [`FlowError::SubgraphKey`].
    pub fn output(mut self, child_key: impl Into<String>, parent_key: impl Into<String>) -> Self {
        self.outputs.push((child_key.into(), parent_key.into()));
        self
    }

    /// Copies each of `keys` back under the same name.
    pub fn outputs<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        for key in keys {
            let key = key.into();
            self.outputs.push((key.clone(), key));
        }
        self
    }

    /// Goes to `state` once the subgraph completed (declared as the state's successor, so a
    /// name the workflow lacks is an error when the run starts). Without it, the branch ends.
    pub fn then(mut self, state: impl Into<String>) -> Self {
        self.then = Some(state.into());
        self
    }
}

/// What `#[state(subgraph(workflow = ..))]` accepts: an [`Agent`], or a value of a
/// `#[workflow]` type (its agent is built).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a workflow a subgraph state can run",
    label = "neither an `Agent` nor a value of a `#[workflow]` type",
    note = "give `subgraph(workflow = ..)` an `Agent`, or a value of a type with `#[workflow]` on its impl"
)]
pub trait IntoSubgraph {
    /// The agent the subgraph state runs.
    fn into_subgraph(self) -> Agent;
}

impl IntoSubgraph for Agent {
    fn into_subgraph(self) -> Agent {
        self
    }
}

impl<W: crate::Workflow> IntoSubgraph for W {
    fn into_subgraph(self) -> Agent {
        self.agent()
    }
}

impl Agent {
    /// Adds a state that runs `workflow` as a whole (a subgraph): `mapping` copies keys in
    /// and out and says where to go afterwards. The returned options (retry, timeout,
    /// `on_error`, resources, ...) apply to the subgraph state as a whole: a retry runs the
    /// workflow afresh, a timeout cancels it. Its states appear in events and reports under
    /// `name/state`. See the README's "Subgraphs and teams".
    ///
    /// ```
    /// use flow_core::Next;
    /// use flow_runtime::{Agent, Context, SubgraphMapping};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flow_core::FlowError> {
    /// let mut review = Agent::new("review");
    /// review.add_state("judge", |ctx: Context| async move {
    ///     let text: String = ctx.get_state("text")?;
    ///     ctx.set_state("verdict", text.len() < 20);
    ///     Ok(Next::End)
    /// });
    ///
    /// let mut blog = Agent::new("blog");
    /// blog.add_state("write", |ctx: Context| async move {
    ///     ctx.set_state("draft", "Short and sweet.".to_string());
    ///     Ok(Next::to("review"))
    /// });
    /// blog.add_subgraph(
    ///     "review",
    ///     &review,
    ///     SubgraphMapping::new().input("draft", "text").outputs(["verdict"]),
    /// );
    /// let report = blog.run().await?;
    /// assert!(report.context.get_state::<bool>("verdict")?);
    /// assert_eq!(report.state("review/judge").map(|s| s.runs), Some(1));
    /// # Ok(())
    /// # }
    /// ```
    pub fn add_subgraph(
        &mut self,
        name: impl Into<String>,
        workflow: &Agent,
        mapping: SubgraphMapping,
    ) -> StateOptions<'_> {
        let successors: Vec<String> = mapping.then.iter().cloned().collect();
        let then = mapping.then.clone();
        let router = move |_: Context| {
            let next = then.clone().map_or(Next::End, Next::to);
            async move { Ok::<_, BoxError>(next) }
        };
        let options = self.add_subgraph_with_router(name, workflow, mapping, router);
        options.successors(successors)
    }

    /// [`Agent::add_subgraph`] whose next step `router` decides once the subgraph completed
    /// and its outputs were copied back (the mapping's `then` is not used): an async
    /// function of the context, like a state's body. The `#[state(subgraph(..))]` form of
    /// `#[workflow]` uses it, the method's body being the router.
    pub fn add_subgraph_with_router<F, Fut, E>(
        &mut self,
        name: impl Into<String>,
        workflow: &Agent,
        mapping: SubgraphMapping,
        router: F,
    ) -> StateOptions<'_>
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Next, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let body = SubgraphState {
            workflow: workflow.clone(),
            mapping: Arc::new(mapping),
            router: Arc::new(crate::state_fn::FnState(router)),
        };
        self.add_state_fn(StateSpec::new(name), Arc::new(body), Some(workflow.clone()))
    }
}

/// The body of a subgraph state.
struct SubgraphState {
    workflow: Agent,
    mapping: Arc<SubgraphMapping>,
    router: Arc<dyn StateFn>,
}

impl StateFn for SubgraphState {
    fn call(&self, ctx: Context) -> StateFuture {
        let (workflow, mapping, router) = (
            self.workflow.clone(),
            Arc::clone(&self.mapping),
            Arc::clone(&self.router),
        );
        Box::pin(async move {
            let failed = |error: FlowError| StateError::from_boxed(Box::new(error));
            run_subgraph(&workflow, &mapping, &ctx)
                .await
                .map_err(failed)?;
            router.call(ctx).await
        })
    }
}

/// One attempt of a subgraph state: the child run, from copying its inputs in to copying its
/// outputs back.
async fn run_subgraph(
    workflow: &Agent,
    mapping: &SubgraphMapping,
    ctx: &Context,
) -> Result<(), FlowError> {
    let Some(((run, state, attempt, visit), records)) = ctx
        .state_run()
        .and_then(|at| Some((at, at.0.subgraphs.clone()?)))
    else {
        return Err(FlowError::InvalidConfig {
            agent: workflow.name().to_owned(),
            message: "a subgraph state's body was called outside a run".into(),
        });
    };
    let name = Arc::clone(run.graph.name(state));
    let path: Arc<str> = match &run.path {
        Some(outer) => Arc::from(format!("{outer}/{name}")),
        None => Arc::clone(&name),
    };
    let failed = |error: FlowError| FlowError::SubgraphFailed {
        state: path.to_string(),
        workflow: workflow.name().to_owned(),
        error: Box::new(error),
    };
    let missing = |key: &str, direction: &str, side: &str| FlowError::SubgraphKey {
        state: path.to_string(),
        key: key.to_owned(),
        direction: direction.to_owned(),
        side: side.to_owned(),
    };
    let child = Context::new();
    for (from, to) in &mapping.inputs {
        let slot = ctx
            .slot(from)?
            .ok_or_else(|| missing(from, "input", "parent's"))?;
        child.put_slot(to.clone(), slot);
    }
    if let Some(key) = &mapping.item {
        let item = ctx.input_slot().ok_or_else(|| FlowError::NoInput {
            state: path.to_string(),
        })?;
        child.put_slot(key.clone(), item);
    }
    let attempt_key = (state, visit, attempt);
    let (order, restored) = records.begin(attempt_key);
    let nesting = Nesting {
        events: run.events.clone(),
        event_run_id: run.event_run_id,
        path: Arc::clone(&path),
        state: Arc::clone(&name),
        stream: Arc::clone(&run.stream),
        inputs: Arc::clone(&run.inputs),
        progress: records
            .checkpointed()
            .then(|| ProgressSink::new(Arc::clone(&records), attempt_key, order)),
        // The attempt is part of it: a retry's requests for input are not its predecessor's.
        key: format!("{}/{path}#{visit}.{attempt}", run.key),
    };
    let watch = ChildWatch {
        records: Arc::clone(&records),
        attempt: attempt_key,
        order,
        owner: Arc::clone(&name),
    };
    let report = match restored.transpose().map_err(&failed)? {
        // It had completed before the parent's checkpoint was taken: its result stands.
        Some(checkpoint) if checkpoint.status.is_completed() => {
            let report = RunReport::from_checkpoint(checkpoint).map_err(&failed)?;
            watch.record(&report);
            report
        }
        restored => {
            let handle = workflow
                .launch_nested(child, nesting, restored)
                .map_err(&failed)?;
            run_child(handle, watch, ctx).await.map_err(&failed)?
        }
    };
    if !report.status.is_completed() {
        let error = report.error.clone().unwrap_or(FlowError::RunLost {
            agent: workflow.name().to_owned(),
        });
        return Err(failed(error));
    }
    for (from, to) in &mapping.outputs {
        let slot = report
            .context
            .slot(from)?
            .ok_or_else(|| missing(from, "output", "subgraph's"))?;
        ctx.put_slot(to.clone(), slot);
    }
    Ok(())
}

/// Records a child run's end in its parent's records, whatever becomes of the attempt that
/// started it; dropped, the child run no longer counts as live (see
/// `SubgraphRuns::children_ended`), also if it never started.
struct ChildWatch {
    records: Arc<SubgraphRuns>,
    attempt: records::AttemptKey,
    order: records::RunOrder,
    owner: Arc<str>,
}

impl ChildWatch {
    fn record(&self, report: &RunReport) {
        self.records
            .finished(self.attempt, self.order, &self.owner, report);
    }
}

impl Drop for ChildWatch {
    fn drop(&mut self) {
        self.records.child_ended();
    }
}

/// Runs the child to its end, stopped with the parent (its cancellation). Its report is
/// awaited by a task of its own, which records it in the parent's records even when this
/// attempt is dropped (a timeout, an abort: the child is cancelled then).
async fn run_child(
    handle: crate::RunHandle,
    watch: ChildWatch,
    parent: &Context,
) -> Result<RunReport, FlowError> {
    let agent = handle.agent_name().to_owned();
    let cancel = handle.cancel_token();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let report = handle.wait().await;
        watch.record(&report);
        let _ = sender.send(report);
    });
    let guard = cancel.clone().drop_guard();
    tokio::pin!(receiver);
    let report = tokio::select! {
        report = &mut receiver => report,
        () = parent.cancelled() => {
            cancel.cancel();
            receiver.await
        }
    };
    guard.disarm();
    // The watcher always sends (a run always reports, a lost one too); should it be gone,
    // the child's end is unknown, and so it did not complete.
    report.map_err(|_| FlowError::RunLost { agent })
}

/// What a subgraph's run takes from the run it is part of.
pub(crate) struct Nesting {
    /// The event hub of the outermost run.
    pub(crate) events: crate::events::EventHub,
    /// The outermost run's id, which its events carry.
    pub(crate) event_run_id: u64,
    /// The subgraph state's path (`outer/review`).
    pub(crate) path: Arc<str>,
    /// The subgraph state's own name (its parent's stream names emitters by it).
    pub(crate) state: Arc<str>,
    /// The parent run's stream.
    pub(crate) stream: Arc<crate::stream::StreamHub>,
    /// The parent run's input requests.
    pub(crate) inputs: Arc<crate::input::InputHub>,
    /// Where its checkpoints go, when the parent is checkpointed.
    pub(crate) progress: Option<ProgressSink>,
    /// Its run key: the parent's, its path and the subgraph state's visit.
    pub(crate) key: String,
}
