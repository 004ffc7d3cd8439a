//! keel C ABI: the only `extern "C"` surface of keel (`libkeel_ffi.so`,
//! header `ffi/include/keel.h`, kept by hand and tested from C by
//! `tests/c_abi.rs`).
//!
//! The engine's asynchronous API as C functions: a volume, handles (one per
//! thread), `keel_submit_*` that return at once, `keel_poll` for
//! completions (or `keel_wait` / the handle's eventfd to sleep), blocking
//! conveniences, and status codes mirroring the engine's error kinds.
//!
//! Buffers: the engine takes owned buffers, so a write copies the caller's
//! data in at submit, and a read copies into the caller's buffer when its
//! completion is polled (the caller's buffer must stay valid until then).
//! Zero copies across the ABI would need the engine to accept borrowed
//! buffers; the copy costs about 0.3 µs per 4 KiB here.
//!
//! Every entry point catches panics (returning `KEEL_EPANIC`) and checks
//! its pointers (`KEEL_EINVAL`); nothing unwinds into C.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use keel_blockvol::{
    BackendMode, CreateOptions, Error, ErrorKind, Handle, Op, Volume, VolumeConfig,
};

/// Success.
pub const KEEL_OK: c_int = 0;
/// Invalid argument (null pointer, bad length, unknown backend, busy tag).
pub const KEEL_EINVAL: c_int = -1;
/// LBA range past the end of the volume.
pub const KEEL_ERANGE: c_int = -2;
/// Not a keel volume.
pub const KEEL_ENOTVOL: c_int = -3;
/// Unsupported on-disk version.
pub const KEEL_EVERSION: c_int = -4;
/// Corrupt metadata.
pub const KEEL_ECORRUPT: c_int = -5;
/// Files shorter than the superblock says.
pub const KEEL_ETRUNC: c_int = -6;
/// The WAL stayed full past the admission bound.
pub const KEEL_EWALFULL: c_int = -7;
/// The volume is closed.
pub const KEEL_ECLOSED: c_int = -8;
/// The volume failed after an I/O error.
pub const KEEL_EFAILED: c_int = -9;
/// The I/O backend is not compiled in or not usable.
pub const KEEL_EBACKEND: c_int = -10;
/// Operating-system I/O error.
pub const KEEL_EIO: c_int = -11;
/// A panic inside keel (a bug); the object may be unusable.
pub const KEEL_EPANIC: c_int = -12;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = c);
}

fn code(e: &Error) -> c_int {
    set_error(&e.to_string());
    match e.kind() {
        ErrorKind::InvalidArgument => KEEL_EINVAL,
        ErrorKind::OutOfRange => KEEL_ERANGE,
        ErrorKind::NotAVolume => KEEL_ENOTVOL,
        ErrorKind::UnsupportedVersion => KEEL_EVERSION,
        ErrorKind::Corrupt => KEEL_ECORRUPT,
        ErrorKind::Truncated => KEEL_ETRUNC,
        ErrorKind::WalFull => KEEL_EWALFULL,
        ErrorKind::Closed => KEEL_ECLOSED,
        ErrorKind::Failed => KEEL_EFAILED,
        ErrorKind::BackendUnavailable => KEEL_EBACKEND,
        // Io, and kinds a newer engine may add.
        _ => KEEL_EIO,
    }
}

fn guard(f: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(c) => c,
        Err(_) => {
            set_error("panic inside keel");
            KEEL_EPANIC
        }
    }
}

fn invalid(msg: &str) -> c_int {
    set_error(msg);
    KEEL_EINVAL
}

/// An open volume (opaque to C).
pub struct KeelVolume {
    vol: Volume,
}

/// A submission handle (opaque to C); one thread at a time.
pub struct KeelHandle {
    h: Handle,
    /// Reads in flight: where their data goes.
    reads: HashMap<u64, (*mut u8, usize)>,
    done: VecDeque<(u64, c_int)>,
}

/// Geometry of a volume.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct KeelVolumeInfo {
    /// Size in bytes.
    pub size: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Capacity in blocks.
    pub blocks: u64,
    /// Largest single write in blocks.
    pub max_write_blocks: u32,
}

/// A completion.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct KeelCompletion {
    /// The submitter's tag.
    pub tag: u64,
    /// `KEEL_OK` or a negative status.
    pub status: c_int,
}

fn backend(b: c_int) -> Option<BackendMode> {
    match b {
        0 => Some(BackendMode::Standard),
        1 => Some(BackendMode::Auto),
        2 => Some(BackendMode::IoUring),
        _ => None,
    }
}

/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn path_arg<'a>(p: *const c_char) -> Option<&'a Path> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated per the contract above.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().ok().map(Path::new)
}

