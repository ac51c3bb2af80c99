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
pub(crate) type BranchId = u32;

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

/// What happened to branches, for their writes (see `crate::context::branch`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BranchEvent {
    /// Live branches of one scope arrived at a join together and go on as one, `into` (the
    /// first of them in fork order).
    Join {
        into: BranchId,
        parts: Vec<BranchId>,
    },
    /// A scope closed: the branch whose fork opened it (`opener`) goes on, having joined
    /// `parts` (its live branches, arriving together; none when the last one ended).
    Close {
        opener: BranchId,
        parts: Vec<BranchId>,
    },
    /// A branch ended: what it wrote joins no other branch, only the run's result.
    Ended(BranchId),
}

impl Joins {
    /// Whether branches are told apart (ids kept in held sets, events reported). Off until a
    /// run has branch-local writes or inputs: then a run that uses neither pays nothing.
    pub(crate) fn track_branches(&mut self) {
        self.track = true;
    }

    /// Whether branches are told apart (see [`Self::track_branches`]).
    pub(crate) fn tracks_branches(&self) -> bool {
        self.track
    }

    /// Whether the branch of `scope` is the only live branch of the run: one root, one
    /// member, not forked.
    pub(crate) fn alone(&self, scope: ScopeId) -> bool {
        self.roots == 1
            && self
                .scopes
                .get(scope as usize)
                .and_then(Option::as_ref)
                .is_some_and(|s| s.parent.is_none() && s.live == 1 && s.children == 0)
    }

    /// The id the next new branch gets (a fork's targets get it and the ones after).
    pub(crate) fn next_branch_id(&self) -> BranchId {
        self.next_branch
    }

    /// A fresh id: for a new branch, or one restored from a checkpoint that did not tell
    /// branches apart.
    pub(crate) fn new_branch_id(&mut self) -> BranchId {
        let id = self.next_branch;
        self.next_branch = id.wrapping_add(1);
        // Ids only matter while branches are told apart: then running out fails the run
        // (see `out_of_branch_ids`) rather than reuse an id.
        if self.next_branch == 0 && self.track {
            self.out_of_ids = true;
        }
        id
    }

    /// Whether the run made more branches than ids can tell apart (2^32) while they were
    /// told apart.
    pub(crate) fn out_of_branch_ids(&self) -> bool {
        self.out_of_ids
    }

    /// `branch` as the members of a set (nothing, allocating nothing, while branches are not
    /// told apart).
    pub(super) fn members_of(&self, branch: BranchId) -> Vec<BranchId> {
        if self.track { vec![branch] } else { Vec::new() }
    }

    /// The live branches `members` of a scope arrived together and go on as one: the first
    /// in fork order (lowest id).
    pub(super) fn join_members(&mut self, members: Vec<BranchId>) -> BranchId {
        let Some(&survivor) = members.iter().min() else {
            // Held before branches were told apart: none has writes of its own.
            return self.new_branch_id();
        };
        if members.len() > 1 {
            self.events.push(BranchEvent::Join {
                into: survivor,
                parts: members,
            });
        }
        survivor
    }

    /// `scope`, a child scope, closes with `parts` arriving (see [`BranchEvent::Close`]).
    pub(super) fn close_event(&mut self, scope: ScopeId, parts: Vec<BranchId>) {
        if !self.track {
            return;
        }
        let s = self.scopes[scope as usize]
            .as_ref()
            .expect("scheduler bug: a closing scope is open");
        self.events.push(BranchEvent::Close {
            opener: s.branch,
            parts,
        });
    }

    /// Branch `id` ended.
    pub(super) fn ended_event(&mut self, id: BranchId) {
        if self.track {
            self.events.push(BranchEvent::Ended(id));
        }
    }
}
