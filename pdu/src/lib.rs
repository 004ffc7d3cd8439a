//! keel wire formats.
//!
//! Will hold the iSCSI Basic Header Segment and PDU types, SCSI CDBs and sense
//! data, NVMe/TCP PDUs, the NVMe SQE and CQE, identify and log-page
//! structures, and CRC32C digests, as zerocopy structs with byte-order field
//! types. No I/O, no allocation on the parse path, no `unsafe`.
#![forbid(unsafe_code)]
