//! keel volume server (`keel-volume`).
//!
//! Will wire the reactors, the protocol targets and the engine together:
//! configuration, volume hosting, the admin HTTP endpoint with status and
//! Prometheus metrics, and the agent that talks to the master. tokio runs only
//! on its non-reactor threads.
#![forbid(unsafe_code)]
