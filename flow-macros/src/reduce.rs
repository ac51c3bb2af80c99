//! `#[reduce(..)]` on a field of a `#[context]` struct: the key's reducer, from the field's
//! type.

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Attribute, GenericArgument, PathArguments, Type};

use crate::errors::Errors;

/// A field's reducer: the expression that makes it, and the type of one contribution (`None`:
/// a reducer of your own, whose contribution type the macro cannot see).
pub(crate) struct FieldReducer {
    pub(crate) make: TokenStream,
    pub(crate) contribution: Option<Type>,
}

const KINDS: &str = "append, extend, merge_map, sum, min, max, or with = path::to::fn";

/// Takes the `#[reduce(..)]` attribute off a field and reads it; errors go to `errors`.
pub(crate) fn take(
    attrs: &mut Vec<Attribute>,
    ty: &Type,
    p: &TokenStream,
    errors: &mut Errors,
) -> Option<FieldReducer> {
    let index = attrs.iter().position(|a| a.path().is_ident("reduce"))?;
    let attr = attrs.remove(index);
    if let Some(again) = attrs.iter().find(|a| a.path().is_ident("reduce")) {
        errors.push(syn::Error::new(
            again.span(),
            "a field has one reducer; keep one `#[reduce(..)]`",
        ));
    }
    let mut found: Option<FieldReducer> = None;
    let parsed = attr.parse_nested_meta(|meta| {
        if found.is_some() {
            return Err(meta.error(format!("give one reducer: {KINDS}")));
        }
        let Some(kind) = meta.path.get_ident().map(ToString::to_string) else {
            return Err(meta.error(format!("unknown reducer; the reducers are {KINDS}")));
        };
        let element = |container: &str, position: usize| {
            generic_arg(ty, container, position).ok_or_else(|| {
                syn::Error::new(
                    ty.span(),
                    format!(
                        "`#[reduce({kind})]` needs a field of type `{}`",
                        match container {
                            "Vec" => "Vec<T>",
                            _ => "BTreeMap<String, T>",
                        }
                    ),
                )
            })
        };
        found = Some(match kind.as_str() {
            "append" => {
                let item = element("Vec", 0)?;
                FieldReducer {
                    make: quote!(#p::Reducer::append::<#item>()),
                    contribution: Some(item.clone()),
                }
            }
            "extend" => {
                let item = element("Vec", 0)?;
                FieldReducer {
                    make: quote!(#p::Reducer::extend::<#item>()),
                    contribution: Some(ty.clone()),
                }
            }
            "merge_map" => {
                let value = element("BTreeMap", 1)?;
                FieldReducer {
                    make: quote!(#p::Reducer::merge_map::<#value>()),
                    contribution: Some(ty.clone()),
                }
            }
            "sum" | "min" | "max" => {
                let method = syn::Ident::new(&kind, meta.path.span());
                FieldReducer {
                    make: quote!(#p::Reducer::#method::<#ty>()),
                    contribution: Some(ty.clone()),
                }
            }
            "with" => {
                let path: syn::Path = meta.value()?.parse().map_err(|e: syn::Error| {
                    syn::Error::new(
                        e.span(),
                        "`with` names a function that returns the `Reducer`: `with = my_reducer`",
                    )
                })?;
                FieldReducer {
                    make: quote!(#path()),
                    contribution: None,
                }
            }
            other => {
                return Err(meta.error(format!(
                    "unknown reducer `{other}`; the reducers are {KINDS}"
                )));
            }
        });
        Ok(())
    });
    errors.push_result(parsed);
    if found.is_none() && errors.is_empty() {
        errors.push(syn::Error::new(
            attr.span(),
            format!("`#[reduce]` names a reducer: {KINDS}"),
        ));
    }
    found
}

/// The `position`th type argument of `ty` when it is `container<..>` (by its last path
/// segment: `Vec`, `std::vec::Vec`).
fn generic_arg<'a>(ty: &'a Type, container: &str, position: usize) -> Option<&'a Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != container {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.iter().nth(position)? {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    }
}
