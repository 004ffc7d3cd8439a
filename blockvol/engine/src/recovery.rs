//! Walking the WAL: replay at open, and the read-only scan of `check`.

use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::superblock::Superblock;
use crate::wal::{ring_pieces, RecordHeader, RecordKind, HEADER_LEN};

/// Why a WAL walk stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalEnd {
    /// The next slot holds no record header (never written, or garbage).
    NoRecord,
    /// A record of an older generation or an unexpected LSN: left from an
    /// earlier lap or an earlier run.
    Stale {
        /// LSN found there.
        lsn: u64,
        /// Generation found there.
        gen: u64,
    },
    /// The expected record, but its data does not match its checksum: a write
    /// that was in flight when the machine stopped.
    Torn {
        /// Its LSN.
        lsn: u64,
    },
    /// The records fill the whole ring.
    Full,
}

/// Result of a walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalWalk {
    /// Valid records found.
    pub records: u64,
    /// Data bytes in them.
    pub data_bytes: u64,
    /// LSN of the last valid record (`checkpoint_lsn` when none).
    pub last_lsn: u64,
    /// Logical WAL offset after the last valid record.
    pub end: u64,
    /// Why the walk stopped.
    pub stop: WalEnd,
}

fn read_ring(storage: &dyn Storage, sb: &Superblock, logical: u64, buf: &mut [u8]) -> Result<()> {
    let mut at = 0usize;
    for (off, len) in ring_pieces(sb.wal_offset, sb.wal_size, logical, buf.len() as u64) {
        let len = usize::try_from(len).map_err(|_| Error::Corrupt("WAL piece too large".into()))?;
        if len > 0 {
            storage.read_at(&mut buf[at..at + len], off)?;
            at += len;
        }
    }
    Ok(())
}

/// Walk the valid records from the superblock's tail, calling `f` with each
/// header and its data, in LSN order. A valid record whose blocks lie past
/// the end of the volume is corruption and an error.
pub fn walk(
    storage: &dyn Storage,
    sb: &Superblock,
    mut f: impl FnMut(&RecordHeader, &[u8]) -> Result<()>,
) -> Result<WalWalk> {
    let mut off = sb.wal_tail;
    let mut expect = sb.checkpoint_lsn + 1;
    let mut out = WalWalk {
        records: 0,
        data_bytes: 0,
        last_lsn: sb.checkpoint_lsn,
        end: off,
        stop: WalEnd::NoRecord,
    };
    let capacity = sb.blocks();
    let mut data = Vec::new();
    loop {
        let used = off - sb.wal_tail;
        if used + HEADER_LEN as u64 > sb.wal_size {
            out.stop = WalEnd::Full;
            break;
        }
        let mut hb = [0u8; HEADER_LEN];
        read_ring(storage, sb, off, &mut hb)?;
        let Some(h) = RecordHeader::decode(&hb, sb.block_size) else {
            out.stop = WalEnd::NoRecord;
            break;
        };
        if h.gen != sb.wal_gen || h.lsn != expect {
            out.stop = WalEnd::Stale {
                lsn: h.lsn,
                gen: h.gen,
            };
            break;
        }
        if used + h.stride() > sb.wal_size {
            out.stop = WalEnd::Torn { lsn: h.lsn };
            break;
        }
        data.resize(h.data_len as usize, 0);
        read_ring(storage, sb, off + HEADER_LEN as u64, &mut data)?;
        if !RecordHeader::verify(&hb, &data) {
            out.stop = WalEnd::Torn { lsn: h.lsn };
            break;
        }
        if h.lba
            .checked_add(u64::from(h.blocks))
            .is_none_or(|e| e > capacity)
        {
            return Err(Error::Corrupt(format!(
                "WAL record LSN {} covers blocks {}+{} past the end ({} blocks)",
                h.lsn, h.lba, h.blocks, capacity
            )));
        }
        f(&h, &data)?;
        out.records += 1;
        out.data_bytes += u64::from(h.data_len);
        out.last_lsn = h.lsn;
        off += h.stride();
        out.end = off;
        expect += 1;
    }
    Ok(out)
}

/// Replay the WAL into the extent region and sync. The caller then records
/// the new checkpoint (and a new WAL generation) in the superblock.
pub fn replay(storage: &dyn Storage, sb: &Superblock) -> Result<WalWalk> {
    let bs = u64::from(sb.block_size);
    let walk = walk(storage, sb, |h, data| {
        let at = sb.extent_offset + h.lba * bs;
        match h.kind {
            RecordKind::Write => storage.write_at(&[data], at)?,
            RecordKind::Trim | RecordKind::Zero => {
                storage.punch_hole(at, u64::from(h.blocks) * bs)?;
            }
        }
        Ok(())
    })?;
    if walk.records > 0 {
        storage.sync_data()?;
    }
    Ok(walk)
}
