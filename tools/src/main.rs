//! `keel`: the keel command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel_tools::size::parse_size;
use keel_tools::volume_cmd::{self, EXIT_UNREADABLE};

/// keel: userspace block storage over NVMe/TCP and iSCSI.
#[derive(Parser, Debug)]
#[command(name = "keel", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Offline tools on a volume file (the volume must not be open elsewhere).
    #[command(subcommand)]
    Volume(VolumeCmd),
}

#[derive(Subcommand, Debug)]
enum VolumeCmd {
    /// Create a new volume file.
    Create {
        /// Path of the new volume file (must not exist; parent directories are created).
        path: PathBuf,
        /// Logical size, e.g. 64MiB, 1GiB, 10GB.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Logical block size in bytes: 512 or 4096.
        #[arg(long, default_value_t = 4096, value_parser = parse_block_size)]
        block_size: u32,
        /// WAL ring size (default: 1/16 of the size, between 1 MiB and 256 MiB).
        #[arg(long, value_parser = parse_size)]
        wal_size: Option<u64>,
    },
    /// Print the superblock, both superblock slots, WAL usage and the checkpoint (read-only).
    Inspect {
        /// Volume file.
        path: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Verify the superblock and every WAL record (read-only). Exit status: 0 healthy,
    /// 1 damaged, 2 not readable as a volume.
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
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err((msg, code)) => {
            eprintln!("keel: error: {msg}");
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
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
            Err((format!("{}: {e}", path.display()), code))
        }
    }
}
