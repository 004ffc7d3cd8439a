//! Thousands of simulated power losses at random points of a concurrent
//! workload. After each, recovery must succeed, every durable write must be
//! there, and every block must hold the content of exactly one write that
//! is not older than its last durable one (or zeros where allowed) — never a
//! mix, never garbage.
//!
//! `KEEL_CRASH_ITERS` scales the number of crash points (default 1500 per
//! write-cache mode); `KEEL_CRASH_SEED` reruns one failing seed.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)] // test arithmetic on small values

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_blockvol::sim::SimStorage;
use keel_blockvol::storage::Storage;
use keel_blockvol::{format, CreateOptions, Op, SyncHandle, Volume, VolumeConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BS: usize = 512;
const BLOCKS: u64 = 256;
const STRIPE: u64 = 8;
const THREADS: u64 = 2;

/// What a block may hold: the content of write `id`, or zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    Zero,
    Data(u64),
}

#[derive(Clone, Debug)]
struct Version {
    content: Content,
    durable: bool,
}

fn pattern(id: u64, lba: u64, blocks: u64) -> Vec<u8> {
    let mut v = vec![0u8; usize::try_from(blocks).unwrap() * BS];
    for (i, sector) in v.chunks_mut(BS).enumerate() {
        for w in sector.chunks_mut(16) {
            w[..8].copy_from_slice(&id.to_le_bytes());
            w[8..].copy_from_slice(&(lba + i as u64).to_le_bytes());
        }
    }
    v
}

fn decode(block: &[u8], lba: u64) -> Result<Content, String> {
    if block.iter().all(|&b| b == 0) {
        return Ok(Content::Zero);
    }
    let id = u64::from_le_bytes(block[..8].try_into().unwrap());
    if block != &pattern(id, lba, 1)[..] {
        return Err(format!("block {lba} is garbage or a mix (first id {id})"));
    }
    Ok(Content::Data(id))
}

struct Shared {
    next_id: AtomicU64,
    /// Per block: versions in order. Only the owning thread appends.
    history: Mutex<HashMap<u64, Vec<Version>>>,
}

/// One thread's workload on its own stripes, up to `qd` ops in flight, none
/// overlapping another in flight.
fn workload(vol: &Volume, shared: &Shared, t: u64, seed: u64, ops: usize, write_cache: bool) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = vol.handle().unwrap();
    let qd = rng.gen_range(1..=4);
    // tag -> (blocks, versions index range to mark on ack)
    struct InFlight {
        lba: u64,
        blocks: u64,
        idx: Vec<usize>,
        durable_on_ack: bool,
        flush: bool,
    }
    let mut inflight: HashMap<u64, InFlight> = HashMap::new();
    // Non-durable acked versions waiting for a flush: (lba, idx).
    let mut acked_volatile: Vec<(u64, usize)> = Vec::new();
    // Flushes in flight: tag -> versions they cover.
    let mut flush_cover: HashMap<u64, Vec<(u64, usize)>> = HashMap::new();
    let mut tag = 0u64;
    let mut issued = 0;
    let mut failed = false;
    while (issued < ops && !failed) || !inflight.is_empty() {
        while issued < ops && !failed && inflight.len() < qd {
            tag += 1;
            issued += 1;
            let kind = rng.gen_range(0..10);
            if kind == 0 {
                flush_cover.insert(tag, std::mem::take(&mut acked_volatile));
                inflight.insert(
                    tag,
                    InFlight {
                        lba: 0,
                        blocks: 0,
                        idx: vec![],
                        durable_on_ack: false,
                        flush: true,
                    },
                );
                if h.submit(tag, Op::Flush).is_err() {
                    inflight.remove(&tag);
                    failed = true;
                }
                continue;
            }
            // Pick a range inside one of this thread's stripes, not busy.
            let stripe = rng.gen_range(0..BLOCKS / STRIPE / THREADS) * THREADS + t;
            let blocks = rng.gen_range(1..=4u64);
            let lba = stripe * STRIPE + rng.gen_range(0..=STRIPE - blocks);
            if inflight
                .values()
                .any(|f| !f.flush && lba < f.lba + f.blocks && f.lba < lba + blocks)
            {
                issued -= 1;
                tag -= 1;
                break;
            }
            let fua = rng.gen_bool(0.3);
            let (op, content) = match kind {
                1 => (
                    Op::Trim {
                        lba,
                        blocks: u32::try_from(blocks).unwrap(),
                    },
                    Content::Zero,
                ),
                2 => (
                    Op::WriteZeroes {
                        lba,
                        blocks: u32::try_from(blocks).unwrap(),
                        fua,
                    },
                    Content::Zero,
                ),
                _ => {
                    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
                    (
                        Op::Write {
                            lba,
                            buf: pattern(id, lba, blocks),
                            fua,
                        },
                        Content::Data(id),
                    )
                }
            };
            let durable_on_ack = match op {
                Op::Trim { .. } => !write_cache,
                _ => fua || !write_cache,
            };
            let mut idx = Vec::new();
            {
                let mut hist = shared.history.lock().unwrap();
                for b in lba..lba + blocks {
                    let v = hist.entry(b).or_default();
                    v.push(Version {
                        content,
                        durable: false,
                    });
                    idx.push(v.len() - 1);
                }
            }
            inflight.insert(
                tag,
                InFlight {
                    lba,
                    blocks,
                    idx,
                    durable_on_ack,
                    flush: false,
                },
            );
            if h.submit(tag, op).is_err() {
                inflight.remove(&tag);
                failed = true;
            }
        }
        let mut done = Vec::new();
        h.poll_completions(|c| done.push((c.tag, c.result.is_ok())));
        if done.is_empty() {
            h.wait(Some(Duration::from_millis(20)));
            continue;
        }
        let mut hist = shared.history.lock().unwrap();
        for (tg, ok) in done {
            let Some(f) = inflight.remove(&tg) else {
                continue;
            };
            if !ok {
                failed = true;
                continue;
            }
            if f.flush {
                for (b, i) in flush_cover.remove(&tg).unwrap_or_default() {
                    hist.get_mut(&b).unwrap()[i].durable = true;
                }
                continue;
            }
            for (k, b) in (f.lba..f.lba + f.blocks).enumerate() {
                if f.durable_on_ack {
                    hist.get_mut(&b).unwrap()[f.idx[k]].durable = true;
                } else {
                    acked_volatile.push((b, f.idx[k]));
                }
            }
        }
    }
}

