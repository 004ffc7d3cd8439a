//! Header and data digests (RFC 7143 §12.1, CRC32C).
//!
//! The 32-bit CRC goes on the wire least significant byte first (as Linux,
//! libiscsi and the RFC's example values do).

/// The digest of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// The digest of several pieces, as if concatenated (a data segment and its
/// padding).
pub fn crc32c_parts(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |c, p| crc32c::crc32c_append(c, p))
}

/// `crc` (the digest of what came before) continued over `data`: a digest
/// computed piece by piece as data arrives.
pub fn crc32c_continue(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// The wire bytes of a digest.
pub fn to_wire(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// A digest read from the wire.
pub fn from_wire(b: [u8; 4]) -> u32 {
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3720_examples() {
        // RFC 3720 B.4: CRC32C of 32 bytes of zeros is 0x8a9136aa, of 32
        // bytes of 0xff is 0x62a8ab43, of 0..=31 is 0x46dd794e.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46dd_794e);
        assert_eq!(to_wire(0x8a91_36aa), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(crc32c_parts(&[&[0u8; 20], &[0u8; 12]]), 0x8a91_36aa);
    }
}
