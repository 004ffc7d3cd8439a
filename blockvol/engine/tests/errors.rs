//! Damaged volumes and hostile conditions: a clear typed error or a correct
//! recovery, never a panic.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)] // test arithmetic on small values

use std::sync::Arc;
use std::time::Duration;

use keel_blockvol::sim::SimStorage;
use keel_blockvol::storage::Storage;
use keel_blockvol::{
    format, inspect_storage, CreateOptions, ErrorKind, Op, Pressure, SyncHandle, Volume,
    VolumeConfig,
};

const WAL_OFFSET: usize = 8192;

fn opts() -> CreateOptions {
    CreateOptions {
        size: 1 << 20,
        block_size: 512,
        wal_size: 64 * 1024,
    }
}

/// No background write-back: records stay in the WAL.
fn no_flusher() -> VolumeConfig {
    VolumeConfig {
        flush_interval: Duration::from_secs(3600),
        flush_threshold: 1.0,
        wal_soft_watermark: 1.0,
        wal_hard_watermark: 1.0,
        ..Default::default()
    }
}

fn sim_volume(cfg: &VolumeConfig) -> (Arc<SimStorage>, Volume) {
    let s = Arc::new(SimStorage::new(7));
    format(&*s, &opts()).unwrap();
    let v = Volume::open_storage(Arc::clone(&s) as Arc<dyn Storage>, cfg).unwrap();
    (s, v)
}

fn reopen(image: Vec<u8>, cfg: &VolumeConfig) -> keel_blockvol::Result<(Arc<SimStorage>, Volume)> {
    let s = Arc::new(SimStorage::from_image(image, 8));
    let v = Volume::open_storage(Arc::clone(&s) as Arc<dyn Storage>, cfg)?;
    Ok((s, v))
}

fn block(fill: u8) -> Vec<u8> {
    vec![fill; 512]
}

/// Record `n` (0-based) of 512-byte writes made right after open: each takes
/// 576 bytes of ring from the tail at 0.
fn record_data_offset(n: usize) -> usize {
    WAL_OFFSET + n * 576 + 64
}

