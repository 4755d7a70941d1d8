//! The table of sockets pushed to this process and not yet redeemed, by token.
//!
//! Tokens are random, so one hash table spreads the sockets of a burst of handoffs over all
//! of its memory. Beside 16,000 stale pending sockets, a redeem then missed the cache on a
//! line nothing had touched since the insert, and cost up to 2.5 times a redeem beside one
//! (`sockshare bench --only redeem`; the miss went to memory whenever the shared cache had
//! been overwritten meanwhile). So the latest arrivals live in a small table of their own,
//! which stays cached however many sockets are pending; older ones move, in arrival order,
//! to a second table that only redeems of old sockets touch.

use std::collections::hash_map::{Entry, HashMap};
use std::collections::VecDeque;

/// Entries the recent table holds: with them it has 4,096 buckets of 16 bytes, 64 KiB,
/// which a core's cache keeps. Measured beside a thrashed cache, a lookup in a table of
/// up to 4,096 buckets stayed at its cost with one entry; at 8,192 it tripled.
const RECENT: usize = 2048;

/// Pending entries by token, each with the packed kind (`wire::pack_kind`) it was pushed with.
pub(super) struct Table<V> {
    recent: HashMap<u64, Slot<V>>,
    old: HashMap<u64, Slot<V>>,
    /// The tokens put in `recent`, in arrival order; some may have been taken since.
    arrivals: VecDeque<u64>,
}

struct Slot<V> {
    kind: u32,
    value: V,
}

/// The token is pending, but for a socket of another kind: the info was altered after duplicate.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Altered;

impl<V> Table<V> {
    pub(super) fn new() -> Self {
        Table {
            recent: HashMap::new(),
            old: HashMap::new(),
            arrivals: VecDeque::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.recent.len() + self.old.len()
    }

    /// Removes and returns the entry for `token`, if it is pending under `kind`.
    pub(super) fn take(&mut self, token: u64, kind: u32) -> Result<Option<V>, Altered> {
        for table in [&mut self.recent, &mut self.old] {
            match table.entry(token) {
                Entry::Occupied(e) if e.get().kind == kind => return Ok(Some(e.remove().value)),
                Entry::Occupied(_) => return Err(Altered),
                Entry::Vacant(_) => {}
            }
        }
        Ok(None)
    }

    /// Adds an entry, or gives `value` back if `token` is pending already: a source reusing
    /// a live token breaks the protocol, and the entry that came first stays.
    pub(super) fn insert(&mut self, token: u64, kind: u32, value: V) -> Option<V> {
        if self.old.contains_key(&token) {
            return Some(value);
        }
        match self.recent.entry(token) {
            Entry::Occupied(_) => return Some(value),
            Entry::Vacant(v) => {
                v.insert(Slot { kind, value });
            }
        }
        self.arrivals.push_back(token);
        self.age();
        None
    }

    /// Moves the oldest recent entries to `old` while `recent` is over its size, and drops
    /// taken tokens from the front of `arrivals`. Ageing also when `arrivals` passes twice
    /// the size bounds it: one entry left pending at its front would otherwise keep every
    /// token behind it, taken or not.
    fn age(&mut self) {
        while let Some(&token) = self.arrivals.front() {
            let over = self.recent.len() > RECENT || self.arrivals.len() > 2 * RECENT;
            if over {
                if let Some(slot) = self.recent.remove(&token) {
                    self.old.insert(token, slot);
                }
            } else if self.recent.contains_key(&token) {
                return;
            }
            self.arrivals.pop_front();
        }
    }

    /// Every pending value, without allocating (a forked child walks them).
    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.recent
            .values()
            .chain(self.old.values())
            .map(|s| &s.value)
    }

    pub(super) fn clear(&mut self) {
        self.recent.clear();
        self.old.clear();
        self.arrivals.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(n: u64) -> Table<u64> {
        let mut t = Table::new();
        for token in 0..n {
            assert_eq!(t.insert(token, token as u32 ^ 7, token), None);
        }
        t
    }

    #[test]
    fn entries_past_the_recent_size_move_to_old_in_arrival_order() {
        let t = filled(RECENT as u64 + 10);
        assert_eq!((t.recent.len(), t.old.len()), (RECENT, 10));
        assert!((0..10).all(|token| t.old.contains_key(&token)));
        assert_eq!(t.len(), RECENT + 10);
    }

    #[test]
    fn take_finds_recent_and_old_entries_once() {
        let mut t = filled(RECENT as u64 + 10);
        for token in [0, 9, 10, RECENT as u64 + 9] {
            assert_eq!(t.take(token, token as u32 ^ 7), Ok(Some(token)));
            assert_eq!(t.take(token, token as u32 ^ 7), Ok(None));
        }
        assert_eq!(t.len(), RECENT + 6);
        assert_eq!(t.values().count(), RECENT + 6);
    }

    #[test]
    fn a_wrong_tag_is_refused_and_the_entry_stays() {
        let mut t = filled(RECENT as u64 + 1);
        for token in [0, 5] {
            assert_eq!(t.take(token, 1234), Err(Altered));
            assert_eq!(t.take(token, token as u32 ^ 7), Ok(Some(token)));
        }
    }

    #[test]
    fn a_live_token_is_not_replaced_in_either_table() {
        let mut t = filled(RECENT as u64 + 1);
        assert_eq!(t.insert(0, 0, 99), Some(99)); // in old
        assert_eq!(t.insert(RECENT as u64, 0, 98), Some(98)); // in recent
        assert_eq!(t.take(0, 7), Ok(Some(0)));
        // Once taken, the token may be pushed again.
        assert_eq!(t.insert(0, 1, 97), None);
        assert_eq!(t.take(0, 1), Ok(Some(97)));
    }

    #[test]
    fn arrivals_stay_bounded_behind_an_entry_left_pending() {
        let mut t = Table::new();
        t.insert(u64::MAX, 0, ());
        for token in 0..20 * RECENT as u64 {
            t.insert(token, 0, ());
            assert_eq!(t.take(token, 0), Ok(Some(())));
            assert!(t.arrivals.len() <= 2 * RECENT + 1, "{}", t.arrivals.len());
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.take(u64::MAX, 0), Ok(Some(())));
    }

    #[test]
    fn clear_empties_both_tables() {
        let mut t = filled(RECENT as u64 * 2);
        t.clear();
        assert_eq!((t.len(), t.arrivals.len()), (0, 0));
    }
}
