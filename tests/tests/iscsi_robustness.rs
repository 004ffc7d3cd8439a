//! Hostile and broken initiators against a real volume-server process:
//! each gets the protocol's answer or a dropped connection, the server
//! never panics, and a well-behaved session beside them keeps its data.
#![allow(clippy::cast_possible_truncation)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::Duration;

use keel_pdu::iscsi::{Pdu, ScsiCommand};
use keel_tests::iscsi_client::{Client, LoginError};
use keel_tests::server::{iqn, ServerProcess};
use rand::{Rng, SeedableRng};

const SERVER: &str = env!("CARGO_BIN_EXE_keel-test-server");
const BS: u32 = 4096;
const INI: &str = "iqn.2026-11.io.keel.test:robust";

fn base() -> ScsiCommand {
    ScsiCommand {
        immediate: false,
        final_bit: false,
        read: false,
        write: false,
        attr: 0,
        ahs_len: 0,
        data_len: 0,
        lun: 0,
        itt: 0,
        expected_len: 0,
        cmd_sn: 0,
        exp_stat_sn: 0,
        cdb: [0; 16],
    }
}

fn victim(s: &ServerProcess) -> (Client, Vec<u8>) {
    let mut c = Client::connect(s.iscsi).unwrap();
    c.login("iqn.2026-11.io.keel.test:victim", Some(&iqn("vol0")), None)
        .unwrap();
    let data: Vec<u8> = (0..64 * BS).map(|i| (i * 7 % 251) as u8).collect();
    let r = c.write16(100, &data, BS, true).unwrap();
    assert_eq!(r.status, 0);
    (c, data)
}

fn victim_ok(c: &mut Client, data: &[u8]) {
    let r = c.read16(100, 64, BS).unwrap();
    assert_eq!(r.status, 0);
    assert!(r.data == data, "the victim's data changed");
}

