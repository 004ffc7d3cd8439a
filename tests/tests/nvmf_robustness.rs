//! NVMe/TCP edge cases and hostile hosts over real sockets, with keel's own
//! host (`keel_bench::nvmf_client`): each gets the status or termination
//! the specifications name, the server never panics, and another
//! association keeps working with its data intact.
#![allow(clippy::cast_possible_truncation)]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::time::{Duration, Instant};

use keel_bench::nvmf_client::{Queue, DISCOVERY_NQN};
use keel_pdu::nvme::{PduType, Status};
use keel_tests::server::{nqn, ServerProcess};
use rand::{Rng, SeedableRng};

const SERVER: &str = env!("CARGO_BIN_EXE_keel-test-server");
const HOST: &str = "nqn.2026-11.io.keel.test:host";
const BS: u32 = 4096;

/// Whether the target terminated the connection with a C2HTermReq of
/// `fes` (or just closed it when `fes` is None).
fn terminated(q: &mut Queue, fes: Option<u16>) -> bool {
    loop {
        match q.recv() {
            Ok(p) if p.kind == PduType::C2hTermReq.value() => {
                let got = u16::from_le_bytes([p.header[8], p.header[9]]);
                return fes.is_none_or(|f| f == got);
            }
            Ok(_) => {}
            Err(_) => return fes.is_none(),
        }
    }
}

fn victim(s: &ServerProcess) -> (Queue, Queue, Vec<u8>) {
    let sub = nqn("vol0");
    let (admin, cntlid) = Queue::admin(
        s.nvmf,
        &sub,
        "nqn.2026-11.io.keel.test:victim",
        30_000,
        false,
    )
    .unwrap();
    let mut io = Queue::io(
        s.nvmf,
        cntlid,
        1,
        &sub,
        "nqn.2026-11.io.keel.test:victim",
        false,
    )
    .unwrap();
    let data: Vec<u8> = (0..32 * BS).map(|i| (i % 253) as u8).collect();
    let c = io.write(64, &data, BS, true).unwrap();
    assert_eq!(c.status, Status::SUCCESS);
    (admin, io, data)
}

fn victim_ok(io: &mut Queue, data: &[u8]) {
    let (c, d) = io.read(64, 32, BS).unwrap();
    assert_eq!(c.status, Status::SUCCESS);
    assert!(d == data, "the victim's data changed");
}

