//! The queue of ready states: higher priority first, first come first among equals, and
//! waiting ages, so that nothing starves.
//!
//! Each entry is ordered by a *virtual start time*: the time it became ready, minus a head
//! start of one aging period per priority level (`Low` 0 … `Critical` 3). A `High` state thus
//! goes before a `Normal` one that became ready less than one aging period earlier, but a state
//! that has waited longer than that goes first whatever came after it. The key is fixed when
//! the entry is pushed, so the queue stays a plain binary heap: O(log n) per push and pop.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Duration;

use flow_core::{FxHashMap, Priority, StateId};
use tokio::time::Instant;

use super::joins::Branch;
use crate::coordination::{Ticket, WaitRule};

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ReadyEntry {
    /// Virtual start time in microseconds since the queue's origin; smaller goes first.
    key: Reverse<(i64, u64)>,
    pub(crate) state: StateId,
    pub(crate) branch: Branch,
    pub(crate) attempt: u32,
    /// Which run of the state this entry is: 0 for one not started yet (its first attempt
    /// takes the next number when it starts); a retry or a restarted attempt keeps its own.
    pub(crate) visit: u32,
}

impl ReadyEntry {
    /// The entry's sequence number (see [`ReadyQueue::push`]).
    pub(crate) fn seq(&self) -> u64 {
        self.key.0.1
    }

    /// The entry's virtual start time (its place in the order).
    pub(crate) fn virtual_start(&self) -> i64 {
        self.key.0.0
    }
}

impl Ord for ReadyEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
    }
}

impl PartialOrd for ReadyEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

pub(crate) struct ReadyQueue {
    heap: BinaryHeap<ReadyEntry>,
    next_seq: u64,
    origin: Instant,
    aging_micros: i64,
    /// Entries waiting at an admission gate, by gate (see `scheduler::admission`): ready, but
    /// not in the heap until the gate may admit them. Empty for an agent with no gates.
    gates: Box<[GateWait]>,
    /// How many entries wait at gates (so that `len` costs an agent without gates nothing).
    gated: usize,
    /// Places held by waiting entries at the gate they wait at (a leaky bucket's capacity, a
    /// primitive's waiting count), by sequence number.
    tickets: FxHashMap<u64, Vec<(usize, Ticket)>>,
    /// When each entry waiting at gates first had to wait at one, by sequence number: where
    /// its wait for resources, rate limits or primitives began (attempt timelines). Kept only
    /// for a run with checkpoints (`note_gate_waits`): others pay nothing for it.
    gated_since: Option<FxHashMap<u64, Instant>>,
}

/// When the first entry waiting at a gate may ask it again.
pub(crate) enum Wake {
    /// At this instant (or sooner, if woken by a release).
    At(Instant),
    /// When woken by a release.
    OnRelease,
    /// Behind others already waiting there: as they are.
    Behind,
}

/// The entries waiting at one gate, in ready order. Only the first asks the gate again; the
/// others wait behind it without asking, so a gate costs O(log n) per admission.
pub(crate) struct GateWait {
    heap: BinaryHeap<ReadyEntry>,
    /// When the first may ask again; `None` while nobody waits or it is out asking.
    until: Option<Instant>,
    /// The entry let out to ask again (it is in the main heap meanwhile), and the instant it
    /// asks for: the one the gate named, not the later one at which the timer (rounded to the
    /// clock's millisecond) happened to fire, so that waiting adds no drift.
    trying: Option<(u64, Instant)>,
    /// The latest instant this run asked this gate at.
    asked: Option<Instant>,
    /// How the entries waiting here take turns.
    rule: WaitRule,
}

impl Default for GateWait {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            until: None,
            trying: None,
            asked: None,
            rule: WaitRule::InOrder,
        }
    }
}

