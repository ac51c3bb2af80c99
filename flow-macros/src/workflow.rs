//! `#[workflow]`: reads the `#[state]` methods of an impl block, checks the graph they form,
//! and implements `Workflow` (the static `GRAPH` and the registration of every state).

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Ident, ImplItem, ImplItemFn, ItemImpl, ReturnType};

use crate::errors::Errors;
use crate::options::{self, StateOptions, WorkflowOptions};
use crate::signature;
use crate::transitions::{self, Transitions};

struct State {
    /// The method.
    ident: Ident,
    /// The state's name: the method's, or `#[state(name = "..")]`.
    name: String,
    options: StateOptions,
    transitions: Transitions,
    /// Where the return type is, for errors about what the state returns.
    output_span: Span,
}

fn is_state_attribute(attr: &Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "state")
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let options = options::parse_workflow(args, &mut errors);
    let mut block: ItemImpl = match syn::parse2(item.clone()) {
        Ok(block) => block,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "`#[workflow]` goes on an `impl` block whose `#[state]` methods are the workflow's states",
            );
            let mut out = error.to_compile_error();
            out.extend(item);
            return out;
        }
    };
    if let Some((path, _)) = &block.trait_ {
        errors.push(syn::Error::new_spanned(path, "`#[workflow]` goes on an inherent `impl` block (`impl MyWorkflow { .. }`), not a trait impl"));
    }
    if !block.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &block.generics,
            "a `#[workflow]` type cannot be generic; wrap the generic parts in a concrete type",
        ));
    }

    let states = collect_states(&mut block, &mut errors);
    if states.is_empty() && errors.is_empty() {
        errors.push(syn::Error::new_spanned(
            &block.self_ty,
            "this workflow has no states: mark its async methods with `#[state]`",
        ));
    }
    check_graph(&states, options.on_error.as_ref(), &mut errors);

    let self_ty = &block.self_ty;
    let name = workflow_name(&options, self_ty);
    let workflow_impl = if errors.is_empty() {
        generate(&options, &name, self_ty, &states)
    } else if !block.generics.params.is_empty() {
        // Its generics are already reported; an impl naming them would only add errors.
        TokenStream::new()
    } else {
        // Keep `.agent()` and `GRAPH` resolvable, so that one mistake is one error.
        quote! {
            impl ::fluffy_flow::__private::Workflow for #self_ty {
                const GRAPH: ::fluffy_flow::__private::WorkflowSpec = ::fluffy_flow::__private::WorkflowSpec {
                    name: #name, max_concurrent: ::core::option::Option::None,
                    timeout: ::core::option::Option::None, cleanup_timeout: ::core::option::Option::None,
                    max_steps: ::core::option::Option::None,
                    states: &[],
                };
                fn __register(_: ::std::sync::Arc<Self>, _: &mut ::fluffy_flow::__private::Agent) {}
            }
        }
    };
    let compile_errors = errors.to_compile_errors();
    quote! {
        #compile_errors
        #block
        #workflow_impl
    }
}

