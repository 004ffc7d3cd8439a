//! `keel volume create | inspect | check`: offline tools on a volume file.

use std::fmt::Write as _;
use std::path::Path;

use keel_blockvol::recovery::WalEnd;
use keel_blockvol::{
    inspect, CreateOptions, ErrorKind, Inspection, SlotState, Volume, VolumeConfig,
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

/// The inspection as text.
pub fn to_text(i: &Inspection) -> String {
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
    let _ = writeln!(o, "created         {} (unix seconds)", sb.created_unix);
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
        "extent region   offset {} (file is {} bytes)",
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
        let _ = writeln!(o, "note: {n}");
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
        to_text(&i)
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
