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
                  set RUST_LOG (e.g. RUST_LOG=debug or RUST_LOG=keel_blockvol=trace; default warn)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
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
        /// (default: 1/16 of the size, between 1 MiB and 256 MiB).
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

fn parse_block_size(s: &str) -> Result<u32, String> {
    match s.trim() {
        "512" => Ok(512),
        "4096" => Ok(4096),
        other => Err(format!("block size must be 512 or 4096, not {other:?}")),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
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
