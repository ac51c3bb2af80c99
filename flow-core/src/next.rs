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

    /// The end of this branch (the same as [`Next::End`], for symmetry with the other two).
    pub fn end() -> Self {
        Next::End
    }
}
