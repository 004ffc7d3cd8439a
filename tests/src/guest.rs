//! Linux kernel initiators in a qemu guest, for end-to-end tests.
//!
//! The host has no kernel modules, so the kernel's iSCSI (`iscsi_tcp` with
//! open-iscsi) and NVMe/TCP (`nvme-tcp` with nvme-cli) initiators run in a
//! small qemu guest: Debian's kernel and a busybox initramfs, built once by
//! `tests/guest/build-guest.sh` and booted per test by
//! `tests/guest/run-guest.sh` (under TCG, about 7 s from boot to power-off
//! for an empty script). Inside the guest, `10.0.2.2:PORT` is the host's
//! `127.0.0.1:PORT`, so a target listening on the host's loopback is
//! reachable from the guest scripts in `tests/guest/scripts/`.
//!
//! ```no_run
//! use std::time::Duration;
//! use keel_tests::guest;
//!
//! guest::ensure_guest().expect("guest image");
//! let run = guest::run_script(
//!     &guest::script("iscsi-fs.sh"),
//!     &[("TGT_PORT", "3270"), ("TGT_IQN", "iqn.2024-01.io.keel.test:tgt")],
//!     Duration::from_secs(300),
//! );
//! assert!(run.passed(), "{}", run.summary());
//! ```
//!
//! Guest runs are serialised within a process: the guest is emulated and
//! takes the machine's CPUs, so two at once would only slow each other
//! into timeouts.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The `run-guest.sh` exit status for a run that hit its time limit.
pub const EXIT_TIMEOUT: i32 = 124;
/// The `run-guest.sh` exit status for a guest that stopped without
/// reporting its script's status (kernel panic, qemu died).
pub const EXIT_NO_STATUS: i32 = 125;
/// The `run-guest.sh` exit status for a harness error (usage, guest not
/// built, qemu missing).
pub const EXIT_HARNESS: i32 = 126;

/// Extra time the Rust side waits beyond a run's own time limit before it
/// kills `run-guest.sh` and qemu itself.
const WATCHDOG_SLACK: Duration = Duration::from_secs(30);

/// The guest's boot files, as `build-guest.sh` left them in its cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestImage {
    /// The cache directory (`$KEEL_GUEST_CACHE`, default
    /// `$HOME/.cache/keel-guest`).
    pub cache_dir: PathBuf,
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs (uncompressed newc cpio).
    pub initramfs: PathBuf,
    /// The kernel release, such as `6.1.0-56-amd64`.
    pub kernel_release: String,
}

/// What one guest run produced.
#[derive(Clone, Debug)]
pub struct GuestRun {
    /// The script's exit status, or `None` if the run timed out, the guest
    /// died without reporting one, or the harness could not start it.
    pub status: Option<i32>,
    /// The guest console (kernel messages and the script's output), then
    /// `run-guest.sh`'s own messages.
    pub console: String,
    /// The run hit its time limit.
    pub timed_out: bool,
    /// Wall-clock time of the whole run, boot included.
    pub elapsed: Duration,
}

impl GuestRun {
    /// The script exited 0.
    pub fn passed(&self) -> bool {
        self.status == Some(0)
    }

    /// The script's `STEP ...` lines, in order.
    pub fn steps(&self) -> Vec<&str> {
        self.lines_starting("STEP ")
    }

    /// The script's `FAIL ...` lines (the guest scripts print one, on the
    /// first failure).
    pub fn failures(&self) -> Vec<&str> {
        self.lines_starting("FAIL ")
    }

    /// A short account for an assertion message: the outcome, the failure,
    /// and the last 60 console lines.
    pub fn summary(&self) -> String {
        let outcome = match (self.status, self.timed_out) {
            (_, true) => "timed out".to_string(),
            (Some(s), false) => format!("script exited {s}"),
            (None, false) => "no exit status from the guest".to_string(),
        };
        let lines: Vec<&str> = self.console.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!(
            "guest run: {outcome} after {:.1}s\n{}\n--- console (last 60 lines)\n{tail}",
            self.elapsed.as_secs_f64(),
            self.failures().join("\n"),
        )
    }

    fn lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.console
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }
}

/// How to boot the guest, beyond the script, its environment and the time
/// limit.
#[derive(Clone, Debug)]
pub struct GuestOptions {
    /// Guest memory in MiB (default 1024).
    pub mem_mb: u32,
    /// Guest CPUs (default 2).
    pub cpus: u32,
    /// Files copied into the guest's `/root`, the script's working directory.
    pub files: Vec<PathBuf>,
    /// qemu `hostfwd` rules such as `tcp:127.0.0.1:14420-:4420`, for a
    /// target that runs inside the guest.
    pub host_forwards: Vec<String>,
}

