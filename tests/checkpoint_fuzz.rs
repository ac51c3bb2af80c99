//! Random structured damage to real checkpoints (a held join, a retry waiting for its delay, a
//! dependency wait, a dead letter): truncation, flipped bytes, changed digits, numbers swapped
//! for extreme ones, removed and duplicated fields, several at once. Each damaged checkpoint is
//! refused with an error, or restores into a run that ends within a bound on the paused clock;
//! nothing panics, nothing hangs.

use std::sync::OnceLock;
use std::time::Duration;

mod common;
mod fuzz_agent;

use common::json_fields;
use fluffy_flow::Checkpoint;
use fluffy_flow::prelude::*;
use fuzz_agent::agent;
use proptest::prelude::*;

fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Checkpoints of the agent's run at several moments, as JSON.
fn checkpoints() -> &'static [Vec<u8>] {
    static ALL: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    ALL.get_or_init(|| {
        paused().block_on(async {
            let mut all = Vec::new();
            for at in [1, 20, 60, 150, 250] {
                let context = Context::new();
                context.set_state("tries", 0u32);
                let handle = agent().start_with(context).unwrap();
                tokio::time::sleep(Duration::from_millis(at)).await;
                let checkpoint = handle.create_checkpoint().await.unwrap();
                all.push(checkpoint.to_json().unwrap());
                handle.cancel();
                handle.wait().await;
            }
            all
        })
    })
}

#[derive(Debug, Clone)]
enum Damage {
    Truncate(usize),
    Flip(usize, u8),
    Digit(usize, u8),
    /// Replace the n-th number by an extreme one.
    Extreme(usize, i8),
    /// Remove the n-th field (depth-first).
    Remove(usize),
    /// Give the n-th field twice.
    Duplicate(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Damage::Flip(i, x)),
        (any::<usize>(), 0u8..10).prop_map(|(i, d)| Damage::Digit(i, d)),
        (any::<usize>(), -2i8..=2).prop_map(|(i, e)| Damage::Extreme(i, e)),
        any::<usize>().prop_map(Damage::Remove),
        any::<usize>().prop_map(Damage::Duplicate),
    ]
}

fn at_path<'a>(value: &'a mut serde_json::Value, path: &[String]) -> &'a mut serde_json::Value {
    path.iter().fold(value, |v, step| match v {
        serde_json::Value::Array(items) => &mut items[step.parse::<usize>().unwrap()],
        other => &mut other[step.as_str()],
    })
}

fn apply(bytes: &[u8], damage: &Damage) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    let n = bytes.len();
    if n == 0 {
        return bytes;
    }
    match *damage {
        Damage::Truncate(i) => bytes.truncate(i % n),
        Damage::Flip(i, x) => bytes[i % n] ^= x,
        Damage::Digit(i, d) => {
            let digits: Vec<usize> = (0..n).filter(|&i| bytes[i].is_ascii_digit()).collect();
            if !digits.is_empty() {
                bytes[digits[i % digits.len()]] = b'0' + d;
            }
        }
        Damage::Extreme(..) | Damage::Remove(_) | Damage::Duplicate(_) => {
            bytes = structured(&bytes, damage);
        }
    }
    bytes
}

/// A damage that edits the checkpoint as JSON (the bytes unchanged if they are not JSON).
fn structured(bytes: &[u8], damage: &Damage) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return bytes.to_vec();
    };
    let mut all = Vec::new();
    json_fields(&value, usize::MAX, &mut Vec::new(), &mut all);
    if all.is_empty() {
        return bytes.to_vec();
    }
    match *damage {
        Damage::Extreme(i, e) => {
            let numbers: Vec<&Vec<String>> = all
                .iter()
                .filter(|p| at_path(&mut value.clone(), p).is_number())
                .collect();
            if let Some(path) = numbers.get(i % numbers.len().max(1)) {
                let path = (*path).clone();
                *at_path(&mut value, &path) = match e {
                    -2 => serde_json::json!(i64::MIN),
                    -1 => serde_json::json!(-1),
                    0 => serde_json::json!(0),
                    1 => serde_json::json!(u32::MAX),
                    _ => serde_json::json!(u64::MAX),
                };
            }
            serde_json::to_vec(&value).unwrap()
        }
        Damage::Remove(i) => {
            let path = &all[i % all.len()];
            let (last, parents) = path.split_last().unwrap();
            if let Some(map) = at_path(&mut value, parents).as_object_mut() {
                map.remove(last);
            }
            serde_json::to_vec(&value).unwrap()
        }
        Damage::Duplicate(i) => {
            // The text of one field, written again right after it.
            let path = &all[i % all.len()];
            let last = path.last().unwrap();
            let inner = at_path(&mut value.clone(), path).clone();
            let field = format!(
                "{}:{}",
                serde_json::to_string(last).unwrap(),
                serde_json::to_string(&inner).unwrap()
            );
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            match text.find(&field) {
                Some(at) => {
                    let end = at + field.len();
                    format!("{},{}{}", &text[..end], field, &text[end..]).into_bytes()
                }
                None => bytes.to_vec(),
            }
        }
        _ => unreachable!(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn damaged_checkpoints_are_refused_or_run_to_an_end(
        which in 0usize..5,
        damages in proptest::collection::vec(damage(), 1..4),
    ) {
        let mut bytes = checkpoints()[which].clone();
        for damage in &damages {
            bytes = apply(&bytes, damage);
        }
        paused().block_on(async {
            let Ok(checkpoint) = Checkpoint::from_json(&bytes, "fuzz", "fuzzed", "r") else {
                return;
            };
            let Ok(handle) = agent().restore_from_checkpoint(checkpoint) else {
                return;
            };
            let report = tokio::time::timeout(Duration::from_secs(24 * 3600), handle.wait())
                .await
                .expect("a restored run ends within a day of paused time");
            assert!(
                !matches!(report.error, Some(FlowError::RunLost { .. })),
                "the coordinator died"
            );
        });
    }
}

#[test]
fn the_undamaged_checkpoints_finish_the_run() {
    for bytes in checkpoints() {
        let checkpoint = Checkpoint::from_json(bytes, "fuzz", "fuzzed", "r").unwrap();
        let report = paused().block_on(async {
            agent()
                .restore_from_checkpoint(checkpoint)
                .unwrap()
                .wait()
                .await
        });
        assert_eq!(report.status, AgentStatus::Completed, "{:?}", report.error);
        assert_eq!(report.state("merge").unwrap().runs, 1);
    }
}

/// Writes the checkpoints as the fuzz target's seed corpus:
/// `cargo test --test checkpoint_fuzz -- --ignored` (then `cargo +nightly fuzz run checkpoint`).
#[test]
#[ignore]
fn write_the_fuzz_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/checkpoint");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, bytes) in checkpoints().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}.json")), bytes).unwrap();
    }
}
