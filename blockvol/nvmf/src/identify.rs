//! Identify data, log pages and property values the controller returns.
//!
//! Built on the zerocopy structures of `keel_pdu::nvme::admin`, whose
//! field offsets are pinned there against libnvme's (compiled `offsetof`);
//! the tests here check the bytes that come out.

use keel_pdu::nvme::admin::{
    zeroed, AnaGroupDescriptor, AnaLogHeader, DiscoveryLogEntry, DiscoveryLogHeader,
    IdentifyController, IdentifyNamespace, SmartLog,
};
use zerocopy::IntoBytes;

/// Identify and log pages are at most this long here.
pub const PAGE: usize = 4096;

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
/// Copy an ASCII string into a space-padded field (SN, MN, FR).
fn put_ascii(b: &mut [u8], at: usize, len: usize, s: &str) {
    let f = &mut b[at..at + len];
    f.fill(b' ');
    let n = s.len().min(len);
    f[..n].copy_from_slice(&s.as_bytes()[..n]);
}
/// Copy a string into a NUL-padded field (NQNs, addresses).
fn put_str(b: &mut [u8], at: usize, len: usize, s: &str) {
    let f = &mut b[at..at + len];
    f.fill(0);
    let n = s.len().min(len - 1);
    f[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Controller kinds (CNTRLTYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerType {
    /// An I/O controller of an NVM subsystem.
    Io,
    /// A discovery controller.
    Discovery,
}

/// What Identify Controller reports.
#[derive(Debug, Clone)]
pub struct ControllerInfo<'a> {
    /// Kind.
    pub kind: ControllerType,
    /// Controller ID.
    pub cntlid: u16,
    /// Serial number (20 chars).
    pub serial: &'a str,
    /// Subsystem NQN.
    pub subnqn: &'a str,
    /// MDTS as a power of two of 4 KiB pages.
    pub mdts: u8,
    /// In-capsule data bytes accepted (IOCCSZ = 4 + this / 16).
    pub inline_data: u32,
    /// Volatile write cache present.
    pub vwc: bool,
    /// Atomic write unit (normal and power fail), blocks - 1.
    pub awun: u16,
}

/// Firmware revision string.
pub const FIRMWARE: &str = "keel0.1";
/// Model number.
pub const MODEL: &str = "keel volume";
/// NVMe version reported (1.4).
pub const VERSION: u32 = 0x0001_0400;

/// Identify Controller (CNS 01h), 4096 bytes.
pub fn controller(i: &ControllerInfo<'_>) -> Vec<u8> {
    let io = i.kind == ControllerType::Io;
    let mut c: IdentifyController = zeroed();
    // VID/SSVID 0: no PCI vendor; IEEE OUI 0.
    put_ascii(&mut c.sn, 0, 20, i.serial);
    put_ascii(&mut c.mn, 0, 40, MODEL);
    put_ascii(&mut c.fr, 0, 8, FIRMWARE);
    c.rab = 6;
    // CMIC: multi-controller subsystem, ANA reporting.
    c.cmic = if io { 0x02 | 0x08 } else { 0 };
    c.mdts = i.mdts;
    c.cntlid = i.cntlid.into();
    c.ver = VERSION.into();
    // OAES: namespace attribute (8) and ANA change (11) notices; discovery
    // controllers: discovery log change notices (31).
    c.oaes = if io { (1u32 << 8) | (1 << 11) } else { 1 << 31 }.into();
    c.cntrltype = if io { 1 } else { 2 };
    // OACS 0: no namespace management, format, firmware download.
    c.acl = 3; // 4 concurrent aborts
    c.aerl = 3; // 4 outstanding AERs
    c.frmw = 0x03; // slot 1 read-only, 1 slot
    c.lpa = 0x04 | 0x02; // extended Get Log Page data, commands supported and effects
    c.kas = 1.into(); // 100 ms granularity
    if io {
        c.anatt = 10;
        // Optimized, non-optimized, inaccessible, persistent loss, change;
        // ANAGRPID does not change while attached (bit 7).
        c.anacap = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x80;
        c.anagrpmax = 1.into();
        c.nanagrpid = 1.into();
        // ONCS: Dataset Management (2), Write Zeroes (3).
        c.oncs = ((1u16 << 2) | (1 << 3)).into();
        c.vwc = u8::from(i.vwc);
        c.awun = i.awun.into();
        c.awupf = i.awun.into();
    }
    c.sqes = 0x66;
    c.cqes = 0x44;
    c.maxcmd = 128.into();
    c.nn = u32::from(io).into();
    c.mnan = u32::from(io).into();
    // SGLs supported (0), offset-addressed in-capsule data (20).
    c.sgls = (1u32 | (1 << 20)).into();
    put_str(&mut c.subnqn, 0, 256, i.subnqn);
    // Fabrics: IOCCSZ (SQE + in-capsule data, 16-byte units), IORCSZ.
    c.ioccsz = (4 + i.inline_data / 16).into();
    c.iorcsz = 1.into();
    c.msdbd = 1;
    c.as_bytes().to_vec()
}

/// What Identify Namespace reports.
#[derive(Debug, Clone)]
pub struct NamespaceInfo {
    /// Blocks.
    pub blocks: u64,
    /// Block size (power of two).
    pub block_size: u32,
    /// NGUID (16 bytes, from the volume UUID).
    pub nguid: [u8; 16],
    /// EUI-64.
    pub eui64: [u8; 8],
    /// ANA group.
    pub anagrpid: u32,
    /// Atomic write unit in blocks - 1.
    pub nawun: u16,
}

/// Identify Namespace (CNS 00h), 4096 bytes.
pub fn namespace(n: &NamespaceInfo) -> Vec<u8> {
    let mut ns: IdentifyNamespace = zeroed();
    ns.nsze = n.blocks.into();
    ns.ncap = n.blocks.into();
    ns.nuse = n.blocks.into();
    // NSFEAT: thin provisioning (0), NAWUN/NAWUPF valid (1).
    ns.nsfeat = 0x01 | 0x02;
    ns.nlbaf = 0; // one format
    ns.flbas = 0; // format 0
    ns.nmic = 0x01; // may be attached to several controllers
                    // DLFEAT: deallocated blocks read as zeros (001b), Write Zeroes may
                    // deallocate (bit 3).
    ns.dlfeat = 0x01 | 0x08;
    ns.nawun = n.nawun.into();
    ns.nawupf = n.nawun.into();
    ns.anagrpid = n.anagrpid.into();
    ns.nguid = n.nguid;
    ns.eui64 = n.eui64;
    // LBA format 0: no metadata, LBADS = log2(block size).
    ns.lbaf[0].lbads = u8::try_from(n.block_size.trailing_zeros()).unwrap_or(12);
    ns.as_bytes().to_vec()
}

/// Namespace Identification Descriptor list (CNS 03h): NGUID, UUID, CSI.
pub fn ns_descriptors(nguid: &[u8; 16], uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; PAGE];
    let mut at = 0;
    for (kind, val) in [(2u8, &nguid[..]), (3u8, &uuid[..]), (4u8, &[0u8][..])] {
        b[at] = kind;
        b[at + 1] = u8::try_from(val.len()).unwrap_or(0);
        b[at + 4..at + 4 + val.len()].copy_from_slice(val);
        at += 4 + val.len();
    }
    b
}

/// Active namespace ID list (CNS 02h) of a subsystem with namespace 1,
/// for IDs above `after`.
pub fn active_ns_list(after: u32) -> Vec<u8> {
    let mut b = vec![0u8; PAGE];
    if after < 1 {
        put32(&mut b, 0, 1);
    }
    b
}

/// SMART / Health Information log (02h), 512 bytes.
pub fn smart(data_read: u64, data_written: u64, reads: u64, writes: u64, hours: u64) -> Vec<u8> {
    let mut l: SmartLog = zeroed();
    l.temperature = (273 + 25).into(); // kelvin
    l.avail_spare = 100;
    l.spare_thresh = 10;
    // Data units: thousands of 512-byte units, rounded up.
    l.data_units_read[0] = data_read.div_ceil(512_000).into();
    l.data_units_written[0] = data_written.div_ceil(512_000).into();
    l.host_reads[0] = reads.into();
    l.host_writes[0] = writes.into();
    l.power_on_hours[0] = hours.into();
    l.as_bytes().to_vec()
}

/// Firmware Slot Information log (03h), 512 bytes.
pub fn firmware_slots() -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0] = 1; // active slot 1
    put_ascii(&mut b, 8, 8, FIRMWARE);
    b
}