/// Whether the target closed the connection (EOF or reset) within 5 s.
fn closed(sock: &mut TcpStream) -> bool {
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn hostile_initiators_do_not_harm_other_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProcess::start(
        Path::new(SERVER),
        dir.path(),
        &["vol0:64MiB"],
        &["--poll-mode", "interrupt"],
    );
    let (mut v, data) = victim(&s);

    // 1. Garbage instead of a login: dropped.
    let mut g = TcpStream::connect(s.iscsi).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let junk: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
    let _ = g.write_all(&junk);
    assert!(
        closed(&mut g),
        "garbage before login must drop the connection"
    );
    victim_ok(&mut v, &data);

    // 2. A truncated PDU, then a half-close: the target gives up cleanly.
    let mut t = TcpStream::connect(s.iscsi).unwrap();
    t.write_all(&[0x43, 0x87, 0, 0, 0, 0, 0, 10]).unwrap();
    t.shutdown(Shutdown::Write).unwrap();
    assert!(closed(&mut t));
    victim_ok(&mut v, &data);

    // 3. Login to a target that does not exist: status 2/3.
    let mut c = Client::connect(s.iscsi).unwrap();
    assert_eq!(
        c.try_login(INI, Some(&iqn("missing")), None),
        Err(LoginError::Status(2, 3))
    );
    // 4. A login without InitiatorName... is covered by libiscsi; a login
    // to a CHAP-protected target is in `chap_one_way_and_mutual`.

    // 5. Commands to a LUN that does not exist, LBAs past the end.
    let mut c = Client::connect(s.iscsi).unwrap();
    c.login(INI, Some(&iqn("vol0")), None).unwrap();
    let r = c.scsi(5 << 48, &[0x00, 0, 0, 0, 0, 0], 0, &[]).unwrap();
    assert_eq!(r.status, 2);
    assert_eq!(
        r.sense,
        Some((0x05, 0x25, 0x00)),
        "LOGICAL UNIT NOT SUPPORTED"
    );
    let blocks = (64 << 20) / BS;
    let r = c.read16(u64::from(blocks), 1, BS).unwrap();
    assert_eq!(r.sense, Some((0x05, 0x21, 0x00)), "LBA OUT OF RANGE");
    let r = c
        .write16(
            u64::from(blocks) - 1,
            &vec![1u8; 2 * BS as usize],
            BS,
            false,
        )
        .unwrap();
    assert_eq!(r.sense, Some((0x05, 0x21, 0x00)), "LBA OUT OF RANGE");
    let r = c.scsi(0, &[0xff, 0, 0, 0, 0, 0], 0, &[]).unwrap();
    assert_eq!(
        r.sense,
        Some((0x05, 0x20, 0x00)),
        "INVALID COMMAND OPERATION CODE"
    );

    // 6. A NOP flood: every ping is answered, the victim is unaffected.
    for i in 0..2000u32 {
        let d = i.to_be_bytes();
        assert_eq!(c.ping(&d).unwrap(), d);
    }
    victim_ok(&mut v, &data);

    // 7. A data segment longer than the target's MaxRecvDataSegmentLength:
    // rejected and dropped.
    let big = vec![0u8; 2 << 20];
    let cmd = ScsiCommand {
        final_bit: true,
        write: true,
        attr: 1,
        data_len: big.len(),
        itt: 77,
        expected_len: big.len() as u32,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        cdb: {
            let mut x = [0u8; 16];
            x[0] = 0x8a;
            x[13] = 8;
            x
        },
        ..base()
    };
    let _ = c.send(&cmd.encode(), &big);
    let mut rejected = false;
    while let Ok(r) = c.recv() {
        if matches!(r.pdu, Pdu::Reject(_)) {
            rejected = true;
        }
    }
    assert!(
        rejected,
        "an oversized data segment gets a Reject before the drop"
    );
    victim_ok(&mut v, &data);

    // 8. Fuzzed PDUs after a good login: random mutations of valid headers.
    let mut fuzzed = 0;
    for round in 0..300u64 {
        let mut f = Client::connect(s.iscsi).unwrap();
        if f.login(INI, Some(&iqn("vol0")), None).is_err() {
            continue;
        }
        fuzzed += 1;
        let mut rng = rand::rngs::StdRng::seed_from_u64(round);
        let mut h = ScsiCommand {
            final_bit: true,
            read: true,
            attr: 1,
            itt: 5,
            expected_len: BS,
            cmd_sn: f.cmd_sn,
            exp_stat_sn: f.exp_stat_sn,
            cdb: {
                let mut x = [0u8; 16];
                x[0] = 0x28;
                x[8] = 1;
                x
            },
            ..base()
        }
        .encode()
        .to_bytes();
        for _ in 0..rng.gen_range(1..6) {
            let i = rng.gen_range(0..48);
            h[i] = rng.gen();
        }
        let tail: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
        let _ = f.socket().write_all(&h);
        let _ = f.socket().write_all(&tail);
        let _ = f.socket().shutdown(Shutdown::Write);
        let _ = closed(f.socket());
    }
    assert!(fuzzed > 250, "only {fuzzed} fuzz sessions logged in");
    victim_ok(&mut v, &data);
    assert!(s.alive(), "server died:\n{}", s.log());
    assert!(!s.log().contains("panicked"), "{}", s.log());
    v.logout().unwrap();
}

#[test]
fn chap_one_way_and_mutual() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("keel.toml");
    std::fs::write(
        &cfg,
        r#"
[[volume]]
name = "sec"
size = "16MiB"
initiators = ["iqn.2026-11.io.keel.test:allowed"]
chap = { user = "host1", secret = "host1-secret-12" }
mutual_chap = { user = "keel", secret = "target-secret-1" }
"#,
    )
    .unwrap();
    let s = ServerProcess::start(
        Path::new(SERVER),
        dir.path(),
        &[],
        &["--config", cfg.to_str().unwrap()],
    );
    let allowed = "iqn.2026-11.io.keel.test:allowed";
    // No CHAP: authentication failure (2/1).
    let mut c = Client::connect(s.iscsi).unwrap();
    assert_eq!(
        c.try_login(allowed, Some(&iqn("sec")), None),
        Err(LoginError::Status(2, 1))
    );
    // Wrong secret: 2/1.
    let mut c = Client::connect(s.iscsi).unwrap();
    assert_eq!(
        c.try_login(
            allowed,
            Some(&iqn("sec")),
            Some(("host1", "wrong-secret-00"))
        ),
        Err(LoginError::Status(2, 1))
    );
    // An initiator not on the ACL: authorization failure (2/2).
    let mut c = Client::connect(s.iscsi).unwrap();
    assert_eq!(
        c.try_login(
            "iqn.2026-11.io.keel.test:other",
            Some(&iqn("sec")),
            Some(("host1", "host1-secret-12"))
        ),
        Err(LoginError::Status(2, 2))
    );
    // Right secret: in, and the LUN works.
    let mut c = Client::connect(s.iscsi).unwrap();
    c.login(
        allowed,
        Some(&iqn("sec")),
        Some(("host1", "host1-secret-12")),
    )
    .unwrap();
    let r = c.write16(0, &vec![9u8; BS as usize], BS, true).unwrap();
    assert_eq!(r.status, 0);
    // libiscsi with CHAP in the URL, one-way and mutual.
    let url = format!("iscsi://host1%host1-secret-12@{}/{}/0", s.iscsi, iqn("sec"));
    let out = std::process::Command::new("iscsi-inq")
        .arg("-i")
        .arg(allowed)
        .arg(&url)
        .output()
        .expect("iscsi-inq (apt-get install libiscsi-bin)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = format!(
        "iscsi://host1%host1-secret-12@{}/{}/0?target_user=keel&target_password=target-secret-1",
        s.iscsi,
        iqn("sec")
    );
    let out = std::process::Command::new("iscsi-inq")
        .arg("-i")
        .arg(allowed)
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mutual CHAP: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = format!(
        "iscsi://host1%host1-secret-12@{}/{}/0?target_user=keel&target_password=not-the-secret",
        s.iscsi,
        iqn("sec")
    );
    let out = std::process::Command::new("iscsi-inq")
        .arg("-i")
        .arg(allowed)
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the initiator must refuse a target that fails mutual CHAP"
    );
}

