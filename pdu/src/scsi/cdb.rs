//! Command descriptor blocks (SBC-3 §5, SPC-4 §6): decoded into [`Cdb`].
//! Fields are reported as they are; what is valid is the target's call.

/// A CDB too short for its opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CdbError {
    /// The CDB has fewer bytes than its operation code needs.
    #[error("CDB of {got} bytes is too short for opcode {opcode:#04x} ({need} needed)")]
    TooShort {
        /// Operation code.
        opcode: u8,
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// No bytes at all.
    #[error("Empty CDB")]
    Empty,
}

/// A decoded CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cdb {
    /// TEST UNIT READY (0x00).
    TestUnitReady,
    /// REQUEST SENSE (0x03).
    RequestSense {
        /// DESC: descriptor-format sense wanted.
        desc: bool,
        /// Allocation length.
        alloc_len: u8,
    },
    /// INQUIRY (0x12).
    Inquiry {
        /// EVPD: a VPD page is wanted.
        evpd: bool,
        /// Page code.
        page: u8,
        /// Allocation length.
        alloc_len: u16,
    },
    /// READ CAPACITY (10) (0x25).
    ReadCapacity10,
    /// READ CAPACITY (16) (SERVICE ACTION IN 0x9e / 0x10).
    ReadCapacity16 {
        /// Allocation length.
        alloc_len: u32,
    },
    /// GET LBA STATUS (SERVICE ACTION IN 0x9e / 0x12).
    GetLbaStatus {
        /// Starting LBA.
        lba: u64,
        /// Allocation length.
        alloc_len: u32,
    },
    /// READ (6/10/12/16).
    Read {
        /// First block.
        lba: u64,
        /// Blocks (READ(6): 0 means 256).
        blocks: u32,
        /// Force unit access.
        fua: bool,
        /// CDB length (6, 10, 12, 16).
        len: u8,
    },
    /// WRITE (6/10/12/16).
    Write {
        /// First block.
        lba: u64,
        /// Blocks (WRITE(6): 0 means 256).
        blocks: u32,
        /// Force unit access.
        fua: bool,
        /// CDB length.
        len: u8,
    },
    /// VERIFY (10/16).
    Verify {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// BYTCHK (0: medium check only, 1: compare data-out).
        bytchk: u8,
    },
    /// SYNCHRONIZE CACHE (10/16).
    SyncCache {
        /// First block.
        lba: u64,
        /// Blocks (0: to the end).
        blocks: u32,
        /// IMMED.
        immed: bool,
    },
    /// UNMAP (0x42).
    Unmap {
        /// ANCHOR.
        anchor: bool,
        /// Parameter list length.
        param_len: u16,
    },
    /// WRITE SAME (10/16).
    WriteSame {
        /// First block.
        lba: u64,
        /// Blocks (0: to the end, if the target allows).
        blocks: u32,
        /// UNMAP bit.
        unmap: bool,
        /// ANCHOR bit.
        anchor: bool,
        /// NDOB: no data-out buffer (16 only).
        ndob: bool,
    },
    /// MODE SENSE (6/10).
    ModeSense {
        /// DBD: no block descriptors.
        dbd: bool,
        /// LLBAA (10 only).
        llbaa: bool,
        /// Page control (0 current, 1 changeable, 2 default, 3 saved).
        pc: u8,
        /// Page code.
        page: u8,
        /// Subpage code.
        subpage: u8,
        /// Allocation length.
        alloc_len: u16,
        /// The 10-byte form.
        ten: bool,
    },
    /// MODE SELECT (6/10).
    ModeSelect {
        /// PF: page format.
        pf: bool,
        /// SP: save pages.
        sp: bool,
        /// Parameter list length.
        param_len: u16,
        /// The 10-byte form.
        ten: bool,
    },
    /// REPORT LUNS (0xa0).
    ReportLuns {
        /// SELECT REPORT.
        select: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// COMPARE AND WRITE (0x89).
    CompareAndWrite {
        /// First block.
        lba: u64,
        /// Blocks (the data-out holds twice as many).
        blocks: u8,
        /// Force unit access.
        fua: bool,
    },
    /// ORWRITE (16) (0x8b): OR the data-out into the blocks.
    OrWrite {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// Force unit access.
        fua: bool,
    },
    /// WRITE ATOMIC (16) (0x9c).
    WriteAtomic {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// Force unit access.
        fua: bool,
    },
    /// READ DEFECT DATA (10) (0x37) and (12) (0xb7).
    ReadDefectData {
        /// The 12-byte form.
        twelve: bool,
        /// REQ_PLIST, REQ_GLIST and the defect list format (byte 2 of
        /// the 10-byte form, byte 1 of the 12-byte form).
        flags: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// PERSISTENT RESERVE IN (0x5e).
    PersistentReserveIn {
        /// Service action.
        action: u8,
        /// Allocation length.
        alloc_len: u16,
    },
    /// PERSISTENT RESERVE OUT (0x5f).
    PersistentReserveOut {
        /// Service action.
        action: u8,
        /// Scope.
        scope: u8,
        /// Reservation type.
        kind: u8,
        /// Parameter list length.
        param_len: u32,
    },
    /// RESERVE (6/10).
    Reserve,
    /// RELEASE (6/10).
    Release,
    /// START STOP UNIT (0x1b).
    StartStopUnit {
        /// IMMED.
        immed: bool,
        /// START.
        start: bool,
        /// LOEJ.
        loej: bool,
        /// Power condition.
        power_condition: u8,
    },
    /// REPORT SUPPORTED OPERATION CODES (MAINTENANCE IN 0xa3 / 0x0c).
    ReportSupportedOpcodes {
        /// Reporting options.
        options: u8,
        /// Requested operation code.
        opcode: u8,
        /// Requested service action.
        service_action: u16,
        /// Allocation length.
        alloc_len: u32,
    },
    /// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (0xa3 / 0x0d).
    ReportSupportedTmfs {
        /// Allocation length.
        alloc_len: u32,
    },
    /// REPORT TARGET PORT GROUPS (0xa3 / 0x0a).
    ReportTargetPortGroups {
        /// Allocation length.
        alloc_len: u32,
    },
    /// An opcode (or service action) this crate does not decode.
    Unknown {
        /// Operation code.
        opcode: u8,
        /// Service action for 0x9e / 0xa3, else 0.
        service_action: u8,
    },
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

/// The CDB length an operation code implies (its group code).
pub fn cdb_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 6,
    }
}

