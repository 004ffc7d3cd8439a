//! Writes to a keel volume until it is killed, logging to stdout what it
//! submits and what became durable, for the `kill -9` test.
//!
//! Usage: `keel-crash-writer PATH BACKEND SEED FIRST_ID`
//!
//! Output lines (each written before the state it describes can be lost):
//! - `S <id> <lba> <blocks> <kind>`: about to submit (kind `w` write, `t` trim);
//! - `D <id>`: write `id` is durable (FUA completion, or a completed flush
//!   submitted after its completion);
//! - `READY`: the volume is open.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use keel_blockvol::{Op, Volume, VolumeConfig};
use keel_tests::pattern;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        bail!("usage: keel-crash-writer PATH BACKEND SEED FIRST_ID");
    }
    let cfg = VolumeConfig {
        backend: args[2].parse()?,
        ..Default::default()
    };
    let seed: u64 = args[3].parse().context("seed")?;
    let mut next_id: u64 = args[4].parse().context("first id")?;
    let vol = Volume::open(std::path::Path::new(&args[1]), &cfg)?;
    let bs = vol.info().block_size as usize;
    let cap = vol.info().blocks;
    let mut h = vol.handle()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY")?;
    out.flush()?;
    let mut rng = StdRng::seed_from_u64(seed);
    // tag -> (id, lba, blocks, fua); flushes have id 0
    let mut inflight: HashMap<u64, (u64, u64, u64, bool)> = HashMap::new();
    let mut volatile: Vec<u64> = Vec::new();
    let mut flush_cover: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut tag = 0u64;
    loop {
        while inflight.len() < 8 {
            tag += 1;
            if rng.gen_range(0..12) == 0 {
                flush_cover.insert(tag, std::mem::take(&mut volatile));
                inflight.insert(tag, (0, 0, 0, false));
                h.submit(tag, Op::Flush).map_err(|e| e.error)?;
                continue;
            }
            let blocks = rng.gen_range(1..=8u64);
            let lba = rng.gen_range(0..cap - blocks);
            if inflight
                .values()
                .any(|&(id, l, b, _)| id != 0 && lba < l + b && l < lba + blocks)
            {
                continue;
            }
            let id = next_id;
            next_id += 1;
            let fua = rng.gen_bool(0.3);
            let trim = rng.gen_range(0..10) == 0;
            writeln!(
                out,
                "S {id} {lba} {blocks} {}",
                if trim { 't' } else { 'w' }
            )?;
            out.flush()?;
            let op = if trim {
                Op::Trim {
                    lba,
                    blocks: u32::try_from(blocks)?,
                }
            } else {
                Op::Write {
                    lba,
                    buf: pattern(id, lba, blocks, bs),
                    fua,
                }
            };
            inflight.insert(tag, (id, lba, blocks, fua && !trim));
            h.submit(tag, op).map_err(|e| e.error)?;
        }
        let mut done = Vec::new();
        h.poll_completions(|c| done.push((c.tag, c.result)));
        if done.is_empty() {
            h.wait(Some(Duration::from_millis(10)));
        }
        for (t, r) in done {
            r?;
            let Some((id, _, _, fua)) = inflight.remove(&t) else {
                continue;
            };
            if id == 0 {
                for d in flush_cover.remove(&t).unwrap_or_default() {
                    writeln!(out, "D {d}")?;
                }
            } else if fua {
                writeln!(out, "D {id}")?;
            } else {
                volatile.push(id);
            }
        }
        out.flush()?;
    }
}