fn workflow_name(options: &WorkflowOptions, self_ty: &syn::Type) -> String {
    if let Some(name) = &options.name {
        return name.value();
    }
    match self_ty {
        syn::Type::Path(path) => path.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
    .unwrap_or_else(|| self_ty.to_token_stream().to_string())
}

/// Names a state cannot have: they would hide the `Workflow` methods users call.
const RESERVED: [&str; 2] = ["agent", "agent_shared"];

/// Takes the `#[state]` attributes off the methods and reads what each state is.
fn collect_states(block: &mut ItemImpl, errors: &mut Errors) -> Vec<State> {
    let mut states: Vec<State> = Vec::new();
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut duplicates = Vec::new();
    // Transitions of every method, states and helpers alike: a state that calls a helper (or
    // another state) on `self` makes the transitions that helper makes.
    let mut bodies: HashMap<String, Transitions> = HashMap::new();
    for (index, item) in block.items.iter_mut().enumerate() {
        let ImplItem::Fn(method) = item else { continue };
        let (state_attrs, others): (Vec<Attribute>, Vec<Attribute>) =
            method.attrs.drain(..).partition(is_state_attribute);
        method.attrs = others;
        let name = method.sig.ident.to_string();
        let Some(first) = state_attrs.first() else {
            bodies
                .entry(name)
                .or_insert_with(|| transitions::scan(&method.block));
            continue;
        };
        for extra in &state_attrs[1..] {
            errors.push(syn::Error::new_spanned(
                extra,
                format!("`#[state]` is given twice on `{name}`; merge the options into one"),
            ));
        }
        if let Some(cfg) = method
            .attrs
            .iter()
            .find(|a| a.path().is_ident("cfg") || a.path().is_ident("cfg_attr"))
        {
            errors.push(syn::Error::new_spanned(
                cfg,
                "a state cannot be conditionally compiled (the graph would name a state that may not exist); \
                 put the condition inside the state's body, or on the whole `impl` block",
            ));
        }
        let options = options::parse_state(first, errors);
        if name.starts_with("r#") && options.name.is_none() {
            errors.push(syn::Error::new(method.sig.ident.span(), format!("`{name}` cannot name a state (state names are plain identifiers); rename the method, or name the state with `#[state(name = \"..\")]`")));
        } else if RESERVED.contains(&name.as_str()) {
            errors.push(syn::Error::new(
                method.sig.ident.span(),
                format!("a method cannot be named `{name}`: it would hide `Workflow::{name}`; rename the method and keep the state's name with `#[state(name = \"{name}\")]`"),
            ));
        }
        signature::check(&method.sig, errors);
        let transitions = transitions::scan(&method.block);
        let state_name = options
            .name
            .as_ref()
            .map_or_else(|| name.clone(), syn::LitStr::value);
        let name_span = options
            .name
            .as_ref()
            .map_or_else(|| method.sig.ident.span(), syn::LitStr::span);
        if seen.insert(state_name.clone(), ()).is_some() {
            errors.push(syn::Error::new(
                name_span,
                format!(
                    "two states are named `{state_name}`; state names must be unique, rename one"
                ),
            ));
            duplicates.push(index);
            continue;
        }
        bodies.insert(name, transitions.clone());
        states.push(State {
            name: state_name,
            ident: method.sig.ident.clone(),
            options,
            transitions,
            output_span: output_span(method),
        });
    }
    // Only the first of two same-named methods is kept, so the compiler does not report the
    // duplicate a second time.
    for index in duplicates.into_iter().rev() {
        block.items.remove(index);
    }
    for state in &mut states {
        state.transitions = reachable_transitions(&state.ident.to_string(), &bodies);
    }
    // A subgraph state's workflow is built by a hidden method, where its expression may use
    // `self`.
    for state in &states {
        if let Some(method) =
            (state.options.subgraph.as_ref()).and_then(|s| s.builder_method(&state.ident))
        {
            block.items.push(method);
        }
    }
    states
}

/// The transitions of a method together with those of every method it calls on `self`,
/// transitively.
fn reachable_transitions(method: &str, bodies: &HashMap<String, Transitions>) -> Transitions {
    let mut merged = Transitions::default();
    let mut visited = vec![method.to_owned()];
    let mut queue = vec![method.to_owned()];
    while let Some(name) = queue.pop() {
        let Some(body) = bodies.get(&name) else {
            continue;
        };
        merged.targets.extend(body.targets.iter().cloned());
        merged.dynamic |= body.dynamic;
        for call in &body.calls {
            let call = call.to_string();
            if !visited.contains(&call) {
                visited.push(call.clone());
                queue.push(call);
            }
        }
    }
    merged
}

fn output_span(method: &ImplItemFn) -> Span {
    match &method.sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => method.sig.ident.span(),
    }
}

