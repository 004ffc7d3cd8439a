//! Written and durable LSN watermarks, and group commit.
//!
//! `written` is the highest LSN such that every record up to it is
//! completely in the WAL (completions arrive out of order; the rest wait in
//! a set). `durable` is the highest LSN such that every record up to it is
//! on stable storage. Replay stops at the first missing record, so a sync
//! can only make durable what was *contiguously* written before it started:
//! the sync thread captures `written` just before each fdatasync and
//! publishes exactly that afterwards.
//!
//! Waiters (flushes, FUA and write-through writes) name the LSN they need;
//! one fdatasync completes every waiter it covers — concurrent flushes and
//! durable writes share it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::Error;
use crate::handle::Completion;
use crate::notify::Notifier;
use crate::stats::Stats;
use crate::storage::Storage;

/// Someone waiting for `target` to be durable.
pub(crate) struct Waiter {
    pub target: u64,
    pub notifier: Arc<Notifier>,
    pub tag: u64,
    pub buf: Option<Vec<u8>>,
}

struct State {
    written: u64,
    ahead: BTreeSet<u64>,
    durable: u64,
    waiters: Vec<Waiter>,
    failed: Option<String>,
    stop: bool,
}

pub(crate) struct GroupCommit {
    state: Mutex<State>,
    cv: Condvar,
    written_hint: AtomicU64,
    durable_hint: AtomicU64,
}

impl GroupCommit {
    pub fn new(start_lsn: u64) -> GroupCommit {
        GroupCommit {
            state: Mutex::new(State {
                written: start_lsn,
                ahead: BTreeSet::new(),
                durable: start_lsn,
                waiters: Vec::new(),
                failed: None,
                stop: false,
            }),
            cv: Condvar::new(),
            written_hint: AtomicU64::new(start_lsn),
            durable_hint: AtomicU64::new(start_lsn),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Highest contiguously written LSN.
    pub fn written(&self) -> u64 {
        self.written_hint.load(Ordering::Acquire)
    }

    /// Highest durable LSN.
    pub fn durable(&self) -> u64 {
        self.durable_hint.load(Ordering::Acquire)
    }

    /// Record `lsn` completely written (its dirty-map entry is already in).
    pub fn mark_written(&self, lsn: u64) {
        let mut st = self.lock();
        if lsn == st.written + 1 {
            st.written = lsn;
            while let Some(&next) = st.ahead.first() {
                if next != st.written + 1 {
                    break;
                }
                st.ahead.pop_first();
                st.written = next;
            }
            self.written_hint.store(st.written, Ordering::Release);
            if !st.waiters.is_empty() {
                self.cv.notify_all();
            }
        } else if lsn > st.written {
            st.ahead.insert(lsn);
        }
    }

    /// An fdatasync that started after every LSN up to `lsn` was written has
    /// finished (the linked write+sync path).
    pub fn mark_durable(&self, lsn: u64, stats: &Stats) {
        let mut st = self.lock();
        if lsn > st.durable {
            st.durable = lsn;
            self.durable_hint.store(lsn, Ordering::Release);
        }
        let done = Self::take_covered(&mut st);
        drop(st);
        if !done.is_empty() {
            stats.record_batch(done.len() as u64);
        }
        complete(done, None);
    }

    fn take_covered(st: &mut State) -> Vec<Waiter> {
        let durable = st.durable;
        let mut done = Vec::new();
        let mut i = 0;
        while i < st.waiters.len() {
            if st.waiters[i].target <= durable {
                done.push(st.waiters.swap_remove(i));
            } else {
                i += 1;
            }
        }
        done
    }

    /// Wait for `target` to be durable; completes at once when it is.
    pub fn add_waiter(&self, w: Waiter) {
        let mut st = self.lock();
        if let Some(msg) = &st.failed {
            let err = Error::Failed(msg.clone());
            drop(st);
            complete(vec![w], Some(&err));
            return;
        }
        if w.target <= st.durable {
            drop(st);
            complete(vec![w], None);
            return;
        }
        st.waiters.push(w);
        self.cv.notify_all();
    }

    /// Fail every waiter now and later (after an I/O error).
    pub fn fail(&self, msg: &str) {
        let mut st = self.lock();
        st.failed.get_or_insert_with(|| msg.to_string());
        let waiters = std::mem::take(&mut st.waiters);
        drop(st);
        complete(waiters, Some(&Error::Failed(msg.to_string())));
    }

    pub fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
    }

    /// The sync thread: one fdatasync per round, covering every waiter whose
    /// records were written when it started.
    pub fn run(&self, storage: &dyn Storage, wal_end: u64, stats: &Stats, on_error: &dyn Fn(&str)) {
        let mut st = self.lock();
        loop {
            let coverable = st.waiters.iter().any(|w| w.target <= st.written);
            if !coverable {
                if st.stop {
                    let left = std::mem::take(&mut st.waiters);
                    drop(st);
                    complete(left, Some(&Error::Closed));
                    return;
                }
                st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let upto = st.written;
            drop(st);
            let t0 = std::time::Instant::now();
            let res = storage.sync_wal(wal_end);
            stats.record_sync(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
            Stats::add(&stats.fdatasyncs, 1);
            st = self.lock();
            match res {
                Ok(()) => {
                    if upto > st.durable {
                        st.durable = upto;
                        self.durable_hint.store(upto, Ordering::Release);
                    }
                    let done = Self::take_covered(&mut st);
                    if !done.is_empty() {
                        stats.record_batch(done.len() as u64);
                    }
                    drop(st);
                    complete(done, None);
                    st = self.lock();
                }
                Err(e) => {
                    Stats::add(&stats.io_errors, 1);
                    let msg = format!("fdatasync failed: {e}");
                    drop(st);
                    on_error(&msg);
                    self.fail(&msg);
                    st = self.lock();
                }
            }
        }
    }
}

fn complete(waiters: Vec<Waiter>, err: Option<&Error>) {
    for w in waiters {
        w.notifier.push_ready(Completion {
            tag: w.tag,
            result: err.map_or(Ok(()), |e| Err(e.duplicate())),
            buf: w.buf,
        });
    }
}
