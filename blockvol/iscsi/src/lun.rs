//! A logical unit: the SCSI block device (SBC-3/SPC-4) in front of one
//! engine volume, shared by every session of its target.
//!
//! [`Lun::plan`] turns a CDB into an [`Action`]: an emulated answer computed
//! here (INQUIRY, MODE SENSE, READ CAPACITY, reservations, ...) or engine
//! work the session runs on its own handle (reads, writes, flushes, unmaps).
//! Commands that carry a parameter list (UNMAP, MODE SELECT, PERSISTENT
//! RESERVE OUT, ...) come back once their data has arrived through
//! [`Lun::with_data`]. The state shared between sessions (reservations, unit
//! attentions) sits behind one mutex that the read/write fast path only
//! touches when a reservation or unit attention exists.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use keel_blockvol::Volume;
use keel_pdu::scsi::sense::{asc, key, Sense};
use keel_pdu::scsi::{status, Cdb};

/// INVALID FIELD IN COMMAND INFORMATION UNIT (iSCSI EDTL mismatch).
pub const ASC_INVALID_FIELD_IN_IU: (u8, u8) = (0x0e, 0x03);
/// INVALID RELEASE OF PERSISTENT RESERVATION.
const ASC_INVALID_RELEASE: (u8, u8) = (0x26, 0x04);
/// MEDIUM NOT PRESENT... not used; LOGICAL UNIT NOT SUPPORTED is in `asc`.
/// MISCOMPARE DURING VERIFY OPERATION.
pub const ASC_MISCOMPARE: (u8, u8) = (0x1d, 0x00);
/// SAVING PARAMETERS NOT SUPPORTED.
const ASC_SAVING_NOT_SUPPORTED: (u8, u8) = (0x39, 0x00);
/// PARAMETER LIST LENGTH ERROR.
const ASC_PARAM_LIST_LENGTH: (u8, u8) = (0x1a, 0x00);
/// INVALID FIELD IN PARAMETER LIST.
const ASC_INVALID_PARAM: (u8, u8) = (0x26, 0x00);
/// INVALID COMMAND OPERATION CODE.
const ASC_INVALID_OPCODE: (u8, u8) = (0x20, 0x00);

/// Largest transfer of one READ/WRITE, in bytes (Block Limits VPD).
pub const MAX_TRANSFER_BYTES: u32 = 256 << 20;
/// Largest UNMAP / WRITE SAME range in blocks per command.
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
/// Descriptors per UNMAP command at most.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Largest WRITE ATOMIC in bytes (one engine write, one WAL record: all or
/// nothing across a crash).
pub const MAX_ATOMIC_BYTES: u32 = 8 << 20;
/// Largest COMPARE AND WRITE in blocks.
pub const MAX_CAW_BLOCKS: u32 = 255;

/// An I_T nexus: an initiator port (name + ISID) talking to this target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// InitiatorName.
    pub initiator: String,
    /// The session's ISID.
    pub isid: [u8; 6],
}

impl Nexus {
    /// The iSCSI initiator port name `<name>,i,0x<isid>` (SPC-4 TransportID).
    pub fn port_name(&self) -> String {
        let mut s = format!("{},i,0x", self.initiator);
        for b in self.isid {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// What the session must do for a command.
#[derive(Debug)]
pub enum Action {
    /// Answer at once: data for the initiator (already cut to the
    /// allocation length) and GOOD status.
    Data(Vec<u8>),
    /// Answer with a SCSI status and optional sense data.
    Status(u8, Option<Sense>),
    /// Read `blocks` at `lba` (blocks may be 0: GOOD with no data).
    Read {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
    },
    /// Verify that the range is readable (VERIFY without BYTCHK).
    CheckRead {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
    },
    /// Make written data durable (SYNCHRONIZE CACHE).
    Flush,
    /// The command carries `len` bytes of data-out; call
    /// [`Lun::with_data`] with them.
    NeedData {
        /// Bytes the CDB asks for.
        len: u32,
    },
    /// Engine work that needs no data-out (WRITE SAME with NDOB).
    Immediate(DataAction),
    /// Write the data-out (`blocks` × block size bytes) at `lba`.
    Write {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// Force unit access.
        fua: bool,
    },
}

/// Work on the volume after the data-out has arrived.
#[derive(Debug)]
pub enum DataAction {
    /// Answer with this status (GOOD: no sense).
    Status(u8, Option<Sense>),
    /// Deallocate these ranges (UNMAP, WRITE SAME with UNMAP).
    Trim(Vec<(u64, u32)>),
    /// Write zeros over the range (WRITE SAME of a zero block).
    Zero {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Write `pattern` (one block) to every block of the range.
    Same {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// One block.
        pattern: Vec<u8>,
    },
    /// Read the range, compare with `expect`; on a match write `data`.
    CompareAndWrite {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// Force unit access.
        fua: bool,
        /// Expected contents.
        expect: Vec<u8>,
        /// New contents.
        data: Vec<u8>,
    },
    /// Read the range, OR `data` into it, write it back (ORWRITE).
    Or {
        /// First block.
        lba: u64,
        /// Force unit access.
        fua: bool,
        /// Data to OR in.
        data: Vec<u8>,
    },
    /// Read the range and compare it with `expect` (VERIFY BYTCHK=1;
    /// BYTCHK=3: `expect` is one block repeated).
    Compare {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// Data to compare with.
        expect: Vec<u8>,
        /// `expect` is one block to compare with every block.
        same: bool,
    },
}

/// Identity of a logical unit.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Unit serial number (VPD 0x80).
    pub serial: String,
    /// NAA IEEE Registered Extended designator (16 bytes, VPD 0x83).
    pub naa: [u8; 16],
    /// The target's IQN (SCSI name string designator).
    pub target_iqn: String,
    /// Vendor (8 chars).
    pub vendor: &'static str,
    /// Product (16 chars).
    pub product: &'static str,
}

/// A persistent-reservation registration.
#[derive(Debug, Clone)]
struct Registration {
    nexus: Nexus,
    key: u64,
}

#[derive(Debug, Clone)]
struct PrReservation {
    holder: Nexus,
    kind: u8,
}

#[derive(Debug, Default)]
struct Shared {
    /// SPC-2 RESERVE(6/10) holder.
    spc2: Option<Nexus>,
    generation: u32,
    regs: Vec<Registration>,
    res: Option<PrReservation>,
    /// Nexuses logged in to this unit.
    nexuses: Vec<Nexus>,
    /// Pending unit attentions per nexus, oldest first.
    ua: HashMap<Nexus, Vec<(u8, u8)>>,
}

/// PR type codes.
mod pr_type {
    pub const WE: u8 = 1;
    pub const EA: u8 = 3;
    pub const WERO: u8 = 5;
    pub const EARO: u8 = 6;
    pub const WEAR: u8 = 7;
    pub const EAAR: u8 = 8;
}

/// A logical unit backed by an engine volume.
#[derive(Debug)]
pub struct Lun {
    volume: Arc<Volume>,
    id: Identity,
    shared: Mutex<Shared>,
    /// Fast path: no reservation and no unit attention anywhere.
    quiet: AtomicBool,
}

fn put16(v: &mut [u8], at: usize, x: u16) {
    v[at..at + 2].copy_from_slice(&x.to_be_bytes());
}
fn put32(v: &mut [u8], at: usize, x: u32) {
    v[at..at + 4].copy_from_slice(&x.to_be_bytes());
}
fn put64(v: &mut [u8], at: usize, x: u64) {
    v[at..at + 8].copy_from_slice(&x.to_be_bytes());
}
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}
fn len16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn invalid_cdb(byte: u16) -> Sense {
    Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB).with_field(true, byte, None)
}
fn invalid_param(byte: u16) -> Sense {
    Sense::new(key::ILLEGAL_REQUEST, ASC_INVALID_PARAM).with_field(false, byte, None)
}
fn out_of_range(lba: u64) -> Sense {
    Sense::new(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE).with_info(lba)
}
fn check(s: Sense) -> Action {
    Action::Status(status::CHECK_CONDITION, Some(s))
}
fn dcheck(s: Sense) -> DataAction {
    DataAction::Status(status::CHECK_CONDITION, Some(s))
}
fn cut(mut v: Vec<u8>, alloc: usize) -> Action {
    v.truncate(alloc);
    Action::Data(v)
}
fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a command reads or writes the medium (for reservation checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Allowed under any reservation (INQUIRY, REPORT LUNS, ...).
    Free,
    Read,
    Write,
}

impl Lun {
    /// A logical unit over `volume`.
    pub fn new(volume: Arc<Volume>, target_iqn: &str) -> Lun {
        let uuid = volume.info().uuid;
        let mut serial = String::with_capacity(32);
        for b in uuid {
            serial.push_str(&format!("{b:02x}"));
        }
        // NAA 6 (IEEE Registered Extended), company id 0 (locally
        // assigned), the rest from the volume UUID: stable across restarts.
        let mut naa = [0u8; 16];
        naa[0] = 0x60;
        naa[3] = uuid[0] >> 4;
        naa[4..16].copy_from_slice(&uuid[4..16]);
        Lun {
            volume,
            id: Identity {
                serial,
                naa,
                target_iqn: target_iqn.to_owned(),
                vendor: "KEEL    ",
                product: "VOLUME          ",
            },
            shared: Mutex::new(Shared::default()),
            quiet: AtomicBool::new(true),
        }
    }

