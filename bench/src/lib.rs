//! keel benchmarks and load generators.
//!
//! Measures keel side by side with its peers in one run on the same machine
//! and storage: today the engine against the raw pwrite+fdatasync limit of
//! the file system (`keel-bench engine`); the NVMe/TCP and iSCSI load
//! generators (our own initiators on `keel-pdu`) and the comparison against
//! tgt and the kernel's nvmet join it with the targets. Criterion
//! micro-benchmarks live in `benches/`.

pub mod engine;
pub mod hist;
pub mod machine;
