//! A reference interpreter of the join rule (the "Join" section of DESIGN.md, as the README and
//! `scheduler/joins` state it), written to be obviously correct rather than fast: sequential,
//! virtual time, every "may still reach" answered by a fresh graph search, branches kept as
//! plain records. The property tests run random programs through it and through the real
//! scheduler and require the same results.
//!
//! A program is a set of states; state 0 is the entry. Each state has a duration and two
//! behaviours: while it has run fewer than `cap` times in the run (its visit counter), it goes
//! to `looping` (loops may lead anywhere); afterwards to `exit`, which only leads to states of
//! higher index, so every run ends. No targets is `End`, one is `To`, more is `Parallel`.

#![allow(dead_code)] // each test binary uses a different subset

pub mod programs;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

/// A run: (state, visit number).
pub type RunId = (usize, u32);

#[derive(Clone, Debug)]
pub struct ProgState {
    /// Whether its successors are declared to the scheduler.
    pub declared: bool,
    pub cap: u32,
    pub looping: Vec<usize>,
    pub exit: Vec<usize>,
    pub duration_ms: u64,
}

#[derive(Clone, Debug)]
pub struct Program {
    pub states: Vec<ProgState>,
}

impl Program {
    /// Where run `visit` of `state` goes.
    pub fn next(&self, state: usize, visit: u32) -> &[usize] {
        let s = &self.states[state];
        if visit < s.cap { &s.looping } else { &s.exit }
    }

    /// Every state it may go to (what a declared state declares).
    pub fn successors(&self, state: usize) -> Vec<usize> {
        let s = &self.states[state];
        let mut all: Vec<usize> = s.looping.iter().chain(&s.exit).copied().collect();
        if s.cap == 0 {
            all = s.exit.clone();
        }
        all.sort_unstable();
        all.dedup();
        all
    }

    pub fn all_declared(&self) -> bool {
        self.states.iter().all(|s| s.declared)
    }

    /// States that may go anywhere: undeclared, or reaching an undeclared state.
    fn wild(&self) -> Vec<bool> {
        let n = self.states.len();
        let mut wild: Vec<bool> = self.states.iter().map(|s| !s.declared).collect();
        loop {
            let mut changed = false;
            for i in 0..n {
                if !wild[i] && self.successors(i).iter().any(|&j| wild[j]) {
                    wild[i] = true;
                    changed = true;
                }
            }
            if !changed {
                return wild;
            }
        }
    }
}

/// What a run of the program did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Runs of each state.
    pub runs: Vec<u32>,
    /// Branches that reached each state.
    pub arrivals: Vec<u32>,
    /// For each run, what its state's inbox held when it started (every transition appends
    /// its run to each target's inbox; each run takes its state's inbox): observable from the
    /// outside, so the real scheduler's runs can be compared with these.
    pub drained: BTreeMap<RunId, Vec<RunId>>,
    /// For each run, the runs whose transitions it absorbed (a join run: several).
    pub members: BTreeMap<RunId, Vec<RunId>>,
    /// Times every branch of a scope was held at states reaching each other.
    pub ambiguities: u32,
    /// No two completions at one instant, and no two runs of one state starting at one
    /// instant in different scopes: the order of events is fixed by the durations, so the real
    /// scheduler must do exactly the same.
    pub order_exact: bool,
    /// Too many events: the program was cut short (not compared).
    pub truncated: bool,
    /// A loop's next pass started while branches of the previous pass still ran: whether
    /// those meet the next pass's branches at a join around the loop can depend on timing.
    pub passes_overlap: bool,
    /// For each state with a loop cap: whether each of its runs came causally after the one
    /// before (so which branch got which visit number does not depend on timing).
    pub visits_causal: bool,
    /// Every run as its causal history (its state, its visit number where behaviour depends
    /// on it, and the histories of the runs it absorbed), sorted: equal for two runs of a
    /// program exactly when they ran the same states with the same joins, whatever the order.
    pub histories: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Running,
    Held(u64),
    Rep(usize),
}