#[test]
fn hostile_hosts_do_not_harm_other_associations() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProcess::start(
        Path::new(SERVER),
        dir.path(),
        &["vol0:64MiB"],
        &["--poll-mode", "interrupt"],
    );
    let sub = nqn("vol0");
    let (_admin, mut v, data) = victim(&s);

    // Wrong PFV: C2HTermReq, invalid header field.
    let mut raw = std::net::TcpStream::connect(s.nvmf).unwrap();
    let mut ic = vec![0u8; 128];
    ic[0] = 0;
    ic[2] = 128;
    ic[4] = 128;
    ic[8] = 7; // PFV 7
    raw.write_all(&ic).unwrap();
    let mut h = [0u8; 24];
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.read_exact(&mut h).unwrap();
    assert_eq!(h[0], PduType::C2hTermReq.value());
    assert_eq!(u16::from_le_bytes([h[8], h[9]]), 0x01);

    // A capsule before ICReq: PDU sequence error.
    let mut raw = std::net::TcpStream::connect(s.nvmf).unwrap();
    let mut cap = vec![0u8; 72];
    cap[0] = 4;
    cap[2] = 72;
    cap[4] = 72;
    raw.write_all(&cap).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.read_exact(&mut h).unwrap();
    assert_eq!(
        (h[0], u16::from_le_bytes([h[8], h[9]])),
        (PduType::C2hTermReq.value(), 0x02)
    );

    // Commands before Connect: command sequence error.
    let mut q = Queue::connect(s.nvmf, false, false).unwrap();
    let (c, _) = q.execute(Queue::rw_sqe(false, 0, 1, false), &[]).unwrap();
    assert_eq!(c.status, Status::COMMAND_SEQUENCE_ERROR);

    // An I/O queue Connect to a controller that does not exist.
    let mut q = Queue::connect(s.nvmf, false, false).unwrap();
    let c = q.fabric_connect(1, 0x1234, &sub, HOST, 0).unwrap();
    assert_eq!(
        (c.status.sct, c.status.sc),
        (1, 0x82),
        "Connect Invalid Parameters"
    );
    // A subsystem that does not exist.
    let mut q = Queue::connect(s.nvmf, false, false).unwrap();
    let c = q
        .fabric_connect(0, 0xffff, "nqn.2026-11.io.keel:nope", HOST, 0)
        .unwrap();
    assert_eq!((c.status.sct, c.status.sc), (1, 0x82));

    // Unknown opcodes, LBAs past the end, a wrong namespace.
    let (mut adm, cntlid) = Queue::admin(s.nvmf, &sub, HOST, 30_000, true).unwrap();
    let mut sqe = [0u8; 64];
    sqe[0] = 0xc5;
    assert_eq!(
        adm.execute(sqe, &[]).unwrap().0.status,
        Status::INVALID_OPCODE
    );
    let mut io = Queue::io(s.nvmf, cntlid, 1, &sub, HOST, true).unwrap();
    let blocks = (64 << 20) / u64::from(BS);
    assert_eq!(
        io.read(blocks - 1, 2, BS).unwrap().0.status,
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        io.write(blocks, &vec![0u8; BS as usize], BS, false)
            .unwrap()
            .status,
        Status::LBA_OUT_OF_RANGE
    );
    let mut bad_ns = Queue::rw_sqe(false, 0, 1, false);
    bad_ns[4..8].copy_from_slice(&9u32.to_le_bytes());
    assert_eq!(
        io.execute(bad_ns, &[]).unwrap().0.status,
        Status::INVALID_NAMESPACE
    );
    let mut op = Queue::rw_sqe(false, 0, 1, false);
    op[0] = 0x7e;
    assert_eq!(
        io.execute(op, &[]).unwrap().0.status,
        Status::INVALID_OPCODE
    );
    // A second I/O queue with the same ID is refused.
    let mut dup = Queue::connect(s.nvmf, false, false).unwrap();
    let c = dup.fabric_connect(1, cntlid, &sub, HOST, 0).unwrap();
    assert_eq!((c.status.sct, c.status.sc), (1, 0x82));
    // With digests on, a large write goes through R2T and comes back.
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 31 % 255) as u8).collect();
    assert_eq!(
        io.write(1000, &big, BS, false).unwrap().status,
        Status::SUCCESS
    );
    let (c, d) = io.read(1000, (1 << 20) / BS, BS).unwrap();
    assert_eq!(c.status, Status::SUCCESS);
    assert!(d == big);
    victim_ok(&mut v, &data);

    // A bad header digest: terminated with HEADER DIGEST ERROR.
    let mut hq = Queue::io(s.nvmf, cntlid, 2, &sub, HOST, true).unwrap();
    let mut pdu = vec![0u8; 72 + 4];
    pdu[0] = 4;
    pdu[1] = 0x01;
    pdu[2] = 72;
    pdu[4] = 76;
    pdu[72..76].copy_from_slice(&[1, 2, 3, 4]);
    hq.socket().write_all(&pdu).unwrap();
    assert!(terminated(&mut hq, Some(0x03)));

    // H2CData beyond MAXH2CDATA (or outside the R2T): terminated.
    let mut q = Queue::io(s.nvmf, cntlid, 3, &sub, HOST, false).unwrap();
    let sqe = Queue::rw_sqe(true, 0, 2, false);
    let mut s2 = sqe;
    s2[32..36].copy_from_slice(&(2 * BS).to_le_bytes());
    s2[39] = 0x5a;
    let mut h = vec![0u8; 8 + 64];
    h[8..].copy_from_slice(&s2);
    q.send_pdu(PduType::CapsuleCmd, h, &[], 0).unwrap();
    let r2t = q.recv().unwrap();
    assert_eq!(r2t.kind, PduType::R2t.value());
    let mut dh = vec![0u8; 24];
    dh[8..10].copy_from_slice(&r2t.header[8..10]);
    dh[10..12].copy_from_slice(&r2t.header[10..12]);
    dh[16..20].copy_from_slice(&(4 * BS).to_le_bytes());
    q.send_pdu(PduType::H2cData, dh, &vec![7u8; 4 * BS as usize], 0x04)
        .unwrap();
    assert!(terminated(&mut q, None));
    victim_ok(&mut v, &data);

    // An H2CData PDU longer than MAXH2CDATA: data limit exceeded (05h).
    let mut q = Queue::io(s.nvmf, cntlid, 4, &sub, HOST, false).unwrap();
    let n = 128u32; // blocks: 512 KiB (within MDTS), more than MAXH2CDATA
    let mut s3 = Queue::rw_sqe(true, 0, n, false);
    s3[32..36].copy_from_slice(&(n * BS).to_le_bytes());
    s3[39] = 0x5a;
    let mut h = vec![0u8; 8 + 64];
    h[8..].copy_from_slice(&s3);
    q.send_pdu(PduType::CapsuleCmd, h, &[], 0).unwrap();
    let r2t = q.recv().unwrap();
    assert_eq!(r2t.kind, PduType::R2t.value());
    let big = (q.max_h2c + 4096) as u32;
    let mut dh = vec![0u8; 24];
    dh[8..10].copy_from_slice(&r2t.header[8..10]);
    dh[10..12].copy_from_slice(&r2t.header[10..12]);
    dh[16..20].copy_from_slice(&big.to_le_bytes());
    let _ = q.send_pdu(PduType::H2cData, dh, &vec![1u8; big as usize], 0);
    assert!(terminated(&mut q, Some(0x05)), "H2CData beyond MAXH2CDATA");
    victim_ok(&mut v, &data);

    // Fuzzed PDUs after a good connect.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..200 {
        let Ok(mut f) = Queue::connect(s.nvmf, false, false) else {
            continue;
        };
        let mut p = vec![0u8; rng.gen_range(8..200)];
        rng.fill(&mut p[..]);
        if rng.gen_bool(0.5) {
            p[0] = rng.gen_range(0..10);
            let len = p.len() as u32;
            p[4..8].copy_from_slice(&len.to_le_bytes());
        }
        let _ = f.socket().write_all(&p);
        let _ = f.socket().shutdown(Shutdown::Write);
        let _ = terminated(&mut f, None);
    }
    victim_ok(&mut v, &data);
    assert!(s.alive(), "server died:\n{}", s.log());
    assert!(!s.log().contains("panicked"), "{}", s.log());
    // A queue that goes away with 1 MiB reads in flight.
    let (a2, mut q2, _) = victim(&s);
    for i in 0..8u64 {
        q2.submit(Queue::rw_sqe(false, i * 256, 256, false), &[])
            .unwrap();
    }
    drop((a2, q2));
    // Every data buffer taken from the reactor's pool went back once the
    // hosts are gone.
    drop((_admin, v));
    s.assert_buffer_pool_idle();
}

