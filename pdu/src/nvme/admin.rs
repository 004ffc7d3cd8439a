//! Admin data structures (NVMe Base 2.0, NVMe-oF 1.1): Identify Controller
//! and Namespace, LBA formats, SMART / health, error and firmware logs, the
//! ANA log, the discovery log. Little-endian zerocopy structs with size
//! asserts; every field offset used by keel is pinned in the tests against
//! the offsets of libnvme's structures (`offsetof`, compiled).

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Admin opcodes.
pub mod opcode {
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0a;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT: u8 = 0x0c;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
}

/// Identify Controller (CNS 01h), 4096 bytes.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
pub struct IdentifyController {
    /// PCI vendor ID.
    pub vid: U16,
    /// PCI subsystem vendor ID.
    pub ssvid: U16,
    /// Serial number (ASCII, space padded).
    pub sn: [u8; 20],
    /// Model number.
    pub mn: [u8; 40],
    /// Firmware revision.
    pub fr: [u8; 8],
    /// Recommended arbitration burst.
    pub rab: u8,
    /// IEEE OUI.
    pub ieee: [u8; 3],
    /// Multi-path I/O and namespace sharing capabilities.
    pub cmic: u8,
    /// Maximum data transfer size (power of two of the minimum page).
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: U16,
    /// Version.
    pub ver: U32,
    /// RTD3 resume latency.
    pub rtd3r: U32,
    /// RTD3 entry latency.
    pub rtd3e: U32,
    /// Optional asynchronous events supported.
    pub oaes: U32,
    /// Controller attributes.
    pub ctratt: U32,
    /// Reserved / other fields up to CNTRLTYPE.
    pub rsvd100: [u8; 11],
    /// Controller type (1 I/O, 2 discovery, 3 administrative).
    pub cntrltype: u8,
    /// FRU GUID.
    pub fguid: [u8; 16],
    /// Reserved.
    pub rsvd128: [u8; 128],
    /// Optional admin command support.
    pub oacs: U16,
    /// Abort command limit.
    pub acl: u8,
    /// Asynchronous event request limit.
    pub aerl: u8,
    /// Firmware updates.
    pub frmw: u8,
    /// Log page attributes.
    pub lpa: u8,
    /// Error log page entries.
    pub elpe: u8,
    /// Number of power states.
    pub npss: u8,
    /// Reserved / other fields up to KAS.
    pub rsvd264: [u8; 56],
    /// Keep alive support (granularity, 100 ms units).
    pub kas: U16,
    /// Reserved / other fields up to ANATT.
    pub rsvd322: [u8; 20],
    /// ANA transition time.
    pub anatt: u8,
    /// ANA capabilities.
    pub anacap: u8,
    /// ANA group identifier maximum.
    pub anagrpmax: U32,
    /// Number of ANA group identifiers.
    pub nanagrpid: U32,
    /// Reserved.
    pub rsvd352: [u8; 160],
    /// Submission queue entry size.
    pub sqes: u8,
    /// Completion queue entry size.
    pub cqes: u8,
    /// Maximum outstanding commands.
    pub maxcmd: U16,
    /// Number of namespaces.
    pub nn: U32,
    /// Optional NVM command support.
    pub oncs: U16,
    /// Fused operation support.
    pub fuses: U16,
    /// Format NVM attributes.
    pub fna: u8,
    /// Volatile write cache.
    pub vwc: u8,
    /// Atomic write unit normal.
    pub awun: U16,
    /// Atomic write unit power fail.
    pub awupf: U16,
    /// Reserved / other fields up to SGLS.
    pub rsvd530: [u8; 6],
    /// SGL support.
    pub sgls: U32,
    /// Maximum number of allowed namespaces.
    pub mnan: U32,
    /// Reserved.
    pub rsvd544: [u8; 224],
    /// NVM subsystem NQN (NUL padded).
    pub subnqn: [u8; 256],
    /// Reserved.
    pub rsvd1024: [u8; 768],
    /// I/O queue command capsule supported size (16-byte units).
    pub ioccsz: U32,
    /// I/O queue response capsule supported size (16-byte units).
    pub iorcsz: U32,
    /// In-capsule data offset.
    pub icdoff: U16,
    /// Fabrics controller attributes.
    pub fcatt: u8,
    /// Maximum SGL data block descriptors.
    pub msdbd: u8,
    /// Optional fabric commands support.
    pub ofcs: U16,
    /// Reserved.
    pub rsvd1806: [u8; 242],
    /// Power state descriptors (32 × 32 bytes).
    pub psd: [u8; 1024],
    /// Vendor specific.
    pub vs: [u8; 1024],
}
const _: () = assert!(core::mem::size_of::<IdentifyController>() == 4096);