/// Create a volume (`path` and `path.extent`) and open it.
///
/// # Safety
/// `path` is a NUL-terminated string; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn keel_volume_create(
    path: *const c_char,
    size: u64,
    block_size: u32,
    backend_mode: c_int,
    out: *mut *mut KeelVolume,
) -> c_int {
    guard(|| {
        // SAFETY: the caller passes a NUL-terminated string or null.
        let Some(p) = (unsafe { path_arg(path) }) else {
            return invalid("path is null or not UTF-8");
        };
        let Some(mode) = backend(backend_mode) else {
            return invalid("backend must be 0 (standard), 1 (auto) or 2 (io_uring)");
        };
        if out.is_null() {
            return invalid("out is null");
        }
        let mut opts = CreateOptions::new(size);
        opts.block_size = block_size;
        let cfg = VolumeConfig {
            backend: mode,
            ..VolumeConfig::default()
        };
        match Volume::create(p, &opts, &cfg) {
            Ok(vol) => {
                // SAFETY: `out` is non-null and writable per the contract.
                unsafe { *out = Box::into_raw(Box::new(KeelVolume { vol })) };
                KEEL_OK
            }
            Err(e) => code(&e),
        }
    })
}

/// Open an existing volume (replaying its WAL).
///
/// # Safety
/// As [`keel_volume_create`].
#[no_mangle]
pub unsafe extern "C" fn keel_volume_open(
    path: *const c_char,
    backend_mode: c_int,
    out: *mut *mut KeelVolume,
) -> c_int {
    guard(|| {
        // SAFETY: the caller passes a NUL-terminated string or null.
        let Some(p) = (unsafe { path_arg(path) }) else {
            return invalid("path is null or not UTF-8");
        };
        let Some(mode) = backend(backend_mode) else {
            return invalid("backend must be 0 (standard), 1 (auto) or 2 (io_uring)");
        };
        if out.is_null() {
            return invalid("out is null");
        }
        let cfg = VolumeConfig {
            backend: mode,
            ..VolumeConfig::default()
        };
        match Volume::open(p, &cfg) {
            Ok(vol) => {
                // SAFETY: `out` is non-null and writable per the contract.
                unsafe { *out = Box::into_raw(Box::new(KeelVolume { vol })) };
                KEEL_OK
            }
            Err(e) => code(&e),
        }
    })
}

/// The volume's geometry.
///
/// # Safety
/// `v` comes from `keel_volume_create/open`; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn keel_volume_info(v: *const KeelVolume, out: *mut KeelVolumeInfo) -> c_int {
    guard(|| {
        if v.is_null() || out.is_null() {
            return invalid("null argument");
        }
        // SAFETY: a live volume from this library, per the contract.
        let i = unsafe { &*v }.vol.info();
        // SAFETY: `out` is non-null and writable.
        unsafe {
            *out = KeelVolumeInfo {
                size: i.size,
                block_size: i.block_size,
                blocks: i.blocks,
                max_write_blocks: i.max_write_blocks,
            }
        };
        KEEL_OK
    })
}

/// Close a volume: write back the WAL and checkpoint. Free its handles
/// first. The pointer is invalid afterwards, whatever the status.
///
/// # Safety
/// `v` comes from `keel_volume_create/open` and is not used again.
#[no_mangle]
pub unsafe extern "C" fn keel_volume_close(v: *mut KeelVolume) -> c_int {
    guard(|| {
        if v.is_null() {
            return invalid("null volume");
        }
        // SAFETY: ownership returns from C, per the contract.
        let b = unsafe { Box::from_raw(v) };
        match b.vol.close() {
            Ok(()) => KEEL_OK,
            Err(e) => code(&e),
        }
    })
}

/// A new submission handle on `v`.
///
/// # Safety
/// `v` is a live volume; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn keel_handle_new(v: *mut KeelVolume, out: *mut *mut KeelHandle) -> c_int {
    guard(|| {
        if v.is_null() || out.is_null() {
            return invalid("null argument");
        }
        // SAFETY: a live volume from this library.
        match unsafe { &*v }.vol.handle() {
            Ok(h) => {
                let kh = KeelHandle {
                    h,
                    reads: HashMap::new(),
                    done: VecDeque::new(),
                };
                // SAFETY: `out` is non-null and writable.
                unsafe { *out = Box::into_raw(Box::new(kh)) };
                KEEL_OK
            }
            Err(e) => code(&e),
        }
    })
}

/// Free a handle; waits for its operations in flight.
///
/// # Safety
/// `h` comes from `keel_handle_new` and is not used again.
#[no_mangle]
pub unsafe extern "C" fn keel_handle_free(h: *mut KeelHandle) {
    let _ = guard(|| {
        if !h.is_null() {
            // SAFETY: ownership returns from C.
            drop(unsafe { Box::from_raw(h) });
        }
        KEEL_OK
    });
}