impl Default for GuestOptions {
    fn default() -> Self {
        GuestOptions {
            mem_mb: 1024,
            cpus: 2,
            files: Vec::new(),
            host_forwards: Vec::new(),
        }
    }
}

/// `tests/guest`: the harness scripts.
pub fn guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest")
}

/// The guest script `name` in `tests/guest/scripts`, such as `"iscsi-fs.sh"`.
pub fn script(name: &str) -> PathBuf {
    guest_dir().join("scripts").join(name)
}

/// Build the guest if needed (`tests/guest/build-guest.sh`: installs the
/// Debian packages it needs when run as root, downloads the kernel package,
/// packs the initramfs; a no-op when the cache is up to date) and return its
/// files. The first call in a process does the work; later calls return its
/// result.
pub fn ensure_guest() -> Result<GuestImage, String> {
    static BUILT: OnceLock<Result<GuestImage, String>> = OnceLock::new();
    BUILT.get_or_init(build_guest).clone()
}

fn build_guest() -> Result<GuestImage, String> {
    let build = guest_dir().join("build-guest.sh");
    let out = Command::new("bash")
        .arg(&build)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", build.display()))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}):\n{}",
            build.display(),
            out.status,
            tail_lines(&log, 40)
        ));
    }
    let cache_dir = cache_dir();
    let image = GuestImage {
        kernel: cache_dir.join("vmlinuz"),
        initramfs: cache_dir.join("initramfs.cpio"),
        kernel_release: std::fs::read_to_string(cache_dir.join("kver"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        cache_dir,
    };
    for f in [&image.kernel, &image.initramfs] {
        if !f.is_file() {
            return Err(format!(
                "{} succeeded but {} is missing:\n{}",
                build.display(),
                f.display(),
                tail_lines(&log, 40)
            ));
        }
    }
    Ok(image)
}

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KEEL_GUEST_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/keel-guest")
}

/// Boot the guest with default [`GuestOptions`], run `script` in it with
/// `env` exported, and return its status and console. `timeout` bounds the
/// whole run, boot included (allow about 10 s for boot and power-off).
/// Call [`ensure_guest`] first.
pub fn run_script(script: &Path, env: &[(&str, &str)], timeout: Duration) -> GuestRun {
    run_script_with(script, env, timeout, &GuestOptions::default())
}

/// [`run_script`] with explicit [`GuestOptions`].
pub fn run_script_with(
    script: &Path,
    env: &[(&str, &str)],
    timeout: Duration,
    opts: &GuestOptions,
) -> GuestRun {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let start = Instant::now();
    let secs = timeout.as_secs().max(1) + u64::from(timeout.subsec_nanos() > 0);
    let mut cmd = Command::new("bash");
    cmd.arg(guest_dir().join("run-guest.sh"))
        .arg("-t")
        .arg(secs.to_string())
        .arg("-m")
        .arg(opts.mem_mb.to_string())
        .arg("-c")
        .arg(opts.cpus.to_string());
    for (k, v) in env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    for f in &opts.host_forwards {
        cmd.arg("-f").arg(f);
    }
    cmd.arg(script).args(&opts.files);
    // Its own process group, so the watchdog can stop qemu with it.
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return GuestRun {
                status: None,
                console: format!("cannot start run-guest.sh: {e}"),
                timed_out: false,
                elapsed: start.elapsed(),
            }
        }
    };
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let (code, killed) = wait_with_deadline(&mut child, start + timeout + WATCHDOG_SLACK);
    let mut console = stdout.join().unwrap_or_default();
    let harness = stderr.join().unwrap_or_default();
    if !console.ends_with('\n') && !console.is_empty() {
        console.push('\n');
    }
    console.push_str(&harness);
    if killed {
        console.push_str("guest.rs: run-guest.sh overran its time limit; killed it\n");
    }
    let timed_out = killed || code == Some(EXIT_TIMEOUT);
    GuestRun {
        status: if timed_out {
            None
        } else {
            guest_exit_status(&console)
        },
        console,
        timed_out,
        elapsed: start.elapsed(),
    }
}

/// Read a child's pipe to the end on a thread.
fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Wait for `child`; past `deadline`, kill its process group. Returns the
/// exit code (None if killed by a signal) and whether the watchdog fired.
fn wait_with_deadline(child: &mut Child, deadline: Instant) -> (Option<i32>, bool) {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (status.code(), false),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
            _ => {
                let group = format!("-{}", child.id());
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &group])
                    .stderr(Stdio::null())
                    .status();
                let _ = child.kill();
                let status = child.wait().ok().and_then(|s| s.code());
                return (status, true);
            }
        }
    }
}