    /// The volume.
    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// Give up the logical unit, keeping its volume.
    pub fn into_volume(self) -> Arc<Volume> {
        self.volume
    }

    /// Identity.
    pub fn identity(&self) -> &Identity {
        &self.id
    }

    fn recompute_quiet(&self, s: &Shared) {
        let quiet = s.spc2.is_none() && s.res.is_none() && s.ua.values().all(Vec::is_empty);
        self.quiet.store(quiet, Ordering::Release);
    }

    /// Queue a unit attention for every nexus in `who` (all known
    /// registrants and reservation holders otherwise).
    fn raise_ua(&self, s: &mut Shared, who: &[Nexus], code: (u8, u8)) {
        for n in who {
            let q = s.ua.entry(n.clone()).or_default();
            if !q.contains(&code) && q.len() < 8 {
                q.push(code);
            }
        }
    }

    /// A nexus logged in.
    pub fn nexus_joined(&self, n: &Nexus) {
        let mut s = lock(&self.shared);
        if !s.nexuses.contains(n) {
            s.nexuses.push(n.clone());
        }
    }

    /// The nexus left (logout, connection loss): SPC-2 reservations it held
    /// are released; persistent ones stay.
    pub fn nexus_lost(&self, n: &Nexus) {
        let mut s = lock(&self.shared);
        s.nexuses.retain(|x| x != n);
        if s.spc2.as_ref() == Some(n) {
            s.spc2 = None;
        }
        s.ua.remove(n);
        self.recompute_quiet(&s);
    }

    /// LOGICAL UNIT RESET (or a target reset): SPC-2 reservations are
    /// released and every nexus, the one that asked included, gets a
    /// unit attention (SAM-5 §6.3.3; persistent reservations stay).
    pub fn reset(&self, _from: &Nexus) {
        let mut s = lock(&self.shared);
        s.spc2 = None;
        let all: Vec<Nexus> = s.nexuses.clone();
        self.raise_ua(&mut s, &all, (0x29, 0x03));
        self.recompute_quiet(&s);
    }

    /// Turn a CDB into work. `edtl` is the initiator's expected data
    /// transfer length (for data-in commands the answer is cut to it by the
    /// session; this only uses the CDB's allocation length).
    pub fn plan(&self, cdb: &Cdb, raw: &[u8], nexus: &Nexus) -> Action {
        let access = match cdb {
            Cdb::Read { .. } | Cdb::Verify { .. } | Cdb::GetLbaStatus { .. } => Access::Read,
            Cdb::Write { .. }
            | Cdb::WriteSame { .. }
            | Cdb::Unmap { .. }
            | Cdb::CompareAndWrite { .. }
            | Cdb::OrWrite { .. }
            | Cdb::WriteAtomic { .. }
            | Cdb::SyncCache { .. }
            | Cdb::ModeSelect { .. } => Access::Write,
            Cdb::ModeSense { .. } | Cdb::ReadCapacity10 | Cdb::ReadCapacity16 { .. } => {
                Access::Read
            }
            Cdb::TestUnitReady => Access::Read,
            Cdb::Unknown { opcode, .. } if matches!(*opcode, 0x34 | 0x90 | 0x2e | 0xae | 0x8e) => {
                Access::Write
            }
            _ => Access::Free,
        };
        if !self.quiet.load(Ordering::Acquire) {
            let mut s = lock(&self.shared);
            // Unit attentions first (except for INQUIRY, REPORT LUNS and
            // REQUEST SENSE, SPC-4 §5.14).
            if !matches!(
                cdb,
                Cdb::Inquiry { .. } | Cdb::ReportLuns { .. } | Cdb::RequestSense { .. }
            ) {
                if let Some(q) = s.ua.get_mut(nexus) {
                    if !q.is_empty() {
                        let code = q.remove(0);
                        self.recompute_quiet(&s);
                        return check(Sense::new(key::UNIT_ATTENTION, code));
                    }
                }
            }
            if let Some(c) = Self::conflict(&s, cdb, access, nexus) {
                return c;
            }
        }
        self.plan_inner(cdb, raw, nexus)
    }

    fn conflict(s: &Shared, cdb: &Cdb, access: Access, nexus: &Nexus) -> Option<Action> {
        let conflict = Some(Action::Status(status::RESERVATION_CONFLICT, None));
        if let Some(holder) = &s.spc2 {
            if holder != nexus {
                // SPC-2 reservation: everything but a few commands conflicts.
                let allowed = matches!(
                    cdb,
                    Cdb::Inquiry { .. }
                        | Cdb::ReportLuns { .. }
                        | Cdb::RequestSense { .. }
                        | Cdb::Release
                        | Cdb::PersistentReserveIn { .. }
                        | Cdb::ReportSupportedOpcodes { .. }
                        | Cdb::ReportSupportedTmfs { .. }
                        | Cdb::ReportTargetPortGroups { .. }
                ) || matches!(cdb, Cdb::Unknown { opcode: 0x1e, .. });
                return if allowed { None } else { conflict };
            }
        }
        if matches!(cdb, Cdb::Reserve | Cdb::Release) && (s.res.is_some() || !s.regs.is_empty()) {
            // SPC-2 reservation commands while persistent reservations are
            // in use.
            if s.res.is_some() {
                return conflict;
            }
        }
        let res = s.res.as_ref()?;
        if access == Access::Free {
            return None;
        }
        let registered = s.regs.iter().any(|r| &r.nexus == nexus);
        let holder = match res.kind {
            pr_type::WEAR | pr_type::EAAR => registered,
            _ => &res.holder == nexus,
        };
        if holder {
            return None;
        }
        let blocked = match res.kind {
            pr_type::WE => access == Access::Write,
            pr_type::EA => true,
            pr_type::WERO | pr_type::WEAR => access == Access::Write && !registered,
            pr_type::EARO | pr_type::EAAR => !registered,
            _ => false,
        };
        if blocked {
            // TEST UNIT READY, READ CAPACITY and MODE SENSE are allowed
            // for exclusive-access types only when not reading the medium.
            if matches!(
                cdb,
                Cdb::TestUnitReady | Cdb::ReadCapacity10 | Cdb::ReadCapacity16 { .. }
            ) {
                return None;
            }
            return conflict;
        }
        None
    }

    fn blocks(&self) -> u64 {
        self.volume.info().blocks
    }

    fn block_size(&self) -> u32 {
        self.volume.info().block_size
    }

    fn range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        let cap = self.blocks();
        if lba > cap || lba.checked_add(blocks).is_none_or(|e| e > cap) {
            return Err(out_of_range(lba));
        }
        Ok(())
    }

    /// Largest WRITE ATOMIC in blocks: one engine write.
    pub fn max_atomic_blocks(&self) -> u32 {
        (MAX_ATOMIC_BYTES / self.block_size()).min(self.volume.info().max_write_blocks)
    }

    fn max_blocks(&self) -> u32 {
        MAX_TRANSFER_BYTES / self.block_size()
    }

