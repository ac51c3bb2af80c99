//! The options of `#[state(...)]` and `#[workflow(...)]`: parsed, validated, spanned.

use std::collections::HashSet;
use std::time::Duration;

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, ExprLit, ExprUnary, Ident, Lit, LitStr, UnOp};

use crate::errors::Errors;

mod kw {
    syn::custom_keyword!(low);
    syn::custom_keyword!(normal);
    syn::custom_keyword!(high);
    syn::custom_keyword!(critical);
    syn::custom_keyword!(required);
    syn::custom_keyword!(optional);
    syn::custom_keyword!(parallel);
    syn::custom_keyword!(sequential);
}

pub(crate) const STATE_OPTIONS: &str = "entry, priority = low|normal|high|critical, timeout = \"30s\", \
     resources(cpu, memory_mb, io, network, gpu), retry(max, initial_delay, max_delay, base, jitter), \
     deps(state = required|optional|parallel|sequential, or state(kind, always|once, periodic = \"5m\", \
     expiry = \"1h\", timeout = \"1m\", condition = method)), on_error = state, \
     circuit_breaker(failures, recovery, half_open), bulkhead(name, max_concurrent, max_queued), \
     acquire_timeout = \"5s\", preemptible, remote, successors(state, ..), name = \"state_name\", \
     rate_limit(token_bucket(rate, burst) | leaky_bucket(rate, capacity) | fixed_window(max, window) | \
     sliding_window(max, window), name = \"shared\"), semaphore(name, permits, take), \
     mutex = \"name\" or mutex(name, ttl), lease(name, ttl), quota(name, limit, reset, amount), \
     barrier(name, parties, timeout), subgraph(workflow = .., input(..), output(..), item = ..)";

/// A subgraph state's run lives in its parent's process: it cannot be sent to another worker.
const REMOTE_SUBGRAPH: &str = "a `subgraph` state cannot be `remote`: its subgraph's run is part of the parent run's process; mark the states that do the work `remote` in this workflow, or submit the subgraph's workflow as a run of its own";

/// Everything `#[state(...)]` says.
#[derive(Default)]
pub(crate) struct StateOptions {
    pub(crate) entry: bool,
    /// The priority's variant name (`Low`, `Normal`, ...).
    pub(crate) priority: Option<&'static str>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) resources: Resources,
    pub(crate) retry: Option<Retry>,
    pub(crate) deps: Vec<Dependency>,
    pub(crate) on_error: Option<Ident>,
    pub(crate) breaker: Option<Breaker>,
    pub(crate) bulkhead: Option<BulkheadOption>,
    pub(crate) acquire_timeout: Option<Duration>,
    pub(crate) preemptible: bool,
    /// `remote`: its attempts may run on another worker.
    pub(crate) remote: bool,
    /// `successors(a, b, c)`: every state the body may go to, for transitions the macro cannot
    /// read (`goto!`, `Next::parallel(chosen)`); checked at run time against this set.
    pub(crate) successors: Option<Vec<Ident>>,
    /// `name = "agent"`: the state's name, when it is not the method's.
    pub(crate) name: Option<LitStr>,
    /// `rate_limit(..)`, `semaphore(..)`, `mutex = ..`, `lease(..)`, `quota(..)`, in order.
    pub(crate) coordination: Vec<crate::coordination::Primitive>,
    /// `subgraph(..)`: the state runs another workflow, its body routing afterwards.
    pub(crate) subgraph: Option<crate::subgraph::Subgraph>,
}

/// One entry of `deps(...)`.
pub(crate) struct Dependency {
    pub(crate) state: Ident,
    /// The kind's variant name (`Required`, ...).
    pub(crate) kind: &'static str,
    /// The lifecycle's variant name (`Once`, `Always`, `Periodic`).
    pub(crate) lifecycle: &'static str,
    pub(crate) interval: Option<Duration>,
    pub(crate) expiry: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    /// A method of the workflow, `fn(&self, &Context) -> bool`.
    pub(crate) condition: Option<Ident>,
}

