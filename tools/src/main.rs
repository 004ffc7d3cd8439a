//! `keel`: the keel command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel_tools::size::parse_size;
use keel_tools::volume_cmd::{self, EXIT_UNREADABLE};

/// keel: userspace block storage over NVMe/TCP and iSCSI.
#[derive(Parser, Debug)]
#[command(
    name = "keel",
    version,
    after_help = "Errors print one line, `keel: error: ...`, on stderr. Logging goes to stderr; \
                  set RUST_LOG (e.g. RUST_LOG=debug or RUST_LOG=keel_blockvol=trace; default warn, \
                  info for `keel dev`)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a single-node volume server for development, in the foreground.
    ///
    /// Hosts one volume, `vol0` (DATA_DIR/vol0.keel, created on the first
    /// start, reused with its data afterwards), exported over iSCSI as
    /// iqn.2026-11.io.keel:vol0 LUN 0 and over NVMe/TCP as
    /// nqn.2026-11.io.keel:vol0 namespace 1, with the admin endpoint (GET /status,
    /// GET /metrics) beside it. Prints how to connect, then serves until
    /// SIGINT (Ctrl-C) or SIGTERM and shuts down cleanly. Logs go to stderr
    /// (RUST_LOG, default info). For production use `keel-volume` with a
    /// config file.
    Dev(DevArgs),
    /// Offline tools on a volume file (the volume must not be open elsewhere).
    ///
    /// A volume lives in two files: PATH (the superblock slots and the WAL
    /// ring) and PATH.extent (the block data, sparse).
    #[command(subcommand)]
    Volume(VolumeCmd),
}