#[test]
fn target_pings_idle_initiators_and_drops_silent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("keel.toml");
    std::fs::write(
        &cfg,
        "[iscsi]\nnop_interval_secs = 1\nnop_timeout_secs = 2\n",
    )
    .unwrap();
    let s = ServerProcess::start(
        Path::new(SERVER),
        dir.path(),
        &["vol0:16MiB"],
        &["--config", cfg.to_str().unwrap()],
    );
    // An initiator that answers the pings stays connected.
    let mut good = Client::connect(s.iscsi).unwrap();
    good.login(INI, Some(&iqn("vol0")), None).unwrap();
    // One that never answers is dropped.
    let mut silent = Client::connect(s.iscsi).unwrap();
    silent
        .login("iqn.2026-11.io.keel.test:silent", Some(&iqn("vol0")), None)
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut pings = 0;
    while t0.elapsed() < Duration::from_secs(5) {
        match good.recv() {
            Ok(r) => {
                if let Pdu::NopIn(n) = r.pdu {
                    assert_eq!(n.itt, 0xffff_ffff, "a target ping has no ITT");
                    assert_ne!(n.ttt, 0xffff_ffff, "and asks for an answer with its TTT");
                    pings += 1;
                    let a = keel_pdu::iscsi::Nop {
                        immediate: true,
                        itt: 0xffff_ffff,
                        ttt: n.ttt,
                        sn: good.cmd_sn,
                        exp_sn: good.exp_stat_sn,
                        ..keel_pdu::iscsi::Nop::default()
                    };
                    good.send(&a.encode(true), &[]).unwrap();
                }
            }
            Err(e) => panic!("the answering initiator lost its connection: {e}"),
        }
    }
    assert!(pings >= 2, "pings: {pings}");
    // Still usable.
    assert_eq!(good.read16(0, 1, BS).unwrap().status, 0);
    // The silent one got a ping and, unanswered, a closed connection.
    let mut got_ping = false;
    let closed_after = loop {
        match silent.recv() {
            Ok(r) => got_ping |= matches!(r.pdu, Pdu::NopIn(_)),
            Err(_) => break t0.elapsed(),
        }
    };
    assert!(got_ping);
    assert!(closed_after < Duration::from_secs(8), "{closed_after:?}");
}