impl ReadyQueue {
    pub(crate) fn new(aging: Duration) -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
            origin: Instant::now(),
            aging_micros: i64::try_from(aging.as_micros()).unwrap_or(i64::MAX / 8),
            gates: Box::default(),
            gated: 0,
            tickets: FxHashMap::default(),
            gated_since: None,
        }
    }

    /// Makes room for entries waiting at gates; `rules[i]` says how the entries waiting at
    /// gate `i` take turns.
    pub(crate) fn with_gates(mut self, rules: &[WaitRule]) -> Self {
        self.gates = rules
            .iter()
            .map(|&rule| GateWait {
                rule,
                ..GateWait::default()
            })
            .collect();
        self
    }

    /// Queues a state; returns the entry's sequence number (its identity in the queue).
    /// `now` is the caller's current time (the coordinator reads the clock once per event).
    pub(crate) fn push(
        &mut self,
        state: StateId,
        branch: Branch,
        attempt: u32,
        visit: u32,
        priority: Priority,
        now: Instant,
    ) -> u64 {
        let level = priority_level(priority);
        let virtual_start = self
            .clock(now)
            .saturating_sub(self.aging_micros.saturating_mul(level));
        self.push_at(state, branch, attempt, visit, virtual_start)
    }

    /// When an entry of this priority became ready (the inverse of `push`).
    pub(crate) fn became_ready(&self, entry: &ReadyEntry, priority: Priority) -> Instant {
        self.became_ready_at(entry.virtual_start(), priority)
    }

    /// When an entry of this priority pushed at `virtual_start` became ready.
    pub(crate) fn became_ready_at(&self, virtual_start: i64, priority: Priority) -> Instant {
        let level = priority_level(priority);
        let micros = virtual_start.saturating_add(self.aging_micros.saturating_mul(level));
        self.origin + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
    }

    /// `now` on the queue's clock (microseconds since its origin), the scale of virtual
    /// start times.
    pub(crate) fn clock(&self, now: Instant) -> i64 {
        i64::try_from(now.saturating_duration_since(self.origin).as_micros())
            .unwrap_or(i64::MAX / 2)
    }

    /// Every entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &ReadyEntry> {
        self.heap
            .iter()
            .chain(self.gates.iter().flat_map(|gate| gate.heap.iter()))
    }

    /// Queues a state again at the place it had (a preempted state keeps its age).
    pub(crate) fn push_at(
        &mut self,
        state: StateId,
        branch: Branch,
        attempt: u32,
        visit: u32,
        virtual_start: i64,
    ) -> u64 {
        self.next_seq += 1;
        let key = Reverse((virtual_start, self.next_seq));
        self.heap.push(ReadyEntry {
            key,
            state,
            branch,
            attempt,
            visit,
        });
        self.next_seq
    }

    /// Takes the entry with this sequence number out of the queue, if it is still there (a
    /// rare, O(n) operation).
    pub(crate) fn remove_seq(&mut self, seq: u64) -> Option<ReadyEntry> {
        self.remove_where(|e| e.seq() == seq).pop()
    }

    /// The gate an entry waits at, if it waits at one (O(n) over the gates' entries).
    pub(crate) fn gate_of(&self, seq: u64) -> Option<usize> {
        self.gates.iter().position(|wait| {
            wait.trying.is_some_and(|(trying, _)| trying == seq)
                || wait.heap.iter().any(|e| e.seq() == seq)
        })
    }

    /// Takes out every entry `take` selects, keeping the rest in order (O(n)).
    fn remove_where(&mut self, take: impl Fn(&ReadyEntry) -> bool) -> Vec<ReadyEntry> {
        let (mut removed, kept): (Vec<_>, Vec<_>) = self.heap.drain().partition(|e| take(e));
        self.heap = kept.into();
        for gate in self.gates.iter_mut() {
            if gate.heap.is_empty() {
                continue;
            }
            let (out, kept): (Vec<_>, Vec<_>) = gate.heap.drain().partition(|e| take(e));
            gate.heap = kept.into();
            self.gated -= out.len();
            removed.extend(out);
        }
        for entry in &removed {
            let _ = self.left(entry.seq());
        }
        removed
    }

    /// An entry leaves for good (started, failed or removed): it holds no place at a gate any
    /// more, and if it was out asking a gate, the next one waiting there may ask. Returns when
    /// it first had to wait at a gate, if it did.
    pub(crate) fn left(&mut self, seq: u64) -> Option<Instant> {
        if self.gates.is_empty() {
            return None;
        }
        self.tickets.remove(&seq);
        self.stop_trying(seq);
        self.gated_since.as_mut()?.remove(&seq)
    }

    /// Keeps, from now on, when each entry first had to wait at a gate (see `left`).
    pub(crate) fn note_gate_waits(&mut self) {
        if !self.gates.is_empty() {
            self.gated_since.get_or_insert_with(FxHashMap::default);
        }
    }

    /// The entry is no longer out asking any gate: at each gate it was asking, the next one
    /// waiting there may ask (at the latest instant that gate was asked).
    fn stop_trying(&mut self, seq: u64) {
        for gate in self.gates.iter_mut() {
            if gate.trying.is_some_and(|(trying, _)| trying == seq) {
                gate.trying = None;
                if !gate.heap.is_empty() {
                    gate.until = Some(gate.asked.unwrap_or(self.origin));
                }
            }
        }
    }

    /// Whether an entry must wait behind others at `gate` without asking it: someone waits
    /// there, this entry is not the one let out to ask, and (where the gate lets an entry of
    /// higher rank ask) it does not go before them all.
    pub(crate) fn queued_at(&self, gate: usize, entry: &ReadyEntry) -> bool {
        let wait = &self.gates[gate];
        let Some(first) = wait.heap.peek() else {
            return false;
        };
        match wait.rule {
            WaitRule::Together => false,
            WaitRule::ByRank if entry > first => false,
            WaitRule::InOrder | WaitRule::ByRank => {
                wait.trying.is_none_or(|(trying, _)| trying != entry.seq())
            }
        }
    }

    /// Keeps an entry's place at `gate` (given up when the entry leaves).
    pub(crate) fn add_ticket(&mut self, seq: u64, gate: usize, ticket: Ticket) {
        self.tickets.entry(seq).or_default().push((gate, ticket));
    }

    /// The entry's arrival at the barrier `gate`, if it has arrived.
    pub(crate) fn arrival(&self, seq: u64, gate: usize) -> Option<u64> {
        self.tickets
            .get(&seq)?
            .iter()
            .find_map(|(at, ticket)| match ticket {
                Ticket::Arrival(arrival) if *at == gate => Some(arrival.id),
                _ => None,
            })
    }

    /// Whether the entry holds its place at `gate` already.
    pub(crate) fn has_ticket(&self, seq: u64, gate: usize) -> bool {
        self.tickets
            .get(&seq)
            .is_some_and(|held| held.iter().any(|(at, _)| *at == gate))
    }

    /// Puts an entry to wait at `gate`. `wake` says when the first waiting there may ask
    /// again. A ticket is its place at the gate (replacing one it held at another gate).
    pub(crate) fn park(
        &mut self,
        gate: usize,
        entry: ReadyEntry,
        (wake, now): (Wake, Instant),
        ticket: Option<Ticket>,
    ) {
        let seq = entry.seq();
        if let Some(gated_since) = &mut self.gated_since {
            gated_since.entry(seq).or_insert(now);
        }
        // It waits here now, and nowhere else: its turn at any other gate passes on, and its
        // places there are given up (an arrival at a barrier stays: it counts in the round).
        self.stop_trying(seq);
        if let Some(held) = self.tickets.get_mut(&seq) {
            held.retain(|(at, ticket)| *at == gate || matches!(ticket, Ticket::Arrival(_)));
        }
        if let Some(ticket) = ticket {
            self.add_ticket(seq, gate, ticket);
        }
        let wait = &mut self.gates[gate];
        wait.heap.push(entry);
        self.gated += 1;
        match wake {
            Wake::At(until) => wait.until = Some(until),
            // A release will wake the gate (`wake_gate`).
            Wake::OnRelease => wait.until = None,
            // Behind the first, which asks when its turn comes.
            Wake::Behind => {}
        }
    }

    /// Lets the first entry of every gate whose time has come back into the heap to ask it
    /// again. O(gates).
    pub(crate) fn release_due(&mut self, now: Instant) {
        for wait in self.gates.iter_mut() {
            if wait.rule == WaitRule::Together && wait.until.is_some_and(|until| until <= now) {
                wait.until = None;
                self.gated -= wait.heap.len();
                self.heap.extend(wait.heap.drain());
                continue;
            }
            if wait.until.is_some_and(|until| until <= now)
                && let Some(entry) = wait.heap.pop()
            {
                let at = wait
                    .until
                    .take()
                    .unwrap_or(now)
                    .max(wait.asked.unwrap_or(now));
                wait.trying = Some((entry.seq(), at));
                self.gated -= 1;
                self.heap.push(entry);
            }
        }
    }

    /// Something came back to `gate`: its first waiting entry may ask again now.
    pub(crate) fn wake_gate(&mut self, gate: usize, now: Instant) {
        if let Some(wait) = self.gates.get_mut(gate)
            && !wait.heap.is_empty()
            && wait.trying.is_none()
        {
            wait.until = Some(wait.until.map_or(now, |until| until.min(now)));
        }
    }

    /// The instant an entry let out of a gate asks for (see [`GateWait::trying`]).
    pub(crate) fn asking_at(&self, seq: u64) -> Option<Instant> {
        self.gates.iter().find_map(|wait| match wait.trying {
            Some((trying, at)) if trying == seq => Some(at),
            _ => None,
        })
    }

    /// Notes that this run asked `gate` at `at`.
    pub(crate) fn asked(&mut self, gate: usize, at: Instant) {
        let wait = &mut self.gates[gate];
        wait.asked = Some(wait.asked.map_or(at, |asked| asked.max(at)));
    }

    /// The earliest instant a gate's first waiting entry may ask again.
    pub(crate) fn next_release(&self) -> Option<Instant> {
        self.gates.iter().filter_map(|wait| wait.until).min()
    }

    /// The entries waiting at each gate, for `blocked()`: (gate, entry, first may ask at).
    pub(crate) fn waiting_at_gates(
        &self,
    ) -> impl Iterator<Item = (usize, &ReadyEntry, Option<Instant>)> {
        self.gates
            .iter()
            .enumerate()
            .flat_map(|(gate, wait)| wait.heap.iter().map(move |entry| (gate, entry, wait.until)))
    }

    /// The entry that goes next, without taking it.
    pub(crate) fn peek(&self) -> Option<&ReadyEntry> {
        self.heap.peek()
    }

    /// Takes every entry of `state` out of the queue (a rare, O(n) operation).
    pub(crate) fn remove_state(&mut self, state: StateId) -> Vec<ReadyEntry> {
        self.remove_where(|e| e.state == state)
    }

    pub(crate) fn pop(&mut self) -> Option<ReadyEntry> {
        self.heap.pop()
    }

    /// Every entry, waiting at a gate or not.
    pub(crate) fn len(&self) -> usize {
        self.heap.len() + self.gated
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty() && self.gated == 0
    }

    pub(crate) fn drain(&mut self) -> impl Iterator<Item = ReadyEntry> + '_ {
        self.tickets.clear();
        self.gated = 0;
        for wait in self.gates.iter_mut() {
            self.heap.extend(wait.heap.drain());
            wait.until = None;
            wait.trying = None;
        }
        self.heap.drain()
    }
}

