//! iSCSI (RFC 7143): the Basic Header Segment, typed PDUs, digests and
//! text key=value segments.
//!
//! Every PDU starts with a 48-byte BHS ([`RawBhs`], §11.2.1), then optional
//! additional header segments (AHS), an optional header digest, the data
//! segment padded to 4 bytes, and an optional data digest. [`parse`] reads a
//! BHS into a [`Pdu`]; the `encode` methods of each PDU type write one.

mod bhs;
pub mod digest;
mod pdu;
pub mod text;

pub use bhs::{padded_len, Opcode, RawBhs, BHS_LEN};
pub use pdu::*;

/// Errors from parsing iSCSI wire data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// Fewer bytes than a BHS.
    #[error("Short header: {0} bytes, a BHS has 48")]
    Short(usize),
    /// A length field that cannot be right.
    #[error("Bad length: {0}")]
    BadLength(&'static str),
    /// A text segment that is not `key=value\0` pairs within limits.
    #[error("Bad text segment: {0}")]
    BadText(&'static str),
}