#[derive(Subcommand, Debug)]
enum VolumeCmd {
    /// Create a new volume (PATH and PATH.extent) and close it cleanly.
    ///
    /// Sizes are bytes or a number with a unit: K, KiB, M, MiB, G, GiB, T,
    /// TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000), in any case.
    Create {
        /// Path of the new volume file; neither it nor PATH.extent may exist
        /// (missing parent directories are created).
        path: PathBuf,
        /// Logical size, a multiple of the block size, e.g. 64MiB, 1GiB, 10GB.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Logical block size in bytes: 512 or 4096.
        #[arg(long, default_value_t = 4096, value_parser = parse_block_size)]
        block_size: u32,
        /// WAL ring size, a multiple of 4 KiB and at least 64 KiB
        /// (default: a quarter of the size, between 1 MiB and 256 MiB).
        #[arg(long, value_parser = parse_size)]
        wal_size: Option<u64>,
    },
    /// Print the superblock, both superblock slots, WAL usage and the checkpoint (read-only).
    ///
    /// Shows the newest valid superblock (identity, geometry, WAL and extent
    /// offsets, checkpoint LSN and WAL tail, generation, replication epoch,
    /// role and durability, creation time), the state of both slots, the WAL
    /// records a reopen would replay and why the WAL walk stopped, and notes
    /// on states a reopen repairs by itself. Exit status 2 when the file
    /// cannot be read as a volume.
    Inspect {
        /// Volume file.
        path: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Verify the superblock and every WAL record (read-only). Exit status: 0 healthy,
    /// 1 damaged, 2 not readable as a volume.
    ///
    /// Healthy (0): notes on states a reopen repairs by itself (one invalid
    /// superblock slot, a torn last WAL record, records pending replay) are
    /// printed as warnings. Damaged (1): a valid WAL record that cannot be
    /// replayed (data would be lost). Unreadable (2): not a keel volume,
    /// truncated, an unsupported format version, both superblock slots
    /// corrupt, or a file that cannot be opened.
    Check {
        /// Volume file.
        path: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
struct DevArgs {
    /// Directory of the volume files.
    #[arg(long, default_value = "./keel-data", value_name = "DIR")]
    data_dir: PathBuf,
    /// Size of the default volume when it is created (an existing volume
    /// smaller than this is grown).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// iSCSI listen address.
    #[arg(long, default_value = "127.0.0.1:3260", value_name = "ADDR")]
    iscsi_listen: String,
    /// Portal that SendTargets advertises (HOST:PORT), e.g. 10.0.2.2:3260
    /// for a qemu guest with user networking; default: the address the
    /// initiator connected to.
    #[arg(long, value_name = "HOST:PORT")]
    iscsi_advertise: Option<String>,
    /// NVMe/TCP listen address ("" turns NVMe/TCP off).
    #[arg(long, default_value = "127.0.0.1:4420", value_name = "ADDR")]
    nvmf_listen: String,
    /// Address the NVMe discovery log reports (HOST:PORT), e.g.
    /// 10.0.2.2:4420 for a qemu guest; default: the address the host
    /// connected to.
    #[arg(long, value_name = "HOST:PORT")]
    nvmf_advertise: Option<String>,
    /// Admin HTTP listen address ("" turns it off).
    #[arg(long, default_value = "127.0.0.1:9480", value_name = "ADDR")]
    admin_listen: String,
    /// Reactor poll mode: busy, adaptive[:<spin µs>] or interrupt.
    #[arg(long, default_value = "adaptive", value_name = "MODE")]
    poll_mode: String,
    /// Reactor socket I/O: epoll or io_uring.
    #[arg(long, default_value = "epoll", value_name = "IO")]
    socket_io: String,
    /// I/O backend: standard, auto or io_uring.
    #[arg(long, default_value = "auto", value_name = "BACKEND")]
    backend: String,
}

fn dev(a: DevArgs) -> Result<i32, (String, i32)> {
    use keel_volume::config::{ServerConfig, VolumeSpec};
    let mut cfg = ServerConfig {
        data_dir: a.data_dir,
        ..ServerConfig::default()
    };
    cfg.iscsi.listen = vec![a.iscsi_listen];
    cfg.iscsi.advertise = a.iscsi_advertise.into_iter().collect();
    cfg.nvmf.listen = [a.nvmf_listen]
        .into_iter()
        .filter(|x| !x.is_empty())
        .collect();
    cfg.nvmf.advertise = a.nvmf_advertise.into_iter().collect();
    cfg.admin.listen = a.admin_listen;
    cfg.reactor.poll_mode = a.poll_mode;
    cfg.reactor.socket_io = a.socket_io;
    cfg.engine.backend = a.backend;
    cfg.volumes = vec![VolumeSpec {
        name: "vol0".into(),
        size: Some(a.size.to_string()),
        wal_size: None,
        iqn: None,
        initiators: Vec::new(),
        chap: None,
        mutual_chap: None,
        nqn: None,
        hosts: Vec::new(),
    }];
    let server = keel_volume::Server::start(&cfg).map_err(|e| (format!("{e:#}"), 1))?;
    let iqn = cfg.iqn_of(&cfg.volumes[0]);
    let portal = server
        .iscsi_addrs()
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let host = server
        .iscsi_addrs()
        .first()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let port = server
        .iscsi_addrs()
        .first()
        .map_or(3260, std::net::SocketAddr::port);
    let vol = server.state().volumes()[0].clone();
    let info = vol.target.lun.volume().info();
    println!(
        "keel dev: volume vol0 ({}) at {}",
        keel_tools::size::format_size(info.size),
        vol.path.display()
    );
    println!("  iSCSI target {iqn}, LUN 0, portal {portal}");
    let nqn = cfg.nqn_of(&cfg.volumes[0]);
    if let Some(n) = server.nvmf_addrs().first() {
        println!("  NVMe/TCP subsystem {nqn}, namespace 1, portal {n}");
    }
    if let Some(a) = server.admin_addr() {
        println!("  admin        http://{a}/status  http://{a}/metrics");
    }
    println!();
    println!("Connect with:");
    println!("  iscsi-ls -s iscsi://{portal}");
    println!("  iscsi-inq iscsi://{portal}/{iqn}/0");
    println!("  iscsiadm -m discovery -t sendtargets -p {host}:{port}");
    println!("  iscsiadm -m node -T {iqn} -p {host}:{port} --login");
    if let Some(n) = server.nvmf_addrs().first() {
        println!("  nvme discover -t tcp -a {} -s {}", n.ip(), n.port());
        println!(
            "  nvme connect -t tcp -a {} -s {} -n {nqn}",
            n.ip(),
            n.port()
        );
    }
    println!("Ctrl-C (SIGINT) or SIGTERM stops the server.");
    keel_volume::wait_for_signal().map_err(|e| (format!("{e:#}"), 1))?;
    eprintln!("keel dev: shutting down");
    server.shutdown().map_err(|e| (format!("{e:#}"), 1))?;
    Ok(0)
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    match s.trim() {
        "512" => Ok(512),
        "4096" => Ok(4096),
        other => Err(format!("block size must be 512 or 4096, not {other:?}")),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `keel` or `keel volume` alone: the help, on stderr, status 2.
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("keel: error: {}", usage_error_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    // The server logs what it does (info); the offline tools only warn.
    let default_level = if matches!(cli.cmd, Cmd::Dev(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    match run(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err((msg, code)) => {
            eprintln!("keel: error: {msg}");
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

/// Clap's usage error in one line: its message lines, without the usage
/// and the "For more information" hint.
fn usage_error_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(cli: Cli) -> Result<i32, (String, i32)> {
    match cli.cmd {
        Cmd::Dev(a) => dev(a),
        Cmd::Volume(VolumeCmd::Create {
            path,
            size,
            block_size,
            wal_size,
        }) => {
            let out = volume_cmd::create(&path, size, block_size, wal_size)
                .map_err(|e| (format!("{e:#}"), 1))?;
            println!("{out}");
            Ok(0)
        }
        Cmd::Volume(VolumeCmd::Inspect { path, json }) => report(&path, json, false),
        Cmd::Volume(VolumeCmd::Check { path, json }) => report(&path, json, true),
    }
}

fn report(path: &std::path::Path, json: bool, check: bool) -> Result<i32, (String, i32)> {
    match volume_cmd::inspect_cmd(path, json, check) {
        Ok((out, code)) => {
            print!("{out}");
            Ok(code)
        }
        Err(e) => {
            let code =
                if volume_cmd::unreadable(e.kind()) || e.kind() == keel_blockvol::ErrorKind::Io {
                    EXIT_UNREADABLE
                } else {
                    1
                };
            Err((volume_cmd::error_line(path, &e), code))
        }
    }
}
