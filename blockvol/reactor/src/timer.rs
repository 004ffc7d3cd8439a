//! Per-reactor timers: a binary heap of deadlines with O(1) cancel (lazy
//! deletion, compacted when stale entries dominate).
//!
//! Resolution is whatever the loop gives: timers are checked on every
//! iteration against a cached `Instant`, and a sleeping reactor rounds its
//! timeout up to the next millisecond, so a timer never fires early.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A timer callback; runs on the reactor thread.
pub type TimerCallback<C> = Box<dyn FnOnce(&mut C) + 'static>;

/// Identifies a pending timer, for [`TimerHeap::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    slot: u32,
    generation: u32,
}

struct Slot<C> {
    generation: u32,
    callback: Option<TimerCallback<C>>,
}

/// Heap entry: deadline, insertion sequence (FIFO among equal deadlines),
/// slot, generation.
type Entry = Reverse<(Instant, u64, u32, u32)>;

/// The timers of one reactor. `C` is the context the callbacks receive.
pub struct TimerHeap<C> {
    heap: BinaryHeap<Entry>,
    slots: Vec<Slot<C>>,
    free: Vec<u32>,
    live: usize,
    seq: u64,
}

impl<C> Default for TimerHeap<C> {
    fn default() -> Self {
        TimerHeap {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            seq: 0,
        }
    }
}

impl<C> TimerHeap<C> {
    /// Schedule `callback` at `deadline`.
    pub fn insert(&mut self, deadline: Instant, callback: TimerCallback<C>) -> TimerId {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Slot {
                    generation: 0,
                    callback: None,
                });
                s
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.callback = Some(callback);
        let generation = entry.generation;
        self.seq += 1;
        self.heap
            .push(Reverse((deadline, self.seq, slot, generation)));
        self.live += 1;
        TimerId { slot, generation }
    }

    /// Cancel a pending timer; `false` if it already fired or was cancelled.
    pub fn cancel(&mut self, id: TimerId) -> bool {
        let Some(entry) = self.slots.get_mut(id.slot as usize) else {
            return false;
        };
        if entry.generation != id.generation || entry.callback.is_none() {
            return false;
        }
        entry.callback = None;
        self.release(id.slot);
        // Lazy deletion leaves the heap entry; rebuild when mostly stale.
        if self.heap.len() > 64 && self.heap.len() > 4 * self.live {
            let slots = &self.slots;
            self.heap
                .retain(|Reverse((_, _, s, g))| slots[*s as usize].generation == *g);
        }
        true
    }

    fn release(&mut self, slot: u32) {
        let entry = &mut self.slots[slot as usize];
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(slot);
        self.live -= 1;
    }

    /// Pending (not cancelled, not fired) timers.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn is_stale(&self, slot: u32, generation: u32) -> bool {
        self.slots[slot as usize].generation != generation
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, _, slot, generation))) = self.heap.peek().copied() {
            if self.is_stale(slot, generation) {
                self.heap.pop();
                continue;
            }
            return Some(deadline);
        }
        None
    }

    /// Remove and return the callback of one timer due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<TimerCallback<C>> {
        while let Some(Reverse((deadline, _, slot, generation))) = self.heap.peek().copied() {
            if self.is_stale(slot, generation) {
                self.heap.pop();
                continue;
            }
            if deadline > now {
                return None;
            }
            self.heap.pop();
            let callback = self.slots[slot as usize].callback.take();
            self.release(slot);
            if callback.is_some() {
                return callback;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    type Log = Vec<u32>;

    fn cb(v: u32) -> TimerCallback<Log> {
        Box::new(move |log: &mut Log| log.push(v))
    }

    fn run_due(t: &mut TimerHeap<Log>, now: Instant, log: &mut Log) {
        while let Some(f) = t.pop_due(now) {
            f(log);
        }
    }

    #[test]
    fn timers_fire_in_deadline_order_and_fifo_on_ties() {
        let mut t = TimerHeap::default();
        let base = Instant::now();
        t.insert(base + Duration::from_millis(30), cb(3));
        t.insert(base + Duration::from_millis(10), cb(1));
        t.insert(base + Duration::from_millis(20), cb(2));
        t.insert(base + Duration::from_millis(20), cb(22));
        let mut log = Vec::new();
        run_due(&mut t, base + Duration::from_millis(5), &mut log);
        assert!(log.is_empty());
        assert_eq!(t.next_deadline(), Some(base + Duration::from_millis(10)));
        run_due(&mut t, base + Duration::from_millis(20), &mut log);
        assert_eq!(log, [1, 2, 22]);
        run_due(&mut t, base + Duration::from_millis(100), &mut log);
        assert_eq!(log, [1, 2, 22, 3]);
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn cancelled_timers_never_fire_and_ids_are_not_reused() {
        let mut t = TimerHeap::default();
        let base = Instant::now();
        let a = t.insert(base, cb(1));
        let b = t.insert(base, cb(2));
        assert!(t.cancel(a));
        assert!(!t.cancel(a), "double cancel");
        let mut log = Vec::new();
        run_due(&mut t, base, &mut log);
        assert_eq!(log, [2]);
        assert!(!t.cancel(b), "cancel after fire");
        // The slot of `a` is reused with a new generation: the old id must
        // not cancel the new timer.
        let c = t.insert(base, cb(3));
        assert!(!t.cancel(a));
        assert_ne!(a, c);
        run_due(&mut t, base, &mut log);
        assert_eq!(log, [2, 3]);
    }

    #[test]
    fn heap_stays_bounded_under_rearm_churn() {
        // A keep-alive re-armed per command: cancel + insert, many times.
        let mut t = TimerHeap::default();
        let base = Instant::now();
        let mut id = t.insert(base + Duration::from_secs(10), cb(0));
        for i in 0..100_000u32 {
            assert!(t.cancel(id));
            id = t.insert(base + Duration::from_secs(10), cb(i));
        }
        assert_eq!(t.len(), 1);
        assert!(t.heap.len() <= 64 * 4 + 1, "heap holds {}", t.heap.len());
        assert!(t.slots.len() <= 2);
    }
}