fn submit(kh: &mut KeelHandle, tag: u64, op: Op) -> c_int {
    match kh.h.submit(tag, op) {
        Ok(()) => KEEL_OK,
        Err(e) => {
            kh.reads.remove(&tag);
            code(&e.error)
        }
    }
}

/// # Safety
/// `h` is null or a live handle used by this thread only.
unsafe fn handle<'a>(h: *mut KeelHandle) -> Option<&'a mut KeelHandle> {
    // SAFETY: per the contract, a live handle or null.
    unsafe { h.as_mut() }
}

/// Submit a read of `len` bytes (a multiple of the block size) at `lba`
/// into `buf`, which must stay valid until the completion is polled.
/// `tag` must not be in use by another operation in flight on `h`.
///
/// # Safety
/// `h` is a live handle; `buf` points to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn keel_submit_read(
    h: *mut KeelHandle,
    tag: u64,
    lba: u64,
    buf: *mut c_void,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let Some(kh) = (unsafe { handle(h) }) else {
            return invalid("null handle");
        };
        if buf.is_null() || len == 0 {
            return invalid("null or empty buffer");
        }
        if kh.reads.contains_key(&tag) {
            return invalid("tag already in flight");
        }
        kh.reads.insert(tag, (buf.cast::<u8>(), len));
        submit(
            kh,
            tag,
            Op::Read {
                lba,
                buf: vec![0u8; len],
            },
        )
    })
}

/// Submit a write of `len` bytes from `buf` (copied at once) at `lba`;
/// durable at completion when `fua` is non-zero.
///
/// # Safety
/// `h` is a live handle; `buf` points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn keel_submit_write(
    h: *mut KeelHandle,
    tag: u64,
    lba: u64,
    buf: *const c_void,
    len: usize,
    fua: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let Some(kh) = (unsafe { handle(h) }) else {
            return invalid("null handle");
        };
        if buf.is_null() || len == 0 {
            return invalid("null or empty buffer");
        }
        // SAFETY: `buf` points to `len` readable bytes per the contract.
        let data = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }.to_vec();
        submit(
            kh,
            tag,
            Op::Write {
                lba,
                buf: data,
                fua: fua != 0,
            },
        )
    })
}

/// Submit a flush: every write completed before it becomes durable.
///
/// # Safety
/// `h` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn keel_submit_flush(h: *mut KeelHandle, tag: u64) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let Some(kh) = (unsafe { handle(h) }) else {
            return invalid("null handle");
        };
        submit(kh, tag, Op::Flush)
    })
}

/// Submit a trim (deallocate; reads return zeros afterwards).
///
/// # Safety
/// `h` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn keel_submit_trim(
    h: *mut KeelHandle,
    tag: u64,
    lba: u64,
    blocks: u32,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let Some(kh) = (unsafe { handle(h) }) else {
            return invalid("null handle");
        };
        submit(kh, tag, Op::Trim { lba, blocks })
    })
}

fn reap(kh: &mut KeelHandle) {
    let KeelHandle { h, reads, done } = kh;
    h.poll_completions(|c| {
        let status = match &c.result {
            Ok(()) => KEEL_OK,
            Err(e) => code(e),
        };
        if let Some((ptr, len)) = reads.remove(&c.tag) {
            if let (KEEL_OK, Some(buf)) = (status, c.buf.as_ref()) {
                let n = len.min(buf.len());
                // SAFETY: the caller keeps `ptr` valid for `len` bytes until
                // this completion is polled (the submit contract).
                unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), ptr, n) };
            }
        }
        done.push_back((c.tag, status));
    });
}

/// Fill up to `max` completions into `out`; returns how many (0: none
/// ready), or a negative status. Also hands submitted I/O to the kernel.
///
/// # Safety
/// `h` is a live handle; `out` has room for `max` completions.
#[no_mangle]
pub unsafe extern "C" fn keel_poll(
    h: *mut KeelHandle,
    out: *mut KeelCompletion,
    max: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let Some(kh) = (unsafe { handle(h) }) else {
            return invalid("null handle");
        };
        if out.is_null() || max <= 0 {
            return invalid("null or empty completion array");
        }
        reap(kh);
        let mut n = 0usize;
        let max = usize::try_from(max).unwrap_or(0);
        while n < max {
            let Some((tag, status)) = kh.done.pop_front() else {
                break;
            };
            // SAFETY: `out` has room for `max` entries per the contract.
            unsafe { *out.add(n) = KeelCompletion { tag, status } };
            n += 1;
        }
        c_int::try_from(n).unwrap_or(c_int::MAX)
    })
}

