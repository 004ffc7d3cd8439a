//! keel master: the control plane.
//!
//! Will keep the registry of volumes, servers and replicas in an embedded
//! store, place volumes, grant write leases, bump epochs on every role change
//! and fail volumes over between replicas. It never links the data path.
#![forbid(unsafe_code)]
