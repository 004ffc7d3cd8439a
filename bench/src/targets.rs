//! `keel-bench targets`: keel NVMe/TCP, keel iSCSI and tgt (iSCSI) side by
//! side in one run, on 127.0.0.1, each backed by 1 GiB on the same file
//! system.
//!
//! Clients: keel's own NVMe/TCP host (`nvmf_client`) for NVMe/TCP, and fio
//! through `qemu-storage-daemon` (QEMU's iSCSI driver re-exported over NBD;
//! Debian's fio has no libiscsi engine) for both iSCSI targets, so keel and
//! tgt see exactly the same iSCSI initiator. Per target: 4 KiB random read
//! and write at QD1 and QD32, 128 KiB sequential read and write at QD8;
//! IOPS, p50/p99 latency, and the target process's CPU time per I/O (utime
//! + stime from /proc/PID/stat).
//!
//! The two clients differ (our host is a thin blocking loop; fio via qsd
//! adds the NBD hop), so NVMe/TCP vs iSCSI ratios include the client; keel
//! iSCSI vs tgt is client-for-client.

// Statistics: sample counts and latencies are far from the limits of the
// integer types they are converted between.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::nvmf_client::Queue;

/// One measurement.
#[derive(Debug, Clone, Default)]
pub struct Measure {
    /// Operations per second.
    pub iops: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Target CPU seconds per I/O, µs.
    pub cpu_us_per_io: f64,
    /// Slowest I/O, µs (0 where the client does not report it).
    pub max_us: f64,
}