/// ANA states.
pub mod ana {
    /// Optimized.
    pub const OPTIMIZED: u8 = 0x01;
    /// Non-optimized.
    pub const NON_OPTIMIZED: u8 = 0x02;
    /// Inaccessible.
    pub const INACCESSIBLE: u8 = 0x03;
    /// Persistent loss.
    pub const PERSISTENT_LOSS: u8 = 0x04;
    /// Change.
    pub const CHANGE: u8 = 0x0f;
}

/// ANA log (0Ch) with one group holding namespace 1; `groups_only` (RGO)
/// leaves the NSID list out.
pub fn ana_log(change_count: u64, group: u32, state: u8, groups_only: bool) -> Vec<u8> {
    let h = AnaLogHeader {
        chgcnt: change_count.into(),
        ngrps: 1.into(),
        rsvd: [0; 6],
    };
    let d = AnaGroupDescriptor {
        grpid: group.into(),
        nnsids: u32::from(!groups_only).into(),
        chgcnt: change_count.into(),
        state,
        rsvd: [0; 15],
    };
    let mut b = h.as_bytes().to_vec();
    b.extend_from_slice(d.as_bytes());
    if !groups_only {
        b.extend_from_slice(&1u32.to_le_bytes());
    }
    b
}

/// Changed Namespace List log (04h): namespace 1, or empty.
pub fn changed_ns_list(changed: bool) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    if changed {
        put32(&mut b, 0, 1);
    }
    b
}