pub(crate) struct Breaker {
    pub(crate) failures: u32,
    pub(crate) recovery: Duration,
    pub(crate) half_open: u32,
}

pub(crate) struct BulkheadOption {
    pub(crate) name: LitStr,
    pub(crate) max_concurrent: usize,
    pub(crate) max_queued: usize,
}

#[derive(Default)]
pub(crate) struct Resources {
    pub(crate) cpu: f64,
    pub(crate) memory_mb: u64,
    pub(crate) io: f64,
    pub(crate) network: f64,
    pub(crate) gpu: f64,
}

pub(crate) struct Retry {
    pub(crate) max: u32,
    pub(crate) initial_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) base: f64,
    pub(crate) jitter: flow_core::Jitter,
    /// The failure classes retried, by name (`error`, `panic`, `timeout`, `refused`); all when
    /// `None`.
    pub(crate) on: Option<Vec<&'static str>>,
}

/// Everything `#[workflow(...)]` says.
#[derive(Default)]
pub(crate) struct WorkflowOptions {
    pub(crate) name: Option<LitStr>,
    pub(crate) max_concurrent: Option<usize>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cleanup_timeout: Option<Duration>,
    pub(crate) max_steps: Option<u64>,
    /// The `on_error` handler of every state that names none.
    pub(crate) on_error: Option<Ident>,
    /// A `#[context]` struct whose reducers the agent gets.
    pub(crate) context: Option<syn::Type>,
}

/// Rejects an option given twice.
pub(crate) struct Seen(pub(crate) HashSet<String>);

impl Seen {
    pub(crate) fn check(&mut self, meta: &ParseNestedMeta, key: &str, errors: &mut Errors) {
        if !self.0.insert(key.to_owned()) {
            errors.push(syn::Error::new(
                meta.path.span(),
                format!("`{key}` is given twice; keep one of them"),
            ));
        }
    }
}

pub(crate) fn key_of(meta: &ParseNestedMeta) -> String {
    meta.path
        .get_ident()
        .map(Ident::to_string)
        .unwrap_or_else(|| {
            meta.path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect::<Vec<_>>()
                .join("::")
        })
}

/// A numeric literal, possibly negated, and its span.
pub(crate) fn number(meta: &ParseNestedMeta, key: &str, example: &str) -> syn::Result<(f64, Span)> {
    let expr: Expr = meta.value()?.parse()?;
    let span = expr.span();
    let wrong = || {
        syn::Error::new(
            span,
            format!("`{key}` takes a number, like `{key} = {example}`"),
        )
    };
    let (negative, lit) = match &expr {
        Expr::Lit(ExprLit { lit, .. }) => (false, lit),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) => match &**expr {
            Expr::Lit(ExprLit { lit, .. }) => (true, lit),
            _ => return Err(wrong()),
        },
        _ => return Err(wrong()),
    };
    let value = match lit {
        Lit::Float(f) => f.base10_parse::<f64>()?,
        Lit::Int(i) => i.base10_parse::<f64>()?,
        _ => return Err(wrong()),
    };
    Ok((if negative { -value } else { value }, span))
}

fn positive(
    meta: &ParseNestedMeta,
    key: &str,
    example: &str,
    errors: &mut Errors,
) -> syn::Result<f64> {
    let (value, span) = number(meta, key, example)?;
    if !(value > 0.0 && value.is_finite()) {
        errors.push(syn::Error::new(
            span,
            format!("`{key}` must be a positive number, not {value}; leave it out to request none"),
        ));
    }
    Ok(value)
}

pub(crate) fn whole(meta: &ParseNestedMeta, key: &str, example: &str) -> syn::Result<(u64, Span)> {
    let (value, span) = number(meta, key, example)?;
    if value < 0.0 || value.fract() != 0.0 || value > u64::MAX as f64 {
        return Err(syn::Error::new(
            span,
            format!("`{key}` takes a whole number of at least 0, like `{key} = {example}`"),
        ));
    }
    Ok((value as u64, span))
}

