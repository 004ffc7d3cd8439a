//! Identify data, log pages and property values the controller returns.
//!
//! Offsets follow the NVMe Base 2.0 and NVMe-oF 1.1 specifications; each
//! was checked against libnvme's `struct nvme_id_ctrl`, `nvme_id_ns`,
//! `nvme_smart_log`, `nvme_ana_log`/`nvme_ana_group_desc` and
//! `nvmf_disc_log_entry` by compiling `offsetof` for every field used here
//! (see the tests, which pin the same offsets).

/// Identify and log pages are at most this long here.
pub const PAGE: usize = 4096;

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
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
    let mut b = vec![0u8; PAGE];
    // VID/SSVID 0: no PCI vendor.
    put_ascii(&mut b, 4, 20, i.serial);
    put_ascii(&mut b, 24, 40, MODEL);
    put_ascii(&mut b, 64, 8, FIRMWARE);
    b[72] = 6; // RAB
               // IEEE OUI 0 (none).
    if i.kind == ControllerType::Io {
        // CMIC: multi-controller subsystem, ANA reporting.
        b[76] = 0x02 | 0x08;
    }
    b[77] = i.mdts;
    put16(&mut b, 78, i.cntlid);
    put32(&mut b, 80, VERSION);
    if i.kind == ControllerType::Io {
        // OAES: namespace attribute notices (bit 8), ANA change notices (11).
        put32(&mut b, 92, (1 << 8) | (1 << 11));
    } else {
        // Discovery log change notices (bit 31).
        put32(&mut b, 92, 1 << 31);
    }
    b[111] = match i.kind {
        ControllerType::Io => 1,
        ControllerType::Discovery => 2,
    };
    // OACS 0: no namespace management, format, firmware download.
    b[258] = 3; // ACL: 4 concurrent aborts
    b[259] = 3; // AERL: 4 outstanding AERs
    b[260] = 0x03; // FRMW: slot 1 read-only, 1 slot
    b[261] = 0x04 | 0x02; // LPA: extended data for Get Log Page, commands supported and effects
    b[262] = 0; // ELPE: 1 error log entry
    put16(&mut b, 320, 1); // KAS: 100 ms granularity
    if i.kind == ControllerType::Io {
        b[342] = 10; // ANATT: 10 s
                     // ANACAP: optimized, non-optimized, inaccessible, persistent loss,
                     // change states; ANAGRPID does not change while attached (bit 7).
        b[343] = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x80;
        put32(&mut b, 344, 1); // ANAGRPMAX
        put32(&mut b, 348, 1); // NANAGRPID
    }
    b[512] = 0x66; // SQES: 64 bytes
    b[513] = 0x44; // CQES: 16 bytes
    put16(&mut b, 514, 128); // MAXCMD
    put32(
        &mut b,
        516,
        if i.kind == ControllerType::Io { 1 } else { 0 },
    ); // NN
    if i.kind == ControllerType::Io {
        // ONCS: DSM (bit 2), Write Zeroes (bit 3), Write Zeroes deallocate
        // is implied by DLFEAT.
        put16(&mut b, 520, (1 << 2) | (1 << 3));
        b[525] = u8::from(i.vwc); // VWC
        put16(&mut b, 526, i.awun); // AWUN
        put16(&mut b, 528, i.awun); // AWUPF
    }
    // SGLS: SGLs supported (bit 0), offset-addressed in-capsule data (20).
    put32(&mut b, 536, 1 | (1 << 20));
    put32(
        &mut b,
        540,
        if i.kind == ControllerType::Io { 1 } else { 0 },
    ); // MNAN
    put_str(&mut b, 768, 256, i.subnqn);
    // Fabrics: IOCCSZ in 16-byte units (SQE + in-capsule data), IORCSZ.
    put32(&mut b, 1792, 4 + i.inline_data / 16);
    put32(&mut b, 1796, 1);
    put16(&mut b, 1800, 0); // ICDOFF
    b[1802] = 0; // FCATT: dynamic controller model
    b[1803] = 1; // MSDBD
                 // Power state 0: max power 0, entry/exit latency 0.
    b
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
    let mut b = vec![0u8; PAGE];
    put64(&mut b, 0, n.blocks); // NSZE
    put64(&mut b, 8, n.blocks); // NCAP
    put64(&mut b, 16, n.blocks); // NUSE
                                 // NSFEAT: thin provisioning (0), NAWUN/NAWUPF/NACWU valid (1),
                                 // deallocated or unwritten logical block error... not set.
    b[24] = 0x01 | 0x02;
    b[25] = 0; // NLBAF: one format
    b[26] = 0; // FLBAS: format 0
    b[30] = 0x01; // NMIC: may be attached to several controllers
                  // DLFEAT: deallocated blocks read as zeros (001b), Write Zeroes may
                  // deallocate (bit 3).
    b[33] = 0x01 | 0x08;
    put16(&mut b, 34, n.nawun); // NAWUN
    put16(&mut b, 36, n.nawun); // NAWUPF
    put32(&mut b, 92, n.anagrpid); // ANAGRPID
    b[104..120].copy_from_slice(&n.nguid);
    b[120..128].copy_from_slice(&n.eui64);
    // LBA format 0: no metadata, LBADS = log2(block size), best
    // performance.
    b[128 + 2] = u8::try_from(n.block_size.trailing_zeros()).unwrap_or(12);
    b
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
    let mut b = vec![0u8; 512];
    put16(&mut b, 1, 273 + 25); // composite temperature, kelvin
    b[3] = 100; // available spare
    b[4] = 10; // available spare threshold
               // Data units are thousands of 512-byte units, rounded up.
    put64(&mut b, 32, data_read.div_ceil(512_000));
    put64(&mut b, 48, data_written.div_ceil(512_000));
    put64(&mut b, 64, reads);
    put64(&mut b, 80, writes);
    put64(&mut b, 128, hours);
    b
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
    let mut b = vec![0u8; 16 + 32 + if groups_only { 0 } else { 4 }];
    put64(&mut b, 0, change_count);
    put16(&mut b, 8, 1); // one group descriptor
    let d = 16;
    put32(&mut b, d, group);
    put32(&mut b, d + 4, if groups_only { 0 } else { 1 });
    put64(&mut b, d + 8, change_count);
    b[d + 16] = state;
    if !groups_only {
        put32(&mut b, d + 32, 1);
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
    let mut b = vec![0u8; 1024 * (1 + entries.len())];
    put64(&mut b, 0, generation);
    put64(&mut b, 8, entries.len() as u64);
    put16(&mut b, 16, 0); // RECFMT
    for (i, e) in entries.iter().enumerate() {
        let o = 1024 * (i + 1);
        b[o] = 3; // TRTYPE: TCP
        b[o + 1] = if e.ipv6 { 2 } else { 1 }; // ADRFAM
        b[o + 2] = e.subtype;
        b[o + 3] = 0x02; // TREQ: secure channel not required
        put16(&mut b, o + 4, e.portid);
        put16(&mut b, o + 6, 0xffff); // CNTLID: dynamic
        put16(&mut b, o + 8, 32); // ASQSZ
        put_str(&mut b, o + 32, 32, &e.trsvcid);
        put_str(&mut b, o + 256, 256, &e.subnqn);
        put_str(&mut b, o + 512, 256, &e.traddr);
        // TSAS for TCP: SECTYPE 0 (none).
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
