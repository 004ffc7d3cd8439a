//! The Linux kernel's iSCSI initiator (open-iscsi + iscsi_tcp, Debian's
//! kernel in a qemu guest) against keel: SendTargets discovery through the
//! advertised portal, login, mkfs.ext4, files with checksums, logout, login
//! again, fsck clean, checksums equal. See tests/guest/README.md.
//!
//! The guest runs under software emulation (tens of seconds); it is built
//! once into ~/.cache/keel-guest by tests/guest/build-guest.sh, which
//! installs the qemu packages it needs.

use std::path::Path;
use std::time::Duration;

use keel_tests::guest::{ensure_guest, run_script, script};
use keel_tests::server::{iqn, ServerProcess};

const SERVER: &str = env!("CARGO_BIN_EXE_keel-test-server");

#[test]
fn open_iscsi_in_a_guest_uses_a_keel_volume_as_a_disk() {
    guest_run(false);
}

/// The same with CRC32C header and data digests: every PDU of the session
/// (a file system's worth) carries both, and keel checks and sends them.
#[test]
fn open_iscsi_with_header_and_data_digests() {
    guest_run(true);
}

fn guest_run(digests: bool) {
    ensure_guest().unwrap_or_else(|e| panic!("guest image: {e}"));
    let dir = tempfile::tempdir().unwrap();
    // The guest reaches the host's 127.0.0.1:PORT as 10.0.2.2:PORT; the
    // advertised portal must say so for discovery to lead somewhere.
    let port = keel_tests::server::free_port();
    let advertise = format!("10.0.2.2:{port}");
    let s = ServerProcess::start_on(
        Path::new(SERVER),
        dir.path(),
        &["vol0:256MiB"],
        &["--iscsi-advertise", &advertise],
        port,
    );
    let port_s = port.to_string();
    let iqn = iqn("vol0");
    let mut env = vec![
        ("TGT_PORT", port_s.as_str()),
        ("TGT_IQN", iqn.as_str()),
        ("STRICT_PORTAL", "1"),
    ];
    if digests {
        env.push(("DIGESTS", "1"));
    }
    let run = run_script(&script("iscsi-fs.sh"), &env, Duration::from_secs(600));
    assert!(
        run.passed(),
        "guest run failed: {}\n--- console ---\n{}\n--- server ---\n{}",
        run.summary(),
        run.console,
        s.log()
    );
    eprintln!("{}", run.summary());
    assert!(
        run.steps().len() >= 8,
        "too few steps ran: {:?}",
        run.steps()
    );
    assert!(!s.log().contains("panicked"));
}