#[derive(Clone, Debug)]
struct Branch {
    scope: usize,
    pos: usize,
    kind: Kind,
    /// The runs whose transitions this branch carries to its next run.
    carried: Vec<RunId>,
}

#[derive(Clone, Debug)]
struct Scope {
    /// The parent scope and the branch there that stands for this scope.
    parent: Option<(usize, usize)>,
    opener: Option<usize>,
    members: Vec<usize>,
    /// A branch went on to the next pass, released by this scope's own rule: none of the
    /// others may reach the fork state.
    spent: bool,
}

struct Sim<'a> {
    program: &'a Program,
    wild: Vec<bool>,
    branches: Vec<Option<Branch>>,
    scopes: Vec<Option<Scope>>,
    visits: Vec<u32>,
    inbox: Vec<Vec<RunId>>,
    now: u64,
    seq: u64,
    held_seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, usize, RunId)>>,
    /// (state, time) -> scope of a run that started then.
    starts: HashMap<(usize, u64), usize>,
    /// When each run started.
    started: HashMap<RunId, u64>,
    out: Outcome,
}

const MAX_RUNS: usize = 4000;

/// Runs `program` to its end.
pub fn run(program: &Program) -> Outcome {
    let n = program.states.len();
    let mut sim = Sim {
        program,
        wild: program.wild(),
        branches: Vec::new(),
        scopes: Vec::new(),
        visits: vec![0; n],
        inbox: vec![Vec::new(); n],
        now: 0,
        seq: 0,
        held_seq: 0,
        events: BinaryHeap::new(),
        starts: HashMap::new(),
        started: HashMap::new(),
        out: Outcome {
            runs: vec![0; n],
            arrivals: vec![0; n],
            order_exact: true,
            ..Outcome::default()
        },
    };
    let root = sim.new_scope(None, None);
    let entry = sim.new_branch(root, 0, Vec::new());
    sim.out.arrivals[0] += 1;
    sim.run_here(entry, 0);
    let mut last_completion = None;
    while let Some(Reverse((time, _, branch, run))) = sim.events.pop() {
        if sim.out.members.len() > MAX_RUNS {
            sim.out.truncated = true;
            break;
        }
        if last_completion == Some(time) {
            sim.out.order_exact = false;
        }
        last_completion = Some(time);
        sim.now = time;
        sim.complete(branch, run);
    }
    sim.out.visits_causal = sim.visits_causal();
    sim.out.histories = sim.histories();
    sim.out
}