    #[allow(clippy::too_many_lines)]
    fn plan_inner(&self, cdb: &Cdb, raw: &[u8], nexus: &Nexus) -> Action {
        let bs = self.block_size();
        match *cdb {
            Cdb::TestUnitReady => Action::Status(status::GOOD, None),
            Cdb::Inquiry {
                evpd,
                page,
                alloc_len,
            } => match self.inquiry(evpd, page) {
                Ok(v) => cut(v, usize::from(alloc_len)),
                Err(s) => check(s),
            },
            Cdb::RequestSense { desc, alloc_len } => {
                let s = Sense::new(key::NO_SENSE, asc::NO_ADDITIONAL);
                let v = if desc {
                    let (d, n) = s.descriptor();
                    d[..n].to_vec()
                } else {
                    s.fixed().to_vec()
                };
                cut(v, usize::from(alloc_len))
            }
            Cdb::ReadCapacity10 => {
                let mut v = vec![0u8; 8];
                let last = self.blocks().saturating_sub(1);
                put32(&mut v, 0, u32::try_from(last).unwrap_or(u32::MAX));
                put32(&mut v, 4, bs);
                Action::Data(v)
            }
            Cdb::ReadCapacity16 { alloc_len } => {
                let mut v = vec![0u8; 32];
                put64(&mut v, 0, self.blocks().saturating_sub(1));
                put32(&mut v, 8, bs);
                // LBPME (thin provisioned) and LBPRZ (unmapped reads zero).
                v[14] = 0xc0;
                cut(v, usize::try_from(alloc_len).unwrap_or(usize::MAX))
            }
            Cdb::GetLbaStatus { lba, alloc_len } => {
                if lba >= self.blocks() {
                    return check(out_of_range(lba));
                }
                if alloc_len < 24 {
                    // Header only is legal but useless; answer what fits.
                }
                let mut v = vec![0u8; 24];
                put32(&mut v, 0, 20);
                put64(&mut v, 8, lba);
                let count = self.blocks() - lba;
                put32(&mut v, 16, u32::try_from(count).unwrap_or(u32::MAX));
                v[20] = 0; // mapped (or unknown)
                cut(v, usize::try_from(alloc_len).unwrap_or(usize::MAX))
            }
            Cdb::Read {
                lba, blocks, len, ..
            } => {
                if len != 6 && raw[1] & 0xe0 != 0 {
                    // RDPROTECT: no protection information here.
                    return check(invalid_cdb(1));
                }
                if blocks > self.max_blocks() {
                    return check(invalid_cdb(if raw[0] == 0x08 { 4 } else { 7 }));
                }
                match self.range(lba, u64::from(blocks)) {
                    Ok(()) => Action::Read { lba, blocks },
                    Err(s) => check(s),
                }
            }
            Cdb::Write {
                lba,
                blocks,
                fua,
                len,
            } => {
                if len != 6 && raw[1] & 0xe0 != 0 {
                    // WRPROTECT: no protection information here.
                    return check(invalid_cdb(1));
                }
                if blocks > self.max_blocks() {
                    return check(invalid_cdb(if raw[0] == 0x0a { 4 } else { 7 }));
                }
                if let Err(s) = self.range(lba, u64::from(blocks)) {
                    return check(s);
                }
                if blocks == 0 {
                    return Action::Status(status::GOOD, None);
                }
                Action::Write { lba, blocks, fua }
            }
            Cdb::Verify {
                lba,
                blocks,
                bytchk,
            } => {
                if raw[1] & 0xe0 != 0 {
                    // VRPROTECT: no protection information here.
                    return check(invalid_cdb(1));
                }
                if let Err(s) = self.range(lba, u64::from(blocks)) {
                    return check(s);
                }
                if blocks == 0 {
                    return Action::Status(status::GOOD, None);
                }
                match bytchk {
                    0 => Action::CheckRead { lba, blocks },
                    1 => Action::NeedData { len: blocks * bs },
                    3 => Action::NeedData { len: bs },
                    _ => check(invalid_cdb(1)),
                }
            }
            Cdb::SyncCache { lba, blocks, .. } => {
                if let Err(s) = self.range(lba, u64::from(blocks)) {
                    return check(s);
                }
                Action::Flush
            }
            Cdb::Unmap { anchor, param_len } => {
                if anchor {
                    return check(invalid_cdb(1));
                }
                if param_len == 0 {
                    return Action::Status(status::GOOD, None);
                }
                Action::NeedData {
                    len: u32::from(param_len),
                }
            }
            Cdb::WriteSame {
                lba,
                blocks,
                unmap,
                anchor,
                ndob,
            } => {
                if anchor {
                    return check(invalid_cdb(1));
                }
                if raw[1] & 0xe0 != 0 {
                    return check(invalid_cdb(1));
                }
                let blocks64 = if blocks == 0 {
                    // Zero means to the end of the medium (SBC-3), bounded
                    // by our WRITE SAME limit.
                    self.blocks().saturating_sub(lba)
                } else {
                    u64::from(blocks)
                };
                if let Err(s) = self.range(lba, blocks64) {
                    return check(s);
                }
                if blocks64 > u64::from(MAX_UNMAP_BLOCKS) {
                    return check(invalid_cdb(if raw[0] == 0x41 { 7 } else { 10 }));
                }
                if ndob {
                    // No data-out buffer: zeros (deallocated with UNMAP).
                    let blocks = u32::try_from(blocks64).unwrap_or(u32::MAX);
                    if blocks == 0 {
                        return Action::Status(status::GOOD, None);
                    }
                    return Action::Immediate(if unmap {
                        DataAction::Trim(vec![(lba, blocks)])
                    } else {
                        DataAction::Zero {
                            lba,
                            blocks,
                            fua: false,
                        }
                    });
                }
                Action::NeedData { len: bs }
            }
            Cdb::OrWrite { lba, blocks, .. } => {
                if raw[1] & 0xe0 != 0 {
                    return check(invalid_cdb(1));
                }
                if blocks > self.max_blocks() {
                    return check(invalid_cdb(10));
                }
                if let Err(s) = self.range(lba, u64::from(blocks)) {
                    return check(s);
                }
                if blocks == 0 {
                    return Action::Status(status::GOOD, None);
                }
                Action::NeedData { len: blocks * bs }
            }
            Cdb::WriteAtomic { lba, blocks, fua } => {
                if raw[1] & 0xe0 != 0 {
                    return check(invalid_cdb(1));
                }
                if let Err(s) = self.range(lba, u64::from(blocks)) {
                    return check(s);
                }
                if blocks > self.max_atomic_blocks() {
                    return check(invalid_cdb(12));
                }
                if blocks == 0 {
                    return Action::Status(status::GOOD, None);
                }
                Action::Write { lba, blocks, fua }
            }
            Cdb::ReadDefectData {
                twelve,
                flags,
                alloc_len,
            } => {
                // No defects: an empty list in the requested format.
                let v = if twelve {
                    vec![0, flags & 0x1f, 0, 0, 0, 0, 0, 0]
                } else {
                    vec![0, flags & 0x1f, 0, 0]
                };
                cut(v, usize::try_from(alloc_len).unwrap_or(usize::MAX))
            }
            Cdb::CompareAndWrite { lba, blocks, .. } => {
                if raw[1] & 0xe0 != 0 {
                    return check(invalid_cdb(1));
                }
                if u32::from(blocks) > MAX_CAW_BLOCKS {
                    return check(invalid_cdb(13));
                }
                if let Err(s) = self.range(lba, u64::from(blocks)) {
                    return check(s);
                }
                if blocks == 0 {
                    // A CAW of nothing with data attached is malformed.
                    return check(invalid_cdb(13));
                }
                Action::NeedData {
                    len: 2 * u32::from(blocks) * bs,
                }
            }
            Cdb::ModeSense {
                dbd,
                llbaa,
                pc,
                page,
                subpage,
                alloc_len,
                ten,
            } => match self.mode_sense(dbd, llbaa, pc, page, subpage, ten) {
                Ok(v) => cut(v, usize::from(alloc_len)),
                Err(s) => check(s),
            },
            Cdb::ModeSelect {
                pf, sp, param_len, ..
            } => {
                if sp {
                    return check(invalid_cdb(1));
                }
                if !pf && param_len > 0 {
                    return check(invalid_cdb(1));
                }
                if param_len == 0 {
                    return Action::Status(status::GOOD, None);
                }
                Action::NeedData {
                    len: u32::from(param_len),
                }
            }
            Cdb::ReportLuns { select, alloc_len } => {
                if alloc_len < 16 {
                    return check(invalid_cdb(6));
                }
                if select > 2 && !matches!(select, 0x10..=0x12) {
                    return check(invalid_cdb(2));
                }
                let mut v = vec![0u8; 16];
                put32(&mut v, 0, 8);
                cut(v, usize::try_from(alloc_len).unwrap_or(usize::MAX))
            }
            Cdb::PersistentReserveIn { action, alloc_len } => match self.pr_in(action, nexus) {
                Ok(v) => cut(v, usize::from(alloc_len)),
                Err(s) => check(s),
            },
            Cdb::PersistentReserveOut {
                action, param_len, ..
            } => {
                if action > 7 {
                    return check(invalid_cdb(1));
                }
                if param_len != 24 && action != 7 {
                    return check(Sense::new(key::ILLEGAL_REQUEST, ASC_PARAM_LIST_LENGTH));
                }
                Action::NeedData { len: param_len }
            }
            Cdb::Reserve => {
                let mut s = lock(&self.shared);
                match &s.spc2 {
                    Some(h) if h != nexus => Action::Status(status::RESERVATION_CONFLICT, None),
                    _ => {
                        s.spc2 = Some(nexus.clone());
                        self.recompute_quiet(&s);
                        Action::Status(status::GOOD, None)
                    }
                }
            }
            Cdb::Release => {
                let mut s = lock(&self.shared);
                if s.spc2.as_ref() == Some(nexus) {
                    s.spc2 = None;
                    self.recompute_quiet(&s);
                }
                Action::Status(status::GOOD, None)
            }
            Cdb::StartStopUnit { .. } => Action::Status(status::GOOD, None),
            Cdb::ReportSupportedOpcodes {
                options,
                opcode,
                service_action,
                alloc_len,
            } => match supported_opcodes(raw[2] & 0x80 != 0, options, opcode, service_action) {
                Ok(v) => cut(v, usize::try_from(alloc_len).unwrap_or(usize::MAX)),
                Err(s) => check(s),
            },
            Cdb::ReportSupportedTmfs { alloc_len } => {
                let mut v = vec![0u8; 4];
                // ATS, ATSS, CACAS, CTSS, LURS, QTS, TRS (SPC-4 table 338).
                v[0] = 0x80 | 0x40 | 0x20 | 0x10 | 0x08 | 0x01;
                v[1] = 0x00;
                cut(v, usize::try_from(alloc_len).unwrap_or(usize::MAX))
            }
            Cdb::ReportTargetPortGroups { .. } => {
                check(Sense::new(key::ILLEGAL_REQUEST, ASC_INVALID_OPCODE))
            }
            Cdb::Unknown { opcode, .. } => match opcode {
                // PREVENT ALLOW MEDIUM REMOVAL: nothing to lock; allowed.
                0x1e => {
                    if raw.len() >= 6 && raw[4] & 0x03 > 1 {
                        return check(invalid_cdb(4));
                    }
                    Action::Status(status::GOOD, None)
                }
                // PRE-FETCH (10/16): the data stays where it is.
                0x34 | 0x90 => {
                    let (lba, blocks) = if opcode == 0x34 {
                        (u64::from(be32(raw, 2)), u64::from(be16(raw, 7)))
                    } else {
                        (be64(raw, 2), u64::from(be32(raw, 10)))
                    };
                    match self.range(lba, blocks) {
                        // CONDITION MET: the range fits in the cache.
                        Ok(()) => Action::Status(status::CONDITION_MET, None),
                        Err(s) => check(s),
                    }
                }
                _ => check(Sense::new(key::ILLEGAL_REQUEST, ASC_INVALID_OPCODE)),
            },
        }
    }