#[test]
fn one_corrupt_superblock_slot_is_survived_both_is_an_error() {
    let (s, v) = sim_volume(&VolumeConfig::default());
    SyncHandle::new(v.handle().unwrap())
        .write(3, &block(9), true)
        .unwrap();
    v.close().unwrap();
    let img = s.current_image();
    for slot in 0..2 {
        let mut bad = img.clone();
        bad[slot * 4096 + 100] ^= 1;
        let (_, v) = reopen(bad, &VolumeConfig::default()).unwrap();
        assert_eq!(
            SyncHandle::new(v.handle().unwrap()).read(3, 1).unwrap(),
            block(9)
        );
    }
    let mut bad = img.clone();
    bad[100] ^= 1;
    bad[4096 + 100] ^= 1;
    let err = reopen(bad, &VolumeConfig::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
}

#[test]
fn wrong_magic_version_and_truncation_are_typed_errors() {
    let (s, v) = sim_volume(&VolumeConfig::default());
    v.close().unwrap();
    let img = s.current_image();

    let mut bad = img.clone();
    bad[..8].copy_from_slice(b"NOTKEEL!");
    bad[4096..4104].copy_from_slice(b"NOTKEEL!");
    assert_eq!(
        reopen(bad, &VolumeConfig::default()).unwrap_err().kind(),
        ErrorKind::NotAVolume
    );

    let zeros = vec![0u8; img.len()];
    assert_eq!(
        reopen(zeros, &VolumeConfig::default()).unwrap_err().kind(),
        ErrorKind::NotAVolume
    );

    let mut short = img.clone();
    short.truncate(img.len() - 4096);
    let err = reopen(short, &VolumeConfig::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Truncated, "{err}");

    let mut tiny = img.clone();
    tiny.truncate(100);
    assert_eq!(
        reopen(tiny, &VolumeConfig::default()).unwrap_err().kind(),
        ErrorKind::Truncated
    );
}

#[test]
fn corrupt_wal_record_ends_replay_there() {
    let cfg = no_flusher();
    let (s, v) = sim_volume(&cfg);
    let mut h = SyncHandle::new(v.handle().unwrap());
    for i in 0..5u8 {
        h.write(u64::from(i), &block(i + 1), true).unwrap();
    }
    assert_eq!(v.status().checkpoint_lsn, 0, "flusher must not have run");
    // The power fails with all five records durable in the WAL only.
    s.crash_now();
    drop(h);
    drop(v);
    let mut img = s.crash_image().unwrap();
    // Damage the third record's data.
    img[record_data_offset(2) + 10] ^= 0xff;
    let insp = inspect_storage(&SimStorage::from_image(img.clone(), 1)).unwrap();
    assert_eq!(insp.wal.records, 2);
    assert!(matches!(
        insp.wal.stop,
        keel_blockvol::recovery::WalEnd::Torn { lsn: 3 }
    ));
    let (_, v) = reopen(img, &cfg).unwrap();
    let mut h = SyncHandle::new(v.handle().unwrap());
    assert_eq!(h.read(0, 1).unwrap(), block(1));
    assert_eq!(h.read(1, 1).unwrap(), block(2));
    // Records from the damaged one on are not applied.
    for lba in 2..5 {
        assert_eq!(h.read(lba, 1).unwrap(), block(0), "block {lba}");
    }
}

#[test]
fn records_left_from_before_a_crash_are_never_replayed_later() {
    // Crash 1 leaves record 2 torn and record 3 intact behind it. After
    // recovery a new record 2 of the same size lands where the old one was;
    // after crash 2 the old record 3 must not come back to life.
    let cfg = no_flusher();
    let (s, v) = sim_volume(&cfg);
    let mut h = SyncHandle::new(v.handle().unwrap());
    h.write(10, &block(1), true).unwrap();
    h.write(11, &block(2), true).unwrap();
    h.write(12, &block(3), true).unwrap();
    s.crash_now();
    drop(h);
    drop(v);
    let mut img = s.crash_image().unwrap();
    img[record_data_offset(1) + 5] ^= 0xff;
    let (s, v) = reopen(img, &cfg).unwrap();
    let mut h = SyncHandle::new(v.handle().unwrap());
    assert_eq!(h.read(12, 1).unwrap(), block(0));
    // Same stride as the torn record, at the same ring offset.
    h.write(20, &block(7), true).unwrap();
    s.crash_now();
    drop(h);
    drop(v);
    let (_, v) = reopen(s.crash_image().unwrap(), &cfg).unwrap();
    let mut h = SyncHandle::new(v.handle().unwrap());
    assert_eq!(h.read(10, 1).unwrap(), block(1));
    assert_eq!(h.read(20, 1).unwrap(), block(7));
    assert_eq!(
        h.read(12, 1).unwrap(),
        block(0),
        "a stale record was replayed"
    );
}

#[test]
fn wal_full_with_a_stuck_flusher_fails_writes_cleanly_then_recovers() {
    let cfg = VolumeConfig {
        admission_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (s, v) = sim_volume(&cfg);
    let extent = opts().extent_offset();
    s.stall(extent, u64::MAX);
    // A failing assertion must not leave the flusher stuck forever.
    struct Unstall(Arc<SimStorage>);
    impl Drop for Unstall {
        fn drop(&mut self) {
            self.0.unstall();
        }
    }
    let _guard = Unstall(Arc::clone(&s));
    let mut h = v.handle().unwrap();
    let mut full_at = None;
    for i in 0..400u64 {
        h.submit(
            i,
            Op::Write {
                lba: i % 2048,
                buf: vec![1u8; 512],
                fua: false,
            },
        )
        .unwrap();
        let mut res = None;
        while res.is_none() {
            h.poll_completions(|c| res = Some(c.result));
            if res.is_none() {
                h.wait(Some(Duration::from_millis(10)));
            }
        }
        if let Some(Err(e)) = res {
            assert_eq!(e.kind(), ErrorKind::WalFull, "{e}");
            full_at = Some(i);
            break;
        }
    }
    let full_at = full_at.expect("the WAL never filled");
    let st = v.status();
    assert!(
        st.stats.admission_hard_waits > 0 && st.stats.admission_timeouts > 0,
        "{st:?}"
    );
    assert_ne!(st.pressure, Pressure::Normal, "{st:?}");
    assert!(st.wal_used_fraction > 0.7, "{st:?}");
    assert!(st.stats.admission_soft_waits > 0);
    // Reads still work while writes are refused.
    let mut sh = SyncHandle::new(v.handle().unwrap());
    assert_eq!(sh.read(0, 1).unwrap(), vec![1u8; 512]);
    // The disk recovers: the flusher drains and writes go through again.
    s.unstall();
    sh.write(5, &block(5), true).unwrap();
    assert_eq!(sh.read(5, 1).unwrap(), block(5));
    assert!(full_at > 10);
    drop(h);
    drop(sh);
    v.close().unwrap();
}

#[test]
fn out_of_range_and_malformed_requests_come_back_with_their_buffer() {
    let (_s, v) = sim_volume(&VolumeConfig::default());
    let mut h = v.handle().unwrap();
    let cap = v.info().blocks;
    for (op, kind) in [
        (
            Op::Read {
                lba: cap,
                buf: vec![0; 512],
            },
            ErrorKind::OutOfRange,
        ),
        (
            Op::Read {
                lba: cap - 1,
                buf: vec![0; 1024],
            },
            ErrorKind::OutOfRange,
        ),
        (
            Op::Write {
                lba: u64::MAX,
                buf: vec![0; 512],
                fua: false,
            },
            ErrorKind::OutOfRange,
        ),
        (
            Op::Write {
                lba: 0,
                buf: vec![0; 100],
                fua: false,
            },
            ErrorKind::InvalidArgument,
        ),
        (
            Op::Write {
                lba: 0,
                buf: vec![],
                fua: false,
            },
            ErrorKind::InvalidArgument,
        ),
        (Op::Trim { lba: 0, blocks: 0 }, ErrorKind::InvalidArgument),
        (
            Op::WriteZeroes {
                lba: cap - 1,
                blocks: 2,
                fua: false,
            },
            ErrorKind::OutOfRange,
        ),
        (
            Op::Write {
                lba: 0,
                buf: vec![0; 512 * (v.info().max_write_blocks as usize + 1)],
                fua: false,
            },
            ErrorKind::InvalidArgument,
        ),
    ] {
        let len = match &op {
            Op::Read { buf, .. } | Op::Write { buf, .. } => Some(buf.len()),
            _ => None,
        };
        let e = h.submit(1, op).unwrap_err();
        assert_eq!(e.error.kind(), kind, "{}", e.error);
        match e.op {
            Op::Read { buf, .. } | Op::Write { buf, .. } => assert_eq!(Some(buf.len()), len),
            _ => {}
        }
    }
}

#[test]
fn io_errors_fail_the_volume_not_the_process() {
    let (s, v) = sim_volume(&VolumeConfig::default());
    let mut h = SyncHandle::new(v.handle().unwrap());
    h.write(1, &block(1), true).unwrap();
    s.crash_now(); // every I/O now fails with EIO
    let e = h.write(2, &block(2), true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    let e = h.write(3, &block(3), false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Failed, "{e}");
    let e = h.flush().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Failed, "{e}");
    assert!(v.status().failed.is_some());
}

#[test]
fn expand_online_then_reopen() {
    let (s, v) = sim_volume(&VolumeConfig::default());
    let mut h = SyncHandle::new(v.handle().unwrap());
    let cap = v.info().blocks;
    assert_eq!(
        h.write(cap, &block(1), false).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    v.expand(2 << 20).unwrap();
    assert_eq!(v.info().blocks, cap * 2);
    h.write(cap, &block(4), true).unwrap();
    assert_eq!(h.read(cap, 1).unwrap(), block(4));
    assert_eq!(
        v.expand(1 << 20).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        v.expand((2 << 20) + 100).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    drop(h);
    v.close().unwrap();
    let (_, v) = reopen(s.current_image(), &VolumeConfig::default()).unwrap();
    assert_eq!(v.info().blocks, cap * 2);
    assert_eq!(
        SyncHandle::new(v.handle().unwrap()).read(cap, 1).unwrap(),
        block(4)
    );
}

#[test]
fn replication_fields_persist_and_are_validated() {
    let (s, v) = sim_volume(&VolumeConfig::default());
    v.set_epoch(7).unwrap();
    v.set_role(keel_blockvol::Role::Primary).unwrap();
    v.set_durability(keel_blockvol::DurabilityMode::SyncAll)
        .unwrap();
    assert_eq!(
        v.set_epoch(3).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    v.close().unwrap();
    let (_, v) = reopen(s.current_image(), &VolumeConfig::default()).unwrap();
    let sb = v.superblock();
    assert_eq!(
        (sb.epoch, sb.role, sb.durability),
        (
            7,
            keel_blockvol::Role::Primary,
            keel_blockvol::DurabilityMode::SyncAll
        )
    );
    assert_eq!(
        v.expand(4 << 20).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn backend_selection_is_explicit() {
    // The simulator has no file descriptor, so io_uring cannot drive it.
    let s = Arc::new(SimStorage::new(3));
    format(&*s, &opts()).unwrap();
    let uring = VolumeConfig {
        backend: keel_blockvol::BackendMode::IoUring,
        ..Default::default()
    };
    let err = Volume::open_storage(Arc::clone(&s) as Arc<dyn Storage>, &uring).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BackendUnavailable, "{err}");
    let auto = VolumeConfig {
        backend: keel_blockvol::BackendMode::Auto,
        ..Default::default()
    };
    let v = Volume::open_storage(Arc::clone(&s) as Arc<dyn Storage>, &auto).unwrap();
    let st = v.status();
    assert_eq!(st.backend, "standard");
    assert!(
        st.backend_reason.starts_with("auto:"),
        "{}",
        st.backend_reason
    );
    assert!("bogus".parse::<keel_blockvol::BackendMode>().is_err());
    assert_eq!(
        "io_uring".parse::<keel_blockvol::BackendMode>().unwrap(),
        keel_blockvol::BackendMode::IoUring
    );
}