impl Sim<'_> {
    fn new_scope(&mut self, parent: Option<(usize, usize)>, opener: Option<usize>) -> usize {
        self.scopes.push(Some(Scope {
            parent,
            opener,
            members: Vec::new(),
            spent: false,
        }));
        self.scopes.len() - 1
    }

    fn new_branch(&mut self, scope: usize, pos: usize, carried: Vec<RunId>) -> usize {
        self.branches.push(Some(Branch {
            scope,
            pos,
            kind: Kind::Running,
            carried,
        }));
        let id = self.branches.len() - 1;
        self.scope(scope).members.push(id);
        id
    }

    fn scope(&mut self, id: usize) -> &mut Scope {
        self.scopes[id].as_mut().expect("open scope")
    }

    fn branch(&mut self, id: usize) -> &mut Branch {
        self.branches[id].as_mut().expect("live branch")
    }

    fn remove_branch(&mut self, id: usize) -> Branch {
        let b = self.branches[id].take().expect("live branch");
        self.scope(b.scope).members.retain(|&m| m != id);
        b
    }

    /// The branch runs `state`: here, or as the next pass in the parent of the scope that
    /// `state` opened, when it is this scope or one around it.
    fn start_run(&mut self, branch: usize, state: usize, fork_target: bool) {
        let mut at = self.branches[branch].as_ref().unwrap().scope;
        loop {
            let s = self.scopes[at].as_ref().unwrap();
            if s.opener == Some(state) {
                return self.leave(branch, state, at, fork_target);
            }
            match s.parent {
                Some((parent, _)) => at = parent,
                None => break,
            }
        }
        // Released where a scope around waits for it: it joins there instead (as it would
        // had the rest of its scope ended).
        let own = self.branches[branch].as_ref().unwrap().scope;
        if !fork_target && let Some((parent, _)) = self.scopes[own].as_ref().unwrap().parent {
            let mut wanted = false;
            let mut below = own;
            while let Some((up, stand_in)) = self.scopes[below].as_ref().unwrap().parent {
                let p = self.scopes[up].clone().unwrap();
                wanted |= p.members.iter().any(|&m| {
                    m != stand_in && {
                        let b = self.branches[m].as_ref().unwrap();
                        (b.pos == state && matches!(b.kind, Kind::Held(_)))
                            || self.may_reach_declared(up, m, state)
                    }
                });
                below = up;
            }
            if wanted {
                if std::env::var("MODEL_TRACE").is_ok() {
                    eprintln!("t={} escalate s{} from {}", self.now, state, own);
                }
                let carried = self.remove_branch(branch).carried;
                let b = self.new_branch(parent, state, carried);
                let carried = std::mem::take(&mut self.branch(b).carried);
                self.arrive(b, parent, state, carried);
                self.settle(own);
                return;
            }
        }
        self.run_here(branch, state);
    }

    fn leave(&mut self, branch: usize, state: usize, pass: usize, fork_target: bool) {
        if std::env::var("MODEL_TRACE").is_ok() {
            eprintln!("t={} leave s{} pass {}", self.now, state, pass);
        }
        let own = self.branches[branch].as_ref().unwrap().scope;
        let carried = self.remove_branch(branch).carried;
        let mut cur = own;
        let mut left = Vec::new();
        let (scope, moved) = loop {
            let s = self.scopes[cur].clone().unwrap();
            let (parent, stand_in) = s.parent.expect("a pass has a parent");
            if s.members.is_empty() {
                self.scopes[cur] = None;
                if cur == pass {
                    // The branch takes the pass's place.
                    let b = self.branch(stand_in);
                    b.kind = Kind::Running;
                    b.pos = state;
                    b.carried = carried;
                    break (parent, stand_in);
                }
                self.remove_branch(stand_in);
                cur = parent;
                continue;
            }
            left.push(cur);
            self.out.passes_overlap = true;
            if cur == pass && own == pass && !fork_target {
                self.scope(pass).spent = true;
            }
            let pass_parent = self.scopes[pass].as_ref().unwrap().parent.unwrap().0;
            let b = self.new_branch(pass_parent, state, carried);
            break (pass_parent, b);
        };
        if fork_target {
            self.run_here(moved, state);
        } else {
            let carried = std::mem::take(&mut self.branch(moved).carried);
            self.arrive(moved, scope, state, carried);
        }
        for s in left {
            self.settle(s);
        }
    }

    fn run_here(&mut self, branch: usize, state: usize) {
        if std::env::var("MODEL_TRACE").is_ok() {
            eprintln!(
                "t={} start s{} scope {}",
                self.now,
                state,
                self.branches[branch].as_ref().unwrap().scope
            );
        }
        let scope = {
            let b = self.branch(branch);
            b.kind = Kind::Running;
            b.pos = state;
            b.scope
        };
        if let Some(&other) = self.starts.get(&(state, self.now))
            && other != scope
        {
            self.out.order_exact = false;
        }
        self.starts.insert((state, self.now), scope);
        let visit = self.visits[state];
        self.visits[state] += 1;
        let run = (state, visit);
        self.started.insert(run, self.now);
        let mut carried = std::mem::take(&mut self.branch(branch).carried);
        carried.sort_unstable();
        self.out.members.insert(run, carried);
        let drained = std::mem::take(&mut self.inbox[state]);
        self.out.drained.insert(run, drained);
        self.out.runs[state] += 1;
        self.seq += 1;
        let due = self.now + self.program.states[state].duration_ms;
        self.events.push(Reverse((due, self.seq, branch, run)));
    }

    fn complete(&mut self, branch: usize, run: RunId) {
        if std::env::var("MODEL_TRACE").is_ok() {
            eprintln!(
                "t={} done {:?} scope {}",
                self.now,
                run,
                self.branches[branch].as_ref().unwrap().scope
            );
        }
        let targets = self.program.next(run.0, run.1).to_vec();
        for &t in &targets {
            self.inbox[t].push(run);
            self.out.arrivals[t] += 1;
        }
        match targets.as_slice() {
            [] => self.end(branch),
            [to] => self.goto(branch, *to, vec![run]),
            _ => self.fork(branch, run, &targets),
        }
    }

    /// Whether member `member` of `scope` may still reach `to`.
    fn may_reach(&self, scope: usize, member: usize, to: usize) -> bool {
        let b = self.branches[member].as_ref().expect("live branch");
        let from = b.pos;
        let opener = self.scopes[scope].as_ref().expect("open scope").opener;
        if Some(from) == opener {
            // Held at the fork state: it goes on to the next pass.
            return false;
        }
        if let Kind::Rep(child) = b.kind
            && self.scopes[child].as_ref().unwrap().spent
            && to == from
        {
            return false;
        }
        if self.wild[from] {
            return true;
        }
        // Beyond the fork state of this scope or of any scope around it lies a next pass,
        // which never comes back to this scope.
        let mut openers = Vec::new();
        let mut at = Some(scope);
        while let Some(id) = at {
            let s = self.scopes[id].as_ref().unwrap();
            openers.extend(s.opener);
            at = s.parent.map(|(parent, _)| parent);
        }
        if openers.contains(&from) {
            return false;
        }
        let mut seen = HashSet::new();
        let mut stack = vec![from];
        while let Some(v) = stack.pop() {
            for w in self.program.successors(v) {
                if w == to {
                    return true;
                }
                if !openers.contains(&w) && seen.insert(w) {
                    stack.push(w);
                }
            }
        }
        false
    }

    /// [`Self::may_reach`] along declared edges only (a wild member does not count).
    fn may_reach_declared(&self, scope: usize, member: usize, to: usize) -> bool {
        !self.wild[self.branches[member].as_ref().unwrap().pos] && self.may_reach(scope, member, to)
    }

    fn end(&mut self, branch: usize) {
        let b = self.remove_branch(branch);
        let s = self.scopes[b.scope].clone().expect("open scope");
        if s.members.is_empty() {
            self.scopes[b.scope] = None;
            if let Some((_, stand_in)) = s.parent {
                self.end(stand_in);
            }
            return;
        }
        self.settle(b.scope);
    }

    fn goto(&mut self, branch: usize, to: usize, carried: Vec<RunId>) {
        let scope = self.branch(branch).scope;
        self.arrive(branch, scope, to, carried);
    }

    /// Member `branch` of `scope` arrives at `to`, carrying `carried`.
    fn arrive(&mut self, branch: usize, scope: usize, to: usize, carried: Vec<RunId>) {
        let s = self.scopes[scope].clone().expect("open scope");
        if s.members.len() == 1 {
            match s.parent {
                Some((_, stand_in)) => {
                    self.scopes[scope] = None;
                    self.branches[branch] = None;
                    self.goto(stand_in, to, carried);
                }
                None => {
                    self.branch(branch).carried = carried;
                    self.start_run(branch, to, false);
                }
            }
            return;
        }
        let held_there = s.members.iter().copied().find(|&m| {
            m != branch && {
                let b = self.branches[m].as_ref().expect("live branch");
                b.pos == to && matches!(b.kind, Kind::Held(_))
            }
        });
        if let Some(held) = held_there {
            self.remove_branch(branch);
            self.branch(held).carried.extend(carried);
        } else {
            let b = self.branch(branch);
            b.pos = to;
            b.kind = Kind::Running;
            b.carried = carried;
            let blocked = s
                .members
                .iter()
                .any(|&m| m != branch && self.may_reach(scope, m, to));
            if blocked {
                if std::env::var("MODEL_TRACE").is_ok() {
                    eprintln!("t={} held s{} scope {}", self.now, to, scope);
                }
                self.held_seq += 1;
                self.branch(branch).kind = Kind::Held(self.held_seq);
            } else {
                self.start_run(branch, to, false);
            }
        }
        self.settle(scope);
    }

    fn fork(&mut self, branch: usize, run: RunId, targets: &[usize]) {
        let scope = self.branch(branch).scope;
        let child = self.new_scope(Some((scope, branch)), Some(run.0));
        self.branch(branch).kind = Kind::Rep(child);
        let new: Vec<usize> = targets
            .iter()
            .map(|&t| self.new_branch(child, t, vec![run]))
            .collect();
        for (b, &t) in new.into_iter().zip(targets) {
            self.start_run(b, t, true);
        }
    }

    fn settle(&mut self, scope: usize) {
        loop {
            let Some(s) = self.scopes[scope].clone() else {
                return;
            };
            let mut held: Vec<(u64, usize)> = s
                .members
                .iter()
                .filter_map(|&m| match self.branches[m].as_ref().unwrap().kind {
                    Kind::Held(seq) => Some((seq, m)),
                    _ => None,
                })
                .collect();
            held.sort_unstable();
            let free = held.iter().find(|&&(_, h)| {
                let at = self.branches[h].as_ref().unwrap().pos;
                !s.members
                    .iter()
                    .any(|&m| m != h && self.may_reach(scope, m, at))
            });
            let chosen = match free {
                Some(&(_, h)) => h,
                None if !held.is_empty() && held.len() == s.members.len() => {
                    self.out.ambiguities += 1;
                    held.last().unwrap().1
                }
                None => return,
            };
            self.release(scope, chosen);
        }
    }

    fn release(&mut self, scope: usize, held: usize) {
        let s = self.scopes[scope].clone().expect("open scope");
        let at = self.branch(held).pos;
        if s.members.len() == 1
            && let Some((_, stand_in)) = s.parent
        {
            let carried = std::mem::take(&mut self.branch(held).carried);
            self.scopes[scope] = None;
            self.branches[held] = None;
            self.goto(stand_in, at, carried);
            return;
        }
        self.start_run(held, at, false);
    }

    fn visits_causal(&self) -> bool {
        // The causal past of each run: what its members (and theirs) were.
        let mut past: HashMap<RunId, HashSet<RunId>> = HashMap::new();
        let mut order: Vec<&RunId> = self.out.members.keys().collect();
        order.sort_by_key(|r| self.start_time(r));
        for run in order {
            let mut set = HashSet::new();
            for m in &self.out.members[run] {
                set.insert(*m);
                if let Some(p) = past.get(m) {
                    set.extend(p.iter().copied());
                }
            }
            past.insert(*run, set);
        }
        self.program.states.iter().enumerate().all(|(i, s)| {
            s.cap == 0
                || (1..self.out.runs[i])
                    .all(|v| past.get(&(i, v)).is_some_and(|p| p.contains(&(i, v - 1))))
        })
    }

    fn histories(&self) -> Vec<u64> {
        use std::hash::{Hash, Hasher};
        let mut order: Vec<&RunId> = self.out.members.keys().collect();
        order.sort_by_key(|r| self.start_time(r));
        let mut history: HashMap<RunId, u64> = HashMap::new();
        for run in order {
            let mut members: Vec<u64> = self.out.members[run].iter().map(|m| history[m]).collect();
            members.sort_unstable();
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            run.0.hash(&mut hasher);
            if self.program.states[run.0].cap > 0 {
                run.1.hash(&mut hasher);
            }
            members.hash(&mut hasher);
            history.insert(*run, hasher.finish());
        }
        let mut all: Vec<u64> = history.into_values().collect();
        all.sort_unstable();
        all
    }

    fn start_time(&self, run: &RunId) -> u64 {
        self.started[run]
    }
}
