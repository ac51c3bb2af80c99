//! Branches, fork scopes and exactly-once joins.
//!
//! **Branches and scopes.** A run starts with one branch per entry state, in the *root scope*.
//! `Next::Parallel([t1..tk])` on a branch `B` of scope `S` opens a new scope `F`, a child of
//! `S` (one per fork *visit*: a fork inside a loop opens a new scope each pass), and replaces
//! `B` by k branches of `F`, one per target. Seen from `S`, `F` is one member standing for
//! `B`, at the fork state. **Fork targets start at once**: a branch is never held at the
//! start of its own branch (also when a fork names one state twice: it runs twice).
//!
//! **The join rule.** `Next::To(t)` moves a branch to `t`. It is *held* at `t` while another
//! live member of its scope may still reach `t`. Held branches of one scope at one state
//! merge; when nothing else in the scope may reach `t`, `t` runs once for all of them. If
//! every live member of `F` merged there, `F` closes and the merged branch continues as `B`,
//! at `t`, in `S`, where it may be held again: `t` runs once, at the outermost level whose
//! branches all arrived (nested forks join once, not once per level). A scope whose last
//! branch ends closes, and `B` ends in `S`. A scope with one member left closes at that
//! member's next move (it has nobody to wait for). A branch released in `F` that a scope
//! around `F` still waits for (it holds branches at `t`, or has another member that may reach
//! `t` along declared edges) goes on in `F`'s parent instead of running in `F`: what it would
//! do had `F`'s other members, which cannot reach `t`, already ended; so that choice never
//! depends on timing.
//!
//! **The next pass.** A branch of `F` that is about to run the state that opened `F` again
//! (a loop came back to the fork, or the fork named its own state) starts the next pass: it
//! leaves `F` and goes on in `S`, at the fork state (held there like any arrival, unless it
//! is a fork target), while `F` goes on with its other branches. So a loop's next pass never
//! joins anything of the previous pass's scope, and the passes of a fork inside a loop never
//! merge. When `F`'s own rule released the branch (nothing else of `F` may reach the fork
//! state, or an ambiguity released the set held there), `F` is *spent*: it holds nothing at
//! the fork state in `S`, so its leftovers never hold the next pass back there.
//!
//! **May still reach.** A member at state `p` of scope `F` may reach `t` when `p` is *wild*
//! (its successors are undeclared, or it reaches such a state: it may go anywhere), or when a
//! path of declared edges (an `on_error` handler counts as an edge) leads from `p` to `t`
//! without passing through the state that opened `F` or any scope around it (beyond it lies a
//! next pass, which never comes back). A child scope counts at its fork state; a branch held
//! at `F`'s own fork state reaches nothing else of `F` (it goes on to the next pass).
//!
//! **When the scheduler cannot know.** When every live member of a scope is a held branch
//! and none of the held sets is free (they may reach each other: always possible without
//! declared successors, or with declared joins that reach each other), the most recently held
//! set is released first, deterministically for a given order of events, and the ambiguity
//! is reported ([`Ambiguity`]); in strict mode nothing is released and the run fails instead.
//!
//! **No branch disappears.** Every branch is created (an entry, a fork target, a state
//! started by the dependency rules), then ends or is absorbed by a join run; [`Ledger`]
//! counts them, and debug builds check the balance at the end of every run.
//!
//! **Cost.** Each held set keeps a count of the members that may still reach it, updated as
//! members move: a move costs O(held sets in its scope); creating a held set costs a reverse
//! search over the declared ancestors of its state, bounded by the highest graph order any
//! member of the scope stands at; running a state that opened a scope still open costs a
//! walk up the enclosing scopes; a release in a nested scope asks each enclosing scope with
//! more than one member whether it waits for the state (one reverse search each). A scope with
//! one live member does no bookkeeping at all, so a chain costs O(1) per step.

mod branch;
mod image;
mod passes;
mod scope;

pub(crate) use branch::{Branch, BranchEvent, BranchId};
pub(crate) use image::JoinsImage;

use flow_core::{StateGraph, StateId};

use scope::{AncestorSearch, Held, Scope};

/// Index of a scope in [`Joins`].
pub(crate) type ScopeId = u32;

