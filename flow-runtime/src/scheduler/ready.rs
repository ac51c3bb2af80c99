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

use flow_core::{Priority, StateId};
use tokio::time::Instant;

use super::joins::ScopeId;

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ReadyEntry {
    /// Virtual start time in microseconds since the queue's origin; smaller goes first.
    key: Reverse<(i64, u64)>,
    pub(crate) state: StateId,
    pub(crate) scope: ScopeId,
    pub(crate) attempt: u32,
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
}

impl ReadyQueue {
    pub(crate) fn new(aging: Duration) -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
            origin: Instant::now(),
            aging_micros: i64::try_from(aging.as_micros()).unwrap_or(i64::MAX / 8),
        }
    }

    /// Queues a state; returns the entry's sequence number (its identity in the queue).
    /// `now` is the caller's current time (the coordinator reads the clock once per event).
    pub(crate) fn push(
        &mut self,
        state: StateId,
        scope: ScopeId,
        attempt: u32,
        priority: Priority,
        now: Instant,
    ) -> u64 {
        let level = match priority {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High => 2,
            Priority::Critical => 3,
        };
        let virtual_start = self
            .clock(now)
            .saturating_sub(self.aging_micros.saturating_mul(level));
        self.push_at(state, scope, attempt, virtual_start)
    }

    /// `now` on the queue's clock (microseconds since its origin), the scale of virtual
    /// start times.
    pub(crate) fn clock(&self, now: Instant) -> i64 {
        i64::try_from(now.saturating_duration_since(self.origin).as_micros())
            .unwrap_or(i64::MAX / 2)
    }

    /// Every entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &ReadyEntry> {
        self.heap.iter()
    }

    /// Queues a state again at the place it had (a preempted state keeps its age).
    pub(crate) fn push_at(
        &mut self,
        state: StateId,
        scope: ScopeId,
        attempt: u32,
        virtual_start: i64,
    ) -> u64 {
        self.next_seq += 1;
        let key = Reverse((virtual_start, self.next_seq));
        self.heap.push(ReadyEntry {
            key,
            state,
            scope,
            attempt,
        });
        self.next_seq
    }

    /// Takes the entry with this sequence number out of the queue, if it is still there (a
    /// rare, O(n) operation).
    pub(crate) fn remove_seq(&mut self, seq: u64) -> Option<ReadyEntry> {
        self.remove_where(|e| e.seq() == seq).pop()
    }

    /// Takes out every entry `take` selects, keeping the rest in order (O(n)).
    fn remove_where(&mut self, take: impl Fn(&ReadyEntry) -> bool) -> Vec<ReadyEntry> {
        let (removed, kept): (Vec<_>, Vec<_>) = self.heap.drain().partition(|e| take(e));
        self.heap = kept.into();
        removed
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

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub(crate) fn drain(&mut self) -> impl Iterator<Item = ReadyEntry> + '_ {
        self.heap.drain()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(queue: &mut ReadyQueue) -> Vec<u32> {
        std::iter::from_fn(|| queue.pop())
            .map(|e| e.state.index() as u32)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn priority_first_then_arrival_order() {
        let mut queue = ReadyQueue::new(Duration::from_secs(1));
        let id = StateId::new;
        queue.push(id(0), 0, 1, Priority::Normal, Instant::now());
        queue.push(id(1), 0, 1, Priority::Low, Instant::now());
        queue.push(id(2), 0, 1, Priority::Critical, Instant::now());
        queue.push(id(3), 0, 1, Priority::Normal, Instant::now());
        queue.push(id(4), 0, 1, Priority::High, Instant::now());
        assert_eq!(order(&mut queue), vec![2, 4, 0, 3, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ages_past_later_higher_priorities() {
        let mut queue = ReadyQueue::new(Duration::from_millis(100));
        let id = StateId::new;
        queue.push(id(0), 0, 1, Priority::Low, Instant::now());
        tokio::time::advance(Duration::from_millis(250)).await;
        // A Critical state 250 ms later gets a 300 ms head start: it still goes first...
        queue.push(id(1), 0, 1, Priority::Critical, Instant::now());
        tokio::time::advance(Duration::from_millis(100)).await;
        // ...but a High one 350 ms later (200 ms head start) comes after the old Low one.
        queue.push(id(2), 0, 1, Priority::High, Instant::now());
        assert_eq!(order(&mut queue), vec![1, 0, 2]);
    }
}
