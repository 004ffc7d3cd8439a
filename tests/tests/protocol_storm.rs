//! Randomised PDU storms against a real volume-server process: sessions
//! that log in (or connect) properly and then send long runs of PDUs whose
//! kinds, fields, lengths, tags and sequence numbers are drawn at random
//! (mostly plausible, some contradictory, some mangled), answering the
//! target's R2Ts with equally random data. The hand-written hostile cases
//! in `iscsi_robustness.rs` and `nvmf_robustness.rs` check the exact
//! answer to one bad PDU each; these check what a state machine does with
//! sequences nobody wrote down: the server never panics, every connection
//! ends within a bounded time after its peer's EOF, a well-behaved session
//! beside the storms keeps its data, and every pool buffer comes back.
//!
//! Seeds are fixed (the round number), so a failure is reproducible;
//! `KEEL_STORM_ROUNDS=N` runs more rounds (the default keeps CI short),
//! `KEEL_STORM_FIRST=K` starts the iSCSI rounds at seed K, and
//! `KEEL_STORM_DEBUG=1` prints every PDU sent, the pool's counters after
//! each round and the server's log. Debug builds of the server (the tests'
//! own) also check that every buffer given back to the pool came from it.
//!
//! Found with it: a durable write or flush waiting for group commit was
//! not counted in flight, so a closing session lost its buffer; WRITE
//! SAME, the atomic-write and parameter-data paths, staged reads, and
//! the output queue's own copies dropped pool buffers or handed foreign
//! ones to the pool; the NVMe/TCP target queued identify data as a pool
//! buffer; a COMPARE AND WRITE with an EDTL shorter than its data
//! panicked the reactor.
#![allow(clippy::cast_possible_truncation)]
// Opcodes are OR-ed with the Immediate bit, NOP-Out's among them (0x00).
#![allow(clippy::identity_op)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_bench::nvmf_client::Queue;
use keel_pdu::iscsi::Login;
use keel_pdu::nvme::Status;
use keel_tests::iscsi_client::Client;
use keel_tests::server::{iqn, nqn, ServerProcess};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SERVER: &str = env!("CARGO_BIN_EXE_keel-test-server");
const BS: u32 = 4096;
/// Blocks of the storm volume (64 MiB).
const BLOCKS: u64 = (64 << 20) / BS as u64;
/// How long a target may take to close a connection after the peer's EOF.
const CLOSE_WITHIN: Duration = Duration::from_secs(20);

