//! The epoll socket backend: non-blocking `recv` and `sendmsg` driven by the
//! reactor's edge-triggered readiness.

use std::io::{self, IoSlice};
use std::net::{Shutdown, TcpStream};

use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags};

use crate::epoll::{Interest, Ready, Registration};
use crate::reactor::Context;
use crate::socket::SocketIo;

/// A TCP stream registered with its reactor.
#[derive(Debug)]
pub struct EpollSocket {
    // Declared before `stream`: the registration leaves the epoll set before
    // the fd is closed.
    reg: Registration,
    stream: TcpStream,
}

impl EpollSocket {
    /// Register a non-blocking `stream` with the calling reactor.
    pub fn new(stream: TcpStream, cx: &mut Context) -> io::Result<EpollSocket> {
        use std::os::fd::AsFd;
        let reg = cx.register(stream.as_fd(), Interest::BOTH)?;
        Ok(EpollSocket { reg, stream })
    }

    /// The stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

impl SocketIo for EpollSocket {
    fn may_recv(&self) -> bool {
        self.reg.is_readable()
    }

    fn may_send(&self) -> bool {
        self.reg.is_writable()
    }

    fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        if buf.capacity() == buf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no room"));
        }
        match rustix::net::recv(
            &self.stream,
            rustix::buffer::spare_capacity(buf),
            RecvFlags::DONTWAIT,
        ) {
            Ok((n, _)) => Ok(n),
            Err(rustix::io::Errno::AGAIN) => {
                self.reg.clear(Ready::READABLE);
                Err(io::ErrorKind::WouldBlock.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    const DIRECT_RECV: bool = true;

    fn recv_direct(
        &mut self,
        direct: &mut Vec<u8>,
        max: usize,
        buf: &mut Vec<u8>,
        more: usize,
    ) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let max = max.min(direct.capacity() - direct.len());
        let room = (buf.capacity() - buf.len()).min(more);
        if max == 0 {
            return self.recv(buf);
        }
        let mut iov = [
            libc::iovec {
                iov_base: direct.spare_capacity_mut().as_mut_ptr().cast(),
                iov_len: max,
            },
            libc::iovec {
                iov_base: buf.spare_capacity_mut().as_mut_ptr().cast(),
                iov_len: room,
            },
        ];
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = if room > 0 { 2 } else { 1 };
        // SAFETY: both iovecs describe spare capacity of live vectors that
        // nothing else borrows during the call (`max` and `room` are at
        // most that capacity); the kernel writes at most their lengths and
        // returns how many bytes it wrote.
        let r = unsafe {
            libc::recvmsg(
                self.stream.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        let Ok(n) = usize::try_from(r) else {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                self.reg.clear(Ready::READABLE);
            }
            return Err(e);
        };
        let first = n.min(max);
        // SAFETY: the kernel initialised the first `first` bytes of
        // `direct`'s spare capacity and the next `n - first` of `buf`'s
        // (the iovecs are filled in order).
        unsafe {
            direct.set_len(direct.len() + first);
            buf.set_len(buf.len() + (n - first));
        }
        Ok(n)
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match rustix::net::sendmsg(
            &self.stream,
            bufs,
            &mut SendAncillaryBuffer::default(),
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(n) => Ok(n),
            Err(rustix::io::Errno::AGAIN) => {
                self.reg.clear(Ready::WRITABLE);
                Err(io::ErrorKind::WouldBlock.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn shutdown(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
