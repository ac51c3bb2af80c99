use fluffy_flow::prelude::*;

#[context]
struct Index {
    keys: Vec<String>,
    size: usize,
    attempt: u32,
}

fn main() {}
