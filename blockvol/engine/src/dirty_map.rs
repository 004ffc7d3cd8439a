//! The dirty map: which logical blocks have newer content in the WAL than in
//! the extent region.
//!
//! An interval map from block ranges to the record that last wrote them, so a
//! trim of a whole volume is one entry, not millions. Inserting is
//! "newest LSN wins": a write that completes after a newer write to the same
//! blocks (concurrent writers complete out of order) never shadows it. The
//! flusher removes a range only where it still maps to the record it just
//! wrote back.

use std::collections::BTreeMap;

use smallvec::SmallVec;

/// Where the current content of a dirty range is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// In a WAL record; `off` is the logical WAL offset of the data of the
    /// range's first block.
    Wal {
        /// Logical WAL offset of the first block's data.
        off: u64,
    },
    /// Zeros (trim or write-zeroes).
    Zero,
}

impl Source {
    fn advance(self, blocks: u64, block_size: u64) -> Source {
        match self {
            Source::Wal { off } => Source::Wal {
                off: off + blocks * block_size,
            },
            Source::Zero => Source::Zero,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    len: u64,
    lsn: u64,
    src: Source,
}

/// One piece of a lookup: `len` blocks at `lba`, dirty (with the LSN and
/// source of its content) or clean (`None`: read the extent region).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First block.
    pub lba: u64,
    /// Blocks.
    pub len: u64,
    /// LSN and source when dirty.
    pub dirty: Option<(u64, Source)>,
}

/// Entries a write overlaps: a few at most in practice, kept inline (no
/// allocation per write).
type Overlap = SmallVec<[(u64, Entry); 4]>;

/// Interval map of dirty block ranges.
#[derive(Debug)]
pub struct DirtyMap {
    map: BTreeMap<u64, Entry>,
    block_size: u64,
    dirty_blocks: u64,
}

impl DirtyMap {
    /// An empty map for blocks of `block_size` bytes.
    pub fn new(block_size: u32) -> DirtyMap {
        DirtyMap {
            map: BTreeMap::new(),
            block_size: u64::from(block_size),
            dirty_blocks: 0,
        }
    }

    /// Blocks currently dirty.
    pub fn dirty_blocks(&self) -> u64 {
        self.dirty_blocks
    }

    /// Ranges currently in the map.
    pub fn ranges(&self) -> usize {
        self.map.len()
    }

    /// Remove every entry overlapping `[start, end)` and return them (whole).
    fn take_overlapping(&mut self, start: u64, end: u64) -> Overlap {
        let mut keys: SmallVec<[u64; 4]> = SmallVec::new();
        if let Some((&k, e)) = self.map.range(..start).next_back() {
            if k + e.len > start {
                keys.push(k);
            }
        }
        keys.extend(self.map.range(start..end).map(|(&k, _)| k));
        let mut out = Overlap::new();
        for k in keys {
            if let Some(e) = self.map.remove(&k) {
                self.dirty_blocks -= e.len;
                out.push((k, e));
            }
        }
        out
    }

    fn put(&mut self, start: u64, e: Entry) {
        if e.len > 0 {
            self.dirty_blocks += e.len;
            self.map.insert(start, e);
        }
    }

    /// Record that `len` blocks at `start` now hold the content of record
    /// `lsn` from `src`, except where a newer record already holds them.
    pub fn insert(&mut self, start: u64, len: u64, lsn: u64, src: Source) {
        if len == 0 {
            return;
        }
        let end = start + len;
        let old = self.take_overlapping(start, end);
        let bs = self.block_size;
        // Fringes outside the range stay as they were.
        let mut keep_newer = Overlap::new();
        for (k, e) in old {
            let e_end = k + e.len;
            if k < start {
                self.put(
                    k,
                    Entry {
                        len: start - k,
                        ..e
                    },
                );
            }
            if e_end > end {
                let skip = end - k;
                self.put(
                    end,
                    Entry {
                        len: e_end - end,
                        lsn: e.lsn,
                        src: e.src.advance(skip, bs),
                    },
                );
            }
            if e.lsn > lsn {
                let s = k.max(start);
                let t = e_end.min(end);
                keep_newer.push((
                    s,
                    Entry {
                        len: t - s,
                        lsn: e.lsn,
                        src: e.src.advance(s - k, bs),
                    },
                ));
            }
        }
        keep_newer.sort_by_key(|(k, _)| *k);
        let mut cursor = start;
        for (s, e) in keep_newer {
            if s > cursor {
                self.put(
                    cursor,
                    Entry {
                        len: s - cursor,
                        lsn,
                        src: src.advance(cursor - start, bs),
                    },
                );
            }
            cursor = s + e.len;
            self.put(s, e);
        }
        if cursor < end {
            self.put(
                cursor,
                Entry {
                    len: end - cursor,
                    lsn,
                    src: src.advance(cursor - start, bs),
                },
            );
        }
    }

