//! Any bytes: the text-segment parser never panics; what it accepts
//! re-encodes to something it parses the same way.
#![no_main]
use keel_pdu::iscsi::text::{parse_pairs, push_pair};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = parse_pairs(data) {
        let mut out = Vec::new();
        for (k, v) in &pairs {
            push_pair(&mut out, k, v);
        }
        assert_eq!(parse_pairs(&out).ok(), Some(pairs));
    }
});
