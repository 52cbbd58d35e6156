//! The window of recently settled request ids the ledger keeps to refuse
//! a duplicate settle ([`super::state::LedgerState`]'s `settled`).

use std::collections::{HashMap, VecDeque};

/// The window of recently settled request ids: a set for lookups and a FIFO
/// for eviction. The FIFO is allocated once at full size; the set holds at
/// most one word per id in the window, so it is bounded by the same `max`.
#[derive(Debug, Clone)]
pub(super) struct SettledIds {
    /// The set, as 64-id bitmaps keyed by `id >> 6`. Request ids are a
    /// per-process, per-worker prefix and a counter, so recent ids fill the
    /// same few words: a settle touches one hot word instead of hashing a
    /// u128 into a 16 MiB table (three cache and TLB misses per settle,
    /// the ledger thread's largest cost after `apply` itself). Exact for any
    /// ids, dense or not; foldhash, since the ids are the gateway's own,
    /// never a client's.
    words: HashMap<u128, u64, foldhash::fast::RandomState>,
    /// Every id in the set, oldest first: what to evict, and what a
    /// snapshot records.
    pub(super) order: VecDeque<u128>,
    pub(super) max: usize,
}

impl SettledIds {
    pub(super) fn new(max: u32) -> SettledIds {
        let max = max as usize;
        SettledIds {
            words: HashMap::default(),
            order: VecDeque::with_capacity(max),
            max,
        }
    }

    fn split(id: u128) -> (u128, u64) {
        (id >> 6, 1u64 << (id & 63))
    }

    pub(super) fn contains(&self, id: u128) -> bool {
        let (word, bit) = Self::split(id);
        self.words.get(&word).is_some_and(|w| w & bit != 0)
    }

    pub(super) fn insert(&mut self, id: u128) {
        debug_assert!(!self.contains(id));
        if self.order.len() == self.max {
            if let Some(oldest) = self.order.pop_front() {
                let (word, bit) = Self::split(oldest);
                if let Some(w) = self.words.get_mut(&word) {
                    *w &= !bit;
                    if *w == 0 {
                        self.words.remove(&word);
                    }
                }
            }
        }
        self.order.push_back(id);
        let (word, bit) = Self::split(id);
        *self.words.entry(word).or_insert(0) |= bit;
    }

    /// How many ids the bitmaps hold (a check: equals `order.len()`).
    pub(super) fn count(&self) -> usize {
        self.words.values().map(|w| w.count_ones() as usize).sum()
    }
}
