//! keel replication: WAL shipping as a sans-I/O state machine.
//!
//! Events in (WAL records appended, barrier replies, connection changes,
//! epochs), actions out (send these LSNs, start catch-up, mark a replica
//! NeedsRebuild), in the raft-rs `ready()` / `advance()` shape, so it can be
//! tested with a simulated lossy network. Driven by the volume server in a
//! later wave.
#![forbid(unsafe_code)]