/// A duration literal; `None` when it is not a valid one (the error is already reported).
pub(crate) fn duration(
    meta: &ParseNestedMeta,
    key: &str,
    errors: &mut Errors,
) -> syn::Result<Option<Duration>> {
    let value = meta.value()?;
    let literal: LitStr = value.parse().map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("`{key}` takes a duration in quotes, like `{key} = \"30s\"`"),
        )
    })?;
    match flow_core::parse_duration(&literal.value()) {
        Ok(duration) if duration.is_zero() => {
            errors.push(syn::Error::new(
                literal.span(),
                format!("`{key}` must be longer than zero"),
            ));
            Ok(None)
        }
        Ok(duration) => Ok(Some(duration)),
        Err(message) => {
            errors.push(syn::Error::new(literal.span(), message));
            Ok(None)
        }
    }
}

/// `jitter = true` (full), `false` (none) or a ratio in `(0, 1]` (bounded).
fn jitter(meta: &ParseNestedMeta, errors: &mut Errors) -> syn::Result<flow_core::Jitter> {
    let expr: Expr = meta.value()?.parse()?;
    match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(if b.value {
            flow_core::Jitter::Full
        } else {
            flow_core::Jitter::None
        }),
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => {
            let ratio: f64 = f.base10_parse()?;
            if !(ratio > 0.0 && ratio <= 1.0) {
                errors.push(syn::Error::new(
                    f.span(),
                    format!("a jitter ratio is above 0 and at most 1, not {ratio}"),
                ));
            }
            Ok(flow_core::Jitter::Bounded(ratio))
        }
        _ => Err(syn::Error::new(
            expr.span(),
            "`jitter` is `true` (full jitter), `false` (none) or a ratio like `0.25` (bounded)",
        )),
    }
}

/// `on = [timeout, error]`: the failure classes a retry policy retries, each once.
fn retry_on(meta: &ParseNestedMeta, errors: &mut Errors) -> syn::Result<Vec<&'static str>> {
    const CLASSES: [&str; 4] = ["error", "panic", "timeout", "refused"];
    let expr: Expr = meta.value()?.parse()?;
    let Expr::Array(array) = &expr else {
        return Err(syn::Error::new(
            expr.span(),
            "`on` takes a list of failures to retry, like `on = [timeout, error]` (error, panic, timeout, refused)",
        ));
    };
    let mut classes = Vec::new();
    for element in &array.elems {
        let name = match element {
            Expr::Path(path) => path.path.get_ident().map(ToString::to_string),
            _ => None,
        };
        match name
            .as_deref()
            .and_then(|n| CLASSES.iter().find(|c| **c == n))
        {
            Some(class) if classes.contains(class) => errors.push(syn::Error::new(
                element.span(),
                format!("`{class}` is listed twice; keep one"),
            )),
            Some(class) => classes.push(*class),
            None => errors.push(syn::Error::new(
                element.span(),
                "a failure to retry is `error`, `panic`, `timeout` or `refused`",
            )),
        }
    }
    if array.elems.is_empty() {
        errors.push(syn::Error::new(
            array.span(),
            "`on = []` retries nothing; leave `retry` out instead",
        ));
    }
    Ok(classes)
}

fn priority(meta: &ParseNestedMeta) -> syn::Result<&'static str> {
    let input = meta
        .value()
        .map_err(|e| syn::Error::new(e.span(), "write the priority as `priority = high`"))?;
    let lookahead = input.lookahead1();
    if lookahead.peek(kw::low) {
        input.parse::<kw::low>().map(|_| "Low")
    } else if lookahead.peek(kw::normal) {
        input.parse::<kw::normal>().map(|_| "Normal")
    } else if lookahead.peek(kw::high) {
        input.parse::<kw::high>().map(|_| "High")
    } else if lookahead.peek(kw::critical) {
        input.parse::<kw::critical>().map(|_| "Critical")
    } else {
        Err(syn::Error::new(
            lookahead.error().span(),
            "`priority` is one of `low`, `normal`, `high`, `critical`, like `priority = high`",
        ))
    }
}

