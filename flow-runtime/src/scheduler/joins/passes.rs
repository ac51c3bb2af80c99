//! Where a released branch runs: in its scope, as the next pass of a loop (when it is about to
//! run a fork state again), or in a scope around that waits for it.

use flow_core::{StateGraph, StateId};

use super::{Branch, BranchId, Joins, Move, ScopeId, Start, scope_of};

impl Joins {
    /// A branch of `scope` runs `state`: here, or, when `state` opened `scope` or a scope
    /// around it, as the next pass in that scope's parent.
    pub(super) fn run_at(
        &mut self,
        graph: &StateGraph,
        scope: ScopeId,
        state: StateId,
        how: Start,
        branch: BranchId,
    ) {
        if self.opened_by[state.index()] > 0 {
            let mut at = scope;
            loop {
                let s = self.scopes[at as usize].as_ref().expect("open scope");
                match s.parent {
                    Some((_, opener)) if opener == state => {
                        return self.leave(graph, scope, state, at, how, branch);
                    }
                    Some((parent, _)) => at = parent,
                    None => break,
                }
            }
        }
        if how == Start::Released
            && let Some((parent, _)) = self.scopes[scope as usize].as_ref().and_then(|s| s.parent)
            && self.wanted_above(graph, scope, state)
        {
            return self.escalate(graph, scope, parent, state, branch);
        }
        self.released.push((state, Branch { scope, id: branch }));
    }

    /// Whether a scope around `scope` waits for `state`: it holds branches there, or has a
    /// member (other than the one standing for the scopes below it) that may still reach it
    /// along declared edges (a wild member "may reach anything", which would send every
    /// branch up; without declared successors joins are conservative anyway).
    fn wanted_above(&mut self, graph: &StateGraph, scope: ScopeId, state: StateId) -> bool {
        let mut below = scope;
        while let Some((parent, child_at)) =
            self.scopes[below as usize].as_ref().and_then(|s| s.parent)
        {
            if self.wanted_by(graph, parent, below, child_at, state) {
                return true;
            }
            below = parent;
        }
        false
    }

    /// Whether `parent` waits for `state` (see [`Self::wanted_above`]); `below` is its child
    /// standing at `child_at`.
    fn wanted_by(
        &mut self,
        graph: &StateGraph,
        parent: ScopeId,
        below: ScopeId,
        child_at: StateId,
        state: StateId,
    ) -> bool {
        let spent = self.scopes[below as usize]
            .as_ref()
            .is_some_and(|s| s.spent);
        let p = scope_of(&mut self.scopes, parent);
        if p.live == 1 {
            return false;
        }
        if p.held_at(state).is_some() {
            return true;
        }
        let limit = if p.wild > 0 {
            u32::MAX
        } else {
            p.highest_order()
        };
        self.collect_for(graph, parent, state, limit);
        let p = scope_of(&mut self.scopes, parent);
        let child_counts = Some(child_at) != p.opener()
            && !(spent && child_at == state)
            && self.search.found.contains(&child_at);
        // Spent children standing at `state` hold nothing there (as in `blockers_of`).
        let spent_there = if self.search.found.contains(&state) {
            p.spent_at.get(&state).copied().unwrap_or(0)
        } else {
            0
        };
        let reach = p
            .declared_reach(&self.search.found)
            .saturating_sub(spent_there);
        reach > u32::from(child_counts)
    }

