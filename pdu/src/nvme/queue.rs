//! The 64-byte submission queue entry and 16-byte completion queue entry
//! (NVMe Base 2.0 §4.2, §4.6).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Bytes in an SQE.
pub const SQE_LEN: usize = 64;
/// Bytes in a CQE.
pub const CQE_LEN: usize = 16;

/// An SGL descriptor (NVMe Base 2.0 §4.3.2), as carried in DPTR.
#[repr(C)]
#[derive(
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
)]
pub struct Sgl {
    /// Address (or offset for in-capsule data).
    pub addr: U64,
    /// Length in bytes.
    pub length: U32,
    /// Reserved (keyed SGL key for some types).
    pub rsvd: [u8; 3],
    /// SGL identifier: descriptor type (bits 7:4) and subtype (bits 3:0).
    pub id: u8,
}
const _: () = assert!(core::mem::size_of::<Sgl>() == 16);

impl Sgl {
    /// Descriptor type (0 data block, 2 segment, 3 last segment, 4 keyed
    /// data block, 5 transport data block).
    pub fn kind(&self) -> u8 {
        self.id >> 4
    }
    /// Subtype (1 offset: in-capsule data, 0xA transport-specific).
    pub fn subtype(&self) -> u8 {
        self.id & 0x0f
    }
}

/// Submission queue entry (NVMe Base 2.0 §4.2, figure 88). For Fabrics
/// commands (opcode 0x7f) byte 4 holds FCTYPE instead of the NSID.
#[repr(C)]
#[derive(
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
)]
pub struct Sqe {
    /// Opcode.
    pub opcode: u8,
    /// FUSE (bits 1:0) and PSDT (bits 7:6; 1 or 2 = SGL).
    pub flags: u8,
    /// Command identifier.
    pub cid: U16,
    /// Namespace ID (Fabrics: FCTYPE in the low byte).
    pub nsid: U32,
    /// Command dword 2.
    pub cdw2: U32,
    /// Command dword 3.
    pub cdw3: U32,
    /// Metadata pointer.
    pub mptr: U64,
    /// Data pointer (one SGL descriptor over TCP).
    pub dptr: Sgl,
    /// Command dword 10.
    pub cdw10: U32,
    /// Command dword 11.
    pub cdw11: U32,
    /// Command dword 12.
    pub cdw12: U32,
    /// Command dword 13.
    pub cdw13: U32,
    /// Command dword 14.
    pub cdw14: U32,
    /// Command dword 15.
    pub cdw15: U32,
}
const _: () = assert!(core::mem::size_of::<Sqe>() == SQE_LEN);

impl Sqe {
    /// Read an SQE from the first 64 bytes.
    pub fn parse(b: &[u8]) -> Option<Sqe> {
        Sqe::read_from_bytes(b.get(..SQE_LEN)?).ok()
    }
    /// The 64 bytes.
    pub fn to_bytes(&self) -> [u8; SQE_LEN] {
        let mut o = [0u8; SQE_LEN];
        o.copy_from_slice(self.as_bytes());
        o
    }
    /// FCTYPE of a Fabrics command.
    pub fn fctype(&self) -> u8 {
        self.nsid.get().to_le_bytes()[0]
    }
    /// Starting LBA of an NVM read/write (CDW10-11).
    pub fn slba(&self) -> u64 {
        u64::from(self.cdw10.get()) | (u64::from(self.cdw11.get()) << 32)
    }
    /// Number of logical blocks, 0's based (CDW12 bits 15:0).
    pub fn nlb(&self) -> u16 {
        let b = self.cdw12.get().to_le_bytes();
        u16::from_le_bytes([b[0], b[1]])
    }
    /// Force Unit Access (CDW12 bit 30).
    pub fn fua(&self) -> bool {
        self.cdw12.get() & (1 << 30) != 0
    }
}

/// Status field of a CQE (NVMe Base 2.0 §4.6.1): status code type and code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Status {
    /// Status Code Type (0 generic, 1 command specific, 2 media, 3 path).
    pub sct: u8,
    /// Status Code.
    pub sc: u8,
    /// More information in the error log.
    pub more: bool,
    /// Do Not Retry.
    pub dnr: bool,
}

