//! The Basic Header Segment (RFC 7143 §11.2.1).

use zerocopy::byteorder::big_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::PduError;

/// Bytes in a BHS.
pub const BHS_LEN: usize = 48;

/// Basic Header Segment, RFC 7143 §11.2.1. Bytes 20..48 are opcode-specific
/// and kept as seven big-endian words (`w20` is bytes 20..24, ...).
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
pub struct RawBhs {
    /// Bit 6: immediate delivery; bits 0-5: opcode.
    pub opcode: u8,
    /// Opcode-specific flags (bit 7 is usually Final).
    pub flags: u8,
    /// Opcode-specific.
    pub b2: u8,
    /// Opcode-specific.
    pub b3: u8,
    /// Length of the additional header segments in 4-byte words.
    pub total_ahs_len: u8,
    /// Data segment length in bytes (24 bits, without padding).
    pub data_segment_len: [u8; 3],
    /// LUN or opcode-specific (ISID/TSIH in login PDUs).
    pub lun: U64,
    /// Initiator Task Tag.
    pub itt: U32,
    /// Bytes 20..24.
    pub w20: U32,
    /// Bytes 24..28.
    pub w24: U32,
    /// Bytes 28..32.
    pub w28: U32,
    /// Bytes 32..36.
    pub w32: U32,
    /// Bytes 36..40.
    pub w36: U32,
    /// Bytes 40..44.
    pub w40: U32,
    /// Bytes 44..48.
    pub w44: U32,
}
const _: () = assert!(core::mem::size_of::<RawBhs>() == BHS_LEN);

/// Length padded to the next multiple of 4 (RFC 7143 §11.2.1).
pub fn padded_len(n: usize) -> usize {
    n.div_ceil(4) * 4
}

impl RawBhs {
    /// View the first 48 bytes of `buf` as a BHS.
    pub fn parse(buf: &[u8]) -> Result<RawBhs, PduError> {
        let b = buf.get(..BHS_LEN).ok_or(PduError::Short(buf.len()))?;
        RawBhs::read_from_bytes(b).map_err(|_| PduError::Short(buf.len()))
    }

    /// The 48 bytes.
    pub fn to_bytes(&self) -> [u8; BHS_LEN] {
        let mut out = [0u8; BHS_LEN];
        out.copy_from_slice(self.as_bytes());
        out
    }

    /// The opcode.
    pub fn op(&self) -> Opcode {
        Opcode::from(self.opcode & 0x3f)
    }

    /// The immediate-delivery bit.
    pub fn immediate(&self) -> bool {
        self.opcode & 0x40 != 0
    }

    /// The Final bit (bit 7 of byte 1).
    pub fn final_bit(&self) -> bool {
        self.flags & 0x80 != 0
    }

    /// Data segment length.
    pub fn data_len(&self) -> usize {
        let d = self.data_segment_len;
        (usize::from(d[0]) << 16) | (usize::from(d[1]) << 8) | usize::from(d[2])
    }

    /// Set the data segment length (at most 2^24 - 1).
    pub fn set_data_len(&mut self, n: usize) {
        let n = u32::try_from(n.min(0x00ff_ffff)).unwrap_or(0x00ff_ffff);
        let b = n.to_be_bytes();
        self.data_segment_len = [b[1], b[2], b[3]];
    }

    /// AHS length in bytes.
    pub fn ahs_len(&self) -> usize {
        usize::from(self.total_ahs_len) * 4
    }

    /// Bytes 8..14 (the ISID of login PDUs).
    pub fn isid(&self) -> [u8; 6] {
        let l = self.lun.get().to_be_bytes();
        [l[0], l[1], l[2], l[3], l[4], l[5]]
    }

    /// Bytes 14..16 (the TSIH of login PDUs).
    pub fn tsih(&self) -> u16 {
        let b = self.lun.get().to_be_bytes();
        u16::from_be_bytes([b[6], b[7]])
    }

    /// Set ISID and TSIH (bytes 8..16).
    pub fn set_isid_tsih(&mut self, isid: [u8; 6], tsih: u16) {
        let t = tsih.to_be_bytes();
        self.lun = U64::new(u64::from_be_bytes([
            isid[0], isid[1], isid[2], isid[3], isid[4], isid[5], t[0], t[1],
        ]));
    }