/// An LBA format (4 bytes).
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
pub struct LbaFormat {
    /// Metadata size.
    pub ms: U16,
    /// LBA data size, log2.
    pub lbads: u8,
    /// Relative performance.
    pub rp: u8,
}
const _: () = assert!(core::mem::size_of::<LbaFormat>() == 4);

/// Identify Namespace (CNS 00h), 4096 bytes.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
pub struct IdentifyNamespace {
    /// Namespace size (blocks).
    pub nsze: U64,
    /// Namespace capacity.
    pub ncap: U64,
    /// Namespace utilization.
    pub nuse: U64,
    /// Namespace features.
    pub nsfeat: u8,
    /// Number of LBA formats (0-based).
    pub nlbaf: u8,
    /// Formatted LBA size.
    pub flbas: u8,
    /// Metadata capabilities.
    pub mc: u8,
    /// End-to-end data protection capabilities.
    pub dpc: u8,
    /// End-to-end data protection type settings.
    pub dps: u8,
    /// Namespace multi-path I/O and sharing capabilities.
    pub nmic: u8,
    /// Reservation capabilities.
    pub rescap: u8,
    /// Format progress indicator.
    pub fpi: u8,
    /// Deallocate logical block features.
    pub dlfeat: u8,
    /// Namespace atomic write unit normal.
    pub nawun: U16,
    /// Namespace atomic write unit power fail.
    pub nawupf: U16,
    /// Reserved / other fields up to ANAGRPID.
    pub rsvd38: [u8; 54],
    /// ANA group identifier.
    pub anagrpid: U32,
    /// Reserved / other fields up to NGUID.
    pub rsvd96: [u8; 8],
    /// Namespace globally unique identifier.
    pub nguid: [u8; 16],
    /// IEEE extended unique identifier.
    pub eui64: [u8; 8],
    /// LBA formats.
    pub lbaf: [LbaFormat; 64],
    /// Reserved and vendor specific.
    pub rsvd384: [u8; 3712],
}
const _: () = assert!(core::mem::size_of::<IdentifyNamespace>() == 4096);

/// SMART / Health Information log (02h), 512 bytes.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
pub struct SmartLog {
    /// Critical warning.
    pub critical_warning: u8,
    /// Composite temperature (kelvin).
    pub temperature: U16,
    /// Available spare (%).
    pub avail_spare: u8,
    /// Available spare threshold (%).
    pub spare_thresh: u8,
    /// Percentage used.
    pub percent_used: u8,
    /// Reserved / other fields.
    pub rsvd6: [u8; 26],
    /// Data units read (thousands of 512 bytes), 128 bits.
    pub data_units_read: [U64; 2],
    /// Data units written.
    pub data_units_written: [U64; 2],
    /// Host read commands.
    pub host_reads: [U64; 2],
    /// Host write commands.
    pub host_writes: [U64; 2],
    /// Controller busy time, power cycles.
    pub rsvd96: [u8; 32],
    /// Power-on hours.
    pub power_on_hours: [U64; 2],
    /// Unsafe shutdowns.
    pub unsafe_shutdowns: [U64; 2],
    /// Reserved / other fields.
    pub rsvd160: [u8; 352],
}
const _: () = assert!(core::mem::size_of::<SmartLog>() == 512);

/// ANA log header (0Ch), 16 bytes; group descriptors follow.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
pub struct AnaLogHeader {
    /// Change count.
    pub chgcnt: U64,
    /// Number of group descriptors.
    pub ngrps: U16,
    /// Reserved.
    pub rsvd: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<AnaLogHeader>() == 16);

/// ANA group descriptor, 32 bytes; `nnsids` NSIDs (u32) follow.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
pub struct AnaGroupDescriptor {
    /// ANA group ID.
    pub grpid: U32,
    /// Number of NSIDs that follow.
    pub nnsids: U32,
    /// Change count.
    pub chgcnt: U64,
    /// ANA state.
    pub state: u8,
    /// Reserved.
    pub rsvd: [u8; 15],
}
const _: () = assert!(core::mem::size_of::<AnaGroupDescriptor>() == 32);

