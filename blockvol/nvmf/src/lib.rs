//! keel NVMe/TCP target.
//!
//! - [`identify`]: Identify data, log pages (SMART, ANA, changed namespaces,
//!   discovery) and properties.
//! - [`subsystem`]: NVM subsystems (one volume each, namespace 1, one ANA
//!   group), controllers (associations) with keep-alive and asynchronous
//!   events, the discovery service.
//! - [`conn`]: one connection (queue) as a reactor protocol.
#![forbid(unsafe_code)]

pub mod conn;
pub mod identify;
pub mod subsystem;

pub use conn::NvmeConn;
pub use subsystem::{NvmfTarget, PortalSpec, Subsystem, SubsystemSpec, DISCOVERY_NQN};