#[test]
fn a_silent_host_loses_its_association_after_kato() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(Path::new(SERVER), dir.path(), &["vol0:16MiB"], &[]);
    let sub = nqn("vol0");
    let (mut adm, cntlid) = Queue::admin(s.nvmf, &sub, HOST, 1000, false).unwrap();
    let mut io = Queue::io(s.nvmf, cntlid, 1, &sub, HOST, false).unwrap();
    // Keep-alives keep it for a while.
    let mut ka = [0u8; 64];
    ka[0] = 0x18;
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(adm.execute(ka, &[]).unwrap().0.status, Status::SUCCESS);
    }
    assert_eq!(io.read(0, 1, BS).unwrap().0.status, Status::SUCCESS);
    // Then silence: both queues are closed by the target.
    let t0 = Instant::now();
    assert!(terminated(&mut adm, None));
    assert!(
        io.read(0, 1, BS).is_err(),
        "the I/O queue of a dead association must close"
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // A new association works.
    let (_a, c2) = Queue::admin(s.nvmf, &sub, HOST, 0, false).unwrap();
    assert_ne!(c2, cntlid);
}

#[test]
fn discovery_lists_subsystems_at_the_advertised_address() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(
        Path::new(SERVER),
        dir.path(),
        &["vol0:16MiB", "db:16MiB"],
        &["--nvmf-advertise", "192.0.2.7:4420"],
    );
    let (mut d, _) = Queue::admin(s.nvmf, DISCOVERY_NQN, HOST, 0, false).unwrap();
    let mut glp = [0u8; 64];
    glp[0] = 0x02;
    let numd: u32 = (4096 / 4) - 1;
    glp[40..44].copy_from_slice(&(0x70 | (numd << 16)).to_le_bytes());
    glp[32..36].copy_from_slice(&4096u32.to_le_bytes());
    glp[39] = 0x5a;
    let (c, log) = d.execute(glp, &[]).unwrap();
    assert_eq!(c.status, Status::SUCCESS);
    let numrec = u64::from_le_bytes(log[8..16].try_into().unwrap());
    assert_eq!(
        numrec, 3,
        "two subsystems and the discovery subsystem itself"
    );
    let mut nqns = Vec::new();
    for i in 0..numrec as usize {
        let e = &log[1024 * (i + 1)..1024 * (i + 2)];
        let field = |a: usize, n: usize| {
            String::from_utf8_lossy(&e[a..a + n])
                .trim_end_matches('\0')
                .to_owned()
        };
        assert_eq!(e[0], 3, "TCP");
        assert_eq!(field(512, 256), "192.0.2.7");
        assert_eq!(field(32, 32), "4420");
        nqns.push(field(256, 256));
    }
    nqns.sort();
    let mut want = vec![nqn("db"), nqn("vol0"), DISCOVERY_NQN.to_owned()];
    want.sort();
    assert_eq!(nqns, want);
    // Create I/O Submission Queue does not exist on fabrics.
    let mut create_sq = [0u8; 64];
    create_sq[0] = 0x01;
    assert_eq!(
        d.execute(create_sq, &[]).unwrap().0.status,
        Status::INVALID_OPCODE
    );
}

