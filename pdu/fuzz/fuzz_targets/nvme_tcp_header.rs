//! Any bytes: the NVMe/TCP header parser never panics, with or without
//! header digests negotiated.
#![no_main]
use keel_pdu::nvme::parse_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_header(data, false);
    let _ = parse_header(data, true);
});