/// Discovery log page header (70h), 1024 bytes; entries follow.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
pub struct DiscoveryLogHeader {
    /// Generation counter.
    pub genctr: U64,
    /// Number of records.
    pub numrec: U64,
    /// Record format.
    pub recfmt: U16,
    /// Reserved.
    pub rsvd: [u8; 1006],
}
const _: () = assert!(core::mem::size_of::<DiscoveryLogHeader>() == 1024);

/// Discovery log entry, 1024 bytes.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
pub struct DiscoveryLogEntry {
    /// Transport type (3: TCP).
    pub trtype: u8,
    /// Address family (1: IPv4, 2: IPv6).
    pub adrfam: u8,
    /// Subsystem type (2: NVM, 3: current discovery).
    pub subtype: u8,
    /// Transport requirements.
    pub treq: u8,
    /// Port ID.
    pub portid: U16,
    /// Controller ID (0xffff: dynamic).
    pub cntlid: U16,
    /// Admin max SQ size.
    pub asqsz: U16,
    /// Entry flags.
    pub eflags: U16,
    /// Reserved.
    pub rsvd12: [u8; 20],
    /// Transport service identifier (port), NUL padded.
    pub trsvcid: [u8; 32],
    /// Reserved.
    pub rsvd64: [u8; 192],
    /// Subsystem NQN.
    pub subnqn: [u8; 256],
    /// Transport address.
    pub traddr: [u8; 256],
    /// Transport specific address subtype.
    pub tsas: [u8; 256],
}
const _: () = assert!(core::mem::size_of::<DiscoveryLogEntry>() == 1024);

/// Error information log entry (01h), 64 bytes.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
pub struct ErrorLogEntry {
    /// Error count.
    pub error_count: U64,
    /// Submission queue ID.
    pub sqid: U16,
    /// Command ID.
    pub cmdid: U16,
    /// Status field.
    pub status: U16,
    /// Parameter error location.
    pub param_error_location: U16,
    /// LBA.
    pub lba: U64,
    /// Namespace.
    pub nsid: U32,
    /// Vendor specific information available.
    pub vs: u8,
    /// Transport type.
    pub trtype: u8,
    /// Reserved and the rest.
    pub rsvd30: [u8; 34],
}
const _: () = assert!(core::mem::size_of::<ErrorLogEntry>() == 64);

/// Get Log Page fields from an SQE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetLogPage {
    /// Log page identifier.
    pub lid: u8,
    /// Log specific field.
    pub lsp: u8,
    /// Bytes requested ((NUMD + 1) × 4).
    pub len: usize,
    /// Byte offset.
    pub offset: u64,
}

impl GetLogPage {
    /// Decode CDW10-13.
    pub fn from_sqe(s: &super::Sqe) -> GetLogPage {
        let cdw10 = s.cdw10.get().to_le_bytes();
        let numdl = u16::from_le_bytes([cdw10[2], cdw10[3]]);
        let numdu = u16::from_le_bytes([
            s.cdw11.get().to_le_bytes()[0],
            s.cdw11.get().to_le_bytes()[1],
        ]);
        let numd = (usize::from(numdu) << 16 | usize::from(numdl)) + 1;
        GetLogPage {
            lid: cdw10[0],
            lsp: cdw10[1] & 0x7f,
            len: numd * 4,
            offset: u64::from(s.cdw12.get()) | (u64::from(s.cdw13.get()) << 32),
        }
    }
}

/// Feature identifiers.
pub mod feature {
    /// Arbitration.
    pub const ARBITRATION: u8 = 0x01;
    /// Power management.
    pub const POWER_MANAGEMENT: u8 = 0x02;
    /// Temperature threshold.
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    /// Volatile write cache.
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    /// Number of queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    /// Interrupt coalescing.
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    /// Asynchronous event configuration.
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    /// Keep alive timer.
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
}