fn dependency_kind(meta: &ParseNestedMeta) -> syn::Result<&'static str> {
    let input = meta.value().map_err(|e| {
        syn::Error::new(
            e.span(),
            "say what kind of dependency this is, like `deps(load = required)`",
        )
    })?;
    let lookahead = input.lookahead1();
    if lookahead.peek(kw::required) {
        input.parse::<kw::required>().map(|_| "Required")
    } else if lookahead.peek(kw::optional) {
        input.parse::<kw::optional>().map(|_| "Optional")
    } else if lookahead.peek(kw::parallel) {
        input.parse::<kw::parallel>().map(|_| "Parallel")
    } else if lookahead.peek(kw::sequential) {
        input.parse::<kw::sequential>().map(|_| "Sequential")
    } else {
        Err(syn::Error::new(
            lookahead.error().span(),
            "a dependency is `required`, `optional`, `parallel` or `sequential`, like `deps(load = required)`",
        ))
    }
}

const DEPENDENCY_OPTIONS: &str = "a kind (`required`, `optional`, `parallel`, `sequential`), \
     `once`, `always`, `periodic = \"5m\"`, `expiry = \"1h\"`, `timeout = \"1m\"`, `condition = method`";

/// `load(required, periodic = "5m", expiry = "1h", timeout = "1m", condition = ready)`.
fn parse_dependency(
    meta: &ParseNestedMeta,
    state: Ident,
    errors: &mut Errors,
) -> syn::Result<Dependency> {
    let mut dependency = Dependency {
        state,
        kind: "",
        lifecycle: "Once",
        interval: None,
        expiry: None,
        timeout: None,
        condition: None,
    };
    let mut seen = Seen(HashSet::new());
    let mut lifecycle_span: Option<Span> = None;
    meta.parse_nested_meta(|option| {
        let key = key_of(&option);
        let span = option.path.span();
        let kind = match key.as_str() {
            "required" => Some("Required"),
            "optional" => Some("Optional"),
            "parallel" => Some("Parallel"),
            "sequential" => Some("Sequential"),
            _ => None,
        };
        if let Some(kind) = kind {
            if !dependency.kind.is_empty() {
                errors.push(syn::Error::new(span, "a dependency has one kind; keep one of them"));
            }
            dependency.kind = kind;
            return Ok(());
        }
        seen.check(&option, &key, errors);
        let mut lifecycle = |name: &'static str| {
            if lifecycle_span.is_some() {
                errors.push(syn::Error::new(
                    span,
                    "a dependency has one lifecycle: `once`, `always` or `periodic = \"5m\"`; keep one",
                ));
            }
            lifecycle_span = Some(span);
            dependency.lifecycle = name;
        };
        match key.as_str() {
            "once" => lifecycle("Once"),
            "always" => lifecycle("Always"),
            "periodic" => {
                lifecycle("Periodic");
                dependency.interval = duration(&option, "periodic", errors)?;
            }
            "expiry" => dependency.expiry = duration(&option, "expiry", errors)?,
            "timeout" => dependency.timeout = duration(&option, "timeout", errors)?,
            "condition" => {
                let value = option.value()?;
                dependency.condition = Some(value.parse().map_err(|e: syn::Error| {
                    syn::Error::new(
                        e.span(),
                        "`condition` names a method of this workflow, `fn(&self, &Context) -> bool`, like `condition = is_ready`",
                    )
                })?);
            }
            other => {
                return Err(syn::Error::new(
                    span,
                    format!("unknown dependency option `{other}`; the options are: {DEPENDENCY_OPTIONS}"),
                ));
            }
        }
        Ok(())
    })?;
    if dependency.kind.is_empty() {
        errors.push(syn::Error::new(
            dependency.state.span(),
            format!(
                "say what kind of dependency this is, like `{}(required, ...)`",
                dependency.state
            ),
        ));
        dependency.kind = "Required";
    }
    if dependency.lifecycle == "Periodic" && dependency.interval.is_none() {
        // The interval was given but invalid: its error is reported already.
        dependency.lifecycle = "Once";
    }
    let kind = match dependency.kind {
        "Optional" => flow_core::DependencyType::Optional,
        "Parallel" => flow_core::DependencyType::Parallel,
        "Sequential" => flow_core::DependencyType::Sequential,
        _ => flow_core::DependencyType::Required,
    };
    let lifecycle = match dependency.lifecycle {
        "Always" => flow_core::DependencyLifecycle::Always,
        "Periodic" => flow_core::DependencyLifecycle::Periodic,
        _ => flow_core::DependencyLifecycle::Once,
    };
    for problem in flow_core::dependency_problems(
        kind,
        lifecycle,
        dependency.interval,
        dependency.expiry,
        dependency.timeout,
        dependency.condition.is_some(),
    ) {
        errors.push(syn::Error::new(
            dependency.state.span(),
            format!("the dependency on `{}` {problem}", dependency.state),
        ));
    }
    Ok(dependency)
}

