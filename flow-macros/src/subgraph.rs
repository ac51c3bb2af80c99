//! `#[state(subgraph(workflow = .., input(..), output(..), item = ..))]`: a state that runs
//! another workflow as a whole; the method's body decides where to go once it completed.

use std::collections::HashSet;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Expr, Ident, ImplItem};

use crate::errors::Errors;
use crate::options::{Seen, key_of};

/// What `subgraph(...)` says.
pub(crate) struct Subgraph {
    /// The `subgraph` token, for errors about the whole.
    pub(crate) span: Span,
    /// `workflow = expr`: an `Agent`, or a value of a `#[workflow]` type; evaluated once, when
    /// the agent is built, in a method of the workflow (so it may use `self`).
    workflow: Option<Expr>,
    /// (subgraph key, parent key), as `input(child = parent)` writes them.
    inputs: Vec<(String, String)>,
    /// (parent key, subgraph key), as `output(parent = child)` writes them.
    outputs: Vec<(String, String)>,
    /// `item = key`: the map item goes to this subgraph key.
    item: Option<String>,
}

const USAGE: &str = "`subgraph(workflow = Review, input(text = draft), output(verdict), item = doc)`: \
    `workflow` is an `Agent` or a `#[workflow]` value (it may use `self`), `input(child_key = parent_key)` \
    and `output(parent_key = child_key)` copy keys (a bare key keeps its name), `item` takes a map branch's item";

/// Parses `subgraph(...)`.
pub(crate) fn parse(meta: &ParseNestedMeta, errors: &mut Errors) -> syn::Result<Subgraph> {
    let mut subgraph = Subgraph {
        span: meta.path.span(),
        workflow: None,
        inputs: Vec::new(),
        outputs: Vec::new(),
        item: None,
    };
    if !meta.input.peek(syn::token::Paren) {
        return Err(meta.error(USAGE));
    }
    let mut seen = Seen(HashSet::new());
    meta.parse_nested_meta(|option| {
        let key = key_of(&option);
        match key.as_str() {
            "workflow" => {
                seen.check(&option, &key, errors);
                subgraph.workflow = Some(option.value()?.parse()?);
            }
            "item" => {
                seen.check(&option, &key, errors);
                subgraph.item = Some(key_name(&option.value()?.parse()?)?);
            }
            "input" | "output" => {
                let pairs = if key == "input" {
                    &mut subgraph.inputs
                } else {
                    &mut subgraph.outputs
                };
                option.parse_nested_meta(|pair| {
                    let Some(to) = pair.path.get_ident() else {
                        return Err(pair.error(USAGE));
                    };
                    let from = if pair.input.peek(syn::Token![=]) {
                        key_name(&pair.value()?.parse()?)?
                    } else {
                        to.to_string()
                    };
                    pairs.push((to.to_string(), from));
                    Ok(())
                })?;
            }
            other => {
                return Err(syn::Error::new(
                    option.path.span(),
                    format!("unknown subgraph option `{other}`; {USAGE}"),
                ));
            }
        }
        Ok(())
    })?;
    if subgraph.workflow.is_none() {
        errors.push(syn::Error::new(
            subgraph.span,
            format!("say which workflow the subgraph runs: {USAGE}"),
        ));
    }
    Ok(subgraph)
}

/// A context key: an identifier, or a string for a key that is not one.
fn key_name(expr: &Expr) -> syn::Result<String> {
    match expr {
        Expr::Path(path) if path.path.get_ident().is_some() => Ok(path
            .path
            .get_ident()
            .map(Ident::to_string)
            .unwrap_or_default()),
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(text),
            ..
        }) => Ok(text.value()),
        other => Err(syn::Error::new(
            other.span(),
            "a context key is an identifier or a string: `text = draft`, `text = \"draft text\"`",
        )),
    }
}

impl Subgraph {
    /// The hidden method that builds the subgraph's workflow (added to the impl block, so that
    /// its expression may use `self`).
    pub(crate) fn builder_method(&self, state: &Ident) -> Option<ImplItem> {
        let workflow = self.workflow.as_ref()?;
        let name = builder_name(state);
        let p = quote!(::fluffy_flow::__private);
        let span = workflow.span();
        let method = quote_spanned! {span=>
            #[doc(hidden)]
            #[allow(non_snake_case)]
            fn #name(&self) -> #p::Agent {
                #p::IntoSubgraph::into_subgraph(#workflow)
            }
        };
        // As tokens: the compiler reports anything wrong in the user's expression, at it.
        Some(ImplItem::Verbatim(method))
    }

    /// The registration of the state: `add_subgraph_with_router`, the method's body the
    /// router.
    pub(crate) fn register(&self, state: &Ident, name: &str, span: Span) -> TokenStream {
        let p = quote!(::fluffy_flow::__private);
        let builder = builder_name(state);
        let inputs = self
            .inputs
            .iter()
            .map(|(child, parent)| quote!(.input(#parent, #child)));
        let outputs = self
            .outputs
            .iter()
            .map(|(parent, child)| quote!(.output(#child, #parent)));
        let item = self.item.iter().map(|key| quote!(.input_item(#key)));
        quote_spanned! {span=>
            agent.add_subgraph_with_router(
                #name,
                &<Self>::#builder(&*this),
                #p::SubgraphMapping::new() #(#inputs)* #(#outputs)* #(#item)*,
                move |ctx: #p::Context| {
                    let this = ::std::sync::Arc::clone(&this);
                    async move { <Self>::#state(&*this, &ctx).await }
                },
            )
        }
    }
}

fn builder_name(state: &Ident) -> Ident {
    format_ident!("__fluffy_subgraph_{}", state)
}