/// Transitions, dependencies and error handlers must name states; required dependencies must
/// not form a cycle.
fn check_graph(states: &[State], default_on_error: Option<&Ident>, errors: &mut Errors) {
    let names: Vec<String> = states.iter().map(|s| s.name.clone()).collect();
    let index = |ident: &Ident| names.iter().position(|n| *ident == n);
    let unknown = |ident: &Ident, what: &str| {
        let hint = flow_core::closest_name(&ident.to_string(), names.iter().map(String::as_str))
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_else(|| format!("; the states are: {}", names.join(", ")));
        syn::Error::new(
            ident.span(),
            format!("{what} `{ident}`, but this workflow has no state of that name{hint}"),
        )
    };
    for state in states {
        for target in &state.transitions.targets {
            if index(target).is_none() {
                errors.push(unknown(target, &format!("state `{}` goes to", state.name)));
            }
        }
        for target in state.options.successors.iter().flatten() {
            if index(target).is_none() {
                errors.push(unknown(
                    target,
                    &format!("state `{}` lists as a successor", state.name),
                ));
            }
        }
        for dependency in state.options.deps.iter().map(|d| &d.state) {
            if index(dependency).is_none() {
                errors.push(unknown(
                    dependency,
                    &format!("state `{}` depends on", state.name),
                ));
            } else if *dependency == state.name {
                errors.push(syn::Error::new(
                    dependency.span(),
                    format!(
                        "state `{}` depends on itself; remove that dependency",
                        state.name
                    ),
                ));
            }
        }
        if let Some(handler) = &state.options.on_error {
            if index(handler).is_none() {
                errors.push(unknown(
                    handler,
                    &format!("state `{}` names as its `on_error` handler", state.name),
                ));
            } else if *handler == state.name {
                errors.push(syn::Error::new(
                    handler.span(),
                    format!("state `{}` cannot be its own `on_error` handler: the handler runs when the state has failed; name another state", state.name),
                ));
            }
        }
    }
    if let Some(handler) = default_on_error
        && index(handler).is_none()
    {
        errors.push(unknown(handler, "the workflow's `on_error` names"));
    }
    // A bulkhead is one thing, whichever states name it: its limits must agree.
    let mut bulkheads: Vec<&crate::options::BulkheadOption> = Vec::new();
    for state in states {
        let Some(bulkhead) = &state.options.bulkhead else {
            continue;
        };
        match bulkheads
            .iter()
            .find(|b| b.name.value() == bulkhead.name.value())
        {
            Some(first)
                if (first.max_concurrent, first.max_queued)
                    != (bulkhead.max_concurrent, bulkhead.max_queued) =>
            {
                errors.push(syn::Error::new(
                    bulkhead.name.span(),
                    format!(
                        "bulkhead {:?} is declared with max_concurrent = {}, max_queued = {} elsewhere; states naming one bulkhead must give it the same limits",
                        bulkhead.name.value(),
                        first.max_concurrent,
                        first.max_queued
                    ),
                ));
            }
            Some(_) => {}
            None => bulkheads.push(bulkhead),
        }
    }
    // A named primitive is one thing, whichever states name it: its settings must agree.
    crate::coordination::check_shared(
        states
            .iter()
            .flat_map(|state| state.options.coordination.iter()),
        errors,
    );
    // Required dependencies, as edges dependency -> dependent, in the order they are written.
    let mut edges = Vec::new();
    let mut edge_tokens = Vec::new();
    for (dependent, state) in states.iter().enumerate() {
        for dependency in &state.options.deps {
            if let (true, Some(from)) = (dependency.kind == "Required", index(&dependency.state))
                && from != dependent
            {
                edges.push((from, dependent));
                edge_tokens.push(&dependency.state);
            }
        }
    }
    if let Some((closing, cycle)) = flow_core::find_cycle(states.len(), &edges) {
        let path: Vec<String> = cycle
            .iter()
            .chain(cycle.first())
            .map(|&i| names[i].clone())
            .collect();
        errors.push(syn::Error::new(
            edge_tokens[closing].span(),
            format!(
                "required dependencies form a cycle: {}; no state of it could ever start — make one of these dependencies `optional` or remove it",
                path.join(" is required by ")
            ),
        ));
    }
}

fn optional<T: ToTokens>(value: Option<T>) -> TokenStream {
    match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    }
}

/// A `Duration` as tokens.
pub(crate) fn duration_tokens(value: std::time::Duration) -> TokenStream {
    duration(value)
}