/// Parses one `#[state]` / `#[state(...)]` attribute; problems go to `errors`.
pub(crate) fn parse_state(attr: &Attribute, errors: &mut Errors) -> StateOptions {
    let mut options = StateOptions::default();
    if matches!(attr.meta, syn::Meta::Path(_)) {
        return options;
    }
    let mut seen = Seen(HashSet::new());
    let result = attr.parse_nested_meta(|meta| {
        let key = key_of(&meta);
        seen.check(&meta, &key, errors);
        match key.as_str() {
            "entry" => {
                if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                    return Err(meta.error("`entry` takes no value: write `#[state(entry)]`"));
                }
                options.entry = true;
            }
            "priority" => options.priority = Some(priority(&meta)?),
            "timeout" => options.timeout = duration(&meta, "timeout", errors)?,
            "on_error" => {
                let value = meta.value().map_err(|e| syn::Error::new(e.span(), "`on_error` names a state: `on_error = recover`"))?;
                options.on_error = Some(value.parse().map_err(|e: syn::Error| {
                    syn::Error::new(e.span(), "`on_error` names a state of this workflow, without quotes: `on_error = recover`")
                })?);
            }
            "resources" => parse_resources(&meta, &mut options.resources, errors)?,
            "retry" => options.retry = Some(parse_retry(&meta, errors)?),
            "circuit_breaker" => options.breaker = Some(parse_breaker(&meta, errors)?),
            "acquire_timeout" => options.acquire_timeout = duration(&meta, "acquire_timeout", errors)?,
            "preemptible" => {
                if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                    return Err(meta.error("`preemptible` takes no value: write `#[state(preemptible)]`"));
                }
                options.preemptible = true;
            }
            "remote" => {
                if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                    return Err(meta.error("`remote` takes no value: write `#[state(remote)]`"));
                }
                if options.subgraph.is_some() {
                    errors.push(meta.error(REMOTE_SUBGRAPH));
                }
                options.remote = true;
            }
            "bulkhead" => options.bulkhead = parse_bulkhead(&meta, errors)?,
            "subgraph" => {
                if options.remote {
                    errors.push(meta.error(REMOTE_SUBGRAPH));
                }
                options.subgraph = Some(crate::subgraph::parse(&meta, errors)?);
            }
            "rate_limit" | "semaphore" | "mutex" | "lease" | "quota" | "barrier" => {
                options.coordination.extend(crate::coordination::parse(&meta, &key, errors)?);
            }
            "name" => {
                let value: LitStr = meta.value()?.parse()?;
                if syn::parse_str::<Ident>(&value.value()).is_err() || value.value().starts_with("r#") {
                    errors.push(syn::Error::new(
                        value.span(),
                        format!("state name {:?} is not a plain identifier; `next!` and `parallel!` name states by identifiers, so use one (`name = \"agent\"`)", value.value()),
                    ));
                } else {
                    options.name = Some(value);
                }
            }
            "successors" => {
                let content;
                syn::parenthesized!(content in meta.input);
                let names =
                    syn::punctuated::Punctuated::<Ident, syn::Token![,]>::parse_terminated(&content)
                        .map_err(|e| {
                            syn::Error::new(
                                e.span(),
                                "`successors` lists states of this workflow, without quotes: `successors(search, calculator)`",
                            )
                        })?;
                options.successors = Some(names.into_iter().collect());
            }
            "deps" => meta.parse_nested_meta(|dep| {
                let Some(state) = dep.path.get_ident().cloned() else {
                    return Err(syn::Error::new(
                        dep.path.span(),
                        "name a state of this workflow, like `deps(load = required)`",
                    ));
                };
                let dependency = if dep.input.peek(syn::token::Paren) {
                    parse_dependency(&dep, state.clone(), errors)?
                } else {
                    Dependency {
                        state: state.clone(),
                        kind: dependency_kind(&dep)?,
                        lifecycle: "Once",
                        interval: None,
                        expiry: None,
                        timeout: None,
                        condition: None,
                    }
                };
                if options.deps.iter().any(|known| known.state == state) {
                    errors.push(syn::Error::new(state.span(), format!("the dependency on `{state}` is given twice; keep one")));
                } else {
                    options.deps.push(dependency);
                }
                Ok(())
            })?,
            other => {
                return Err(syn::Error::new(
                    meta.path.span(),
                    format!(
                        "unknown option `{other}` of `#[state]`; the options are: {STATE_OPTIONS}"
                    ),
                ));
            }
        }
        Ok(())
    });
    errors.push_result(result);
    options
}

