//! Checks that a `#[state]` method has the shape the runtime calls:
//! `async fn name(&self, ctx: &Context) -> Result<Next, E>` (or `-> StateResult`).

use syn::spanned::Spanned;
use syn::{FnArg, ReturnType, Signature, Type};

use crate::errors::Errors;

const SHAPE: &str = "async fn name(&self, ctx: &Context) -> StateResult";

/// Reports every way `sig` differs from a state's shape; true when it has the shape.
pub(crate) fn check(sig: &Signature, errors: &mut Errors) -> bool {
    let mut ok = true;
    let mut fail = |span: proc_macro2::Span, message: String| {
        ok = false;
        errors.push(syn::Error::new(span, message));
    };
    if sig.asyncness.is_none() {
        fail(
            sig.fn_token.span(),
            format!("state `{}` must be an `async fn`: `{SHAPE}`", sig.ident),
        );
    }
    if !sig.generics.params.is_empty() {
        fail(
            sig.generics.span(),
            format!("state `{}` cannot be generic: `{SHAPE}`", sig.ident),
        );
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(syn::Receiver {
            kind: syn::ReceiverKind::Reference(_, _, None),
            ..
        })) => {}
        Some(other) => fail(
            other.span(),
            format!(
                "state `{}` takes `&self` first (states run concurrently, so not `&mut self` or `self`): `{SHAPE}`",
                sig.ident
            ),
        ),
        None => fail(
            sig.paren_token.span.join(),
            format!(
                "state `{}` takes `&self` and the context: `{SHAPE}`",
                sig.ident
            ),
        ),
    }
    match inputs.next() {
        Some(FnArg::Typed(typed)) if is_context_reference(&typed.ty) => {}
        Some(other) => fail(
            other.span(),
            format!(
                "the second parameter of state `{}` is the run's context, by shared reference: `ctx: &Context`",
                sig.ident
            ),
        ),
        None if sig.inputs.is_empty() => {}
        None => fail(
            sig.paren_token.span.join(),
            format!("state `{}` also takes the context: `{SHAPE}`", sig.ident),
        ),
    }
    for extra in inputs {
        fail(
            extra.span(),
            format!(
                "state `{}` takes only `&self` and the context: `{SHAPE}`",
                sig.ident
            ),
        );
    }
    match &sig.output {
        ReturnType::Default => fail(
            sig.ident.span(),
            format!(
                "state `{}` must return where to go next: `-> StateResult` or `-> Result<Next, E>`",
                sig.ident
            ),
        ),
        ReturnType::Type(_, ty) => {
            let last = match &**ty {
                Type::Path(path) => path.path.segments.last().map(|s| s.ident.to_string()),
                _ => None,
            };
            if !matches!(last.as_deref(), Some("Result" | "StateResult")) {
                fail(
                    ty.span(),
                    format!(
                        "state `{}` must return `StateResult` or `Result<Next, E>`",
                        sig.ident
                    ),
                );
            }
        }
    }
    ok
}

/// `&Context` (by any path ending in `Context`).
fn is_context_reference(ty: &Type) -> bool {
    let Type::Reference(reference) = ty else {
        return false;
    };
    if reference.mutability.is_some() {
        return false;
    }
    matches!(&*reference.elem, Type::Path(path) if path.path.segments.last().is_some_and(|s| s.ident == "Context"))
}
