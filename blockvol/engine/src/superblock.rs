//! The superblock: two 4 KiB slots at the start of the volume file.
//!
//! Every update writes the slot that does not hold the newest copy, with a
//! sequence number one higher, and syncs; opening reads both and takes the
//! valid one with the higher sequence. A torn superblock write therefore
//! never loses the previous good copy. All updates go through one
//! [`crate::volume`] mutex, so two writers (flusher checkpoint, expand, role
//! change) can never race each other into a regressed checkpoint.
//!
//! ```text
//! 0        4 KiB     8 KiB                        extent_offset          end
//! | slot A | slot B  | WAL ring (wal_size)   ...  | extent region (size)  |
//! ```

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Error, Result};

/// Magic at the start of each superblock slot.
pub const MAGIC: [u8; 8] = *b"KEELVOL\0";
/// On-disk format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of one superblock slot.
pub const SLOT_SIZE: u64 = 4096;
/// [`SLOT_SIZE`] as a buffer length.
pub const SLOT_BYTES: usize = 4096;
/// Byte offset of the WAL ring.
pub const WAL_OFFSET: u64 = 2 * SLOT_SIZE;
/// The extent region starts on this alignment.
pub const EXTENT_ALIGN: u64 = 1 << 20;

/// Role of a volume in replication (persisted, validated on open).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// Not replicated.
    #[default]
    Standalone,
    /// Serves I/O and ships its WAL to replicas.
    Primary,
    /// Receives a primary's WAL; no host I/O.
    Replica,
    /// Being rebuilt from a primary.
    Rebuilding,
    /// Fenced: a newer epoch exists elsewhere.
    Stale,
}

impl Role {
    fn to_u8(self) -> u8 {
        match self {
            Role::Standalone => 0,
            Role::Primary => 1,
            Role::Replica => 2,
            Role::Rebuilding => 3,
            Role::Stale => 4,
        }
    }
    fn from_u8(v: u8) -> Option<Role> {
        Some(match v {
            0 => Role::Standalone,
            1 => Role::Primary,
            2 => Role::Replica,
            3 => Role::Rebuilding,
            4 => Role::Stale,
            _ => return None,
        })
    }
    /// Lower-case name as shown by tools.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Rebuilding => "rebuilding",
            Role::Stale => "stale",
        }
    }
}

/// Replication durability mode (persisted, validated on open).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DurabilityMode {
    /// Acknowledge after the local sync; replicas catch up.
    #[default]
    BestEffort,
    /// Acknowledge after the local sync and a quorum of replicas.
    SyncQuorum,
    /// Acknowledge after every replica.
    SyncAll,
}

impl DurabilityMode {
    fn to_u8(self) -> u8 {
        match self {
            DurabilityMode::BestEffort => 0,
            DurabilityMode::SyncQuorum => 1,
            DurabilityMode::SyncAll => 2,
        }
    }
    fn from_u8(v: u8) -> Option<DurabilityMode> {
        Some(match v {
            0 => DurabilityMode::BestEffort,
            1 => DurabilityMode::SyncQuorum,
            2 => DurabilityMode::SyncAll,
            _ => return None,
        })
    }
    /// Name as used in configuration (`best_effort`, `sync_quorum`, `sync_all`).
    pub fn as_str(self) -> &'static str {
        match self {
            DurabilityMode::BestEffort => "best_effort",
            DurabilityMode::SyncQuorum => "sync_quorum",
            DurabilityMode::SyncAll => "sync_all",
        }
    }
}

/// Raw on-disk superblock (little endian). The CRC32C covers the struct with
/// `crc` zeroed; the rest of the 4 KiB slot is zero.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
struct RawSuperblock {
    magic: [u8; 8],
    version: U32,
    block_size: U32,
    uuid: [u8; 16],
    seq: U64,
    size: U64,
    wal_offset: U64,
    wal_size: U64,
    extent_offset: U64,
    checkpoint_lsn: U64,
    wal_tail: U64,
    wal_gen: U64,
    epoch: U64,
    created_unix: U64,
    flags: U32,
    role: u8,
    durability: u8,
    reserved0: [u8; 2],
    reserved: [u8; 68],
    crc: U32,
}
const RAW_LEN: usize = 192;
const _: () = assert!(core::mem::size_of::<RawSuperblock>() == RAW_LEN);

