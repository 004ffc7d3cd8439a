//! Any bytes: the BHS parser never panics, and decode/encode/decode is stable.
#![no_main]
use keel_pdu::iscsi::{body_len, parse, Pdu};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((raw, pdu)) = parse(data) {
        assert_eq!(Pdu::decode(&pdu.encode()), pdu);
        let _ = body_len(&raw, true, true);
    }
});