/// The status the guest's init reported (`GUEST_EXIT=N`, the last one).
fn guest_exit_status(console: &str) -> Option<i32> {
    console
        .lines()
        .filter_map(|l| l.split("GUEST_EXIT=").nth(1))
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .next_back()
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_is_the_last_marker() {
        let console = "boot\nGUEST_EXIT=3 uptime=1.0\nmore\nGUEST_EXIT=0 uptime=2.5\n";
        assert_eq!(guest_exit_status(console), Some(0));
        assert_eq!(
            guest_exit_status("x GUEST_EXIT=17 uptime=1\n[ 1.0] reboot"),
            Some(17)
        );
        assert_eq!(guest_exit_status("kernel panic\n"), None);
    }

    #[test]
    fn steps_and_failures() {
        let run = GuestRun {
            status: Some(1),
            console: "STEP 1 a\n  x\nSTEP 2 b\nFAIL b: broke\nGUEST_EXIT=1\n".into(),
            timed_out: false,
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(run.steps(), ["STEP 1 a", "STEP 2 b"]);
        assert_eq!(run.failures(), ["FAIL b: broke"]);
        assert!(!run.passed());
        assert!(run.summary().contains("script exited 1"));
    }

    #[test]
    fn the_harness_is_where_the_api_looks() {
        for f in ["build-guest.sh", "run-guest.sh", "scripts/guest-lib.sh"] {
            assert!(guest_dir().join(f).is_file(), "{f}");
        }
        assert!(script("iscsi-fs.sh").is_file());
        assert!(script("nvme-fs.sh").is_file());
    }

    /// Boots the guest (builds it first, installing packages if needed):
    /// `cargo test -p keel-tests --lib -- --ignored guest`.
    #[test]
    #[ignore = "boots a qemu guest (about 10 s) and may install packages"]
    fn guest_runs_a_script_and_reports_its_status() {
        ensure_guest().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path().join("t.sh");
        std::fs::write(
            &s,
            ". /usr/share/keel/guest-lib.sh\nrun \"say $WORD\" echo \"$WORD\"\nexit 7\n",
        )
        .unwrap();
        let run = run_script(&s, &[("WORD", "it's fine")], Duration::from_secs(120));
        assert_eq!(run.status, Some(7), "{}", run.summary());
        assert!(run.console.contains("it's fine"), "{}", run.summary());
        assert!(
            run.steps()[0].starts_with("STEP 1 say it's fine"),
            "{}",
            run.summary()
        );
        assert!(run.failures()[0].contains("exited 7"), "{}", run.summary());
    }

    #[test]
    #[ignore = "boots a qemu guest that overruns its time limit (about 15 s)"]
    fn guest_run_times_out() {
        ensure_guest().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path().join("t.sh");
        std::fs::write(&s, "echo sleeping; sleep 600\n").unwrap();
        let run = run_script(&s, &[], Duration::from_secs(15));
        assert!(run.timed_out, "{}", run.summary());
        assert_eq!(run.status, None);
        assert!(run.elapsed < Duration::from_secs(40), "{:?}", run.elapsed);
    }

    /// The iSCSI script against tgtd, a known-good userspace target (needs
    /// the `tgt` package; uses 127.0.0.1:3271).
    #[test]
    #[ignore = "starts tgtd and boots a qemu guest (about 15 s)"]
    fn iscsi_fs_passes_against_tgtd() {
        ensure_guest().unwrap();
        let tgtd = guest_dir().join("tgtd.sh");
        let up = Command::new("bash")
            .args([tgtd.to_str().unwrap(), "start", "3271", "512M"])
            .status()
            .unwrap();
        assert!(up.success(), "tgtd.sh start failed");
        let run = run_script(
            &script("iscsi-fs.sh"),
            &[
                ("TGT_PORT", "3271"),
                ("TGT_IQN", "iqn.2024-01.io.keel.test:tgt"),
            ],
            Duration::from_secs(300),
        );
        let down = Command::new("bash")
            .args([tgtd.to_str().unwrap(), "stop", "3271"])
            .status()
            .unwrap();
        assert!(run.passed(), "{}", run.summary());
        assert!(run.console.contains("PASS iscsi-fs"), "{}", run.summary());
        assert!(down.success(), "tgtd.sh stop failed");
    }
}
