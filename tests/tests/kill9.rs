//! `kill -9` of a real writer process at random times, on both backends:
//! after each kill the volume reopens, every durable write is there, and
//! every block holds zeros or exactly one write's pattern that is not older
//! than its last durable write.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)] // test arithmetic on small values

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use keel_blockvol::{BackendMode, CreateOptions, SyncHandle, Volume, VolumeConfig};
use keel_tests::{identify, BlockContent};
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq)]
struct Version {
    content: BlockContent,
    id: u64,
    durable: bool,
}

fn run_rounds(backend: &str, mode: BackendMode, rounds: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill9.keel");
    let opts = CreateOptions {
        size: 32 << 20,
        block_size: 4096,
        wal_size: 4 << 20,
    };
    let cfg = VolumeConfig {
        backend: mode,
        ..Default::default()
    };
    Volume::create(&path, &opts, &cfg).unwrap().close().unwrap();
    let mut history: HashMap<u64, Vec<Version>> = HashMap::new();
    let mut by_id: HashMap<u64, Vec<(u64, usize)>> = HashMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b65_656c);
    let mut next_id = 1u64;
    let mut total_durable = 0usize;
    for round in 0..rounds {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel-crash-writer"))
            .args([
                path.to_str().unwrap(),
                backend,
                &rng.gen::<u64>().to_string(),
                &next_id.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        assert_eq!(first.trim(), "READY", "writer did not start: {first}");
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..400)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success());
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(err.is_empty(), "writer failed: {err}");
        let mut durable_this_round = 0;
        for line in rest.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["S", id, lba, blocks, kind] => {
                    let (id, lba, blocks): (u64, u64, u64) = (
                        id.parse().unwrap(),
                        lba.parse().unwrap(),
                        blocks.parse().unwrap(),
                    );
                    next_id = next_id.max(id + 1);
                    let content = if *kind == "t" {
                        BlockContent::Zero
                    } else {
                        BlockContent::Write(id)
                    };
                    for b in lba..lba + blocks {
                        let v = history.entry(b).or_default();
                        v.push(Version {
                            content,
                            id,
                            durable: false,
                        });
                        by_id.entry(id).or_default().push((b, v.len() - 1));
                    }
                }
                ["D", id] => {
                    let id: u64 = id.parse().unwrap();
                    for &(b, i) in by_id.get(&id).map(Vec::as_slice).unwrap_or(&[]) {
                        history.get_mut(&b).unwrap()[i].durable = true;
                    }
                    durable_this_round += 1;
                }
                _ => {} // a line cut by the kill
            }
        }
        total_durable += durable_this_round;
        verify(&path, &cfg, &history, round);
    }
    assert!(
        total_durable > 50,
        "too few durable writes to mean anything: {total_durable}"
    );
}

fn verify(path: &Path, cfg: &VolumeConfig, history: &HashMap<u64, Vec<Version>>, round: u32) {
    let vol =
        Volume::open(path, cfg).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
    let blocks = vol.info().blocks;
    let mut h = SyncHandle::new(vol.handle().unwrap());
    let mut lba = 0;
    while lba < blocks {
        let n = 256.min(blocks - lba);
        let data = h.read(lba, n).unwrap();
        for (i, block) in data.chunks(4096).enumerate() {
            let b = lba + i as u64;
            let got = identify(block, b).unwrap_or_else(|e| panic!("round {round}: {e}"));
            let versions = history.get(&b).cloned().unwrap_or_default();
            let last_durable = versions.iter().rposition(|v| v.durable);
            let mut allowed: Vec<BlockContent> = match last_durable {
                Some(k) => versions[k..].iter().map(|v| v.content).collect(),
                None => versions.iter().map(|v| v.content).collect(),
            };
            if last_durable.is_none() {
                allowed.push(BlockContent::Zero);
            }
            assert!(
                allowed.contains(&got),
                "round {round}: block {b} holds {got:?}, allowed {allowed:?}"
            );
        }
        lba += n;
    }
    drop(h);
    vol.close().unwrap();
}

#[test]
fn kill9_standard_backend() {
    run_rounds("standard", BackendMode::Standard, 12);
}

#[test]
fn kill9_io_uring_backend() {
    run_rounds("io_uring", BackendMode::IoUring, 12);
}
