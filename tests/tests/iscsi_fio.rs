//! fio's verify job against a keel LUN through QEMU's iSCSI driver:
//! `qemu-storage-daemon` logs in to keel and re-exports the LUN over NBD,
//! fio (`--ioengine=nbd`) writes mixed block sizes at QD32 with CRC32C
//! headers and reads everything back. (Debian's fio has no libiscsi engine.)
//!
//! Needs Debian `fio` and `qemu-storage-daemon` (package
//! `qemu-system-common` from bookworm, with `qemu-block-extra`);
//! scripts/test.sh installs them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_tests::server::{free_port, iqn, ServerProcess};

const SERVER: &str = env!("CARGO_BIN_EXE_keel-test-server");

struct Qsd(Child);

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn fio_verify_mixed_sizes_qd32_through_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(Path::new(SERVER), dir.path(), &["vol0:1GiB"], &[]);
    let nbd = free_port();
    let child = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=iscsi,node-name=lun0,transport=tcp,portal={},target={},lun=0,cache.direct=on",
            s.iscsi,
            iqn("vol0")
        ))
        .arg("--nbd-server")
        .arg(format!("addr.type=inet,addr.host=127.0.0.1,addr.port={nbd}"))
        .arg("--export")
        .arg("type=nbd,id=e0,node-name=lun0,name=lun0,writable=on")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-storage-daemon (apt-get install qemu-system-common/bookworm qemu-block-extra/bookworm)");
    let _qsd = Qsd(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", nbd)).is_err() {
        assert!(
            Instant::now() < deadline,
            "qemu-storage-daemon did not export the LUN"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new("fio")
        .args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri=nbd://127.0.0.1:{nbd}/lun0"),
            "--rw=randwrite",
            "--bssplit=4k/40:16k/20:64k/20:256k/10:1m/10",
            "--iodepth=32",
            "--size=256m",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_backlog=4096",
        ])
        .output()
        .expect("fio (apt-get install fio)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fio failed:\n{text}");
    assert!(text.contains("err= 0"), "{text}");
    assert!(!text.contains("verify: bad"), "{text}");
    assert!(!s.log().contains("panicked"));
}
