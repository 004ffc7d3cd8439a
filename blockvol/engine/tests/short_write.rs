//! A WAL write that comes back short: on the io_uring backend, where WAL
//! records of one poll go out coalesced in one `writev`, and on the
//! standard one. The file-size
//! limit (`RLIMIT_FSIZE`, this test binary only) cuts the WAL in the middle
//! of a record: the `writev` that crosses it writes part of its records and
//! returns short, later ones fail with EFBIG. Every write of a short group
//! fails, the volume fails (later writes are refused, never acknowledged),
//! and after reopening without the limit every write acknowledged before
//! the failure reads back: nothing acknowledged lies behind the torn
//! record where replay stops. The same limit then makes the flusher's
//! write-back fail, which must fail the volume and lose nothing.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small values

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keel_blockvol::{BackendMode, CreateOptions, ErrorKind, Op, SyncHandle, Volume, VolumeConfig};

const WAL_OFFSET: u64 = 8192;

fn set_fsize_limit(bytes: u64) {
    let r = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit for the calling process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &r) }, 0);
}

#[test]
fn a_short_wal_write_fails_the_volume_and_loses_nothing_acknowledged() {
    // A write that starts past the limit raises SIGXFSZ (fatal by default).
    // SAFETY: ignoring a signal; no handler runs.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    // One after the other: the limit is per process.
    for backend in [BackendMode::IoUring, BackendMode::Standard] {
        short_write_on(backend);
        failed_write_back_on(backend);
    }
}

fn short_write_on(backend: BackendMode) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.keel");
    let opts = CreateOptions {
        size: 8 << 20,
        block_size: 4096,
        wal_size: 1 << 20,
    };
    // No write-back: the extent file (past the limit too) is not written,
    // and the WAL fills from its start.
    let cfg = VolumeConfig {
        backend,
        flush_interval: Duration::from_secs(3600),
        flush_threshold: 1.0,
        wal_soft_watermark: 1.0,
        wal_hard_watermark: 1.0,
        ..Default::default()
    };
    let vol = Volume::create(&path, &opts, &cfg).unwrap();
    let mut h = vol.handle().unwrap();
    // About 72 records of 4 KiB + 64 B fit below the limit; it falls
    // inside a record.
    set_fsize_limit(WAL_OFFSET + 300_000);

    let mut acked: HashMap<u64, u8> = HashMap::new();
    let mut failed = Vec::new();
    let mut in_flight: HashMap<u64, (u64, u8)> = HashMap::new();
    let mut next = 0u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while (failed.is_empty() || !in_flight.is_empty()) && Instant::now() < deadline {
        // Keep 32 writes in flight (they coalesce) until the first failure.
        while failed.is_empty() && in_flight.len() < 32 && next < 200 {
            let fill = (next % 251) as u8 + 1;
            // Every 16th durable at completion (group commit waits for
            // it).
            let op = Op::Write {
                lba: next,
                buf: vec![fill; 4096],
                fua: next % 16 == 15,
            };
            h.submit(next, op).unwrap();
            in_flight.insert(next, (next, fill));
            next += 1;
        }
        h.poll_completions(|c| {
            let (lba, fill) = in_flight.remove(&c.tag).unwrap();
            match c.result {
                Ok(()) => {
                    acked.insert(lba, fill);
                }
                Err(e) => failed.push((lba, e)),
            }
        });
        h.wait(Some(Duration::from_millis(10)));
    }
    eprintln!(
        "{backend:?}: {} writes acknowledged, {} failed: {:?}",
        acked.len(),
        failed.len(),
        failed
            .iter()
            .map(|(l, e)| format!("{l}: {e}"))
            .collect::<Vec<_>>()
    );
    assert!(in_flight.is_empty(), "writes never completed");
    assert!(!failed.is_empty(), "no write failed: the limit was not hit");
    assert!(acked.len() > 10, "only {} writes acknowledged", acked.len());
    // io_uring: the coalesced writev across the limit comes back short.
    // Standard: one pwritev per record; the rest of a short one is retried
    // and fails with EFBIG.
    assert!(
        backend != BackendMode::IoUring
            || failed.iter().any(|(_, e)| e.to_string().contains("short")),
        "no short writev among the failures: {:?}",
        failed
            .iter()
            .map(|(_, e)| e.to_string())
            .collect::<Vec<_>>()
    );
    // Failed: nothing more is acknowledged.
    let mut sh = SyncHandle::new(h);
    let e = sh.write(500, &[7u8; 4096], false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Failed, "{e}");
    assert!(vol.status().failed.is_some());
    drop(sh);
    let _ = vol.close();

    // The disk is fine again: reopen, replay, read back.
    set_fsize_limit(libc::RLIM_INFINITY);
    let vol = Volume::open(&path, &VolumeConfig::default()).unwrap();
    let mut sh = SyncHandle::new(vol.handle().unwrap());
    for (&lba, &fill) in &acked {
        assert_eq!(
            sh.read(lba, 1).unwrap(),
            vec![fill; 4096],
            "acknowledged write at LBA {lba} lost"
        );
    }
    // The volume takes writes again.
    sh.write(500, &[9u8; 4096], true).unwrap();
    assert_eq!(sh.read(500, 1).unwrap(), vec![9u8; 4096]);
    drop(sh);
    vol.close().unwrap();
}

/// The flusher's write-back fails (an extent write past the file-size
/// limit: EFBIG): the volume fails, the checkpoint does not move, and
/// after reopening without the limit replay brings back every write, the
/// ones the flusher could not write included.
fn failed_write_back_on(backend: BackendMode) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.keel");
    let opts = CreateOptions {
        size: 8 << 20,
        block_size: 4096,
        wal_size: 1 << 20,
    };
    let cfg = VolumeConfig {
        backend,
        flush_interval: Duration::from_millis(5),
        ..Default::default()
    };
    let vol = Volume::create(&path, &opts, &cfg).unwrap();
    // The meta file (superblock and WAL, about 1 MiB) stays below the
    // limit; extent blocks from LBA 512 on lie past it.
    set_fsize_limit(2 << 20);
    let mut sh = SyncHandle::new(vol.handle().unwrap());
    let lbas: Vec<u64> = (0..8).chain(1000..1008).collect();
    for (i, &lba) in lbas.iter().enumerate() {
        sh.write(lba, &[i as u8 + 1; 4096], i % 3 == 0).unwrap();
    }
    sh.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while vol.status().failed.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = vol.status();
    assert!(st.failed.is_some(), "the write-back never failed: {st:?}");
    assert!(st.stats.flusher_errors > 0, "{st:?}");
    let e = sh.write(9, &[7u8; 4096], false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Failed, "{e}");
    drop(sh);
    let _ = vol.close();

    set_fsize_limit(libc::RLIM_INFINITY);
    let vol = Volume::open(&path, &VolumeConfig::default()).unwrap();
    let mut sh = SyncHandle::new(vol.handle().unwrap());
    for (i, &lba) in lbas.iter().enumerate() {
        assert_eq!(
            sh.read(lba, 1).unwrap(),
            vec![i as u8 + 1; 4096],
            "{backend:?}: write at LBA {lba} lost"
        );
    }
    drop(sh);
    vol.close().unwrap();
}
