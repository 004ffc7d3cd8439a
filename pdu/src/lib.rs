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
//! - NVMe/TCP PDUs, the SQE and CQE, and identify and log structures come
//!   with the NVMe/TCP target.
#![forbid(unsafe_code)]

pub mod iscsi;
pub mod scsi;
