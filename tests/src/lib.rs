//! keel end-to-end tests: real processes, real clients, fault injection.
//!
//! The tests live in `tests/`; helper programs they start (such as the
//! `keel-crash-writer` that a test kills with SIGKILL) live in `src/bin/`.
//! This library holds what both share: the self-describing block pattern
//! that lets a verifier tell which write a block came from.

pub mod guest;
pub mod iscsi_client;
pub mod server;

/// Fill `blocks` blocks of `block_size` bytes at `lba` with the pattern of
/// write `id`: every 16 bytes hold `id` and the block's LBA, little endian.
pub fn pattern(id: u64, lba: u64, blocks: u64, block_size: usize) -> Vec<u8> {
    let n = usize::try_from(blocks).unwrap_or(0) * block_size;
    let mut v = vec![0u8; n];
    for (i, block) in v.chunks_mut(block_size).enumerate() {
        for w in block.chunks_mut(16) {
            w[..8].copy_from_slice(&id.to_le_bytes());
            w[8..].copy_from_slice(&(lba + i as u64).to_le_bytes());
        }
    }
    v
}

/// What one block holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockContent {
    /// All zeros.
    Zero,
    /// The pattern of this write.
    Write(u64),
}

/// Identify a block's content, or describe why it is neither zeros nor one
/// write's pattern (garbage, or a mix of two writes).
pub fn identify(block: &[u8], lba: u64) -> Result<BlockContent, String> {
    if block.iter().all(|&b| b == 0) {
        return Ok(BlockContent::Zero);
    }
    let Some(first) = block.get(..8) else {
        return Err(format!("block {lba} is too short"));
    };
    let mut idb = [0u8; 8];
    idb.copy_from_slice(first);
    let id = u64::from_le_bytes(idb);
    if block != pattern(id, lba, 1, block.len()).as_slice() {
        return Err(format!(
            "block {lba} is garbage or a mix of writes (starts with id {id})"
        ));
    }
    Ok(BlockContent::Write(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_round_trips_and_detects_mixes() {
        let a = pattern(5, 10, 2, 512);
        assert_eq!(identify(&a[..512], 10), Ok(BlockContent::Write(5)));
        assert_eq!(identify(&a[512..], 11), Ok(BlockContent::Write(5)));
        assert!(identify(&a[512..], 10).is_err());
        let mut mix = a[..512].to_vec();
        mix[256..].copy_from_slice(&pattern(6, 10, 1, 512)[256..]);
        assert!(identify(&mix, 10).is_err());
        assert_eq!(identify(&[0u8; 512], 3), Ok(BlockContent::Zero));
    }
}
