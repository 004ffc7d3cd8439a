//! Offline inspection and checking of a volume file, without changing it.

use std::path::Path;

use crate::error::{Error, Result};
use crate::recovery::{walk, WalEnd, WalWalk};
use crate::storage::{FileStorage, Storage};
use crate::superblock::{Superblock, SLOT_SIZE};
use crate::volume::read_superblock;

/// State of one superblock slot.
#[derive(Clone, Debug)]
pub enum SlotState {
    /// Valid, with this update sequence.
    Valid(u64),
    /// Invalid, with the reason.
    Invalid(String),
}

/// What `keel volume inspect` / `check` report.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// The newest valid superblock.
    pub superblock: Superblock,
    /// Which slot holds it.
    pub slot: usize,
    /// Both slots.
    pub slots: [SlotState; 2],
    /// File length in bytes.
    pub file_len: u64,
    /// The WAL records a reopen would replay.
    pub wal: WalWalk,
    /// Problems that lose or endanger data (non-empty: `check` fails).
    pub damage: Vec<String>,
    /// Notes on states a reopen repairs by itself.
    pub notes: Vec<String>,
}

/// Read a volume file and walk its WAL; nothing is written.
pub fn inspect(path: &Path) -> Result<Inspection> {
    inspect_storage(&FileStorage::open(path, false)?)
}

/// [`inspect`] on any storage.
pub fn inspect_storage(storage: &dyn Storage) -> Result<Inspection> {
    let (sb, slot) = read_superblock(storage)?;
    let file_len = storage.len()?;
    let mut slots = [
        SlotState::Invalid(String::new()),
        SlotState::Invalid(String::new()),
    ];
    let mut notes = Vec::new();
    let mut damage = Vec::new();
    for (i, s) in slots.iter_mut().enumerate() {
        let mut buf = vec![0u8; crate::superblock::SLOT_BYTES];
        storage.read_at(&mut buf, i as u64 * SLOT_SIZE)?;
        *s = match Superblock::decode(&buf) {
            Ok(x) => SlotState::Valid(x.seq),
            Err(e) => {
                notes.push(format!(
                    "superblock slot {} is invalid ({e}); the next superblock update rewrites it",
                    ["A", "B"][i]
                ));
                SlotState::Invalid(e.to_string())
            }
        };
    }
    let wal = match walk(storage, &sb, |_, _| Ok(())) {
        Ok(w) => w,
        Err(e @ Error::Corrupt(_)) => {
            damage.push(e.to_string());
            WalWalk {
                records: 0,
                data_bytes: 0,
                last_lsn: sb.checkpoint_lsn,
                end: sb.wal_tail,
                stop: WalEnd::NoRecord,
            }
        }
        Err(e) => return Err(e),
    };
    if let WalEnd::Torn { lsn } = wal.stop {
        notes.push(format!(
            "WAL record LSN {lsn} is torn: a write in flight when the volume stopped; \
             it was never acknowledged as durable and replay discards it"
        ));
    }
    if wal.records > 0 {
        notes.push(format!(
            "{} WAL records (LSN {}..={}) will be replayed at the next open",
            wal.records,
            sb.checkpoint_lsn + 1,
            wal.last_lsn
        ));
    }
    Ok(Inspection {
        superblock: sb,
        slot,
        slots,
        file_len,
        wal,
        damage,
        notes,
    })
}