    /// Finish a command whose data-out has arrived: the length
    /// [`Action::NeedData`] asked for, or less when the initiator's
    /// expected transfer length was shorter (the session transfers what
    /// both allow). Parameter lists are parsed as far as they go; a block
    /// command whose data does not cover its blocks is refused (INVALID
    /// FIELD IN COMMAND INFORMATION UNIT, as Linux LIO answers a write
    /// underflow) rather than run on part of its data.
    pub fn with_data(&self, cdb: &Cdb, raw: &[u8], data: Vec<u8>, nexus: &Nexus) -> DataAction {
        let bs = self.block_size();
        let refuse = || dcheck(Sense::new(key::ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_IU));
        let len = data.len();
        let bytes = |blocks: u32| blocks as usize * bs as usize;
        match *cdb {
            Cdb::WriteSame { unmap: false, .. } if len != bytes(1) => refuse(),
            Cdb::CompareAndWrite { blocks, .. } if len != 2 * bytes(u32::from(blocks)) => refuse(),
            Cdb::OrWrite { blocks, .. } if len != bytes(blocks) => refuse(),
            Cdb::Verify { blocks, bytchk, .. }
                if len != bytes(if bytchk == 3 { 1 } else { blocks }) =>
            {
                refuse()
            }
            Cdb::Unmap { .. } => self.unmap(&data),
            Cdb::WriteSame {
                lba, blocks, unmap, ..
            } => {
                let blocks = if blocks == 0 {
                    u32::try_from(self.blocks().saturating_sub(lba)).unwrap_or(u32::MAX)
                } else {
                    blocks
                };
                let fua = false;
                let zero = data.iter().all(|&b| b == 0);
                if unmap {
                    // Deallocate (SBC-3 §5.45); with LBPRZ the range reads
                    // back as zeros, whatever the data-out block held.
                    DataAction::Trim(vec![(lba, blocks)])
                } else if zero {
                    DataAction::Zero { lba, blocks, fua }
                } else {
                    DataAction::Same {
                        lba,
                        blocks,
                        pattern: data,
                    }
                }
            }
            Cdb::CompareAndWrite { lba, blocks, fua } => {
                let n = usize::from(blocks) * bs as usize;
                let mut expect = data;
                let data = expect.split_off(n);
                DataAction::CompareAndWrite {
                    lba,
                    blocks: u32::from(blocks),
                    fua,
                    expect,
                    data,
                }
            }
            Cdb::OrWrite { lba, fua, .. } => DataAction::Or { lba, fua, data },
            Cdb::Verify {
                lba,
                blocks,
                bytchk,
            } => DataAction::Compare {
                lba,
                blocks,
                expect: data,
                same: bytchk == 3,
            },
            Cdb::ModeSelect { ten, .. } => self.mode_select(&data, ten),
            Cdb::PersistentReserveOut {
                action,
                scope,
                kind,
                ..
            } => self.pr_out(action, scope, kind, &data, nexus, raw),
            _ => dcheck(Sense::new(key::ILLEGAL_REQUEST, ASC_INVALID_OPCODE)),
        }
    }

    fn unmap(&self, d: &[u8]) -> DataAction {
        if d.len() < 8 {
            return if d.is_empty() {
                DataAction::Status(status::GOOD, None)
            } else {
                dcheck(Sense::new(key::ILLEGAL_REQUEST, ASC_PARAM_LIST_LENGTH))
            };
        }
        let data_len = usize::from(be16(d, 0));
        let desc_len = usize::from(be16(d, 2));
        if data_len + 2 > d.len() || desc_len + 8 > d.len() || desc_len % 16 != 0 {
            return dcheck(Sense::new(key::ILLEGAL_REQUEST, ASC_PARAM_LIST_LENGTH));
        }
        if desc_len / 16 > MAX_UNMAP_DESCRIPTORS as usize {
            return dcheck(invalid_param(2));
        }
        let mut ranges = Vec::with_capacity(desc_len / 16);
        for i in 0..desc_len / 16 {
            let o = 8 + i * 16;
            let lba = be64(d, o);
            let n = be32(d, o + 8);
            if n > MAX_UNMAP_BLOCKS {
                return dcheck(invalid_param(len16(o + 8)));
            }
            if let Err(s) = self.range(lba, u64::from(n)) {
                return dcheck(s);
            }
            if n > 0 {
                ranges.push((lba, n));
            }
        }
        if ranges.is_empty() {
            return DataAction::Status(status::GOOD, None);
        }
        DataAction::Trim(ranges)
    }

