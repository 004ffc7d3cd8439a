//! keel NVMe/TCP target.
//!
//! Will hold the discovery subsystem, one NVM subsystem per volume, admin and
//! I/O queues over several connections of an association, Identify, features,
//! log pages, Keep Alive, AER, ANA, and the mapping of engine errors to NVMe
//! status. Wire formats come from `keel-pdu`; it runs on `keel-reactor` and
//! drives volumes through the non-blocking handle API of `keel-blockvol`.
#![forbid(unsafe_code)]
