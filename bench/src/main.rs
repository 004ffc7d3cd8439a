//! `keel-bench`: keel's benchmarks.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use keel_bench::engine::{self, Opts};
use keel_bench::machine;

/// keel benchmarks: each runs keel and its peers side by side in one run.
#[derive(Parser, Debug)]
#[command(name = "keel-bench", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The volume engine on every compiled backend against the raw
    /// pwrite+fdatasync limit of the same file system.
    Engine {
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Directory for the test files (default: ./target/bench-tmp, on the
        /// file system of the checkout; avoid tmpfs, whose fdatasync is free).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Volume size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Runs of the whole set (raw and every backend, interleaved); the
        /// report shows per-metric medians.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Engine {
            json,
            dir,
            seconds,
            size_mib,
            runs,
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("target/bench-tmp"));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let opts = Opts {
                dir: dir.clone(),
                seconds,
                size: size_mib << 20,
            };
            let m = machine::describe(&dir);
            if !json {
                println!(
                    "machine: {} cores ({}), kernel {}, {} on {} at {}",
                    m["cores"],
                    m["cpu"].as_str().unwrap_or(""),
                    m["kernel"].as_str().unwrap_or(""),
                    m["fs_type"].as_str().unwrap_or("?"),
                    m["device"].as_str().unwrap_or("?"),
                    dir.display()
                );
                println!(
                    "{seconds} s per test, medians of {runs} interleaved runs; 4 KiB random over a {size_mib} MiB volume; durable = FUA\n"
                );
            }
            // The raw limit is the faster of random and sequential
            // pwrite+fdatasync (the WAL appends, so sequential is the fair
            // floor; on some devices random is faster).
            let raw_rand = engine::raw_limit(&dir, seconds, false)?;
            let raw_seq = engine::raw_limit(&dir, seconds, true)?;
            let raw = if raw_seq.p50 <= raw_rand.p50 {
                raw_seq.clone()
            } else {
                raw_rand.clone()
            };
            let raws = [raw_rand, raw_seq];
            let mut results = Vec::new();
            for mode in engine::modes() {
                results.push(engine::run_backend(&opts, mode)?);
            }
            let goals = engine::goals(&raw, &results);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&engine::to_json(
                        m, &raw, &raws, &results, &goals, seconds
                    ))?
                );
            } else {
                print!("{}", engine::to_table(&raw, &raws, &results, &goals));
            }
            Ok(())
        }
    }
}
