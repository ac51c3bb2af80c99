//! Branches, fork scopes and exactly-once joins.
//!
//! **Branches and scopes.** A run starts with one branch per entry state, in the *root scope*.
//! `Next::Parallel([t1..tk])` on a branch `B` of scope `S` opens a new scope `F`, a child of
//! `S` (one per fork *visit*: a fork inside a loop opens a new scope each pass), and replaces
//! `B` by k branches of `F`, one per target. Seen from `S`, the branches of `F` stand for `B`,
//! positioned at the fork state. **Fork targets start at once**: a branch is never held at
//! the start of its own branch (also when a fork names one state twice: it runs twice).
//!
//! **The join rule.** `Next::To(t)` moves a branch to `t`. It is *held* at `t` while another
//! live branch of its scope may still reach `t`. Held branches of one scope at one state
//! merge; when nothing else in the scope may reach `t`, `t` runs once for all of them. If
//! every live branch of `F` merged there, `F` closes and the merged branch continues as `B`,
//! at `t`, in `S`, where it may be held again: `t` runs once, at the outermost level whose
//! branches all arrived (nested forks join once, not once per level). A scope whose last
//! branch ends closes, and `B` ends in `S`. A scope with one branch left closes at that
//! branch's next move (it has nobody to wait for); a scope whose one branch stands for a
//! child scope is removed at once, the child taking its place (so a loop that forks every
//! pass does not nest scopes without end).
//!
//! **May still reach.** A branch at state `p` of scope `F` may reach `t` when `p` is *wild*
//! (its successors are undeclared, or it reaches such a state: it may go anywhere), or when a
//! path of declared edges (an `on_error` handler counts as an edge) leads from `p` to `t`
//! without passing through the state that opened `F`. A path that re-enters the fork state
//! leads into the next visit's scope, never to a join of this one, so a loop's back edge
//! never holds a branch of the current pass, and a declared branch standing at the fork state
//! itself blocks nothing. A branch standing for a child scope counts at its fork state.
//!
//! **When the scheduler cannot know.** When every live branch of a scope is held and none of
//! the held sets is free (they may reach each other: always possible without declared
//! successors, or with declared joins that reach each other), the most recently held set is
//! released first, deterministically for a given order of events, and the ambiguity is
//! reported ([`Ambiguity`]); in strict mode nothing is released and the run fails instead.
//!
//! **No branch disappears.** Every branch is created (an entry, a fork target, a state
//! started by the dependency rules), then ends or is absorbed by a join run; [`Ledger`]
//! counts them, and debug builds check the balance at the end of every run.
//!
//! **Cost.** Each held set keeps a count of the branches that may still reach it, updated as
//! branches move: a move costs O(held sets in its scope); creating a held set costs a reverse
//! search over the declared ancestors of its state, bounded by the highest graph order any
//! branch of the scope stands at. A scope with one live branch does no bookkeeping at all, so
//! a chain costs O(1) per step.

mod image;
mod scope;

pub(crate) use image::JoinsImage;

use flow_core::{StateGraph, StateId};

use scope::{AncestorSearch, Held, Scope};

/// Index of a scope in [`Joins`].
pub(crate) type ScopeId = u32;

/// Every scope of a run and its held sets.
pub(crate) struct Joins {
    scopes: Vec<Option<Scope>>,
    free: Vec<ScopeId>,
    /// Branches to run now, as (state, scope); the caller drains it.
    pub(crate) released: Vec<(StateId, ScopeId)>,
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
    /// Root scopes still open: the run's own, and one per state started by the dependency
    /// rules.
    roots: u32,
    ledger: Ledger,
    search: AncestorSearch,
    /// Moves of branches still to apply. A scope closing into its parent moves the parent's
    /// branch; queueing that move instead of recursing keeps the stack flat however deep
    /// scopes nest.
    moves: Vec<Move>,
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
    Goto {
        scope: ScopeId,
        from: StateId,
        to: StateId,
    },
    End {
        scope: ScopeId,
        at: StateId,
    },
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
            roots: 0,
            ledger: Ledger::default(),
            search: AncestorSearch::new(graph.len()),
            moves: Vec::new(),
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
    pub(crate) fn ledger(&self) -> Ledger {
        self.ledger
    }