fn parse_resources(
    meta: &ParseNestedMeta,
    resources: &mut Resources,
    errors: &mut Errors,
) -> syn::Result<()> {
    let mut seen = Seen(HashSet::new());
    meta.parse_nested_meta(|kind| {
        let key = key_of(&kind);
        seen.check(&kind, &key, errors);
        match key.as_str() {
            "cpu" => resources.cpu = positive(&kind, "cpu", "2.0", errors)?,
            "io" => resources.io = positive(&kind, "io", "1.0", errors)?,
            "network" => resources.network = positive(&kind, "network", "1.0", errors)?,
            "gpu" => resources.gpu = positive(&kind, "gpu", "1.0", errors)?,
            "memory_mb" => {
                let (value, span) = whole(&kind, "memory_mb", "512")?;
                if value == 0 {
                    errors.push(syn::Error::new(span, "`memory_mb` must be a positive number, not 0; leave it out to request none"));
                }
                resources.memory_mb = value;
            }
            other => {
                return Err(syn::Error::new(
                    kind.path.span(),
                    format!("unknown resource `{other}`; the resources are: cpu, memory_mb, io, network, gpu"),
                ));
            }
        }
        Ok(())
    })
}

fn parse_retry(meta: &ParseNestedMeta, errors: &mut Errors) -> syn::Result<Retry> {
    let defaults = flow_core::RetryPolicy::DEFAULT;
    let mut retry = Retry {
        max: defaults.max_retries,
        initial_delay: defaults.initial_delay,
        max_delay: defaults.max_delay,
        base: defaults.exponential_base,
        jitter: defaults.jitter,
        on: None,
    };
    let mut seen = Seen(HashSet::new());
    let mut max_delay_span = None;
    let mut initial_delay_span = None;
    let mut delays_valid = true;
    meta.parse_nested_meta(|option| {
        let key = key_of(&option);
        seen.check(&option, &key, errors);
        match key.as_str() {
            "max" => {
                let (value, span) = whole(&option, "max", "3")?;
                if value > u64::from(flow_core::RetryPolicy::MAX_RETRIES) {
                    errors.push(syn::Error::new(
                        span,
                        format!("`max` is {value} retries; at most {} are allowed", flow_core::RetryPolicy::MAX_RETRIES),
                    ));
                }
                retry.max = value.min(u64::from(u32::MAX)) as u32;
            }
            "initial_delay" => {
                initial_delay_span = Some(option.path.span());
                match duration(&option, "initial_delay", errors)? {
                    Some(delay) => retry.initial_delay = delay,
                    None => delays_valid = false,
                }
            }
            "max_delay" => {
                max_delay_span = Some(option.path.span());
                match duration(&option, "max_delay", errors)? {
                    Some(delay) => retry.max_delay = delay,
                    None => delays_valid = false,
                }
            }
            "base" => {
                let (value, span) = number(&option, "base", "2.0")?;
                if !(value >= 1.0 && value.is_finite()) {
                    errors.push(syn::Error::new(span, format!("`base` must be at least 1.0 (the delay never shrinks), not {value}")));
                }
                retry.base = value;
            }
            "jitter" => retry.jitter = jitter(&option, errors)?,
            "on" => retry.on = Some(retry_on(&option, errors)?),
            other => {
                return Err(syn::Error::new(
                    option.path.span(),
                    format!("unknown retry option `{other}`; the options are: max, initial_delay, max_delay, base, jitter, on"),
                ));
            }
        }
        Ok(())
    })?;
    if delays_valid && retry.max_delay < retry.initial_delay {
        let message = match max_delay_span {
            Some(_) => format!(
                "`max_delay` ({:?}) is shorter than `initial_delay` ({:?}); these options conflict",
                retry.max_delay, retry.initial_delay
            ),
            None => format!(
                "`initial_delay` ({:?}) is longer than the default `max_delay` ({:?}); set a `max_delay` of at least {:?}",
                retry.initial_delay, retry.max_delay, retry.initial_delay
            ),
        };
        let span = max_delay_span
            .or(initial_delay_span)
            .unwrap_or_else(|| meta.path.span());
        errors.push(syn::Error::new(span, message));
    }
    Ok(retry)
}

