//! The reference: the same kernel-host script (`nvme-fs.sh`) that
//! `guest_nvme.rs` runs against keel, run against the Linux kernel's own
//! nvmet-tcp target (in a second guest, forwarded to the host's loopback),
//! so both targets are held to the same checks.

use std::process::Command;

use keel_tests::guest::{ensure_guest, guest_dir, script};
use keel_tests::server::free_port;

#[test]
fn kernel_nvmet_passes_the_same_checks() {
    ensure_guest().unwrap_or_else(|e| panic!("guest image: {e}"));
    let port = free_port().to_string();
    let out = Command::new(guest_dir().join("peer-target.sh"))
        .args(["nvmet", "-p", &port, "-t", "600", "--"])
        .arg(guest_dir().join("run-guest.sh"))
        .args([
            "-t",
            "400",
            "-e",
            &format!("TGT_PORT={port}"),
            "-e",
            "TGT_NQN=nqn.2024-01.io.keel.test:nvmet",
            "-e",
            "FIO_SIZE=64M",
        ])
        .arg(script("nvme-fs.sh"))
        .output()
        .expect("run peer-target.sh");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nvmet reference run failed:\n{text}");
    assert!(text.contains("PASS nvme-fs"), "{text}");
}
