//! keel benchmarks and load generators (`keel-bench`).
//!
//! Measures keel side by side with its reference in one run on the same
//! machine and storage, and records the machine with the numbers:
//!
//! ```text
//!  keel-bench engine   raw pwrite+fdatasync ─┐ interleaved, N runs,
//!                      standard backend  ────┤ per-metric medians
//!                      io_uring backend  ────┘ → table or one JSON object
//!  keel-bench targets  keel NVMe/TCP, keel iSCSI and tgt, several clients
//!  keel-bench sockets  keel on epoll vs io_uring socket I/O
//!  keel-bench floor    the loopback QD1 ceiling: a bare echo thread
//! ```
//!
//! Today: the engine against the raw pwrite+fdatasync limit of the file
//! system (`engine.rs` measures, `report.rs` checks the goals and renders,
//! `hist.rs` keeps latency samples, `machine.rs` describes the machine and
//! the file system). Criterion micro-benchmarks (parse, WAL append,
//! dirty-map lookup) will live in `benches/`.

pub mod engine;
pub mod floor;
pub mod hist;
pub mod iscsi_load;
pub mod machine;
pub mod matrix;
pub mod nvmf_client;
pub mod plots;
pub mod report;
pub mod sockets;
pub mod targets;