fn rounds(default: u64) -> u64 {
    std::env::var("KEEL_STORM_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A transfer the target asked for: (task tag, transfer tag, offset, length).
type R2t = (u32, u32, u32, u32);

/// Reads and parses everything the target sends on a thread of its own, so
/// the target never stalls on a full socket, and collects its R2Ts.
struct Drain {
    thread: JoinHandle<u64>,
    r2ts: Arc<Mutex<Vec<R2t>>>,
}

impl Drain {
    /// `header` parses one PDU from the stream: Ok(Some(r2t)) for an R2T,
    /// Ok(None) for anything else, Err at EOF or a broken stream.
    fn start(
        mut sock: TcpStream,
        header: fn(&mut TcpStream) -> std::io::Result<Option<R2t>>,
    ) -> Drain {
        let r2ts = Arc::new(Mutex::new(Vec::new()));
        let r = Arc::clone(&r2ts);
        sock.set_read_timeout(Some(CLOSE_WITHIN + Duration::from_secs(5)))
            .unwrap();
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while let Ok(x) = header(&mut sock) {
                n += 1;
                if let Some(t) = x {
                    let mut v = r.lock().unwrap();
                    v.push(t);
                    if v.len() > 64 {
                        v.remove(0);
                    }
                }
            }
            n
        });
        Drain { thread, r2ts }
    }

    /// Take the oldest R2T not yet answered.
    fn take(&self) -> Option<R2t> {
        let mut v = self.r2ts.lock().unwrap();
        (!v.is_empty()).then(|| v.remove(0))
    }

    fn pick(&self, rng: &mut StdRng) -> Option<R2t> {
        let v = self.r2ts.lock().unwrap();
        if v.is_empty() {
            None
        } else {
            Some(v[rng.gen_range(0..v.len())])
        }
    }

    /// Wait for the target to close the connection (the drain thread sees
    /// EOF or an error) and return the PDUs it sent; None if it did not
    /// close within [`CLOSE_WITHIN`].
    fn closed(self) -> Option<u64> {
        let t0 = Instant::now();
        while !self.thread.is_finished() {
            if t0.elapsed() > CLOSE_WITHIN {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.thread.join().ok()
    }
}

/// What a storm test counts, and its end: every connection closed after
/// the peer's EOF, the server alive without a panic, the victim's data
/// intact, every pool buffer back.
#[derive(Default)]
struct Tally {
    rounds: u64,
    pdus: u64,
    answers: u64,
    open_after_eof: Vec<u64>,
}

impl Tally {
    /// A round's connection is done sending: wait for the target to close
    /// it.
    fn end(&mut self, round: u64, drain: Drain) {
        self.rounds += 1;
        match drain.closed() {
            Some(n) => self.answers += n,
            None => self.open_after_eof.push(round),
        }
    }

    fn finish(self, s: &mut ServerProcess, what: &str, unit: &str, victim_ok: impl FnOnce()) {
        assert!(
            self.open_after_eof.is_empty(),
            "{what}: connections still open {CLOSE_WITHIN:?} after the peer's EOF, rounds {:?}",
            self.open_after_eof
        );
        check_server(s);
        victim_ok();
        if std::env::var_os("KEEL_STORM_DEBUG").is_some() {
            std::thread::sleep(Duration::from_secs(2));
            let _ = s.admin_get("/metrics");
            eprintln!("FINAL LOG\n{}", s.log());
        }
        s.assert_buffer_pool_idle();
        eprintln!(
            "{what}: {} {unit}, {} PDUs sent, {} received",
            self.rounds, self.pdus, self.answers
        );
    }
}

/// A connection to `addr` for storm round `round` (a refusal means the
/// server died: its log says why).
fn connect(s: &ServerProcess, addr: std::net::SocketAddr, round: u64) -> TcpStream {
    TcpStream::connect(addr).unwrap_or_else(|e| {
        panic!(
            "round {round}: cannot connect ({e}); server log:\n{}",
            s.log()
        )
    })
}

fn skip(sock: &mut TcpStream, n: usize) -> std::io::Result<()> {
    let mut left = n;
    let mut buf = [0u8; 16 << 10];
    while left > 0 {
        let k = left.min(buf.len());
        sock.read_exact(&mut buf[..k])?;
        left -= k;
    }
    Ok(())
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One iSCSI PDU from the target (no digests are negotiated here).
fn iscsi_header(sock: &mut TcpStream) -> std::io::Result<Option<R2t>> {
    let mut h = [0u8; 48];
    sock.read_exact(&mut h)?;
    let ahs = usize::from(h[4]) * 4;
    let dlen = (usize::from(h[5]) << 16) | (usize::from(h[6]) << 8) | usize::from(h[7]);
    skip(sock, ahs + dlen.div_ceil(4) * 4)?;
    Ok((h[0] & 0x3f == 0x31).then(|| (be32(&h, 16), be32(&h, 20), be32(&h, 40), be32(&h, 44))))
}

/// One NVMe/TCP PDU from the target.
fn nvme_header(sock: &mut TcpStream) -> std::io::Result<Option<R2t>> {
    let mut ch = [0u8; 8];
    sock.read_exact(&mut ch)?;
    let plen = le32(&ch, 4) as usize;
    if !(8..=(16 << 20)).contains(&plen) {
        return Err(std::io::Error::other(format!("target sent PLEN {plen}")));
    }
    let mut rest = vec![0u8; plen - 8];
    sock.read_exact(&mut rest)?;
    if ch[0] == 0x09 && rest.len() >= 16 {
        // R2T: CCCID, TTAG, R2TO, R2TL.
        let cccid = u32::from(u16::from_le_bytes([rest[0], rest[1]]));
        let ttag = u32::from(u16::from_le_bytes([rest[2], rest[3]]));
        return Ok(Some((cccid, ttag, le32(&rest, 4), le32(&rest, 8))));
    }
    Ok(None)
}

/// A length for a data segment or transfer: mostly small and aligned,
/// sometimes odd, zero or large.
fn length(rng: &mut StdRng, max: u32) -> u32 {
    match rng.gen_range(0..10) {
        0 => 0,
        1 => rng.gen_range(1..600),
        2 => rng.gen_range(0..=max),
        _ => BS * rng.gen_range(1..=(max / BS).clamp(1, 16)),
    }
}

/// Random bytes, [`length`] of them.
fn junk_len(rng: &mut StdRng, max: u32) -> Vec<u8> {
    let n = length(rng, max);
    junk(rng, n as usize)
}

fn junk(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

/// Per-session state of the iSCSI storm: the command numbering the target
/// expects, and recent task tags to collide with.
struct IscsiState {
    /// What the session negotiated: data may come with the command, and
    /// unsolicited Data-Out (up to FirstBurstLength) may follow it.
    immediate_data: bool,
    initial_r2t: bool,
    /// The target's MaxRecvDataSegmentLength and the FirstBurstLength.
    mrdsl: u32,
    first_burst: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    itt: u32,
    recent: Vec<(u32, u32)>,
}

const SCSI_OPS: [u8; 36] = [
    0x00, 0x03, 0x08, 0x0a, 0x12, 0x15, 0x1a, 0x1b, 0x25, 0x28, 0x2a, 0x2e, 0x2f, 0x35, 0x41, 0x42,
    0x4d, 0x55, 0x5a, 0x5e, 0x5f, 0x7f, 0x83, 0x84, 0x88, 0x89, 0x8a, 0x8f, 0x91, 0x93, 0x9e, 0xa0,
    0xa3, 0xa8, 0xaa, 0xff,
];

/// A CDB for `op`: random bytes, with the LBA and length of block commands
/// mostly inside the volume.
fn cdb(rng: &mut StdRng, op: u8) -> ([u8; 16], u32) {
    let mut c = [0u8; 16];
    rng.fill(&mut c[..]);
    c[0] = op;
    let sane = rng.gen_bool(0.7);
    let lba = if sane {
        rng.gen_range(0..BLOCKS - 64)
    } else {
        rng.gen()
    };
    let blocks: u32 = if sane {
        rng.gen_range(0..=64)
    } else {
        rng.gen()
    };
    match op {
        0x08 | 0x0a => {
            c[1] = (lba >> 16) as u8 & 0x1f;
            c[2] = (lba >> 8) as u8;
            c[3] = lba as u8;
            c[4] = blocks as u8;
        }
        0x28 | 0x2a | 0x2e | 0x2f | 0x35 | 0x41 => {
            c[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
            c[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
        }
        0xa8 | 0xaa => {
            c[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
            c[6..10].copy_from_slice(&blocks.to_be_bytes());
        }
        0x88 | 0x8a | 0x8f | 0x91 | 0x93 | 0x89 => {
            c[2..10].copy_from_slice(&lba.to_be_bytes());
            c[10..14].copy_from_slice(&blocks.to_be_bytes());
            if op == 0x89 {
                c[13] = blocks as u8 & 0x3;
            }
        }
        _ => {}
    }
    if sane {
        // No protection information, no NACA or link bits.
        if matches!(op >> 5, 1 | 2 | 4 | 5) {
            c[1] &= 0x18;
        }
        let len = match op >> 5 {
            0 => 6,
            1 | 2 => 10,
            4 => 16,
            5 => 12,
            _ => 16,
        };
        c[len - 1] = 0;
    }
    (c, blocks.min(256) * BS)
}

/// A BHS with the common fields.
fn bhs(op: u8, flags: u8, dlen: usize, lun: u64, itt: u32) -> [u8; 48] {
    let mut h = [0u8; 48];
    h[0] = op;
    h[1] = flags;
    h[5] = (dlen >> 16) as u8;
    h[6] = (dlen >> 8) as u8;
    h[7] = dlen as u8;
    h[8..16].copy_from_slice(&lun.to_be_bytes());
    h[16..20].copy_from_slice(&itt.to_be_bytes());
    h
}

fn with_data(h: [u8; 48], data: &[u8]) -> Vec<u8> {
    let mut v = h.to_vec();
    v.extend_from_slice(data);
    v.resize(48 + data.len().div_ceil(4) * 4, 0);
    v
}

/// One random iSCSI PDU for a logged-in session: well formed and mostly
/// plausible (random CDBs, LBAs, lengths, tags, task management, Data-Out
/// for the target's R2Ts, for tasks that asked for none or for nothing),
/// and with probability `fatal` one the target must answer by dropping the
/// connection (a Login in full-feature phase, a mangled header, an
/// undefined opcode, a segment longer than negotiated, ...).
fn iscsi_pdu(rng: &mut StdRng, st: &mut IscsiState, drain: &Drain, fatal: f64) -> Vec<u8> {
    let imm = if rng.gen_bool(0.1) { 0x40 } else { 0 };
    let lun: u64 = if rng.gen_bool(0.95) { 0 } else { rng.gen() };
    let itt = if rng.gen_bool(0.1) && !st.recent.is_empty() {
        // A tag still (or recently) in use.
        st.recent[rng.gen_range(0..st.recent.len())].0
    } else {
        st.itt = st.itt.wrapping_add(1);
        st.itt
    };
    // Whether the PDU carries a CmdSN (Data-Out and SNACK do not).
    let mut numbered = true;
    let mut pdu = if rng.gen_bool(fatal) {
        let mut p = match rng.gen_range(0..6) {
            5 => {
                let data = junk_len(rng, 8 << 10);
                let mut h = bhs(0x04 | imm, 0x80, data.len(), lun, itt);
                h[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
                with_data(h, &data)
            }
            0 => {
                let data = b"InitiatorName=iqn.x\0".to_vec();
                with_data(bhs(0x03 | 0x40, 0x87, data.len(), 0, itt), &data)
            }
            1 => {
                let mut h = bhs(0x00 | imm, 0x80, 0, lun, itt);
                h[20..24].copy_from_slice(&rng.gen_range(0u32..100).to_be_bytes());
                with_data(h, &[])
            }
            2 => {
                let n = st.mrdsl + 1 + rng.gen_range(0..4096);
                let data = junk(rng, n as usize);
                with_data(bhs(0x00 | imm, 0x80, data.len(), lun, itt), &data)
            }
            3 => {
                let data = junk_len(rng, 4 << 10);
                let mut h = bhs(rng.gen_range(0x11..0x1c), rng.gen(), data.len(), lun, itt);
                h[20..48].copy_from_slice(&junk(rng, 28));
                with_data(h, &data)
            }
            _ => {
                let mut p = with_data(bhs(0x00, 0x80, 0, lun, itt), &[]);
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(0..48);
                    p[i] = rng.gen();
                }
                p
            }
        };
        p[24..28].copy_from_slice(&st.cmd_sn.to_be_bytes());
        return p;
    } else {
        match rng.gen_range(0..100) {
            // SCSI Command.
            0..=44 => {
                let op = SCSI_OPS[rng.gen_range(0..SCSI_OPS.len())];
                let (c, xfer) = cdb(rng, op);
                let write = matches!(op, 0x0a | 0x2a | 0x2e | 0x41 | 0x42 | 0x55 | 0x15 | 0x5f)
                    || matches!(op, 0x8a | 0x89 | 0x93 | 0xaa);
                let edtl = match rng.gen_range(0..10) {
                    0 => 0,
                    1 => rng.gen(),
                    2 => length(rng, 1 << 20),
                    _ => xfer,
                };
                let imm_len = if write && st.immediate_data && rng.gen_bool(0.6) {
                    edtl.min(length(rng, st.first_burst.min(st.mrdsl)))
                } else {
                    0
                };
                // F=0 announces unsolicited Data-Out (InitialR2T=No), which
                // may follow or not.
                let final_bit = if write && !st.initial_r2t && edtl > imm_len && rng.gen_bool(0.2) {
                    0
                } else {
                    0x80
                };
                let rw = if edtl == 0 {
                    0
                } else if write {
                    0x20
                } else {
                    0x40
                };
                let flags = final_bit | rw | rng.gen_range(0..8);
                let data = junk(rng, imm_len as usize);
                let mut h = bhs(0x01 | imm, flags, data.len(), lun, itt);
                h[20..24].copy_from_slice(&edtl.to_be_bytes());
                h[32..48].copy_from_slice(&c);
                if write {
                    st.recent.push((itt, edtl));
                    if st.recent.len() > 16 {
                        st.recent.remove(0);
                    }
                }
                with_data(h, &data)
            }
            // Data-Out: answering an R2T (its length kept or not),
            // unsolicited for a recent write, or for no task at all.
            45..=69 => {
                let (t_itt, ttt, off, len) = match (rng.gen_range(0..4), drain.pick(rng)) {
                    (0..=2, Some((i, t, o, l))) => {
                        let l = if rng.gen_bool(0.8) {
                            l
                        } else {
                            length(rng, st.mrdsl)
                        };
                        (i, t, o, l.min(st.mrdsl))
                    }
                    _ if !st.initial_r2t && !st.recent.is_empty() && rng.gen_bool(0.5) => {
                        let (i, e) = st.recent[rng.gen_range(0..st.recent.len())];
                        let off = BS * rng.gen_range(0..16);
                        (i, 0xffff_ffff, off, e.min(length(rng, st.mrdsl)))
                    }
                    _ => (rng.gen(), rng.gen(), rng.gen(), length(rng, 16 << 10)),
                };
                let data = junk(rng, len as usize);
                let flags = if rng.gen_bool(0.8) { 0x80 } else { 0 };
                let mut h = bhs(0x05, flags, data.len(), lun, t_itt);
                h[20..24].copy_from_slice(&ttt.to_be_bytes());
                h[36..40].copy_from_slice(&rng.gen_range(0u32..4).to_be_bytes());
                h[40..44].copy_from_slice(&off.to_be_bytes());
                numbered = false;
                with_data(h, &data)
            }
            // NOP-Out: a ping, with or without data.
            70..=77 => {
                let data = junk_len(rng, 8 << 10);
                let mut h = bhs(0x00 | imm, 0x80, data.len(), lun, itt);
                h[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
                with_data(h, &data)
            }
            // Task management on a recent, unknown or finished task.
            78..=85 => {
                let f = rng.gen_range(1..=8);
                let mut h = bhs(0x02 | imm, 0x80 | f, 0, lun, itt);
                let reference = if rng.gen_bool(0.7) {
                    st.recent.last().map_or_else(|| rng.gen(), |&(i, _)| i)
                } else {
                    rng.gen()
                };
                h[20..24].copy_from_slice(&reference.to_be_bytes());
                h[32..36].copy_from_slice(&rng.gen::<u32>().to_be_bytes());
                with_data(h, &[])
            }
            // Text: SendTargets, keys that may not be renegotiated, junk.
            86..=92 => {
                let body: &[&[u8]] = &[
                    b"SendTargets=All\0",
                    b"MaxRecvDataSegmentLength=512\0",
                    b"MaxBurstLength=1\0",
                    b"HeaderDigest=CRC32C\0",
                    b"",
                ];
                let data = body[rng.gen_range(0..body.len())].to_vec();
                let mut h = bhs(0x04 | imm, 0x80, data.len(), lun, itt);
                h[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
                with_data(h, &data)
            }
            // SNACK (the target runs at ErrorRecoveryLevel 0).
            93..=96 => {
                let mut h = bhs(0x10, 0x80 | rng.gen_range(0..4), 0, lun, itt);
                h[36..48].copy_from_slice(&junk(rng, 12));
                numbered = false;
                with_data(h, &[])
            }
            // A NOP-Out answering a NOP-In that was never sent.
            97..=98 => {
                let mut h = bhs(0x40, 0x80, 0, lun, 0xffff_ffff);
                h[20..24].copy_from_slice(&rng.gen::<u32>().to_be_bytes());
                with_data(h, &[])
            }
            // Logout, now and then.
            _ => {
                let h = bhs(0x06 | imm, 0x80 | rng.gen_range(0..3), 0, 0, itt);
                with_data(h, &[])
            }
        }
    };
    if numbered {
        // Now and then a CmdSN outside the window (the target ignores the
        // PDU); otherwise the next one, which a non-immediate PDU uses up.
        let sn = if rng.gen_bool(0.02) {
            st.cmd_sn.wrapping_add(rng.gen_range(1000..1_000_000))
        } else {
            st.cmd_sn
        };
        pdu[24..28].copy_from_slice(&sn.to_be_bytes());
        if pdu[0] & 0x40 == 0 && sn == st.cmd_sn {
            st.cmd_sn = st.cmd_sn.wrapping_add(1);
        }
    }
    pdu[28..32].copy_from_slice(&st.exp_stat_sn.to_be_bytes());
    pdu
}

fn iscsi_victim(s: &ServerProcess) -> (Client, Vec<u8>) {
    let mut c = Client::connect(s.iscsi).unwrap();
    c.login("iqn.2026-11.io.keel.test:victim", Some(&iqn("vol1")), None)
        .unwrap();
    let data: Vec<u8> = (0..64 * BS).map(|i| (i * 7 % 251) as u8).collect();
    let r = c.write16(100, &data, BS, true).unwrap();
    assert_eq!(r.status, 0);
    (c, data)
}

fn iscsi_victim_ok(c: &mut Client, data: &[u8]) {
    let r = c.read16(100, 64, BS).unwrap();
    assert_eq!(r.status, 0);
    assert!(r.data == data, "the victim's data changed");
}

fn server(dir: &Path) -> ServerProcess {
    // vol0 takes the storms, vol1 holds the victim's data.
    ServerProcess::start(
        Path::new(SERVER),
        dir,
        &["vol0:64MiB", "vol1:64MiB"],
        &["--poll-mode", "interrupt"],
    )
}

fn check_server(s: &mut ServerProcess) {
    if std::env::var_os("KEEL_STORM_DEBUG").is_some() {
        eprintln!("{}", s.log());
    }
    assert!(s.alive(), "server died:\n{}", s.log());
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

#[test]
fn iscsi_sessions_survive_random_pdu_storms() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = server(dir.path());
    let (mut v, data) = iscsi_victim(&s);
    let n = rounds(500);
    let mut tally = Tally::default();
    let first: u64 = std::env::var("KEEL_STORM_FIRST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for round in first..first + n {
        let mut rng = StdRng::seed_from_u64(round);
        let mut c = match Client::connect(s.iscsi) {
            Ok(c) => c,
            Err(e) => panic!(
                "round {round}: cannot connect ({e}); server log:\n{}",
                s.log()
            ),
        };
        let immediate_data = rng.gen_bool(0.7);
        let initial_r2t = rng.gen_bool(0.3);
        let yes = |b: bool| if b { "Yes" } else { "No" }.to_string();
        c.login_keys = vec![
            ("ImmediateData".into(), yes(immediate_data)),
            ("InitialR2T".into(), yes(initial_r2t)),
        ];
        c.login("iqn.2026-11.io.keel.test:storm", Some(&iqn("vol0")), None)
            .unwrap();
        let drain = Drain::start(c.socket().try_clone().unwrap(), iscsi_header);
        let mut st = IscsiState {
            immediate_data,
            initial_r2t,
            mrdsl: c.target_mrdsl as u32,
            first_burst: 64 << 10,
            cmd_sn: c.cmd_sn,
            exp_stat_sn: c.exp_stat_sn,
            itt: 1000,
            recent: Vec::new(),
        };
        for _ in 0..rng.gen_range(20..400) {
            let p = iscsi_pdu(&mut rng, &mut st, &drain, 0.005);
            // Sometimes in pieces, to exercise partial input.
            let sent = if rng.gen_bool(0.1) && p.len() > 1 {
                let cut = rng.gen_range(1..p.len());
                c.socket()
                    .write_all(&p[..cut])
                    .and_then(|()| c.socket().write_all(&p[cut..]))
            } else {
                c.socket().write_all(&p)
            };
            if std::env::var_os("KEEL_STORM_DEBUG").is_some() {
                eprintln!(
                    "round {round}: len {} {:02x?}",
                    p.len(),
                    &p[..p.len().min(48)]
                );
            }
            if sent.is_err() {
                break; // the target dropped the session: its right
            }
            tally.pdus += 1;
        }
        let _ = c.socket().shutdown(Shutdown::Write);
        tally.end(round, drain);
        if std::env::var_os("KEEL_STORM_DEBUG").is_some() {
            std::thread::sleep(Duration::from_millis(300));
            let m = s.admin_get("/metrics");
            let l: Vec<&str> = m
                .lines()
                .filter(|l| l.starts_with("keel_buffer_pool") && !l.starts_with("#"))
                .collect();
            eprintln!("after round {round}: {l:?}");
        }
        if round % 10 == 9 {
            check_server(&mut s);
            iscsi_victim_ok(&mut v, &data);
        }
    }
    tally.finish(&mut s, "iSCSI storm", "sessions", || {
        iscsi_victim_ok(&mut v, &data)
    });
    v.logout().unwrap();
}

/// Key=value pairs for the login storm: the keys RFC 7143 defines (and
/// some nobody does), with valid, out-of-range, malformed and huge values.
fn login_text(rng: &mut StdRng) -> Vec<u8> {
    const KEYS: [&str; 22] = [
        "InitiatorName",
        "TargetName",
        "SessionType",
        "AuthMethod",
        "CHAP_A",
        "CHAP_N",
        "CHAP_R",
        "CHAP_I",
        "CHAP_C",
        "HeaderDigest",
        "DataDigest",
        "MaxRecvDataSegmentLength",
        "MaxBurstLength",
        "FirstBurstLength",
        "MaxConnections",
        "InitialR2T",
        "ImmediateData",
        "ErrorRecoveryLevel",
        "DefaultTime2Wait",
        "MaxOutstandingR2T",
        "X-com.example.junk",
        "TargetAlias",
    ];
    const VALUES: [&str; 22] = [
        "iqn.2026-11.io.keel.test:storm",
        "iqn.2026-11.io.keel:vol0",
        "iqn.2026-11.io.keel:missing",
        "Normal",
        "Discovery",
        "None",
        "CHAP",
        "CHAP,None",
        "5",
        "7,5",
        "CRC32C,None",
        "None,CRC32C",
        "0",
        "1",
        "512",
        "16777215",
        "16777216",
        "4294967296",
        "Yes",
        "No",
        "Irrelevant",
        "Reject",
    ];
    let mut t = Vec::new();
    for _ in 0..rng.gen_range(0..12) {
        match rng.gen_range(0..20) {
            // A key without '=', an empty key, a bare NUL.
            0 => t.extend_from_slice(b"InitiatorName\0"),
            1 => t.extend_from_slice(b"=x\0"),
            2 => t.push(0),
            // A huge or binary value.
            3 => {
                t.extend_from_slice(KEYS[rng.gen_range(0..KEYS.len())].as_bytes());
                t.push(b'=');
                let n = rng.gen_range(200..9000);
                t.extend((0..n).map(|_| rng.gen_range(1u8..=255)));
                t.push(0);
            }
            // A hex or base64 value (CHAP).
            4 => {
                t.extend_from_slice(KEYS[rng.gen_range(4..9)].as_bytes());
                t.extend_from_slice(if rng.gen_bool(0.5) { b"=0x" } else { b"=0b" });
                let n = rng.gen_range(0..80);
                t.extend((0..n).map(|_| b"0123456789abcdefABCDEF+/=g"[rng.gen_range(0..26)]));
                t.push(0);
            }
            _ => {
                t.extend_from_slice(KEYS[rng.gen_range(0..KEYS.len())].as_bytes());
                t.push(b'=');
                t.extend_from_slice(VALUES[rng.gen_range(0..VALUES.len())].as_bytes());
                t.push(0);
            }
        }
    }
    t
}

/// Logins that go wrong in every way the login phase allows: random stage
/// transitions (T, C, CSG, NSG), versions, ISIDs, TSIHs of sessions that do
/// or do not exist, CmdSNs, text split across continuations or not, keys
/// from a vocabulary with good, bad and huge values, and now and then a
/// non-login PDU before full-feature phase. Each connection must get login
/// responses or be dropped, close within a bounded time of the
/// initiator's EOF, and leave the server, a logged-in victim session and
/// the pool as they were.
#[test]
fn iscsi_logins_survive_random_login_storms() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = server(dir.path());
    let (mut v, data) = iscsi_victim(&s);
    let n = rounds(300);
    let mut tally = Tally::default();
    for round in 0..n {
        let mut rng = StdRng::seed_from_u64(1_000_000 + round);
        let mut sock = connect(&s, s.iscsi, round);
        let drain = Drain::start(sock.try_clone().unwrap(), iscsi_header);
        let mut isid = [0x80, 0, 0, 0, 0, 0];
        rng.fill(&mut isid[2..]);
        let mut cmd_sn: u32 = rng.gen();
        // Most connections start with a login that could succeed, so the
        // later PDUs meet the operational stage too.
        let mut stage = 0u8;
        for i in 0..rng.gen_range(1..12) {
            let p = if i == 0 && rng.gen_bool(0.7) {
                let mut text = b"InitiatorName=iqn.2026-11.io.keel.test:storm\0".to_vec();
                text.extend_from_slice(if rng.gen_bool(0.8) {
                    b"SessionType=Normal\0TargetName=iqn.2026-11.io.keel:vol0\0"
                } else {
                    b"SessionType=Discovery\0"
                });
                text.extend_from_slice(b"AuthMethod=None\0");
                if rng.gen_bool(0.3) {
                    text.extend(login_text(&mut rng));
                }
                stage = 1;
                let req = Login {
                    transit: true,
                    continue_bit: false,
                    csg: 0,
                    nsg: 1,
                    version_max: 0,
                    version: 0,
                    data_len: text.len(),
                    isid,
                    tsih: 0,
                    itt: 0,
                    cid: 0,
                    sn: cmd_sn,
                    exp_sn: 0,
                    max_cmd_sn: 0,
                    status_class: 0,
                    status_detail: 0,
                };
                with_data(req.encode(true).to_bytes(), &text)
            } else if rng.gen_bool(0.08) {
                // Not a login: a SCSI command, a NOP, a Text or a Logout.
                let op = [0x01, 0x00, 0x04, 0x06][rng.gen_range(0..4)];
                let mut h = bhs(op | 0x40, 0x80, 0, 0, rng.gen());
                h[24..28].copy_from_slice(&cmd_sn.to_be_bytes());
                h[32] = 0x28;
                with_data(h, &[])
            } else {
                let text = login_text(&mut rng);
                let req = Login {
                    transit: rng.gen_bool(0.6),
                    continue_bit: rng.gen_bool(0.1),
                    csg: if rng.gen_bool(0.8) {
                        stage
                    } else {
                        rng.gen_range(0..4)
                    },
                    nsg: if rng.gen_bool(0.8) {
                        [1, 3][rng.gen_range(0..2)]
                    } else {
                        rng.gen_range(0..4)
                    },
                    version_max: if rng.gen_bool(0.9) { 0 } else { rng.gen() },
                    version: if rng.gen_bool(0.9) { 0 } else { rng.gen() },
                    data_len: text.len(),
                    isid: if rng.gen_bool(0.9) { isid } else { rng.gen() },
                    tsih: if rng.gen_bool(0.8) {
                        0
                    } else {
                        rng.gen_range(0..4)
                    },
                    itt: rng.gen_range(0..3),
                    cid: rng.gen_range(0..3),
                    sn: cmd_sn,
                    exp_sn: 0,
                    max_cmd_sn: 0,
                    status_class: 0,
                    status_detail: 0,
                };
                if rng.gen_bool(0.1) {
                    cmd_sn = rng.gen();
                }
                with_data(req.encode(true).to_bytes(), &text)
            };
            if sock.write_all(&p).is_err() {
                break;
            }
            tally.pdus += 1;
        }
        let _ = sock.shutdown(Shutdown::Write);
        tally.end(round, drain);
        if round % 50 == 49 {
            check_server(&mut s);
            iscsi_victim_ok(&mut v, &data);
        }
    }
    tally.finish(&mut s, "iSCSI login storm", "connections", || {
        iscsi_victim_ok(&mut v, &data)
    });
    v.logout().unwrap();
}

const IO_OPS: [u8; 12] = [
    0x00, 0x01, 0x02, 0x04, 0x05, 0x08, 0x09, 0x0c, 0x0d, 0x11, 0x7f, 0xee,
];
const ADMIN_OPS: [u8; 14] = [
    0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0a, 0x0c, 0x18, 0x19, 0x7f, 0xc0,
];

/// Per-queue state of the NVMe/TCP storm.
struct NvmeState {
    admin: bool,
    cid: u16,
    recent: Vec<u16>,
}

fn nvme_pdu_header(kind: u8, flags: u8, hlen: usize, data: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; hlen];
    h[0] = kind;
    h[1] = flags;
    h[2] = hlen as u8;
    h[3] = if data.is_empty() { 0 } else { hlen as u8 };
    h[4..8].copy_from_slice(&((hlen + data.len()) as u32).to_le_bytes());
    h
}

/// One random NVMe/TCP PDU for a connected queue: a command capsule with
/// random opcode, tags, namespace, LBAs, lengths and SGL (in-capsule data
/// or not), or H2CData for the target's R2Ts or for nothing; with
/// probability `fatal` one the target must answer by terminating the
/// connection (a second ICReq, an H2CTermReq, a PDU type only controllers
/// send or none defines, a mangled header).
fn nvme_pdu(rng: &mut StdRng, st: &mut NvmeState, drain: &Drain, fatal: f64) -> Vec<u8> {
    let mut kind = if rng.gen_bool(fatal) {
        rng.gen_range(80..100)
    } else {
        rng.gen_range(0..80)
    };
    // H2CData answers an R2T once (a second answer is fatal): with none
    // outstanding, a command instead.
    let answer = if (55..80).contains(&kind) {
        drain.take()
    } else {
        None
    };
    if (55..80).contains(&kind) && answer.is_none() {
        kind = 0;
    }
    let mut pdu = match kind {
        // Command capsule.
        0..=54 => {
            let ops: &[u8] = if st.admin { &ADMIN_OPS } else { &IO_OPS };
            let op = ops[rng.gen_range(0..ops.len())];
            let mut sqe = [0u8; 64];
            rng.fill(&mut sqe[..]);
            sqe[0] = op;
            let cid = if rng.gen_bool(0.1) && !st.recent.is_empty() {
                st.recent[rng.gen_range(0..st.recent.len())]
            } else {
                st.cid = st.cid.wrapping_add(1);
                st.cid
            };
            sqe[2..4].copy_from_slice(&cid.to_le_bytes());
            st.recent.push(cid);
            if st.recent.len() > 16 {
                st.recent.remove(0);
            }
            let sane = rng.gen_bool(0.75);
            if sane {
                sqe[1] = 0x40; // SGL, no fusing
                sqe[4..8].copy_from_slice(&1u32.to_le_bytes());
                let lba = rng.gen_range(0..BLOCKS - 64);
                sqe[40..48].copy_from_slice(&lba.to_le_bytes());
                let nlb: u16 = rng.gen_range(0..64);
                sqe[48..50].copy_from_slice(&nlb.to_le_bytes());
                sqe[50..52].fill(0);
                if op == 0x7f {
                    // A fabrics command: property get/set, connect again,
                    // authentication, disconnect, or none of them.
                    const FCT: [u8; 6] = [0x00, 0x01, 0x04, 0x05, 0x06, 0x08];
                    sqe[4] = FCT[rng.gen_range(0..FCT.len())];
                    sqe[40..44].copy_from_slice(&rng.gen_range(0u32..0x40).to_le_bytes());
                }
            }
            let data_len = match (op, sane) {
                (0x01 | 0x05 | 0x09 | 0x0d | 0x11, true) => {
                    (u32::from(u16::from_le_bytes([sqe[48], sqe[49]])) + 1) * BS
                }
                _ => length(rng, 64 << 10),
            };
            // In-capsule data up to what the queue takes (8 KiB on I/O
            // queues, the admin queue's own limit), else on R2T.
            let inline_max = if st.admin { 4096 } else { 8192 };
            let in_capsule = data_len <= inline_max && rng.gen_bool(0.6);
            sqe[24..32].fill(0);
            if rng.gen_bool(0.1) {
                sqe[24..32].copy_from_slice(&rng.gen::<u64>().to_le_bytes());
            }
            sqe[32..36].copy_from_slice(&data_len.to_le_bytes());
            sqe[39] = match rng.gen_range(0..10) {
                0 => rng.gen(),
                1 | 2 => 0x00,
                _ if in_capsule => 0x01,
                _ => 0x5a,
            };
            let data = if in_capsule {
                junk(rng, data_len as usize)
            } else {
                Vec::new()
            };
            let mut h = nvme_pdu_header(0x04, 0, 72, &data);
            h[8..72].copy_from_slice(&sqe);
            h.extend_from_slice(&data);
            h
        }
        // H2CData answering one of the target's R2Ts (whose length may be
        // kept or not), or, as a fatal PDU, for no R2T at all.
        55..=79 | 95..=99 => {
            let (cccid, ttag, off, len) = match answer {
                Some((c, t, o, l)) => {
                    let l = if rng.gen_bool(0.9) {
                        l
                    } else {
                        length(rng, 64 << 10)
                    };
                    (c as u16, t as u16, o, l.min(64 << 10))
                }
                None => (
                    st.recent.last().copied().unwrap_or(0),
                    rng.gen(),
                    rng.gen_range(0..4) * BS,
                    length(rng, 16 << 10),
                ),
            };
            let data = junk(rng, len as usize);
            let mut h = nvme_pdu_header(0x06, 0x04, 24, &data);
            h[8..10].copy_from_slice(&cccid.to_le_bytes());
            h[10..12].copy_from_slice(&ttag.to_le_bytes());
            h[12..16].copy_from_slice(&off.to_le_bytes());
            h[16..20].copy_from_slice(&len.to_le_bytes());
            h.extend_from_slice(&data);
            h
        }
        // ICReq again.
        80..=84 => {
            let mut h = nvme_pdu_header(0x00, 0, 128, &[]);
            h[8..128].copy_from_slice(&junk(rng, 120));
            h[8..10].fill(0);
            h
        }
        // H2CTermReq.
        85..=86 => {
            let mut h = nvme_pdu_header(0x02, 0, 24, &[]);
            h[8..24].copy_from_slice(&junk(rng, 16));
            h
        }
        // A PDU type nobody defined, or one only the controller sends.
        _ => {
            let data = junk_len(rng, 4 << 10);
            let hlen = rng.gen_range(8..=255usize);
            let mut h = nvme_pdu_header(rng.gen(), rng.gen(), hlen, &data);
            h[8..].copy_from_slice(&junk(rng, hlen - 8));
            h.extend_from_slice(&data);
            h
        }
    };
    // Now and then, mangle a few bytes of the header (lengths, offsets and
    // flags included).
    if rng.gen_bool(fatal) {
        let n = pdu.len().min(72);
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..n);
            pdu[i] = rng.gen();
        }
    }
    pdu
}

fn nvme_victim(s: &ServerProcess) -> (Queue, Queue, Vec<u8>) {
    let sub = nqn("vol1");
    let host = "nqn.2026-11.io.keel.test:victim";
    let (admin, cntlid) = Queue::admin(s.nvmf, &sub, host, 60_000, false).unwrap();
    let mut io = Queue::io(s.nvmf, cntlid, 1, &sub, host, false).unwrap();
    let data: Vec<u8> = (0..32 * BS).map(|i| (i % 253) as u8).collect();
    let c = io.write(64, &data, BS, true).unwrap();
    assert_eq!(c.status, Status::SUCCESS);
    (admin, io, data)
}

fn nvme_victim_ok(admin: &mut Queue, io: &mut Queue, data: &[u8]) {
    let (c, d) = io.read(64, 32, BS).unwrap();
    assert_eq!(c.status, Status::SUCCESS);
    assert!(d == data, "the victim's data changed");
    // The admin queue answers too; a Keep Alive keeps the association
    // past its KATO however long the storm runs.
    let (c, _) = admin.property_get(0x1c, false).unwrap();
    assert_eq!(c.status, Status::SUCCESS);
    let mut ka = [0u8; 64];
    ka[0] = 0x18;
    let (c, _) = admin.execute(ka, &[]).unwrap();
    assert_eq!(c.status, Status::SUCCESS);
}

#[test]
fn nvme_queues_survive_random_pdu_storms() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = server(dir.path());
    let (mut va, mut vio, data) = nvme_victim(&s);
    let sub = nqn("vol0");
    let host = "nqn.2026-11.io.keel.test:storm";
    let n = rounds(500);
    let mut tally = Tally::default();
    for round in 0..n {
        let mut rng = StdRng::seed_from_u64(round);
        let (mut admin, cntlid) = match Queue::admin(s.nvmf, &sub, host, 60_000, false) {
            Ok(x) => x,
            Err(e) => panic!(
                "round {round}: cannot connect ({e}); server log:\n{}",
                s.log()
            ),
        };
        let storm_admin = rng.gen_bool(0.3);
        let mut io = if storm_admin {
            None
        } else {
            Some(Queue::io(s.nvmf, cntlid, 1, &sub, host, false).unwrap())
        };
        let mut q = match &mut io {
            Some(io) => io.socket().try_clone().unwrap(),
            None => admin.socket().try_clone().unwrap(),
        };
        let drain = Drain::start(q.try_clone().unwrap(), nvme_header);
        let mut st = NvmeState {
            admin: storm_admin,
            cid: 1000,
            recent: Vec::new(),
        };
        for _ in 0..rng.gen_range(20..400) {
            let p = nvme_pdu(&mut rng, &mut st, &drain, 0.005);
            let sent = if rng.gen_bool(0.1) && p.len() > 1 {
                let cut = rng.gen_range(1..p.len());
                q.write_all(&p[..cut]).and_then(|()| q.write_all(&p[cut..]))
            } else {
                q.write_all(&p)
            };
            if std::env::var_os("KEEL_STORM_DEBUG").is_some() {
                eprintln!(
                    "round {round}: len {} {:02x?}",
                    p.len(),
                    &p[..p.len().min(48)]
                );
            }
            if sent.is_err() {
                break;
            }
            tally.pdus += 1;
        }
        let _ = q.shutdown(Shutdown::Write);
        tally.end(round, drain);
        drop((admin, io));
        if round % 10 == 9 {
            check_server(&mut s);
            nvme_victim_ok(&mut va, &mut vio, &data);
        }
    }
    tally.finish(&mut s, "NVMe/TCP storm", "rounds", || {
        nvme_victim_ok(&mut va, &mut vio, &data)
    });
    drop((va, vio));
}

/// NVMe/TCP connections that go wrong before or while they connect: ICReqs
/// with random PFV, HPDA, digest flags, MAXR2T and lengths (or none), then
/// Connect capsules with random queue IDs, sizes, attributes, KATO,
/// controller IDs, host IDs and NQNs (valid, unknown, unterminated, binary,
/// for the discovery subsystem), in-capsule or on R2T, property gets and
/// sets before and after, and commands before any Connect. Each connection
/// gets its answers or a termination, closes within a bounded time of the
/// host's EOF, and leaves the server, a victim association and the pool as
/// they were.
#[test]
fn nvme_connects_survive_random_connect_storms() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = server(dir.path());
    let (mut va, mut vio, data) = nvme_victim(&s);
    let n = rounds(300);
    let mut tally = Tally::default();
    let nqns: [&[u8]; 6] = [
        b"nqn.2026-11.io.keel:vol0",
        b"nqn.2026-11.io.keel:missing",
        b"nqn.2014-08.org.nvmexpress.discovery",
        b"nqn.2026-11.io.keel.test:storm",
        b"",
        b"nqn.\xff\xfe",
    ];
    for round in 0..n {
        let mut rng = StdRng::seed_from_u64(2_000_000 + round);
        let mut sock = connect(&s, s.nvmf, round);
        let drain = Drain::start(sock.try_clone().unwrap(), nvme_header);
        let mut out: Vec<Vec<u8>> = Vec::new();
        if rng.gen_bool(0.9) {
            let mut ic = nvme_pdu_header(0x00, 0, 128, &[]);
            if rng.gen_bool(0.7) {
                ic[11] = rng.gen_range(0..4); // digests
                ic[12..16].copy_from_slice(&rng.gen_range(0u32..8).to_le_bytes());
            } else {
                ic[8..128].copy_from_slice(&junk(&mut rng, 120));
            }
            if rng.gen_bool(0.1) {
                ic[2] = rng.gen();
                ic[4..8].copy_from_slice(&rng.gen::<u32>().to_le_bytes());
            }
            out.push(ic);
        }
        for _ in 0..rng.gen_range(0..6) {
            let mut sqe = [0u8; 64];
            sqe[0] = 0x7f;
            sqe[1] = 0x40;
            sqe[2..4].copy_from_slice(&rng.gen::<u16>().to_le_bytes());
            let fct = [0x01, 0x01, 0x01, 0x04, 0x00, 0x05, 0x06, 0x08, 0x7e][rng.gen_range(0..9)];
            sqe[4] = fct;
            let mut d = Vec::new();
            if fct == 0x01 {
                sqe[42..44]
                    .copy_from_slice(&[0u16, 0, 1, 2, 0xffff][rng.gen_range(0..5)].to_le_bytes());
                sqe[44..46].copy_from_slice(
                    &[0u16, 1, 31, 127, 0xffff][rng.gen_range(0..5)].to_le_bytes(),
                );
                sqe[46] = rng.gen_range(0..8);
                sqe[48..52].copy_from_slice(
                    &[0u32, 1, 15_000, u32::MAX][rng.gen_range(0..4)].to_le_bytes(),
                );
                d = vec![
                    0u8;
                    if rng.gen_bool(0.9) {
                        1024
                    } else {
                        rng.gen_range(0..2048)
                    }
                ];
                if d.len() >= 1024 {
                    rng.fill(&mut d[0..16]);
                    let cntlid: u16 = [0xffff, 0xfffe, 1, 2, rng.gen()][rng.gen_range(0..5)];
                    d[16..18].copy_from_slice(&cntlid.to_le_bytes());
                    let sub = nqns[rng.gen_range(0..nqns.len())];
                    d[256..256 + sub.len()].copy_from_slice(sub);
                    let host = nqns[rng.gen_range(0..nqns.len())];
                    d[512..512 + host.len()].copy_from_slice(host);
                    if rng.gen_bool(0.1) {
                        // Unterminated NQNs.
                        d[256..512].fill(b'a');
                        d[512..768].fill(b'b');
                    }
                } else {
                    rng.fill(&mut d[..]);
                }
            } else {
                sqe[40..48].copy_from_slice(&rng.gen_range(0u64..0x40).to_le_bytes());
                sqe[48..56].copy_from_slice(&rng.gen::<u64>().to_le_bytes());
            }
            let in_capsule = !d.is_empty() && rng.gen_bool(0.8);
            sqe[32..36].copy_from_slice(&(d.len() as u32).to_le_bytes());
            sqe[39] = if in_capsule { 0x01 } else { 0x5a };
            let body = if in_capsule { d } else { Vec::new() };
            let mut h = nvme_pdu_header(0x04, 0, 72, &body);
            h[8..72].copy_from_slice(&sqe);
            h.extend_from_slice(&body);
            out.push(h);
            if rng.gen_bool(0.1) {
                // An I/O or admin command, connected or not.
                let mut c = [0u8; 64];
                rng.fill(&mut c[..]);
                c[0] = [0x02, 0x06, 0x01, 0x18][rng.gen_range(0..4)];
                c[1] = 0x40;
                let mut h = nvme_pdu_header(0x04, 0, 72, &[]);
                h[8..72].copy_from_slice(&c);
                out.push(h);
            }
        }
        for p in out {
            // Now and then one byte at a time, with pauses.
            let sent = if rng.gen_bool(0.05) {
                p.iter()
                    .try_for_each(|b| sock.write_all(std::slice::from_ref(b)))
            } else {
                sock.write_all(&p)
            };
            if sent.is_err() {
                break;
            }
            tally.pdus += 1;
        }
        let _ = sock.shutdown(Shutdown::Write);
        tally.end(round, drain);
        if round % 50 == 49 {
            check_server(&mut s);
            nvme_victim_ok(&mut va, &mut vio, &data);
        }
    }
    tally.finish(&mut s, "NVMe/TCP connect storm", "connections", || {
        nvme_victim_ok(&mut va, &mut vio, &data)
    });
    drop((va, vio));
}
