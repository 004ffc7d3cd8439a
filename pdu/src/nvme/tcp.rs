//! NVMe/TCP PDU headers (NVMe/TCP Transport Specification 1.0, §3.6).

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::queue::{Cqe, Sqe, CQE_LEN, SQE_LEN};

/// Bytes in the common header.
pub const CH_LEN: usize = 8;
/// ICReq / ICResp header length.
pub const IC_LEN: usize = 128;
/// Header length of CapsuleCmd (common header + SQE).
pub const CAPSULE_CMD_HLEN: usize = CH_LEN + SQE_LEN;
/// Header length of CapsuleResp (common header + CQE).
pub const CAPSULE_RESP_HLEN: usize = CH_LEN + CQE_LEN;
/// Header length of H2CData, C2HData, R2T and the TermReqs.
pub const DATA_HLEN: usize = 24;

/// Header digest present.
pub const FLAG_HDGST: u8 = 0x01;
/// Data digest present.
pub const FLAG_DDGST: u8 = 0x02;
/// Last data PDU of a transfer (H2CData, C2HData).
pub const FLAG_LAST_PDU: u8 = 0x04;
/// C2HData: the command succeeded; no CapsuleResp follows.
pub const FLAG_SUCCESS: u8 = 0x08;

/// PDU types (§3.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PduType {
    /// Initialize Connection Request.
    IcReq,
    /// Initialize Connection Response.
    IcResp,
    /// Host to Controller Terminate Connection Request.
    H2cTermReq,
    /// Controller to Host Terminate Connection Request.
    C2hTermReq,
    /// Command Capsule.
    CapsuleCmd,
    /// Response Capsule.
    CapsuleResp,
    /// Host to Controller Data.
    H2cData,
    /// Controller to Host Data.
    C2hData,
    /// Ready to Transfer.
    R2t,
    /// Anything else.
    Unknown(u8),
}

impl From<u8> for PduType {
    fn from(v: u8) -> PduType {
        match v {
            0x00 => PduType::IcReq,
            0x01 => PduType::IcResp,
            0x02 => PduType::H2cTermReq,
            0x03 => PduType::C2hTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2cData,
            0x07 => PduType::C2hData,
            0x09 => PduType::R2t,
            other => PduType::Unknown(other),
        }
    }
}

impl PduType {
    /// The wire value.
    pub fn value(self) -> u8 {
        match self {
            PduType::IcReq => 0x00,
            PduType::IcResp => 0x01,
            PduType::H2cTermReq => 0x02,
            PduType::C2hTermReq => 0x03,
            PduType::CapsuleCmd => 0x04,
            PduType::CapsuleResp => 0x05,
            PduType::H2cData => 0x06,
            PduType::C2hData => 0x07,
            PduType::R2t => 0x09,
            PduType::Unknown(v) => v,
        }
    }

    /// The header length the specification fixes for this type.
    pub fn hlen(self) -> Option<usize> {
        Some(match self {
            PduType::IcReq | PduType::IcResp => IC_LEN,
            PduType::CapsuleCmd => CAPSULE_CMD_HLEN,
            PduType::CapsuleResp => CAPSULE_RESP_HLEN,
            PduType::H2cTermReq
            | PduType::C2hTermReq
            | PduType::H2cData
            | PduType::C2hData
            | PduType::R2t => DATA_HLEN,
            PduType::Unknown(_) => return None,
        })
    }
}

/// Common header (§3.6.2.1).
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
pub struct CommonHeader {
    /// PDU type.
    pub pdu_type: u8,
    /// Flags.
    pub flags: u8,
    /// Header length.
    pub hlen: u8,
    /// PDU data offset (0: no data).
    pub pdo: u8,
    /// Total PDU length: header, digests, padding and data.
    pub plen: U32,
}
const _: () = assert!(core::mem::size_of::<CommonHeader>() == CH_LEN);

