use fluffy_flow::prelude::*;

#[context]
struct Tally {
    #[reduce(append)]
    count: u32,
    #[reduce(average)]
    mean: f64,
    #[reduce(merge_map)]
    by_name: Vec<u32>,
    #[reduce(sum)]
    total: u64,
}

fn main() {}
