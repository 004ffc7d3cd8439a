//! A data segment received piece by piece after its header: how much has
//! come, what is still to come (the data, then padding and a data digest),
//! and the digest of the data so far. Both targets take a write's data this
//! way when its header arrives before all of it (iSCSI immediate data and
//! Data-Out, NVMe/TCP H2CData).

use crate::iscsi::digest::{crc32c_continue, from_wire};

/// What the next received bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The next `n` bytes are data.
    Data(usize),
    /// The data is in; its padding and digest are not, all of them.
    Wait,
    /// The data is in; the next `n` bytes are its padding and digest.
    Tail(usize),
}

/// A data segment being received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRx {
    done: usize,
    len: usize,
    pad: usize,
    digest: bool,
    crc: u32,
}

impl SegmentRx {
    /// `len` data bytes, then `pad` padding bytes (zeros, covered by the
    /// digest), then a 4-byte CRC32C data digest when `digest`.
    pub fn new(len: usize, pad: usize, digest: bool) -> SegmentRx {
        SegmentRx {
            done: 0,
            len,
            pad,
            digest,
            crc: 0,
        }
    }

    /// Data bytes received so far.
    pub fn done(&self) -> usize {
        self.done
    }

    /// Data bytes in all.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the segment has no data.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Data bytes still to come.
    pub fn left(&self) -> usize {
        self.len - self.done
    }

    /// Bytes after the data: padding and digest.
    pub fn tail(&self) -> usize {
        self.pad + if self.digest { 4 } else { 0 }
    }

    /// What the next of `available` received bytes are.
    pub fn next(&self, available: usize) -> Next {
        if self.left() > 0 {
            Next::Data(self.left().min(available))
        } else if available < self.tail() {
            Next::Wait
        } else {
            Next::Tail(self.tail())
        }
    }

    /// `data` (at most [`SegmentRx::left`] bytes) arrived.
    pub fn arrived(&mut self, data: &[u8]) {
        let n = data.len().min(self.left());
        if self.digest {
            self.crc = crc32c_continue(self.crc, &data[..n]);
        }
        self.done += n;
    }

    /// Whether the data is in and nothing follows it (the segment is done
    /// without a tail).
    pub fn complete_without_tail(&self) -> bool {
        self.left() == 0 && self.tail() == 0
    }

    /// Whether `tail` (the [`SegmentRx::tail`] bytes after the data) holds
    /// the right digest; always true without data digests.
    pub fn tail_ok(&self, tail: &[u8]) -> bool {
        if !self.digest {
            return true;
        }
        let crc = crc32c_continue(self.crc, &[0u8; 3][..self.pad.min(3)]);
        let p = self.pad;
        tail.len() >= p + 4 && crc == from_wire([tail[p], tail[p + 1], tail[p + 2], tail[p + 3]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::digest::{crc32c_parts, to_wire};

    #[test]
    fn pieces_in_any_split_give_the_whole_digest() {
        let data: Vec<u8> = (0..1001u32).map(|i| (i * 7 % 251) as u8).collect();
        let pad = 3;
        let good = to_wire(crc32c_parts(&[&data, &[0u8; 3]]));
        for cut in [0, 1, 500, 1000, 1001] {
            let mut s = SegmentRx::new(data.len(), pad, true);
            assert_eq!(s.next(cut), Next::Data(cut));
            s.arrived(&data[..cut]);
            if cut < 1001 {
                assert_eq!(s.next(5000), Next::Data(1001 - cut));
            }
            s.arrived(&data[cut..]);
            assert_eq!(s.left(), 0);
            assert_eq!(s.next(6), Next::Wait);
            assert_eq!(s.next(7), Next::Tail(7));
            let mut tail = vec![0u8; 3];
            tail.extend_from_slice(&good);
            assert!(s.tail_ok(&tail));
            tail[5] ^= 1;
            assert!(!s.tail_ok(&tail));
        }
    }

    #[test]
    fn without_digest_or_padding_the_data_ends_it() {
        let mut s = SegmentRx::new(8, 0, false);
        assert!(!s.complete_without_tail());
        s.arrived(&[1; 8]);
        assert!(s.complete_without_tail());
        assert!(s.tail_ok(&[]));
        // Bytes beyond the segment are not counted.
        let mut s = SegmentRx::new(4, 0, true);
        s.arrived(&[9; 10]);
        assert_eq!((s.done(), s.left(), s.tail()), (4, 0, 4));
    }
}
