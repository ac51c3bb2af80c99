//! Which branch is which: ids that follow a branch through its moves, and the merges of
//! their writes that joins and closing scopes decide (see `crate::context::branch`).
//!
//! Ids are handed out in creation order, so the targets of one fork are numbered in the
//! fork's order, and so are the members of any one scope (its fork's targets, and branches
//! that came to it from scopes nested inside, created later). A join merges its branches'
//! writes in id order: the order of the fork, whatever the order they arrived in.

use serde::{Deserialize, Serialize};

use super::{Joins, ScopeId};

/// Identifies a branch within its run.
pub(crate) type BranchId = u64;

/// A branch: the scope it belongs to, and which of that scope's branches it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "BranchForm")]
pub(crate) struct Branch {
    pub(crate) scope: ScopeId,
    pub(crate) id: BranchId,
}

/// How checkpoints spell a branch: before branches had ids, only the scope.
#[derive(Deserialize)]
#[serde(untagged)]
enum BranchForm {
    ScopeOnly(ScopeId),
    Full { scope: ScopeId, id: BranchId },
}

impl From<BranchForm> for Branch {
    fn from(form: BranchForm) -> Self {
        match form {
            BranchForm::ScopeOnly(scope) => Branch { scope, id: 0 },
            BranchForm::Full { scope, id } => Branch { scope, id },
        }
    }
}

/// The writes of some branches become one branch's (or the context's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Merge {
    /// The branch that goes on with them; `None`: the context itself (a root scope ended).
    pub(crate) into: Option<BranchId>,
    /// `into` forked, and the scope of its fork closed: what it wrote before the fork comes
    /// back to it first (see `BranchData::unlayer`).
    pub(crate) unlayer: bool,
    /// Whose writes, in the order they apply (`into` itself among them where it belongs,
    /// unless `unlayer`: then its own come first).
    pub(crate) parts: Vec<BranchId>,
}

impl Joins {
    /// Whether branches are told apart (ids kept in held sets, ended branches remembered,
    /// merges reported). Off until a run has branch-local writes or inputs: then a run that
    /// uses neither pays nothing for them.
    pub(crate) fn track_branches(&mut self) {
        self.track = true;
    }

    /// Whether branches are told apart (see [`Self::track_branches`]).
    pub(crate) fn tracks_branches(&self) -> bool {
        self.track
    }

    /// Whether the branch of `scope` is the only one of its run's part: a root scope with one
    /// member, which is not a fork. Its writes need no overlay: nothing runs beside it.
    pub(crate) fn alone(&self, scope: ScopeId) -> bool {
        self.scopes
            .get(scope as usize)
            .and_then(Option::as_ref)
            .is_some_and(|s| {
                s.parent.is_none() && s.live == 1 && s.children == 0 && s.ended.is_empty()
            })
    }

    /// The id the next new branch gets (a fork's targets get it and the ones after).
    pub(crate) fn next_branch_id(&self) -> BranchId {
        self.next_branch
    }

    pub(super) fn new_branch_id(&mut self) -> BranchId {
        let id = self.next_branch;
        self.next_branch += 1;
        id
    }

    /// The live branches `members` of a scope go on as one, with the writes of `ended`
    /// branches of the scope too: the one that goes on is the first live one in fork order;
    /// the writes apply in fork order.
    pub(super) fn merge_members(
        &mut self,
        members: Vec<BranchId>,
        ended: Vec<BranchId>,
    ) -> BranchId {
        // Held before branches were told apart, none has writes: any new id serves.
        let survivor = match members.iter().min() {
            Some(&first) => first,
            None => self.new_branch_id(),
        };
        let mut parts = members;
        parts.extend(ended);
        parts.sort_unstable();
        if parts.len() > 1 || parts.first() != Some(&survivor) {
            self.merges.push(Merge {
                into: Some(survivor),
                unlayer: false,
                parts,
            });
        }
        survivor
    }

    /// `scope` closes: its ended branches and `last` (those still to merge) go back to the
    /// branch that forked it, or, for a root, to the context.
    pub(super) fn merge_closing(&mut self, scope: ScopeId, last: &[BranchId]) {
        if !self.track {
            return;
        }
        let s = self.scopes[scope as usize]
            .as_mut()
            .expect("scheduler bug: a closing scope is open");
        let mut parts = std::mem::take(&mut s.ended);
        parts.extend_from_slice(last);
        parts.sort_unstable();
        let (into, unlayer) = match s.parent {
            Some(_) => (Some(s.branch), true),
            None => (None, false),
        };
        self.merges.push(Merge {
            into,
            unlayer,
            parts,
        });
    }

    /// The branch `id` of `scope` ended; its writes wait there for the scope to close.
    pub(super) fn remember_ended(&mut self, scope: ScopeId, id: BranchId) {
        if self.track
            && let Some(s) = self.scopes[scope as usize].as_mut()
        {
            s.ended.push(id);
        }
    }
}