/// Every scope of a run and its held sets.
pub(crate) struct Joins {
    scopes: Vec<Option<Scope>>,
    free: Vec<ScopeId>,
    /// Branches to run now, as (state, branch); the caller drains it.
    pub(crate) released: Vec<(StateId, Branch)>,
    /// Branches that just started to wait, as (state, scope); the caller drains it.
    pub(crate) blocked: Vec<(StateId, ScopeId)>,
    /// Held sets released (or, strict, left held) without knowing which join comes first; the
    /// caller drains it.
    pub(crate) ambiguities: Vec<Ambiguity>,
    /// Whether an ambiguity stops the releases (the run then fails) rather than releasing the
    /// latest held set.
    strict: bool,
    held_total: usize,
    /// How many held sets there are at each state.
    held_sets_at: Vec<u32>,
    /// How many open scopes each state opened.
    opened_by: Vec<u32>,
    /// Root scopes still open: the run's own, and one per state started by the dependency
    /// rules.
    roots: u32,
    ledger: Ledger,
    search: AncestorSearch,
    /// The fork states of a scope and the scopes around it (a reused buffer).
    openers: Vec<StateId>,
    /// Moves of branches still to apply. A scope closing into its parent moves the parent's
    /// branch; queueing that move instead of recursing keeps the stack flat however deep
    /// scopes nest.
    moves: Vec<Move>,
    /// Whether branches are told apart (see `track_branches`).
    track: bool,
    /// The id the next branch gets.
    next_branch: BranchId,
    /// Ids ran out while branches were told apart (see `out_of_branch_ids`).
    out_of_ids: bool,
    /// What happened to branches, in order, for their writes; the caller drains it (only
    /// while branches are told apart).
    pub(crate) events: Vec<BranchEvent>,
}

/// Branches created, ended and absorbed by joins in a run: created = ended + absorbed + live.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct Ledger {
    pub(crate) created: u64,
    pub(crate) ended: u64,
    pub(crate) absorbed: u64,
}

/// Held sets of one scope that may each reach another, with nothing else left to run there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ambiguity {
    /// The fork state whose scope it is (`None`: the run's root).
    pub(crate) opener: Option<StateId>,
    /// Where branches are held, oldest first.
    pub(crate) held: Vec<StateId>,
    /// The set released first (the latest), unless strict.
    pub(crate) released: StateId,
}

enum Move {
    /// A member of `scope` at `from` goes to `to`. `spent`: the member is a spent child scope.
    Goto {
        scope: ScopeId,
        from: StateId,
        to: StateId,
        spent: bool,
        branch: BranchId,
    },
    /// A member of `scope` at `at` ends.
    End {
        scope: ScopeId,
        at: StateId,
        spent: bool,
        branch: BranchId,
    },
    /// Held sets of `scope` may be free to go.
    Settle { scope: ScopeId },
}

/// How a branch comes to run a state.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// As a fork target (or entry): never held.
    Fork,
    /// Released by its scope's join rule.
    Released,
}

impl Joins {
    pub(crate) fn new(graph: &StateGraph) -> Self {
        Self {
            scopes: Vec::new(),
            free: Vec::new(),
            released: Vec::new(),
            blocked: Vec::new(),
            ambiguities: Vec::new(),
            strict: false,
            held_total: 0,
            held_sets_at: vec![0; graph.len()],
            opened_by: vec![0; graph.len()],
            roots: 0,
            ledger: Ledger::default(),
            search: AncestorSearch::new(graph.len()),
            openers: Vec::new(),
            moves: Vec::new(),
            track: false,
            next_branch: 0,
            out_of_ids: false,
            events: Vec::new(),
        }
    }

    /// Ambiguous joins fail the run instead of being guessed.
    pub(crate) fn set_strict(&mut self, strict: bool) {
        self.strict = strict;
    }

