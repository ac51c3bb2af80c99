//! `#[context]`: typed accessors on the run's context for each field of a struct.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Fields, ItemStruct, LitStr};

use crate::errors::Errors;

/// Field names whose accessors (`x`, `set_x`, `update_x`) would collide with `Context`'s methods.
const CLASHES: &[&str] = &[
    "new",
    "from_json",
    "state",
    "typed",
    "get_state",
    "get_state_or",
    "get_typed",
    "has_state",
    "remove_state",
    "keys",
    "len",
    "is_empty",
    "snapshot",
    "clone",
    "fmt",
    "default",
    "run_key",
    "run_id",
    "attempt",
    "visit",
    "failure",
    "is_cancelled",
    "cancelled",
    "input",
    "emit",
];

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let mut prefix: Option<LitStr> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("prefix") {
            prefix = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error("unknown option of `#[context]`; the only option is `prefix = \"..\"`"))
        }
    });
    errors.push_result(syn::parse::Parser::parse2(parser, args));
    let mut strukt: ItemStruct = match syn::parse2(item.clone()) {
        Ok(strukt) => strukt,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "`#[context]` goes on a struct with named fields",
            );
            let mut out = error.to_compile_error();
            out.extend(item);
            return out;
        }
    };
    let p = quote!(::fluffy_flow::__private);
    // `#[reduce(..)]` comes off the fields before anything is emitted: it is not an attribute
    // the compiler knows.
    let mut reducers = Vec::new();
    if let Fields::Named(fields) = &mut strukt.fields {
        for field in fields.named.iter_mut() {
            let reducer = crate::reduce::take(&mut field.attrs, &field.ty, &p, &mut errors);
            reducers.push(reducer);
        }
    }
    let Fields::Named(fields) = &strukt.fields else {
        errors.push(syn::Error::new(
            strukt.fields.span(),
            "`#[context]` needs named fields: each field becomes a context key of that name",
        ));
        let compile_errors = errors.to_compile_errors();
        return quote!(#compile_errors #strukt);
    };
    if !strukt.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &strukt.generics,
            "`#[context]` does not support generic structs",
        ));
        let compile_errors = errors.to_compile_errors();
        return quote!(#compile_errors #strukt);
    }
    let vis = &strukt.vis;
    let ident = &strukt.ident;
    let trait_ident = format_ident!("{}Context", ident);
    let prefix = prefix.map(|p| p.value()).unwrap_or_default();
    let mut declarations = Vec::new();
    let mut definitions = Vec::new();
    let mut stores = Vec::new();
    let mut loads = Vec::new();
    let mut registrations = Vec::new();
    for (field, reducer) in fields.named.iter().zip(&reducers) {
        let Some(name) = &field.ident else { continue };
        let plain = name.to_string();
        if CLASHES.contains(&plain.as_str()) || plain.starts_with("r#") {
            errors.push(syn::Error::new(
                name.span(),
                format!("a `#[context]` field cannot be named `{plain}`: its accessors would clash with `Context`'s own methods; rename the field"),
            ));
            continue;
        }
        let ty = &field.ty;
        let key = format!("{prefix}{name}");
        let set = format_ident!("set_{}", name);
        let update = format_ident!("update_{}", name);
        let doc_get = format!("The context's `{key}` (a copy).");
        let doc_set = format!("Stores `{key}` in the context.");
        let doc_update = format!("Changes `{key}` in place (see `Context::update_typed`).");
        declarations.push(quote! {
            #[doc = #doc_get]
            fn #name(&self) -> ::core::result::Result<#ty, #p::FlowError>;
            #[doc = #doc_set]
            fn #set(&self, value: #ty);
            #[doc = #doc_update]
            fn #update<R>(&self, update: impl ::core::ops::FnOnce(&mut #ty) -> R) -> ::core::result::Result<R, #p::FlowError>;
        });
        // Errors about a field type that cannot live in the context point at the type.
        definitions.push(quote_spanned! {ty.span()=>
            fn #name(&self) -> ::core::result::Result<#ty, #p::FlowError> {
                self.get_state::<#ty>(#key)
            }
            fn #set(&self, value: #ty) {
                self.replace_state(#key, value)
            }
            fn #update<R>(&self, update: impl ::core::ops::FnOnce(&mut #ty) -> R) -> ::core::result::Result<R, #p::FlowError> {
                self.update_typed::<#ty, R>(#key, update)
            }
        });
        if let Some(reducer) = reducer {
            let add = format_ident!("add_{}", name);
            let make = &reducer.make;
            registrations.push(quote!((#key, #make)));
            let doc_add = format!(
                "Contributes to `{key}`: its reducer folds it in (inside a state; see `Reducer`)."
            );
            match &reducer.contribution {
                Some(contribution) => {
                    declarations.push(quote! {
                        #[doc = #doc_add]
                        fn #add(&self, contribution: #contribution);
                    });
                    definitions.push(quote_spanned! {ty.span()=>
                        fn #add(&self, contribution: #contribution) {
                            self.set_state(#key, contribution)
                        }
                    });
                }
                None => {
                    declarations.push(quote! {
                        #[doc = #doc_add]
                        fn #add<C: #p::ContextValue>(&self, contribution: C);
                    });
                    definitions.push(quote_spanned! {ty.span()=>
                        fn #add<C: #p::ContextValue>(&self, contribution: C) {
                            self.set_state(#key, contribution)
                        }
                    });
                }
            }
        }
        stores.push(quote!(context.replace_state(#key, self.#name);));
        loads.push(quote!(#name: context.get_state::<#ty>(#key)?,));
    }
    if !errors.is_empty() {
        // Accessors for the other fields would only add errors (a `load` missing a field).
        let compile_errors = errors.to_compile_errors();
        return quote!(#compile_errors #strukt);
    }
    let trait_doc = format!(
        "Typed access to the fields of [`{ident}`] in a run's context (generated by `#[context]`)."
    );
    let compile_errors = errors.to_compile_errors();
    quote! {
        #compile_errors
        #strukt

        #[doc = #trait_doc]
        #vis trait #trait_ident {
            #(#declarations)*
        }

        impl #trait_ident for #p::Context {
            #(#definitions)*
        }

        // The struct often serves only as the schema of its accessors: that is a use.
        const _: () = {
            let _ = #ident::load;
            let _ = #ident::store;
            let _ = #ident::reducers;
        };

        impl #ident {
            /// Stores every field in `context`, each under its own key.
            #vis fn store(self, context: &#p::Context) {
                #(#stores)*
            }

            /// Reads every field from `context`.
            #vis fn load(context: &#p::Context) -> ::core::result::Result<Self, #p::FlowError> {
                ::core::result::Result::Ok(Self { #(#loads)* })
            }

            /// The reducers of the fields marked `#[reduce(..)]`, by key: give them to an
            /// agent with `agent.reducers(..)`, or name this struct in
            /// `#[workflow(context = ..)]`.
            #vis fn reducers() -> ::std::vec::Vec<(&'static str, #p::Reducer)> {
                ::std::vec![#(#registrations),*]
            }
        }
    }
}
