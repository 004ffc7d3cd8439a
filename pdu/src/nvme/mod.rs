//! NVMe over TCP (NVM Express TCP Transport Specification 1.0) and the NVMe
//! submission and completion queue entries (NVMe Base Specification 2.0,
//! §4.2 and §4.6).
//!
//! Every NVMe/TCP PDU starts with an 8-byte common header ([`CommonHeader`]);
//! [`parse_header`] validates it and decodes the PDU-specific header that
//! follows into a [`TcpPdu`]. All multi-byte fields are little endian.

pub mod admin;
pub mod fabrics;
mod queue;
mod tcp;

pub use queue::{Cqe, Sgl, Sqe, Status, CQE_LEN, SQE_LEN};
pub use tcp::*;
