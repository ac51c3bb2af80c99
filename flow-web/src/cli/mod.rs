//! The `fluffy` command line: list and inspect the runs a checkpoint store keeps, and answer
//! the input requests they wait on, from any process that can open the store.
//!
//! Output is tables for people, or JSON with `--json`. Exit codes (see [`exit`]) let scripts
//! tell a refusal from a missing run or a broken store.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand};
use flow_core::{AgentStatus, FlowError};
use serde::Serialize;

pub use crate::Registry;

mod cancel;
mod fork;
pub(crate) mod inputs;
mod resume;
pub(crate) mod runs;
mod store;
mod table;

/// The exit codes of `fluffy`.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// The store could not be read or written (the message says why).
    pub const FAILED: u8 = 1;
    /// The command line is wrong (or ambiguous: a key of several workflows).
    pub const USAGE: u8 = 2;
    /// No such store, run or input request.
    pub const NOT_FOUND: u8 = 3;
    /// An answer was refused (it does not fit the request, or the request no longer waits).
    pub const REFUSED: u8 = 4;
}

#[derive(Parser)]
#[command(
    name = "fluffy",
    version,
    about = "See and steer fluffy-flow runs kept in a checkpoint store"
)]
struct Cli {
    /// Where the runs are: a redb file (flows.redb), a file store's directory, or a
    /// postgres:// URL.
    #[arg(long, env = "FLUFFY_STORE", global = true)]
    store: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The runs in the store.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Input requests that runs wait on.
    #[command(subcommand)]
    Inputs(InputsCommand),
    /// The store's runs in Prometheus text: by workflow and status, and waiting requests.
    Metrics,
    /// A registered workflow's graph (needs a program that registers its workflows: see
    /// `flow_web::cli::main_with`).
    Graph {
        /// The workflow's name.
        workflow: String,
        /// mermaid, dot or svg.
        #[arg(long, value_enum, default_value = "mermaid")]
        format: GraphFormat,
    },
    /// Serves the web dashboard over the store until interrupted (Ctrl-C).
    Serve {
        /// Where to listen; an address beyond this machine needs --token.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// Required on every request (`Authorization: Bearer …`, or open the dashboard once
        /// with `?token=…`).
        #[arg(long, env = "FLUFFY_TOKEN")]
        token: Option<String>,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Every run, the most recently updated first.
    List {
        /// Only this workflow's runs.
        #[arg(long)]
        workflow: Option<String>,
        /// Only runs with this status (repeat for several): running, paused, completed,
        /// completed_with_failures, failed, cancelled, awaiting_input.
        #[arg(long, value_parser = parse_status)]
        status: Vec<AgentStatus>,
        /// Only runs updated this recently (30s, 15m, 2h, 7d).
        #[arg(long)]
        since: Option<humantime::Duration>,
    },
    /// One run: its states, what was due, its pending input requests and its last error.
    Show {
        /// The run's key.
        key: String,
        /// The workflow, when several have a run with this key.
        #[arg(long)]
        workflow: Option<String>,
    },
    /// The run's attempts on its time line: when each became ready, how long it waited and
    /// ran, and how it ended (retries are rows of their own).
    Steps {
        /// The run's key.
        key: String,
        /// The workflow, when several have a run with this key.
        #[arg(long)]
        workflow: Option<String>,
    },
    /// Continues a run from its latest checkpoint in this process (a cancelled one too),
    /// showing its states as they run, until it ends or waits for input (needs its workflow
    /// registered).
    Resume {
        /// The run's key.
        key: String,
        /// The workflow, when several have a run with this key.
        #[arg(long)]
        workflow: Option<String>,
        /// Resume a run whose latest checkpoint says it is running (its process is gone).
        #[arg(long)]
        force: bool,
    },
    /// Stops a run for good: running in this process, it is told to stop; otherwise its
    /// latest checkpoint is saved again as cancelled (who and why kept). `runs resume`
    /// continues it.
    Cancel {
        /// The run's key.
        key: String,
        /// The workflow, when several have a run with this key.
        #[arg(long)]
        workflow: Option<String>,
        /// Why (kept in the run's last checkpoint).
        #[arg(long, default_value = "")]
        reason: String,
        /// Who cancels (kept with the reason).
        #[arg(long, default_value = "fluffy")]
        by: String,
        /// Cancel a run whose latest checkpoint says it is running although no process runs
        /// it any more (a process that still runs it would write over the cancellation).
        #[arg(long)]
        force: bool,
        /// How long to wait for the process that holds the run (a PostgreSQL worker), asked
        /// through the store, to stop it (30s, 2m).
        #[arg(long, default_value = "30s")]
        wait: humantime::Duration,
    },
    /// A new run starting from one of this run's checkpoints (the latest by default), under
    /// a key of its own; the original is left as it was.
    Fork {
        /// The run's key.
        key: String,
        /// The new run's key.
        #[arg(long)]
        to: String,
        /// The checkpoint to start from (`runs show` lists them).
        #[arg(long)]
        from: Option<u64>,
        /// The workflow, when several have a run with this key.
        #[arg(long)]
        workflow: Option<String>,
    },
}

#[derive(Subcommand)]
enum InputsCommand {
    /// Every input request waiting for an answer, the oldest first.
    List {
        /// Only this workflow's runs.
        #[arg(long)]
        workflow: Option<String>,
    },
    /// Answers a request: checked against its JSON Schema here, then left for the run.
    Answer {
        /// The run's key.
        key: String,
        /// The request's id (as `inputs list` shows it, or its `state/visit/index` part).
        id: String,
        /// The answer: text for a text request, JSON for the others.
        value: String,
        /// The workflow, when several have a run with this key.
        #[arg(long)]
        workflow: Option<String>,
        /// Who answers (kept in the run's audit of the request).
        #[arg(long, default_value = "fluffy")]
        by: String,
    },
}

/// How `graph` draws.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum GraphFormat {
    /// A Mermaid flowchart.
    Mermaid,
    /// Graphviz DOT.
    Dot,
    /// An SVG drawn here.
    Svg,
}

