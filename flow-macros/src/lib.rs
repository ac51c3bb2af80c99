//! Procedural macros of fluffy-flow.
//!
//! The `#[workflow]`, `#[state]` and `#[context]` attributes arrive with the macro issue; until then
//! this crate is an empty proc-macro crate so that the workspace layout is final.
