//! Where a state goes when it finishes.

use std::borrow::Cow;

/// The name of a state as a transition names it.
///
/// A `&'static str` is borrowed, so a transition to a literal name allocates nothing; a `String`
/// (a name built at run time, as in dynamic workflows) is moved in.
pub type StateName = Cow<'static, str>;

/// What a state returns: where its branch of the run goes next.
///
/// ```
/// use flow_core::Next;
/// assert_eq!(Next::to("b"), Next::To("b".into()));
/// assert_eq!(Next::parallel(["a", "b"]), Next::Parallel(vec!["a".into(), "b".into()]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Next {
    /// This branch ends here. The run completes when every branch has ended.
    End,
    /// Run the named state next, on this branch.
    To(StateName),
    /// Fork: run every named state, concurrently, each on a branch of its own. Branches that
    /// later converge on one state run it once (see the join rule in the runtime's docs).
    /// An empty list ends the branch, like [`Next::End`].
    Parallel(Vec<StateName>),
    /// Map over data: run one state once per item, concurrently, each on a branch of its own
    /// that reads its item with `ctx.input()` and keeps its writes to itself until the
    /// branches join (made by [`Next::map`]). No items end the branch, like [`Next::End`].
    Map(Fanout),
}

/// The state and items of a [`Next::Map`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fanout {
    state: StateName,
    /// The items as JSON, or the error of the one that would not serialize.
    items: Result<Vec<serde_json::Value>, (usize, String)>,
}

impl std::hash::Hash for Fanout {
    fn hash<H: std::hash::Hasher>(&self, hasher: &mut H) {
        self.state.hash(hasher);
        match &self.items {
            Ok(items) => items.iter().for_each(|item| item.to_string().hash(hasher)),
            Err(error) => error.hash(hasher),
        }
    }
}

impl Fanout {
    /// The state each item runs.
    pub fn state(&self) -> &StateName {
        &self.state
    }

    /// The items, as JSON; an error for an item that did not serialize: its index and why.
    pub fn items(&self) -> Result<&[serde_json::Value], (usize, &str)> {
        match &self.items {
            Ok(items) => Ok(items),
            Err((index, message)) => Err((*index, message)),
        }
    }

    /// Takes the items out (the runtime's use).
    pub fn into_parts(self) -> (StateName, Result<Vec<serde_json::Value>, (usize, String)>) {
        (self.state, self.items)
    }
}

impl Next {
    /// A transition to one state.
    pub fn to(state: impl Into<StateName>) -> Self {
        Next::To(state.into())
    }

    /// A fork into several states that run concurrently.
    pub fn parallel<I, S>(states: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<StateName>,
    {
        Next::Parallel(states.into_iter().map(Into::into).collect())
    }

    /// Map over data (LangGraph's `Send`): `state` runs once per item, each run on a branch
    /// of its own reading its item with `ctx.input::<T>()`. Items are kept as JSON (so a
    /// checkpoint holds them); an item that does not serialize fails the run, naming it.
    ///
    /// ```
    /// use flow_core::Next;
    /// let next = Next::map("summarize", ["a.txt", "b.txt"]);
    /// let Next::Map(fanout) = &next else { unreachable!() };
    /// assert_eq!(fanout.state(), "summarize");
    /// assert_eq!(fanout.items().unwrap().len(), 2);
    /// ```
    pub fn map<I, T>(state: impl Into<StateName>, items: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: serde::Serialize,
    {
        let items = items
            .into_iter()
            .enumerate()
            .map(|(index, item)| serde_json::to_value(item).map_err(|e| (index, e.to_string())))
            .collect();
        Next::Map(Fanout {
            state: state.into(),
            items,
        })
    }

    /// The end of this branch (the same as [`Next::End`], for symmetry with the other two).
    pub fn end() -> Self {
        Next::End
    }
}