/// Runs `fluffy` with this process's arguments, printing to stdout and stderr.
pub fn main() -> ExitCode {
    main_with(Registry::new())
}

/// [`main`] in a program of yours, with its workflows registered: `graph` and `runs resume`
/// need their code, and the dashboard draws their transitions.
///
/// ```no_run
/// # use flow_runtime::Agent;
/// # fn etl() -> Agent { Agent::new("etl") }
/// fn main() -> std::process::ExitCode {
///     flow_web::cli::main_with(flow_web::Registry::new().register(&etl()))
/// }
/// ```
pub fn main_with(registry: Registry) -> ExitCode {
    let code = run_with(
        &registry,
        std::env::args_os(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    ExitCode::from(code)
}

/// Runs `fluffy` with `args` (the first is the program's name), writing what it prints to
/// `out` and its errors to `err`; returns its exit code (see [`exit`]). It blocks: call it
/// outside async code, or in `spawn_blocking`.
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_with(&Registry::new(), args, out, err)
}

/// [`run`] with the workflows of `registry` (see [`main_with`]).
pub fn run_with<I, T>(registry: &Registry, args: I, out: &mut dyn Write, err: &mut dyn Write) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let code = u8::try_from(error.exit_code()).unwrap_or(exit::USAGE);
            let target: &mut dyn Write = if code == exit::OK { out } else { err };
            let _ = write!(target, "{}", error.render());
            return code;
        }
    };
    match execute(cli, registry, out) {
        Ok(()) => exit::OK,
        Err(failure) => {
            let _ = writeln!(err, "fluffy: {}", failure.message);
            failure.code
        }
    }
}

fn execute(cli: Cli, registry: &Registry, out: &mut dyn Write) -> Result<(), Failure> {
    // (The graph needs no store.)
    if let Command::Graph { workflow, format } = &cli.command {
        return resume::graph(registry, workflow, *format, out);
    }
    let spec = cli.store.ok_or_else(|| {
        Failure::usage(
            "no store: give --store (a redb file, a file store's directory or a postgres:// URL) or set FLUFFY_STORE".into(),
        )
    })?;
    let store = store::open(&spec)?;
    let output = Output { json: cli.json };
    match cli.command {
        Command::Graph { .. } => Ok(()),
        Command::Serve { addr, token } => serve(store, registry, addr, token, out),
        Command::Runs(RunsCommand::Resume {
            key,
            workflow,
            force,
        }) => resume::resume(
            store,
            registry,
            resume::ResumeRequest {
                key: &key,
                workflow: workflow.as_deref(),
                force,
            },
            out,
        ),
        Command::Metrics => {
            let everything = runs::ListFilter {
                workflow: None,
                statuses: Vec::new(),
                since: None,
            };
            let text = runs::prometheus(&runs::summaries(store.as_ref(), &everything)?);
            write!(out, "{text}").map_err(Failure::io)
        }
        Command::Runs(RunsCommand::Cancel {
            key,
            workflow,
            reason,
            by,
            force,
            wait,
        }) => cancel::cancel(
            store.as_ref(),
            cancel::CancelRequest {
                key: &key,
                workflow: workflow.as_deref(),
                by: &by,
                reason: &reason,
                force,
                wait: wait.into(),
            },
            output,
            out,
        ),
        Command::Runs(RunsCommand::Fork {
            key,
            to,
            from,
            workflow,
        }) => fork::fork(
            store.as_ref(),
            fork::ForkRequest {
                key: &key,
                workflow: workflow.as_deref(),
                from,
                to: &to,
            },
            output,
            out,
        ),
        Command::Runs(RunsCommand::List {
            workflow,
            status,
            since,
        }) => {
            let filter = runs::ListFilter {
                workflow,
                statuses: status,
                since: since.map(Into::into),
            };
            runs::list(store.as_ref(), &filter, output, out)
        }
        Command::Runs(RunsCommand::Steps { key, workflow }) => {
            runs::steps(store.as_ref(), &key, workflow.as_deref(), output, out)
        }
        Command::Runs(RunsCommand::Show { key, workflow }) => {
            runs::show(store.as_ref(), &key, workflow.as_deref(), output, out)
        }
        Command::Inputs(InputsCommand::List { workflow }) => {
            inputs::list(store.as_ref(), workflow, output, out)
        }
        Command::Inputs(InputsCommand::Answer {
            key,
            id,
            value,
            workflow,
            by,
        }) => inputs::answer(
            store.as_ref(),
            inputs::AnswerRequest {
                key: &key,
                workflow: workflow.as_deref(),
                id: &id,
                value: &value,
                by: &by,
            },
            output,
            out,
        ),
    }
}

