//! SIGTERM and SIGKILL of a volume server under an iSCSI write load: after
//! a restart, every write acknowledged before a completed SYNCHRONIZE CACHE
//! (or written with FUA) is there.
#![allow(clippy::cast_possible_truncation)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_tests::iscsi_client::Client;
use keel_tests::server::{iqn, ServerProcess};
use keel_tests::{identify, pattern, BlockContent};
use rand::{Rng, SeedableRng};

const SERVER: &str = env!("CARGO_BIN_EXE_keel-test-server");
const BS: u32 = 4096;
const BLOCKS: u64 = 2048;

/// What the writer knows: for each LBA, the ids written to it in order,
/// and how many of them a completed flush (or FUA) made durable.
#[derive(Default)]
struct Ledger {
    writes: HashMap<u64, Vec<u64>>,
    durable: HashMap<u64, usize>,
}

fn load(s: &ServerProcess, seed: u64, stop: &AtomicBool) -> Ledger {
    let mut led = Ledger::default();
    let Ok(mut c) = Client::connect(s.iscsi) else {
        return led;
    };
    if c.login("iqn.2026-11.io.keel.test:writer", Some(&iqn("vol0")), None)
        .is_err()
    {
        return led;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut id = seed << 32;
    let mut since_flush: Vec<(u64, usize)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let lba = rng.gen_range(0..BLOCKS - 8);
        let n = rng.gen_range(1..8u64);
        let fua = rng.gen_bool(0.1);
        let data = pattern(id, lba, n, BS as usize);
        match c.write16(lba, &data, BS, fua) {
            Ok(r) if r.status == 0 => {
                for b in lba..lba + n {
                    let w = led.writes.entry(b).or_default();
                    w.push(id);
                    if fua {
                        led.durable.insert(b, w.len());
                    } else {
                        since_flush.push((b, w.len()));
                    }
                }
            }
            _ => break,
        }
        if rng.gen_bool(0.05) {
            match c.sync_cache() {
                Ok(r) if r.status == 0 => {
                    for (b, k) in since_flush.drain(..) {
                        let d = led.durable.entry(b).or_insert(0);
                        *d = (*d).max(k);
                    }
                }
                _ => break,
            }
        }
    }
    led
}

fn verify(s: &ServerProcess, led: &Ledger) -> usize {
    let mut c = Client::connect(s.iscsi).unwrap();
    c.login(
        "iqn.2026-11.io.keel.test:verifier",
        Some(&iqn("vol0")),
        None,
    )
    .unwrap();
    let r = c.read16(0, BLOCKS as u32, BS).unwrap();
    assert_eq!(r.status, 0);
    let mut checked = 0;
    for (&lba, &k) in &led.durable {
        let ids = &led.writes[&lba];
        let block = &r.data[lba as usize * BS as usize..(lba as usize + 1) * BS as usize];
        let got = identify(block, lba).unwrap_or_else(|e| panic!("LBA {lba}: {e}"));
        // The durable write or any later one (acknowledged, or in flight
        // when the server died: ids only grow) may be there; an older one
        // or zeros means a lost durable write.
        let ok = match got {
            BlockContent::Write(id) => id >= ids[k - 1],
            BlockContent::Zero => false,
        };
        assert!(
            ok,
            "LBA {lba}: durable write {} lost, found {got:?}",
            ids[k - 1]
        );
        checked += 1;
    }
    checked
}

fn crash_round(sig: i32, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProcess::start(Path::new(SERVER), dir.path(), &["vol0:8MiB"], &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = std::thread::scope(|sc| {
        let h = sc.spawn(|| load(&s, seed, &stop));
        std::thread::sleep(Duration::from_millis(1500));
        s.signal(sig);
        let led = h.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        led
    });
    let code = s.wait(Duration::from_secs(30));
    if sig == 15 {
        assert_eq!(code, Some(0), "clean exit on SIGTERM:\n{}", s.log());
        assert!(s.log().contains("volume closed"), "{}", s.log());
    }
    assert!(!ledger.durable.is_empty(), "the load made nothing durable");
    drop(s);
    let s = ServerProcess::start(Path::new(SERVER), dir.path(), &["vol0:8MiB"], &[]);
    let n = verify(&s, &ledger);
    eprintln!("signal {sig}, seed {seed}: {n} blocks with durable writes verified");
}

#[test]
fn sigterm_under_write_load_keeps_flushed_writes() {
    for seed in 1..=3 {
        crash_round(15, seed);
    }
}

#[test]
fn sigkill_under_write_load_keeps_flushed_writes() {
    for seed in 11..=15 {
        crash_round(9, seed);
    }
}
