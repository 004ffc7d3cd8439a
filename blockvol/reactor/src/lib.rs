//! keel reactors: the polled-mode runtime of the volume server.
//!
//! Will hold one reactor thread per core that owns its connections and its
//! io_uring and loops over socket I/O, engine completions, timers and
//! cross-reactor mailboxes; the poll modes (busy, adaptive, interrupt); and
//! the tiered buffer pool (4 KiB / 64 KiB / 256 KiB).