/// The workloads, in order.
pub const WORKLOADS: [(&str, bool, usize, usize); 6] = [
    ("4k-randread-qd1", false, 4096, 1),
    ("4k-randread-qd32", false, 4096, 32),
    ("4k-randwrite-qd1", true, 4096, 1),
    ("4k-randwrite-qd32", true, 4096, 32),
    ("128k-seqread-qd8", false, 128 << 10, 8),
    ("128k-seqwrite-qd8", true, 128 << 10, 8),
];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn wait_port(port: u16, what: &str) -> Result<()> {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(20) {
            bail!("{what} did not listen on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// utime + stime of a process, seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces).
    let rest = s.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based) of stat: 11 and 12
    // after the state field here.
    let hz = 100.0;
    (ticks(11) + ticks(12)) / hz
}

/// A process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running keel-volume.
pub struct Keel {
    proc: Proc,
    /// iSCSI portal.
    pub iscsi: SocketAddr,
    /// NVMe/TCP portal.
    pub nvmf: SocketAddr,
}

impl Keel {
    /// Start `bin` with a 1 GiB volume in `dir`.
    pub fn start(bin: &Path, dir: &Path, poll_mode: &str) -> Result<Keel> {
        Keel::start_with(bin, dir, poll_mode, &[])
    }

    /// [`Keel::start`] with more `keel-volume` arguments.
    pub fn start_with(bin: &Path, dir: &Path, poll_mode: &str, extra: &[&str]) -> Result<Keel> {
        let (ip, np) = (free_port(), free_port());
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(dir)
            .args([
                "--volume",
                "vol0:1GiB",
                "--admin-listen",
                "",
                "--poll-mode",
                poll_mode,
            ])
            .arg("--iscsi-listen")
            .arg(format!("127.0.0.1:{ip}"))
            .arg("--nvmf-listen")
            .arg(format!("127.0.0.1:{np}"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let k = Keel {
            proc: Proc(child),
            iscsi: format!("127.0.0.1:{ip}").parse()?,
            nvmf: format!("127.0.0.1:{np}").parse()?,
        };
        wait_port(ip, "keel-volume")?;
        wait_port(np, "keel-volume")?;
        Ok(k)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

/// A private tgtd with one 1 GiB LUN (LUN 1) on a sparse file.
pub struct Tgt {
    proc: Proc,
    ctl: u16,
    /// Portal.
    pub port: u16,
}

/// tgt's IQN.
pub const TGT_IQN: &str = "iqn.2026-11.io.keel.bench:tgt";

impl Tgt {
    /// Start tgtd in `dir`.
    pub fn start(dir: &Path) -> Result<Tgt> {
        let port = free_port();
        // tgtd's control index (the management socket's number) must be
        // small; the process id keeps concurrent runs apart.
        let ctl = u16::try_from(std::process::id() % 4000 + 100).unwrap_or(100);
        let img = dir.join("tgt-lun1.img");
        std::fs::File::create(&img)?.set_len(1 << 30)?;
        let child = Command::new("tgtd")
            .args([
                "-f",
                "-C",
                &ctl.to_string(),
                "--iscsi",
                &format!("portal=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start tgtd (apt-get install tgt)")?;
        let t = Tgt {
            proc: Proc(child),
            ctl,
            port,
        };
        let adm = |args: &[&str]| -> Result<()> {
            let st = Command::new("tgtadm")
                .args(["-C", &ctl.to_string(), "--lld", "iscsi"])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if !st.success() {
                bail!("tgtadm {args:?} failed");
            }
            Ok(())
        };
        let t0 = Instant::now();
        while adm(&["--mode", "target", "--op", "show"]).is_err() {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("tgtd did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        adm(&[
            "--mode",
            "target",
            "--op",
            "new",
            "--tid",
            "1",
            "--targetname",
            TGT_IQN,
        ])?;
        adm(&[
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            "1",
            "--lun",
            "1",
            "--backing-store",
            img.to_str().unwrap_or_default(),
        ])?;
        adm(&[
            "--mode",
            "target",
            "--op",
            "bind",
            "--tid",
            "1",
            "--initiator-address",
            "ALL",
        ])?;
        wait_port(port, "tgtd")?;
        Ok(t)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        // tgtd ignores SIGTERM while it has targets; delete them first.
        let _ = Command::new("tgtadm")
            .args([
                "-C",
                &self.ctl.to_string(),
                "--lld",
                "iscsi",
                "--mode",
                "target",
                "--op",
                "delete",
                "--force",
                "--tid",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// fio through qemu-storage-daemon (iSCSI → NBD).
pub fn fio_iscsi(
    portal: SocketAddr,
    iqn: &str,
    lun: u32,
    pid: u32,
    seconds: f64,
) -> Result<Vec<Measure>> {
    let nbd = free_port();
    let qsd = Proc(
        Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=iscsi,node-name=lun,transport=tcp,portal={portal},target={iqn},lun={lun},cache.direct=on"
            ))
            .arg("--nbd-server")
            .arg(format!("addr.type=inet,addr.host=127.0.0.1,addr.port={nbd}"))
            .arg("--export")
            .arg("type=nbd,id=e,node-name=lun,name=lun,writable=on")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start qemu-storage-daemon (apt-get install qemu-system-common/bookworm qemu-block-extra/bookworm)")?,
    );
    wait_port(nbd, "qemu-storage-daemon")?;
    let uri = format!("nbd://127.0.0.1:{nbd}/lun");
    // Precondition: the 256 MiB the reads use is written once.
    let st = Command::new("fio")
        .args([
            "--name=fill",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=write",
            "--bs=1m",
            "--size=256m",
            "--iodepth=8",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run fio (apt-get install fio)")?;
    if !st.success() {
        bail!("fio preconditioning failed");
    }
    let mut out = Vec::new();
    for (name, write, bs, qd) in WORKLOADS {
        let rw = match (write, bs == 4096) {
            (false, true) => "randread",
            (true, true) => "randwrite",
            (false, false) => "read",
            (true, false) => "write",
        };
        let cpu0 = cpu_seconds(pid);
        let o = Command::new("fio")
            .args([
                &format!("--name={name}"),
                "--ioengine=nbd",
                &format!("--uri={uri}"),
                &format!("--rw={rw}"),
                &format!("--bs={bs}"),
                &format!("--iodepth={qd}"),
                "--size=256m",
                "--time_based",
                &format!("--runtime={seconds}s"),
                "--output-format=json",
            ])
            .output()?;
        let cpu = cpu_seconds(pid) - cpu0;
        // fio may print notes before the JSON object.
        let start = o.stdout.iter().position(|&b| b == b'{').unwrap_or(0);
        let v: Value = serde_json::from_slice(&o.stdout[start..])
            .with_context(|| format!("fio output: {}", String::from_utf8_lossy(&o.stderr)))?;
        let j = &v["jobs"][0][if write { "write" } else { "read" }];
        let iops = j["iops"].as_f64().unwrap_or(0.0);
        let ios = j["total_ios"].as_f64().unwrap_or(0.0).max(1.0);
        let pct = |p: &str| j["clat_ns"]["percentile"][p].as_f64().unwrap_or(0.0) / 1000.0;
        out.push(Measure {
            iops,
            p50_us: pct("50.000000"),
            p99_us: pct("99.000000"),
            cpu_us_per_io: cpu / ios * 1e6,
            max_us: j["clat_ns"]["max"].as_f64().unwrap_or(0.0) / 1000.0,
        });
    }
    drop(qsd);
    Ok(out)
}

/// libiscsi's `iscsi-perf` (random 4 KiB reads; libiscsi's own async
/// initiator, the same for both targets): IOPS and target CPU per I/O.
pub fn iscsi_perf(
    url: &str,
    blocks_per_io: u32,
    qd: usize,
    pid: u32,
    seconds: f64,
) -> Result<Measure> {
    let cpu0 = cpu_seconds(pid);
    let t = seconds.ceil().max(2.0);
    let o = Command::new("timeout")
        .args([
            &format!("{}", t + 5.0),
            "iscsi-perf",
            "-m",
            &qd.to_string(),
            "-b",
            &blocks_per_io.to_string(),
            "-r",
            "-t",
            &format!("{t}"),
            url,
        ])
        .output()
        .context("cannot run iscsi-perf (apt-get install libiscsi-bin)")?;
    let cpu = cpu_seconds(pid) - cpu0;
    let text = String::from_utf8_lossy(&o.stdout);
    let iops: f64 = text
        .rsplit("iops average ")
        .next()
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no result from iscsi-perf: {text}"))?;
    Ok(Measure {
        iops,
        p50_us: 0.0,
        p99_us: 0.0,
        cpu_us_per_io: cpu / (iops * t).max(1.0) * 1e6,
        ..Measure::default()
    })
}

/// `qemu-img bench` (QEMU's iSCSI driver, no NBD hop): 4 KiB sequential
/// requests at `qd` for about `seconds`; IOPS and target CPU per I/O.
pub fn qemu_img_bench(
    url: &str,
    write: bool,
    qd: usize,
    pid: u32,
    seconds: f64,
) -> Result<Measure> {
    // Size the count for roughly `seconds` at 20K IOPS; IOPS come from the
    // time it took.
    let count = ((seconds * 20_000.0) as u64).max(1000);
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut cmd = Command::new("qemu-img");
    cmd.args([
        "bench",
        "-f",
        "raw",
        "-t",
        "none",
        "-n",
        "-c",
        &count.to_string(),
        "-d",
        &qd.to_string(),
        "-s",
        "4k",
        "-S",
        "4k",
    ]);
    if write {
        cmd.arg("-w");
    }
    let o = cmd
        .arg(url)
        .output()
        .context("cannot run qemu-img (apt-get install qemu-utils qemu-block-extra)")?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    if !o.status.success() {
        bail!(
            "qemu-img bench failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(Measure {
        iops: count as f64 / secs,
        p50_us: 0.0,
        p99_us: 0.0,
        cpu_us_per_io: cpu / count as f64 * 1e6,
        max_us: 0.0,
    })
}

/// The `p` quantile of nanosecond samples, in µs (sorts `v`).
pub(crate) fn percentile(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

/// An NVMe/TCP association with keel's `vol0` for load: the admin queue
/// (kept open: dropping it ends the association) and one corked I/O queue,
/// with the first 256 MiB written once.
pub fn nvmf_session(k: &Keel) -> Result<(Queue, Queue)> {
    nvmf_session_at(k.nvmf, "nqn.2026-11.io.keel:vol0")
}

/// [`nvmf_session`] with subsystem `sub` at `addr`.
pub fn nvmf_session_at(addr: SocketAddr, sub: &str) -> Result<(Queue, Queue)> {
    let (admin, mut qs) = nvmf_session_queues(addr, sub, 1)?;
    Ok((admin, qs.remove(0)))
}

/// [`nvmf_session_at`] with `n` I/O queues (one TCP connection each, as the
/// Linux host opens one per CPU).
pub fn nvmf_session_queues(addr: SocketAddr, sub: &str, n: usize) -> Result<(Queue, Vec<Queue>)> {
    let host = "nqn.2026-11.io.keel.bench:host";
    let (admin, cntlid) = Queue::admin(addr, sub, host, 0, false)?;
    let mut qs = Vec::new();
    for qid in 1..=n.max(1) {
        qs.push(Queue::io(
            addr,
            cntlid,
            u16::try_from(qid)?,
            sub,
            host,
            false,
        )?);
    }
    // Precondition the 256 MiB region.
    let chunk = vec![0x5au8; 1 << 20];
    for i in 0..256u64 {
        qs[0].write(i * 256, &chunk, 4096, false)?;
    }
    for q in &mut qs {
        q.set_cork(true)?;
    }
    Ok((admin, qs))
}

/// One workload on an I/O queue of [`nvmf_session`]: random 4 KiB (or
/// sequential larger) I/O at `qd` for `seconds`; CPU per I/O of `pid`.
pub fn nvmf_measure(
    q: &mut Queue,
    pid: u32,
    write: bool,
    size: usize,
    qd: usize,
    seconds: f64,
) -> Result<Measure> {
    nvmf_measure_queues(
        std::slice::from_mut(q),
        pid,
        write,
        false,
        size,
        qd,
        seconds,
    )
}

/// [`nvmf_measure`] over several I/O queues, one thread each (as the Linux
/// host submits from every CPU), `qd` commands in flight in all (spread
/// evenly); sequential I/O runs one stream per queue. `fua`: writes with
/// Force Unit Access (durable at completion).
#[allow(clippy::too_many_arguments)]
pub fn nvmf_measure_queues(
    qs: &mut [Queue],
    pid: u32,
    write: bool,
    fua: bool,
    size: usize,
    qd: usize,
    seconds: f64,
) -> Result<Measure> {
    let n = qs.len().max(1);
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(seconds);
    let results: Vec<Result<(u64, Vec<u64>)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = qs
            .iter_mut()
            .enumerate()
            .map(|(i, q)| {
                let depth = qd / n + usize::from(i < qd % n);
                sc.spawn(move || queue_load(q, write, fua, size, depth, end, i, n))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("load thread panicked")))
            })
            .collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let mut ios = 0u64;
    let mut lat = Vec::new();
    for r in results {
        let (n, l) = r?;
        ios += n;
        lat.extend(l);
    }
    let max_us = lat.iter().max().map_or(0.0, |&m| m as f64 / 1000.0);
    Ok(Measure {
        iops: ios as f64 / secs,
        p50_us: percentile(&mut lat, 0.5),
        p99_us: percentile(&mut lat, 0.99),
        cpu_us_per_io: cpu / (ios.max(1) as f64) * 1e6,
        max_us,
    })
}

/// The load of one queue until `end`: I/Os done and their latencies (ns).
#[allow(clippy::too_many_arguments)]
fn queue_load(
    q: &mut Queue,
    write: bool,
    fua: bool,
    size: usize,
    qd: usize,
    end: Instant,
    index: usize,
    queues: usize,
) -> Result<(u64, Vec<u64>)> {
    use rand::Rng;
    let bs = 4096u64;
    let region = (256u64 << 20) / bs;
    let mut rng = rand::rngs::ThreadRng::default();
    let blocks = (size as u64 / bs) as u32;
    let data = vec![0xa5u8; size];
    let mut lat = Vec::new();
    let mut inflight = std::collections::HashMap::new();
    let span = region - u64::from(blocks);
    let mut seq = span / queues as u64 * index as u64;
    let mut ios = 0u64;
    let mut next_lba = |rng: &mut rand::rngs::ThreadRng| {
        if size == 4096 {
            rng.gen_range(0..region)
        } else {
            seq = (seq + u64::from(blocks)) % span;
            seq
        }
    };
    let submit = |q: &mut Queue, lba: u64| -> Result<u16> {
        let mut s = Queue::rw_sqe(write, lba, blocks, fua);
        if write {
            Ok(q.submit(s, &data)?)
        } else {
            s[32..36].copy_from_slice(&u32::try_from(size)?.to_le_bytes());
            s[39] = 0x5a;
            Ok(q.submit(s, &[])?)
        }
    };
    for _ in 0..qd {
        let lba = next_lba(&mut rng);
        inflight.insert(submit(q, lba)?, Instant::now());
    }
    while !inflight.is_empty() {
        let (c, _) = q.reap()?;
        if let Some(t) = inflight.remove(&c.cid) {
            lat.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
            ios += 1;
        }
        if Instant::now() < end {
            let lba = next_lba(&mut rng);
            inflight.insert(submit(q, lba)?, Instant::now());
        }
    }
    Ok((ios, lat))
}

/// keel's NVMe/TCP host at each workload.
pub fn nvmf_keel(k: &Keel, seconds: f64) -> Result<Vec<Measure>> {
    let (_admin, mut q) = nvmf_session(k)?;
    let mut out = Vec::new();
    for (_name, write, size, qd) in WORKLOADS {
        out.push(nvmf_measure(&mut q, k.pid(), write, size, qd, seconds)?);
    }
    Ok(out)
}

/// The workloads of the pipelined iSCSI initiator ([`crate::iscsi_load`]).
pub const OWN_ISCSI: [(&str, bool, usize); 4] = [
    ("4k-randread-qd1", false, 1),
    ("4k-randread-qd32", false, 32),
    ("4k-randwrite-qd1", true, 1),
    ("4k-randwrite-qd32", true, 32),
];

/// The bench's pipelined iSCSI initiator at each of [`OWN_ISCSI`], over the
/// first 256 MiB of the LUN.
pub fn own_iscsi(
    addr: SocketAddr,
    iqn: &str,
    lun: u64,
    block_size: u32,
    pid: u32,
    seconds: f64,
) -> Result<Vec<Measure>> {
    OWN_ISCSI
        .iter()
        .map(|&(_, write, qd)| own_iscsi_one(addr, iqn, lun, block_size, pid, write, qd, seconds))
        .collect()
}

/// One 4 KiB random workload of the pipelined iSCSI initiator over the
/// first 256 MiB of the LUN.
#[allow(clippy::too_many_arguments)]
pub fn own_iscsi_one(
    addr: SocketAddr,
    iqn: &str,
    lun: u64,
    block_size: u32,
    pid: u32,
    write: bool,
    qd: usize,
    seconds: f64,
) -> Result<Measure> {
    let t = crate::iscsi_load::Lun {
        addr,
        target: iqn,
        lun,
        block_size,
        pid,
    };
    let w = crate::iscsi_load::Workload {
        write,
        size: 4096,
        qd,
    };
    crate::iscsi_load::run(&t, 256 << 20, w, seconds)
}

/// Find `keel-volume` next to this executable.
pub fn keel_volume_bin() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name("keel-volume");
    if !p.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p keel-volume -p keel-bench)",
            p.display()
        );
    }
    Ok(p)
}

/// Run everything; JSON with every measurement and the ratios.
pub fn run(dir: &Path, seconds: f64, poll_mode: &str, socket_io: &str) -> Result<Value> {
    let bin = keel_volume_bin()?;
    let kdir = dir.join("keel");
    std::fs::create_dir_all(&kdir)?;
    let k = Keel::start_with(&bin, &kdir, poll_mode, &["--socket-io", socket_io])?;
    eprintln!("keel-bench targets: keel NVMe/TCP (own host)...");
    let nvme = nvmf_keel(&k, seconds)?;
    // The Linux host opens one I/O queue per CPU: 4 KiB reads at QD32 that
    // way too (one connection and one thread per queue).
    let queues = std::thread::available_parallelism().map_or(1, |n| n.get());
    let nvme_mq = {
        let (_admin, mut qs) = nvmf_session_queues(k.nvmf, "nqn.2026-11.io.keel:vol0", queues)?;
        nvmf_measure_queues(&mut qs, k.pid(), false, false, 4096, 32, seconds)?
    };
    eprintln!("keel-bench targets: keel iSCSI (fio via qemu-storage-daemon, iscsi-perf)...");
    let kiscsi = fio_iscsi(k.iscsi, "iqn.2026-11.io.keel:vol0", 0, k.pid(), seconds)?;
    let kurl = format!("iscsi://{}/iqn.2026-11.io.keel:vol0/0", k.iscsi);
    // keel volumes have 4 KiB blocks, tgt's LUN 512-byte ones: 4 KiB each.
    let kperf = [
        iscsi_perf(&kurl, 1, 1, k.pid(), seconds)?,
        iscsi_perf(&kurl, 1, 32, k.pid(), seconds)?,
    ];
    let kqemu = [
        qemu_img_bench(&kurl, false, 32, k.pid(), seconds)?,
        qemu_img_bench(&kurl, true, 32, k.pid(), seconds)?,
    ];
    eprintln!("keel-bench targets: keel iSCSI (pipelined initiator)...");
    let kown = own_iscsi(
        k.iscsi,
        "iqn.2026-11.io.keel:vol0",
        0,
        4096,
        k.pid(),
        seconds,
    )?;
    drop(k);
    eprintln!("keel-bench targets: tgt iSCSI (fio via qemu-storage-daemon, iscsi-perf)...");
    let tgt = Tgt::start(dir)?;
    let tiscsi = fio_iscsi(
        format!("127.0.0.1:{}", tgt.port).parse()?,
        TGT_IQN,
        1,
        tgt.pid(),
        seconds,
    )?;
    let turl = format!("iscsi://127.0.0.1:{}/{TGT_IQN}/1", tgt.port);
    let tperf = [
        iscsi_perf(&turl, 8, 1, tgt.pid(), seconds)?,
        iscsi_perf(&turl, 8, 32, tgt.pid(), seconds)?,
    ];
    let tqemu = [
        qemu_img_bench(&turl, false, 32, tgt.pid(), seconds)?,
        qemu_img_bench(&turl, true, 32, tgt.pid(), seconds)?,
    ];
    eprintln!("keel-bench targets: tgt iSCSI (pipelined initiator)...");
    let town = own_iscsi(
        format!("127.0.0.1:{}", tgt.port).parse()?,
        TGT_IQN,
        1 << 48,
        512,
        tgt.pid(),
        seconds,
    )?;
    drop(tgt);
    let row = |m: &Measure| json!({"iops": m.iops, "p50_us": m.p50_us, "p99_us": m.p99_us, "cpu_us_per_io": m.cpu_us_per_io});
    let mut rows = Vec::new();
    for (i, (name, ..)) in WORKLOADS.iter().enumerate() {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        rows.push(json!({
            "workload": name,
            "keel_nvmf": row(&nvme[i]),
            "keel_iscsi": row(&kiscsi[i]),
            "tgt_iscsi": row(&tiscsi[i]),
            "keel_iscsi_over_tgt_iops": ratio(kiscsi[i].iops, tiscsi[i].iops),
            "keel_nvmf_over_keel_iscsi_iops": ratio(nvme[i].iops, kiscsi[i].iops),
            "keel_nvmf_over_tgt_iops": ratio(nvme[i].iops, tiscsi[i].iops),
            "keel_iscsi_over_tgt_cpu_per_io": ratio(kiscsi[i].cpu_us_per_io, tiscsi[i].cpu_us_per_io),
        }));
    }
    let perf: Vec<Value> = ["4k-randread-qd1", "4k-randread-qd32"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            json!({
                "workload": name,
                "client": "iscsi-perf",
                "keel_iscsi": row(&kperf[i]),
                "tgt_iscsi": row(&tperf[i]),
                "keel_iscsi_over_tgt_iops": kperf[i].iops / tperf[i].iops.max(1.0),
                "keel_iscsi_over_tgt_cpu_per_io": kperf[i].cpu_us_per_io / tperf[i].cpu_us_per_io.max(1e-9),
                "keel_nvmf_over_keel_iscsi_iops": nvme[if i == 0 { 0 } else { 1 }].iops / kperf[i].iops.max(1.0),
            })
        })
        .collect();
    let qemu: Vec<Value> = ["4k-seqread-qd32", "4k-seqwrite-qd32"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            json!({
                "workload": name,
                "client": "qemu-img bench",
                "keel_iscsi": row(&kqemu[i]),
                "tgt_iscsi": row(&tqemu[i]),
                "keel_iscsi_over_tgt_iops": kqemu[i].iops / tqemu[i].iops.max(1.0),
                "keel_iscsi_over_tgt_cpu_per_io": kqemu[i].cpu_us_per_io / tqemu[i].cpu_us_per_io.max(1e-9),
            })
        })
        .collect();
    let own: Vec<Value> = OWN_ISCSI
        .iter()
        .enumerate()
        .map(|(i, (name, ..))| {
            json!({
                "workload": name,
                "client": "keel-bench pipelined iSCSI initiator",
                "keel_iscsi": row(&kown[i]),
                "tgt_iscsi": row(&town[i]),
                "keel_iscsi_over_tgt_iops": kown[i].iops / town[i].iops.max(1.0),
                "keel_iscsi_over_tgt_cpu_per_io": kown[i].cpu_us_per_io / town[i].cpu_us_per_io.max(1e-9),
            })
        })
        .collect();
    let mq = json!({"workload": "4k-randread-qd32", "queues": queues, "keel_nvmf": row(&nvme_mq)});
    Ok(
        json!({ "seconds": seconds, "poll_mode": poll_mode, "socket_io": socket_io, "rows": rows, "iscsi_perf": perf, "qemu_img_bench": qemu, "iscsi_own": own, "nvmf_queues": mq }),
    )
}

/// The I/O queue count of a report (a median of runs: it may come back as
/// a float).
pub fn queue_count(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_f64().map(|f| f.round().max(0.0) as u64))
        .unwrap_or(0)
}

/// Per-leaf medians of several runs of [`run`] (same shape): every number
/// becomes the median of that number across runs.
pub fn median_of(runs: &[Value]) -> Value {
    fn merge(vals: &[&Value]) -> Value {
        match vals.first() {
            Some(Value::Object(m)) => {
                let mut out = serde_json::Map::new();
                for k in m.keys() {
                    let sub: Vec<&Value> = vals.iter().filter_map(|v| v.get(k)).collect();
                    out.insert(k.clone(), merge(&sub));
                }
                Value::Object(out)
            }
            Some(Value::Array(a)) => Value::Array(
                (0..a.len())
                    .map(|i| merge(&vals.iter().filter_map(|v| v.get(i)).collect::<Vec<_>>()))
                    .collect(),
            ),
            Some(Value::Number(_)) => {
                let mut n: Vec<f64> = vals.iter().filter_map(|v| v.as_f64()).collect();
                n.sort_by(f64::total_cmp);
                json!(n.get(n.len() / 2).copied().unwrap_or(0.0))
            }
            Some(v) => (*v).clone(),
            None => Value::Null,
        }
    }
    let refs: Vec<&Value> = runs.iter().collect();
    let mut m = merge(&refs);
    m["runs"] = json!(runs.len());
    m
}

/// Render the JSON of [`run`] as a table with the goals.
pub fn table(v: &Value) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<18} {:>22} {:>22} {:>22} {:>9} {:>9} {:>9}\n",
        "workload", "keel NVMe/TCP", "keel iSCSI", "tgt iSCSI", "kI/tgt", "kN/kI", "kN/tgt"
    ));
    s.push_str(&format!(
        "{:<18} {:>22} {:>22} {:>22}\n",
        "", "IOPS p50/p99 µs cpu/io", "IOPS p50/p99 µs cpu/io", "IOPS p50/p99 µs cpu/io"
    ));
    let cell = |m: &Value| {
        format!(
            "{:>6.0} {:>4.0}/{:<5.0} {:>4.1}",
            m["iops"].as_f64().unwrap_or(0.0),
            m["p50_us"].as_f64().unwrap_or(0.0),
            m["p99_us"].as_f64().unwrap_or(0.0),
            m["cpu_us_per_io"].as_f64().unwrap_or(0.0)
        )
    };
    let empty = Vec::new();
    for r in v["rows"].as_array().unwrap_or(&empty) {
        s.push_str(&format!(
            "{:<18} {:>22} {:>22} {:>22} {:>8.2}x {:>8.2}x {:>8.2}x\n",
            r["workload"].as_str().unwrap_or(""),
            cell(&r["keel_nvmf"]),
            cell(&r["keel_iscsi"]),
            cell(&r["tgt_iscsi"]),
            r["keel_iscsi_over_tgt_iops"].as_f64().unwrap_or(0.0),
            r["keel_nvmf_over_keel_iscsi_iops"].as_f64().unwrap_or(0.0),
            r["keel_nvmf_over_tgt_iops"].as_f64().unwrap_or(0.0),
        ));
    }
    s.push_str("\nlibiscsi iscsi-perf (4 KiB random reads, the same async initiator for both):\n");
    for r in v["iscsi_perf"].as_array().unwrap_or(&empty) {
        s.push_str(&format!(
            "{:<18} keel {:>7.0} IOPS {:>5.1} µs cpu/io   tgt {:>7.0} IOPS {:>5.1} µs cpu/io   keel/tgt {:.2}x IOPS, {:.2}x CPU/io; NVMe/TCP (own host) / keel iSCSI {:.2}x\n",
            r["workload"].as_str().unwrap_or(""),
            r["keel_iscsi"]["iops"].as_f64().unwrap_or(0.0),
            r["keel_iscsi"]["cpu_us_per_io"].as_f64().unwrap_or(0.0),
            r["tgt_iscsi"]["iops"].as_f64().unwrap_or(0.0),
            r["tgt_iscsi"]["cpu_us_per_io"].as_f64().unwrap_or(0.0),
            r["keel_iscsi_over_tgt_iops"].as_f64().unwrap_or(0.0),
            r["keel_iscsi_over_tgt_cpu_per_io"].as_f64().unwrap_or(0.0),
            r["keel_nvmf_over_keel_iscsi_iops"].as_f64().unwrap_or(0.0),
        ));
    }
    s.push_str("\nkeel-bench's pipelined iSCSI initiator (4 KiB random, immediate data, the same for both):\n");
    for r in v["iscsi_own"].as_array().unwrap_or(&empty) {
        s.push_str(&format!(
            "{:<18} keel {:>7.0} IOPS p50 {:>5.0} µs {:>5.1} µs cpu/io   tgt {:>7.0} IOPS p50 {:>5.0} µs {:>5.1} µs cpu/io   keel/tgt {:.2}x IOPS, {:.2}x CPU/io\n",
            r["workload"].as_str().unwrap_or(""),
            r["keel_iscsi"]["iops"].as_f64().unwrap_or(0.0),
            r["keel_iscsi"]["p50_us"].as_f64().unwrap_or(0.0),
            r["keel_iscsi"]["cpu_us_per_io"].as_f64().unwrap_or(0.0),
            r["tgt_iscsi"]["iops"].as_f64().unwrap_or(0.0),
            r["tgt_iscsi"]["p50_us"].as_f64().unwrap_or(0.0),
            r["tgt_iscsi"]["cpu_us_per_io"].as_f64().unwrap_or(0.0),
            r["keel_iscsi_over_tgt_iops"].as_f64().unwrap_or(0.0),
            r["keel_iscsi_over_tgt_cpu_per_io"].as_f64().unwrap_or(0.0),
        ));
    }
    let mq = &v["nvmf_queues"];
    if mq.is_object() {
        let own32 = v["iscsi_own"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["workload"] == "4k-randread-qd32"))
            .map_or(0.0, |r| r["keel_iscsi"]["iops"].as_f64().unwrap_or(0.0));
        let n = mq["keel_nvmf"]["iops"].as_f64().unwrap_or(0.0);
        s.push_str(&format!(
            "keel NVMe/TCP, {} I/O queues (one per CPU), 4k-randread-qd32: {}; / keel iSCSI (pipelined initiator) {:.2}x\n",
            queue_count(&mq["queues"]),
            cell(&mq["keel_nvmf"]),
            if own32 > 0.0 { n / own32 } else { 0.0 },
        ));
    }
    s.push_str("\nqemu-img bench (QEMU's iSCSI driver, 4 KiB sequential steps, QD32):\n");
    for r in v["qemu_img_bench"].as_array().unwrap_or(&empty) {
        s.push_str(&format!(
            "{:<18} keel {:>7.0} IOPS {:>5.1} µs cpu/io   tgt {:>7.0} IOPS {:>5.1} µs cpu/io   keel/tgt {:.2}x IOPS, {:.2}x CPU/io\n",
            r["workload"].as_str().unwrap_or(""),
            r["keel_iscsi"]["iops"].as_f64().unwrap_or(0.0),
            r["keel_iscsi"]["cpu_us_per_io"].as_f64().unwrap_or(0.0),
            r["tgt_iscsi"]["iops"].as_f64().unwrap_or(0.0),
            r["tgt_iscsi"]["cpu_us_per_io"].as_f64().unwrap_or(0.0),
            r["keel_iscsi_over_tgt_iops"].as_f64().unwrap_or(0.0),
            r["keel_iscsi_over_tgt_cpu_per_io"].as_f64().unwrap_or(0.0),
        ));
    }
    s
}

/// Read all of a child's output (for error messages).
pub fn drain(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_per_leaf() {
        let runs = [
            json!({"rows": [{"workload": "a", "x": {"iops": 10.0}}], "seconds": 3}),
            json!({"rows": [{"workload": "a", "x": {"iops": 30.0}}], "seconds": 3}),
            json!({"rows": [{"workload": "a", "x": {"iops": 20.0}}], "seconds": 3}),
        ];
        let m = median_of(&runs);
        assert_eq!(m["rows"][0]["x"]["iops"], 20.0);
        assert_eq!(m["rows"][0]["workload"], "a");
        assert_eq!(m["runs"], 3);
    }

    #[test]
    fn proc_stat_cpu_of_this_process() {
        let t0 = cpu_seconds(std::process::id());
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i * i));
        }
        assert!(x != 1);
        assert!(cpu_seconds(std::process::id()) > t0);
    }
}