/// ICReq (§3.6.2.2) and ICResp (§3.6.2.3) share their layout: PFV, HPDA or
/// CPDA, digest enables, MAXR2T or MAXH2CDATA.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct IcPdu {
    /// Common header.
    pub ch: CommonHeader,
    /// PDU format version (0).
    pub pfv: U16,
    /// HPDA (ICReq) or CPDA (ICResp): data alignment in dwords, 0's based.
    pub pda: u8,
    /// Bit 0 header digest, bit 1 data digest.
    pub dgst: u8,
    /// MAXR2T (ICReq, 0's based) or MAXH2CDATA (ICResp, bytes).
    pub max: U32,
    /// Reserved.
    pub rsvd: [u8; 112],
}
const _: () = assert!(core::mem::size_of::<IcPdu>() == IC_LEN);

/// Header of H2CData, C2HData and R2T (§3.6.2.6-8): CCCID, TTAG (not in
/// C2HData), offset and length.
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
pub struct DataPdu {
    /// Common header.
    pub ch: CommonHeader,
    /// Command capsule CID.
    pub cccid: U16,
    /// Transfer tag (H2CData, R2T).
    pub ttag: U16,
    /// Data offset (DATAO / R2TO).
    pub offset: U32,
    /// Data length (DATAL / R2TL).
    pub length: U32,
    /// Reserved.
    pub rsvd: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<DataPdu>() == DATA_HLEN);

/// H2CTermReq / C2HTermReq header (§3.6.2.4-5).
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
pub struct TermReq {
    /// Common header.
    pub ch: CommonHeader,
    /// Fatal error status.
    pub fes: U16,
    /// Fatal error information (e.g. the offset of the bad field).
    pub fei: U32,
    /// Reserved.
    pub rsvd: [u8; 10],
}
const _: () = assert!(core::mem::size_of::<TermReq>() == DATA_HLEN);

/// Fatal error status values of a TermReq (§3.6.2.4).
pub mod fes {
    /// Invalid PDU header field.
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    /// PDU sequence error.
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    /// Header digest error.
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    /// Data transfer out of range.
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    /// R2T limit exceeded / H2C data exceeds MAXH2CDATA.
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    /// Unsupported parameter.
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Why a header was refused (the FES to answer with is
/// [`HeaderError::fes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer bytes than the header needs (read more).
    #[error("Need {0} bytes")]
    Incomplete(usize),
    /// A header field contradicts the specification.
    #[error("Invalid {field} in PDU type {pdu_type:#04x}")]
    Invalid {
        /// PDU type.
        pdu_type: u8,
        /// Field name.
        field: &'static str,
        /// Byte offset of the field (FEI).
        offset: u32,
    },
}

impl HeaderError {
    /// FES and FEI of the TermReq this error deserves.
    pub fn fes(&self) -> (u16, u32) {
        match *self {
            HeaderError::Incomplete(_) => (fes::PDU_SEQUENCE_ERROR, 0),
            HeaderError::Invalid { offset, .. } => (fes::INVALID_HEADER_FIELD, offset),
        }
    }
}

/// A decoded PDU header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpPdu {
    /// ICReq.
    IcReq(IcPdu),
    /// ICResp.
    IcResp(IcPdu),
    /// H2CTermReq.
    H2cTermReq(TermReq),
    /// C2HTermReq.
    C2hTermReq(TermReq),
    /// CapsuleCmd with its SQE.
    CapsuleCmd(CommonHeader, Sqe),
    /// CapsuleResp with its CQE.
    CapsuleResp(CommonHeader, Cqe),
    /// H2CData.
    H2cData(DataPdu),
    /// C2HData.
    C2hData(DataPdu),
    /// R2T.
    R2t(DataPdu),
}