fn parse_breaker(meta: &ParseNestedMeta, errors: &mut Errors) -> syn::Result<Breaker> {
    let mut breaker = Breaker {
        failures: 5,
        recovery: Duration::from_secs(30),
        half_open: 1,
    };
    let mut seen = Seen(HashSet::new());
    meta.parse_nested_meta(|option| {
        let key = key_of(&option);
        seen.check(&option, &key, errors);
        match key.as_str() {
            "failures" | "half_open" => {
                let (value, span) = whole(&option, &key, "5")?;
                if value == 0 || value > u64::from(u32::MAX) {
                    errors.push(syn::Error::new(span, format!("`{key}` must be at least 1")));
                }
                let value = value.clamp(1, u64::from(u32::MAX)) as u32;
                if key == "failures" { breaker.failures = value } else { breaker.half_open = value }
            }
            "recovery" => {
                if let Some(recovery) = duration(&option, "recovery", errors)? {
                    breaker.recovery = recovery;
                }
            }
            other => {
                return Err(syn::Error::new(
                    option.path.span(),
                    format!("unknown circuit breaker option `{other}`; the options are: failures, recovery, half_open"),
                ));
            }
        }
        Ok(())
    })?;
    Ok(breaker)
}

fn parse_bulkhead(
    meta: &ParseNestedMeta,
    errors: &mut Errors,
) -> syn::Result<Option<BulkheadOption>> {
    let mut name: Option<LitStr> = None;
    let (mut max_concurrent, mut max_queued) = (None, 0usize);
    let mut seen = Seen(HashSet::new());
    meta.parse_nested_meta(|option| {
        let key = key_of(&option);
        seen.check(&option, &key, errors);
        match key.as_str() {
            "name" => {
                name = Some(option.value()?.parse().map_err(|e: syn::Error| {
                    syn::Error::new(e.span(), "a bulkhead's `name` is a string, like `name = \"database\"`")
                })?)
            }
            "max_concurrent" => {
                let (value, span) = whole(&option, "max_concurrent", "4")?;
                if value == 0 {
                    errors.push(syn::Error::new(span, "`max_concurrent` must be at least 1, or nothing could run"));
                }
                max_concurrent = Some(value as usize);
            }
            "max_queued" => max_queued = whole(&option, "max_queued", "16")?.0 as usize,
            other => {
                return Err(syn::Error::new(
                    option.path.span(),
                    format!("unknown bulkhead option `{other}`; the options are: name, max_concurrent, max_queued"),
                ));
            }
        }
        Ok(())
    })?;
    match (name, max_concurrent) {
        (Some(name), Some(max_concurrent)) => Ok(Some(BulkheadOption {
            name,
            max_concurrent,
            max_queued,
        })),
        _ => {
            errors.push(syn::Error::new(
                meta.path.span(),
                "a bulkhead needs a `name` and `max_concurrent`, like `bulkhead(name = \"db\", max_concurrent = 4)`",
            ));
            Ok(None)
        }
    }
}

