//! `cargo bench`: every benchmark scenario at the sizes the README reports, one JSON line each.

mod scenarios;

fn main() {
    for (scenario, n) in [
        ("chain", 10_000),
        ("monitored_chain", 10_000),
        ("chain_macro", 10_000),
        ("fanout", 10_000),
        ("fanout_io", 1_000),
        ("ring", 10_000),
        ("monitored_ring", 10_000),
        ("resources", 1_000),
        ("resources", 10_000),
        ("rate_limit", 2_000),
        ("coordination", 1_000),
        ("coordination", 10_000),
        ("build", 10_000),
        ("runs", 10_000),
        ("checkpoint", 100_000),
        ("input", 1_000),
        ("input_store", 20),
        ("subgraph", 10_000),
    ] {
        match scenarios::run(scenario, n, 7) {
            Ok(line) => println!("{line}"),
            Err(message) => panic!("{message}"),
        }
    }
    // The monitor's budget is a ratio: measured side by side, in one process.
    for (a, b) in [("chain", "monitored_chain"), ("ring", "monitored_ring")] {
        match scenarios::compare(a, b, 10_000, 15) {
            Ok(line) => println!("{line}"),
            Err(message) => panic!("{message}"),
        }
    }
}