/// Read the common header; `Incomplete` until 8 bytes are there.
pub fn parse_common(b: &[u8]) -> Result<CommonHeader, HeaderError> {
    let h = b.get(..CH_LEN).ok_or(HeaderError::Incomplete(CH_LEN))?;
    CommonHeader::read_from_bytes(h).map_err(|_| HeaderError::Incomplete(CH_LEN))
}

/// Validate the common header at the start of `b` and decode the whole
/// PDU-specific header. `digests` says whether header digests were
/// negotiated (then HDGSTF must be set on every PDU but the ICs).
pub fn parse_header(b: &[u8], header_digest: bool) -> Result<TcpPdu, HeaderError> {
    let ch = parse_common(b)?;
    let t = PduType::from(ch.pdu_type);
    let bad = |field, offset| HeaderError::Invalid {
        pdu_type: ch.pdu_type,
        field,
        offset,
    };
    let hlen = t.hlen().ok_or(bad("PDU-Type", 0))?;
    if usize::from(ch.hlen) != hlen {
        return Err(bad("HLEN", 2));
    }
    let ic = matches!(t, PduType::IcReq | PduType::IcResp);
    let hd = if header_digest && !ic { 4 } else { 0 };
    if !ic && header_digest != (ch.flags & FLAG_HDGST != 0) {
        return Err(bad("HDGSTF", 1));
    }
    let plen = usize::try_from(ch.plen.get()).map_err(|_| bad("PLEN", 4))?;
    if plen < hlen + hd {
        return Err(bad("PLEN", 4));
    }
    if ch.pdo != 0 && (usize::from(ch.pdo) < hlen + hd || usize::from(ch.pdo) > plen) {
        return Err(bad("PDO", 3));
    }
    if ic && plen != IC_LEN {
        return Err(bad("PLEN", 4));
    }
    let h = b.get(..hlen).ok_or(HeaderError::Incomplete(hlen))?;
    let inc = || HeaderError::Incomplete(hlen);
    Ok(match t {
        PduType::IcReq => TcpPdu::IcReq(IcPdu::read_from_bytes(h).map_err(|_| inc())?),
        PduType::IcResp => TcpPdu::IcResp(IcPdu::read_from_bytes(h).map_err(|_| inc())?),
        PduType::H2cTermReq => TcpPdu::H2cTermReq(TermReq::read_from_bytes(h).map_err(|_| inc())?),
        PduType::C2hTermReq => TcpPdu::C2hTermReq(TermReq::read_from_bytes(h).map_err(|_| inc())?),
        PduType::CapsuleCmd => TcpPdu::CapsuleCmd(ch, Sqe::parse(&h[CH_LEN..]).ok_or_else(inc)?),
        PduType::CapsuleResp => TcpPdu::CapsuleResp(ch, Cqe::parse(&h[CH_LEN..]).ok_or_else(inc)?),
        PduType::H2cData => TcpPdu::H2cData(DataPdu::read_from_bytes(h).map_err(|_| inc())?),
        PduType::C2hData => TcpPdu::C2hData(DataPdu::read_from_bytes(h).map_err(|_| inc())?),
        PduType::R2t => TcpPdu::R2t(DataPdu::read_from_bytes(h).map_err(|_| inc())?),
        PduType::Unknown(_) => return Err(bad("PDU-Type", 0)),
    })
}