/// ABORT TASK as RFC 7143 11.5.1 has it: a task the target still holds is
/// aborted ("Function complete", and no response for it ever comes); a
/// task that already completed, or never existed, gets "Task does not
/// exist". The completed case is what libiscsi's
/// iSCSITMF.AbortTaskSimpleAsync checks when the write wins the race (the
/// target used to answer "Function complete" there).
#[test]
fn abort_task_answers_as_rfc_7143_says() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(Path::new(SERVER), dir.path(), &["vol0:64MiB"], &[]);
    let mut c = Client::connect(s.iscsi).unwrap();
    c.login(INI, Some(&iqn("vol0")), None).unwrap();
    let mut before = Vec::new();

    // A write that completed (its GOOD status is in): does not exist.
    let data = vec![0x5a; 8 * BS as usize];
    assert_eq!(c.write16(10, &data, BS, false).unwrap().status, 0);
    let (itt, sn) = (c.last_itt(), c.cmd_sn.wrapping_sub(1));
    assert_eq!(
        c.task_mgmt(1, itt, sn, &mut before).unwrap(),
        1,
        "ABORT TASK of a completed write"
    );
    // A tag that never existed, RefCmdSN long past.
    assert_eq!(
        c.task_mgmt(1, 0x7777, sn.wrapping_sub(5), &mut before)
            .unwrap(),
        1,
        "ABORT TASK of an unknown tag"
    );
    assert!(before.is_empty(), "unexpected PDUs: {before:?}");

    // A write the target holds, waiting for its data after an R2T: aborted.
    let itt = c.next_itt();
    let mut cmd = base();
    cmd.final_bit = true;
    cmd.write = true;
    cmd.attr = 1;
    cmd.itt = itt;
    cmd.expected_len = 8 * BS;
    cmd.cmd_sn = c.cmd_sn;
    cmd.exp_stat_sn = c.exp_stat_sn;
    cmd.cdb[0] = 0x8a;
    cmd.cdb[2..10].copy_from_slice(&20u64.to_be_bytes());
    cmd.cdb[10..14].copy_from_slice(&8u32.to_be_bytes());
    c.cmd_sn = c.cmd_sn.wrapping_add(1);
    c.send(&cmd.encode(), &[]).unwrap();
    let r = c.recv().unwrap();
    assert!(matches!(r.pdu, Pdu::R2t(_)), "expected an R2T, got {r:?}");
    assert_eq!(
        c.task_mgmt(1, itt, cmd.cmd_sn, &mut before).unwrap(),
        0,
        "ABORT TASK of a write waiting for data"
    );
    assert!(
        before.is_empty(),
        "a response for the aborted task: {before:?}"
    );
    // The session goes on; the aborted write changed nothing.
    let r = c.read16(20, 8, BS).unwrap();
    assert_eq!(r.status, 0);
    assert!(
        r.data.iter().all(|&b| b == 0),
        "the aborted write's blocks changed"
    );
    let r = c.read16(10, 8, BS).unwrap();
    assert_eq!(r.status, 0);
    assert!(r.data == data, "the completed write's data");
    // VERIFY(16) without byte compare: blocks read and not sent.
    let mut v = [0u8; 16];
    v[0] = 0x8f;
    v[2..10].copy_from_slice(&0u64.to_be_bytes());
    v[10..14].copy_from_slice(&256u32.to_be_bytes());
    assert_eq!(c.scsi(0, &v, 0, &[]).unwrap().status, 0, "VERIFY");
    c.logout().unwrap();
    // A connection that goes away with 1 MiB reads in flight.
    let mut d = Client::connect(s.iscsi).unwrap();
    d.login(INI, Some(&iqn("vol0")), None).unwrap();
    for i in 0..8u32 {
        let mut cmd = base();
        cmd.final_bit = true;
        cmd.read = true;
        cmd.attr = 1;
        cmd.itt = d.next_itt();
        cmd.expected_len = 256 * BS;
        cmd.cmd_sn = d.cmd_sn;
        cmd.exp_stat_sn = d.exp_stat_sn;
        cmd.cdb[0] = 0x88;
        cmd.cdb[2..10].copy_from_slice(&u64::from(i * 256).to_be_bytes());
        cmd.cdb[10..14].copy_from_slice(&256u32.to_be_bytes());
        d.cmd_sn = d.cmd_sn.wrapping_add(1);
        d.send(&cmd.encode(), &[]).unwrap();
    }
    drop(d);
    // Every data buffer taken from the reactor's pool went back.
    s.assert_buffer_pool_idle();
}

/// Write `bytes` (one PDU) in irregular pieces with pauses: the header
/// (and its digest) first, then the data a few bytes or many KiB at a
/// time, so the target has the header long before the data.
fn send_in_pieces(c: &mut Client, bytes: &[u8]) {
    let head = keel_pdu::iscsi::BHS_LEN + if c.header_digest { 4 } else { 0 };
    let sizes = [head, 1, 7, 1000, 40_000, 3, 65_536];
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let n = sizes[i % sizes.len()].min(bytes.len() - at);
        c.socket().write_all(&bytes[at..at + n]).unwrap();
        c.socket().flush().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        at += n;
        i += 1;
    }
}

