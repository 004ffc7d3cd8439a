//! keel iSCSI target (RFC 7143).
//!
//! - [`params`]: sans-I/O negotiation of the operational text keys.
//! - [`chap`]: CHAP (MD5), one-way and mutual.
//! - [`lun`]: the SCSI block device over an engine volume (SPC-4/SBC-3
//!   commands, sense data, persistent and SPC-2 reservations, unit
//!   attentions).
//! - [`target`]: targets, portal settings, the session table.
//! - [`session`]: one connection as a reactor protocol: login, discovery,
//!   full-feature phase, R2T/Data-Out, Data-In, NOP, task management.
#![forbid(unsafe_code)]

pub mod chap;
pub mod lun;
pub mod params;
pub mod ratelimit;
pub mod session;
pub mod target;

pub use session::IscsiConn;
pub use target::{PortalSpec, Registry, Target, TargetSpec};