/// How many aging periods of head start a priority gives.
fn priority_level(priority: Priority) -> i64 {
    match priority {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
        Priority::Critical => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: Branch = Branch { scope: 0, id: 0 };

    fn order(queue: &mut ReadyQueue) -> Vec<u32> {
        std::iter::from_fn(|| queue.pop())
            .map(|e| e.state.index() as u32)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn priority_first_then_arrival_order() {
        let mut queue = ReadyQueue::new(Duration::from_secs(1));
        let id = StateId::new;
        queue.push(id(0), ROOT, 1, 0, Priority::Normal, Instant::now());
        queue.push(id(1), ROOT, 1, 0, Priority::Low, Instant::now());
        queue.push(id(2), ROOT, 1, 0, Priority::Critical, Instant::now());
        queue.push(id(3), ROOT, 1, 0, Priority::Normal, Instant::now());
        queue.push(id(4), ROOT, 1, 0, Priority::High, Instant::now());
        assert_eq!(order(&mut queue), vec![2, 4, 0, 3, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ages_past_later_higher_priorities() {
        let mut queue = ReadyQueue::new(Duration::from_millis(100));
        let id = StateId::new;
        queue.push(id(0), ROOT, 1, 0, Priority::Low, Instant::now());
        tokio::time::advance(Duration::from_millis(250)).await;
        // A Critical state 250 ms later gets a 300 ms head start: it still goes first...
        queue.push(id(1), ROOT, 1, 0, Priority::Critical, Instant::now());
        tokio::time::advance(Duration::from_millis(100)).await;
        // ...but a High one 350 ms later (200 ms head start) comes after the old Low one.
        queue.push(id(2), ROOT, 1, 0, Priority::High, Instant::now());
        assert_eq!(order(&mut queue), vec![1, 0, 2]);
    }
}
