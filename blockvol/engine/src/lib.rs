//! keel volume engine (`keel-blockvol`): one volume, one file.
//!
//! ```text
//!  reactor 1          reactor 2              (one Handle each)
//!  submit ─┐          submit ─┐
//!          v                  v
//!   admission + LSN/WAL-space allocation   (one short lock per volume)
//!          │                  │
//!   WAL write on the handle's executor: io_uring ring or std workers
//!          │  (FUA / write-through, nothing older in flight:
//!          │   one linked write+fdatasync)
//!          v
//!   dirty map (newest LSN wins) → written watermark → group commit
//!          │                                   (one fdatasync, many waiters)
//!          v
//!   poll_completions()  ◄── completion queue + eventfd
//!
//!   flusher thread: WAL records → extent region → sync → checkpoint in the
//!                   superblock → WAL space reclaimed
//! ```
//!
//! The file: two superblock slots, a WAL ring, the extent region
//! (`superblock.rs`, `wal.rs`). Durability contract (tested with the crash
//! simulator in `sim.rs` and with `kill -9`):
//! - a write's completion makes it visible to every later read;
//! - with the write cache on, a flush makes every write completed before it
//!   durable; a FUA write is durable at completion; with the cache off every
//!   write is;
//! - after a power loss every durable write is present and every block holds
//!   its old or its new content, never a mix or garbage.
//!
//! The targets see [`Volume`] (the device), [`Handle`] (a per-reactor
//! submission path polled for [`Completion`]s) and [`SyncHandle`] (a blocking
//! wrapper for tools and tests). Errors carry a stable [`ErrorKind`].

#![cfg_attr(not(feature = "backend-uring"), forbid(unsafe_code))]
#[cfg(not(any(feature = "backend-std", feature = "backend-uring")))]
compile_error!("keel-blockvol needs at least one of the features backend-std, backend-uring");

mod backend;
pub mod config;
pub mod dirty_map;
mod error;
mod flusher;
mod group_commit;
mod handle;
mod inspect;
mod notify;
pub mod recovery;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod stats;
pub mod storage;
pub mod superblock;
mod volume;
pub mod wal;

pub use config::{check_wal_size, default_wal_size, BackendMode, CreateOptions, VolumeConfig};
pub use error::{Error, ErrorKind, Result};
pub use handle::{Completion, Handle, Op, SleepCheck, SubmitError, SyncHandle};
pub use inspect::{inspect, inspect_storage, Inspection, SlotState};

/// Whether the io_uring backend writes cached WAL records on the submitting
/// thread right now ([`VolumeConfig::wal_inline_writes`]): the kernel's dirty
/// pages are below half its background write-back threshold.
#[cfg(feature = "backend-uring")]
pub fn inline_wal_writes_allowed() -> bool {
    backend::dirty_guard::inline_ok()
}
pub use stats::{StatsSnapshot, BATCH_BUCKETS, SYNC_BUCKETS_US};
pub use superblock::{DurabilityMode, Role, Superblock};
pub use volume::{format, Pressure, Volume, VolumeInfo, VolumeStatus};

/// Backends compiled into this build.
pub fn compiled_backends() -> &'static [&'static str] {
    &[
        #[cfg(feature = "backend-std")]
        "standard",
        #[cfg(feature = "backend-uring")]
        "io_uring",
    ]
}
