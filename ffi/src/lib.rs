//! keel C ABI: the only `extern "C"` surface of keel.
//!
//! Will expose the volume engine (open, close, submit read/write/flush/trim
//! with completion polling, status) as a `cdylib` with a header in
//! `ffi/include/keel.h`, used for example by a fio external ioengine.