/// The validated superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Volume identity.
    pub uuid: [u8; 16],
    /// Update sequence (higher wins between the two slots).
    pub seq: u64,
    /// Logical size in bytes (a multiple of `block_size`).
    pub size: u64,
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// Byte offset of the WAL ring.
    pub wal_offset: u64,
    /// Bytes in the WAL ring.
    pub wal_size: u64,
    /// Byte offset of the extent region.
    pub extent_offset: u64,
    /// Every record with LSN up to this one is in the extent region.
    pub checkpoint_lsn: u64,
    /// Logical WAL offset where replay starts (the record with
    /// `checkpoint_lsn + 1`).
    pub wal_tail: u64,
    /// WAL generation: only records of this generation are replayed. Bumped
    /// at every open, so records left from before a crash can never be taken
    /// for new ones.
    pub wal_gen: u64,
    /// Replication epoch.
    pub epoch: u64,
    /// Replication role.
    pub role: Role,
    /// Replication durability mode.
    pub durability: DurabilityMode,
    /// Feature flags (none defined yet; unknown bits are refused).
    pub flags: u32,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

impl Superblock {
    /// Bytes the file must have for this geometry.
    pub fn required_len(&self) -> u64 {
        self.extent_offset + self.size
    }

    /// Capacity in logical blocks.
    pub fn blocks(&self) -> u64 {
        self.size / u64::from(self.block_size)
    }

    /// Encode into one 4 KiB slot.
    pub fn encode(&self) -> Vec<u8> {
        let mut raw = RawSuperblock {
            magic: MAGIC,
            version: U32::new(FORMAT_VERSION),
            block_size: U32::new(self.block_size),
            uuid: self.uuid,
            seq: U64::new(self.seq),
            size: U64::new(self.size),
            wal_offset: U64::new(self.wal_offset),
            wal_size: U64::new(self.wal_size),
            extent_offset: U64::new(self.extent_offset),
            checkpoint_lsn: U64::new(self.checkpoint_lsn),
            wal_tail: U64::new(self.wal_tail),
            wal_gen: U64::new(self.wal_gen),
            epoch: U64::new(self.epoch),
            created_unix: U64::new(self.created_unix),
            flags: U32::new(self.flags),
            role: self.role.to_u8(),
            durability: self.durability.to_u8(),
            reserved0: [0; 2],
            reserved: [0; 68],
            crc: U32::new(0),
        };
        raw.crc = U32::new(crc32c::crc32c(raw.as_bytes()));
        let mut slot = vec![0u8; SLOT_BYTES];
        slot[..RAW_LEN].copy_from_slice(raw.as_bytes());
        slot
    }

    /// Decode and validate one slot.
    pub fn decode(slot: &[u8]) -> Result<Superblock> {
        let Some(bytes) = slot.get(..RAW_LEN) else {
            return Err(Error::Corrupt("superblock slot too short".into()));
        };
        let raw = RawSuperblock::read_from_bytes(bytes)
            .map_err(|_| Error::Corrupt("superblock slot too short".into()))?;
        if raw.magic != MAGIC {
            return Err(Error::NotAVolume);
        }
        let mut check = raw;
        check.crc = U32::new(0);
        if crc32c::crc32c(check.as_bytes()) != raw.crc.get() {
            return Err(Error::Corrupt("superblock checksum mismatch".into()));
        }
        if raw.version.get() != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                found: raw.version.get(),
                supported: FORMAT_VERSION,
            });
        }
        let role = Role::from_u8(raw.role)
            .ok_or_else(|| Error::Corrupt(format!("unknown role {}", raw.role)))?;
        let durability = DurabilityMode::from_u8(raw.durability)
            .ok_or_else(|| Error::Corrupt(format!("unknown durability mode {}", raw.durability)))?;
        let sb = Superblock {
            uuid: raw.uuid,
            seq: raw.seq.get(),
            size: raw.size.get(),
            block_size: raw.block_size.get(),
            wal_offset: raw.wal_offset.get(),
            wal_size: raw.wal_size.get(),
            extent_offset: raw.extent_offset.get(),
            checkpoint_lsn: raw.checkpoint_lsn.get(),
            wal_tail: raw.wal_tail.get(),
            wal_gen: raw.wal_gen.get(),
            epoch: raw.epoch.get(),
            role,
            durability,
            flags: raw.flags.get(),
            created_unix: raw.created_unix.get(),
        };
        sb.validate()?;
        Ok(sb)
    }

    /// Geometry checks shared by create and open.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Corrupt(m.to_string()));
        if self.block_size != 512 && self.block_size != 4096 {
            return bad("block size is not 512 or 4096");
        }
        if self.size == 0 || self.size % u64::from(self.block_size) != 0 {
            return bad("size is not a positive multiple of the block size");
        }
        if self.wal_offset != WAL_OFFSET {
            return bad("WAL offset is not where this format puts it");
        }
        if self.wal_size < crate::wal::MIN_WAL_SIZE || self.wal_size % 4096 != 0 {
            return bad("WAL size is too small or not a multiple of 4 KiB");
        }
        if self.extent_offset < self.wal_offset.saturating_add(self.wal_size)
            || self.extent_offset % 4096 != 0
        {
            return bad("extent region overlaps the WAL");
        }
        if self.extent_offset.checked_add(self.size).is_none() {
            return bad("size overflows");
        }
        if self.flags != 0 {
            return bad("unknown feature flags");
        }
        if self.wal_tail % crate::wal::RECORD_ALIGN != 0 {
            return bad("WAL tail is not record aligned");
        }
        Ok(())
    }
}