/// Decode a CDB (the 16-byte field of a SCSI Command PDU, or longer).
pub fn parse_cdb(c: &[u8]) -> Result<Cdb, CdbError> {
    let &opcode = c.first().ok_or(CdbError::Empty)?;
    let need = cdb_len(opcode);
    if c.len() < need {
        return Err(CdbError::TooShort {
            opcode,
            need,
            got: c.len(),
        });
    }
    let fua = c.get(1).is_some_and(|b| b & 0x08 != 0);
    Ok(match opcode {
        0x00 => Cdb::TestUnitReady,
        0x03 => Cdb::RequestSense {
            desc: c[1] & 1 != 0,
            alloc_len: c[4],
        },
        0x12 => Cdb::Inquiry {
            evpd: c[1] & 1 != 0,
            page: c[2],
            alloc_len: be16(c, 3),
        },
        0x25 => Cdb::ReadCapacity10,
        0x08 | 0x0a => {
            let lba = u64::from(c[1] & 0x1f) << 16 | u64::from(be16(c, 2));
            let blocks = if c[4] == 0 { 256 } else { u32::from(c[4]) };
            if opcode == 0x08 {
                Cdb::Read {
                    lba,
                    blocks,
                    fua: false,
                    len: 6,
                }
            } else {
                Cdb::Write {
                    lba,
                    blocks,
                    fua: false,
                    len: 6,
                }
            }
        }
        0x28 => Cdb::Read {
            lba: u64::from(be32(c, 2)),
            blocks: u32::from(be16(c, 7)),
            fua,
            len: 10,
        },
        0x2a => Cdb::Write {
            lba: u64::from(be32(c, 2)),
            blocks: u32::from(be16(c, 7)),
            fua,
            len: 10,
        },
        0xa8 => Cdb::Read {
            lba: u64::from(be32(c, 2)),
            blocks: be32(c, 6),
            fua,
            len: 12,
        },
        0xaa => Cdb::Write {
            lba: u64::from(be32(c, 2)),
            blocks: be32(c, 6),
            fua,
            len: 12,
        },
        0x88 => Cdb::Read {
            lba: be64(c, 2),
            blocks: be32(c, 10),
            fua,
            len: 16,
        },
        0x8a => Cdb::Write {
            lba: be64(c, 2),
            blocks: be32(c, 10),
            fua,
            len: 16,
        },
        0x2f => Cdb::Verify {
            lba: u64::from(be32(c, 2)),
            blocks: u32::from(be16(c, 7)),
            bytchk: (c[1] >> 1) & 3,
        },
        0x8f => Cdb::Verify {
            lba: be64(c, 2),
            blocks: be32(c, 10),
            bytchk: (c[1] >> 1) & 3,
        },
        0x35 => Cdb::SyncCache {
            lba: u64::from(be32(c, 2)),
            blocks: u32::from(be16(c, 7)),
            immed: c[1] & 2 != 0,
        },
        0x91 => Cdb::SyncCache {
            lba: be64(c, 2),
            blocks: be32(c, 10),
            immed: c[1] & 2 != 0,
        },
        0x42 => Cdb::Unmap {
            anchor: c[1] & 1 != 0,
            param_len: be16(c, 7),
        },
        0x41 => Cdb::WriteSame {
            lba: u64::from(be32(c, 2)),
            blocks: u32::from(be16(c, 7)),
            unmap: c[1] & 0x08 != 0,
            anchor: c[1] & 0x10 != 0,
            ndob: false,
        },
        0x93 => Cdb::WriteSame {
            lba: be64(c, 2),
            blocks: be32(c, 10),
            unmap: c[1] & 0x08 != 0,
            anchor: c[1] & 0x10 != 0,
            ndob: c[1] & 0x01 != 0,
        },
        0x1a => Cdb::ModeSense {
            dbd: c[1] & 0x08 != 0,
            llbaa: false,
            pc: c[2] >> 6,
            page: c[2] & 0x3f,
            subpage: c[3],
            alloc_len: u16::from(c[4]),
            ten: false,
        },
        0x5a => Cdb::ModeSense {
            dbd: c[1] & 0x08 != 0,
            llbaa: c[1] & 0x10 != 0,
            pc: c[2] >> 6,
            page: c[2] & 0x3f,
            subpage: c[3],
            alloc_len: be16(c, 7),
            ten: true,
        },
        0x15 => Cdb::ModeSelect {
            pf: c[1] & 0x10 != 0,
            sp: c[1] & 1 != 0,
            param_len: u16::from(c[4]),
            ten: false,
        },
        0x55 => Cdb::ModeSelect {
            pf: c[1] & 0x10 != 0,
            sp: c[1] & 1 != 0,
            param_len: be16(c, 7),
            ten: true,
        },
        0xa0 => Cdb::ReportLuns {
            select: c[2],
            alloc_len: be32(c, 6),
        },
        // WRITE AND VERIFY (10/12/16): a write the medium has verified,
        // i.e. durable before the status (FUA).
        0x2e => Cdb::Write {
            lba: u64::from(be32(c, 2)),
            blocks: u32::from(be16(c, 7)),
            fua: true,
            len: 10,
        },
        0xae => Cdb::Write {
            lba: u64::from(be32(c, 2)),
            blocks: be32(c, 6),
            fua: true,
            len: 12,
        },
        0x8e => Cdb::Write {
            lba: be64(c, 2),
            blocks: be32(c, 10),
            fua: true,
            len: 16,
        },
        0xaf => Cdb::Verify {
            lba: u64::from(be32(c, 2)),
            blocks: be32(c, 6),
            bytchk: (c[1] >> 1) & 3,
        },
        0x8b => Cdb::OrWrite {
            lba: be64(c, 2),
            blocks: be32(c, 10),
            fua,
        },
        0x9c => Cdb::WriteAtomic {
            lba: be64(c, 2),
            blocks: u32::from(be16(c, 12)),
            fua,
        },
        0x37 => Cdb::ReadDefectData {
            twelve: false,
            flags: c[2],
            alloc_len: u32::from(be16(c, 7)),
        },
        0xb7 => Cdb::ReadDefectData {
            twelve: true,
            flags: c[1],
            alloc_len: be32(c, 6),
        },
        0x89 => Cdb::CompareAndWrite {
            lba: be64(c, 2),
            blocks: c[13],
            fua,
        },
        0x5e => Cdb::PersistentReserveIn {
            action: c[1] & 0x1f,
            alloc_len: be16(c, 7),
        },
        0x5f => Cdb::PersistentReserveOut {
            action: c[1] & 0x1f,
            scope: c[2] >> 4,
            kind: c[2] & 0x0f,
            param_len: be32(c, 5),
        },
        0x16 | 0x56 => Cdb::Reserve,
        0x17 | 0x57 => Cdb::Release,
        0x1b => Cdb::StartStopUnit {
            immed: c[1] & 1 != 0,
            start: c[4] & 1 != 0,
            loej: c[4] & 2 != 0,
            power_condition: c[4] >> 4,
        },
        0x9e => match c[1] & 0x1f {
            0x10 => Cdb::ReadCapacity16 {
                alloc_len: be32(c, 10),
            },
            0x12 => Cdb::GetLbaStatus {
                lba: be64(c, 2),
                alloc_len: be32(c, 10),
            },
            sa => Cdb::Unknown {
                opcode,
                service_action: sa,
            },
        },
        0xa3 => match c[1] & 0x1f {
            0x0c => Cdb::ReportSupportedOpcodes {
                options: c[2] & 0x07,
                opcode: c[3],
                service_action: be16(c, 4),
                alloc_len: be32(c, 6),
            },
            0x0d => Cdb::ReportSupportedTmfs {
                alloc_len: be32(c, 6),
            },
            0x0a => Cdb::ReportTargetPortGroups {
                alloc_len: be32(c, 6),
            },
            sa => Cdb::Unknown {
                opcode,
                service_action: sa,
            },
        },
        _ => Cdb::Unknown {
            opcode,
            service_action: 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_and_writes() {
        assert_eq!(
            parse_cdb(&[0x28, 0x08, 0, 0, 0x12, 0x34, 0, 0, 8, 0]).unwrap(),
            Cdb::Read {
                lba: 0x1234,
                blocks: 8,
                fua: true,
                len: 10
            }
        );
        assert_eq!(
            parse_cdb(&[0x08, 0x1f, 0xff, 0xff, 0, 0]).unwrap(),
            Cdb::Read {
                lba: 0x1f_ffff,
                blocks: 256,
                fua: false,
                len: 6
            }
        );
        let mut w16 = [0u8; 16];
        w16[0] = 0x8a;
        w16[2..10].copy_from_slice(&0x1_0000_0000u64.to_be_bytes());
        w16[10..14].copy_from_slice(&32u32.to_be_bytes());
        assert_eq!(
            parse_cdb(&w16).unwrap(),
            Cdb::Write {
                lba: 1 << 32,
                blocks: 32,
                fua: false,
                len: 16
            }
        );
        assert!(matches!(
            parse_cdb(&[0x28, 0, 0]),
            Err(CdbError::TooShort { need: 10, .. })
        ));
        assert_eq!(parse_cdb(&[]), Err(CdbError::Empty));
    }

    #[test]
    fn service_actions_and_unknowns() {
        let mut rc16 = [0u8; 16];
        rc16[0] = 0x9e;
        rc16[1] = 0x10;
        rc16[13] = 32;
        assert_eq!(
            parse_cdb(&rc16).unwrap(),
            Cdb::ReadCapacity16 { alloc_len: 32 }
        );
        rc16[1] = 0x11;
        assert_eq!(
            parse_cdb(&rc16).unwrap(),
            Cdb::Unknown {
                opcode: 0x9e,
                service_action: 0x11
            }
        );
        assert_eq!(
            parse_cdb(&[0xc0, 0, 0, 0, 0, 0]).unwrap(),
            Cdb::Unknown {
                opcode: 0xc0,
                service_action: 0
            }
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = parse_cdb(&bytes);
        }
    }
}
