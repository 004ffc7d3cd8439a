//! The volume server's admin endpoint and configuration: `/status`,
//! `/metrics`, creating a volume while serving, refusing bad configuration.

use std::path::Path;
use std::process::Command;

use keel_bench::nvmf_client::Queue;
use keel_pdu::nvme::Status;
use keel_tests::iscsi_client::Client;
use keel_tests::server::{iqn, nqn, ServerProcess};

const SERVER: &str = env!("CARGO_BIN_EXE_keel-test-server");

#[test]
fn status_metrics_and_volumes_created_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    // vol0 gets the default WAL (a quarter of its size), wal1 the one named.
    let mut s = ServerProcess::start(
        Path::new(SERVER),
        dir.path(),
        &["vol0:16MiB", "wal1:16MiB:2MiB"],
        &[],
    );
    // Some I/O so the counters move.
    let mut c = Client::connect(s.iscsi).unwrap();
    c.login("iqn.2026-11.io.keel.test:admin", Some(&iqn("vol0")), None)
        .unwrap();
    assert_eq!(
        c.write16(0, &vec![1u8; 8192], 4096, true).unwrap().status,
        0
    );
    // A cached write and SYNCHRONIZE CACHE: one group commit.
    assert_eq!(
        c.write16(2, &vec![2u8; 4096], 4096, false).unwrap().status,
        0
    );
    assert_eq!(c.sync_cache().unwrap().status, 0);
    let status: serde_json::Value = serde_json::from_str(&s.admin_get("/status")).unwrap();
    assert_eq!(status["volumes"][0]["name"], "vol0");
    assert_eq!(status["volumes"][0]["size_bytes"], 16 << 20);
    assert_eq!(status["volumes"][0]["sessions"], 1);
    assert_eq!(status["volumes"][0]["wal"]["size_bytes"], 4 << 20);
    assert_eq!(status["volumes"][1]["name"], "wal1");
    assert_eq!(status["volumes"][1]["wal"]["size_bytes"], 2 << 20);
    assert_eq!(
        status["sessions"][0]["initiator"],
        "iqn.2026-11.io.keel.test:admin"
    );
    assert!(status["volumes"][0]["lsn"]["durable"].as_u64().unwrap() >= 1);
    let m = s.admin_get("/metrics");
    assert!(
        m.contains("keel_volume_write_ops_total{volume=\"vol0\"} 2"),
        "{m}"
    );
    // Group commit: batch sizes and fdatasync latency as histograms. The
    // SYNCHRONIZE CACHE is one group commit; the FUA write another, unless
    // it was a linked write+fdatasync (the standard backend, or io_uring
    // without inline WAL writes).
    let metric = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {m}"))
    };
    let linked = metric("keel_volume_linked_syncs_total{volume=\"vol0\"}");
    assert!(linked <= 1, "{m}");
    let commits = 2 - linked;
    assert!(m.contains("# TYPE keel_volume_group_commit_batch_size histogram"));
    assert_eq!(
        metric("keel_volume_group_commit_batch_size_bucket{volume=\"vol0\",le=\"+Inf\"}"),
        commits,
        "{m}"
    );
    assert_eq!(
        metric("keel_volume_group_commit_batch_size_count{volume=\"vol0\"}"),
        commits,
        "{m}"
    );
    let syncs: u64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("keel_volume_group_commit_sync_seconds_count{volume=\"vol0\"} ")
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(syncs >= 1, "{m}");
    assert!(
        m.contains("keel_scsi_write_latency_seconds_count{volume=\"vol0\"} 2"),
        "{m}"
    );
    assert!(m.contains("# TYPE keel_scsi_read_latency_seconds histogram"));
    assert!(m.contains("keel_iscsi_sessions{volume=\"vol0\"} 1"));

    // A volume created on request is served over both protocols at once.
    let r = s.admin_post("/volumes/extra/create/32MiB");
    assert!(r.contains(" 201 "), "{r}");
    assert!(r.contains(&nqn("extra")), "{r}");
    assert!(s
        .admin_post("/volumes/extra/create/32MiB")
        .contains(" 409 "));
    assert!(s
        .admin_post("/volumes/Bad%20Name/create/1MiB")
        .contains(" 409 "));
    assert!(s.admin_post("/volumes/x/create/12XB").contains(" 400 "));
    let mut c2 = Client::connect(s.iscsi).unwrap();
    c2.login("iqn.2026-11.io.keel.test:admin", Some(&iqn("extra")), None)
        .unwrap();
    let r = c2.read16(0, 1, 4096).unwrap();
    assert_eq!(r.status, 0);
    let (_a, cntlid) = Queue::admin(
        s.nvmf,
        &nqn("extra"),
        "nqn.2026-11.io.keel.test:h",
        0,
        false,
    )
    .unwrap();
    let mut io = Queue::io(
        s.nvmf,
        cntlid,
        1,
        &nqn("extra"),
        "nqn.2026-11.io.keel.test:h",
        false,
    )
    .unwrap();
    assert_eq!(
        io.read((32 << 20) / 4096 - 1, 1, 4096).unwrap().0.status,
        Status::SUCCESS
    );
    assert!(dir.path().join("extra.keel").exists());
    // SIGTERM: clean exit with every volume closed.
    drop(io);
    s.signal(15);
    assert_eq!(
        s.wait(std::time::Duration::from_secs(30)),
        Some(0),
        "{}",
        s.log()
    );
    assert_eq!(s.log().matches("volume closed").count(), 3, "{}", s.log());

    // The WAL size is set at creation: another one configured for an
    // existing volume is reported and the volume keeps its own.
    let s = ServerProcess::start(Path::new(SERVER), dir.path(), &["wal1:16MiB:3MiB"], &[]);
    let status: serde_json::Value = serde_json::from_str(&s.admin_get("/status")).unwrap();
    assert_eq!(status["volumes"][0]["wal"]["size_bytes"], 2 << 20);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !s.log().contains("configured WAL size differs") {
        assert!(std::time::Instant::now() < deadline, "{}", s.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn bad_configuration_is_refused_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[[volume]]\nname = \"a\"\nchap = { user = \"u\", secret = \"short\" }\n",
    )
    .unwrap();
    let out = Command::new(SERVER)
        .args(["--check-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keel-volume: error: invalid setting volume[0].chap.secret"),
        "{err}"
    );
    let out = Command::new(SERVER)
        .args(["--poll-mode", "fast", "--check-config"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("reactor.poll_mode"));
    // A volume that does not exist and has no size to be created with.
    let out = Command::new(SERVER)
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--volume",
            "ghost",
            "--admin-listen",
            "",
            "--iscsi-listen",
            "127.0.0.1:0",
            "--nvmf-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ghost does not exist"));
}
