//! NVMe over Fabrics commands (NVMe-oF 1.1 §3): the Connect command's
//! fields in the SQE, its 1024-byte data, and the Property Get/Set fields.
//! Offsets checked against Linux's `struct nvmf_connect_command`,
//! `nvmf_connect_data` and `nvmf_property_{get,set}_command`.

use zerocopy::byteorder::little_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::Sqe;

/// Fabrics command opcode.
pub const OPCODE: u8 = 0x7f;

/// Fabrics command types (FCTYPE).
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
    /// Authentication Send (reserved for later).
    pub const AUTH_SEND: u8 = 0x05;
    /// Authentication Receive (reserved for later).
    pub const AUTH_RECEIVE: u8 = 0x06;
    /// Disconnect.
    pub const DISCONNECT: u8 = 0x08;
}

/// Connect attribute: SQ flow control disabled.
pub const CATTR_DISABLE_SQFLOW: u8 = 0x04;

/// The Connect command's fields, decoded from an SQE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect {
    /// Record format (0).
    pub recfmt: u16,
    /// Queue ID (0: admin).
    pub qid: u16,
    /// Submission queue size, 0-based.
    pub sqsize: u16,
    /// Connect attributes.
    pub cattr: u8,
    /// Keep-alive timeout in ms (admin queue).
    pub kato: u32,
}

impl Connect {
    /// Decode from a Connect SQE (CDW10: RECFMT, QID; CDW11: SQSIZE,
    /// CATTR; CDW12: KATO).
    pub fn from_sqe(s: &Sqe) -> Connect {
        let cdw10 = s.cdw10.get().to_le_bytes();
        let cdw11 = s.cdw11.get().to_le_bytes();
        Connect {
            recfmt: u16::from_le_bytes([cdw10[0], cdw10[1]]),
            qid: u16::from_le_bytes([cdw10[2], cdw10[3]]),
            sqsize: u16::from_le_bytes([cdw11[0], cdw11[1]]),
            cattr: cdw11[2],
            kato: s.cdw12.get(),
        }
    }
}

/// Connect data (1024 bytes).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct ConnectData {
    /// Host identifier.
    pub hostid: [u8; 16],
    /// Controller ID (0xffff: dynamic, any).
    pub cntlid: U16,
    /// Reserved.
    pub rsvd18: [u8; 238],
    /// Subsystem NQN, NUL-terminated.
    pub subnqn: [u8; 256],
    /// Host NQN, NUL-terminated.
    pub hostnqn: [u8; 256],
    /// Reserved.
    pub rsvd768: [u8; 256],
}
const _: () = assert!(core::mem::size_of::<ConnectData>() == 1024);

fn nul_str(b: &[u8]) -> Option<&str> {
    let end = b.iter().position(|&c| c == 0)?;
    std::str::from_utf8(&b[..end]).ok()
}

impl ConnectData {
    /// Decode; `None` if shorter than 1024 bytes.
    pub fn parse(b: &[u8]) -> Option<ConnectData> {
        ConnectData::read_from_bytes(b.get(..1024)?).ok()
    }

    /// The subsystem NQN (`None` without a NUL or not UTF-8).
    pub fn subnqn(&self) -> Option<&str> {
        nul_str(&self.subnqn)
    }

    /// The host NQN.
    pub fn hostnqn(&self) -> Option<&str> {
        nul_str(&self.hostnqn)
    }
}

/// Property Get/Set fields: size (4 or 8 bytes), offset, value (Set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Property {
    /// 8-byte access (ATTRIB bit 0).
    pub size8: bool,
    /// Register offset.
    pub offset: u32,
    /// Value to set.
    pub value: u64,
}

impl Property {
    /// Decode from a Property Get/Set SQE.
    pub fn from_sqe(s: &Sqe) -> Property {
        Property {
            size8: s.cdw10.get() & 1 != 0,
            offset: s.cdw11.get(),
            value: u64::from(s.cdw12.get()) | (u64::from(s.cdw13.get()) << 32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_fields_at_linux_offsets() {
        let mut b = [0u8; 64];
        b[0] = OPCODE;
        b[4] = fctype::CONNECT;
        b[42..44].copy_from_slice(&3u16.to_le_bytes()); // qid
        b[44..46].copy_from_slice(&127u16.to_le_bytes()); // sqsize
        b[46] = CATTR_DISABLE_SQFLOW;
        b[48..52].copy_from_slice(&5000u32.to_le_bytes()); // kato
        let s = Sqe::parse(&b).unwrap();
        assert_eq!(s.fctype(), fctype::CONNECT);
        let c = Connect::from_sqe(&s);
        assert_eq!(
            (c.recfmt, c.qid, c.sqsize, c.cattr, c.kato),
            (0, 3, 127, 4, 5000)
        );
        let mut d = vec![0u8; 1024];
        d[16..18].copy_from_slice(&0xffffu16.to_le_bytes());
        d[256..263].copy_from_slice(b"nqn.sub");
        d[512..520].copy_from_slice(b"nqn.host");
        let cd = ConnectData::parse(&d).unwrap();
        assert_eq!(cd.cntlid.get(), 0xffff);
        assert_eq!(cd.subnqn(), Some("nqn.sub"));
        assert_eq!(cd.hostnqn(), Some("nqn.host"));
        assert!(ConnectData::parse(&d[..1000]).is_none());
        let mut nonul = d.clone();
        nonul[256..512].fill(b'x');
        assert_eq!(ConnectData::parse(&nonul).unwrap().subnqn(), None);
    }
}
