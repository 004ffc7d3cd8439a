//! The sleep contract of a handle: once [`Handle::before_sleep`] says its
//! owner may sleep on the notify fd without a wake-up time, everything it
//! submitted finishes on its own and makes the fd readable.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small values

use std::time::{Duration, Instant};

use keel_blockvol::{BackendMode, CreateOptions, Op, SleepCheck, Volume, VolumeConfig};

/// Writes delayed by the soft watermark are retried inside `before_sleep`.
/// With io_uring they used to be queued for coalescing after the handle's
/// last submission to the kernel and never reached it: the owner slept on
/// a notify fd that nothing would signal (seen as seconds-long stalls of
/// 128 KiB iSCSI writes at QD8, ended only by the NOP-In timer).
#[test]
fn writes_retried_before_sleep_reach_the_kernel() {
    for backend in [BackendMode::Standard, BackendMode::IoUring] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = VolumeConfig {
            backend,
            // Every write is held back once by the soft watermark.
            wal_soft_watermark: 1e-6,
            soft_delay: Duration::from_millis(1),
            ..Default::default()
        };
        let opts = CreateOptions {
            size: 8 << 20,
            block_size: 4096,
            wal_size: 1 << 20,
        };
        let vol = Volume::create(&dir.path().join("v.keel"), &opts, &cfg).unwrap();
        let mut h = vol.handle().unwrap();
        for round in 0..20u64 {
            for i in 0..8u64 {
                let op = Op::Write {
                    lba: round * 8 + i,
                    buf: vec![i as u8; 4096],
                    fua: false,
                };
                h.submit(i, op).unwrap();
            }
            let mut done = 0;
            let deadline = Instant::now() + Duration::from_secs(10);
            while done < 8 {
                assert!(
                    Instant::now() < deadline,
                    "{backend:?}: writes never finished"
                );
                match h.before_sleep(|c| {
                    c.result.unwrap();
                    done += 1;
                }) {
                    SleepCheck::PollAgain => {}
                    SleepCheck::Sleep { wake_at } => {
                        let timeout = wake_at.map_or(Duration::from_secs(5), |t| {
                            t.saturating_duration_since(Instant::now())
                        });
                        let mut fds = [libc::pollfd {
                            fd: h.notify_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        }];
                        // SAFETY: one valid pollfd for the duration of the call.
                        let n =
                            unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout.as_millis() as i32) };
                        assert!(
                            n > 0 || wake_at.is_some(),
                            "{backend:?}: slept with {} writes in flight and nothing woke it",
                            8 - done
                        );
                        let mut b = [0u8; 8];
                        // SAFETY: reads at most 8 bytes into `b` (drains the eventfd).
                        unsafe { libc::read(h.notify_fd(), b.as_mut_ptr().cast(), 8) };
                    }
                }
            }
        }
        assert!(vol.status().stats.admission_soft_waits >= 8);
        drop(h);
        vol.close().unwrap();
    }
}
