//! Writes under WAL pressure: a small volume whose WAL fills faster than the
//! flusher empties it, so the engine's admission control parks writes (soft
//! watermark delay, waits at the hard watermark). A parked write is retried
//! by a later poll of the engine handle, not by a notification: a reactor
//! that went to sleep without a wake-up for it stalled the connection until
//! its next timer (seconds: the NOP-In or keep-alive check). Both targets,
//! in interrupt poll mode (the reactor sleeps whenever it has nothing to
//! do), pipelined at QD32: every write completes, and none takes a second.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keel_bench::iscsi_load::{run, Lun, Workload};
use keel_bench::nvmf_client::Queue;
use keel_tests::server::{iqn, nqn, ServerProcess};

const SERVER: &str = env!("CARGO_BIN_EXE_keel-test-server");

fn admission_waits(s: &ServerProcess) -> u64 {
    s.admin_get("/metrics")
        .lines()
        .find(|l| l.starts_with("keel_volume_admission_waits_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn server() -> (tempfile::TempDir, ServerProcess) {
    let dir = tempfile::tempdir().unwrap();
    // 32 MiB with a 2 MiB WAL (the default would be 8 MiB).
    let s = ServerProcess::start(
        std::path::Path::new(SERVER),
        dir.path(),
        &["vol0:32MiB:2MiB"],
        &["--poll-mode", "interrupt"],
    );
    (dir, s)
}

#[test]
fn iscsi_writes_parked_by_admission_control_do_not_stall() {
    let (_dir, s) = server();
    let w = Workload {
        write: true,
        size: 4096,
        qd: 32,
    };
    let target = iqn("vol0");
    let lun = Lun {
        addr: s.iscsi,
        target: &target,
        lun: 0,
        block_size: 4096,
        pid: s.pid(),
    };
    let m = run(&lun, 32 << 20, w, 3.0).unwrap();
    let waits = admission_waits(&s);
    eprintln!(
        "iSCSI QD32 writes: {:.0} IOPS, p99 {:.0} µs, max {:.0} µs, admission waits {waits}",
        m.iops, m.p99_us, m.max_us
    );
    assert!(waits > 0, "the WAL never filled: the test proves nothing");
    assert!(
        m.max_us < 1e6,
        "a write took {:.0} ms under WAL pressure",
        m.max_us / 1000.0
    );
}

#[test]
fn nvme_writes_parked_by_admission_control_do_not_stall() {
    let (_dir, s) = server();
    let host = "nqn.2026-11.io.keel.test:pressure";
    let sub = nqn("vol0");
    let (_admin, cntlid) = Queue::admin(s.nvmf, &sub, host, 0, false).unwrap();
    let mut q = Queue::io(s.nvmf, cntlid, 1, &sub, host, false).unwrap();
    let data = vec![0x5au8; 4096];
    let blocks = (32u64 << 20) / 4096;
    let mut inflight: HashMap<u16, Instant> = HashMap::new();
    let mut worst = Duration::ZERO;
    let mut done = 0u64;
    let end = Instant::now() + Duration::from_secs(3);
    let mut lba = 0u64;
    let mut submit = |q: &mut Queue, inflight: &mut HashMap<u16, Instant>| {
        lba = (lba + 7919) % blocks;
        let cid = q.submit(Queue::rw_sqe(true, lba, 1, false), &data).unwrap();
        inflight.insert(cid, Instant::now());
    };
    for _ in 0..32 {
        submit(&mut q, &mut inflight);
    }
    while !inflight.is_empty() {
        let (c, _) = q.reap().unwrap();
        assert_eq!(
            c.status,
            keel_pdu::nvme::Status::SUCCESS,
            "write failed: {c:?}"
        );
        if let Some(t) = inflight.remove(&c.cid) {
            worst = worst.max(t.elapsed());
            done += 1;
        }
        if Instant::now() < end {
            submit(&mut q, &mut inflight);
        }
    }
    let waits = admission_waits(&s);
    eprintln!("NVMe/TCP QD32 writes: {done} in 3 s, slowest {worst:?}, admission waits {waits}");
    assert!(waits > 0, "the WAL never filled: the test proves nothing");
    assert!(
        worst < Duration::from_secs(1),
        "a write took {worst:?} under WAL pressure"
    );
}

/// Reset `sock` (linger 0: the target's next receive fails at once, with
/// whatever it accepted still in flight) and drop it.
fn reset(sock: &std::net::TcpStream) {
    socket2::SockRef::from(sock)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    sock.shutdown(std::net::Shutdown::Both).ok();
}

/// Connections reset while their writes are in the engine, many of them
/// parked by admission control (the 2 MiB WAL is full): when they close,
/// the engine handle hands back every buffer it still holds (completions
/// not taken, operations in flight, parked writes), so the reactor's
/// buffer pool ends with nothing in use. Dropping the handle instead
/// freed those buffers, and the pool kept counting them as in use.
#[test]
fn connections_reset_under_wal_pressure_give_every_buffer_back() {
    use keel_pdu::iscsi::ScsiCommand;
    use keel_tests::iscsi_client::Client;
    use std::io::Write;
    let (_dir, s) = server();
    let target = iqn("vol0");
    let sub = nqn("vol0");
    let host = "nqn.2026-11.io.keel.test:reset";
    let before = admission_waits(&s);
    for round in 0..3u64 {
        // iSCSI: 32 WRITE(16)s of 64 KiB with immediate data in one go.
        let mut c = Client::connect(s.iscsi).unwrap();
        c.login_keys = [("ImmediateData", "Yes"), ("FirstBurstLength", "65536")]
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        c.login("iqn.2026-11.io.keel.test:reset", Some(&target), None)
            .unwrap();
        let data = vec![0x3cu8; 64 << 10];
        let mut wire = Vec::new();
        for i in 0..32u64 {
            let mut cdb = [0u8; 16];
            cdb[0] = 0x8a;
            cdb[2..10].copy_from_slice(&(round * 512 + i * 16).to_be_bytes());
            cdb[10..14].copy_from_slice(&16u32.to_be_bytes());
            let cmd = ScsiCommand {
                immediate: false,
                final_bit: true,
                read: false,
                write: true,
                attr: 1,
                ahs_len: 0,
                data_len: data.len(),
                lun: 0,
                itt: c.next_itt(),
                expected_len: 64 << 10,
                cmd_sn: c.cmd_sn,
                exp_stat_sn: c.exp_stat_sn,
                cdb,
            };
            c.cmd_sn = c.cmd_sn.wrapping_add(1);
            wire.extend_from_slice(&c.encode(&cmd.encode(), &data));
        }
        c.socket().write_all(&wire).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        reset(c.socket());
        drop(c);

        // NVMe/TCP: four queues of 32 in-capsule 16 KiB writes.
        let (_admin, cntlid) = Queue::admin(s.nvmf, &sub, host, 0, false).unwrap();
        let mut qs: Vec<Queue> = (1..=4)
            .map(|qid| Queue::io(s.nvmf, cntlid, qid, &sub, host, false).unwrap())
            .collect();
        let data = vec![0xa5u8; 16 << 10];
        for (n, q) in qs.iter_mut().enumerate() {
            q.set_cork(true).unwrap();
            for i in 0..32u64 {
                let lba = 4096 + round * 1024 + n as u64 * 128 + i * 4;
                q.submit(Queue::rw_sqe(true, lba, 4, false), &data).unwrap();
            }
            q.set_cork(false).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
        for q in &mut qs {
            reset(q.socket());
        }
    }
    let waits = admission_waits(&s) - before;
    eprintln!("admission waits while the connections were reset: {waits}");
    assert!(waits > 0, "the WAL never filled: the test proves nothing");
    s.assert_buffer_pool_idle();
}