    /// True once every branch of the run has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.roots == 0
    }

    /// Whether a branch is held at `state`.
    pub(crate) fn holds(&self, state: StateId) -> bool {
        self.held_sets_at[state.index()] > 0
    }

    /// Branches held at joins right now.
    pub(crate) fn held_total(&self) -> usize {
        self.held_total
    }

    /// The states at which branches are held.
    pub(crate) fn held_states(&self) -> impl Iterator<Item = StateId> + '_ {
        self.scopes
            .iter()
            .flatten()
            .flat_map(|s| s.held.iter().map(|h| h.state))
    }

    /// Branches created, ended and absorbed so far.
    #[cfg(debug_assertions)]
    pub(crate) fn ledger(&self) -> Ledger {
        self.ledger
    }

    /// Branches alive now (a child scope member is its own branches).
    #[cfg(debug_assertions)]
    pub(crate) fn live_branches(&self) -> u64 {
        self.scopes
            .iter()
            .flatten()
            .map(|s| u64::from(s.live - s.children))
            .sum()
    }

    /// Settles every scope again: after a restore, held sets that a strict run left at an
    /// ambiguity are reported (and, not strict, released) once more.
    pub(crate) fn resettle(&mut self, graph: &StateGraph) {
        for scope in 0..self.scopes.len() as ScopeId {
            if self.scopes[scope as usize].is_some() {
                self.moves.push(Move::Settle { scope });
            }
        }
        self.apply_moves(graph);
    }

    /// Starts the run: one branch per entry state, in the root scope; each starts at once.
    pub(crate) fn start(&mut self, graph: &StateGraph, entries: &[StateId]) {
        self.roots += 1;
        let k = entries.len() as u32;
        self.ledger.created += u64::from(k);
        let mut root = Scope::new(None, k);
        if k > 1 {
            for &entry in entries {
                root.add_position(graph, entry);
            }
        }
        let scope = self.alloc(root);
        for &entry in entries {
            let id = self.new_branch_id();
            self.released.push((entry, Branch { scope, id }));
        }
    }

    /// A branch of its own for a state started by the dependency rules rather than by a
    /// transition: its transitions join nothing the rest of the run does.
    pub(crate) fn spawn(&mut self) -> Branch {
        self.roots += 1;
        self.ledger.created += 1;
        let scope = self.alloc(Scope::new(None, 1));
        let id = self.new_branch_id();
        Branch { scope, id }
    }

    /// The branch that ran `at` ends.
    pub(crate) fn end(&mut self, graph: &StateGraph, branch: Branch, at: StateId) {
        self.ledger.ended += 1;
        self.moves.push(Move::End {
            scope: branch.scope,
            at,
            spent: false,
            branch: branch.id,
        });
        self.apply_moves(graph);
    }

    /// The branch that ran `from` goes to `to`.
    pub(crate) fn goto(&mut self, graph: &StateGraph, branch: Branch, from: StateId, to: StateId) {
        self.moves.push(Move::Goto {
            scope: branch.scope,
            from,
            to,
            spent: false,
            branch: branch.id,
        });
        self.apply_moves(graph);
    }

    /// The branch that ran `at` forks into `targets`, which all start at once. The new
    /// branches' ids follow one another from the returned one, in the order of `targets`
    /// (one target: the branch goes on, under its own id; none: it ends).
    pub(crate) fn fork(
        &mut self,
        graph: &StateGraph,
        branch: Branch,
        at: StateId,
        targets: &[StateId],
    ) -> BranchId {
        match targets {
            [] => {
                self.end(graph, branch, at);
                return branch.id;
            }
            [only] => {
                self.goto(graph, branch, at, *only);
                return branch.id;
            }
            _ => {}
        }
        let scope = branch.scope;
        let k = targets.len() as u32;
        self.ledger.created += u64::from(k - 1);
        let mut child = Scope::new(Some((scope, at)), k);
        child.branch = branch.id;
        for &target in targets {
            child.add_position(graph, target);
        }
        let child = self.alloc(child);
        self.opened_by[at.index()] += 1;
        // The forking branch becomes the child, standing at the fork state: its position in
        // `scope` does not change.
        scope_of(&mut self.scopes, scope).children += 1;
        // All the ids first: running a target may release a join elsewhere that takes a
        // fresh id, and the targets' ids must follow one another.
        let first = self.next_branch;
        for _ in targets {
            self.new_branch_id();
        }
        for (i, &target) in targets.iter().enumerate() {
            let id = first.wrapping_add(i as BranchId);
            self.run_at(graph, child, target, Start::Fork, id);
            self.apply_moves(graph);
        }
        first
    }

    fn apply_moves(&mut self, graph: &StateGraph) {
        while let Some(next) = self.moves.pop() {
            match next {
                Move::Goto {
                    scope,
                    from,
                    to,
                    spent,
                    branch,
                } => self.apply_goto(graph, scope, from, to, spent, branch),
                Move::End {
                    scope,
                    at,
                    spent,
                    branch,
                } => self.apply_end(graph, scope, at, spent, branch),
                Move::Settle { scope } => self.settle(graph, scope),
            }
        }
    }

    fn apply_end(
        &mut self,
        graph: &StateGraph,
        scope: ScopeId,
        at: StateId,
        spent: bool,
        branch: BranchId,
    ) {
        self.ended_event(branch);
        let s = scope_of(&mut self.scopes, scope);
        s.remove_member(graph, at, spent);
        match s.live {
            0 => {
                let child = s.parent.is_some();
                match s.parent {
                    Some((parent, opener)) => self.moves.push(Move::End {
                        scope: parent,
                        at: opener,
                        spent: s.spent,
                        branch: s.branch,
                    }),
                    None => self.roots -= 1,
                }
                if child {
                    self.close_event(scope, Vec::new());
                }
                self.close(scope);
            }
            1 => {
                s.clear_positions();
                self.moves.push(Move::Settle { scope });
            }
            _ => self.moves.push(Move::Settle { scope }),
        }
    }

    fn apply_goto(
        &mut self,
        graph: &StateGraph,
        scope: ScopeId,
        from: StateId,
        to: StateId,
        spent: bool,
        branch: BranchId,
    ) {
        let s = scope_of(&mut self.scopes, scope);
        if s.live == 1 {
            // Nobody left to wait for.
            let members = self.members_of(branch);
            self.arrive_as_one(graph, scope, to, members, Some(branch));
            return;
        }
        s.remove_position(graph, from, 1);
        s.forget_blocker(graph, from, 1, spent);
        if spent {
            s.forget_spent(from);
        }
        s.add_position(graph, to);
        s.note_blocker(graph, to);
        self.arrive(graph, scope, to, branch);
    }

    /// A member of `scope`, already counted at `to`, arrives there: it joins the set held
    /// there, is held, or runs.
    fn arrive(&mut self, graph: &StateGraph, scope: ScopeId, to: StateId, branch: BranchId) {
        // Settled after whatever running `to` leads to (moves are a stack): the order the
        // reference model follows, and the one that makes a release order reproducible.
        self.moves.push(Move::Settle { scope });
        let s = scope_of(&mut self.scopes, scope);
        if let Some(i) = s.held_at(to) {
            // Joining the set at `to`: a member of it, not a blocker.
            let h = &mut s.held[i];
            if h.counts(graph, to) && Some(to) != s.parent.map(|p| p.1) {
                h.blockers = h.blockers.saturating_sub(1);
            }
            h.members += 1;
            if self.track {
                h.branches.push(branch);
            }
            s.held_members += 1;
            self.held_total += 1;
            self.blocked.push((to, scope));
        } else {
            self.arrive_fresh(graph, scope, to, branch);
        }
    }

    /// A branch of `scope` (already counted at `state`) arrives where no branch is held: it
    /// runs at once, or starts a held set if another member may still reach `state`.
    fn arrive_fresh(
        &mut self,
        graph: &StateGraph,
        scope: ScopeId,
        state: StateId,
        branch: BranchId,
    ) {
        let s = scope_of(&mut self.scopes, scope);
        // A member at a wild state may jump anywhere, also to states of higher order.
        let limit = if s.wild > 0 {
            u32::MAX
        } else {
            s.highest_order()
        };
        self.collect_for(graph, scope, state, limit);
        let s = scope_of(&mut self.scopes, scope);
        let members = u32::from(Some(state) != s.opener());
        let blockers = s.blockers_of(graph, state, &self.search.found, members);
        if blockers == 0 {
            self.run_at(graph, scope, state, Start::Released, branch);
            return;
        }
        let branches = if self.track { vec![branch] } else { Vec::new() };
        s.held.push(Held {
            state,
            members: 1,
            blockers,
            ancestors: self.search.found.iter().copied().collect(),
            branches,
        });
        s.held_members += 1;
        self.held_total += 1;
        self.held_sets_at[state.index()] += 1;
        self.blocked.push((state, scope));
    }

    /// Releases held sets of `scope` while any may go.
    fn settle(&mut self, graph: &StateGraph, scope: ScopeId) {
        let Some(s) = self.scopes[scope as usize].as_ref() else {
            return;
        };
        let index = match s.held.iter().position(|h| h.blockers == 0) {
            Some(i) => i,
            // Every live member is a held branch, and each set may be reached by another.
            None if !s.held.is_empty() && s.held_members == s.live => {
                let latest = s.held.len() - 1;
                self.ambiguities.push(Ambiguity {
                    opener: s.opener(),
                    held: s.held.iter().map(|h| h.state).collect(),
                    released: s.held[latest].state,
                });
                if self.strict {
                    return;
                }
                latest
            }
            None => return,
        };
        // Settle again after this release (more may be free).
        self.moves.push(Move::Settle { scope });
        self.release(graph, scope, index);
    }

    /// Runs held set `index` of `scope`.
    fn release(&mut self, graph: &StateGraph, scope: ScopeId, index: usize) {
        let s = scope_of(&mut self.scopes, scope);
        let h = s.held.remove(index);
        s.held_members -= h.members;
        self.held_total -= h.members as usize;
        self.held_sets_at[h.state.index()] -= 1;
        self.ledger.absorbed += u64::from(h.members - 1);
        if h.members == s.live {
            self.arrive_as_one(graph, scope, h.state, h.branches, None);
            return;
        }
        let merged = h.members - 1;
        if merged > 0 {
            s.live -= merged;
            s.remove_position(graph, h.state, merged);
            s.forget_blocker(graph, h.state, merged, false);
        }
        // (Untracked, the members are not listed: the branch gets a fresh id, so that no two
        // live branches ever share one.)
        let survivor = self.join_members(h.branches);
        self.run_at(graph, scope, h.state, Start::Released, survivor);
    }

    /// Every live member of `scope` is one branch arriving at `to`: a child scope closes and
    /// its parent's member moves from the fork to `to`; a root runs `to`.
    /// `members` are the ids of the arriving branches (when branches are told apart); `one`:
    /// a single branch arrives, this one.
    fn arrive_as_one(
        &mut self,
        graph: &StateGraph,
        scope: ScopeId,
        to: StateId,
        members: Vec<BranchId>,
        one: Option<BranchId>,
    ) {
        let s = scope_of(&mut self.scopes, scope);
        match s.parent {
            Some((parent, opener)) => {
                self.moves.push(Move::Goto {
                    scope: parent,
                    from: opener,
                    to,
                    spent: s.spent,
                    branch: s.branch,
                });
                self.close_event(scope, members);
                self.close(scope);
            }
            None => {
                s.live = 1;
                s.clear_positions();
                let survivor = match one {
                    Some(id) if !self.track => id,
                    _ => self.join_members(members),
                };
                self.run_at(graph, scope, to, Start::Released, survivor);
            }
        }
    }

    /// The ancestors of `state` that a member of `scope` may stand at (see
    /// [`AncestorSearch::collect`]), into `self.search.found`.
    fn collect_for(&mut self, graph: &StateGraph, scope: ScopeId, state: StateId, limit: u32) {
        let mut openers = std::mem::take(&mut self.openers);
        chain_openers(&self.scopes, scope, &mut openers);
        self.search.collect(graph, state, limit, &openers);
        self.openers = openers;
    }

    /// Frees `scope`; its parent no longer has it as a child.
    fn close(&mut self, scope: ScopeId) {
        let s = self.scopes[scope as usize]
            .take()
            .expect("scheduler bug: a scope closed twice");
        self.free.push(scope);
        if let Some((parent, opener)) = s.parent {
            self.opened_by[opener.index()] -= 1;
            scope_of(&mut self.scopes, parent).children -= 1;
        }
    }

    fn alloc(&mut self, scope: Scope) -> ScopeId {
        match self.free.pop() {
            Some(id) => {
                self.scopes[id as usize] = Some(scope);
                id
            }
            None => {
                self.scopes.push(Some(scope));
                (self.scopes.len() - 1) as ScopeId
            }
        }
    }
}

fn scope_of(scopes: &mut [Option<Scope>], scope: ScopeId) -> &mut Scope {
    scopes[scope as usize]
        .as_mut()
        .expect("scheduler bug: a branch refers to a closed scope")
}

/// The fork states of `scope` and of every scope around it, into `openers`.
fn chain_openers(scopes: &[Option<Scope>], scope: ScopeId, openers: &mut Vec<StateId>) {
    openers.clear();
    let mut at = Some(scope);
    while let Some(id) = at {
        let Some(s) = scopes[id as usize].as_ref() else {
            return;
        };
        openers.extend(s.opener());
        at = s.parent.map(|(parent, _)| parent);
    }
}