/// `fluffy serve`: the dashboard until Ctrl-C.
fn serve(
    store: std::sync::Arc<dyn flow_runtime::CheckpointStore>,
    registry: &Registry,
    addr: std::net::SocketAddr,
    token: Option<String>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let mut options = crate::dashboard::DashboardOptions::new().registry(registry.clone());
    let token = token.filter(|t| !t.is_empty());
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(Failure::usage(format!(
            "{addr} is not a loopback address: give a token (--token or FLUFFY_TOKEN) to serve the dashboard beyond this machine"
        )));
    }
    if let Some(token) = token {
        crate::dashboard::check_token(&token).map_err(Failure::usage)?;
        options = options.token(token);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::failed(format!("starting a runtime: {error}")))?;
    let described = store.describe();
    writeln!(
        out,
        "serving the dashboard of {described} on http://{addr}/ (Ctrl-C stops it)"
    )
    .map_err(Failure::io)?;
    let _ = out.flush();
    let interrupted = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    runtime
        .block_on(crate::dashboard::serve(store, addr, options, interrupted))
        .map_err(|error| match error {
            // (The command line was checked above: a port in use, or a server that failed.)
            FlowError::InvalidConfig { message, .. } => Failure::failed(message),
            error => Failure::from(error),
        })
}

/// Why a command did not do what it was asked, and its exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub(crate) fn failed(message: String) -> Self {
        Self {
            code: exit::FAILED,
            message,
        }
    }

    pub(crate) fn usage(message: String) -> Self {
        Self {
            code: exit::USAGE,
            message,
        }
    }

    pub(crate) fn not_found(message: String) -> Self {
        Self {
            code: exit::NOT_FOUND,
            message,
        }
    }

    pub(crate) fn refused(message: String) -> Self {
        Self {
            code: exit::REFUSED,
            message: format!("refused: {message}"),
        }
    }

    /// Its exit code.
    pub(crate) fn code(&self) -> u8 {
        self.code
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn io(error: std::io::Error) -> Self {
        Self::failed(format!("writing the output: {error}"))
    }
}

impl From<FlowError> for Failure {
    fn from(error: FlowError) -> Self {
        Self::failed(error.to_string())
    }
}

/// How a command prints.
#[derive(Clone, Copy)]
pub(crate) struct Output {
    json: bool,
}

impl Output {
    pub(crate) fn json_to(
        &self,
        out: &mut dyn Write,
        value: &impl Serialize,
    ) -> Result<(), Failure> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|error| Failure::failed(format!("writing JSON: {error}")))?;
        writeln!(out, "{text}").map_err(Failure::io)
    }

    /// A sentence for people (commands with `--json` print JSON instead).
    pub(crate) fn say(&self, out: &mut dyn Write, text: &str) -> Result<(), Failure> {
        writeln!(out, "{}", table::printable(text)).map_err(Failure::io)
    }
}

/// A status's name as it appears in JSON (`awaiting_input`).
pub(crate) fn status_name(status: impl Serialize) -> String {
    match serde_json::to_value(status) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// A time in RFC 3339, to the second (UTC).
pub(crate) fn time(at: SystemTime) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    // (RFC 3339 stops at year 9999: a time past it, from a damaged checkpoint, is shown in
    // seconds since the epoch rather than failing the listing.)
    if write!(text, "{}", humantime::format_rfc3339_seconds(at)).is_err() {
        text.clear();
        let seconds = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let _ = write!(text, "@{seconds}");
    }
    text
}

fn parse_status(text: &str) -> Result<AgentStatus, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        format!(
            "`{text}` is not a run status: running, paused, completed, completed_with_failures, failed, cancelled, awaiting_input"
        )
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::time;

    #[test]
    fn times_past_rfc_3339_are_shown_not_fatal() {
        assert_eq!(
            time(UNIX_EPOCH + Duration::from_secs(86_400)),
            "1970-01-02T00:00:00Z"
        );
        // (Year 12000: RFC 3339 stops at 9999; a damaged checkpoint may say so.)
        let far = UNIX_EPOCH + Duration::from_secs(316_000_000_000);
        assert_eq!(time(far), "@316000000000");
    }
}
