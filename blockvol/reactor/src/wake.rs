//! The "sleeping" flag that lets posters skip the wake-up syscall while a
//! reactor is spinning, without ever losing a wake-up.
//!
//! The protocol is Dekker's: the reactor stores `sleeping = true`, fences,
//! then checks its queues; a poster pushes its message, fences, then reads
//! `sleeping`. With both fences `SeqCst`, at least one side sees the other's
//! store: either the reactor finds the message and does not sleep, or the
//! poster finds the flag and kicks the eventfd (which stays readable until the
//! reactor drains it, so a kick that lands before `epoll_wait` still wakes it).
//! `tests::loom_*` model-check this with loom.

#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicBool, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicBool, Ordering};

/// Whether the owner of a queue is (about to be) asleep.
#[derive(Debug)]
pub(crate) struct SleepFlag {
    sleeping: AtomicBool,
}

impl SleepFlag {
    /// A flag for an owner that is awake.
    pub(crate) fn new() -> SleepFlag {
        SleepFlag {
            sleeping: AtomicBool::new(false),
        }
    }

    /// Owner side: announce the intent to sleep. The caller must check its
    /// queues *after* this returns and call [`SleepFlag::wake`] instead of
    /// sleeping if anything is queued.
    pub(crate) fn prepare_sleep(&self) {
        self.sleeping.swap(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Owner side: awake again (after sleeping, or instead of it).
    pub(crate) fn wake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Poster side, called *after* the message is pushed: whether the poster
    /// must kick the owner's eventfd. Costs one fence and one plain load while
    /// the owner spins (no cache-line ping-pong from a read-modify-write).
    pub(crate) fn needs_kick(&self) -> bool {
        fence(Ordering::SeqCst);
        self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel)
    }
}

#[cfg(all(test, loom))]
mod tests {
    use super::SleepFlag;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    /// The eventfd, modelled as a latched flag with a condvar.
    struct Efd {
        set: Mutex<bool>,
        cv: Condvar,
    }

    impl Efd {
        fn kick(&self) {
            *self.set.lock().unwrap() = true;
            self.cv.notify_one();
        }
        fn wait_and_drain(&self) {
            let mut g = self.set.lock().unwrap();
            while !*g {
                g = self.cv.wait(g).unwrap();
            }
            *g = false;
        }
    }

    /// Two posters and one reactor that sleeps whenever its queue is empty:
    /// the reactor must receive both messages (a lost wake-up deadlocks,
    /// which loom reports).
    #[test]
    fn loom_no_lost_wakeup() {
        loom::model(|| {
            let flag = Arc::new(SleepFlag::new());
            let queue = Arc::new(AtomicUsize::new(0));
            let efd = Arc::new(Efd {
                set: Mutex::new(false),
                cv: Condvar::new(),
            });
            let mut posters = Vec::new();
            for _ in 0..2 {
                let (flag, queue, efd) = (flag.clone(), queue.clone(), efd.clone());
                posters.push(thread::spawn(move || {
                    queue.fetch_add(1, Ordering::Release);
                    let k = flag.needs_kick();
                    println!("poster kick={k}");
                    if k {
                        efd.kick();
                    }
                }));
            }
            println!("=== iteration");
            let mut got = 0;
            while got < 2 {
                let n = queue.swap(0, Ordering::Acquire);
                println!("R swap {n}");
                if n > 0 {
                    got += n;
                    continue;
                }
                flag.prepare_sleep();
                let q = queue.load(Ordering::Acquire);
                println!("R prepared, q={q}");
                if q > 0 {
                    flag.wake();
                    continue;
                }
                println!("R wait");
                efd.wait_and_drain();
                println!("R woke");
                flag.wake();
            }
            for p in posters {
                p.join().unwrap();
            }
        });
    }
}
