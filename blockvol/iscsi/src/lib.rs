//! keel iSCSI target (RFC 7143).
//!
//! Will hold login and operational negotiation (with CHAP), SendTargets
//! discovery, full-feature sessions with CmdSN windows, R2T and Data-In/Out,
//! task management, and the SCSI block command set, mapping engine errors to
//! sense data in one place. It runs on the reactors of `keel-reactor` and talks
//! to volumes through the non-blocking handle API of `keel-blockvol`.
#![forbid(unsafe_code)]
