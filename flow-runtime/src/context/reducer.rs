//! Reducers: how the writes of parallel branches to one key combine.

use std::any::{TypeId, type_name};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::AddAssign;
use std::sync::Arc;

use flow_core::FlowError;

use super::ContextValue;
use super::store::Slot;

/// How the writes to one context key combine, set for an agent with `Agent::reducer`.
///
/// Inside a state, `ctx.set_state(key, value)` on a key with a reducer is a *contribution*:
/// the reducer folds it into the key's value instead of replacing it. Contributions of
/// parallel branches stay with their branch (its own reads see them) until the branches join;
/// the join applies them in the order of the fork that made the branches, whatever order they
/// finished in — so a join sees the same value under every timing.
///
/// A write of the value's own type (for [`Reducer::append`], a whole `Vec<T>`) replaces the
/// value instead, and a write of any other type fails the state with
/// [`FlowError::ReducerMismatch`]. Outside a state (the context a run is given), `set_state`
/// always replaces.
///
/// ```
/// use flow_runtime::Reducer;
/// let _results = Reducer::append::<String>(); // Vec<String>, one String per write
/// let _total = Reducer::sum::<u64>();
/// let _seen = Reducer::custom(|seen: &mut Vec<u32>, id: u32| {
///     if !seen.contains(&id) {
///         seen.push(id);
///     }
/// });
/// ```
#[derive(Clone)]
pub struct Reducer {
    pub(crate) combine: Arc<dyn Combine>,
}

impl fmt::Debug for Reducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reducer")
            .field("name", &self.combine.name())
            .field("value", &self.combine.value_type())
            .finish()
    }
}

/// What a write to a key with a reducer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteKind {
    /// Folded into the value.
    Contribute,
    /// Replaces the value.
    Replace,
}

/// A reducer with its types erased.
pub(crate) trait Combine: Send + Sync {
    /// The reducer's name, for messages.
    fn name(&self) -> &'static str;
    /// The type of the key's value.
    fn value_type(&self) -> &'static str;
    /// The type a contribution has.
    fn contribution_type(&self) -> &'static str;
    /// What writing a value of type `written` does; `None`: it is of neither type.
    fn classify(&self, written: TypeId) -> Option<WriteKind>;
    /// Whether a contribution has the value's own type.
    fn contribution_is_value(&self) -> bool;
    /// `acc` (absent: the key has no value yet) with `add` folded in.
    fn fold(&self, key: &str, acc: Option<Slot>, add: &Slot) -> Result<Slot, FlowError>;
}

struct Typed<V, C, I, F> {
    name: &'static str,
    init: I,
    fold: F,
    types: PhantomData<fn(V, C)>,
}

impl<V, C, I, F> Combine for Typed<V, C, I, F>
where
    V: ContextValue + Clone,
    C: ContextValue + Clone,
    I: Fn(C) -> V + Send + Sync,
    F: Fn(&mut V, C) + Send + Sync,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn value_type(&self) -> &'static str {
        type_name::<V>()
    }

    fn contribution_type(&self) -> &'static str {
        type_name::<C>()
    }

    fn classify(&self, written: TypeId) -> Option<WriteKind> {
        if written == TypeId::of::<C>() {
            Some(WriteKind::Contribute)
        } else if written == TypeId::of::<V>() {
            Some(WriteKind::Replace)
        } else {
            None
        }
    }

    fn contribution_is_value(&self) -> bool {
        TypeId::of::<C>() == TypeId::of::<V>()
    }

    fn fold(&self, key: &str, acc: Option<Slot>, add: &Slot) -> Result<Slot, FlowError> {
        let add = Arc::unwrap_or_clone(add.typed::<C>(key)?);
        let acc = acc.map(|acc| acc.into_typed::<V>(key)).transpose()?;
        // Folds may run on the scheduler (when branches join): a panic in one (a custom fold,
        // an overflowing sum in a debug build) is an error naming the key, not a lost run.
        let folded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match acc {
            None => Arc::new((self.init)(add)),
            Some(mut value) => {
                // In place when nothing else holds the value (a checkpoint's image may).
                (self.fold)(Arc::make_mut(&mut value), add);
                value
            }
        }));
        match folded {
            Ok(value) => Ok(Slot::native(value)),
            Err(panic) => Err(FlowError::ReducerPanicked {
                key: key.to_owned(),
                reducer: self.name.to_owned(),
                message: crate::scheduler::panic_message(panic),
            }),
        }
    }
}

impl Reducer {
    fn typed<V, C>(
        name: &'static str,
        init: impl Fn(C) -> V + Send + Sync + 'static,
        fold: impl Fn(&mut V, C) + Send + Sync + 'static,
    ) -> Self
    where
        V: ContextValue + Clone,
        C: ContextValue + Clone,
    {
        Self {
            combine: Arc::new(Typed {
                name,
                init,
                fold,
                types: PhantomData,
            }),
        }
    }

    /// A list: each write of a `T` appends it (the value is a `Vec<T>`).
    pub fn append<T: ContextValue + Clone>() -> Self {
        Self::typed(
            "append",
            |item: T| vec![item],
            |list: &mut Vec<T>, item| {
                list.push(item);
            },
        )
    }

    /// A list: each write of a `Vec<T>` appends its items.
    pub fn extend<T: ContextValue + Clone>() -> Self {
        Self::typed(
            "extend",
            |items: Vec<T>| items,
            |list: &mut Vec<T>, items| {
                list.extend(items);
            },
        )
    }

    /// A map by key: each write of a map adds its entries, an entry written later (in fork
    /// order) replacing one of the same key.
    pub fn merge_map<T: ContextValue + Clone>() -> Self {
        Self::typed(
            "merge_map",
            |map: BTreeMap<String, T>| map,
            |into: &mut BTreeMap<String, T>, map| into.extend(map),
        )
    }

    /// A total: each write is added to it.
    pub fn sum<T: ContextValue + Clone + AddAssign>() -> Self {
        Self::typed("sum", |n: T| n, |total: &mut T, n| *total += n)
    }

    /// The least value written.
    pub fn min<T: ContextValue + Clone + PartialOrd>() -> Self {
        Self::typed(
            "min",
            |n: T| n,
            |least: &mut T, n| {
                if n < *least {
                    *least = n;
                }
            },
        )
    }

    /// The greatest value written.
    pub fn max<T: ContextValue + Clone + PartialOrd>() -> Self {
        Self::typed(
            "max",
            |n: T| n,
            |most: &mut T, n| {
                if n > *most {
                    *most = n;
                }
            },
        )
    }

    /// Your own fold: `fold(&mut value, contribution)`, starting from `V::default()`.
    /// Contributions are applied in fork order, so `fold` need not be commutative.
    pub fn custom<V, C>(fold: impl Fn(&mut V, C) + Send + Sync + 'static) -> Self
    where
        V: ContextValue + Clone + Default,
        C: ContextValue + Clone,
    {
        let fold = Arc::new(fold);
        let first = Arc::clone(&fold);
        Self::typed(
            "custom",
            move |c: C| {
                let mut value = V::default();
                first(&mut value, c);
                value
            },
            move |value: &mut V, c| fold(value, c),
        )
    }

    /// The error for a write of neither the value's nor a contribution's type.
    pub(crate) fn refuse(&self, key: &str, found: &str) -> FlowError {
        FlowError::ReducerMismatch {
            key: key.to_owned(),
            expected: format!(
                "a `{}` (a contribution to its `{}` reducer) or a `{}` (the whole value)",
                self.combine.contribution_type(),
                self.combine.name(),
                self.combine.value_type()
            ),
            found: found.to_owned(),
        }
    }
}
