//! Engine errors: one enum, with a stable [`ErrorKind`] for control flow
//! across crate boundaries (the targets map kinds to sense data and NVMe
//! status in one place each).

use std::io;

/// What went wrong, for control flow. New kinds may be added.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A malformed request or setting (zero length, misaligned buffer, ...).
    InvalidArgument,
    /// An LBA range past the end of the volume.
    OutOfRange,
    /// The file is not a keel volume (wrong magic).
    NotAVolume,
    /// The on-disk format version is not one this build reads.
    UnsupportedVersion,
    /// On-disk metadata failed validation (checksum, geometry, enum values).
    Corrupt,
    /// The file is shorter than its superblock says.
    Truncated,
    /// The WAL stayed above its hard watermark past the admission bound.
    WalFull,
    /// The volume is closed or closing.
    Closed,
    /// An earlier write-back failed; the volume refuses writes until reopened.
    Failed,
    /// The requested I/O backend is not compiled in or not usable here.
    BackendUnavailable,
    /// An operating-system I/O error.
    Io,
}

/// An engine error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// See [`ErrorKind::InvalidArgument`].
    #[error("Invalid argument: {0}")]
    InvalidArgument(String),
    /// See [`ErrorKind::OutOfRange`].
    #[error("LBA range {lba}+{blocks} is past the end of the volume ({capacity} blocks)")]
    OutOfRange {
        /// First block of the request.
        lba: u64,
        /// Blocks in the request.
        blocks: u64,
        /// Blocks in the volume.
        capacity: u64,
    },
    /// See [`ErrorKind::NotAVolume`].
    #[error("Not a keel volume (bad magic)")]
    NotAVolume,
    /// See [`ErrorKind::UnsupportedVersion`].
    #[error("Unsupported volume format version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// Version on disk.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// See [`ErrorKind::Corrupt`].
    #[error("Corrupt volume: {0}")]
    Corrupt(String),
    /// See [`ErrorKind::Truncated`].
    #[error("Volume files hold {actual} bytes, the superblock needs {expected}")]
    Truncated {
        /// Bytes the superblock requires.
        expected: u64,
        /// Bytes in the file.
        actual: u64,
    },
    /// See [`ErrorKind::WalFull`].
    #[error("WAL full: no space freed within {waited_ms} ms")]
    WalFull {
        /// How long the write waited for the flusher.
        waited_ms: u64,
    },
    /// See [`ErrorKind::Closed`].
    #[error("Volume is closed")]
    Closed,
    /// See [`ErrorKind::Failed`].
    #[error("Volume failed after an I/O error ({0}); reopen it to recover")]
    Failed(String),
    /// See [`ErrorKind::BackendUnavailable`].
    #[error("I/O backend unavailable: {0}")]
    BackendUnavailable(String),
    /// See [`ErrorKind::Io`].
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::OutOfRange { .. } => ErrorKind::OutOfRange,
            Error::NotAVolume => ErrorKind::NotAVolume,
            Error::UnsupportedVersion { .. } => ErrorKind::UnsupportedVersion,
            Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::Truncated { .. } => ErrorKind::Truncated,
            Error::WalFull { .. } => ErrorKind::WalFull,
            Error::Closed => ErrorKind::Closed,
            Error::Failed(_) => ErrorKind::Failed,
            Error::BackendUnavailable(_) => ErrorKind::BackendUnavailable,
            Error::Io(_) => ErrorKind::Io,
        }
    }

    /// A copy of this error for another waiter of the same failed operation
    /// (one fdatasync failure fails every write it covered).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::InvalidArgument(s) => Error::InvalidArgument(s.clone()),
            Error::OutOfRange {
                lba,
                blocks,
                capacity,
            } => Error::OutOfRange {
                lba: *lba,
                blocks: *blocks,
                capacity: *capacity,
            },
            Error::NotAVolume => Error::NotAVolume,
            Error::UnsupportedVersion { found, supported } => Error::UnsupportedVersion {
                found: *found,
                supported: *supported,
            },
            Error::Corrupt(s) => Error::Corrupt(s.clone()),
            Error::Truncated { expected, actual } => Error::Truncated {
                expected: *expected,
                actual: *actual,
            },
            Error::WalFull { waited_ms } => Error::WalFull {
                waited_ms: *waited_ms,
            },
            Error::Closed => Error::Closed,
            Error::Failed(s) => Error::Failed(s.clone()),
            Error::BackendUnavailable(s) => Error::BackendUnavailable(s.clone()),
            Error::Io(e) => Error::Io(match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            }),
        }
    }
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