/// Parses the arguments of `#[workflow(...)]`.
pub(crate) fn parse_workflow(
    args: proc_macro2::TokenStream,
    errors: &mut Errors,
) -> WorkflowOptions {
    let mut options = WorkflowOptions::default();
    let mut seen = Seen(HashSet::new());
    let parser = syn::meta::parser(|meta| {
        let key = key_of(&meta);
        seen.check(&meta, &key, errors);
        match key.as_str() {
            "name" => {
                options.name = Some(meta.value()?.parse().map_err(|e: syn::Error| {
                    syn::Error::new(
                        e.span(),
                        "`name` takes a string, like `name = \"text_processor\"`",
                    )
                })?)
            }
            "max_concurrent" => {
                let (value, span) = whole(&meta, "max_concurrent", "8")?;
                if value == 0 {
                    errors.push(syn::Error::new(
                        span,
                        "`max_concurrent` must be at least 1, or no state could run",
                    ));
                }
                options.max_concurrent = Some(value as usize);
            }
            "timeout" => options.timeout = duration(&meta, "timeout", errors)?,
            "cleanup_timeout" => {
                options.cleanup_timeout = duration(&meta, "cleanup_timeout", errors)?
            }
            "on_error" => {
                let value = meta.value().map_err(|e| {
                    syn::Error::new(e.span(), "`on_error` names a state: `on_error = recover`")
                })?;
                options.on_error = Some(value.parse().map_err(|e: syn::Error| {
                    syn::Error::new(
                        e.span(),
                        "`on_error` names a state of this workflow, without quotes: `on_error = recover`",
                    )
                })?);
            }
            "context" => {
                let value = meta.value().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "`context` names a `#[context]` struct: `context = Research`",
                    )
                })?;
                options.context = Some(value.parse()?);
            }
            "max_steps" => {
                let (value, span) = whole(&meta, "max_steps", "50")?;
                if value == 0 {
                    errors.push(syn::Error::new(
                        span,
                        "`max_steps` must be at least 1, or no state could run",
                    ));
                }
                options.max_steps = Some(value);
            }
            other => {
                return Err(syn::Error::new(
                    meta.path.span(),
                    format!(
                        "unknown option `{other}` of `#[workflow]`; the options are: name = \"..\", max_concurrent = N, timeout = \"..\", cleanup_timeout = \"..\", max_steps = N, on_error = state, context = Type"
                    ),
                ));
            }
        }
        Ok(())
    });
    let result = syn::parse::Parser::parse2(parser, args);
    errors.push_result(result);
    options
}