/// Commands Supported and Effects log (05h).
pub fn effects() -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    // Admin: Get Log Page 02, Identify 06, Abort 08, Set/Get Features
    // 09/0A, AER 0C, Keep Alive 18; CSUPP bit 0.
    for op in [0x02usize, 0x06, 0x08, 0x09, 0x0a, 0x0c, 0x18] {
        put32(&mut b, op * 4, 1);
    }
    // I/O at 1024: Flush 00, Write 01 (LBCC bit 1), Read 02, Write Zeroes
    // 08 (LBCC), DSM 09 (LBCC).
    for (op, e) in [
        (0x00usize, 1u32),
        (0x01, 3),
        (0x02, 1),
        (0x08, 3),
        (0x09, 3),
    ] {
        put32(&mut b, 1024 + op * 4, e);
    }
    b
}

/// One discovery log entry.
#[derive(Debug, Clone)]
pub struct DiscoveryEntry {
    /// Subsystem type: 2 NVM subsystem, 3 current discovery subsystem.
    pub subtype: u8,
    /// Port ID.
    pub portid: u16,
    /// Transport service id (TCP port).
    pub trsvcid: String,
    /// Transport address.
    pub traddr: String,
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// Subsystem NQN.
    pub subnqn: String,
}

/// Discovery log page (70h): 1024-byte header, 1024-byte entries.
pub fn discovery_log(generation: u64, entries: &[DiscoveryEntry]) -> Vec<u8> {
    let mut h: DiscoveryLogHeader = zeroed();
    h.genctr = generation.into();
    h.numrec = (entries.len() as u64).into();
    let mut b = h.as_bytes().to_vec();
    for e in entries {
        let mut d: DiscoveryLogEntry = zeroed();
        d.trtype = 3; // TCP
        d.adrfam = if e.ipv6 { 2 } else { 1 };
        d.subtype = e.subtype;
        d.treq = 0x02; // secure channel not required
        d.portid = e.portid.into();
        d.cntlid = 0xffff.into(); // dynamic
        d.asqsz = 32.into();
        put_str(&mut d.trsvcid, 0, 32, &e.trsvcid);
        put_str(&mut d.subnqn, 0, 256, &e.subnqn);
        put_str(&mut d.traddr, 0, 256, &e.traddr);
        // TSAS for TCP: SECTYPE 0 (none).
        b.extend_from_slice(d.as_bytes());
    }
    b
}