/// A zeroed structure (all of these are valid as zeros).
pub fn zeroed<T: FromBytes>() -> T {
    T::new_zeroed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn offsets_match_libnvme() {
        // Values printed by offsetof() on libnvme's types.h.
        assert_eq!(offset_of!(IdentifyController, sn), 4);
        assert_eq!(offset_of!(IdentifyController, mn), 24);
        assert_eq!(offset_of!(IdentifyController, fr), 64);
        assert_eq!(offset_of!(IdentifyController, cmic), 76);
        assert_eq!(offset_of!(IdentifyController, mdts), 77);
        assert_eq!(offset_of!(IdentifyController, cntlid), 78);
        assert_eq!(offset_of!(IdentifyController, ver), 80);
        assert_eq!(offset_of!(IdentifyController, oaes), 92);
        assert_eq!(offset_of!(IdentifyController, cntrltype), 111);
        assert_eq!(offset_of!(IdentifyController, oacs), 256);
        assert_eq!(offset_of!(IdentifyController, aerl), 259);
        assert_eq!(offset_of!(IdentifyController, lpa), 261);
        assert_eq!(offset_of!(IdentifyController, kas), 320);
        assert_eq!(offset_of!(IdentifyController, anatt), 342);
        assert_eq!(offset_of!(IdentifyController, anacap), 343);
        assert_eq!(offset_of!(IdentifyController, anagrpmax), 344);
        assert_eq!(offset_of!(IdentifyController, nanagrpid), 348);
        assert_eq!(offset_of!(IdentifyController, sqes), 512);
        assert_eq!(offset_of!(IdentifyController, maxcmd), 514);
        assert_eq!(offset_of!(IdentifyController, nn), 516);
        assert_eq!(offset_of!(IdentifyController, oncs), 520);
        assert_eq!(offset_of!(IdentifyController, vwc), 525);
        assert_eq!(offset_of!(IdentifyController, awun), 526);
        assert_eq!(offset_of!(IdentifyController, awupf), 528);
        assert_eq!(offset_of!(IdentifyController, sgls), 536);
        assert_eq!(offset_of!(IdentifyController, mnan), 540);
        assert_eq!(offset_of!(IdentifyController, subnqn), 768);
        assert_eq!(offset_of!(IdentifyController, ioccsz), 1792);
        assert_eq!(offset_of!(IdentifyController, iorcsz), 1796);
        assert_eq!(offset_of!(IdentifyController, icdoff), 1800);
        assert_eq!(offset_of!(IdentifyController, fcatt), 1802);
        assert_eq!(offset_of!(IdentifyController, msdbd), 1803);
        assert_eq!(offset_of!(IdentifyController, psd), 2048);
        assert_eq!(offset_of!(IdentifyNamespace, nsfeat), 24);
        assert_eq!(offset_of!(IdentifyNamespace, nmic), 30);
        assert_eq!(offset_of!(IdentifyNamespace, dlfeat), 33);
        assert_eq!(offset_of!(IdentifyNamespace, nawun), 34);
        assert_eq!(offset_of!(IdentifyNamespace, nawupf), 36);
        assert_eq!(offset_of!(IdentifyNamespace, anagrpid), 92);
        assert_eq!(offset_of!(IdentifyNamespace, nguid), 104);
        assert_eq!(offset_of!(IdentifyNamespace, eui64), 120);
        assert_eq!(offset_of!(IdentifyNamespace, lbaf), 128);
        assert_eq!(offset_of!(SmartLog, temperature), 1);
        assert_eq!(offset_of!(SmartLog, avail_spare), 3);
        assert_eq!(offset_of!(SmartLog, data_units_read), 32);
        assert_eq!(offset_of!(SmartLog, data_units_written), 48);
        assert_eq!(offset_of!(SmartLog, host_reads), 64);
        assert_eq!(offset_of!(SmartLog, host_writes), 80);
        assert_eq!(offset_of!(SmartLog, power_on_hours), 128);
        assert_eq!(offset_of!(SmartLog, unsafe_shutdowns), 144);
        assert_eq!(offset_of!(AnaGroupDescriptor, state), 16);
        assert_eq!(offset_of!(DiscoveryLogEntry, trsvcid), 32);
        assert_eq!(offset_of!(DiscoveryLogEntry, subnqn), 256);
        assert_eq!(offset_of!(DiscoveryLogEntry, traddr), 512);
        assert_eq!(offset_of!(DiscoveryLogEntry, tsas), 768);
    }

    #[test]
    fn get_log_page_dwords() {
        let mut b = [0u8; 64];
        b[0] = opcode::GET_LOG_PAGE;
        b[40] = 0x0c; // lid
        b[41] = 0x01; // lsp (RGO)
        b[42..44].copy_from_slice(&0x00ffu16.to_le_bytes()); // numdl
        b[44..46].copy_from_slice(&0x0001u16.to_le_bytes()); // numdu
        b[48..52].copy_from_slice(&512u32.to_le_bytes()); // lpol
        let g = GetLogPage::from_sqe(&super::super::Sqe::parse(&b).unwrap());
        assert_eq!(
            g,
            GetLogPage {
                lid: 0x0c,
                lsp: 1,
                len: (0x1_00ff + 1) * 4,
                offset: 512
            }
        );
    }
}