#[test]
fn ana_state_change_reaches_the_host_as_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(Path::new(SERVER), dir.path(), &["vol0:16MiB"], &[]);
    let sub = nqn("vol0");
    let (mut adm, cntlid) = Queue::admin(s.nvmf, &sub, HOST, 0, false).unwrap();
    let mut io = Queue::io(s.nvmf, cntlid, 1, &sub, HOST, false).unwrap();
    // Enable ANA change notices, then park an AER.
    let mut setf = [0u8; 64];
    setf[0] = 0x09;
    setf[40] = 0x0b;
    setf[44..48].copy_from_slice(&(1u32 << 11).to_le_bytes());
    assert_eq!(adm.execute(setf, &[]).unwrap().0.status, Status::SUCCESS);
    let mut aer = [0u8; 64];
    aer[0] = 0x0c;
    let aer_cid = adm.submit(aer, &[]).unwrap();
    assert_eq!(io.read(0, 1, BS).unwrap().0.status, Status::SUCCESS);
    // The control plane (or an operator) makes the path inaccessible.
    let r = s.admin_post("/volumes/vol0/ana/inaccessible");
    assert!(
        r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"),
        "{r}"
    );
    let (c, _) = adm.reap().unwrap();
    assert_eq!(c.cid, aer_cid);
    assert_eq!(
        c.dw0,
        2 | (0x03 << 8) | (0x0c << 16),
        "notice, ANA change, log 0Ch"
    );
    // The ANA log says so, and I/O gets the ANA status (SCT 3).
    let mut glp = [0u8; 64];
    glp[0] = 0x02;
    glp[40..44].copy_from_slice(&(0x0c | (12u32 << 16)).to_le_bytes());
    glp[32..36].copy_from_slice(&52u32.to_le_bytes());
    glp[39] = 0x5a;
    let (c, log) = adm.execute(glp, &[]).unwrap();
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(log[32], 0x03, "inaccessible");
    let st = io.read(0, 1, BS).unwrap().0.status;
    assert_eq!((st.sct, st.sc), (3, 0x02));
    // Back to optimized: I/O flows again.
    let r = s.admin_post("/volumes/vol0/ana/optimized");
    assert!(r.contains(" 200 "), "{r}");
    assert_eq!(io.read(0, 1, BS).unwrap().0.status, Status::SUCCESS);
    assert!(s.admin_post("/volumes/vol0/ana/sideways").contains(" 400 "));
    assert!(s
        .admin_post("/volumes/nope/ana/optimized")
        .contains(" 404 "));
}

