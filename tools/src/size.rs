//! Sizes as people write them (shared with the volume server).

pub use keel_volume::size::{format_size, parse_size};
