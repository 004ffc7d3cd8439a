//! The standard backend: pread/pwrite/fdatasync on a small pool of worker
//! threads per volume, so that submissions never block the caller.
//!
//! A linked write+sync is done by one worker as pwrite then fdatasync, with
//! the same meaning as the io_uring link. Workers spin briefly after each job
//! before they sleep: on these VMs a sleep and wake-up costs 50-100 µs, as
//! much as the write itself.
//!
//! With inline WAL writes (`VolumeConfig::wal_inline_writes`, the default)
//! a WAL record is written on the submitting thread instead while the
//! kernel is far from throttling writers (as the io_uring backend does),
//! and a durable one is then made durable by group commit.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::{record_slices, IoDone, IoOp};
use crate::notify::Notifier;
use crate::storage::Storage;

const SPIN: Duration = Duration::from_micros(30);

struct Job {
    token: u64,
    op: IoOp,
    reply: Arc<Notifier>,
}

/// Worker threads shared by the handles of one volume.
pub(crate) struct StdPool {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    storage: Arc<dyn Storage>,
    wal_end: u64,
}

impl StdPool {
    /// `wal_end`: where the extent region starts (a linked sync covers the
    /// WAL only).
    pub fn start(
        storage: Arc<dyn Storage>,
        threads: usize,
        wal_end: u64,
        name: &str,
    ) -> std::io::Result<StdPool> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = rx.clone();
            let storage = Arc::clone(&storage);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("keel-io-{name}-{i}"))
                    .spawn(move || worker(&*storage, wal_end, &rx))?,
            );
        }
        Ok(StdPool {
            tx: Some(tx),
            threads: handles,
            storage,
            wal_end,
        })
    }

    /// Write a WAL record without a sync on the calling thread, a buffered
    /// write into the page cache, when `dirty_guard` says the kernel will
    /// not throttle it: no hop to a worker and back (two wake-ups). `None`:
    /// not tried, the caller submits it to the workers.
    pub fn write_inline(&self, op: &mut IoOp) -> Option<std::io::Result<()>> {
        if !matches!(op, IoOp::WalWrite { sync: false, .. }) || !super::dirty_guard::inline_ok() {
            return None;
        }
        Some(execute(&*self.storage, self.wal_end, op))
    }

    /// Queue an operation; its [`IoDone`] goes to `reply`.
    pub fn submit(&self, token: u64, op: IoOp, reply: &Arc<Notifier>) -> Result<(), IoOp> {
        let Some(tx) = &self.tx else { return Err(op) };
        tx.send(Job {
            token,
            op,
            reply: Arc::clone(reply),
        })
        .map_err(|e| e.0.op)
    }
}

impl Drop for StdPool {
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(storage: &dyn Storage, wal_end: u64, rx: &Receiver<Job>) {
    loop {
        let job = match rx.try_recv() {
            Ok(j) => j,
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {
                let until = Instant::now() + SPIN;
                let mut got = None;
                while Instant::now() < until {
                    match rx.try_recv() {
                        Ok(j) => {
                            got = Some(j);
                            break;
                        }
                        Err(TryRecvError::Disconnected) => return,
                        Err(TryRecvError::Empty) => std::hint::spin_loop(),
                    }
                }
                match got {
                    Some(j) => j,
                    None => match rx.recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    },
                }
            }
        };
        let Job {
            token,
            mut op,
            reply,
        } = job;
        let result = execute(storage, wal_end, &mut op);
        reply.push_io(IoDone { token, result, op });
    }
}

/// Run one operation synchronously.
pub(crate) fn execute(storage: &dyn Storage, wal_end: u64, op: &mut IoOp) -> std::io::Result<()> {
    match op {
        IoOp::WalWrite {
            hdr,
            data,
            pieces,
            sync,
        } => {
            let mut start = 0usize;
            for &(off, len) in pieces.iter() {
                let len = usize::try_from(len).map_err(|_| std::io::ErrorKind::InvalidInput)?;
                if len == 0 {
                    continue;
                }
                let (slices, n) = record_slices(hdr, data, start, len);
                storage.write_at(&slices[..n], off)?;
                start += len;
            }
            if *sync {
                storage.sync_wal(wal_end)?;
            }
            Ok(())
        }
        IoOp::Read { buf, segs } => {
            for s in segs.iter() {
                storage.read_at(&mut buf[s.buf_off..s.buf_off + s.len], s.file_off)?;
            }
            Ok(())
        }
    }
}