fn verify(vol: &Volume, shared: &Shared, seed: u64) {
    let mut h = SyncHandle::new(vol.handle().unwrap());
    let all = h.read(0, BLOCKS).unwrap();
    let hist = shared.history.lock().unwrap();
    for lba in 0..BLOCKS {
        let block = &all[usize::try_from(lba).unwrap() * BS..][..BS];
        let got = decode(block, lba).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let versions = hist.get(&lba).cloned().unwrap_or_default();
        // Version 0 is the initial zeros, durable.
        let mut allowed = vec![Content::Zero];
        let mut from = 0usize;
        for (i, v) in versions.iter().enumerate() {
            if v.durable {
                from = i + 1;
            }
        }
        let candidates: Vec<Content> = if from == 0 {
            allowed.extend(versions.iter().map(|v| v.content));
            allowed
        } else {
            versions[from - 1..].iter().map(|v| v.content).collect()
        };
        assert!(
            candidates.contains(&got),
            "seed {seed}: block {lba} holds {got:?}, allowed {candidates:?} (history {versions:?})"
        );
    }
}

fn one_crash(seed: u64, write_cache: bool) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut storage = Arc::new(SimStorage::new(seed));
    let opts = CreateOptions {
        size: BLOCKS * BS as u64,
        block_size: 512,
        wal_size: 64 * 1024,
    };
    format(&*storage, &opts).unwrap();
    let cfg = VolumeConfig {
        write_cache,
        // The simulator's storage takes the standard backend: WAL records
        // written by the submitting thread and made durable by group
        // commit, or written (and, at QD1, synced) by its workers.
        wal_inline_writes: rng.gen_bool(0.5),
        flush_interval: Duration::from_millis(rng.gen_range(1..5)),
        flush_threshold: 0.1,
        admission_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let shared = Shared {
        next_id: AtomicU64::new(1),
        history: Mutex::new(HashMap::new()),
    };
    // Two power losses in a row: records left in the ring by the first must
    // never be replayed after the second.
    for round in 0..2u64 {
        let vol = Volume::open_storage(Arc::clone(&storage) as Arc<dyn Storage>, &cfg)
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: recovery failed: {e}"));
        if round > 0 {
            verify(&vol, &shared, seed);
        }
        let ops = rng.gen_range(5..120);
        storage.crash_after(rng.gen_range(1..600));
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (vol, shared) = (&vol, &shared);
                let ts = seed.wrapping_mul(31).wrapping_add(t + 7 * round);
                s.spawn(move || workload(vol, shared, t, ts, ops, write_cache));
            }
        });
        storage.crash_now();
        drop(vol);
        let image = storage.crash_image().unwrap();
        storage = Arc::new(SimStorage::from_image(image, seed + 1 + round));
    }
    let vol = Volume::open_storage(Arc::clone(&storage) as Arc<dyn Storage>, &cfg)
        .unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
    verify(&vol, &shared, seed);
    // The recovered volume works, and replay is idempotent: a second
    // (clean) reopen shows the same content.
    let before = SyncHandle::new(vol.handle().unwrap())
        .read(0, BLOCKS)
        .unwrap();
    vol.close().unwrap();
    let again = Arc::new(SimStorage::from_image(storage.current_image(), seed + 9));
    let vol = Volume::open_storage(again as Arc<dyn Storage>, &cfg).unwrap();
    let mut h = SyncHandle::new(vol.handle().unwrap());
    assert_eq!(
        h.read(0, BLOCKS).unwrap(),
        before,
        "seed {seed}: reopen changed content"
    );
    h.write(0, &pattern(u64::MAX - 1, 0, 1), true).unwrap();
}

fn iterations() -> u64 {
    std::env::var("KEEL_CRASH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500)
}

fn run(write_cache: bool, salt: u64) {
    if let Some(seed) = std::env::var("KEEL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        one_crash(seed, write_cache);
        return;
    }
    for i in 0..iterations() {
        one_crash(salt + i, write_cache);
    }
}

#[test]
fn power_loss_with_write_cache() {
    run(true, 1_000_000);
}

#[test]
fn power_loss_write_through() {
    run(false, 2_000_000);
}
