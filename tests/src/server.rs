//! Starting and stopping a real volume-server process for a test.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; the race with other
/// processes is acceptable in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A running volume server.
pub struct ServerProcess {
    child: Child,
    /// iSCSI portal.
    pub iscsi: SocketAddr,
    /// Admin endpoint.
    pub admin: SocketAddr,
    /// NVMe/TCP portal.
    pub nvmf: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    log: Arc<Mutex<String>>,
}

/// The NQN of a volume named `name` with the default prefix.
pub fn nqn(name: &str) -> String {
    format!("nqn.2026-11.io.keel:{name}")
}

/// The IQN of a volume named `name` with the default prefix.
pub fn iqn(name: &str) -> String {
    format!("iqn.2026-11.io.keel:{name}")
}

impl ServerProcess {
    /// Start `server_bin` on `data_dir` hosting `volumes` (`name:size`),
    /// with extra arguments; waits until the portal accepts connections.
    pub fn start(
        server_bin: &Path,
        data_dir: &Path,
        volumes: &[&str],
        extra: &[&str],
    ) -> ServerProcess {
        Self::start_on(server_bin, data_dir, volumes, extra, free_port())
    }

    /// [`ServerProcess::start`] with the iSCSI portal on `iscsi_port`.
    pub fn start_on(
        server_bin: &Path,
        data_dir: &Path,
        volumes: &[&str],
        extra: &[&str],
        iscsi_port: u16,
    ) -> ServerProcess {
        Self::start_ports(
            server_bin,
            data_dir,
            volumes,
            extra,
            iscsi_port,
            free_port(),
        )
    }

    /// [`ServerProcess::start`] with both portals on given ports.
    pub fn start_ports(
        server_bin: &Path,
        data_dir: &Path,
        volumes: &[&str],
        extra: &[&str],
        iscsi_port: u16,
        nvmf_port: u16,
    ) -> ServerProcess {
        let iscsi: SocketAddr = format!("127.0.0.1:{iscsi_port}").parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let nvmf: SocketAddr = format!("127.0.0.1:{nvmf_port}").parse().expect("addr");
        let mut cmd = Command::new(server_bin);
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("--iscsi-listen")
            .arg(iscsi.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--nvmf-listen")
            .arg(nvmf.to_string())
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("KEEL_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for v in volumes {
            cmd.arg("--volume").arg(v);
        }
        // The whole suite runs on either socket I/O backend
        // (`KEEL_TEST_SOCKET_IO=io_uring`; scripts/test.sh runs both).
        if let Ok(io) = std::env::var("KEEL_TEST_SOCKET_IO") {
            if !extra.contains(&"--socket-io") {
                cmd.arg("--socket-io").arg(io);
            }
        }
        let mut child = cmd.spawn().expect("start the volume server");
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if std::env::var_os("KEEL_TEST_ECHO").is_some() {
                        eprintln!("[server] {line}");
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let mut s = ServerProcess {
            child,
            iscsi,
            admin,
            nvmf,
            data_dir: data_dir.to_owned(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(iscsi).is_ok() && TcpStream::connect(nvmf).is_ok() {
                break;
            }
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("volume server exited at start ({st}):\n{}", s.log());
            }
            assert!(
                Instant::now() < deadline,
                "volume server did not listen:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// `iscsi://` URL of a LUN.
    pub fn url(&self, volume: &str) -> String {
        format!("iscsi://{}/{}/0", self.iscsi, iqn(volume))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (by number) to the server.
    pub fn signal(&self, sig: i32) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Wait for the process to exit (at most `timeout`); its exit code
    /// (None: killed by a signal or still running).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return st.code(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    /// POST to a path of the admin endpoint; status line and body.
    pub fn admin_post(&self, path: &str) -> String {
        let mut s = TcpStream::connect(self.admin).expect("admin connect");
        use std::io::Write;
        let _ = write!(
            s,
            "POST {path} HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// The sum of the /metrics samples of `name` whose labels contain
    /// `label` (e.g. `into="pool_buffer"`; empty: all of them).
    pub fn metric_sum(&self, name: &str, label: &str) -> u64 {
        self.admin_get("/metrics")
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Whether the servers of this test run use io_uring socket I/O
    /// (`KEEL_TEST_SOCKET_IO=io_uring`).
    pub fn uring_sockets() -> bool {
        std::env::var("KEEL_TEST_SOCKET_IO").is_ok_and(|v| v == "io_uring")
    }

    /// GET a path of the admin endpoint; the body.
    pub fn admin_get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(self.admin).expect("admin connect");
        use std::io::Write;
        let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or(out)
    }

    /// Wait (10 s at most) until the reactors' buffer pool has no bytes in
    /// use, as `/metrics` reports it: every data buffer a session took went
    /// back. A buffer dropped on a failed, aborted, unsent or abandoned
    /// command would stay counted as in use for good. Panics with the count
    /// on timeout.
    pub fn assert_buffer_pool_idle(&self) {
        let in_use = || {
            self.admin_get("/metrics")
                .lines()
                .find(|l| l.starts_with("keel_buffer_pool_bytes{state=\"in_use\"}"))
                .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .expect("keel_buffer_pool_bytes in_use in /metrics")
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while in_use() != 0 {
            assert!(
                Instant::now() < deadline,
                "buffer pool bytes still in use after the sessions ended: {}",
                in_use()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run a command, capture stdout+stderr and the status; panics with the
/// install step when the program is missing.
pub fn run(program: &str, args: &[&str], install_hint: &str) -> (Option<i32>, String) {
    match Command::new(program).args(args).output() {
        Ok(o) => {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            (o.status.code(), s)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{program} is not installed: {install_hint} (scripts/test.sh installs it)")
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}
