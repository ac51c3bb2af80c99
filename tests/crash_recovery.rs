//! Crash recovery for real: a durable workflow runs in a child process, is killed with SIGKILL
//! at several points, and is started again each time. The run must complete with the same
//! final context as an uninterrupted run, and no state completed before the last checkpoint
//! written may run again.
//!
//! The child is this test binary itself, running `crash_child` (ignored in normal runs: it is
//! the child's entry point, not a test of its own).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fluffy_flow::prelude::*;
use fluffy_flow::{CheckpointPolicy, CheckpointStore, MemoryStore, RedbStore};
use serde::{Deserialize, Serialize};

const CHILD_DIR: &str = "FLUFFY_FLOW_CRASH_DIR";
const RUN: &str = "crash-run";
const INPUT_MODE: &str = "FLUFFY_FLOW_CRASH_INPUT";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tally {
    steps: Vec<String>,
    checksum: u64,
}

/// Appends a line to the log and flushes it to disk (the parent reads it to decide when to
/// kill, and afterwards to see what ran).
fn note(log: &Path, line: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    // One write of the whole line: a kill can then not leave half a line for the next
    // process to append to.
    file.write_all(format!("{line}\n").as_bytes())
        .expect("write log");
    file.sync_data().expect("sync log");
}

/// `s0 → s1 → s2 → [p, q] → s3 → s4 → s5 → s6`: each state logs its start and end, takes
/// `work` (real time in the child), and folds its name into a typed tally.
fn workflow(log: Option<PathBuf>, work: Duration) -> Agent {
    let mut agent = Agent::new("crashy");
    let chain: [(&str, Vec<&str>); 9] = [
        ("s0", vec!["s1"]),
        ("s1", vec!["s2"]),
        ("s2", vec!["p", "q"]),
        ("p", vec!["s3"]),
        ("q", vec!["s3"]),
        ("s3", vec!["s4"]),
        ("s4", vec!["s5"]),
        ("s5", vec!["s6"]),
        ("s6", vec![]),
    ];
    for (name, next) in chain {
        let log = log.clone();
        let declared: Vec<String> = next.iter().map(|s| s.to_string()).collect();
        let next = match next.as_slice() {
            [] => Next::End,
            [one] => Next::to(*one),
            many => Next::parallel(many.iter().copied()),
        };
        agent
            .add_state(name, move |ctx: Context| {
                let (log, next) = (log.clone(), next.clone());
                async move {
                    if let Some(log) = &log {
                        note(log, &format!("start {name}"));
                    }
                    tokio::time::sleep(work).await;
                    // `p` and `q` run in parallel: each keeps its own key; the join folds them.
                    ctx.set_state(name, format!("value of {name}"));
                    if name != "p" && name != "q" {
                        let mut tally: Tally = ctx.get_state_or(
                            "tally",
                            Tally {
                                steps: vec![],
                                checksum: 7,
                            },
                        )?;
                        tally.steps.push(name.to_owned());
                        for key in ["p", "q"] {
                            if ctx.has_state(key) && name == "s3" {
                                tally.steps.push(ctx.get_state::<String>(key)?);
                            }
                        }
                        tally.checksum = tally
                            .checksum
                            .wrapping_mul(31)
                            .wrapping_add(tally.steps.len() as u64);
                        ctx.set_state("tally", tally);
                    }
                    if let Some(log) = &log {
                        note(log, &format!("done {name}"));
                    }
                    Ok(next)
                }
            })
            .successors(declared);
    }
    agent.checkpoints(
        MemoryStore::new(),
        CheckpointPolicy {
            keep: 0,
            ..CheckpointPolicy::after_each_state()
        },
    );
    agent
}