/// Pick the newest valid copy of two slots. The error of a volume with no
/// valid slot is the more telling of the two slot errors.
pub fn choose(a: Result<Superblock>, b: Result<Superblock>) -> Result<(Superblock, usize)> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok(if b.seq > a.seq { (b, 1) } else { (a, 0) }),
        (Ok(a), Err(_)) => Ok((a, 0)),
        (Err(_), Ok(b)) => Ok((b, 1)),
        (Err(ea), Err(eb)) => Err(match (ea, eb) {
            (Error::NotAVolume, Error::NotAVolume) => Error::NotAVolume,
            (e @ Error::UnsupportedVersion { .. }, _)
            | (_, e @ Error::UnsupportedVersion { .. }) => e,
            (Error::NotAVolume, e) | (e, _) => e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            uuid: [7; 16],
            seq: 3,
            size: 1 << 20,
            block_size: 4096,
            wal_offset: WAL_OFFSET,
            wal_size: 1 << 20,
            extent_offset: 2 << 20,
            checkpoint_lsn: 9,
            wal_tail: 640,
            wal_gen: 2,
            epoch: 5,
            role: Role::Primary,
            durability: DurabilityMode::SyncAll,
            flags: 0,
            created_unix: 1,
        }
    }

    #[test]
    fn round_trip() {
        let sb = sample();
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
    }

    #[test]
    fn every_single_byte_corruption_is_detected() {
        let slot = sample().encode();
        for i in 0..RAW_LEN {
            let mut bad = slot.clone();
            bad[i] ^= 0x40;
            assert!(
                Superblock::decode(&bad).is_err(),
                "byte {i} flip undetected"
            );
        }
    }

    #[test]
    fn newest_valid_slot_wins() {
        let a = sample();
        let mut b = sample();
        b.seq = 4;
        b.checkpoint_lsn = 10;
        let (got, idx) = choose(Ok(a.clone()), Ok(b.clone())).unwrap();
        assert_eq!((got, idx), (b, 1));
        let (got, idx) = choose(Ok(a.clone()), Err(Error::Corrupt("x".into()))).unwrap();
        assert_eq!((got, idx), (a, 0));
        assert!(matches!(
            choose(Err(Error::NotAVolume), Err(Error::NotAVolume)),
            Err(Error::NotAVolume)
        ));
    }

    #[test]
    fn wrong_version_and_unknown_role_are_typed_errors() {
        let mut slot = sample().encode();
        slot[8] = 9; // version
        let mut raw = RawSuperblock::read_from_bytes(&slot[..RAW_LEN]).unwrap();
        raw.crc = U32::new(0);
        raw.crc = U32::new(crc32c::crc32c(raw.as_bytes()));
        slot[..RAW_LEN].copy_from_slice(raw.as_bytes());
        assert!(matches!(
            Superblock::decode(&slot),
            Err(Error::UnsupportedVersion { found: 9, .. })
        ));
    }
}
