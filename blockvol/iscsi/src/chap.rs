//! CHAP authentication (RFC 7143 §12.1.3, RFC 1994) with MD5, one-way and
//! mutual.

use md5::{Digest, Md5};

/// A CHAP user name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// CHAP_N.
    pub user: String,
    /// The shared secret (RFC 7143 asks for at least 12 bytes).
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// Length of the target's challenge in bytes.
pub const CHALLENGE_LEN: usize = 16;

/// `MD5(id || secret || challenge)`.
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Encode bytes as a CHAP binary value (`0x` hex).
pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Decode a CHAP binary value: `0x`/`0X` hex or `0b`/`0B` base64
/// (RFC 7143 §6.1).
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    let (prefix, rest) = v.split_at_checked(2)?;
    match prefix {
        "0x" | "0X" => {
            let rest = if rest.len() % 2 == 1 {
                format!("0{rest}")
            } else {
                rest.to_owned()
            };
            (0..rest.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(rest.get(i..i + 2)?, 16).ok())
                .collect()
        }
        "0b" | "0B" => base64_decode(rest),
        _ => None,
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in s {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

/// Random bytes for identifiers and challenges.
pub fn random_bytes(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => {
                // No entropy source: fall back to the clock (never expected
                // on Linux >= 3.17).
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                for (i, b) in buf[filled..].iter_mut().enumerate() {
                    *b = t.to_le_bytes()[i % 16];
                }
                return;
            }
        }
    }
}

/// Constant-time comparison.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1994_md5_response() {
        // id 1, secret "secret", challenge 16 zero bytes: checked against
        // Python's hashlib.md5(b"\x01secret" + b"\x00" * 16).
        let r = response(1, b"secret", &[0u8; 16]);
        assert_eq!(encode_hex(&r), "0x7570c653cdf4755ccffcaa80f29268d1");
        assert_ne!(r, response(2, b"secret", &[0u8; 16]));
    }

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("0x0a0B"), Some(vec![0x0a, 0x0b]));
        assert_eq!(decode_binary("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(decode_binary("0bAQI="), Some(vec![1, 2]));
        assert_eq!(decode_binary("12"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(encode_hex(&[0, 255]), "0x00ff");
        assert!(equal(b"ab", b"ab") && !equal(b"ab", b"ac") && !equal(b"a", b"ab"));
    }
}
