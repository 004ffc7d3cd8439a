//! The write-ahead log: a ring of checksummed records.
//!
//! Every mutation is one record: a 64-byte header followed by its data
//! (writes only), padded to [`RECORD_ALIGN`]. Offsets are *logical*: they
//! grow without bound and the physical position is `offset % wal_size`; a
//! record that runs past the end of the ring continues at its start (the
//! header never splits, because the ring size and every record length are
//! multiples of the alignment, which is larger than the header).
//!
//! Replay starts at the superblock's `wal_tail` expecting LSN
//! `checkpoint_lsn + 1` and walks forward while each record is valid: right
//! magic, right generation, the expected LSN, and a CRC32C over header and
//! data that matches. The first record that fails ends the log, so a torn or
//! stale record is never applied. Because replay stops at the first gap, the
//! engine only calls a record durable when every lower LSN was completely
//! written before the covering fdatasync started (see `sync.rs`).

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Bytes in a record header.
pub const HEADER_LEN: usize = 64;
/// Records start on multiples of this many bytes.
pub const RECORD_ALIGN: u64 = 64;
/// Smallest WAL this format accepts.
pub const MIN_WAL_SIZE: u64 = 64 * 1024;
const RECORD_MAGIC: u32 = 0x4c41_574b; // "KWAL"

/// What a record does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// New data for `blocks` blocks at `lba`; the data follows the header.
    Write,
    /// Deallocate: the blocks read as zeros afterwards.
    Trim,
    /// Write zeros.
    Zero,
}

impl RecordKind {
    fn to_u8(self) -> u8 {
        match self {
            RecordKind::Write => 1,
            RecordKind::Trim => 2,
            RecordKind::Zero => 3,
        }
    }
    fn from_u8(v: u8) -> Option<RecordKind> {
        Some(match v {
            1 => RecordKind::Write,
            2 => RecordKind::Trim,
            3 => RecordKind::Zero,
            _ => return None,
        })
    }
}

/// Raw record header (little endian). `crc` is CRC32C of the header with
/// `crc` zeroed, continued over the data.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
struct RawHeader {
    magic: U32,
    kind: u8,
    flags: u8,
    reserved0: [u8; 2],
    lsn: U64,
    gen: U64,
    lba: U64,
    blocks: U32,
    data_len: U32,
    epoch: U64,
    reserved: [u8; 12],
    crc: U32,
}
const _: () = assert!(core::mem::size_of::<RawHeader>() == HEADER_LEN);

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// What the record does.
    pub kind: RecordKind,
    /// Its LSN.
    pub lsn: u64,
    /// WAL generation it was written in.
    pub gen: u64,
    /// First logical block.
    pub lba: u64,
    /// Blocks covered.
    pub blocks: u32,
    /// Data bytes after the header (0 unless `Write`).
    pub data_len: u32,
    /// Replication epoch at write time.
    pub epoch: u64,
    /// Checksum over header and data.
    pub crc: u32,
}

impl RecordHeader {
    /// Bytes the record takes in the ring, padding included.
    pub fn stride(&self) -> u64 {
        stride(self.data_len as usize)
    }

    /// Encode, computing the checksum over the header and `data`.
    pub fn encode(&self, data: &[u8]) -> [u8; HEADER_LEN] {
        let mut raw = RawHeader {
            magic: U32::new(RECORD_MAGIC),
            kind: self.kind.to_u8(),
            flags: 0,
            reserved0: [0; 2],
            lsn: U64::new(self.lsn),
            gen: U64::new(self.gen),
            lba: U64::new(self.lba),
            blocks: U32::new(self.blocks),
            data_len: U32::new(self.data_len),
            epoch: U64::new(self.epoch),
            reserved: [0; 12],
            crc: U32::new(0),
        };
        let crc = crc32c::crc32c_append(crc32c::crc32c(raw.as_bytes()), data);
        raw.crc = U32::new(crc);
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Decode a header without checking the data checksum. `None` if the
    /// bytes are not a header (bad magic or kind, inconsistent lengths).
    pub fn decode(bytes: &[u8; HEADER_LEN], block_size: u32) -> Option<RecordHeader> {
        let raw = RawHeader::read_from_bytes(bytes).ok()?;
        if raw.magic.get() != RECORD_MAGIC {
            return None;
        }
        let kind = RecordKind::from_u8(raw.kind)?;
        let blocks = raw.blocks.get();
        let data_len = raw.data_len.get();
        if blocks == 0 {
            return None;
        }
        let expect = match kind {
            RecordKind::Write => u64::from(blocks) * u64::from(block_size),
            RecordKind::Trim | RecordKind::Zero => 0,
        };
        if u64::from(data_len) != expect {
            return None;
        }
        Some(RecordHeader {
            kind,
            lsn: raw.lsn.get(),
            gen: raw.gen.get(),
            lba: raw.lba.get(),
            blocks,
            data_len,
            epoch: raw.epoch.get(),
            crc: raw.crc.get(),
        })
    }

    /// Whether `data` matches the checksum recorded in the header `bytes`.
    pub fn verify(bytes: &[u8; HEADER_LEN], data: &[u8]) -> bool {
        let Ok(mut raw) = RawHeader::read_from_bytes(bytes) else {
            return false;
        };
        let want = raw.crc.get();
        raw.crc = U32::new(0);
        crc32c::crc32c_append(crc32c::crc32c(raw.as_bytes()), data) == want
    }
}

/// Ring bytes taken by a record with `data_len` bytes of data.
pub fn stride(data_len: usize) -> u64 {
    (HEADER_LEN as u64 + data_len as u64).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Where the bytes `[logical, logical + len)` of the ring live in the file:
/// one or two `(file_offset, len)` pieces.
pub fn ring_pieces(wal_offset: u64, wal_size: u64, logical: u64, len: u64) -> [(u64, u64); 2] {
    let phys = logical % wal_size;
    let first = len.min(wal_size - phys);
    [(wal_offset + phys, first), (wal_offset, len - first)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr() -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Write,
            lsn: 42,
            gen: 3,
            lba: 100,
            blocks: 2,
            data_len: 1024,
            epoch: 1,
            crc: 0,
        }
    }

    #[test]
    fn encode_decode_verify() {
        let data = vec![0xabu8; 1024];
        let bytes = hdr().encode(&data);
        let got = RecordHeader::decode(&bytes, 512).unwrap();
        assert_eq!(got.lsn, 42);
        assert_eq!(got.stride(), 1088);
        assert!(RecordHeader::verify(&bytes, &data));
        let mut torn = data.clone();
        torn[1000] = 0;
        assert!(!RecordHeader::verify(&bytes, &torn));
    }

    #[test]
    fn inconsistent_lengths_are_not_headers() {
        let bytes = hdr().encode(&[0; 1024]);
        assert!(RecordHeader::decode(&bytes, 4096).is_none());
        let mut h = hdr();
        h.kind = RecordKind::Trim;
        assert!(RecordHeader::decode(&h.encode(&[]), 512).is_none());
        h.data_len = 0;
        assert!(RecordHeader::decode(&h.encode(&[]), 512).is_some());
    }

    #[test]
    fn pieces_wrap() {
        assert_eq!(
            ring_pieces(8192, 1000, 900, 50),
            [(8192 + 900, 50), (8192, 0)]
        );
        assert_eq!(
            ring_pieces(8192, 1000, 1900, 200),
            [(8192 + 900, 100), (8192, 100)]
        );
    }
}