    /// Branches alive now (a branch standing for a child scope is its child's branches).
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
            self.settle(graph, scope);
        }
    }

    /// Starts the run: one branch per entry state, in the root scope; each starts at once.
    pub(crate) fn start(&mut self, graph: &StateGraph, entries: &[StateId]) {
        self.roots += 1;
        let k = entries.len() as u32;
        self.ledger.created += u64::from(k);
        let mut root = Scope::new(None, None, k);
        if k > 1 {
            for &entry in entries {
                root.add_position(graph, entry);
            }
        }
        let root = self.alloc(root);
        self.released.extend(entries.iter().map(|&e| (e, root)));
    }

    /// A branch of its own for a state started by the dependency rules rather than by a
    /// transition: its transitions join nothing the rest of the run does.
    pub(crate) fn spawn(&mut self) -> ScopeId {
        self.roots += 1;
        self.ledger.created += 1;
        self.alloc(Scope::new(None, None, 1))
    }

    /// The branch of `scope` that ran `at` ends.
    pub(crate) fn end(&mut self, graph: &StateGraph, scope: ScopeId, at: StateId) {
        self.ledger.ended += 1;
        self.moves.push(Move::End { scope, at });
        self.apply_moves(graph);
    }

    /// The branch of `scope` that ran `from` goes to `to`.
    pub(crate) fn goto(&mut self, graph: &StateGraph, scope: ScopeId, from: StateId, to: StateId) {
        self.moves.push(Move::Goto { scope, from, to });
        self.apply_moves(graph);
    }

    /// The branch of `scope` that ran `at` forks into `targets`, which all start at once.
    pub(crate) fn fork(
        &mut self,
        graph: &StateGraph,
        scope: ScopeId,
        at: StateId,
        targets: &[StateId],
    ) {
        match targets {
            [] => return self.end(graph, scope, at),
            [only] => return self.goto(graph, scope, at, *only),
            _ => {}
        }
        let k = targets.len() as u32;
        self.ledger.created += u64::from(k - 1);
        let s = scope_of(&mut self.scopes, scope);
        let (parent, anchor) = match s.parent {
            // The only branch of a scope forks: the new scope takes the old one's place (the
            // old one would only ever wait for it).
            Some((parent, anchor)) if s.live == 1 => {
                self.close(scope);
                (parent, anchor)
            }
            _ => (scope, at),
        };
        let mut child = Scope::new(Some((parent, anchor)), Some(at), k);
        for &target in targets {
            child.add_position(graph, target);
        }
        let child = self.alloc(child);
        let p = scope_of(&mut self.scopes, parent);
        p.children += 1;
        p.child_sum += u64::from(child);
        self.released.extend(targets.iter().map(|&t| (t, child)));
    }

    fn apply_moves(&mut self, graph: &StateGraph) {
        while let Some(next) = self.moves.pop() {
            match next {
                Move::Goto { scope, from, to } => self.apply_goto(graph, scope, from, to),
                Move::End { scope, at } => self.apply_end(graph, scope, at),
            }
        }
    }

    fn apply_end(&mut self, graph: &StateGraph, scope: ScopeId, at: StateId) {
        let s = scope_of(&mut self.scopes, scope);
        if s.live > 1 {
            s.remove_position(graph, at, 1);
            s.forget_blocker(graph, at, 1);
        }
        s.live -= 1;
        match s.live {
            0 => {
                match s.parent {
                    Some((parent, anchor)) => self.moves.push(Move::End {
                        scope: parent,
                        at: anchor,
                    }),
                    None => self.roots -= 1,
                }
                self.close(scope);
                return;
            }
            1 => {
                s.clear_positions();
                if s.children == 1 && s.parent.is_some() {
                    self.splice(scope);
                    return;
                }
            }
            _ => {}
        }
        self.settle(graph, scope);
    }

    fn apply_goto(&mut self, graph: &StateGraph, scope: ScopeId, from: StateId, to: StateId) {
        let s = scope_of(&mut self.scopes, scope);
        if s.live == 1 {
            // Nobody left to wait for.
            self.arrive_as_one(scope, to);
            return;
        }
        s.remove_position(graph, from, 1);
        s.forget_blocker(graph, from, 1);
        s.add_position(graph, to);
        s.note_blocker(graph, to);
        if let Some(i) = s.held_at(to) {
            // Joining the set at `to`: a member of it, not a blocker.
            let h = &mut s.held[i];
            if h.counts(graph, to) {
                h.blockers = h.blockers.saturating_sub(1);
            }
            h.members += 1;
            s.held_members += 1;
            self.held_total += 1;
            self.blocked.push((to, scope));
        } else {
            self.arrive_fresh(graph, scope, to);
        }
        self.settle(graph, scope);
    }

    /// A branch of `scope` (already counted at `state`) arrives where no branch is held: it
    /// runs at once, or starts a held set if another branch may still reach `state`.
    fn arrive_fresh(&mut self, graph: &StateGraph, scope: ScopeId, state: StateId) {
        let s = scope_of(&mut self.scopes, scope);
        // A branch at a wild state may jump anywhere, also to states of higher order.
        let limit = if s.wild > 0 {
            u32::MAX
        } else {
            s.highest_order()
        };
        self.search.collect(graph, state, limit, s.opener);
        let s = scope_of(&mut self.scopes, scope);
        let blockers = s.blockers_of(graph, state, &self.search.found, 1);
        if blockers == 0 {
            self.released.push((state, scope));
            return;
        }
        s.held.push(Held {
            state,
            members: 1,
            blockers,
            ancestors: self.search.found.iter().copied().collect(),
        });
        s.held_members += 1;
        self.held_total += 1;
        self.held_sets_at[state.index()] += 1;
        self.blocked.push((state, scope));
    }

    /// Releases held sets of `scope` while any may go.
    fn settle(&mut self, graph: &StateGraph, scope: ScopeId) {
        loop {
            let Some(s) = self.scopes[scope as usize].as_ref() else {
                return;
            };
            let index = match s.held.iter().position(|h| h.blockers == 0) {
                Some(i) => i,
                // Every live branch is held, and each set may be reached by another.
                None if !s.held.is_empty() && s.held_members == s.live => {
                    let latest = s.held.len() - 1;
                    self.ambiguities.push(Ambiguity {
                        opener: s.opener,
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
            if !self.release(graph, scope, index) {
                return;
            }
        }
    }

    /// Runs held set `index` of `scope`; false if that closed the scope.
    fn release(&mut self, graph: &StateGraph, scope: ScopeId, index: usize) -> bool {
        let s = scope_of(&mut self.scopes, scope);
        let h = s.held.remove(index);
        s.held_members -= h.members;
        self.held_total -= h.members as usize;
        self.held_sets_at[h.state.index()] -= 1;
        self.ledger.absorbed += u64::from(h.members - 1);
        if h.members == s.live {
            return self.arrive_as_one(scope, h.state);
        }
        let merged = h.members - 1;
        if merged > 0 {
            s.live -= merged;
            s.remove_position(graph, h.state, merged);
            s.forget_blocker(graph, h.state, merged);
        }
        self.released.push((h.state, scope));
        true
    }

    /// Every live branch of `scope` is one branch arriving at `to`: a child scope closes and
    /// its parent's branch moves from the fork to `to`; a root runs `to`. Returns whether the
    /// scope is still open.
    fn arrive_as_one(&mut self, scope: ScopeId, to: StateId) -> bool {
        let s = scope_of(&mut self.scopes, scope);
        match s.parent {
            Some((parent, anchor)) => {
                self.moves.push(Move::Goto {
                    scope: parent,
                    from: anchor,
                    to,
                });
                self.close(scope);
                false
            }
            None => {
                s.live = 1;
                s.clear_positions();
                self.released.push((to, scope));
                true
            }
        }
    }

    /// Removes `scope`, whose one live branch stands for its one child scope: the child takes
    /// its place in the parent, at the same position.
    fn splice(&mut self, scope: ScopeId) {
        let s = scope_of(&mut self.scopes, scope);
        let child = s.child_sum as ScopeId;
        let place = s.parent;
        let (parent, _) = place.expect("only a child scope is spliced");
        self.close(scope);
        scope_of(&mut self.scopes, child).parent = place;
        let p = scope_of(&mut self.scopes, parent);
        p.children += 1;
        p.child_sum += u64::from(child);
    }

    /// Frees `scope`; its parent no longer has it as a child.
    fn close(&mut self, scope: ScopeId) {
        let s = self.scopes[scope as usize]
            .take()
            .expect("scheduler bug: a scope closed twice");
        self.free.push(scope);
        if let Some((parent, _)) = s.parent {
            let p = scope_of(&mut self.scopes, parent);
            p.children -= 1;
            p.child_sum -= u64::from(scope);
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