    /// Describe `[start, start + len)` as dirty and clean segments, in order.
    pub fn lookup(&self, start: u64, len: u64, out: &mut Vec<Segment>) {
        out.clear();
        let end = start + len;
        let mut cursor = start;
        let first = self
            .map
            .range(..start)
            .next_back()
            .filter(|(&k, e)| k + e.len > start)
            .map(|(&k, e)| (k, *e));
        let rest = self.map.range(start..end).map(|(&k, e)| (k, *e));
        for (k, e) in first.into_iter().chain(rest) {
            let s = k.max(start);
            let t = (k + e.len).min(end);
            if s > cursor {
                out.push(Segment {
                    lba: cursor,
                    len: s - cursor,
                    dirty: None,
                });
            }
            out.push(Segment {
                lba: s,
                len: t - s,
                dirty: Some((e.lsn, e.src.advance(s - k, self.block_size))),
            });
            cursor = t;
        }
        if cursor < end {
            out.push(Segment {
                lba: cursor,
                len: end - cursor,
                dirty: None,
            });
        }
    }

    /// Forget `[start, start + len)` where it still maps to record `lsn`
    /// (the flusher wrote that record back; newer content stays).
    pub fn remove_if_lsn(&mut self, start: u64, len: u64, lsn: u64) {
        if len == 0 {
            return;
        }
        let end = start + len;
        let old = self.take_overlapping(start, end);
        let bs = self.block_size;
        for (k, e) in old {
            let e_end = k + e.len;
            if e.lsn != lsn {
                self.put(k, e);
                continue;
            }
            if k < start {
                self.put(
                    k,
                    Entry {
                        len: start - k,
                        ..e
                    },
                );
            }
            if e_end > end {
                self.put(
                    end,
                    Entry {
                        len: e_end - end,
                        lsn: e.lsn,
                        src: e.src.advance(end - k, bs),
                    },
                );
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test indices are small
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Per-block oracle.
    #[derive(Clone)]
    struct Naive(Vec<Option<(u64, Source)>>);

    impl Naive {
        fn insert(&mut self, start: u64, len: u64, lsn: u64, src: Source, bs: u64) {
            for i in 0..len {
                let b = (start + i) as usize;
                if self.0[b].is_none_or(|(l, _)| l < lsn) {
                    self.0[b] = Some((lsn, src.advance(i, bs)));
                }
            }
        }
        fn remove(&mut self, start: u64, len: u64, lsn: u64) {
            for b in start..start + len {
                if self.0[b as usize].is_some_and(|(l, _)| l == lsn) {
                    self.0[b as usize] = None;
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Action {
        Insert { start: u64, len: u64, zero: bool },
        Remove { start: u64, len: u64, back: u64 },
        Lookup { start: u64, len: u64 },
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            (0u64..60, 1u64..20, any::<bool>()).prop_map(|(start, len, zero)| Action::Insert {
                start,
                len,
                zero
            }),
            (0u64..60, 1u64..20, 0u64..6).prop_map(|(start, len, back)| Action::Remove {
                start,
                len,
                back
            }),
            (0u64..60, 1u64..20).prop_map(|(start, len)| Action::Lookup { start, len }),
        ]
    }

    proptest! {
        #[test]
        fn matches_per_block_oracle(actions in proptest::collection::vec(action(), 1..80), shuffle in any::<u64>()) {
            let bs = 512u64;
            let mut m = DirtyMap::new(512);
            let mut n = Naive(vec![None; 80]);
            let mut lsn = 0u64;
            let mut used: Vec<u64> = Vec::new();
            let mut segs = Vec::new();
            for (i, a) in actions.into_iter().enumerate() {
                match a {
                    Action::Insert { start, len, zero } => {
                        lsn += 1;
                        // Out-of-order completion: sometimes the record that
                        // completes now is older than ones already inserted
                        // (LSNs stay unique: 4k for in-order, 4k-10 for late).
                        let use_lsn = if (shuffle >> (i % 64)) & 1 == 1 && lsn > 3 { lsn * 4 - 10 } else { lsn * 4 };
                        used.push(use_lsn);
                        let src = if zero { Source::Zero } else { Source::Wal { off: use_lsn * 100_000 } };
                        m.insert(start, len, use_lsn, src);
                        n.insert(start, len, use_lsn, src, bs);
                    }
                    Action::Remove { start, len, back } => {
                        let l = used.len().checked_sub(1 + back as usize).map_or(0, |k| used[k]);
                        m.remove_if_lsn(start, len, l);
                        n.remove(start, len, l);
                    }
                    Action::Lookup { start, len } => {
                        m.lookup(start, len, &mut segs);
                        let mut cursor = start;
                        for s in &segs {
                            prop_assert_eq!(s.lba, cursor);
                            prop_assert!(s.len > 0);
                            for j in 0..s.len {
                                let want = n.0[(s.lba + j) as usize];
                                let got = s.dirty.map(|(l, src)| (l, src.advance(j, bs)));
                                prop_assert_eq!(got, want);
                            }
                            cursor += s.len;
                        }
                        prop_assert_eq!(cursor, start + len);
                    }
                }
                let want_dirty = n.0.iter().filter(|e| e.is_some()).count() as u64;
                prop_assert_eq!(m.dirty_blocks(), want_dirty);
            }
        }
    }

    #[test]
    fn whole_volume_trim_is_one_range() {
        let mut m = DirtyMap::new(4096);
        m.insert(0, 10, 1, Source::Wal { off: 0 });
        m.insert(0, 1 << 30, 2, Source::Zero);
        assert_eq!(m.ranges(), 1);
        assert_eq!(m.dirty_blocks(), 1 << 30);
        m.remove_if_lsn(0, 1 << 30, 2);
        assert_eq!(m.ranges(), 0);
    }
}
