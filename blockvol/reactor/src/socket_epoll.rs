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
