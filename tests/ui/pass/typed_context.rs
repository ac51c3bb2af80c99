//! `#[context]` accessors, `store` and `load`.

use fluffy_flow::prelude::*;

#[context(prefix = "article.")]
#[derive(Debug, Clone, PartialEq)]
pub struct Article {
    pub title: String,
    pub words: usize,
}

fn main() -> Result<(), FlowError> {
    let ctx = Context::new();
    ctx.set_title("Rust".to_string());
    ctx.set_words(1);
    ctx.update_words(|w| *w += 1)?;
    assert_eq!(ctx.title()?, "Rust");
    assert_eq!(ctx.get_state::<usize>("article.words")?, 2);
    Article { title: "Again".into(), words: 7 }.store(&ctx);
    assert_eq!(Article::load(&ctx)?, Article { title: "Again".into(), words: 7 });
    Ok(())
}
