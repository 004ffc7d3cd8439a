//! Smoke test: write, read, trim, flush, WAL wrap-around and reopen on both backends.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)] // test arithmetic on small values
use keel_blockvol::{BackendMode, CreateOptions, SyncHandle, Volume, VolumeConfig};

fn each_backend(f: impl Fn(BackendMode)) {
    for b in [BackendMode::Standard, BackendMode::IoUring] {
        f(b);
    }
}

#[test]
fn write_read_flush_reopen() {
    each_backend(|backend| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.keel");
        let cfg = VolumeConfig {
            backend,
            ..Default::default()
        };
        let opts = CreateOptions {
            size: 8 << 20,
            block_size: 4096,
            wal_size: 1 << 20,
        };
        let vol = Volume::create(&path, &opts, &cfg).unwrap();
        assert_eq!(
            vol.status().backend,
            if backend == BackendMode::Standard {
                "standard"
            } else {
                "io_uring"
            }
        );
        let mut h = SyncHandle::new(vol.handle().unwrap());
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        h.write(10, &data, false).unwrap();
        assert_eq!(h.read(10, 2).unwrap(), data);
        h.flush().unwrap();
        // enough writes to wrap the WAL several times
        for i in 0..2000u64 {
            let b = vec![(i % 256) as u8; 4096];
            h.write(i % 2048, &b, i % 7 == 0).unwrap();
        }
        h.trim(0, 5).unwrap();
        assert_eq!(h.read(0, 5).unwrap(), vec![0u8; 5 * 4096]);
        let st = vol.status();
        assert!(
            st.stats.flusher_runs > 0 && st.stats.linked_syncs > 0,
            "{st:?}"
        );
        drop(h);
        vol.close().unwrap();
        let vol = Volume::open(&path, &cfg).unwrap();
        let mut h = SyncHandle::new(vol.handle().unwrap());
        assert_eq!(h.read(0, 5).unwrap(), vec![0u8; 5 * 4096]);
        assert_eq!(h.read(1999, 1).unwrap(), vec![(1999 % 256) as u8; 4096]);
        assert_eq!(vol.status().checkpoint_lsn, vol.status().next_lsn - 1);
    });
}
