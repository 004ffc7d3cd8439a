//! An echo server over real loopback sockets on two reactors: several
//! well-behaved clients, a half-closed client, a client sending garbage and
//! a client that does not read for a while (backpressure), all at once; on
//! each socket I/O backend and in the adaptive and interrupt poll modes.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use keel_reactor::{
    Close, CloseReason, Connection, ConnectionConfig, ConnectionFactory, Context, Listener,
    ListenerConfig, OutQueue, PollMode, PoolError, Protocol, ReactorConfig, ReactorPool,
    SocketIoKind,
};

const MAGIC: u8 = 0xEC;

/// Frames: MAGIC, u16 big-endian length, payload. The echo is the same
/// frame followed by a one-byte status, the way a target sends data and
/// then a response capsule.
struct Echo {
    closes: Arc<Mutex<Vec<CloseReason>>>,
}

impl Protocol for Echo {
    fn on_input(
        &mut self,
        input: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<usize, Close> {
        if input[0] != MAGIC {
            return Err(Close::Now);
        }
        if input.len() < 3 {
            return Ok(0);
        }
        let len = usize::from(u16::from_be_bytes([input[1], input[2]]));
        if input.len() < 3 + len {
            return Ok(0);
        }
        let mut buf = match cx.buffer_pool().get(len) {
            Ok(b) => b,
            Err(PoolError::WouldBlock) => return Ok(0),
            Err(PoolError::Refused { .. }) => return Err(Close::Now),
        };
        buf.extend_from_slice(&input[3..3 + len]);
        out.push(&input[..3]);
        out.push_buf(buf);
        out.push(&[0]);
        Ok(3 + len)
    }

    fn on_close(&mut self, reason: &CloseReason, _cx: &mut Context) {
        self.closes.lock().unwrap().push(reason.clone());
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![MAGIC];
    f.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn expect_echo(s: &mut TcpStream, payload: &[u8]) {
    let mut got = vec![0u8; payload.len() + 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got[..3], &frame(payload)[..3]);
    assert_eq!(&got[3..3 + payload.len()], payload);
    assert_eq!(got[3 + payload.len()], 0);
}

fn payload(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 31 + seed * 7).to_le_bytes()[0])
        .collect()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn echo_server_isolates_bad_clients_epoll() {
    echo_server_isolates_bad_clients(
        SocketIoKind::Epoll,
        PollMode::Adaptive {
            spin: Duration::from_micros(20),
        },
    );
}

#[cfg(feature = "sockets-uring")]
#[test]
fn echo_server_isolates_bad_clients_io_uring() {
    echo_server_isolates_bad_clients(
        SocketIoKind::Uring,
        PollMode::Adaptive {
            spin: Duration::from_micros(20),
        },
    );
}

#[cfg(feature = "sockets-uring")]
#[test]
fn echo_server_isolates_bad_clients_io_uring_interrupt() {
    echo_server_isolates_bad_clients(SocketIoKind::Uring, PollMode::Interrupt);
}

#[test]
fn echo_server_isolates_bad_clients_epoll_interrupt() {
    echo_server_isolates_bad_clients(SocketIoKind::Epoll, PollMode::Interrupt);
}

fn echo_server_isolates_bad_clients(socket_io: SocketIoKind, poll_mode: PollMode) {
    let mut pool = ReactorPool::start(&ReactorConfig {
        reactors: 2,
        poll_mode,
        socket_io,
        ..ReactorConfig::default()
    })
    .unwrap();
    assert_eq!(pool.socket_io(), socket_io);
    let closes = Arc::new(Mutex::new(Vec::new()));
    let cfg = ConnectionConfig {
        output_high_water: 64 << 10,
        output_low_water: 16 << 10,
        ..ConnectionConfig::default()
    };
    let c = closes.clone();
    let factory: ConnectionFactory = Arc::new(move |stream, cx: &mut Context| {
        let proto = Echo { closes: c.clone() };
        assert_eq!(cx.socket_io(), socket_io);
        Connection::boxed(stream, proto, cfg.clone(), None, cx).ok()
    });
    let listener = Listener::bind(
        &pool,
        "127.0.0.1:0".parse().unwrap(),
        ListenerConfig::default(),
        factory,
    )
    .unwrap();
    let addr = listener.local_addr();

    let mut clients = Vec::new();
    // Well-behaved clients: request/response with a few pipelined frames.
    for id in 0..4 {
        clients.push(thread::spawn(move || {
            let mut s = connect(addr);
            for round in 0..100 {
                let ps: Vec<Vec<u8>> = (0..3)
                    .map(|k| payload(id * 1000 + round * 3 + k, 1 + (round * 97 + k * 13) % 3000))
                    .collect();
                let mut batch = Vec::new();
                for p in &ps {
                    batch.extend_from_slice(&frame(p));
                }
                s.write_all(&batch).unwrap();
                for p in &ps {
                    expect_echo(&mut s, p);
                }
            }
        }));
    }
    // A half-closed client: sends, shuts its write side, reads everything
    // (the last echo is large: the close must wait until it has left).
    clients.push(thread::spawn(move || {
        let mut s = connect(addr);
        let ps: Vec<Vec<u8>> = (0..4)
            .map(|k| payload(k, if k == 3 { 65_000 } else { 500 + k }))
            .collect();
        for p in &ps {
            s.write_all(&frame(p)).unwrap();
        }
        s.shutdown(Shutdown::Write).unwrap();
        for p in &ps {
            expect_echo(&mut s, p);
        }
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "server closes after answering");
    }));
    // A client sending garbage: it gets disconnected.
    clients.push(thread::spawn(move || {
        let mut s = connect(addr);
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("garbage got {n} bytes back"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }));
    // A client that writes 4 MB before reading anything: the server must
    // stop reading (backpressure) instead of queueing without bound.
    clients.push(thread::spawn(move || {
        let s = connect(addr);
        let mut r = s.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let mut s = s;
            for i in 0..1400 {
                s.write_all(&frame(&payload(i, 3000))).unwrap();
            }
        });
        thread::sleep(Duration::from_millis(200));
        for i in 0..1400 {
            expect_echo(&mut r, &payload(i, 3000));
        }
        writer.join().unwrap();
    }));
    for c in clients {
        c.join().unwrap();
    }