impl Status {
    /// Successful completion.
    pub const SUCCESS: Status = Status {
        sct: 0,
        sc: 0,
        more: false,
        dnr: false,
    };
    /// Generic: Invalid Command Opcode.
    pub const INVALID_OPCODE: Status = Status {
        sct: 0,
        sc: 0x01,
        more: false,
        dnr: true,
    };
    /// Generic: Invalid Field in Command.
    pub const INVALID_FIELD: Status = Status {
        sct: 0,
        sc: 0x02,
        more: false,
        dnr: true,
    };
    /// Generic: Data Transfer Error.
    pub const DATA_TRANSFER_ERROR: Status = Status {
        sct: 0,
        sc: 0x04,
        more: false,
        dnr: false,
    };
    /// Generic: Internal Error.
    pub const INTERNAL_ERROR: Status = Status {
        sct: 0,
        sc: 0x06,
        more: false,
        dnr: false,
    };
    /// Generic: Command Aborted by Request.
    pub const ABORTED_BY_REQUEST: Status = Status {
        sct: 0,
        sc: 0x07,
        more: false,
        dnr: false,
    };
    /// Generic: Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: Status = Status {
        sct: 0,
        sc: 0x0b,
        more: false,
        dnr: true,
    };
    /// Generic: Command Sequence Error.
    pub const COMMAND_SEQUENCE_ERROR: Status = Status {
        sct: 0,
        sc: 0x0c,
        more: false,
        dnr: true,
    };
    /// Generic: Data SGL Length Invalid.
    pub const SGL_LENGTH_INVALID: Status = Status {
        sct: 0,
        sc: 0x0f,
        more: false,
        dnr: true,
    };
    /// Generic: LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: Status = Status {
        sct: 0,
        sc: 0x80,
        more: false,
        dnr: true,
    };
    /// Generic: Namespace Not Ready.
    pub const NAMESPACE_NOT_READY: Status = Status {
        sct: 0,
        sc: 0x82,
        more: false,
        dnr: false,
    };
    /// Path: Asymmetric Access Inaccessible.
    pub const ANA_INACCESSIBLE: Status = Status {
        sct: 3,
        sc: 0x02,
        more: false,
        dnr: false,
    };

    /// The 15-bit field as it sits in bits 15:1 of the CQE status word.
    pub fn to_word(self, phase: bool) -> u16 {
        u16::from(phase)
            | (u16::from(self.sc) << 1)
            | (u16::from(self.sct & 7) << 9)
            | (u16::from(self.more) << 14)
            | (u16::from(self.dnr) << 15)
    }

    /// Decode from the CQE status word.
    pub fn from_word(w: u16) -> Status {
        let b = w.to_le_bytes();
        Status {
            sc: (b[0] >> 1) | ((b[1] & 1) << 7),
            sct: (b[1] >> 1) & 7,
            more: w & (1 << 14) != 0,
            dnr: w & (1 << 15) != 0,
        }
    }
}

/// Completion queue entry (NVMe Base 2.0 §4.6, figure 92).
#[repr(C)]
#[derive(
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
)]
pub struct Cqe {
    /// Command-specific dword 0.
    pub dw0: U32,
    /// Command-specific dword 1.
    pub dw1: U32,
    /// SQ head pointer.
    pub sqhd: U16,
    /// SQ identifier.
    pub sqid: U16,
    /// Command identifier.
    pub cid: U16,
    /// Phase tag (bit 0) and status field (bits 15:1).
    pub status: U16,
}
const _: () = assert!(core::mem::size_of::<Cqe>() == CQE_LEN);

impl Cqe {
    /// Read a CQE from the first 16 bytes.
    pub fn parse(b: &[u8]) -> Option<Cqe> {
        Cqe::read_from_bytes(b.get(..CQE_LEN)?).ok()
    }
    /// The decoded status.
    pub fn status(&self) -> Status {
        Status::from_word(self.status.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_command_fields() {
        let mut b = [0u8; 64];
        b[0] = 0x02; // Read
        b[1] = 0x40; // PSDT: SGL
        b[2..4].copy_from_slice(&7u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&0u64.to_le_bytes());
        b[32..36].copy_from_slice(&4096u32.to_le_bytes());
        b[39] = 0x5a; // transport data block, transport-specific
        b[40..44].copy_from_slice(&0x1234u32.to_le_bytes());
        b[44..48].copy_from_slice(&1u32.to_le_bytes());
        b[48..52].copy_from_slice(&((1u32 << 30) | 7).to_le_bytes());
        let s = Sqe::parse(&b).unwrap();
        assert_eq!((s.opcode, s.cid.get(), s.nsid.get()), (2, 7, 1));
        assert_eq!(s.slba(), (1 << 32) | 0x1234);
        assert_eq!((s.nlb(), s.fua()), (7, true));
        assert_eq!(
            (s.dptr.kind(), s.dptr.subtype(), s.dptr.length.get()),
            (5, 0xa, 4096)
        );
        assert_eq!(s.to_bytes(), b);
        assert!(Sqe::parse(&b[..63]).is_none());
    }

    #[test]
    fn status_words() {
        for s in [
            Status::SUCCESS,
            Status::INVALID_FIELD,
            Status::LBA_OUT_OF_RANGE,
            Status::ANA_INACCESSIBLE,
            Status::NAMESPACE_NOT_READY,
        ] {
            for phase in [false, true] {
                let w = s.to_word(phase);
                assert_eq!(Status::from_word(w), s);
                assert_eq!(w & 1 == 1, phase);
            }
        }
        // LBA Out of Range with DNR: SC 0x80 at bits 8:1, DNR at bit 15.
        assert_eq!(Status::LBA_OUT_OF_RANGE.to_word(false), 0x8100);
    }
}