/// Block until a completion may be ready or `timeout_us` passes
/// (negative: no timeout). Poll afterwards.
///
/// # Safety
/// `h` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn keel_wait(h: *mut KeelHandle, timeout_us: i64) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let Some(kh) = (unsafe { handle(h) }) else {
            return invalid("null handle");
        };
        if !kh.done.is_empty() {
            return KEEL_OK;
        }
        let t = u64::try_from(timeout_us).ok().map(Duration::from_micros);
        kh.h.wait(t);
        KEEL_OK
    })
}

/// Operations submitted on `h` and not yet polled.
///
/// # Safety
/// `h` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn keel_in_flight(h: *const KeelHandle) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let Some(kh) = (unsafe { h.as_ref() }) else {
            return invalid("null handle");
        };
        c_int::try_from(kh.h.in_flight() + kh.done.len()).unwrap_or(c_int::MAX)
    })
}

/// The handle's eventfd: readable when completions may be ready (after
/// `keel_arm_notify`), for an event loop.
///
/// # Safety
/// `h` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn keel_notify_fd(h: *const KeelHandle) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        match unsafe { h.as_ref() } {
            Some(kh) => kh.h.notify_fd(),
            None => invalid("null handle"),
        }
    })
}

/// Ask for a wake-up on the eventfd at the next completion; 0 when
/// completions are already waiting (poll instead of sleeping), 1 armed.
///
/// # Safety
/// `h` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn keel_arm_notify(h: *const KeelHandle) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        match unsafe { h.as_ref() } {
            Some(kh) => c_int::from(kh.done.is_empty() && kh.h.arm_notify()),
            None => invalid("null handle"),
        }
    })
}

fn run_one(kh: &mut KeelHandle, tag: u64) -> c_int {
    loop {
        reap(kh);
        if let Some(i) = kh.done.iter().position(|(t, _)| *t == tag) {
            let (_, st) = kh.done.remove(i).unwrap_or((tag, KEEL_EIO));
            return st;
        }
        kh.h.wait(Some(Duration::from_millis(10)));
    }
}

const SYNC_TAG: u64 = u64::MAX;

/// Blocking read.
///
/// # Safety
/// As [`keel_submit_read`].
#[no_mangle]
pub unsafe extern "C" fn keel_read(
    h: *mut KeelHandle,
    lba: u64,
    buf: *mut c_void,
    len: usize,
) -> c_int {
    // SAFETY: forwarded contract.
    let st = unsafe { keel_submit_read(h, SYNC_TAG, lba, buf, len) };
    if st != KEEL_OK {
        return st;
    }
    // SAFETY: `h` was checked by the submit.
    guard(|| run_one(unsafe { &mut *h }, SYNC_TAG))
}

/// Blocking write.
///
/// # Safety
/// As [`keel_submit_write`].
#[no_mangle]
pub unsafe extern "C" fn keel_write(
    h: *mut KeelHandle,
    lba: u64,
    buf: *const c_void,
    len: usize,
    fua: c_int,
) -> c_int {
    // SAFETY: forwarded contract.
    let st = unsafe { keel_submit_write(h, SYNC_TAG, lba, buf, len, fua) };
    if st != KEEL_OK {
        return st;
    }
    // SAFETY: `h` was checked by the submit.
    guard(|| run_one(unsafe { &mut *h }, SYNC_TAG))
}

/// Blocking flush.
///
/// # Safety
/// `h` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn keel_flush(h: *mut KeelHandle) -> c_int {
    // SAFETY: forwarded contract.
    let st = unsafe { keel_submit_flush(h, SYNC_TAG) };
    if st != KEEL_OK {
        return st;
    }
    // SAFETY: `h` was checked by the submit.
    guard(|| run_one(unsafe { &mut *h }, SYNC_TAG))
}

/// A static description of a status code.
#[no_mangle]
pub extern "C" fn keel_strerror(status: c_int) -> *const c_char {
    let s: &'static CStr = match status {
        KEEL_OK => c"success",
        KEEL_EINVAL => c"invalid argument",
        KEEL_ERANGE => c"LBA range past the end of the volume",
        KEEL_ENOTVOL => c"not a keel volume",
        KEEL_EVERSION => c"unsupported volume format version",
        KEEL_ECORRUPT => c"corrupt volume metadata",
        KEEL_ETRUNC => c"volume files are truncated",
        KEEL_EWALFULL => c"WAL full",
        KEEL_ECLOSED => c"volume closed",
        KEEL_EFAILED => c"volume failed after an I/O error",
        KEEL_EBACKEND => c"I/O backend unavailable",
        KEEL_EIO => c"I/O error",
        KEEL_EPANIC => c"internal error (panic)",
        _ => c"unknown status",
    };
    s.as_ptr()
}

/// The message of this thread's last error (valid until the next call
/// that fails on this thread).
#[no_mangle]
pub extern "C" fn keel_last_error() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}