    /// A branch of `scope` released at `state`, which a scope around waits for: rather than
    /// running it here (what it would do had the rest of `scope` already ended, or could not
    /// reach `state`), it goes on in the parent, arriving at `state` there. So whether a
    /// nested branch joins an outer join never depends on whether its siblings, which cannot
    /// reach that join, have ended yet.
    fn escalate(
        &mut self,
        graph: &StateGraph,
        scope: ScopeId,
        parent: ScopeId,
        state: StateId,
        branch: BranchId,
    ) {
        let s = scope_of(&mut self.scopes, scope);
        let (_, child_at) = s.parent.expect("a child scope has a parent");
        let spent = s.spent;
        s.remove_member(graph, state, false);
        if s.live == 1 {
            s.clear_positions();
        }
        self.moves.push(Move::Settle { scope });
        let p = scope_of(&mut self.scopes, parent);
        if p.live == 1 {
            // It had only `scope` (a scope further up wants the branch): count positions now.
            p.add_position(graph, child_at);
            if spent {
                *p.spent_at.entry(child_at).or_insert(0) += 1;
            }
        }
        p.live += 1;
        p.add_position(graph, state);
        p.note_blocker(graph, state);
        self.arrive(graph, parent, state, branch);
    }

    /// The branch of `scope` about to run `state`, the fork state of `pass` (`scope` or a
    /// scope around it), leaves for `pass`'s parent: the next pass.
    fn leave(
        &mut self,
        graph: &StateGraph,
        scope: ScopeId,
        state: StateId,
        pass: ScopeId,
        how: Start,
        branch: BranchId,
    ) {
        // Out of `scope`, and of every scope up to `pass` that it leaves empty.
        let mut at_scope = scope;
        let mut at = state;
        let mut spent_member = false;
        let parent = loop {
            let s = scope_of(&mut self.scopes, at_scope);
            s.remove_member(graph, at, spent_member);
            let (parent, opener) = s.parent.expect("a pass has a parent");
            if s.live == 0 {
                let spent = s.spent;
                let forked_by = s.branch;
                // Emptied: its fork's branch goes no further (the leaving branch goes on
                // for it, or it ends in its own parent).
                self.close_event(at_scope, Vec::new());
                self.ended_event(forked_by);
                self.close(at_scope);
                if at_scope == pass {
                    // The branch takes the emptied pass's place in the parent, at the same
                    // state: no longer a spent child, a branch that counts.
                    let p = scope_of(&mut self.scopes, parent);
                    if spent && p.live > 1 {
                        p.forget_spent(state);
                        if let Some(i) = p.held_at(state)
                            && p.held[i].counts(graph, state)
                        {
                            p.held[i].blockers += 1;
                        }
                    }
                    break parent;
                }
                at_scope = parent;
                at = opener;
                spent_member = spent;
                // The emptied scope's member in its parent ends.
                continue;
            }
            if s.live == 1 {
                s.clear_positions();
            }
            self.moves.push(Move::Settle { scope: at_scope });
            let from_pass_itself = at_scope == pass && scope == pass && how == Start::Released;
            // The pass keeps other branches; its parent gains this one.
            let pass_scope = scope_of(&mut self.scopes, pass);
            let pass_was_spent = pass_scope.spent;
            if from_pass_itself {
                // Released by the pass's own rule: none of its other branches may reach the
                // fork state now.
                pass_scope.spent = true;
            }
            let (grand, _) = pass_scope.parent.expect("a pass has a parent");
            let p = scope_of(&mut self.scopes, grand);
            p.live += 1;
            if p.live == 2 {
                // It had only the pass: start counting positions.
                p.add_position(graph, state);
                if pass_was_spent || from_pass_itself {
                    *p.spent_at.entry(state).or_insert(0) += 1;
                }
            } else if from_pass_itself && !pass_was_spent {
                p.mark_spent(graph, state);
            }
            p.add_position(graph, state);
            p.note_blocker(graph, state);
            break grand;
        };
        match how {
            Start::Fork => self.released.push((
                state,
                Branch {
                    scope: parent,
                    id: branch,
                },
            )),
            Start::Released => {
                let p = scope_of(&mut self.scopes, parent);
                if p.live == 1 {
                    let members = self.members_of(branch);
                    self.arrive_as_one(graph, parent, state, members, Some(branch));
                } else {
                    self.arrive(graph, parent, state, branch);
                }
            }
        }
    }
}
