//! Any bytes: the admin structure decoders (Identify, logs, Get Log Page
//! fields) never panic and round-trip.
#![no_main]
use keel_pdu::nvme::admin::{
    AnaGroupDescriptor, AnaLogHeader, DiscoveryLogEntry, DiscoveryLogHeader, ErrorLogEntry,
    GetLogPage, IdentifyController, IdentifyNamespace, SmartLog,
};
use keel_pdu::nvme::Sqe;
use libfuzzer_sys::fuzz_target;
use zerocopy::{FromBytes, IntoBytes};

fn rt<T: FromBytes + IntoBytes + zerocopy::Immutable + zerocopy::KnownLayout>(data: &[u8]) {
    if let Ok((t, _)) = T::read_from_prefix(data) {
        assert_eq!(t.as_bytes(), &data[..core::mem::size_of::<T>()]);
    }
}

fuzz_target!(|data: &[u8]| {
    rt::<IdentifyController>(data);
    rt::<IdentifyNamespace>(data);
    rt::<SmartLog>(data);
    rt::<AnaLogHeader>(data);
    rt::<AnaGroupDescriptor>(data);
    rt::<DiscoveryLogHeader>(data);
    rt::<DiscoveryLogEntry>(data);
    rt::<ErrorLogEntry>(data);
    if let Some(s) = Sqe::parse(data) {
        let g = GetLogPage::from_sqe(&s);
        assert!(g.len >= 4);
    }
});
