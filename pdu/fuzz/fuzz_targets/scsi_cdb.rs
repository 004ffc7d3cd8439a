//! Any bytes: the CDB parser never panics.
#![no_main]
use keel_pdu::scsi::parse_cdb;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_cdb(data);
});
