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
    assert!(out.contains("slot B is invalid"), "{out}");

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
    assert!(err.contains("Volume files hold"), "{err}");
    std::fs::write(&p, &bytes[..bytes.len() - 8192]).unwrap();
    let o = keel(&["volume", "check", p.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("Volume files hold"), "{err}");
    std::fs::remove_file(&ext).unwrap();
    let o = keel(&["volume", "check", p.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(".extent"), "{err}");

    std::fs::write(&p, b"hello, not a volume").unwrap();
    let o = keel(&["volume", "inspect", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));

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
    assert!(text(&o).1.contains("invalid size"));
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
    let o = keel(&["--help"]);
    assert!(o.status.success());
    assert!(text(&o).0.contains("volume"));
}
