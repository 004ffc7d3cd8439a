//! The `keel` binary end to end: create, inspect, check, and its errors.

use std::path::Path;
use std::process::{Command, Output};

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn create(p: &Path) {
    let o = keel(&[
        "volume",
        "create",
        p.to_str().unwrap(),
        "--size",
        "8MiB",
        "--block-size",
        "512",
        "--wal-size",
        "256KiB",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
}

#[test]
fn create_inspect_check_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub/dir/v.keel");
    create(&p);
    let o = keel(&["volume", "inspect", p.to_str().unwrap(), "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["superblock"]["size"], 8 << 20);
    assert_eq!(v["superblock"]["block_size"], 512);
    assert_eq!(v["superblock"]["wal_size"], 256 << 10);
    assert_eq!(v["wal"]["pending_records"], 0);
    assert_eq!(v["healthy"], true);
    let uuid = v["superblock"]["uuid"].as_str().unwrap().to_string();
    let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{uuid}");
    assert!(uuid.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    let o = keel(&["volume", "inspect", p.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for w in [
        uuid.as_str(),
        "8MiB (8388608 bytes, 16384 blocks of 512)",
        "slot A valid",
        "slot B valid",
        "0 records pending replay",
        "checkpoint      LSN 0",
        "role standalone durability best_effort",
        "Z (unix ",
    ] {
        assert!(out.contains(w), "inspect lacks {w:?}: {out}");
    }
    let o = keel(&["volume", "check", p.to_str().unwrap()]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("check: OK"));
    // A second create on the same path refuses, in one line.
    let o = keel(&["volume", "create", p.to_str().unwrap(), "--size", "8MiB"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn damaged_files_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.keel");
    create(&p);
    let bytes = std::fs::read(&p).unwrap();

    let mut bad = bytes.clone();
    bad[100] ^= 0xff;
    bad[4096 + 100] ^= 0xff;
    std::fs::write(&p, &bad).unwrap();
    let o = keel(&["volume", "check", p.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("checksum"), "{err}");

    // One bad slot is survivable: a note, exit 0.
    let mut one = bytes.clone();
    one[4096 + 100] ^= 0xff;
    std::fs::write(&p, &one).unwrap();
    let o = keel(&["volume", "check", p.to_str().unwrap()]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("warning: superblock slot B is invalid"),
        "{out}"
    );

    // A cut extent file, then a cut meta file.
    std::fs::write(&p, &bytes).unwrap();
    let ext = keel_blockvol::storage::extent_path(&p);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ext)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let o = keel(&["volume", "check", p.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("keel: error: "), "{err}");
    assert!(err.contains(".extent: Volume file is 4096 bytes"), "{err}");
    let cut = bytes.len() - 8192;
    std::fs::write(&p, &bytes[..cut]).unwrap();
    let o = keel(&["volume", "check", p.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("Volume file is {cut} bytes")) && err.contains("truncated"),
        "{err}"
    );
    std::fs::remove_file(&ext).unwrap();
    let o = keel(&["volume", "check", p.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("extent file") && err.contains(".extent is missing"),
        "{err}"
    );

    std::fs::write(&p, b"hello, not a volume").unwrap();
    let o = keel(&["volume", "inspect", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("Not a keel volume"), "{:?}", text(&o));
    std::fs::write(&ext, b"").unwrap();
    let o = keel(&["volume", "check", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("Not a keel volume"), "{:?}", text(&o));

    let o = keel(&[
        "volume",
        "check",
        dir.path().join("missing").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn pending_wal_records_and_torn_records_are_reported() {
    use keel_blockvol::{SyncHandle, Volume, VolumeConfig};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.keel");
    create(&p);
    // Write durable records and stop without a checkpoint (the flusher is
    // held off; the process "dies" by leaking the volume).
    let cfg = VolumeConfig {
        flush_interval: std::time::Duration::from_secs(3600),
        flush_threshold: 1.0,
        ..Default::default()
    };
    let vol = Volume::open(&p, &cfg).unwrap();
    let mut h = SyncHandle::new(vol.handle().unwrap());
    for i in 0..3u8 {
        h.write(u64::from(i), &[i; 512], true).unwrap();
    }
    std::mem::forget(h);
    std::mem::forget(vol);
    let o = keel(&["volume", "inspect", p.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["wal"]["pending_records"], 3, "{v}");
    assert_eq!(v["wal"]["pending_bytes"], 3 * 512, "{v}");
    let o = keel(&["volume", "inspect", p.to_str().unwrap()]);
    let (out, _) = text(&o);
    assert!(out.contains("3 records pending replay"), "{out}");
    assert!(
        out.contains("note: 3 WAL records (LSN 1..=3) will be replayed"),
        "{out}"
    );
    // Tear the last record: still healthy (it was never durable... as far as
    // the file knows), reported as a note.
    let mut bytes = std::fs::read(&p).unwrap();
    let third_data = 8192 + 2 * 576 + 64;
    bytes[third_data + 3] ^= 0xff;
    std::fs::write(&p, &bytes).unwrap();
    let o = keel(&["volume", "check", p.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(v["wal"]["pending_records"], 2);
    assert!(
        v["wal"]["stop"]
            .as_str()
            .unwrap()
            .contains("torn record LSN 3"),
        "{v}"
    );
}

#[test]
fn bad_arguments_are_clear() {
    let o = keel(&[
        "volume",
        "create",
        "/nonexistent-dir-xyz/v.keel",
        "--size",
        "lots",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let (_, err) = text(&o);
    assert!(err.contains("invalid size \"lots\""), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("keel: error: "), "{err}");
    let o = keel(&["volume", "create", "x.keel"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--size <SIZE>"), "{err}");
    let o = keel(&[
        "volume",
        "create",
        "x.keel",
        "--size",
        "1GiB",
        "--block-size",
        "1024",
    ]);
    assert!(text(&o).1.contains("512 or 4096"));
    let o = keel(&["volume", "create", "x.keel", "--size", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("more than zero"), "{:?}", text(&o));
    // Not a multiple of the block size: the engine's check, in one line.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("odd.keel");
    let o = keel(&["volume", "create", p.to_str().unwrap(), "--size", "1000"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("multiple of the block size"), "{err}");
    assert!(!p.exists());
}

#[test]
fn help_and_version() {
    let o = keel(&["--version"]);
    assert!(o.status.success());
    assert_eq!(
        text(&o).0.trim(),
        format!("keel {}", env!("CARGO_PKG_VERSION"))
    );
    let o = keel(&["--help"]);
    assert!(o.status.success());
    assert!(text(&o).0.contains("volume"));
    assert!(text(&o).0.contains("RUST_LOG"));
    for (sub, words) in [
        (
            "create",
            &["--size", "--block-size", "--wal-size", "KiB", "GB"][..],
        ),
        ("inspect", &["--json", "superblock", "WAL"][..]),
        (
            "check",
            &["--json", "0 healthy", "1 damaged", "2 not readable"][..],
        ),
    ] {
        let o = keel(&["volume", sub, "--help"]);
        assert!(o.status.success(), "{sub}");
        let out = text(&o).0;
        for w in words {
            assert!(out.contains(w), "{sub} --help lacks {w:?}: {out}");
        }
    }
}

/// A valid WAL record that cannot be replayed (it covers blocks past the
/// end) is damage: `check` exits 1 and says why.
#[test]
fn unreplayable_wal_record_is_damage() {
    use keel_blockvol::wal::{RecordHeader, RecordKind};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.keel");
    create(&p);
    let o = keel(&["volume", "inspect", p.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sb = &v["superblock"];
    let n = |k: &str| sb[k].as_u64().unwrap();
    let hdr = RecordHeader {
        kind: RecordKind::Trim,
        lsn: n("checkpoint_lsn") + 1,
        gen: n("wal_gen"),
        lba: n("blocks"),
        blocks: 8,
        data_len: 0,
        epoch: n("epoch"),
        crc: 0,
    }
    .encode(&[]);
    let at = n("wal_offset") + n("wal_tail") % n("wal_size");
    let mut bytes = std::fs::read(&p).unwrap();
    let at = usize::try_from(at).unwrap();
    bytes[at..at + hdr.len()].copy_from_slice(&hdr);
    std::fs::write(&p, &bytes).unwrap();
    let o = keel(&["volume", "check", p.to_str().unwrap()]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("DAMAGE: ") && out.contains("past the end"),
        "{out}"
    );
    assert!(out.contains("check: DAMAGED"), "{out}");
    let o = keel(&["volume", "check", p.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["healthy"], false);
    assert_eq!(v["exit_code"], 1);
}
