//! keel iSCSI target (RFC 7143).
//!
//! Will hold login (security and operational negotiation, CHAP),
//! SendTargets discovery, full-feature sessions with CmdSN windows, R2T and
//! Data-In/Out, task management, and the SCSI block command set, mapping
//! engine errors to sense data in one place. It runs on the reactors of
//! `keel-reactor` and talks to volumes through the non-blocking handle API
//! of `keel-blockvol`.
//!
//! Built so far: [`params`], the sans-I/O negotiation of the operational
//! text keys (RFC 7143 §13), tested on its own.
#![forbid(unsafe_code)]

pub mod params;
