//! keel wire formats.
//!
//! Parsing and building of what goes over the wire, and nothing else: no I/O,
//! no allocation on the parse path, no `unsafe`. Raw structs are `#[repr(C)]`
//! zerocopy types with byte-order field types; parsing turns them into
//! validated domain types, and unknown opcodes are data, never panics.
//!
//! - [`iscsi`]: the Basic Header Segment and every PDU of RFC 7143, header
//!   and data digests, and login/text key=value segments.
//! - [`scsi`]: CDBs of the SCSI block command set a Linux or QEMU initiator
//!   sends, and sense data.
//! - [`nvme`]: NVMe/TCP PDU headers (common header, ICReq/ICResp, capsules,
//!   H2C/C2H data, R2T, TermReq) and the NVMe SQE and CQE; identify and log
//!   structures come with the NVMe/TCP target.
#![forbid(unsafe_code)]

pub mod iscsi;
pub mod nvme;
pub mod scsi;
pub mod segment;
