//! The coordination options of `#[state(...)]`: `rate_limit(..)`, `semaphore(..)`,
//! `mutex = ".."`, `lease(..)`, `quota(..)` and `barrier(..)`: parsed, checked (with the runtime's own
//! rules where there are any), compared across the states naming one primitive, and written
//! out as `CoordinationDecl`s.

use std::collections::HashSet;
use std::time::Duration;

use proc_macro2::TokenStream;
use quote::quote;
use syn::LitStr;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;

use crate::errors::Errors;
use crate::options::{Seen, duration, key_of, number, whole};

/// One primitive a state passes before it starts.
pub(crate) enum Primitive {
    RateLimit {
        /// States of the workflow naming one limit share it.
        name: Option<LitStr>,
        spec: flow_core::RateLimitSpec,
    },
    Semaphore {
        name: LitStr,
        permits: u32,
        take: u32,
    },
    Mutex {
        name: LitStr,
        ttl: Option<Duration>,
    },
    Lease {
        name: LitStr,
        ttl: Duration,
    },
    Quota {
        name: LitStr,
        limit: f64,
        reset: Option<Duration>,
        amount: f64,
    },
    Barrier {
        name: LitStr,
        parties: u32,
        timeout: Duration,
    },
}

impl Primitive {
    /// Kind and name, for primitives shared by name.
    fn key(&self) -> Option<(&'static str, &LitStr)> {
        match self {
            Primitive::RateLimit { name, .. } => name.as_ref().map(|n| ("rate limit", n)),
            Primitive::Semaphore { name, .. } => Some(("semaphore", name)),
            Primitive::Mutex { name, .. } => Some(("mutex", name)),
            Primitive::Lease { name, .. } => Some(("lease", name)),
            Primitive::Quota { name, .. } => Some(("quota", name)),
            Primitive::Barrier { name, .. } => Some(("barrier", name)),
        }
    }

    /// What must agree between the states naming one primitive, in words.
    fn settings(&self) -> String {
        match self {
            Primitive::RateLimit { spec, .. } => spec.to_string(),
            Primitive::Semaphore { permits, .. } => format!("permits = {permits}"),
            Primitive::Mutex { ttl: Some(ttl), .. } => format!("ttl = {ttl:?}"),
            Primitive::Mutex { ttl: None, .. } => "no ttl".to_owned(),
            Primitive::Lease { ttl, .. } => format!("ttl = {ttl:?}"),
            Primitive::Barrier {
                parties, timeout, ..
            } => {
                format!("parties = {parties}, timeout = {timeout:?}")
            }
            Primitive::Quota { limit, reset, .. } => match reset {
                Some(reset) => format!("limit = {limit}, reset = {reset:?}"),
                None => format!("limit = {limit}, no reset"),
            },
        }
    }