/// A 600 000-byte WRITE(16) at `lba`: 30 000 bytes of immediate data, an
/// unsolicited Data-Out up to 64 KiB, the rest on R2Ts in Data-Outs of
/// 100 000 bytes (one crosses the target's 256 KiB buffer boundary), every
/// PDU sent in pieces. Returns the SCSI status.
fn write_in_pieces(c: &mut Client, lba: u64, data: &[u8]) -> u8 {
    use keel_pdu::iscsi::DataOut;
    const IMM: usize = 30_000;
    const FIRST: usize = 65_536;
    let itt = c.next_itt();
    let mut cmd = base();
    cmd.write = true;
    cmd.attr = 1;
    cmd.itt = itt;
    cmd.expected_len = data.len() as u32;
    cmd.data_len = IMM;
    cmd.cmd_sn = c.cmd_sn;
    cmd.exp_stat_sn = c.exp_stat_sn;
    cmd.cdb[0] = 0x8a;
    cmd.cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cmd.cdb[10..14].copy_from_slice(&((data.len() / BS as usize) as u32).to_be_bytes());
    c.cmd_sn = c.cmd_sn.wrapping_add(1);
    let wire = c.encode(&cmd.encode(), &data[..IMM]);
    send_in_pieces(c, &wire);
    let out = |off: usize, n: usize, ttt: u32, sn: u32, last: bool, c: &Client| {
        let d = DataOut {
            final_bit: last,
            data_len: n,
            lun: 0,
            itt,
            ttt,
            exp_stat_sn: c.exp_stat_sn,
            data_sn: sn,
            buffer_offset: off as u32,
        };
        c.encode(&d.encode(), &data[off..off + n])
    };
    let wire = out(IMM, FIRST - IMM, 0xffff_ffff, 0, true, c);
    send_in_pieces(c, &wire);
    loop {
        let r = c.recv().unwrap();
        match r.pdu {
            Pdu::R2t(t) => {
                let mut off = t.buffer_offset as usize;
                let end = off + t.desired_len as usize;
                let mut sn = 0;
                while off < end {
                    let n = (end - off).min(100_000);
                    let wire = out(off, n, t.ttt, sn, off + n == end, c);
                    send_in_pieces(c, &wire);
                    off += n;
                    sn += 1;
                }
            }
            Pdu::ScsiResponse(s) => {
                c.exp_stat_sn = s.stat_sn.wrapping_add(1);
                return s.status;
            }
            other => panic!("unexpected PDU {other:?}"),
        }
    }
}

