//! Cross-reactor mailboxes: a bounded lock-free queue of closures per reactor,
//! plus the eventfd that wakes the reactor when it sleeps.
//!
//! Posting is allowed from any thread (another reactor, a tokio worker, a
//! test). A post costs one queue push and, while the target spins, one fence
//! and a load; the `eventfd` write happens only when the target announced it
//! is going to sleep (see [`crate::wake`]).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crossbeam_queue::ArrayQueue;
use rustix::event::{eventfd, EventfdFlags};

use crate::reactor::Context;
use crate::wake::SleepFlag;

/// A message: a closure run on the target reactor's thread.
pub type Message = Box<dyn FnOnce(&mut Context) + Send + 'static>;

/// Why a post failed; the message is handed back.
pub enum PostError {
    /// The mailbox is full (the target is overloaded or stuck).
    Full(Message),
    /// The target reactor has stopped.
    Stopped(Message),
    /// No reactor with that index.
    NoSuchReactor(Message),
}

impl std::fmt::Debug for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PostError::Full(_) => "PostError::Full",
            PostError::Stopped(_) => "PostError::Stopped",
            PostError::NoSuchReactor(_) => "PostError::NoSuchReactor",
        })
    }
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PostError::Full(_) => "Mailbox full",
            PostError::Stopped(_) => "Reactor stopped",
            PostError::NoSuchReactor(_) => "No such reactor",
        })
    }
}

impl std::error::Error for PostError {}

impl PostError {
    /// The message that was not delivered.
    pub fn into_message(self) -> Message {
        match self {
            PostError::Full(m) | PostError::Stopped(m) | PostError::NoSuchReactor(m) => m,
        }
    }
}

/// One reactor's inbox.
pub(crate) struct Mailbox {
    queue: ArrayQueue<Message>,
    sleep: SleepFlag,
    efd: OwnedFd,
}

impl Mailbox {
    pub(crate) fn new(capacity: usize) -> io::Result<Mailbox> {
        Ok(Mailbox {
            queue: ArrayQueue::new(capacity.max(1)),
            sleep: SleepFlag::new(),
            efd: eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?,
        })
    }

    /// Queue `msg`; wakes the owner if it sleeps.
    pub(crate) fn post(&self, msg: Message) -> Result<(), Message> {
        self.queue.push(msg)?;
        if self.sleep.needs_kick() {
            self.kick();
        }
        Ok(())
    }

    /// Make the eventfd readable, unconditionally.
    pub(crate) fn kick(&self) {
        // EAGAIN means the counter is saturated, which is readable anyway.
        let _ = rustix::io::write(&self.efd, &1u64.to_ne_bytes());
    }

    /// Owner: take one message.
    pub(crate) fn pop(&self) -> Option<Message> {
        self.queue.pop()
    }

    /// Owner: announce sleep; `false` when messages are already queued (the
    /// owner is then marked awake again and must not sleep).
    pub(crate) fn prepare_sleep(&self) -> bool {
        self.sleep.prepare_sleep();
        if self.queue.is_empty() {
            true
        } else {
            self.sleep.wake();
            false
        }
    }

    /// Owner: awake (after a sleep or a vetoed one).
    pub(crate) fn wake(&self) {
        self.sleep.wake();
    }

    /// Owner: reset the eventfd counter after it was reported readable.
    pub(crate) fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.efd, &mut buf);
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.efd.as_fd()
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}