    /// The `CoordinationDecl` it declares.
    pub(crate) fn tokens(&self, p: &TokenStream) -> TokenStream {
        let some_duration = |d: &Option<Duration>| match d {
            Some(d) => {
                let d = crate::workflow::duration_tokens(*d);
                quote!(::core::option::Option::Some(#d))
            }
            None => quote!(::core::option::Option::None),
        };
        match self {
            Primitive::RateLimit { name, spec } => {
                let name = match name {
                    Some(name) => {
                        let name = name.value();
                        quote!(::core::option::Option::Some(#name))
                    }
                    None => quote!(::core::option::Option::None),
                };
                let spec = match *spec {
                    flow_core::RateLimitSpec::TokenBucket { rate, burst } => {
                        quote!(#p::RateLimitSpec::TokenBucket { rate: #rate, burst: #burst })
                    }
                    flow_core::RateLimitSpec::LeakyBucket { rate, capacity } => {
                        quote!(#p::RateLimitSpec::LeakyBucket { rate: #rate, capacity: #capacity })
                    }
                    flow_core::RateLimitSpec::FixedWindow { max, window } => {
                        let window = crate::workflow::duration_tokens(window);
                        quote!(#p::RateLimitSpec::FixedWindow { max: #max, window: #window })
                    }
                    flow_core::RateLimitSpec::SlidingWindow { max, window } => {
                        let window = crate::workflow::duration_tokens(window);
                        quote!(#p::RateLimitSpec::SlidingWindow { max: #max, window: #window })
                    }
                };
                quote!(#p::CoordinationDecl::RateLimit { name: #name, limit: #spec })
            }
            Primitive::Semaphore {
                name,
                permits,
                take,
            } => {
                let name = name.value();
                quote!(#p::CoordinationDecl::Semaphore { name: #name, permits: #permits, take: #take })
            }
            Primitive::Mutex { name, ttl } => {
                let (name, ttl) = (name.value(), some_duration(ttl));
                quote!(#p::CoordinationDecl::Mutex { name: #name, ttl: #ttl })
            }
            Primitive::Lease { name, ttl } => {
                let (name, ttl) = (name.value(), crate::workflow::duration_tokens(*ttl));
                quote!(#p::CoordinationDecl::Lease { name: #name, ttl: #ttl })
            }
            Primitive::Barrier {
                name,
                parties,
                timeout,
            } => {
                let (name, timeout) = (name.value(), crate::workflow::duration_tokens(*timeout));
                quote!(#p::CoordinationDecl::Barrier { name: #name, parties: #parties, timeout: #timeout })
            }
            Primitive::Quota {
                name,
                limit,
                reset,
                amount,
            } => {
                let (name, reset) = (name.value(), some_duration(reset));
                quote!(#p::CoordinationDecl::Quota { name: #name, limit: #limit, reset_every: #reset, amount: #amount })
            }
        }
    }
}

/// Checks that the states naming one primitive give it the same settings.
pub(crate) fn check_shared<'a>(all: impl Iterator<Item = &'a Primitive>, errors: &mut Errors) {
    let mut first: Vec<&Primitive> = Vec::new();
    for primitive in all {
        let Some((kind, name)) = primitive.key() else {
            continue;
        };
        match first.iter().find(|p| {
            p.key()
                .is_some_and(|(k, n)| k == kind && n.value() == name.value())
        }) {
            Some(earlier) if earlier.settings() != primitive.settings() => {
                errors.push(syn::Error::new(
                    name.span(),
                    format!(
                        "{kind} {:?} is declared with {} elsewhere; states naming one {kind} must give it the same settings",
                        name.value(),
                        earlier.settings()
                    ),
                ));
            }
            Some(_) => {}
            None => first.push(primitive),
        }
    }
}

/// Parses one coordination option (`key` is its name); problems go to `errors`.
pub(crate) fn parse(
    meta: &ParseNestedMeta,
    key: &str,
    errors: &mut Errors,
) -> syn::Result<Option<Primitive>> {
    match key {
        "rate_limit" => parse_rate_limit(meta, errors),
        "mutex" if meta.input.peek(syn::Token![=]) => {
            let name = name_value(meta, "mutex", "db")?;
            Ok(Some(Primitive::Mutex { name, ttl: None }))
        }
        _ => parse_named(meta, key, errors),
    }
}

fn name_value(meta: &ParseNestedMeta, key: &str, example: &str) -> syn::Result<LitStr> {
    meta.value()?.parse().map_err(|e: syn::Error| {
        syn::Error::new(
            e.span(),
            format!("`{key}` takes a name in quotes, like `{key} = \"{example}\"`"),
        )
    })
}

/// `semaphore(..)`, `mutex(..)`, `lease(..)`, `quota(..)`: a name and settings.
fn parse_named(
    meta: &ParseNestedMeta,
    kind: &str,
    errors: &mut Errors,
) -> syn::Result<Option<Primitive>> {
    let allowed: &[&str] = match kind {
        "semaphore" => &["name", "permits", "take"],
        "mutex" => &["name", "ttl"],
        "lease" => &["name", "ttl"],
        "barrier" => &["name", "parties", "timeout"],
        _ => &["name", "limit", "reset", "amount"],
    };
    let mut name: Option<LitStr> = None;
    let (mut permits, mut take, mut parties) = (None, 1u32, None);
    let (mut ttl, mut reset) = (None, None);
    let (mut limit, mut amount) = (None, None);
    let mut valid = true;
    let mut seen = Seen(HashSet::new());
    meta.parse_nested_meta(|option| {
        let key = key_of(&option);
        seen.check(&option, &key, errors);
        match key.as_str() {
            "name" if allowed.contains(&"name") => name = Some(name_value(&option, "name", "gpu")?),
            "permits" | "take" | "parties" if allowed.contains(&key.as_str()) => {
                let (value, span) = whole(&option, &key, "3")?;
                match u32::try_from(value) {
                    Ok(0) => {
                        errors.push(syn::Error::new(
                            span,
                            format!("`{key}` must be at least 1, or nothing could pass"),
                        ));
                        valid = false;
                    }
                    Ok(value) if key == "permits" => permits = Some(value),
                    Ok(value) if key == "parties" => parties = Some(value),
                    Ok(value) => take = value,
                    Err(_) => {
                        errors.push(syn::Error::new(
                            span,
                            format!("`{key}` is at most {}", u32::MAX),
                        ));
                        valid = false;
                    }
                }
            }
            "ttl" | "reset" | "timeout" if allowed.contains(&key.as_str()) => {
                match duration(&option, &key, errors)? {
                    // A barrier's timeout is kept where a lease's TTL is.
                    Some(value) if key == "ttl" || key == "timeout" => ttl = Some(value),
                    Some(value) => reset = Some(value),
                    None => valid = false,
                }
            }
            "limit" | "amount" if allowed.contains(&key.as_str()) => {
                let (value, span) = number(&option, &key, "10.0")?;
                if !(value > 0.0 && value.is_finite()) {
                    errors.push(syn::Error::new(
                        span,
                        format!("`{key}` must be a positive number, not {value}"),
                    ));
                    valid = false;
                } else if key == "limit" {
                    limit = Some((value, span));
                } else {
                    amount = Some((value, span));
                }
            }
            other => {
                return Err(syn::Error::new(
                    option.path.span(),
                    format!(
                        "unknown option `{other}` of `{kind}`; it takes {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    })?;
    if !valid {
        return Ok(None);
    }
    let missing = |what: &str, example: &str, errors: &mut Errors| {
        errors.push(syn::Error::new(
            meta.path.span(),
            format!("`{kind}` needs {what}, like `{example}`"),
        ));
        Ok(None)
    };
    let Some(name) = name else {
        return missing("a `name`", &example(kind), errors);
    };
    match kind {
        "semaphore" => {
            let Some(permits) = permits else {
                return missing("its `permits`", &example(kind), errors);
            };
            if take > permits {
                errors.push(syn::Error::new(
                    name.span(),
                    format!("the state takes {take} permits of semaphore {:?}, which has {permits}; it could never start", name.value()),
                ));
                return Ok(None);
            }
            Ok(Some(Primitive::Semaphore {
                name,
                permits,
                take,
            }))
        }
        "mutex" => Ok(Some(Primitive::Mutex { name, ttl })),
        "lease" => match ttl {
            Some(ttl) => Ok(Some(Primitive::Lease { name, ttl })),
            None => missing("a `ttl`", &example(kind), errors),
        },
        "barrier" => match (parties, ttl) {
            (Some(parties), Some(timeout)) => Ok(Some(Primitive::Barrier {
                name,
                parties,
                timeout,
            })),
            _ => missing("its `parties` and a `timeout`", &example(kind), errors),
        },
        _ => {
            let (Some((limit, _)), Some((amount, span))) = (limit, amount) else {
                return missing("a `limit` and an `amount`", &example(kind), errors);
            };
            if amount > limit {
                errors.push(syn::Error::new(
                    span,
                    format!("the state takes {amount} of quota {:?}, whose limit is {limit}; it could never start", name.value()),
                ));
                return Ok(None);
            }
            Ok(Some(Primitive::Quota {
                name,
                limit,
                reset,
                amount,
            }))
        }
    }
}

fn example(kind: &str) -> String {
    match kind {
        "semaphore" => "semaphore(name = \"gpu\", permits = 3)".to_owned(),
        "mutex" => "mutex(name = \"db\", ttl = \"30s\")".to_owned(),
        "lease" => "lease(name = \"batch\", ttl = \"10m\")".to_owned(),
        "barrier" => "barrier(name = \"merge\", parties = 5, timeout = \"30s\")".to_owned(),
        _ => "quota(name = \"tokens\", limit = 1000, reset = \"1h\", amount = 10)".to_owned(),
    }
}

const RATE_STRATEGIES: &str = "token_bucket(rate = 10, burst = 5), leaky_bucket(rate = 10, capacity = 100), fixed_window(max = 100, window = \"1m\") or sliding_window(max = 100, window = \"1m\")";

/// One example per strategy, for "needs all of its values".
const RATE_EXAMPLES: [&str; 4] = [
    "token_bucket(rate = 10, burst = 5)",
    "leaky_bucket(rate = 10, capacity = 100)",
    "fixed_window(max = 100, window = \"1m\")",
    "sliding_window(max = 100, window = \"1m\")",
];

fn parse_rate_limit(meta: &ParseNestedMeta, errors: &mut Errors) -> syn::Result<Option<Primitive>> {
    let mut name: Option<LitStr> = None;
    let mut strategy: Option<flow_core::RateLimitSpec> = None;
    let mut complete = true;
    let mut seen = Seen(HashSet::new());
    meta.parse_nested_meta(|option| {
        let key = key_of(&option);
        match key.as_str() {
            "name" => {
                seen.check(&option, &key, errors);
                name = Some(option.value()?.parse().map_err(|e: syn::Error| {
                    syn::Error::new(e.span(), "a rate limit's `name` is a string, like `name = \"openai\"`")
                })?);
            }
            "token_bucket" | "leaky_bucket" | "fixed_window" | "sliding_window" => {
                if strategy.is_some() {
                    errors.push(syn::Error::new(
                        option.path.span(),
                        "a rate limit has one strategy; give a state one `rate_limit(..)`, or use the builder's `.rate_limit(..)` twice for two limits",
                    ));
                }
                match parse_rate_strategy(&option, &key, errors)? {
                    Some(spec) => strategy = Some(spec),
                    None => complete = false,
                }
            }
            other => {
                return Err(syn::Error::new(
                    option.path.span(),
                    format!("unknown rate-limit strategy or option `{other}`; write one of {RATE_STRATEGIES}, and optionally `name = \"..\"` to share the limit between states"),
                ));
            }
        }
        Ok(())
    })?;
    match strategy {
        Some(spec) => Ok(Some(Primitive::RateLimit { name, spec })),
        None => {
            if complete {
                errors.push(syn::Error::new(
                    meta.path.span(),
                    format!("a rate limit needs a strategy: {RATE_STRATEGIES}"),
                ));
            }
            Ok(None)
        }
    }
}

/// One strategy's values; `None` when one is missing or wrong (reported).
fn parse_rate_strategy(
    option: &ParseNestedMeta,
    strategy: &str,
    errors: &mut Errors,
) -> syn::Result<Option<flow_core::RateLimitSpec>> {
    let (rate_key, count_key) = match strategy {
        "token_bucket" => (Some("rate"), "burst"),
        "leaky_bucket" => (Some("rate"), "capacity"),
        _ => (None, "max"),
    };
    let (mut rate, mut count, mut window) = (None, None, None);
    let mut seen = Seen(HashSet::new());
    let mut valid = true;
    option.parse_nested_meta(|value| {
        let key = key_of(&value);
        seen.check(&value, &key, errors);
        if Some(key.as_str()) == rate_key {
            rate = Some(number(&value, "rate", "10")?);
        } else if key == count_key {
            let (n, span) = whole(&value, count_key, "5")?;
            match u32::try_from(n) {
                Ok(n) => count = Some((n, span)),
                Err(_) => {
                    errors.push(syn::Error::new(
                        span,
                        format!("`{count_key}` is at most {}", u32::MAX),
                    ));
                    valid = false;
                }
            }
        } else if key == "window" && rate_key.is_none() {
            match duration(&value, "window", errors)? {
                Some(duration) => window = Some(duration),
                None => valid = false,
            }
        } else {
            let expected = match rate_key {
                Some(rate) => format!("{rate}, {count_key}"),
                None => format!("{count_key}, window"),
            };
            return Err(syn::Error::new(
                value.path.span(),
                format!("unknown option `{key}` of `{strategy}`; it takes {expected}"),
            ));
        }
        Ok(())
    })?;
    let spec = match (strategy, rate, count, window) {
        ("token_bucket", Some((rate, _)), Some((burst, _)), _) => {
            flow_core::RateLimitSpec::TokenBucket { rate, burst }
        }
        ("leaky_bucket", Some((rate, _)), Some((capacity, _)), _) => {
            flow_core::RateLimitSpec::LeakyBucket { rate, capacity }
        }
        ("fixed_window", _, Some((max, _)), Some(window)) => {
            flow_core::RateLimitSpec::FixedWindow { max, window }
        }
        ("sliding_window", _, Some((max, _)), Some(window)) => {
            flow_core::RateLimitSpec::SlidingWindow { max, window }
        }
        _ => {
            if valid {
                let example = RATE_EXAMPLES
                    .iter()
                    .find(|e| e.starts_with(strategy))
                    .unwrap_or(&strategy);
                errors.push(syn::Error::new(
                    option.path.span(),
                    format!("`{strategy}` needs all of its values, like `{example}`"),
                ));
            }
            return Ok(None);
        }
    };
    if let Some(problem) = spec.problem() {
        // At the value at fault where there is one, else at the strategy.
        let span = match (problem.contains("rate"), rate, count) {
            (true, Some((_, span)), _) => span,
            (false, _, Some((_, span))) if !problem.contains("window") => span,
            _ => option.path.span(),
        };
        errors.push(syn::Error::new(span, format!("{spec}: {problem}")));
        return Ok(None);
    }
    Ok(Some(spec))
}
