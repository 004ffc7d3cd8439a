//! `keel-bench`: keel's benchmarks.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use keel_bench::engine::{self, BackendResult, Opts, Row};
use keel_bench::{machine, report};
use keel_tools::size::{format_size, parse_size};

/// keel benchmarks: each runs keel and its reference side by side in one run.
#[derive(Parser, Debug)]
#[command(name = "keel-bench", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// keel NVMe/TCP, keel iSCSI and tgt iSCSI side by side on 127.0.0.1,
    /// 1 GiB each on the same file system.
    ///
    /// NVMe/TCP with keel's own host; both iSCSI targets with fio through
    /// qemu-storage-daemon (iSCSI to NBD). 4 KiB random read and write at
    /// QD1 and QD32, 128 KiB sequential at QD8: IOPS, p50/p99, target CPU
    /// per I/O, ratios. Needs `keel-volume` beside this binary (cargo build
    /// --release -p keel-volume -p keel-bench), tgt, fio and
    /// qemu-storage-daemon.
    Targets {
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Directory for the backing files (default: under ./target/bench-tmp).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// keel's reactor poll mode.
        #[arg(long, default_value = "adaptive")]
        poll_mode: String,
        /// keel's reactor socket I/O: epoll or io_uring.
        #[arg(long, default_value = "epoll")]
        socket_io: String,
        /// Runs of the whole set; the report shows per-metric medians.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// keel-volume on each reactor socket I/O backend (epoll, io_uring) side
    /// by side: the bench's NVMe/TCP host (4 KiB random read/write at QD1 and
    /// QD32, 128 KiB sequential at QD8) and iscsi-perf (4 KiB random read at
    /// QD1 and QD32); medians of the runs, io_uring/epoll ratios of IOPS and
    /// of target CPU per I/O. Needs keel-volume built with the sockets-uring
    /// feature (the default) beside this binary, and libiscsi-bin.
    Sockets {
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Directory for the backing files (default: under ./target/bench-tmp).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// keel's reactor poll mode.
        #[arg(long, default_value = "adaptive")]
        poll_mode: String,
        /// Runs; the report shows per-metric medians.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// The whole matrix in one command: engine, targets, socket I/O, a
    /// queue-depth sweep, QD1 in each poll mode, and fio (raw disk, plain file, the engine through
    /// the C ABI); medians of --runs runs; writes the generated part of
    /// docs/benchmarks.md (between its markers) and SVG plots. Needs what
    /// `targets` needs, and ffi/fio/keel_engine.so for the C ABI rows
    /// (make -C ffi/fio; without it those rows say so). About 25 minutes
    /// at the defaults on 2 vCPUs.
    Report {
        /// Runs of each part (medians).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
        /// Markdown file whose generated part is replaced.
        #[arg(long, default_value = "docs/benchmarks.md")]
        out: PathBuf,
        /// Directory for the SVG plots.
        #[arg(long, default_value = "docs/bench")]
        plots: PathBuf,
        /// Also write every result as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Scratch directory on the disk to measure.
        #[arg(long, default_value = "target/bench-tmp")]
        dir: PathBuf,
        /// The fio external engine on keel's C ABI.
        #[arg(long, default_value = "ffi/fio/keel_engine.so")]
        fio_engine: PathBuf,
        /// Parts to leave out (repeatable): engine, targets, sockets, sweep,
        /// pollmodes, fio.
        #[arg(long, value_name = "PART")]
        skip: Vec<String>,
        /// One run of 1 s per measurement (a smoke test of the command).
        #[arg(long)]
        quick: bool,
        /// Start from an earlier run's --json: the parts skipped now keep
        /// its results (rerun one part without the others).
        #[arg(long, value_name = "FILE")]
        reuse: Option<PathBuf>,
    },
    /// One workload of the bench's NVMe/TCP host against a running keel
    /// (the first 256 MiB are written first): IOPS, p50/p99 latency.
    NvmfLoad {
        /// Portal address.
        #[arg(long, default_value = "127.0.0.1:4420")]
        addr: std::net::SocketAddr,
        /// Subsystem NQN.
        #[arg(long, default_value = "nqn.2026-11.io.keel:vol0")]
        subsystem: String,
        /// Bytes per I/O (4096: random; larger: sequential).
        #[arg(long, default_value_t = 4096)]
        io_size: usize,
        /// Write (else read).
        #[arg(long)]
        write: bool,
        /// Commands in flight (in all queues).
        #[arg(long, default_value_t = 32)]
        qd: usize,
        /// Writes with Force Unit Access (durable at completion).
        #[arg(long)]
        fua: bool,
        /// I/O queues, one TCP connection and one thread each (the Linux
        /// host opens one per CPU).
        #[arg(long, default_value_t = 1)]
        queues: usize,
        /// Seconds.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Target process id (for CPU per I/O; 0: none).
        #[arg(long, default_value_t = 0)]
        pid: u32,
    },
    /// One workload of the bench's pipelined iSCSI initiator against a
    /// running target (4 KiB random by default): IOPS, p50/p99 latency.
    IscsiLoad {
        /// Portal address.
        #[arg(long, default_value = "127.0.0.1:3260")]
        addr: std::net::SocketAddr,
        /// Target IQN.
        #[arg(long, default_value = "iqn.2026-11.io.keel:vol0")]
        target: String,
        /// LUN number.
        #[arg(long, default_value_t = 0)]
        lun: u64,
        /// The LUN's logical block size.
        #[arg(long, default_value_t = 4096)]
        block_size: u32,
        /// Bytes per I/O.
        #[arg(long, default_value_t = 4096)]
        io_size: u32,
        /// Write (else read).
        #[arg(long)]
        write: bool,
        /// Commands in flight.
        #[arg(long, default_value_t = 32)]
        qd: usize,
        /// Seconds.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Bytes of the LUN to spread the I/O over.
        #[arg(long, value_parser = parse_size, default_value = "256MiB")]
        region: u64,
        /// Target process id (for CPU per I/O; 0: none).
        #[arg(long, default_value_t = 0)]
        pid: u32,
    },
    /// The loopback floor of a QD1 4 KiB read: a bare echo thread answering
    /// each 48-byte request with 4144 bytes over 127.0.0.1, no storage, no
    /// protocol, spinning on a non-blocking socket, then blocking in `read`,
    /// then blocking with both ends pinned to one CPU (where a hand-off is
    /// a context switch, not a wake-up of another CPU), against a client
    /// that blocks for each answer: what any target can reach at QD1 on
    /// this machine with such a client, as the two ends are placed.
    Floor {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// The volume engine on every compiled backend against the raw
    /// pwrite+fdatasync limit of the same file system.
    ///
    /// Per backend, on a fresh volume: 4 KiB random durable (FUA) writes at
    /// QD1 and QD32, 128 KiB sequential writes with a flush every 32, 4 KiB
    /// random reads at QD1 and QD32 of a preloaded region (page-cache hits).
    /// The raw limit: 4 KiB pwrite+fdatasync at QD1, random and appending
    /// (the faster is the floor). Goal misses are reported, not an error.
    Engine {
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Directory for the test files (default: a fresh directory under
        /// ./target/bench-tmp, on the file system of the checkout). A
        /// memory-backed file system (tmpfs) is refused: its fdatasync is free.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per measurement (each after a warm-up of a sixth of it,
        /// 0.1 to 0.5 s).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Volume size, e.g. 1GiB, 256MiB.
        #[arg(long, value_parser = parse_size, default_value = "1GiB")]
        size: u64,
        /// Volume size in MiB (older spelling of --size).
        #[arg(long, hide = true, conflicts_with = "size")]
        size_mib: Option<u64>,
        /// Runs of the whole set (raw and every backend, interleaved); the
        /// report shows per-metric medians.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Run on a memory-backed file system anyway.
        #[arg(long)]
        allow_tmpfs: bool,
        /// Diagnostics: the engine flusher's idle interval in milliseconds
        /// (default: the engine's, 1000).
        #[arg(long)]
        flush_interval_ms: Option<u64>,
        /// WAL size (default: the engine's for the volume size).
        #[arg(long, value_parser = parse_size)]
        wal_size: Option<u64>,
        /// Diagnostics: keep the engine flusher off while the WAL has room
        /// (use a WAL large enough for every write of a test).
        #[arg(long)]
        hold_flusher: bool,
        /// Diagnostics: how long a waiting handle polls before it sleeps, in
        /// microseconds (default: the engine's, 50).
        #[arg(long)]
        wait_spin_us: Option<u64>,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever RUST_BACKTRACE says.
            eprintln!("keel-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The nearest existing ancestor of `p` (itself if it exists).
fn existing_ancestor(p: &std::path::Path) -> PathBuf {
    p.ancestors()
        .find(|a| !a.as_os_str().is_empty() && a.exists())
        .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf)
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Report {
            runs,
            seconds,
            out,
            plots,
            json,
            dir,
            fio_engine,
            skip,
            quick,
            reuse,
        } => {
            for p in &skip {
                if !keel_bench::matrix::PARTS.contains(&p.as_str()) {
                    bail!(
                        "--skip {p}: not a part ({})",
                        keel_bench::matrix::PARTS.join(", ")
                    );
                }
            }
            let fio_engine = std::fs::canonicalize(&fio_engine).unwrap_or(fio_engine);
            keel_bench::matrix::run(&keel_bench::matrix::Opts {
                runs: if quick { 1 } else { runs },
                seconds: if quick { 1.0 } else { seconds },
                out,
                plots,
                json,
                dir,
                fio_engine,
                skip,
                reuse,
            })
        }
        Cmd::NvmfLoad {
            addr,
            subsystem,
            io_size,
            write,
            qd,
            fua,
            queues,
            seconds,
            pid,
        } => {
            let (_admin, mut qs) =
                keel_bench::targets::nvmf_session_queues(addr, &subsystem, queues)?;
            let m = keel_bench::targets::nvmf_measure_queues(
                &mut qs, pid, write, fua, io_size, qd, seconds,
            )?;
            println!(
                "{}{} {io_size} B QD{qd} ({queues} queue{}): {:.0} IOPS, p50 {:.0} µs, p99 {:.0} µs, target cpu/io {:.1} µs",
                if write { "write" } else { "read" },
                if write && fua { " (FUA)" } else { "" },
                if queues == 1 { "" } else { "s" },
                m.iops,
                m.p50_us,
                m.p99_us,
                m.cpu_us_per_io
            );
            Ok(())
        }
        Cmd::Floor { seconds } => {
            for floor in keel_bench::floor::Floor::ALL {
                let m = keel_bench::floor::measure(floor, seconds)?;
                println!(
                    "{}: {:.0} round trips/s, p50 {:.0} µs, p99 {:.0} µs, echo cpu/io {:.1} µs",
                    floor.name(),
                    m.iops,
                    m.p50_us,
                    m.p99_us,
                    m.cpu_us_per_io
                );
            }
            Ok(())
        }
        Cmd::IscsiLoad {
            addr,
            target,
            lun,
            block_size,
            io_size,
            write,
            qd,
            seconds,
            region,
            pid,
        } => {
            let lun_field = if lun == 0 { 0 } else { lun << 48 };
            let t = keel_bench::iscsi_load::Lun {
                addr,
                target: &target,
                lun: lun_field,
                block_size,
                pid,
            };
            let w = keel_bench::iscsi_load::Workload {
                write,
                size: io_size,
                qd,
            };
            let m = keel_bench::iscsi_load::run(&t, region, w, seconds)?;
            println!(
                "{} {} B QD{qd}: {:.0} IOPS, p50 {:.0} µs, p99 {:.0} µs, target cpu/io {:.1} µs",
                if write { "write" } else { "read" },
                io_size,
                m.iops,
                m.p50_us,
                m.p99_us,
                m.cpu_us_per_io
            );
            Ok(())
        }
        Cmd::Sockets {
            json,
            dir,
            seconds,
            poll_mode,
            runs,
        } => {
            let base = dir.unwrap_or_else(|| PathBuf::from("target/bench-tmp"));
            std::fs::create_dir_all(&base)?;
            let mut all = Vec::new();
            for i in 0..runs.max(1) {
                eprintln!("keel-bench sockets: run {} of {}", i + 1, runs.max(1));
                let tmp = tempfile::tempdir_in(&base)?;
                all.push(keel_bench::sockets::run(tmp.path(), seconds, &poll_mode)?);
            }
            let v = keel_bench::targets::median_of(&all);
            if json {
                println!("{v}");
            } else {
                print!("{}", keel_bench::sockets::table(&v));
            }
            Ok(())
        }
        Cmd::Targets {
            json,
            dir,
            seconds,
            poll_mode,
            socket_io,
            runs,
        } => {
            let base = dir.unwrap_or_else(|| PathBuf::from("target/bench-tmp"));
            std::fs::create_dir_all(&base)?;
            let mut all = Vec::new();
            for i in 0..runs.max(1) {
                eprintln!("keel-bench targets: run {} of {}", i + 1, runs.max(1));
                let tmp = tempfile::tempdir_in(&base)?;
                all.push(keel_bench::targets::run(
                    tmp.path(),
                    seconds,
                    &poll_mode,
                    &socket_io,
                )?);
            }
            let v = keel_bench::targets::median_of(&all);
            if json {
                println!("{v}");
            } else {
                print!("{}", keel_bench::targets::table(&v));
            }
            Ok(())
        }
        Cmd::Engine {
            json,
            dir,
            seconds,
            size,
            size_mib,
            runs,
            allow_tmpfs,
            flush_interval_ms,
            wal_size,
            hold_flusher,
            wait_spin_us,
        } => {
            if !(seconds > 0.0 && seconds.is_finite()) || runs == 0 {
                bail!("--seconds must be positive and --runs at least 1");
            }
            let size = size_mib.map_or(Ok(size), |m| {
                m.checked_mul(1 << 20).context("--size-mib too large")
            })?;
            // `_cleanup` removes the default directory when main returns.
            let target = dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("target/bench-tmp"));
            let fs = machine::describe(&existing_ancestor(&target));
            if fs["memory_backed"].as_bool() == Some(true) && !allow_tmpfs {
                bail!(
                    "{} is on {}, whose fdatasync is free; use --dir on a disk file system (or --allow-tmpfs)",
                    target.display(),
                    fs["fs_type"].as_str().unwrap_or("a memory file system")
                );
            }
            let (dir, _cleanup): (PathBuf, Option<tempfile::TempDir>) = match dir {
                Some(d) => {
                    std::fs::create_dir_all(&d)
                        .with_context(|| format!("creating {}", d.display()))?;
                    (d, None)
                }
                None => {
                    let base = PathBuf::from("target/bench-tmp");
                    std::fs::create_dir_all(&base)
                        .with_context(|| format!("creating {}", base.display()))?;
                    let t = tempfile::Builder::new()
                        .prefix("engine-")
                        .tempdir_in(&base)
                        .with_context(|| format!("creating a directory in {}", base.display()))?;
                    (t.path().to_path_buf(), Some(t))
                }
            };
            let m = machine::describe(&dir);
            let opts = Opts {
                dir: dir.clone(),
                seconds,
                size,
                flush_interval: flush_interval_ms.map(std::time::Duration::from_millis),
                wal_size,
                hold_flusher,
                wait_spin: wait_spin_us.map(std::time::Duration::from_micros),
            };
            let info = report::RunInfo {
                seconds,
                warmup: engine::warmup(seconds).as_secs_f64(),
                runs,
                size,
            };
            if !json {
                println!(
                    "machine: {} cores ({}), kernel {}; {} (statfs magic {}) on {} at {}",
                    m["cores"],
                    m["cpu"].as_str().unwrap_or(""),
                    m["kernel"].as_str().unwrap_or(""),
                    m["fs_type"].as_str().unwrap_or("?"),
                    m["statfs_magic"].as_str().unwrap_or("?"),
                    m["device"].as_str().unwrap_or("?"),
                    m["dir"].as_str().unwrap_or("?"),
                );
                println!(
                    "{seconds} s per test after {:.1} s warm-up, medians of {runs} interleaved runs; 4 KiB random over a {} volume (WAL {}); durable = FUA\n",
                    info.warmup,
                    format_size(size),
                    format_size(wal_size.unwrap_or_else(|| keel_blockvol::default_wal_size(size))),
                );
            }
            let modes = engine::modes();
            let mut raw_runs: Vec<[Row; 2]> = Vec::new();
            let mut runs_out: Vec<Vec<BackendResult>> = Vec::new();
            for run in 0..runs {
                if !json {
                    eprintln!("run {}/{runs}...", run + 1);
                }
                // The raw limit is the faster of random and sequential
                // pwrite+fdatasync (the WAL appends, so sequential is the
                // fair floor; on some devices random is faster).
                raw_runs.push([
                    engine::raw_limit(&dir, seconds, false)?,
                    engine::raw_limit(&dir, seconds, true)?,
                ]);
                let mut results = Vec::new();
                for &mode in &modes {
                    results.push(engine::run_backend(&opts, mode)?);
                }
                runs_out.push(results);
            }
            let raws: Vec<Row> = (0..2)
                .map(|k| engine::median_row(&raw_runs.iter().map(|r| &r[k]).collect::<Vec<_>>()))
                .collect();
            let raw = raws
                .iter()
                .min_by(|a, b| a.p50.total_cmp(&b.p50))
                .cloned()
                .context("no raw measurement")?;
            let results = engine::median_results(&runs_out);
            let goals = report::goals(&raw, &results);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report::to_json(
                        m, &info, &raw, &raws, &results, &goals
                    ))?
                );
            } else {
                print!("{}", report::to_table(&raw, &raws, &results, &goals));
            }
            Ok(())
        }
    }
}
