//! Finds where a state's body says to go: `next!(a)`, `parallel!(a, b)`, `goto!(expr)`.

use syn::punctuated::Punctuated;
use syn::visit::Visit;
use syn::{Block, Ident, Macro, Token};

use crate::errors::Errors;

/// The transitions a state's body makes.
#[derive(Default)]
pub(crate) struct Transitions {
    /// Every state named by `next!` or `parallel!`, with the user's token (for errors).
    pub(crate) targets: Vec<Ident>,
    /// Whether the body also makes a transition computed at run time (`goto!`).
    pub(crate) dynamic: bool,
}

struct Finder<'a> {
    found: Transitions,
    errors: &'a mut Errors,
}

impl<'ast> Visit<'ast> for Finder<'_> {
    fn visit_macro(&mut self, mac: &'ast Macro) {
        let Some(name) = mac.path.segments.last().map(|s| s.ident.to_string()) else {
            return;
        };
        match name.as_str() {
            "next" => match mac.parse_body_with(Punctuated::<Ident, Token![,]>::parse_terminated) {
                Ok(names) if names.len() == 1 => self.found.targets.extend(names),
                Ok(_) => self.errors.push(syn::Error::new_spanned(
                    mac,
                    "`next!` takes one state name, like `next!(analyze_text)`; use `parallel!(a, b)` for several",
                )),
                Err(error) => self.errors.push(syn::Error::new(
                    error.span(),
                    "`next!` takes the name of a state of this workflow, like `next!(analyze_text)`; use `goto!(expr)` for a name computed at run time",
                )),
            },
            "parallel" => match mac.parse_body_with(Punctuated::<Ident, Token![,]>::parse_terminated) {
                Ok(names) if !names.is_empty() => self.found.targets.extend(names),
                Ok(_) => self.errors.push(syn::Error::new_spanned(
                    mac,
                    "`parallel!` needs at least one state, like `parallel!(a, b)`; use `end!()` to end the branch",
                )),
                Err(error) => self.errors.push(syn::Error::new(
                    error.span(),
                    "`parallel!` takes names of states of this workflow, like `parallel!(a, b)`",
                )),
            },
            "goto" => self.found.dynamic = true,
            _ => {}
        }
    }
}

/// Scans a state's body (closures and async blocks inside it included).
pub(crate) fn scan(body: &Block, errors: &mut Errors) -> Transitions {
    let mut finder = Finder {
        found: Transitions::default(),
        errors,
    };
    finder.visit_block(body);
    finder.found
}