/// Write data that arrives after its header, in pieces: the target takes
/// it into the task's buffers as it comes (straight from the socket with
/// epoll socket I/O, from the input buffer with io_uring), with and without
/// CRC32C digests. The blocks read back as written; a bad data digest on
/// such a PDU gets a Reject (data digest error) and the connection ends;
/// a session beside it keeps its data; no pool buffer is left in use.
#[test]
fn write_data_arriving_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(Path::new(SERVER), dir.path(), &["vol0:64MiB"], &[]);
    let (mut v, vdata) = victim(&s);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let keys = |digests: bool| {
        let mut k = vec![
            ("ImmediateData", "Yes"),
            ("InitialR2T", "No"),
            ("FirstBurstLength", "65536"),
        ];
        if digests {
            k.extend([("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")]);
        }
        k.into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect::<Vec<_>>()
    };
    for (digests, lba) in [(false, 1000u64), (true, 2000)] {
        let mut c = Client::connect(s.iscsi).unwrap();
        c.login_keys = keys(digests);
        c.login(INI, Some(&iqn("vol0")), None).unwrap();
        assert_eq!((c.header_digest, c.data_digest), (digests, digests));
        // Declared with the operational keys (a client that reads only
        // those fell back to the 8 KiB default).
        assert_eq!(c.target_mrdsl, 256 << 10, "MaxRecvDataSegmentLength");
        let data: Vec<u8> = (0..600_000 / BS as usize * BS as usize)
            .map(|_| rng.gen())
            .collect();
        assert_eq!(write_in_pieces(&mut c, lba, &data), 0, "digests {digests}");
        let blocks = (data.len() / BS as usize) as u32;
        let r = c.read16(lba, blocks, BS).unwrap();
        assert_eq!(r.status, 0);
        assert!(r.data == data, "digests {digests}: the blocks differ");
        c.logout().unwrap();
    }
    // With epoll sockets the data after the headers went straight into the
    // pool buffers; io_uring sockets copy out of their provided buffers.
    let direct = s.metric_sum("keel_reactor_received_bytes_total", "into=\"pool_buffer\"");
    if ServerProcess::uring_sockets() {
        assert_eq!(direct, 0, "io_uring sockets cannot receive in place");
    } else {
        assert!(direct > 600_000, "only {direct} bytes received in place");
    }

    // Data nobody takes, arriving in pieces, is skipped and the stream stays
    // in step: immediate data of a write to a LUN that does not exist
    // (answered at once), a Data-Out for a tag never used.
    let mut c = Client::connect(s.iscsi).unwrap();
    c.login_keys = keys(false);
    c.login(INI, Some(&iqn("vol0")), None).unwrap();
    let mut cmd = base();
    cmd.final_bit = true;
    cmd.write = true;
    cmd.attr = 1;
    cmd.lun = 1 << 48;
    cmd.itt = c.next_itt();
    cmd.expected_len = 16 * BS;
    cmd.data_len = 16 * BS as usize;
    cmd.cmd_sn = c.cmd_sn;
    cmd.exp_stat_sn = c.exp_stat_sn;
    cmd.cdb[0] = 0x8a;
    cmd.cdb[2..10].copy_from_slice(&4000u64.to_be_bytes());
    cmd.cdb[10..14].copy_from_slice(&16u32.to_be_bytes());
    c.cmd_sn = c.cmd_sn.wrapping_add(1);
    let wire = c.encode(&cmd.encode(), &vec![0x77; 16 * BS as usize]);
    send_in_pieces(&mut c, &wire);
    match c.recv().unwrap().pdu {
        Pdu::ScsiResponse(r) => {
            c.exp_stat_sn = r.stat_sn.wrapping_add(1);
            assert_eq!(r.status, 2, "a write to LUN 1: CHECK CONDITION");
        }
        other => panic!("expected a SCSI Response, got {other:?}"),
    }
    let d = keel_pdu::iscsi::DataOut {
        final_bit: true,
        data_len: 50_000,
        lun: 0,
        itt: 0x4242,
        ttt: 0xffff_ffff,
        exp_stat_sn: c.exp_stat_sn,
        data_sn: 0,
        buffer_offset: 0,
    };
    let wire = c.encode(&d.encode(), &vec![0x66; 50_000]);
    send_in_pieces(&mut c, &wire);
    let data = vec![0x31u8; 8 * BS as usize];
    assert_eq!(c.write16(4000, &data, BS, false).unwrap().status, 0);
    assert!(c.read16(4000, 8, BS).unwrap().data == data, "out of step");
    c.logout().unwrap();

    // A bad data digest on immediate data that arrives in pieces.
    let mut c = Client::connect(s.iscsi).unwrap();
    c.login_keys = keys(true);
    c.login(INI, Some(&iqn("vol0")), None).unwrap();
    let mut cmd = base();
    cmd.final_bit = true;
    cmd.write = true;
    cmd.attr = 1;
    cmd.itt = c.next_itt();
    cmd.expected_len = 8 * BS;
    cmd.data_len = 8 * BS as usize;
    cmd.cmd_sn = c.cmd_sn;
    cmd.exp_stat_sn = c.exp_stat_sn;
    cmd.cdb[0] = 0x8a;
    cmd.cdb[2..10].copy_from_slice(&3000u64.to_be_bytes());
    cmd.cdb[10..14].copy_from_slice(&8u32.to_be_bytes());
    let mut wire = c.encode(&cmd.encode(), &vec![0xee; 8 * BS as usize]);
    let last = wire.len() - 1;
    wire[last] ^= 0xff;
    send_in_pieces(&mut c, &wire);
    let r = c.recv().unwrap();
    match r.pdu {
        Pdu::Reject(j) => assert_eq!(j.reason, 2, "reject reason"),
        other => panic!("expected a Reject, got {other:?}"),
    }
    assert!(closed(c.socket()), "the connection stays up");
    let r = v.read16(3000, 8, BS).unwrap();
    assert!(r.data.iter().all(|&b| b == 0), "the rejected write landed");
    victim_ok(&mut v, &vdata);
    v.logout().unwrap();
    s.assert_buffer_pool_idle();
}
