//! The `keel-volume` command line (shared by the binary and the test harness).

use std::path::PathBuf;

use crate::config::{ServerConfig, VolumeSpec};
use crate::Server;
use clap::Parser;

/// Serve keel volumes over iSCSI and NVMe/TCP from polled-mode reactors.
///
/// Settings come from the TOML file given with --config (see
/// docs/volume-server.md for every key); flags override it. Runs in the
/// foreground until SIGTERM or SIGINT, then shuts down cleanly: stops
/// accepting, ends sessions after their engine operations, closes volumes.
#[derive(Parser, Debug)]
#[command(name = "keel-volume", version)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the volume files (default ./keel-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// iSCSI listen address (repeatable; replaces the file's list).
    #[arg(long, value_name = "ADDR")]
    iscsi_listen: Vec<String>,
    /// Portal returned by SendTargets, HOST:PORT (repeatable).
    #[arg(long, value_name = "HOST:PORT")]
    iscsi_advertise: Vec<String>,
    /// NVMe/TCP listen address (repeatable; replaces the file's list; ""
    /// turns NVMe/TCP off).
    #[arg(long, value_name = "ADDR")]
    nvmf_listen: Vec<String>,
    /// Address the NVMe discovery log reports, HOST:PORT (repeatable).
    #[arg(long, value_name = "HOST:PORT")]
    nvmf_advertise: Vec<String>,
    /// Admin HTTP listen address; "" turns it off (default 127.0.0.1:9480).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Reactor threads.
    #[arg(long, value_name = "N")]
    reactors: Option<usize>,
    /// busy, adaptive[:<spin µs>] or interrupt.
    #[arg(long, value_name = "MODE")]
    poll_mode: Option<String>,
    /// Socket I/O of the reactors: epoll or io_uring.
    #[arg(long, value_name = "IO")]
    socket_io: Option<String>,
    /// I/O backend: standard, auto or io_uring.
    #[arg(long, value_name = "BACKEND")]
    backend: Option<String>,
    /// Host a volume NAME, created with SIZE (and a WAL of WAL_SIZE; default
    /// a quarter of SIZE, 1 MiB to 256 MiB) if missing (repeatable), e.g.
    /// --volume db1:100GiB or --volume db1:100GiB:1GiB.
    #[arg(long, value_name = "NAME[:SIZE[:WAL_SIZE]]")]
    volume: Vec<String>,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

/// Parse the process arguments, run the server until SIGTERM/SIGINT, exit
/// with 1 (and one `keel-volume: error:` line) on failure.
pub fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("keel-volume: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Run with parsed arguments.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(p) => ServerConfig::load(p)?,
        None => ServerConfig::default(),
    };
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if !args.iscsi_listen.is_empty() {
        cfg.iscsi.listen = args.iscsi_listen;
    }
    if !args.iscsi_advertise.is_empty() {
        cfg.iscsi.advertise = args.iscsi_advertise;
    }
    if !args.nvmf_listen.is_empty() {
        cfg.nvmf.listen = args
            .nvmf_listen
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect();
    }
    if !args.nvmf_advertise.is_empty() {
        cfg.nvmf.advertise = args.nvmf_advertise;
    }
    if let Some(a) = args.admin_listen {
        cfg.admin.listen = a;
    }
    if let Some(n) = args.reactors {
        cfg.reactor.cores = n;
    }
    if let Some(m) = args.poll_mode {
        cfg.reactor.poll_mode = m;
    }
    if let Some(s) = args.socket_io {
        cfg.reactor.socket_io = s;
    }
    if let Some(b) = args.backend {
        cfg.engine.backend = b;
    }
    for v in args.volume {
        let mut parts = v.splitn(3, ':');
        let name = parts.next().unwrap_or_default().to_owned();
        let size = parts.next().map(str::to_owned);
        let wal_size = parts.next().map(str::to_owned);
        cfg.volumes.retain(|x| x.name != name);
        cfg.volumes.push(VolumeSpec {
            name,
            size,
            wal_size,
            iqn: None,
            initiators: Vec::new(),
            chap: None,
            mutual_chap: None,
            nqn: None,
            hosts: Vec::new(),
        });
    }
    cfg.validate()?;
    if args.check_config {
        println!("configuration OK ({} volumes)", cfg.volumes.len());
        return Ok(());
    }
    let server = Server::start(&cfg)?;
    crate::wait_for_signal()?;
    tracing::info!("shutting down");
    server.shutdown()
}