    fn inquiry(&self, evpd: bool, page: u8) -> Result<Vec<u8>, Sense> {
        if !evpd {
            if page != 0 {
                return Err(invalid_cdb(2));
            }
            let mut v = vec![0u8; 96];
            v[0] = 0x00; // direct access block device
            v[2] = 0x06; // SPC-4
            v[3] = 0x02 | 0x10; // response data format 2, HiSup
            v[4] = 91;
            v[5] = 0x08; // 3PC=0, PROTECT=0, TPGS=0; bit 3: 3PC.. keep 0
            v[5] = 0;
            v[7] = 0x02; // CmdQue
            v[8..16].copy_from_slice(self.id.vendor.as_bytes());
            v[16..32].copy_from_slice(self.id.product.as_bytes());
            v[32..36].copy_from_slice(b"0001");
            // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
            for (i, d) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
                put16(&mut v, 58 + 2 * i, *d);
            }
            return Ok(v);
        }
        let bs = self.block_size();
        let mut v = vec![0u8; 4];
        v[1] = page;
        match page {
            0x00 => v.extend_from_slice(&[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]),
            0x80 => v.extend_from_slice(self.id.serial.as_bytes()),
            0x83 => {
                // NAA, binary, LU association.
                v.extend_from_slice(&[0x01, 0x03, 0x00, 16]);
                v.extend_from_slice(&self.id.naa);
                // T10 vendor id, ASCII.
                let t10 = format!("{}{}", self.id.vendor, self.id.serial);
                v.extend_from_slice(&[0x52, 0x01, 0x00, u8::try_from(t10.len()).unwrap_or(0)]);
                // Protocol iSCSI + PIV is for port designators; the T10 one
                // is LU-associated: code set ASCII (2), type 1.
                let at = v.len() - 4;
                v[at] = 0x02;
                v.extend_from_slice(t10.as_bytes());
                // SCSI name string of the target device (UTF-8, iSCSI,
                // PIV, association target device = 2).
                let mut name = self.id.target_iqn.clone().into_bytes();
                name.push(0);
                while name.len() % 4 != 0 {
                    name.push(0);
                }
                v.extend_from_slice(&[0x53, 0xa8, 0x00, u8::try_from(name.len()).unwrap_or(0)]);
                v.extend_from_slice(&name);
                // Relative target port 1 (iSCSI, PIV, target port).
                v.extend_from_slice(&[0x51, 0x94, 0x00, 4, 0, 0, 0, 1]);
            }
            0xb0 => {
                let mut p = [0u8; 60];
                p[1] = u8::try_from(MAX_CAW_BLOCKS).unwrap_or(u8::MAX);
                put16(&mut p, 2, len16((4096 / bs as usize).max(1))); // optimal granularity
                put32(&mut p, 4, MAX_TRANSFER_BYTES / bs); // max transfer
                put32(&mut p, 8, (1 << 20) / bs); // optimal transfer
                put32(&mut p, 16, MAX_UNMAP_BLOCKS); // max unmap LBA count
                put32(&mut p, 20, MAX_UNMAP_DESCRIPTORS); // max unmap descriptors
                put32(&mut p, 24, (4096 / bs).max(1)); // optimal unmap granularity
                put64(&mut p, 32, u64::from(MAX_UNMAP_BLOCKS)); // max write same
                put32(&mut p, 40, self.max_atomic_blocks()); // max atomic transfer
                                                             // Atomic alignment and granularity: none (0).
                v.extend_from_slice(&p);
            }
            0xb1 => {
                let mut p = [0u8; 60];
                put16(&mut p, 0, 1); // non-rotating medium
                v.extend_from_slice(&p);
            }
            0xb2 => {
                // Threshold exponent 0; LBPU, LBPWS, LBPWS10; LBPRZ;
                // provisioning type thin (2).
                v.extend_from_slice(&[0, 0x80 | 0x40 | 0x20, 0x04 | 0x02, 0]);
                v[5] |= 0x04; // LBPRZ lives in byte 5 bit 2 (SBC-3 r35)
                v[6] = 0x02;
            }
            _ => return Err(invalid_cdb(2)),
        }
        let n = len16(v.len() - 4);
        put16(&mut v, 2, n);
        Ok(v)
    }

    fn caching_page(&self, pc: u8) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x08;
        p[1] = 18;
        match pc {
            1 => p[2] = 0x04, // WCE changeable
            2 => p[2] = 0x04, // default: write cache on
            _ => {
                if self.volume.write_cache() {
                    p[2] = 0x04;
                }
            }
        }
        p
    }

    fn control_page(pc: u8) -> Vec<u8> {
        let mut p = vec![0u8; 12];
        p[0] = 0x0a;
        p[1] = 10;
        if pc != 1 {
            // GLTSD=0, D_SENSE=0; QErr=0; TAS=0; busy timeout unlimited.
            put16(&mut p, 8, 0xffff);
        }
        p
    }

    fn iec_page(pc: u8) -> Vec<u8> {
        let mut p = vec![0u8; 12];
        p[0] = 0x1c;
        p[1] = 10;
        let _ = pc;
        p
    }

    fn mode_sense(
        &self,
        dbd: bool,
        llbaa: bool,
        pc: u8,
        page: u8,
        subpage: u8,
        ten: bool,
    ) -> Result<Vec<u8>, Sense> {
        if pc == 3 {
            return Err(Sense::new(key::ILLEGAL_REQUEST, ASC_SAVING_NOT_SUPPORTED));
        }
        let pages: Vec<u8> = match (page, subpage) {
            (0x08, 0) => self.caching_page(pc),
            (0x0a, 0) => Self::control_page(pc),
            (0x1c, 0) => Self::iec_page(pc),
            (0x3f, 0 | 0xff) => {
                let mut v = self.caching_page(pc);
                v.extend(Self::control_page(pc));
                v.extend(Self::iec_page(pc));
                v
            }
            _ => return Err(invalid_cdb(2)),
        };
        let blocks = self.blocks();
        let bs = self.block_size();
        let bd: Vec<u8> = if dbd {
            Vec::new()
        } else if ten && llbaa {
            let mut b = vec![0u8; 16];
            put64(&mut b, 0, blocks);
            put32(&mut b, 12, bs);
            b
        } else {
            let mut b = vec![0u8; 8];
            put32(&mut b, 0, u32::try_from(blocks).unwrap_or(u32::MAX));
            put32(&mut b, 4, bs & 0x00ff_ffff);
            b
        };
        // Device-specific parameter: DPOFUA.
        let dsp = 0x10;
        let mut v;
        if ten {
            v = vec![0u8; 8];
            v[3] = dsp;
            if llbaa && !dbd {
                v[4] = 1;
            }
            put16(&mut v, 6, len16(bd.len()));
            v.extend(bd);
            v.extend(pages);
            let n = len16(v.len() - 2);
            put16(&mut v, 0, n);
        } else {
            v = vec![0u8; 4];
            v[2] = dsp;
            v[3] = u8::try_from(bd.len()).unwrap_or(0);
            v.extend(bd);
            v.extend(pages);
            v[0] = u8::try_from(v.len() - 1).unwrap_or(u8::MAX);
        }
        Ok(v)
    }

    fn mode_select(&self, d: &[u8], ten: bool) -> DataAction {
        let (hdr, bdl) = if ten {
            if d.len() < 8 {
                return dcheck(Sense::new(key::ILLEGAL_REQUEST, ASC_PARAM_LIST_LENGTH));
            }
            (8, usize::from(be16(d, 6)))
        } else {
            if d.len() < 4 {
                return dcheck(Sense::new(key::ILLEGAL_REQUEST, ASC_PARAM_LIST_LENGTH));
            }
            (4, usize::from(d[3]))
        };
        let mut at = hdr + bdl;
        if at > d.len() {
            return dcheck(Sense::new(key::ILLEGAL_REQUEST, ASC_PARAM_LIST_LENGTH));
        }
        let mut wce = None;
        while at + 2 <= d.len() {
            let code = d[at] & 0x3f;
            let spf = d[at] & 0x40 != 0;
            if spf {
                return dcheck(invalid_param(len16(at)));
            }
            let plen = usize::from(d[at + 1]);
            if at + 2 + plen > d.len() {
                return dcheck(Sense::new(key::ILLEGAL_REQUEST, ASC_PARAM_LIST_LENGTH));
            }
            let body = &d[at..at + 2 + plen];
            match code {
                0x08 => {
                    if plen != 18 {
                        return dcheck(invalid_param(len16(at + 1)));
                    }
                    // Only WCE may change.
                    let cur = self.caching_page(0);
                    for (i, (&a, &b)) in body.iter().zip(cur.iter()).enumerate().skip(2) {
                        let mask = if i == 2 { !0x04u8 } else { 0xff };
                        if (a & mask) != (b & mask) {
                            return dcheck(invalid_param(len16(at + i)));
                        }
                    }
                    wce = Some(body[2] & 0x04 != 0);
                }
                0x0a | 0x1c => {
                    let cur = if code == 0x0a {
                        Self::control_page(0)
                    } else {
                        Self::iec_page(0)
                    };
                    if body.len() != cur.len() {
                        return dcheck(invalid_param(len16(at + 1)));
                    }
                    if let Some(i) = (2..cur.len()).find(|&i| body[i] != cur[i]) {
                        return dcheck(invalid_param(len16(at + i)));
                    }
                }
                _ => return dcheck(invalid_param(len16(at))),
            }
            at += 2 + plen;
        }
        if let Some(on) = wce {
            self.volume.set_write_cache(on);
        }
        DataAction::Status(status::GOOD, None)
    }

    fn pr_in(&self, action: u8, _nexus: &Nexus) -> Result<Vec<u8>, Sense> {
        let s = lock(&self.shared);
        match action {
            0 => {
                let mut v = vec![0u8; 8];
                put32(&mut v, 0, s.generation);
                for r in &s.regs {
                    v.extend_from_slice(&r.key.to_be_bytes());
                }
                let n = len32(v.len() - 8);
                put32(&mut v, 4, n);
                Ok(v)
            }
            1 => {
                let mut v = vec![0u8; 8];
                put32(&mut v, 0, s.generation);
                if let Some(res) = &s.res {
                    let key = match res.kind {
                        pr_type::WEAR | pr_type::EAAR => 0,
                        _ => s
                            .regs
                            .iter()
                            .find(|r| r.nexus == res.holder)
                            .map_or(0, |r| r.key),
                    };
                    let mut d = [0u8; 16];
                    put64(&mut d, 0, key);
                    d[13] = res.kind & 0x0f;
                    v.extend_from_slice(&d);
                    put32(&mut v, 4, 16);
                }
                Ok(v)
            }
            2 => {
                // REPORT CAPABILITIES: CRH=0, SIP_C=0, ATP_C=0, PTPL_C=0;
                // TMV=1 with the supported type mask.
                let mut v = vec![0u8; 8];
                put16(&mut v, 0, 8);
                v[3] = 0x80; // TMV
                v[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
                v[5] = 0x01; // EX_AC_AR
                Ok(v)
            }
            3 => {
                let mut v = vec![0u8; 8];
                put32(&mut v, 0, s.generation);
                for r in &s.regs {
                    let tid = transport_id(&r.nexus);
                    let mut d = vec![0u8; 24];
                    put64(&mut d, 0, r.key);
                    let holds = s.res.as_ref().is_some_and(|res| {
                        matches!(res.kind, pr_type::WEAR | pr_type::EAAR) || res.holder == r.nexus
                    });
                    if holds {
                        d[12] = 0x01;
                        d[13] = s.res.as_ref().map_or(0, |res| res.kind & 0x0f);
                    }
                    put16(&mut d, 18, 1); // relative target port
                    put32(&mut d, 20, len32(tid.len()));
                    d.extend_from_slice(&tid);
                    v.extend_from_slice(&d);
                }
                let n = len32(v.len() - 8);
                put32(&mut v, 4, n);
                Ok(v)
            }
            _ => Err(invalid_cdb(1)),
        }
    }

    fn pr_out(
        &self,
        action: u8,
        scope: u8,
        kind: u8,
        d: &[u8],
        nexus: &Nexus,
        raw: &[u8],
    ) -> DataAction {
        let _ = raw;
        if d.len() < 24 {
            return dcheck(Sense::new(key::ILLEGAL_REQUEST, ASC_PARAM_LIST_LENGTH));
        }
        let rkey = be64(d, 0);
        let sakey = be64(d, 8);
        let flags = d[20];
        if flags & 0x0c != 0 {
            // SPEC_I_PT / ALL_TG_PT not supported.
            return dcheck(invalid_param(20));
        }
        let conflict = DataAction::Status(status::RESERVATION_CONFLICT, None);
        let good = DataAction::Status(status::GOOD, None);
        let mut s = lock(&self.shared);
        let mine = s.regs.iter().position(|r| &r.nexus == nexus);
        let my_key = mine.map(|i| s.regs[i].key);
        let valid_type = matches!(
            kind,
            pr_type::WE
                | pr_type::EA
                | pr_type::WERO
                | pr_type::EARO
                | pr_type::WEAR
                | pr_type::EAAR
        );
        let result = match action {
            // REGISTER / REGISTER AND IGNORE EXISTING KEY.
            0 | 6 => {
                if action == 0 && my_key.unwrap_or(0) != rkey {
                    return conflict;
                }
                match mine {
                    Some(i) if sakey == 0 => {
                        s.regs.remove(i);
                        // Losing the holder's registration releases its
                        // reservation (all-registrants types: when the last
                        // one goes).
                        let drop_res = match &s.res {
                            Some(res) if matches!(res.kind, pr_type::WEAR | pr_type::EAAR) => {
                                s.regs.is_empty()
                            }
                            Some(res) => &res.holder == nexus,
                            None => false,
                        };
                        if drop_res {
                            let kind = s.res.as_ref().map_or(0, |r| r.kind);
                            s.res = None;
                            if matches!(kind, pr_type::WERO | pr_type::EARO) {
                                let others: Vec<Nexus> =
                                    s.regs.iter().map(|r| r.nexus.clone()).collect();
                                self.raise_ua(&mut s, &others, asc::RESERVATIONS_RELEASED);
                            }
                        }
                    }
                    Some(i) => s.regs[i].key = sakey,
                    None if sakey == 0 => {}
                    None => s.regs.push(Registration {
                        nexus: nexus.clone(),
                        key: sakey,
                    }),
                }
                s.generation = s.generation.wrapping_add(1);
                good
            }
            // RESERVE.
            1 => {
                if my_key != Some(rkey) {
                    return conflict;
                }
                if scope != 0 || !valid_type {
                    return dcheck(invalid_cdb(2));
                }
                match &s.res {
                    Some(res) => {
                        let holds = res.holder == *nexus
                            || matches!(res.kind, pr_type::WEAR | pr_type::EAAR);
                        if holds && res.kind == kind {
                            good
                        } else {
                            conflict
                        }
                    }
                    None => {
                        s.res = Some(PrReservation {
                            holder: nexus.clone(),
                            kind,
                        });
                        good
                    }
                }
            }
            // RELEASE.
            2 => {
                if my_key != Some(rkey) {
                    return conflict;
                }
                let Some(res) = s.res.clone() else {
                    return good;
                };
                let holds =
                    res.holder == *nexus || matches!(res.kind, pr_type::WEAR | pr_type::EAAR);
                if !holds {
                    return good;
                }
                if res.kind != kind || scope != 0 {
                    return dcheck(Sense::new(key::ILLEGAL_REQUEST, ASC_INVALID_RELEASE));
                }
                s.res = None;
                if !matches!(res.kind, pr_type::WE | pr_type::EA) {
                    let others: Vec<Nexus> = s
                        .regs
                        .iter()
                        .map(|r| r.nexus.clone())
                        .filter(|n| n != nexus)
                        .collect();
                    self.raise_ua(&mut s, &others, asc::RESERVATIONS_RELEASED);
                }
                good
            }
            // CLEAR.
            3 => {
                if my_key != Some(rkey) {
                    return conflict;
                }
                let others: Vec<Nexus> = s
                    .regs
                    .iter()
                    .map(|r| r.nexus.clone())
                    .filter(|n| n != nexus)
                    .collect();
                s.regs.clear();
                s.res = None;
                s.generation = s.generation.wrapping_add(1);
                self.raise_ua(&mut s, &others, asc::RESERVATIONS_PREEMPTED);
                good
            }
            // PREEMPT / PREEMPT AND ABORT.
            4 | 5 => {
                if my_key != Some(rkey) {
                    return conflict;
                }
                if !valid_type || scope != 0 {
                    return dcheck(invalid_cdb(2));
                }
                let all_reg = s
                    .res
                    .as_ref()
                    .is_some_and(|r| matches!(r.kind, pr_type::WEAR | pr_type::EAAR));
                if sakey == 0 && !all_reg {
                    return dcheck(invalid_param(8));
                }
                let holder_key = s
                    .res
                    .as_ref()
                    .and_then(|res| s.regs.iter().find(|r| r.nexus == res.holder).map(|r| r.key));
                let removed: Vec<Nexus> = s
                    .regs
                    .iter()
                    .filter(|r| &r.nexus != nexus && (all_reg && sakey == 0 || r.key == sakey))
                    .map(|r| r.nexus.clone())
                    .collect();
                if removed.is_empty() && s.res.is_none() {
                    return conflict;
                }
                if all_reg || s.res.is_none() || holder_key == Some(sakey) {
                    if s.res.is_some() {
                        s.res = Some(PrReservation {
                            holder: nexus.clone(),
                            kind,
                        });
                    }
                } else if removed.is_empty() {
                    return conflict;
                }
                s.regs.retain(|r| !removed.contains(&r.nexus));
                s.generation = s.generation.wrapping_add(1);
                self.raise_ua(&mut s, &removed, asc::REGISTRATIONS_PREEMPTED);
                good
            }
            _ => dcheck(invalid_cdb(1)),
        };
        self.recompute_quiet(&s);
        result
    }
}