    let until = Instant::now() + Duration::from_secs(5);
    while closes.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < until,
            "closes: {:?}",
            closes.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(5));
    }
    {
        let closes = closes.lock().unwrap();
        assert!(closes.contains(&CloseReason::PeerClosed), "{closes:?}");
        assert!(closes.contains(&CloseReason::Protocol), "{closes:?}");
    }
    assert_eq!(listener.accepted(), 7);
    // Both reactors got connections.
    let msgs: Vec<u64> = pool
        .reactors()
        .iter()
        .map(|r| r.counters().messages)
        .collect();
    assert!(msgs.iter().all(|&m| m > 0), "{msgs:?}");
    let ring: u64 = pool
        .reactors()
        .iter()
        .map(|r| r.counters().ring_completions)
        .sum();
    match socket_io {
        SocketIoKind::Uring => assert!(ring > 100, "socket I/O went through the ring: {ring}"),
        SocketIoKind::Epoll => assert_eq!(ring, 0),
    }

    pool.stop();
    let stats = pool.buffer_pool().stats();
    assert_eq!(stats.in_use_bytes, 0, "{stats:?}");
    assert!(stats.hits > stats.misses, "{stats:?}");
    let closes = closes.lock().unwrap();
    assert_eq!(closes.len(), 7, "every connection closed once: {closes:?}");
}

/// Requests: b'B', u16 big-endian count, u8 seed. The response is `count`
/// pieces, each an 8-byte header (coalesced) and a pool buffer of varying
/// size: one response spans many output buffers.
struct Big;

fn big_piece(seed: u8, k: usize) -> Vec<u8> {
    let len = [1, 4096, 60_000, 777, 20_000][k % 5];
    payload(usize::from(seed) * 100 + k, len)
}

impl Protocol for Big {
    fn on_input(
        &mut self,
        input: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<usize, Close> {
        if input[0] != b'B' {
            return Err(Close::Now);
        }
        if input.len() < 4 {
            return Ok(0);
        }
        let count = usize::from(u16::from_be_bytes([input[1], input[2]]));
        let seed = input[3];
        for k in 0..count {
            let piece = big_piece(seed, k);
            let mut buf = match cx.buffer_pool().get(piece.len()) {
                Ok(b) => b,
                Err(_) => return Err(Close::Now),
            };
            buf.extend_from_slice(&piece);
            out.push(&u64::try_from(k).unwrap().to_be_bytes());
            out.push_buf(buf);
        }
        Ok(4)
    }
}

#[test]
fn large_responses_of_many_buffers_arrive_in_order_epoll() {
    large_responses_of_many_buffers_arrive_in_order(SocketIoKind::Epoll);
}

#[cfg(feature = "sockets-uring")]
#[test]
fn large_responses_of_many_buffers_arrive_in_order_io_uring() {
    large_responses_of_many_buffers_arrive_in_order(SocketIoKind::Uring);
}

/// Responses of up to 150 buffers (several sends each, and with small
/// socket buffers and a slow reader, short sends) arrive intact and in
/// order, and every pool buffer comes back.
fn large_responses_of_many_buffers_arrive_in_order(socket_io: SocketIoKind) {
    let mut pool = ReactorPool::start(&ReactorConfig {
        reactors: 1,
        poll_mode: PollMode::Interrupt,
        socket_io,
        ..ReactorConfig::default()
    })
    .unwrap();
    let factory: ConnectionFactory = Arc::new(move |stream, cx: &mut Context| {
        Connection::boxed(stream, Big, ConnectionConfig::default(), None, cx).ok()
    });
    let mut lcfg = ListenerConfig::default();
    lcfg.socket.send_buffer = Some(32 << 10);
    let listener = Listener::bind(&pool, "127.0.0.1:0".parse().unwrap(), lcfg, factory).unwrap();
    let mut s = connect(listener.local_addr());
    for (round, count) in [1u16, 7, 64, 65, 150, 3].into_iter().enumerate() {
        let seed = u8::try_from(round).unwrap();
        let c = count.to_be_bytes();
        s.write_all(&[b'B', c[0], c[1], seed]).unwrap();
        let mut buf = vec![0u8; 8192];
        for k in 0..usize::from(count) {
            let mut hdr = [0u8; 8];
            s.read_exact(&mut hdr).unwrap();
            assert_eq!(u64::from_be_bytes(hdr), u64::try_from(k).unwrap());
            let want = big_piece(seed, k);
            let mut got = Vec::with_capacity(want.len());
            while got.len() < want.len() {
                let n = (want.len() - got.len()).min(buf.len());
                s.read_exact(&mut buf[..n]).unwrap();
                got.extend_from_slice(&buf[..n]);
                if round == 4 && k < 20 {
                    // A slow reader: the server's sends go out in pieces.
                    thread::sleep(Duration::from_micros(200));
                }
            }
            assert!(got == want, "round {round} piece {k}");
        }
    }
    drop(s);
    let until = Instant::now() + Duration::from_secs(5);
    while pool.buffer_pool().stats().in_use_bytes > 0 {
        assert!(Instant::now() < until, "{:?}", pool.buffer_pool().stats());
        thread::sleep(Duration::from_millis(5));
    }
    drop(listener);
    pool.stop();
}
