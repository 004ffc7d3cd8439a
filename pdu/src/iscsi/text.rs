//! Text segments: `key=value` pairs, each ending in a NUL byte (RFC 7143
//! §6.1, §13). Only syntax lives here; negotiation belongs to the target.

use super::PduError;

/// Longest key (RFC 7143 §6.1).
pub const MAX_KEY: usize = 63;
/// Longest value this parser accepts (long binary CHAP values included).
pub const MAX_VALUE: usize = 8192;

/// Parse a (possibly padded) text segment into `(key, value)` pairs.
pub fn parse_pairs(data: &[u8]) -> Result<Vec<(&str, &str)>, PduError> {
    // Padding after the last NUL is zeros.
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if end == 0 {
        return Ok(Vec::new());
    }
    if end == data.len() {
        return Err(PduError::BadText("the last pair is not NUL-terminated"));
    }
    let mut out = Vec::new();
    for item in data[..end].split(|&b| b == 0) {
        let s = std::str::from_utf8(item).map_err(|_| PduError::BadText("not UTF-8"))?;
        let (k, v) = s
            .split_once('=')
            .ok_or(PduError::BadText("a pair without '='"))?;
        if k.is_empty() || k.len() > MAX_KEY {
            return Err(PduError::BadText("key empty or longer than 63 bytes"));
        }
        if !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'@' | b'_'))
        {
            return Err(PduError::BadText(
                "key with a character outside [A-Za-z0-9.-+@_]",
            ));
        }
        if v.len() > MAX_VALUE {
            return Err(PduError::BadText("value too long"));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Append `key=value\0`.
pub fn push_pair(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}

/// A `Yes`/`No` value.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

/// A decimal (or `0x` hex) number within `min..=max`.
pub fn parse_number(v: &str, min: u64, max: u64) -> Option<u64> {
    let n = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse().ok()?
    };
    (min..=max).contains(&n).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pairs() {
        let mut d = Vec::new();
        push_pair(&mut d, "InitiatorName", "iqn.2024-01.test:init");
        push_pair(&mut d, "SessionType", "Normal");
        push_pair(&mut d, "X-com.example.empty", "");
        d.extend_from_slice(&[0, 0]);
        let p = parse_pairs(&d).unwrap();
        assert_eq!(
            p,
            vec![
                ("InitiatorName", "iqn.2024-01.test:init"),
                ("SessionType", "Normal"),
                ("X-com.example.empty", "")
            ]
        );
        assert!(parse_pairs(b"NoTerminator=1").is_err());
        assert!(parse_pairs(b"NoEquals\0").is_err());
        assert!(parse_pairs(b"=v\0").is_err());
        assert!(parse_pairs(b"bad key=v\0").is_err());
        assert!(parse_pairs(&[0, 0, 0, 0]).unwrap().is_empty());
        let long = format!("{}=1\0", "k".repeat(64));
        assert!(parse_pairs(long.as_bytes()).is_err());
    }

    #[test]
    fn values() {
        assert_eq!(parse_bool("Yes"), Some(true));
        assert_eq!(parse_bool("yes"), None);
        assert_eq!(parse_number("8192", 512, 16_777_215), Some(8192));
        assert_eq!(parse_number("0x10", 0, 100), Some(16));
        assert_eq!(parse_number("511", 512, 1000), None);
        assert_eq!(parse_number("-1", 0, 10), None);
        assert_eq!(parse_number("", 0, 10), None);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_pairs(&bytes);
        }

        #[test]
        fn round_trip(pairs in proptest::collection::vec(("[A-Za-z][A-Za-z0-9._-]{0,20}", "[ -~&&[^=]]{0,40}"), 0..8)) {
            let mut d = Vec::new();
            for (k, v) in &pairs {
                push_pair(&mut d, k, v);
            }
            let got = parse_pairs(&d).unwrap();
            let want: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            prop_assert_eq!(got, want);
        }
    }
}
