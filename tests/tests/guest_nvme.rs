//! The Linux kernel's NVMe/TCP host driver (Debian's 6.1 kernel in a qemu
//! guest, nvme-cli and fio inside) against keel: discovery, connect with
//! and without digests and with two I/O queues, id-ctrl, id-ns, smart-log,
//! ana-log, ext4 with checksums across a reconnect, fsck, a fio verify job
//! from 4 KiB to 1 MiB at QD32; and a `kill -9` of the volume server in the
//! middle of a write load, after which every flushed write is there.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_tests::guest::{ensure_guest, run_script, script};
use keel_tests::server::{free_port, nqn, ServerProcess};

const SERVER: &str = env!("CARGO_BIN_EXE_keel-test-server");

fn fs_run(extra_env: &[(&str, &str)]) {
    ensure_guest().unwrap_or_else(|e| panic!("guest image: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let advertise = format!("10.0.2.2:{port}");
    let s = ServerProcess::start_ports(
        Path::new(SERVER),
        dir.path(),
        &["vol0:512MiB"],
        &["--nvmf-advertise", &advertise],
        free_port(),
        port,
    );
    let port_s = port.to_string();
    let nqn = nqn("vol0");
    let mut env = vec![("TGT_PORT", port_s.as_str()), ("TGT_NQN", nqn.as_str())];
    env.extend_from_slice(extra_env);
    let run = run_script(&script("nvme-fs.sh"), &env, Duration::from_secs(600));
    eprintln!("{}", run.summary());
    assert!(
        run.passed(),
        "guest run failed: {}\n--- console ---\n{}\n--- server ---\n{}",
        run.summary(),
        run.console,
        s.log()
    );
    assert!(run.steps().len() >= 20, "too few steps: {:?}", run.steps());
    assert!(!s.log().contains("panicked"));
}

#[test]
fn kernel_host_uses_a_keel_namespace_as_a_disk() {
    fs_run(&[]);
}

#[test]
fn kernel_host_with_digests_and_two_io_queues() {
    fs_run(&[
        ("HDGST", "1"),
        ("DDGST", "1"),
        ("NR_IO_QUEUES", "2"),
        ("FIO_SIZE", "64M"),
    ]);
}

#[test]
fn kill_9_during_guest_writes_keeps_flushed_writes() {
    ensure_guest().unwrap_or_else(|e| panic!("guest image: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let (iscsi_port, nvmf_port) = (free_port(), free_port());
    let start = {
        let d = dir.path().to_owned();
        move || {
            ServerProcess::start_ports(
                Path::new(SERVER),
                &d,
                &["vol0:64MiB"],
                &[],
                iscsi_port,
                nvmf_port,
            )
        }
    };
    let server = Arc::new(Mutex::new(Some(start())));
    let ctl = TcpListener::bind("127.0.0.1:0").unwrap();
    let ctl_port = ctl.local_addr().unwrap().port();
    let killed = Arc::new(Mutex::new(false));
    let (srv, k) = (server.clone(), killed.clone());
    let control = std::thread::spawn(move || {
        // The guest asks once: kill -9 the server and start it again.
        if let Ok((mut c, _)) = ctl.accept() {
            let mut buf = [0u8; 16];
            let _ = c.read(&mut buf);
            let mut g = srv.lock().unwrap();
            if let Some(mut s) = g.take() {
                s.signal(9);
                assert_eq!(s.wait(Duration::from_secs(10)), None, "killed by a signal");
            }
            *g = Some(start());
            *k.lock().unwrap() = true;
            let _ = c.write_all(b"restarted\n");
        }
    });
    let env = [
        ("TGT_PORT", nvmf_port.to_string()),
        ("TGT_NQN", nqn("vol0")),
        ("CTL_PORT", ctl_port.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let run = run_script(&script("nvme-crash.sh"), &env, Duration::from_secs(600));
    eprintln!("{}", run.summary());
    let log = server
        .lock()
        .unwrap()
        .as_ref()
        .map(ServerProcess::log)
        .unwrap_or_default();
    assert!(
        *killed.lock().unwrap(),
        "the guest never asked for the kill:\n{}",
        run.console
    );
    assert!(
        run.passed(),
        "guest run failed: {}\n--- console ---\n{}\n--- server after restart ---\n{log}",
        run.summary(),
        run.console
    );
    let _ = control.join();
}
