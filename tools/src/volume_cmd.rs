//! `keel volume create | inspect | check`: offline tools on a volume file.

use std::fmt::Write as _;
use std::path::Path;

use keel_blockvol::recovery::WalEnd;
use keel_blockvol::{
    inspect, CreateOptions, ErrorKind, Inspection, SlotState, Superblock, Volume, VolumeConfig,
};
use serde_json::{json, Value};

use crate::size::format_size;

/// Exit code of `check` for a healthy volume.
pub const EXIT_OK: i32 = 0;
/// Exit code of `check` for a damaged volume.
pub const EXIT_DAMAGED: i32 = 1;
/// Exit code when the file cannot be read as a volume at all.
pub const EXIT_UNREADABLE: i32 = 2;

/// Create a volume file and close it cleanly.
pub fn create(
    path: &Path,
    size: u64,
    block_size: u32,
    wal_size: Option<u64>,
) -> anyhow::Result<String> {
    for p in [
        path.to_path_buf(),
        keel_blockvol::storage::extent_path(path),
    ] {
        if p.exists() {
            anyhow::bail!("{} already exists", p.display());
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let opts = CreateOptions {
        size,
        block_size,
        wal_size: wal_size.unwrap_or_else(|| keel_blockvol::default_wal_size(size)),
    };
    let vol = Volume::create(path, &opts, &VolumeConfig::default())?;
    let info = vol.info();
    vol.close()?;
    Ok(format!(
        "created {}: {} ({} blocks of {} bytes), WAL {}, uuid {}",
        path.display(),
        format_size(info.size),
        info.blocks,
        info.block_size,
        format_size(info.wal_size),
        uuid_str(&info.uuid)
    ))
}

/// 8-4-4-4-12 hex.
pub fn uuid_str(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn utc_str(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days, on unsigned numbers (no dates
    // before 1970 can occur here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The one-line message for an engine error on the volume at `path`.
/// A truncated volume names the short file and its length (the engine's
/// error counts the two files together).
pub fn error_line(path: &Path, e: &keel_blockvol::Error) -> String {
    if let keel_blockvol::Error::Truncated { expected, actual } = e {
        let ext = keel_blockvol::storage::extent_path(path);
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
        if let (Some(meta), Some(extent)) = (len(path), len(&ext)) {
            // The meta file is whole when its length is where a superblock
            // slot puts the extent region: then the extent file is short.
            let meta_whole = extent_offset(path) == Some(meta);
            if meta_whole && meta + extent == *actual && *expected > meta {
                return format!(
                    "{}: Volume file is {extent} bytes, the superblock needs {}: truncated",
                    ext.display(),
                    expected - meta
                );
            }
            if !meta_whole && meta <= *actual {
                return format!(
                    "{}: Volume file is {meta} bytes, its superblock needs {}: truncated",
                    path.display(),
                    expected.max(&meta)
                );
            }
        }
    }
    if e.kind() == ErrorKind::Io && path.is_file() {
        // The engine opens both files before it reads a superblock: a file
        // that is no volume at all shows up as a missing extent file.
        let ext = keel_blockvol::storage::extent_path(path);
        if !ext.exists() {
            let mut head = [0u8; 8];
            let magic = std::fs::File::open(path)
                .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0))
                .is_ok()
                && head == keel_blockvol::superblock::MAGIC;
            return if magic {
                format!(
                    "{}: the volume's extent file {} is missing",
                    path.display(),
                    ext.display()
                )
            } else {
                format!(
                    "{}: Not a keel volume (bad magic, and no {})",
                    path.display(),
                    ext.display()
                )
            };
        }
    }
    format!("{}: {e}", path.display())
}

/// The extent offset recorded in either valid superblock slot of `path`.
fn extent_offset(path: &Path) -> Option<u64> {
    use keel_blockvol::superblock::{SLOT_BYTES, SLOT_SIZE};
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; SLOT_BYTES];
    [0, SLOT_SIZE].into_iter().find_map(|off| {
        f.read_exact_at(&mut buf, off).ok()?;
        Superblock::decode(&buf).ok().map(|sb| sb.extent_offset)
    })
}

fn stop_str(s: &WalEnd) -> String {
    match s {
        WalEnd::NoRecord => "no further record".into(),
        WalEnd::Stale { lsn, gen } => format!("stale record (LSN {lsn}, generation {gen})"),
        WalEnd::Torn { lsn } => format!("torn record LSN {lsn}"),
        WalEnd::Full => "end of ring".into(),
    }
}

fn slot_json(s: &SlotState) -> Value {
    match s {
        SlotState::Valid(seq) => json!({"valid": true, "seq": seq}),
        SlotState::Invalid(why) => json!({"valid": false, "error": why}),
    }
}

/// The inspection as JSON.
pub fn to_json(i: &Inspection) -> Value {
    let sb = &i.superblock;
    json!({
        "superblock": {
            "uuid": uuid_str(&sb.uuid),
            "seq": sb.seq,
            "slot": if i.slot == 0 { "A" } else { "B" },
            "size": sb.size,
            "block_size": sb.block_size,
            "blocks": sb.blocks(),
            "wal_offset": sb.wal_offset,
            "wal_size": sb.wal_size,
            "extent_offset": sb.extent_offset,
            "checkpoint_lsn": sb.checkpoint_lsn,
            "wal_tail": sb.wal_tail,
            "wal_gen": sb.wal_gen,
            "epoch": sb.epoch,
            "role": sb.role.as_str(),
            "durability": sb.durability.as_str(),
            "flags": sb.flags,
            "created_unix": sb.created_unix,
            "created": utc_str(sb.created_unix),
        },
        "slots": {"A": slot_json(&i.slots[0]), "B": slot_json(&i.slots[1])},
        "len": i.file_len,
        "wal": {
            "pending_records": i.wal.records,
            "pending_bytes": i.wal.data_bytes,
            "last_lsn": i.wal.last_lsn,
            "used_bytes": i.wal.end - sb.wal_tail,
            "used_fraction": (i.wal.end - sb.wal_tail) as f64 / sb.wal_size as f64,
            "stop": stop_str(&i.wal.stop),
        },
        "damage": i.damage,
        "notes": i.notes,
        "healthy": i.damage.is_empty(),
    })
}

/// The inspection as text; `check` prints the notes as warnings.
pub fn to_text(i: &Inspection, check: bool) -> String {
    let sb = &i.superblock;
    let mut o = String::new();
    let slot = |s: &SlotState| match s {
        SlotState::Valid(seq) => format!("valid (seq {seq})"),
        SlotState::Invalid(why) => format!("INVALID: {why}"),
    };
    let used = i.wal.end - sb.wal_tail;
    let _ = writeln!(o, "uuid            {}", uuid_str(&sb.uuid));
    let _ = writeln!(
        o,
        "size            {} ({} bytes, {} blocks of {})",
        format_size(sb.size),
        sb.size,
        sb.blocks(),
        sb.block_size
    );
    let _ = writeln!(
        o,
        "created         {} (unix {})",
        utc_str(sb.created_unix),
        sb.created_unix
    );
    let _ = writeln!(
        o,
        "superblock      slot {} seq {}; slot A {}; slot B {}",
        ["A", "B"][i.slot],
        sb.seq,
        slot(&i.slots[0]),
        slot(&i.slots[1])
    );
    let _ = writeln!(
        o,
        "wal             offset {} size {} generation {}",
        sb.wal_offset,
        format_size(sb.wal_size),
        sb.wal_gen
    );
    let _ = writeln!(
        o,
        "extent region   offset {} (in PATH.extent; the two files hold {} bytes)",
        sb.extent_offset, i.file_len
    );
    let _ = writeln!(
        o,
        "checkpoint      LSN {} at WAL offset {}",
        sb.checkpoint_lsn, sb.wal_tail
    );
    let _ = writeln!(
        o,
        "wal usage       {} records pending replay, {} data bytes, {} of the ring ({:.1}%), last LSN {}; then {}",
        i.wal.records,
        i.wal.data_bytes,
        used,
        100.0 * used as f64 / sb.wal_size as f64,
        i.wal.last_lsn,
        stop_str(&i.wal.stop)
    );
    let _ = writeln!(
        o,
        "replication     epoch {} role {} durability {}",
        sb.epoch,
        sb.role.as_str(),
        sb.durability.as_str()
    );
    for n in &i.notes {
        let _ = writeln!(o, "{}: {n}", if check { "warning" } else { "note" });
    }
    for d in &i.damage {
        let _ = writeln!(o, "DAMAGE: {d}");
    }
    o
}

/// Whether an engine error means "this file is not a readable volume".
pub fn unreadable(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::NotAVolume
            | ErrorKind::Truncated
            | ErrorKind::UnsupportedVersion
            | ErrorKind::Corrupt
    )
}

/// Run `inspect` or `check`: `(output, exit code)`.
pub fn inspect_cmd(
    path: &Path,
    json_out: bool,
    check: bool,
) -> Result<(String, i32), keel_blockvol::Error> {
    let i = inspect(path)?;
    let code = if i.damage.is_empty() {
        EXIT_OK
    } else {
        EXIT_DAMAGED
    };
    let mut out = if json_out {
        let mut v = to_json(&i);
        if check {
            v["exit_code"] = json!(code);
        }
        serde_json::to_string_pretty(&v).unwrap_or_default()
    } else {
        to_text(&i, check)
    };
    if check && !json_out {
        out.push_str(if code == EXIT_OK {
            "check: OK\n"
        } else {
            "check: DAMAGED\n"
        });
    }
    Ok((out, if check { code } else { EXIT_OK }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_str(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_str(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_str(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc_str(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn uuids() {
        let u: [u8; 16] = std::array::from_fn(|i| u8::try_from(i * 17).unwrap_or(0));
        assert_eq!(uuid_str(&u), "00112233-4455-6677-8899-aabbccddeeff");
    }
}
