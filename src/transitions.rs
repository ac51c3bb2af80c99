//! `next!`, `parallel!`, `goto!` and `end!`: what a state returns, written so that
//! `#[workflow]` can check every name at compile time.

/// Go to one state next: `next!(analyze_text)` is `Ok(Next::to("analyze_text"))`.
///
/// Inside a `#[workflow]`, the name must be a state of that workflow, or the build fails with
/// the closest name suggested.
#[macro_export]
macro_rules! next {
    ($state:ident $(,)?) => {
        ::core::result::Result::Ok($crate::Next::to(::core::stringify!($state)))
    };
    ($($other:tt)*) => {
        ::core::compile_error!(
            "`next!` takes one state name, like `next!(analyze_text)`; use `parallel!(a, b)` for \
             several, or `goto!(expr)` for a name computed at run time"
        )
    };
}

/// Fork into several states that run concurrently: `parallel!(a, b)` is
/// `Ok(Next::parallel(["a", "b"]))`. Checked like [`next!`].
#[macro_export]
macro_rules! parallel {
    ($($state:ident),+ $(,)?) => {
        ::core::result::Result::Ok($crate::Next::parallel([$(::core::stringify!($state)),+]))
    };
    ($($other:tt)*) => {
        ::core::compile_error!(
            "`parallel!` takes one or more state names, like `parallel!(a, b)`; use `end!()` to end \
             the branch"
        )
    };
}

/// Map over data: run a state once per item, each run on a branch of its own that reads its
/// item with `ctx.input()`: `map!(summarize, files)` is `Ok(Next::map("summarize", files))`.
/// The state is checked like `next!`'s. See the README's "Reducers and maps over data".
#[macro_export]
macro_rules! map {
    ($state:ident, $items:expr $(,)?) => {
        ::core::result::Result::Ok($crate::Next::map(::core::stringify!($state), $items))
    };
    ($($other:tt)*) => {
        ::core::compile_error!(
            "`map!` takes a state name and the items, like `map!(summarize, files)`"
        )
    };
}

/// Go to a state whose name is computed at run time: `goto!(format!("chunk_{i}"))` is
/// `Ok(Next::to(name))`. The escape hatch from compile-time checks: the name is checked when
/// the transition happens (an unknown name fails the run with `FlowError::UnknownTransition`),
/// and a state that uses it has no declared successors, so joins treat its branch
/// conservatively.
#[macro_export]
macro_rules! goto {
    ($state:expr $(,)?) => {
        ::core::result::Result::Ok($crate::Next::to($state))
    };
}

/// End this branch: `end!()` is `Ok(Next::End)`.
#[macro_export]
macro_rules! end {
    () => {
        ::core::result::Result::Ok($crate::Next::End)
    };
    ($($other:tt)+) => {
        ::core::compile_error!("`end!()` takes nothing: it ends this branch")
    };
}
