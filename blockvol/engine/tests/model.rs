//! Property test: random sequences of writes, trims, write-zeroes, flushes,
//! expands, closes and reopens, checked against an in-memory model. Runs on
//! each backend with a real file, and on the crash simulator's storage.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)] // test arithmetic on small values

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel_blockvol::sim::SimStorage;
use keel_blockvol::storage::Storage;
use keel_blockvol::{format, BackendMode, CreateOptions, SyncHandle, Volume, VolumeConfig};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Act {
    Write {
        lba: u64,
        blocks: u64,
        seed: u8,
        fua: bool,
    },
    Trim {
        lba: u64,
        blocks: u64,
    },
    Zero {
        lba: u64,
        blocks: u64,
    },
    Read {
        lba: u64,
        blocks: u64,
    },
    Flush,
    Expand {
        add: u64,
    },
    Reopen,
    WriteCache(bool),
}

fn act() -> impl Strategy<Value = Act> {
    // LBAs are taken modulo the current capacity when applied.
    prop_oneof![
        8 => (any::<u64>(), 1u64..24, any::<u8>(), any::<bool>())
            .prop_map(|(lba, blocks, seed, fua)| Act::Write { lba, blocks, seed, fua }),
        2 => (any::<u64>(), 1u64..64).prop_map(|(lba, blocks)| Act::Trim { lba, blocks }),
        2 => (any::<u64>(), 1u64..64).prop_map(|(lba, blocks)| Act::Zero { lba, blocks }),
        4 => (any::<u64>(), 1u64..40).prop_map(|(lba, blocks)| Act::Read { lba, blocks }),
        1 => Just(Act::Flush),
        1 => (1u64..32).prop_map(|add| Act::Expand { add }),
        1 => Just(Act::Reopen),
        1 => any::<bool>().prop_map(Act::WriteCache),
    ]
}

enum Where {
    File(std::path::PathBuf),
    Sim(Arc<SimStorage>),
}

fn open(at: &Where, cfg: &VolumeConfig) -> Volume {
    match at {
        Where::File(p) => Volume::open(p, cfg).unwrap(),
        Where::Sim(s) => Volume::open_storage(Arc::clone(s) as Arc<dyn Storage>, cfg).unwrap(),
    }
}

fn run(
    acts: &[Act],
    backend: BackendMode,
    sim: bool,
    block_size: u32,
    dir: &Path,
) -> Result<(), TestCaseError> {
    let bs = block_size as usize;
    let opts = CreateOptions {
        size: 96 * block_size as u64,
        block_size,
        wal_size: 64 * 1024,
    };
    let cfg = VolumeConfig {
        backend,
        flush_interval: Duration::from_millis(2),
        // Both ways of writing WAL records (inline or by the backend).
        wal_inline_writes: acts.len() % 2 == 0,
        ..Default::default()
    };
    let at = if sim {
        let s = Arc::new(SimStorage::new(1));
        format(&*s, &opts).unwrap();
        Where::Sim(s)
    } else {
        let p = dir.join("m.keel");
        Volume::create(&p, &opts, &cfg).unwrap().close().unwrap();
        Where::File(p)
    };
    let mut model = vec![0u8; opts.size as usize];
    let mut vol = open(&at, &cfg);
    let mut h = SyncHandle::new(vol.handle().unwrap());
    let maxw = u64::from(vol.info().max_write_blocks);
    for a in acts {
        let cap = (model.len() / bs) as u64;
        let clamp = |lba: u64, blocks: u64| {
            let lba = lba % cap;
            (lba, blocks.min(cap - lba))
        };
        match *a {
            Act::Write {
                lba,
                blocks,
                seed,
                fua,
            } => {
                let (lba, blocks) = clamp(lba, blocks.min(maxw));
                let data: Vec<u8> = (0..blocks as usize * bs)
                    .map(|i| seed.wrapping_add((i / 7) as u8))
                    .collect();
                h.write(lba, &data, fua).unwrap();
                model[lba as usize * bs..][..data.len()].copy_from_slice(&data);
            }
            Act::Trim { lba, blocks } | Act::Zero { lba, blocks } => {
                let (lba, blocks) = clamp(lba, blocks);
                let n = u32::try_from(blocks).unwrap();
                if matches!(a, Act::Trim { .. }) {
                    h.trim(lba, n).unwrap();
                } else {
                    h.write_zeroes(lba, n, false).unwrap();
                }
                model[lba as usize * bs..][..blocks as usize * bs].fill(0);
            }
            Act::Read { lba, blocks } => {
                let (lba, blocks) = clamp(lba, blocks);
                let got = h.read(lba, blocks).unwrap();
                prop_assert!(
                    got == model[lba as usize * bs..][..got.len()],
                    "read {lba}+{blocks} differs"
                );
            }
            Act::Flush => h.flush().unwrap(),
            Act::Expand { add } => {
                let new = model.len() + add as usize * bs;
                vol.expand(new as u64).unwrap();
                model.resize(new, 0);
            }
            Act::Reopen => {
                drop(h);
                vol.close().unwrap();
                vol = open(&at, &cfg);
                h = SyncHandle::new(vol.handle().unwrap());
                prop_assert_eq!(vol.info().size as usize, model.len());
            }
            Act::WriteCache(on) => vol.set_write_cache(on),
        }
    }
    let all = h.read(0, (model.len() / bs) as u64).unwrap();
    prop_assert!(all == model, "final content differs");
    drop(h);
    vol.close().unwrap();
    // And once more after a reopen.
    let vol = open(&at, &cfg);
    let all = SyncHandle::new(vol.handle().unwrap())
        .read(0, (model.len() / bs) as u64)
        .unwrap();
    prop_assert!(all == model, "content differs after reopen");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn standard_backend_matches_model(acts in proptest::collection::vec(act(), 1..120), small in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        run(&acts, BackendMode::Standard, false, if small { 512 } else { 4096 }, dir.path())?;
    }

    #[test]
    fn io_uring_backend_matches_model(acts in proptest::collection::vec(act(), 1..120), small in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        run(&acts, BackendMode::IoUring, false, if small { 512 } else { 4096 }, dir.path())?;
    }

    #[test]
    fn simulated_storage_matches_model(acts in proptest::collection::vec(act(), 1..120), small in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        run(&acts, BackendMode::Standard, true, if small { 512 } else { 4096 }, dir.path())?;
    }
}