/// Controller properties.
pub mod prop {
    /// Capabilities (8 bytes).
    pub const CAP: u32 = 0x00;
    /// Version.
    pub const VS: u32 = 0x08;
    /// Controller configuration.
    pub const CC: u32 = 0x14;
    /// Controller status.
    pub const CSTS: u32 = 0x1c;
    /// NVM subsystem reset.
    pub const NSSR: u32 = 0x20;

    /// CAP: MQES (0-based queue size), CQR, TO (500 ms units), CSS NVM,
    /// MPSMIN/MPSMAX 4 KiB.
    pub fn cap(mqes: u16) -> u64 {
        u64::from(mqes) | (1 << 16) | (30 << 24) | (1 << 37)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_fields_at_their_offsets() {
        let b = controller(&ControllerInfo {
            kind: ControllerType::Io,
            cntlid: 7,
            serial: "abc",
            subnqn: "nqn.2026-11.io.keel:v",
            mdts: 8,
            inline_data: 8192,
            vwc: true,
            awun: 63,
        });
        assert_eq!(b.len(), 4096);
        assert_eq!(&b[4..8], b"abc ");
        assert_eq!(b[77], 8);
        assert_eq!(u16::from_le_bytes([b[78], b[79]]), 7);
        assert_eq!(u32::from_le_bytes([b[80], b[81], b[82], b[83]]), VERSION);
        assert_eq!(b[111], 1);
        assert_eq!((b[512], b[513]), (0x66, 0x44));
        assert_eq!(u32::from_le_bytes([b[516], b[517], b[518], b[519]]), 1);
        assert_eq!(&b[768..768 + 21], b"nqn.2026-11.io.keel:v");
        assert_eq!(b[768 + 21], 0);
        assert_eq!(
            u32::from_le_bytes([b[1792], b[1793], b[1794], b[1795]]),
            4 + 512
        );
    }

    #[test]
    fn namespace_and_logs() {
        let n = namespace(&NamespaceInfo {
            blocks: 1000,
            block_size: 4096,
            nguid: [1; 16],
            eui64: [2; 8],
            anagrpid: 1,
            nawun: 0,
        });
        assert_eq!(u64::from_le_bytes(n[0..8].try_into().unwrap()), 1000);
        assert_eq!(n[130], 12);
        assert_eq!(&n[104..120], &[1; 16]);
        let a = ana_log(5, 1, ana::OPTIMIZED, false);
        assert_eq!(a.len(), 52);
        assert_eq!(a[32], ana::OPTIMIZED);
        assert_eq!(u32::from_le_bytes(a[48..52].try_into().unwrap()), 1);
        let d = discovery_log(
            3,
            &[DiscoveryEntry {
                subtype: 2,
                portid: 1,
                trsvcid: "4420".into(),
                traddr: "127.0.0.1".into(),
                ipv6: false,
                subnqn: "nqn.x".into(),
            }],
        );
        assert_eq!(d.len(), 2048);
        assert_eq!(u64::from_le_bytes(d[8..16].try_into().unwrap()), 1);
        assert_eq!(&d[1024 + 32..1024 + 36], b"4420");
        assert_eq!(&d[1024 + 512..1024 + 521], b"127.0.0.1");
        assert_eq!(&d[1024 + 256..1024 + 261], b"nqn.x");
    }
}