/// The child: runs the durable workflow against the redb store in `$FLUFFY_FLOW_CRASH_DIR`
/// (with `$FLUFFY_FLOW_CRASH_INPUT` set, the workflow that waits for input).
#[test]
#[ignore = "the crash tests' child process; run by crash_recovery_after_sigkill and a_run_killed_while_waiting_for_input_continues_with_the_answer"]
fn crash_child() {
    let dir = PathBuf::from(std::env::var(CHILD_DIR).expect("run by the crash test"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var_os(INPUT_MODE).is_some() {
        runtime.block_on(input_child(&dir));
        return;
    }
    runtime.block_on(async {
        let store = RedbStore::open(dir.join("flows.redb")).expect("store");
        let report = workflow(Some(dir.join("log")), Duration::from_millis(100))
            .run_durable(store, RUN)
            .await
            .expect("the run completes");
        note(&dir.join("log"), &format!("finished {:?}", report.status));
    });
}

fn spawn_child(dir: &Path) -> Child {
    spawn_child_with(dir, false)
}

fn spawn_child_with(dir: &Path, input: bool) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    if input {
        command.env(INPUT_MODE, "1");
    }
    command
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child")
}

fn log_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("log"))
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Waits (polling the log, up to a generous limit) until `line` has been logged `times` times.
fn wait_for(dir: &Path, line: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while log_lines(dir).iter().filter(|l| *l == line).count() < times {
        assert!(Instant::now() < deadline, "the child never logged `{line}`");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn crash_recovery_after_sigkill() {
    // The reference: the same workflow, uninterrupted, in this process.
    let reference = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(async { workflow(None, Duration::from_millis(100)).run().await })
        .expect("the reference run completes");
    let expected: Tally = reference.context.get_state("tally").unwrap();
    assert_eq!(
        expected.steps,
        [
            "s0",
            "s1",
            "s2",
            "s3",
            "value of p",
            "value of q",
            "s4",
            "s5",
            "s6"
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // Kill while s1 runs, while p and q run (mid fan-out), and while s5 runs.
    for (kill_at, saved_at_least) in [("start s1", 0), ("start p", 2), ("start s5", 6)] {
        let mut child = spawn_child(dir);
        let before = log_lines(dir).len();
        wait_for(dir, kill_at, 1);
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");
        let lines = log_lines(dir);
        assert!(
            lines.len() > before,
            "the child made progress before {kill_at}"
        );

        // What the last checkpoint written says completed must not run again.
        let store = RedbStore::open(dir.join("flows.redb")).unwrap();
        // (Killed early, the first save may not have landed yet: the run then starts over.)
        let completed: Vec<String> = store
            .latest("crashy", RUN)
            .unwrap()
            .map(|c| c.completed().map(str::to_owned).collect())
            .unwrap_or_default();
        drop(store);
        // The state that completed just before the kill may not be saved yet (saves are
        // asynchronous); the one before it, a state's time earlier, is.
        assert!(
            completed.len() >= saved_at_least,
            "killed at {kill_at}: only {completed:?} checkpointed"
        );
        note(
            &dir.join("log"),
            &format!("restart after {kill_at}: {completed:?}"),
        );
    }
    let mut child = spawn_child(dir);
    let status = child.wait().expect("the last child ends");
    assert!(status.success(), "the resumed run failed: {status}");

    let lines = log_lines(dir);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("finished Completed"),
        "{lines:#?}"
    );
    // After each restart, nothing the checkpoint had as completed started again.
    for (index, line) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix("restart after ") else {
            continue;
        };
        let completed = rest.split_once(": ").unwrap().1;
        for later in &lines[index + 1..] {
            if let Some(state) = later.strip_prefix("start ") {
                assert!(
                    !completed.contains(&format!("\"{state}\"")),
                    "{state} completed before the checkpoint ({line}) but ran again:\n{lines:#?}"
                );
            }
        }
    }
    // Every state completed at least once, and the one in flight at each kill ran again.
    for state in ["s0", "s1", "s2", "p", "q", "s3", "s4", "s5", "s6"] {
        assert!(
            lines.contains(&format!("done {state}")),
            "{state} never completed"
        );
    }
    assert!(lines.iter().filter(|l| *l == "start s1").count() >= 2);
    assert!(lines.iter().filter(|l| *l == "start s5").count() >= 2);

    // The final context is the uninterrupted run's.
    let store = RedbStore::open(dir.join("flows.redb")).unwrap();
    let last = store.latest("crashy", RUN).unwrap().unwrap();
    assert_eq!(last.status, AgentStatus::Completed);
    let tally: Tally = last.context.get("tally").unwrap();
    assert_eq!(tally, expected);
    for key in ["s0", "p", "q", "s6"] {
        assert_eq!(
            last.context.get::<String>(key).unwrap(),
            reference.context.get_state::<String>(key).unwrap()
        );
    }
    assert_eq!(last.context.keys(), reference.context.keys());
}

/// Logs each request it is handed (the parent kills the child once one is logged).
struct LogRequests(PathBuf);

impl fluffy_flow::InputProvider for LogRequests {
    fn requested(&self, request: fluffy_flow::InputRequest, _answerer: fluffy_flow::InputAnswerer) {
        note(&self.0, &format!("requested {}", request.id));
    }
}

/// `prepare → review (asks) → publish`, durable in the redb store in `dir`, each state
/// logging its start.
async fn input_child(dir: &Path) {
    let log = dir.join("log");
    let mut agent = Agent::new("approval");
    for (name, next) in [
        ("prepare", Some("review")),
        ("review", Some("publish")),
        ("publish", None),
    ] {
        let log = log.clone();
        agent
            .add_state(name, move |ctx: Context| {
                let log = log.clone();
                async move {
                    note(&log, &format!("start {name}"));
                    if name == "review" {
                        let decision = ctx.human_input("Publish?").no_timeout().await?;
                        ctx.set_state("decision", decision);
                    }
                    Ok(next.map_or(Next::End, Next::to))
                }
            })
            .successors(next);
    }
    agent.input_provider(LogRequests(log.clone()));
    let store = RedbStore::open(dir.join("flows.redb")).expect("store");
    let report = agent
        .run_durable(store, "approval-run")
        .await
        .expect("the run completes");
    let decision: String = report.context.get_state("decision").unwrap();
    note(
        &log,
        &format!("finished {:?} with {decision}", report.status),
    );
}

#[test]
fn a_run_killed_while_waiting_for_input_continues_with_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut child = spawn_child_with(dir, true);
    let requested = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(line) = log_lines(dir).iter().find(|l| l.starts_with("requested ")) {
                break line.strip_prefix("requested ").unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "the child never asked");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    // The request is durable before it is handed to anyone: kill the process now.
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");

    // While the process is down, the answer goes to the store (checked against the
    // checkpoint: the request is there, pending).
    let id: fluffy_flow::InputId = requested.parse().unwrap();
    let store = RedbStore::open(dir.join("flows.redb")).unwrap();
    let latest = store.latest("approval", "approval-run").unwrap().unwrap();
    assert_eq!(latest.inputs.len(), 1);
    assert_eq!(latest.inputs[0].request.id, id);
    assert_eq!(latest.completed().collect::<Vec<_>>(), ["prepare"]);
    store
        .answer("approval", "approval-run", &id, "ops", "yes".into())
        .unwrap();
    drop(store);

    let mut child = spawn_child_with(dir, true);
    assert!(child.wait().unwrap().success(), "the continued run failed");
    let lines = log_lines(dir);
    assert_eq!(
        lines,
        [
            "start prepare",
            "start review",
            format!("requested {requested}").as_str(),
            // Continued: `prepare` does not run again, `review` runs from its start and gets
            // the answer without asking (no second `requested`).
            "start review",
            "start publish",
            "finished Completed with yes",
        ],
        "{lines:#?}"
    );
}