/// An iSCSI TransportID (SPC-4 §7.6.4.6, format 01b: name,i,0xISID).
fn transport_id(n: &Nexus) -> Vec<u8> {
    let mut name = n.port_name().into_bytes();
    name.push(0);
    while name.len() % 4 != 0 {
        name.push(0);
    }
    let mut v = vec![0x40 | 0x05, 0, 0, 0];
    put16(&mut v, 2, len16(name.len()));
    v.extend(name);
    v
}

/// One supported command for REPORT SUPPORTED OPERATION CODES: opcode,
/// service action (if any) and the CDB usage map.
fn opcode_table() -> Vec<(u8, Option<u16>, Vec<u8>)> {
    let c6 = |op: u8, m: [u8; 5]| {
        let mut v = vec![op];
        v.extend_from_slice(&m);
        v
    };
    let c10 = |op: u8, m: [u8; 9]| {
        let mut v = vec![op];
        v.extend_from_slice(&m);
        v
    };
    let c12 = |op: u8, m: [u8; 11]| {
        let mut v = vec![op];
        v.extend_from_slice(&m);
        v
    };
    let c16 = |op: u8, m: [u8; 15]| {
        let mut v = vec![op];
        v.extend_from_slice(&m);
        v
    };
    vec![
        (0x00, None, c6(0x00, [0, 0, 0, 0, 0x07])),
        (0x03, None, c6(0x03, [0x01, 0, 0, 0xff, 0x07])),
        (0x08, None, c6(0x08, [0x1f, 0xff, 0xff, 0xff, 0x07])),
        (0x0a, None, c6(0x0a, [0x1f, 0xff, 0xff, 0xff, 0x07])),
        (0x12, None, c6(0x12, [0x01, 0xff, 0xff, 0xff, 0x07])),
        (0x15, None, c6(0x15, [0x11, 0, 0, 0xff, 0x07])),
        (0x16, None, c6(0x16, [0, 0, 0, 0, 0x07])),
        (0x17, None, c6(0x17, [0, 0, 0, 0, 0x07])),
        (0x1a, None, c6(0x1a, [0x08, 0xff, 0xff, 0xff, 0x07])),
        (0x1b, None, c6(0x1b, [0x01, 0, 0x0f, 0xf7, 0x07])),
        (0x1e, None, c6(0x1e, [0, 0, 0, 0x03, 0x07])),
        (0x25, None, c10(0x25, [0, 0, 0, 0, 0, 0, 0, 0, 0x07])),
        (
            0x28,
            None,
            c10(0x28, [0x18, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0x07]),
        ),
        (
            0x2a,
            None,
            c10(0x2a, [0x18, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0x07]),
        ),
        (
            0x2e,
            None,
            c10(0x2e, [0x12, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0x07]),
        ),
        (
            0x37,
            None,
            c10(0x37, [0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0x07]),
        ),
        (
            0x2f,
            None,
            c10(0x2f, [0x16, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0x07]),
        ),
        (
            0x34,
            None,
            c10(0x34, [0x02, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0x07]),
        ),
        (
            0x35,
            None,
            c10(0x35, [0x02, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0x07]),
        ),
        (
            0x41,
            None,
            c10(0x41, [0x08, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0x07]),
        ),
        (0x42, None, c10(0x42, [0, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07])),
        (
            0x55,
            None,
            c10(0x55, [0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07]),
        ),
        (0x56, None, c10(0x56, [0, 0, 0, 0, 0, 0, 0, 0, 0x07])),
        (0x57, None, c10(0x57, [0, 0, 0, 0, 0, 0, 0, 0, 0x07])),
        (
            0x5a,
            None,
            c10(0x5a, [0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0x07]),
        ),
        (
            0x5e,
            Some(0),
            c10(0x5e, [0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07]),
        ),
        (
            0x5e,
            Some(1),
            c10(0x5e, [0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07]),
        ),
        (
            0x5e,
            Some(2),
            c10(0x5e, [0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07]),
        ),
        (
            0x5e,
            Some(3),
            c10(0x5e, [0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07]),
        ),
        (
            0x5f,
            Some(0),
            c10(0x5f, [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]),
        ),
        (
            0x5f,
            Some(1),
            c10(0x5f, [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]),
        ),
        (
            0x5f,
            Some(2),
            c10(0x5f, [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]),
        ),
        (
            0x5f,
            Some(3),
            c10(0x5f, [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]),
        ),
        (
            0x5f,
            Some(4),
            c10(0x5f, [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]),
        ),
        (
            0x5f,
            Some(5),
            c10(0x5f, [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]),
        ),
        (
            0x5f,
            Some(6),
            c10(0x5f, [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07]),
        ),
        (
            0x88,
            None,
            c16(
                0x88,
                [
                    0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0, 0x07,
                ],
            ),
        ),
        (
            0x8b,
            None,
            c16(
                0x8b,
                [
                    0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0, 0x07,
                ],
            ),
        ),
        (
            0x8e,
            None,
            c16(
                0x8e,
                [
                    0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0, 0x07,
                ],
            ),
        ),
        (
            0x9c,
            None,
            c16(
                0x9c,
                [
                    0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff, 0, 0x07,
                ],
            ),
        ),
        (
            0x89,
            None,
            c16(
                0x89,
                [
                    0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0, 0x07,
                ],
            ),
        ),
        (
            0x8a,
            None,
            c16(
                0x8a,
                [
                    0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0, 0x07,
                ],
            ),
        ),
        (
            0x8f,
            None,
            c16(
                0x8f,
                [
                    0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0, 0x07,
                ],
            ),
        ),
        (
            0x90,
            None,
            c16(
                0x90,
                [
                    0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0, 0x07,
                ],
            ),
        ),
        (
            0x91,
            None,
            c16(
                0x91,
                [
                    0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0, 0x07,
                ],
            ),
        ),
        (
            0x93,
            None,
            c16(
                0x93,
                [
                    0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0, 0x07,
                ],
            ),
        ),
        (
            0x9e,
            Some(0x10),
            c16(
                0x9e,
                [
                    0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07,
                ],
            ),
        ),
        (
            0x9e,
            Some(0x12),
            c16(
                0x9e,
                [
                    0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0, 0x07,
                ],
            ),
        ),
        (
            0xa0,
            None,
            c12(0xa0, [0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07]),
        ),
        (
            0xa3,
            Some(0x0c),
            c12(
                0xa3,
                [
                    0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x07,
                ],
            ),
        ),
        (
            0xa3,
            Some(0x0d),
            c12(0xa3, [0x0d, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07]),
        ),
        (
            0xae,
            None,
            c12(
                0xae,
                [
                    0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x07,
                ],
            ),
        ),
        (
            0xaf,
            None,
            c12(
                0xaf,
                [
                    0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x07,
                ],
            ),
        ),
        (
            0xb7,
            None,
            c12(0xb7, [0x1f, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07]),
        ),
        (
            0xa8,
            None,
            c12(
                0xa8,
                [
                    0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x07,
                ],
            ),
        ),
        (
            0xaa,
            None,
            c12(
                0xaa,
                [
                    0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x07,
                ],
            ),
        ),
    ]
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35).
fn supported_opcodes(rctd: bool, options: u8, opcode: u8, sa: u16) -> Result<Vec<u8>, Sense> {
    let table = opcode_table();
    let timeouts = |v: &mut Vec<u8>| {
        if rctd {
            // Command timeouts descriptor: length 10, nominal 0, recommended 0.
            v.extend_from_slice(&[0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
    };
    match options {
        0 => {
            let mut v = vec![0u8; 4];
            for (op, s, usage) in &table {
                let mut d = vec![0u8; 8];
                d[0] = *op;
                if let Some(s) = s {
                    put16(&mut d, 2, *s);
                    d[5] |= 0x01; // SERVACTV
                }
                if rctd {
                    d[5] |= 0x02; // CTDP
                }
                put16(&mut d, 6, len16(usage.len()));
                v.extend(d);
                timeouts(&mut v);
            }
            let n = len32(v.len() - 4);
            put32(&mut v, 0, n);
            Ok(v)
        }
        1..=3 => {
            let with_sa = table.iter().any(|(op, s, _)| *op == opcode && s.is_some());
            if options == 1 && with_sa {
                return Err(invalid_cdb(2));
            }
            if options == 2 && !with_sa && table.iter().any(|(op, _, _)| *op == opcode) {
                return Err(invalid_cdb(2));
            }
            let found = table.iter().find(|(op, s, _)| {
                *op == opcode && (s.is_none() || *s == Some(sa) || options == 1)
            });
            let mut v = vec![0u8; 4];
            match found {
                Some((_, _, usage)) => {
                    v[1] = 0x03 | if rctd { 0x80 } else { 0 }; // supported per standard
                    put16(&mut v, 2, len16(usage.len()));
                    v.extend_from_slice(usage);
                    timeouts(&mut v);
                }
                None => v[1] = 0x01, // not supported
            }
            Ok(v)
        }
        _ => Err(invalid_cdb(2)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_blockvol::{CreateOptions, VolumeConfig};
    use keel_pdu::scsi::parse_cdb;

    fn lun() -> (tempfile::TempDir, Lun) {
        let d = tempfile::tempdir().unwrap();
        let v = Volume::create(
            &d.path().join("v.keel"),
            &CreateOptions::new(16 << 20),
            &VolumeConfig::default(),
        )
        .unwrap();
        (d, Lun::new(Arc::new(v), "iqn.2026-11.io.keel:t"))
    }

    fn nexus(n: &str) -> Nexus {
        Nexus {
            initiator: format!("iqn.2026-11.io.keel.test:{n}"),
            isid: [0x80, 0, 0, 0, 0, 1],
        }
    }

    fn plan(l: &Lun, cdb: &[u8], n: &Nexus) -> Action {
        l.plan(&parse_cdb(cdb).unwrap(), cdb, n)
    }

    fn sense_of(a: &Action) -> Option<(u8, (u8, u8))> {
        match a {
            Action::Status(2, Some(s)) => Some((s.key, s.asc)),
            _ => None,
        }
    }

    fn data(a: Action) -> Vec<u8> {
        match a {
            Action::Data(v) => v,
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[test]
    fn vpd_pages_are_consistent() {
        let (_d, l) = lun();
        let a = nexus("a");
        let pages = data(plan(&l, &[0x12, 1, 0, 0, 255, 0], &a));
        assert_eq!(&pages[4..], &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
        for &p in &pages[4..] {
            let v = data(plan(&l, &[0x12, 1, p, 1, 0, 0], &a));
            assert_eq!(v[1], p);
            assert_eq!(
                usize::from(u16::from_be_bytes([v[2], v[3]])) + 4,
                v.len(),
                "page {p:#x}"
            );
        }
        let id = data(plan(&l, &[0x12, 1, 0x83, 1, 0, 0], &a));
        assert_eq!(&id[4..8], &[0x01, 0x03, 0x00, 16], "NAA designator first");
        assert_eq!(id[8] >> 4, 6);
        // Unknown page, and a page code without EVPD.
        assert_eq!(
            sense_of(&plan(&l, &[0x12, 1, 0x99, 0, 255, 0], &a)),
            Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB))
        );
        assert_eq!(
            sense_of(&plan(&l, &[0x12, 0, 0x80, 0, 255, 0], &a)),
            Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB))
        );
        // The allocation length cuts the answer.
        assert_eq!(data(plan(&l, &[0x12, 0, 0, 0, 5, 0], &a)).len(), 5);
    }

    #[test]
    fn mode_select_switches_the_engine_write_cache() {
        let (_d, l) = lun();
        let a = nexus("a");
        let cdb = [0x1a, 0x08, 0x08, 0, 255, 0];
        let ms = data(plan(&l, &cdb, &a));
        assert_eq!(ms[4] & 0x3f, 0x08);
        assert_ne!(ms[6] & 0x04, 0, "WCE on by default");
        // MODE SELECT(6) of the caching page with WCE off.
        let mut param = vec![0u8, 0, 0, 0];
        let mut page = ms[4..].to_vec();
        page[2] &= !0x04;
        param.extend_from_slice(&page);
        let sel = [0x15, 0x10, 0, 0, u8::try_from(param.len()).unwrap(), 0];
        let c = parse_cdb(&sel).unwrap();
        assert!(matches!(l.plan(&c, &sel, &a), Action::NeedData { .. }));
        assert!(matches!(
            l.with_data(&c, &sel, param.clone(), &a),
            DataAction::Status(0, None)
        ));
        assert!(!l.volume().write_cache());
        let ms = data(plan(&l, &cdb, &a));
        assert_eq!(ms[6] & 0x04, 0);
        // Changing anything else is refused.
        param[4 + 3] = 0xff;
        assert!(matches!(
            l.with_data(&c, &sel, param, &a),
            DataAction::Status(2, Some(s)) if s.asc == ASC_INVALID_PARAM
        ));
        // Saved pages do not exist.
        assert_eq!(
            sense_of(&plan(&l, &[0x1a, 0, 0xc8, 0, 255, 0], &a)),
            Some((key::ILLEGAL_REQUEST, ASC_SAVING_NOT_SUPPORTED))
        );
    }

    fn prout(l: &Lun, n: &Nexus, action: u8, kind: u8, rkey: u64, sakey: u64) -> DataAction {
        let cdb = [0x5f, action, kind, 0, 0, 0, 0, 0, 24, 0];
        let c = parse_cdb(&cdb).unwrap();
        assert!(matches!(l.plan(&c, &cdb, n), Action::NeedData { len: 24 }));
        let mut p = vec![0u8; 24];
        p[..8].copy_from_slice(&rkey.to_be_bytes());
        p[8..16].copy_from_slice(&sakey.to_be_bytes());
        l.with_data(&c, &cdb, p, n)
    }

    #[test]
    fn persistent_reservations_fence_other_initiators() {
        let (_d, l) = lun();
        let (a, b) = (nexus("a"), nexus("b"));
        let good = |d: DataAction| assert!(matches!(d, DataAction::Status(0, None)), "{d:?}");
        good(prout(&l, &a, 0, 0, 0, 0xa));
        good(prout(&l, &b, 0, 0, 0, 0xb));
        // Write Exclusive held by A.
        good(prout(&l, &a, 1, pr_type::WE, 0xa, 0));
        let write = [0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0];
        let read = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0];
        assert!(matches!(plan(&l, &write, &a), Action::Write { .. }));
        assert!(matches!(
            plan(&l, &write, &b),
            Action::Status(status::RESERVATION_CONFLICT, None)
        ));
        assert!(matches!(plan(&l, &read, &b), Action::Read { .. }));
        // A wrong key conflicts; B preempts A with A's key.
        assert!(matches!(
            prout(&l, &b, 1, pr_type::WE, 0xbad, 0),
            DataAction::Status(status::RESERVATION_CONFLICT, None)
        ));
        good(prout(&l, &b, 4, pr_type::EA, 0xb, 0xa));
        // A lost its registration: a unit attention first, then conflicts
        // on reads too (exclusive access).
        assert_eq!(
            sense_of(&plan(&l, &read, &a)),
            Some((key::UNIT_ATTENTION, asc::REGISTRATIONS_PREEMPTED))
        );
        assert!(matches!(
            plan(&l, &read, &a),
            Action::Status(status::RESERVATION_CONFLICT, None)
        ));
        // READ KEYS shows only B; READ RESERVATION shows B's EA.
        let keys = data(plan(&l, &[0x5e, 0, 0, 0, 0, 0, 0, 1, 0, 0], &a));
        assert_eq!(u32::from_be_bytes([keys[4], keys[5], keys[6], keys[7]]), 8);
        assert_eq!(&keys[8..16], &0xbu64.to_be_bytes());
        let res = data(plan(&l, &[0x5e, 1, 0, 0, 0, 0, 0, 1, 0, 0], &a));
        assert_eq!(&res[8..16], &0xbu64.to_be_bytes());
        assert_eq!(res[21] & 0x0f, pr_type::EA);
        // Release with the wrong type is an error; the right one frees it.
        assert!(matches!(
            prout(&l, &b, 2, pr_type::WE, 0xb, 0),
            DataAction::Status(2, Some(_))
        ));
        good(prout(&l, &b, 2, pr_type::EA, 0xb, 0));
        assert!(matches!(plan(&l, &write, &a), Action::Write { .. }));
    }

    #[test]
    fn spc2_reservations_and_reset() {
        let (_d, l) = lun();
        let (a, b) = (nexus("a"), nexus("b"));
        l.nexus_joined(&a);
        l.nexus_joined(&b);
        assert!(matches!(
            plan(&l, &[0x16, 0, 0, 0, 0, 0], &a),
            Action::Status(0, None)
        ));
        let tur = [0u8; 6];
        assert!(matches!(
            plan(&l, &tur, &b),
            Action::Status(status::RESERVATION_CONFLICT, None)
        ));
        assert!(matches!(
            plan(&l, &[0x12, 0, 0, 0, 36, 0], &b),
            Action::Data(_)
        ));
        // A LU reset releases it and tells both nexuses.
        l.reset(&a);
        assert_eq!(
            sense_of(&plan(&l, &tur, &b)),
            Some((key::UNIT_ATTENTION, (0x29, 0x03)))
        );
        assert_eq!(
            sense_of(&plan(&l, &tur, &a)),
            Some((key::UNIT_ATTENTION, (0x29, 0x03)))
        );
        assert!(matches!(plan(&l, &tur, &b), Action::Status(0, None)));
        // A nexus that leaves gives up its SPC-2 reservation.
        assert!(matches!(
            plan(&l, &[0x16, 0, 0, 0, 0, 0], &b),
            Action::Status(0, None)
        ));
        l.nexus_lost(&b);
        assert!(matches!(plan(&l, &tur, &a), Action::Status(0, None)));
    }

    #[test]
    fn unmap_parameter_lists_are_checked() {
        let (_d, l) = lun();
        let a = nexus("a");
        let blocks = l.blocks();
        let cdb = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
        let c = parse_cdb(&cdb).unwrap();
        let list = |lba: u64, n: u32, desc_len: u16| {
            let mut p = vec![0u8; 24];
            p[0..2].copy_from_slice(&(desc_len + 6).to_be_bytes());
            p[2..4].copy_from_slice(&desc_len.to_be_bytes());
            p[8..16].copy_from_slice(&lba.to_be_bytes());
            p[16..20].copy_from_slice(&n.to_be_bytes());
            p
        };
        assert!(
            matches!(l.with_data(&c, &cdb, list(0, 8, 16), &a), DataAction::Trim(r) if r == vec![(0, 8)])
        );
        assert!(matches!(
            l.with_data(&c, &cdb, list(blocks - 1, 2, 16), &a),
            DataAction::Status(2, Some(s)) if s.asc == asc::LBA_OUT_OF_RANGE
        ));
        assert!(matches!(
            l.with_data(&c, &cdb, list(0, 8, 17), &a),
            DataAction::Status(2, Some(s)) if s.asc == ASC_PARAM_LIST_LENGTH
        ));
        // COMPARE AND WRITE of zero blocks with data is malformed.
        let caw = [0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            sense_of(&plan(&l, &caw, &a)),
            Some((key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB))
        );
    }

    /// An initiator whose expected transfer length is shorter than a block
    /// command's data gets the command refused, not run on part of it.
    /// Found by the PDU storm test: a COMPARE AND WRITE of 3 blocks with
    /// EDTL 482 panicked the reactor (`split_off` past the end).
    #[test]
    fn block_commands_refuse_data_that_does_not_cover_their_blocks() {
        let (_d, l) = lun();
        let a = nexus("a");
        let bs = 4096usize;
        let refused = |d: DataAction| {
            matches!(d, DataAction::Status(2, Some(s))
                if s.key == key::ILLEGAL_REQUEST && s.asc == ASC_INVALID_FIELD_IN_IU)
        };
        // COMPARE AND WRITE of 3 blocks, WRITE SAME(10) of 8, ORWRITE(16)
        // of 2, VERIFY(10) of 2 with BYTCHK 1 and with BYTCHK 3.
        let caw = [0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0];
        let ws = [0x41, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        let or = [0x8b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0];
        let v1 = [0x2f, 0x02, 0, 0, 0, 0, 0, 0, 2, 0];
        let v3 = [0x2f, 0x06, 0, 0, 0, 0, 0, 0, 2, 0];
        for (cdb, want) in [
            (&caw[..], 6 * bs),
            (&ws[..], bs),
            (&or[..], 2 * bs),
            (&v1[..], 2 * bs),
            (&v3[..], bs),
        ] {
            let c = parse_cdb(cdb).unwrap();
            assert!(
                matches!(plan(&l, cdb, &a), Action::NeedData { len } if len as usize == want),
                "{cdb:02x?}"
            );
            for got in [0, 1, 482, want - 1] {
                assert!(
                    refused(l.with_data(&c, cdb, vec![7u8; got], &a)),
                    "{cdb:02x?} with {got} bytes"
                );
            }
            assert!(
                !refused(l.with_data(&c, cdb, vec![7u8; want], &a)),
                "{cdb:02x?} with all its data"
            );
        }
    }
}
