//! Procedural macros of fluffy-flow: `#[workflow]`, `#[state]` and `#[context]`.
//!
//! Use them through the `fluffy-flow` crate, which documents them; the code they generate
//! names runtime items only through `::fluffy_flow::__private`.

mod context;
mod coordination;
mod errors;
mod options;
mod reduce;
mod signature;
mod subgraph;
mod transitions;
mod workflow;

use proc_macro::TokenStream;

/// Turns an `impl` block whose `#[state]` methods are the states into a workflow: implements
/// `fluffy_flow::Workflow` (the static `GRAPH` and `.agent()`), and checks the graph at compile
/// time. See the `fluffy-flow` crate docs for the options and the errors it reports.
#[proc_macro_attribute]
pub fn workflow(attr: TokenStream, item: TokenStream) -> TokenStream {
    workflow::expand(attr.into(), item.into()).into()
}

/// Marks a method of a `#[workflow]` impl block as a state. Only meaningful inside one: on its
/// own it reports an error (the `#[workflow]` attribute reads and removes these).
#[proc_macro_attribute]
pub fn state(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let item: proc_macro2::TokenStream = item.into();
    let error = syn::Error::new(
        proc_macro2::Span::call_site(),
        "`#[state]` only works on a method of an `impl` block marked `#[workflow]`; add \
         `#[workflow]` to the impl block",
    );
    let mut out = error.to_compile_error();
    out.extend(item);
    out.into()
}

/// Generates typed accessors on the run's context for each field of a struct: for a field
/// `title: String`, the extension trait `<Struct>Context` has `title()`, `set_title(..)` and
/// `update_title(|t| ..)`, all stored in the ordinary context store under the field's name. A
/// field marked `#[reduce(append)]` (or `extend`, `merge_map`, `sum`, `min`, `max`,
/// `with = path`) gets a reducer (see `Struct::reducers()`) and an `add_<field>(..)` accessor.
#[proc_macro_attribute]
pub fn context(attr: TokenStream, item: TokenStream) -> TokenStream {
    context::expand(attr.into(), item.into()).into()
}
