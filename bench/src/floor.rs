//! The loopback floor of a QD1 read: what any target on this machine can
//! reach against a client that blocks in `read`.
//!
//! A server thread answers each 48-byte request with 48 + 4096 bytes (the
//! sizes of an iSCSI SCSI Command and of a Data-In PDU carrying 4 KiB and
//! the status), reading no storage and parsing nothing; the client sends one
//! request at a time and blocks until the whole answer is in. With the
//! server spinning on a non-blocking socket this is the best a busy-polling
//! target can do; with it blocking in `read`, the best an interrupt-driven
//! one can. Both run the echo thread wherever the scheduler puts it, in
//! practice on the other CPU; the third floor pins both ends to one CPU,
//! where a blocking hand-off is a context switch instead of a wake-up of
//! another (possibly halted) virtual CPU: measured 4 µs per round trip
//! against 20 µs spinning and 70 µs blocking across CPUs on the
//! development VM. The report's poll-mode part puts all three beside keel
//! and tgt, so the QD1 goals are read against what the machine allows.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::targets::{percentile, Measure};

/// Where the echo thread waits and runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Floor {
    /// Spinning on a non-blocking socket, on a CPU of the scheduler's choice.
    Spinning,
    /// Blocking in `read`, on a CPU of the scheduler's choice.
    Blocking,
    /// Blocking in `read`, both ends pinned to the client's CPU.
    OneCpu,
}

impl Floor {
    /// Every floor, in the report's order.
    pub const ALL: [Floor; 3] = [Floor::Spinning, Floor::Blocking, Floor::OneCpu];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Floor::Spinning => "spinning echo",
            Floor::Blocking => "blocking echo",
            Floor::OneCpu => "blocking echo, both ends on one CPU",
        }
    }
}

/// Request and response sizes: a SCSI Command PDU, a Data-In PDU with 4 KiB.
const REQ: usize = 48;
const RESP: usize = 48 + 4096;

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Read exactly `buf.len()` bytes; on a non-blocking socket, spin until they
/// are there. `Ok(false)` at end of stream before the first byte.
fn read_full(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn write_full(s: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
    let mut put = 0;
    while put < buf.len() {
        match s.write(&buf[put..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => put += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Serve one connection until the client closes it; returns the requests
/// answered and this thread's CPU time.
fn serve(l: &TcpListener, spin: bool, cpu: Option<usize>) -> Result<(u64, Duration)> {
    if let Some(cpu) = cpu {
        pin(cpu)?;
    }
    let (mut s, _) = l.accept()?;
    s.set_nodelay(true)?;
    s.set_nonblocking(spin)?;
    let t0 = thread_cpu();
    let mut req = [0u8; REQ];
    let resp = vec![0x5au8; RESP];
    let mut n = 0u64;
    while read_full(&mut s, &mut req)? {
        write_full(&mut s, &resp)?;
        n += 1;
    }
    Ok((n, thread_cpu().saturating_sub(t0)))
}

/// Pin the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).context("sched_setaffinity")
}

/// QD1 round trips for `seconds` against a bare echo thread as `floor`
/// says; the client blocks. CPU per I/O is the echo thread's.
pub fn measure(floor: Floor, seconds: f64) -> Result<Measure> {
    // One CPU: the client's current one, for both ends; the calling
    // thread gets its own affinity back afterwards.
    let restore = match floor {
        Floor::OneCpu => {
            let had = rustix::thread::sched_getaffinity(None).context("sched_getaffinity")?;
            let cpu = rustix::thread::sched_getcpu();
            pin(cpu)?;
            Some((had, cpu))
        }
        _ => None,
    };
    let r = round_trips(
        floor == Floor::Spinning,
        restore.as_ref().map(|r| r.1),
        seconds,
    );
    if let Some((had, _)) = restore {
        rustix::thread::sched_setaffinity(None, &had).context("sched_setaffinity")?;
    }
    r
}

fn round_trips(spin: bool, cpu: Option<usize>, seconds: f64) -> Result<Measure> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let server = std::thread::Builder::new()
        .name("floor-echo".into())
        .spawn(move || serve(&l, spin, cpu))?;
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let req = [0xa5u8; REQ];
    let mut resp = vec![0u8; RESP];
    let mut lat: Vec<u64> = Vec::new();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut now = start;
    while now < end {
        write_full(&mut c, &req)?;
        if !read_full(&mut c, &mut resp)? {
            anyhow::bail!("the echo thread closed the connection");
        }
        let t = Instant::now();
        lat.push(u64::try_from((t - now).as_nanos()).unwrap_or(u64::MAX));
        now = t;
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(c);
    let (served, cpu) = server
        .join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))?
        .context("echo thread")?;
    Ok(Measure {
        iops: lat.len() as f64 / elapsed,
        p50_us: percentile(&mut lat, 0.5),
        p99_us: percentile(&mut lat, 0.99),
        cpu_us_per_io: cpu.as_secs_f64() * 1e6 / served.max(1) as f64,
        max_us: percentile(&mut lat, 1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_floor_answers_every_request() {
        let before = rustix::thread::sched_getaffinity(None).unwrap();
        for floor in Floor::ALL {
            let m = measure(floor, 0.2).unwrap();
            assert!(m.iops > 100.0, "{floor:?}: {} round trips/s", m.iops);
            assert!(m.p50_us > 0.0 && m.p50_us <= m.p99_us && m.p99_us <= m.max_us);
            assert!(m.cpu_us_per_io > 0.0);
        }
        // The one-CPU floor gives the caller its own affinity back.
        let after = rustix::thread::sched_getaffinity(None).unwrap();
        assert!(
            (0..rustix::thread::CpuSet::MAX_CPU).all(|c| before.is_set(c) == after.is_set(c)),
            "the caller's CPU affinity changed"
        );
    }
}
