//! keel tools: the library behind the `keel` CLI.
//!
//! Today: parsing of human-friendly sizes and the rendering of volume
//! inspections, used by `keel volume create | inspect | check`. Cluster
//! administration and `keel dev` (a single-node volume server) join it as the
//! server and the master land.

pub mod size;
pub mod volume_cmd;