/// A common header for a PDU of type `t` with `data` bytes of data at
/// offset `pdo` (0: none) and the given digests.
pub fn common_header(
    t: PduType,
    data: usize,
    hdgst: bool,
    ddgst: bool,
    pdo: usize,
) -> CommonHeader {
    let hlen = t.hlen().unwrap_or(CH_LEN);
    let hd = if hdgst { 4 } else { 0 };
    let start = if data > 0 {
        pdo.max(hlen + hd)
    } else {
        hlen + hd
    };
    let dd = if ddgst && data > 0 { 4 } else { 0 };
    let plen = if data > 0 {
        start + data + dd
    } else {
        hlen + hd
    };
    CommonHeader {
        pdu_type: t.value(),
        flags: if hdgst { FLAG_HDGST } else { 0 } | if ddgst && data > 0 { FLAG_DDGST } else { 0 },
        hlen: u8::try_from(hlen).unwrap_or(u8::MAX),
        pdo: if data > 0 {
            u8::try_from(start).unwrap_or(u8::MAX)
        } else {
            0
        },
        plen: U32::new(u32::try_from(plen).unwrap_or(u32::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn icreq() -> [u8; IC_LEN] {
        let mut b = [0u8; IC_LEN];
        b[0] = 0x00;
        b[2] = 128;
        b[4..8].copy_from_slice(&128u32.to_le_bytes());
        b[11] = 0x03; // both digests
        b[12..16].copy_from_slice(&3u32.to_le_bytes());
        b
    }

    #[test]
    fn icreq_as_linux_sends_it() {
        let Ok(TcpPdu::IcReq(ic)) = parse_header(&icreq(), false) else {
            panic!()
        };
        assert_eq!((ic.pfv.get(), ic.pda, ic.dgst, ic.max.get()), (0, 0, 3, 3));
        let mut bad = icreq();
        bad[2] = 127;
        assert_eq!(
            parse_header(&bad, false).unwrap_err().fes(),
            (fes::INVALID_HEADER_FIELD, 2)
        );
        assert!(matches!(
            parse_header(&icreq()[..100], false),
            Err(HeaderError::Incomplete(128))
        ));
    }

    #[test]
    fn capsule_with_in_capsule_data() {
        let ch = common_header(PduType::CapsuleCmd, 4096, true, true, 0);
        assert_eq!(
            (ch.hlen, ch.pdo, ch.plen.get()),
            (72, 76, 72 + 4 + 4096 + 4)
        );
        let mut b = ch.as_bytes().to_vec();
        let sqe = Sqe {
            opcode: 0x01,
            cid: U16::new(9),
            ..Sqe::default()
        };
        b.extend_from_slice(&sqe.to_bytes());
        let Ok(TcpPdu::CapsuleCmd(_, s)) = parse_header(&b, true) else {
            panic!()
        };
        assert_eq!((s.opcode, s.cid.get()), (1, 9));
        // Header digests negotiated but HDGSTF clear: invalid.
        assert!(parse_header(&b, false).is_err());
    }

    #[test]
    fn data_pdus() {
        let ch = common_header(PduType::C2hData, 8192, false, false, 0);
        let d = DataPdu {
            ch,
            cccid: U16::new(5),
            ttag: U16::new(0),
            offset: U32::new(0),
            length: U32::new(8192),
            rsvd: [0; 4],
        };
        let Ok(TcpPdu::C2hData(got)) = parse_header(d.as_bytes(), false) else {
            panic!()
        };
        assert_eq!(got, d);
        let mut r2t = d;
        r2t.ch = common_header(PduType::R2t, 0, false, false, 0);
        assert_eq!(r2t.ch.plen.get(), 24);
        assert!(matches!(
            parse_header(r2t.as_bytes(), false),
            Ok(TcpPdu::R2t(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..160), hd in any::<bool>()) {
            let _ = parse_header(&bytes, hd);
        }

        #[test]
        fn valid_headers_parse(t in prop_oneof![Just(PduType::CapsuleCmd), Just(PduType::CapsuleResp), Just(PduType::H2cData), Just(PduType::C2hData), Just(PduType::R2t)],
                               data in 0usize..65536, hd in any::<bool>(), dd in any::<bool>(), fill in any::<u8>()) {
            let data = if matches!(t, PduType::R2t) { 0 } else { data };
            let ch = common_header(t, data, hd, dd, 0);
            let mut b = ch.as_bytes().to_vec();
            b.resize(usize::from(ch.hlen), fill);
            let got = parse_header(&b, hd);
            prop_assert!(got.is_ok(), "{:?} {:?}", ch, got);
        }
    }
}