fn duration(value: std::time::Duration) -> TokenStream {
    let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
    quote!(::core::time::Duration::from_nanos(#nanos))
}

fn generate(
    options: &WorkflowOptions,
    name: &str,
    self_ty: &syn::Type,
    states: &[State],
) -> TokenStream {
    let p = quote!(::fluffy_flow::__private);
    let max_concurrent = optional(options.max_concurrent);
    let timeout = optional(options.timeout.map(duration));
    let cleanup_timeout = optional(options.cleanup_timeout.map(duration));
    let max_steps = optional(options.max_steps);
    let declarations = states.iter().map(|state| {
        let name = state.name.clone();
        let entry = state.options.entry;
        let successors = if state.transitions.dynamic && state.options.successors.is_none() {
            quote!(::core::option::Option::None)
        } else {
            let mut targets: Vec<String> = Vec::new();
            let listed = state.options.successors.iter().flatten();
            for target in state.transitions.targets.iter().chain(listed) {
                let target = target.to_string();
                if !targets.contains(&target) {
                    targets.push(target);
                }
            }
            quote!(::core::option::Option::Some(&[#(#targets),*]))
        };
        let priority = Ident::new(
            state.options.priority.unwrap_or("Normal"),
            Span::call_site(),
        );
        let timeout = optional(state.options.timeout.map(duration));
        let r = &state.options.resources;
        let (cpu, memory_mb, io, network, gpu) = (r.cpu, r.memory_mb, r.io, r.network, r.gpu);
        let retry = optional(state.options.retry.as_ref().map(|retry| {
            let (max, base) = (retry.max, retry.base);
            let jitter = match retry.jitter {
                flow_core::Jitter::None => quote!(#p::Jitter::None),
                flow_core::Jitter::Full => quote!(#p::Jitter::Full),
                flow_core::Jitter::Bounded(ratio) => quote!(#p::Jitter::Bounded(#ratio)),
            };
            let initial = duration(retry.initial_delay);
            let max_delay = duration(retry.max_delay);
            let on = match &retry.on {
                None => quote!(#p::RetryOn::ALL),
                Some(classes) => {
                    let classes = classes
                        .iter()
                        .map(|class| Ident::new(&class.to_uppercase(), Span::call_site()));
                    quote!(#p::RetryOn::NOTHING #(.union(#p::RetryOn::#classes))*)
                }
            };
            quote!(#p::RetryPolicy {
                max_retries: #max, initial_delay: #initial, max_delay: #max_delay,
                exponential_base: #base, jitter: #jitter, on: #on,
            })
        }));
        let dependencies = state.options.deps.iter().map(|dependency| {
            let name = dependency.state.to_string();
            let kind = Ident::new(dependency.kind, Span::call_site());
            let lifecycle = Ident::new(dependency.lifecycle, Span::call_site());
            let interval = optional(dependency.interval.map(duration));
            let expiry = optional(dependency.expiry.map(duration));
            let timeout = optional(dependency.timeout.map(duration));
            let condition = optional(dependency.condition.as_ref().map(Ident::to_string));
            quote!(#p::DependencyDecl {
                state: #name,
                kind: #p::DependencyType::#kind,
                lifecycle: #p::DependencyLifecycle::#lifecycle,
                interval: #interval,
                expiry: #expiry,
                timeout: #timeout,
                condition: #condition,
            })
        });
        // Its own handler, or the workflow's (which has none itself).
        let on_error = optional(
            state
                .options
                .on_error
                .as_ref()
                .or(options.on_error.as_ref().filter(|handler| **handler != state.name))
                .map(Ident::to_string),
        );
        let acquire_timeout = optional(state.options.acquire_timeout.map(duration));
        let preemptible = state.options.preemptible;
        let remote = state.options.remote;
        let circuit_breaker = optional(state.options.breaker.as_ref().map(|b| {
            let (failures, half_open, recovery) = (b.failures, b.half_open, duration(b.recovery));
            quote!(#p::BreakerSpec { failures: #failures, recovery: #recovery, half_open: #half_open })
        }));
        let coordination: Vec<TokenStream> = state
            .options
            .coordination
            .iter()
            .map(|primitive| primitive.tokens(&p))
            .collect();

        let bulkhead = optional(state.options.bulkhead.as_ref().map(|b| {
            let (name, max_concurrent, max_queued) = (b.name.value(), b.max_concurrent, b.max_queued);
            quote!(#p::BulkheadSpec { name: #name, max_concurrent: #max_concurrent, max_queued: #max_queued })
        }));
        quote! {
            #p::StateDecl {
                name: #name,
                entry: #entry,
                successors: #successors,
                priority: #p::Priority::#priority,
                timeout: #timeout,
                resources: #p::ResourceRequirements {
                    cpu: #cpu, memory_mb: #memory_mb, io: #io, network: #network, gpu: #gpu,
                },
                retry: #retry,
                dependencies: &[#(#dependencies),*],
                on_error: #on_error,
                circuit_breaker: #circuit_breaker,
                bulkhead: #bulkhead,
                acquire_timeout: #acquire_timeout,
                preemptible: #preemptible,
                remote: #remote,
                coordination: &[#(#coordination),*],
            }
        }
    });
    let registrations = states.iter().enumerate().map(|(index, state)| {
        let ident = &state.ident;
        let name = state.name.clone();
        let has_conditions = state.options.deps.iter().any(|d| d.condition.is_some());
        let keep_this = has_conditions.then(|| quote!(let condition_this = ::std::sync::Arc::clone(&this);));
        let dependencies = state.options.deps.iter().enumerate().map(|(i, dependency)| {
            let when = dependency.condition.as_ref().map(|method| {
                quote_spanned! {method.span()=>
                    .when({
                        let this = ::std::sync::Arc::clone(&condition_this);
                        move |ctx: &#p::Context| -> bool { <Self>::#method(&*this, ctx) }
                    })
                }
            });
            quote! {
                let options = {
                    let dependency = &declared.dependencies[#i];
                    options.depends_on(dependency.state, #p::DependencyConfig::from(dependency) #when)
                };
            }
        });
        // Type errors about what the state returns point at its return type.
        let span = Span::call_site().located_at(state.output_span);
        let add = match &state.options.subgraph {
            Some(subgraph) => subgraph.register(ident, &name, span),
            None => quote_spanned! {span=>
                agent.add_state_with_error(#name, move |ctx: #p::Context| {
                    let this = ::std::sync::Arc::clone(&this);
                    async move { <Self>::#ident(&*this, &ctx).await }
                })
            },
        };
        quote! {
            {
                let this = ::std::sync::Arc::clone(&this);
                #keep_this
                let declared = &<Self as #p::Workflow>::GRAPH.states[#index];
                let options = #add.priority(declared.priority);
                let options = match declared.timeout {
                    ::core::option::Option::Some(timeout) => options.timeout(timeout),
                    ::core::option::Option::None => options,
                };
                let options = if declared.entry { options.entry() } else { options };
                let options = options.resources(declared.resources);
                let options = match declared.acquire_timeout {
                    ::core::option::Option::Some(limit) => options.acquire_timeout(limit),
                    ::core::option::Option::None => options,
                };
                let options = if declared.preemptible { options.preemptible() } else { options };
                let options = if declared.remote { options.remote() } else { options };
                #(#dependencies)*
                let options = match declared.retry {
                    ::core::option::Option::Some(policy) => options.retry(policy),
                    ::core::option::Option::None => options,
                };
                let options = match declared.on_error {
                    ::core::option::Option::Some(handler) => options.on_error(handler),
                    ::core::option::Option::None => options,
                };
                let options = match declared.circuit_breaker {
                    ::core::option::Option::Some(spec) => options.circuit_breaker(
                        #p::CircuitBreaker::new(spec.failures, spec.recovery, spec.half_open),
                    ),
                    ::core::option::Option::None => options,
                };
                let options = match declared.bulkhead {
                    ::core::option::Option::Some(spec) => {
                        let shared = bulkheads
                            .entry(spec.name)
                            .or_insert_with(|| #p::Bulkhead::new(spec.name, spec.max_concurrent, spec.max_queued));
                        options.bulkhead(::core::clone::Clone::clone(shared))
                    }
                    ::core::option::Option::None => options,
                };
                let options = options.__coordination(declared.coordination, &mut rate_limits);
                if let ::core::option::Option::Some(successors) = declared.successors {
                    options.successors(successors.iter().copied());
                }
            }
        }
    });
    let context_reducers = options.context.as_ref().map(|context| {
        quote_spanned! {context.span()=> agent.reducers(<#context>::reducers()); }
    });
    quote! {
        impl #p::Workflow for #self_ty {
            const GRAPH: #p::WorkflowSpec = #p::WorkflowSpec {
                name: #name,
                max_concurrent: #max_concurrent,
                timeout: #timeout,
                cleanup_timeout: #cleanup_timeout,
                max_steps: #max_steps,
                states: &[#(#declarations),*],
            };

            fn __register(this: ::std::sync::Arc<Self>, agent: &mut #p::Agent) {
                // States naming one bulkhead share it.
                let mut bulkheads: ::std::collections::HashMap<&'static str, #p::Bulkhead> =
                    ::std::collections::HashMap::new();
                // States naming one rate limit or primitive share it too.
                let mut rate_limits = #p::DeclaredPrimitives::default();
                #context_reducers
                #(#registrations)*
                let _ = (&mut bulkheads, &mut rate_limits);
            }
        }
    }
}
