//! Finds where a method's body says to go: `next!(a)`, `parallel!(a, b)`, `map!(a, items)`,
//! `goto!(expr)`, a `Next` built by hand, and the methods of `self` it calls.
//!
//! The body is read as tokens, not as a syntax tree, so that transitions written inside other
//! macros (`tokio::select! { .. => next!(a) }`, `vec![..]`) are found too.

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;
use syn::punctuated::Punctuated;
use syn::{Block, Ident, Token};

/// The transitions a method's body makes.
#[derive(Default, Clone)]
pub(crate) struct Transitions {
    /// Every state named by `next!` or `parallel!`, with the user's token (for errors).
    pub(crate) targets: Vec<Ident>,
    /// Whether the body also makes a transition the macro cannot read: `goto!(expr)`, or a
    /// `Next::to(..)` / `Next::parallel(..)` built by hand.
    pub(crate) dynamic: bool,
    /// Methods called on `self`; their transitions count as this body's.
    pub(crate) calls: Vec<Ident>,
}

/// Scans a method's body. Malformed `next!`/`parallel!` calls are left to those macros, which
/// report them.
pub(crate) fn scan(body: &Block) -> Transitions {
    let mut found = Transitions::default();
    scan_stream(body.to_token_stream(), &mut found);
    found
}

fn is_punct(token: Option<&TokenTree>, c: char) -> bool {
    matches!(token, Some(TokenTree::Punct(p)) if p.as_char() == c)
}

fn scan_stream(stream: TokenStream, found: &mut Transitions) {
    let tokens: Vec<TokenTree> = stream.into_iter().collect();
    for (i, token) in tokens.iter().enumerate() {
        let ident = match token {
            TokenTree::Group(group) => {
                scan_stream(group.stream(), found);
                continue;
            }
            TokenTree::Ident(ident) => ident,
            _ => continue,
        };
        let name = ident.to_string();
        let macro_body = match (is_punct(tokens.get(i + 1), '!'), tokens.get(i + 2)) {
            (true, Some(TokenTree::Group(group))) => Some(group.stream()),
            _ => None,
        };
        match (name.as_str(), macro_body) {
            ("next" | "parallel", Some(body)) => {
                let parser = Punctuated::<Ident, Token![,]>::parse_terminated;
                if let Ok(names) = syn::parse::Parser::parse2(parser, body)
                    && (name == "parallel" || names.len() == 1)
                {
                    found.targets.extend(names);
                }
            }
            ("map", Some(body)) => {
                let mut body = body.into_iter();
                if let (Some(TokenTree::Ident(state)), Some(TokenTree::Punct(comma))) =
                    (body.next(), body.next())
                    && comma.as_char() == ','
                {
                    found.targets.push(state);
                }
            }
            ("goto", Some(_)) => found.dynamic = true,
            ("Next", None)
                if is_punct(tokens.get(i + 1), ':') && is_punct(tokens.get(i + 2), ':') =>
            {
                if let Some(TokenTree::Ident(variant)) = tokens.get(i + 3)
                    && matches!(
                        variant.to_string().as_str(),
                        "to" | "To" | "parallel" | "Parallel" | "map" | "Map"
                    )
                {
                    found.dynamic = true;
                }
            }
            ("self", None) if is_punct(tokens.get(i + 1), '.') => {
                if let (Some(TokenTree::Ident(method)), Some(TokenTree::Group(args))) =
                    (tokens.get(i + 2), tokens.get(i + 3))
                    && args.delimiter() == Delimiter::Parenthesis
                {
                    found.calls.push(method.clone());
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_source(source: &str) -> Transitions {
        scan(&syn::parse_str::<Block>(source).expect("a block"))
    }

    fn names(t: &Transitions) -> Vec<String> {
        t.targets.iter().map(Ident::to_string).collect()
    }

    #[test]
    fn finds_transitions_inside_other_macros_and_blocks() {
        let t = scan_source(
            "{ tokio::select! { _ = a => next!(left), _ = b => { parallel!(x, y,) } }; if c { next!(z) } else { end!() } }",
        );
        assert_eq!(names(&t), ["left", "x", "y", "z"]);
        let t = scan_source("{ let items = vec![1, 2]; map!(chunk, items) }");
        assert_eq!(names(&t), ["chunk"]);
        assert!(!t.dynamic);
        assert!(scan_source("{ Ok(Next::map(\"chunk\", items)) }").dynamic);
        assert!(!t.dynamic);
        assert!(t.calls.is_empty());
    }

    #[test]
    fn hand_built_next_and_goto_are_dynamic_but_end_is_not() {
        assert!(scan_source("{ Ok(Next::to(\"a\")) }").dynamic);
        assert!(scan_source("{ Ok(fluffy_flow::Next::Parallel(v)) }").dynamic);
        assert!(scan_source("{ goto!(name) }").dynamic);
        assert!(!scan_source("{ Ok(Next::End) }").dynamic);
    }

    #[test]
    fn records_methods_called_on_self() {
        let t =
            scan_source("{ self.helper(ctx).await?; let n = self.count; self.route(ctx).await }");
        let calls: Vec<String> = t.calls.iter().map(Ident::to_string).collect();
        assert_eq!(calls, ["helper", "route"]);
    }

    #[test]
    fn malformed_calls_are_left_to_the_macros() {
        assert!(names(&scan_source("{ next!(a, b); next!(\"x\"); parallel!() }")).is_empty());
    }
}
