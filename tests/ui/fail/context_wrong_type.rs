use fluffy_flow::prelude::*;

#[context]
struct Article {
    title: String,
    words: usize,
}

fn main() {
    let ctx = Context::new();
    ctx.set_words(12);
    ctx.set_title(42);
}
