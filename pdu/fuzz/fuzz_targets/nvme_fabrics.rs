//! Any bytes: the Fabrics decoders (Connect command fields and data,
//! property fields) never panic.
#![no_main]
use keel_pdu::nvme::fabrics::{Connect, ConnectData, Property};
use keel_pdu::nvme::Sqe;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(s) = Sqe::parse(data) {
        let _ = Connect::from_sqe(&s);
        let _ = Property::from_sqe(&s);
    }
    if let Some(d) = ConnectData::parse(data) {
        let _ = (d.subnqn(), d.hostnqn(), d.cntlid.get());
    }
});
