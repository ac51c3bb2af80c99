//! Runs one benchmark scenario and prints its JSON line.
//!
//! ```text
//! cargo run --release --example bench -- SCENARIO N [REPETITIONS]
//! cargo run --release --example bench -- compare SCENARIO_A SCENARIO_B N [PAIRS]
//! ```
//!
//! `compare` runs the two in turn in one process (default 15 pairs) and prints both medians
//! per transition and the median of the pairs' ratios: the side-by-side comparison the
//! README quotes.
//!
//! Scenarios: `chain`, `chain_macro`, `fanout`, `fanout_io`, `ring`, `resources`, `build`, `runs`,
//! `checkpoint` (see the README's benchmark
//! section and `benches/scenarios/mod.rs`). Times are medians over the repetitions (default 7).
//! `cargo bench` runs every scenario at the sizes the README reports.

#[path = "../benches/scenarios/mod.rs"]
mod scenarios;

fn main() {
    let usage = format!(
        "usage: bench SCENARIO N [REPETITIONS]; scenarios: {}",
        scenarios::SCENARIOS.join(" ")
    );
    let mut args = std::env::args().skip(1);
    if std::env::args().nth(1).as_deref() == Some("compare") {
        let _ = args.next();
        let (Some(a), Some(b), Some(n)) = (
            args.next(),
            args.next(),
            args.next().and_then(|a| a.parse::<usize>().ok()),
        ) else {
            eprintln!("usage: bench compare SCENARIO_A SCENARIO_B N [PAIRS]");
            std::process::exit(2);
        };
        let pairs = args.next().and_then(|a| a.parse().ok()).unwrap_or(15);
        match scenarios::compare(&a, &b, n, pairs) {
            Ok(line) => println!("{line}"),
            Err(message) => {
                eprintln!("{message}");
                std::process::exit(2);
            }
        }
        return;
    }
    let (Some(scenario), Some(n)) = (
        args.next(),
        args.next().and_then(|a| a.parse::<usize>().ok()),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let repetitions = args.next().and_then(|a| a.parse().ok()).unwrap_or(7);
    match scenarios::run(&scenario, n, repetitions) {
        Ok(line) => println!("{line}"),
        Err(message) => {
            eprintln!("{message}\n{usage}");
            std::process::exit(2);
        }
    }
}