/// Host data that arrives after its H2CData header, in pieces: the target
/// takes it into the command's buffers as it comes (straight from the
/// socket with epoll socket I/O, from the input buffer with io_uring), with
/// and without digests; one H2CData PDU crosses the target's 256 KiB buffer
/// boundary. The blocks read back as written; a bad data digest on such a
/// PDU ends the connection with a transport error; the association beside
/// it keeps its data; no pool buffer is left in use.
#[test]
fn write_data_arriving_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(Path::new(SERVER), dir.path(), &["vol0:64MiB"], &[]);
    let (_vadm, mut vio, vdata) = victim(&s);
    let sub = nqn("vol0");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for (digests, lba) in [(false, 1000u64), (true, 2000)] {
        let (_adm, cntlid) = Queue::admin(s.nvmf, &sub, HOST, 30_000, digests).unwrap();
        let mut io = Queue::io(s.nvmf, cntlid, 1, &sub, HOST, digests).unwrap();
        let data: Vec<u8> = (0..600_000 / BS as usize * BS as usize)
            .map(|_| rng.gen())
            .collect();
        io.trickle = true;
        let c = io.write(lba, &data, BS, false).unwrap();
        assert_eq!(c.status, Status::SUCCESS, "digests {digests}");
        io.trickle = false;
        let (c, d) = io.read(lba, (data.len() / BS as usize) as u32, BS).unwrap();
        assert_eq!(c.status, Status::SUCCESS);
        assert!(d == data, "digests {digests}: the blocks differ");
    }
    // With epoll sockets the data after the headers went straight into the
    // pool buffers; io_uring sockets copy out of their provided buffers.
    let direct = s.metric_sum("keel_reactor_received_bytes_total", "into=\"pool_buffer\"");
    if ServerProcess::uring_sockets() {
        assert_eq!(direct, 0, "io_uring sockets cannot receive in place");
    } else {
        assert!(direct > 600_000, "only {direct} bytes received in place");
    }

    // A bad data digest on an H2CData PDU that arrives in pieces.
    let (_adm, cntlid) = Queue::admin(s.nvmf, &sub, HOST, 30_000, true).unwrap();
    let mut io = Queue::io(s.nvmf, cntlid, 1, &sub, HOST, true).unwrap();
    let data = vec![0xee; 64 << 10];
    let cid = io
        .submit(Queue::rw_sqe(true, 3000, 16, false), &data)
        .unwrap();
    let r2t = io.recv().unwrap();
    assert_eq!(r2t.kind, PduType::R2t.value());
    let ttag = u16::from_le_bytes([r2t.header[10], r2t.header[11]]);
    let mut h = vec![0u8; 24];
    h[0] = PduType::H2cData.value();
    h[1] = 0x01 | 0x02 | 0x04;
    h[2] = 24;
    h[3] = 28;
    h[4..8].copy_from_slice(&(28 + data.len() as u32 + 4).to_le_bytes());
    h[8..10].copy_from_slice(&cid.to_le_bytes());
    h[10..12].copy_from_slice(&ttag.to_le_bytes());
    h[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
    let mut wire = h.clone();
    wire.extend_from_slice(&keel_pdu::iscsi::digest::crc32c(&h).to_le_bytes());
    wire.extend_from_slice(&data);
    wire.extend_from_slice(&(!keel_pdu::iscsi::digest::crc32c(&data)).to_le_bytes());
    for piece in wire.chunks(10_000) {
        io.socket().write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        terminated(&mut io, Some(keel_pdu::nvme::fes::HEADER_DIGEST_ERROR)),
        "no transport error for a bad data digest"
    );
    let (c, d) = vio.read(3000, 16, BS).unwrap();
    assert_eq!(c.status, Status::SUCCESS);
    assert!(d.iter().all(|&b| b == 0), "the rejected write landed");
    victim_ok(&mut vio, &vdata);
    s.assert_buffer_pool_idle();
}