    /// The high 16 bits of word 20 (CID of login/logout PDUs).
    pub fn w20_hi16(&self) -> u16 {
        let b = self.w20.get().to_be_bytes();
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Bytes 40..42 and 42..44 as two 16-bit values.
    pub fn w40_halves(&self) -> (u16, u16) {
        let b = self.w40.get().to_be_bytes();
        (
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        )
    }
}

/// iSCSI opcodes (RFC 7143 §11.2.1.2). Unknown values are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// Initiator: NOP-Out.
    NopOut,
    /// Initiator: SCSI Command.
    ScsiCommand,
    /// Initiator: SCSI Task Management Function Request.
    TaskMgmtRequest,
    /// Initiator: Login Request.
    LoginRequest,
    /// Initiator: Text Request.
    TextRequest,
    /// Initiator: SCSI Data-Out.
    DataOut,
    /// Initiator: Logout Request.
    LogoutRequest,
    /// Initiator: SNACK Request.
    SnackRequest,
    /// Target: NOP-In.
    NopIn,
    /// Target: SCSI Response.
    ScsiResponse,
    /// Target: Task Management Function Response.
    TaskMgmtResponse,
    /// Target: Login Response.
    LoginResponse,
    /// Target: Text Response.
    TextResponse,
    /// Target: SCSI Data-In.
    DataIn,
    /// Target: Logout Response.
    LogoutResponse,
    /// Target: Ready To Transfer.
    R2t,
    /// Target: Asynchronous Message.
    AsyncMessage,
    /// Target: Reject.
    Reject,
    /// Anything else (vendor-specific or invalid).
    Unknown(u8),
}

impl From<u8> for Opcode {
    fn from(v: u8) -> Opcode {
        match v & 0x3f {
            0x00 => Opcode::NopOut,
            0x01 => Opcode::ScsiCommand,
            0x02 => Opcode::TaskMgmtRequest,
            0x03 => Opcode::LoginRequest,
            0x04 => Opcode::TextRequest,
            0x05 => Opcode::DataOut,
            0x06 => Opcode::LogoutRequest,
            0x10 => Opcode::SnackRequest,
            0x20 => Opcode::NopIn,
            0x21 => Opcode::ScsiResponse,
            0x22 => Opcode::TaskMgmtResponse,
            0x23 => Opcode::LoginResponse,
            0x24 => Opcode::TextResponse,
            0x25 => Opcode::DataIn,
            0x26 => Opcode::LogoutResponse,
            0x31 => Opcode::R2t,
            0x32 => Opcode::AsyncMessage,
            0x3f => Opcode::Reject,
            other => Opcode::Unknown(other),
        }
    }
}

impl Opcode {
    /// The 6-bit value.
    pub fn value(self) -> u8 {
        match self {
            Opcode::NopOut => 0x00,
            Opcode::ScsiCommand => 0x01,
            Opcode::TaskMgmtRequest => 0x02,
            Opcode::LoginRequest => 0x03,
            Opcode::TextRequest => 0x04,
            Opcode::DataOut => 0x05,
            Opcode::LogoutRequest => 0x06,
            Opcode::SnackRequest => 0x10,
            Opcode::NopIn => 0x20,
            Opcode::ScsiResponse => 0x21,
            Opcode::TaskMgmtResponse => 0x22,
            Opcode::LoginResponse => 0x23,
            Opcode::TextResponse => 0x24,
            Opcode::DataIn => 0x25,
            Opcode::LogoutResponse => 0x26,
            Opcode::R2t => 0x31,
            Opcode::AsyncMessage => 0x32,
            Opcode::Reject => 0x3f,
            Opcode::Unknown(v) => v & 0x3f,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_round_trip() {
        for v in 0u8..64 {
            assert_eq!(Opcode::from(v).value(), v);
        }
    }

    #[test]
    fn lengths() {
        let mut b = RawBhs::default();
        b.set_data_len(0x12_3456);
        assert_eq!(b.data_len(), 0x12_3456);
        assert_eq!(b.to_bytes()[5..8], [0x12, 0x34, 0x56]);
        b.total_ahs_len = 3;
        assert_eq!(b.ahs_len(), 12);
        assert_eq!(padded_len(5), 8);
        assert_eq!(padded_len(8), 8);
        assert_eq!(padded_len(0), 0);
        assert!(RawBhs::parse(&[0u8; 47]).is_err());
    }

    #[test]
    fn isid_tsih() {
        let mut b = RawBhs::default();
        b.set_isid_tsih([1, 2, 3, 4, 5, 6], 0x0708);
        assert_eq!(b.isid(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(b.tsih(), 0x0708);
        assert_eq!(b.to_bytes()[8..16], [1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
