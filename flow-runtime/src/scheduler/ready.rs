//! The queue of states waiting for a free slot: highest priority first, then first come.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use flow_core::{Priority, StateId};

use super::joins::GroupId;

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ReadyEntry {
    pub(crate) priority: Priority,
    seq: Reverse<u64>,
    pub(crate) state: StateId,
    pub(crate) group: GroupId,
    pub(crate) attempt: u32,
}

impl Ord for ReadyEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.priority, self.seq).cmp(&(other.priority, other.seq))
    }
}

impl PartialOrd for ReadyEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Default)]
pub(crate) struct ReadyQueue {
    heap: BinaryHeap<ReadyEntry>,
    next_seq: u64,
}

impl ReadyQueue {
    pub(crate) fn push(
        &mut self,
        state: StateId,
        group: GroupId,
        attempt: u32,
        priority: Priority,
    ) {
        let seq = Reverse(self.next_seq);
        self.next_seq += 1;
        self.heap.push(ReadyEntry {
            priority,
            seq,
            state,
            group,
            attempt,
        });
    }

    /// Takes every entry of `state` out of the queue (a rare, O(n) operation).
    pub(crate) fn remove_state(&mut self, state: StateId) -> Vec<ReadyEntry> {
        let (removed, kept): (Vec<_>, Vec<_>) = self.heap.drain().partition(|e| e.state == state);
        self.heap = kept.into();
        removed
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

    #[test]
    fn priority_first_then_arrival_order() {
        let mut queue = ReadyQueue::default();
        let id = StateId::new;
        queue.push(id(0), 0, 1, Priority::Normal);
        queue.push(id(1), 0, 1, Priority::Low);
        queue.push(id(2), 0, 1, Priority::Critical);
        queue.push(id(3), 0, 1, Priority::Normal);
        queue.push(id(4), 0, 1, Priority::High);
        let order: Vec<u32> = std::iter::from_fn(|| queue.pop())
            .map(|e| e.state.index() as u32)
            .collect();
        assert_eq!(order, vec![2, 4, 0, 3, 1]);
    }
}
