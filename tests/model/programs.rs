//! Random programs for the model tests: loops, forks of random width (naming a state twice,
//! sometimes), declared and undeclared successors, random durations.

use proptest::prelude::*;

use super::{ProgState, Program};

/// Which successors a generated program declares.
#[derive(Clone, Copy, Debug)]
pub enum Mix {
    Declared,
    Undeclared,
    Mixed,
}

/// A random program of 2 to 8 states whose successors `mix` declares.
pub fn program(mix: Mix) -> impl Strategy<Value = Program> {
    (2usize..=8).prop_flat_map(move |n| {
        let state = move |i: usize| {
            // Exits lead down the order, often all to the last state: branches converge.
            let exit = if i + 1 < n {
                prop_oneof![
                    proptest::collection::vec(i + 1..n, 0..=2),
                    Just(vec![n - 1]),
                ]
                .boxed()
            } else {
                Just(Vec::new()).boxed()
            };
            (
                any::<bool>(),
                0u32..=2,
                proptest::collection::vec(0..n, 0..=3),
                exit,
                1u64..=1_000_000,
            )
                .prop_map(move |(coin, cap, looping, exit, duration_ms)| ProgState {
                    declared: match mix {
                        Mix::Declared => true,
                        Mix::Undeclared => false,
                        Mix::Mixed => coin,
                    },
                    cap,
                    looping,
                    exit,
                    duration_ms,
                })
        };
        (0..n)
            .map(state)
            .collect::<Vec<_>>()
            .prop_map(|states| Program { states })
    })
}
