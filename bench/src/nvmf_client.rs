//! A userspace NVMe/TCP host on `keel-pdu`: the load generator of the
//! NVMe/TCP benchmarks and the client the tests use for protocol edge cases
//! the Linux host never sends. Blocking sockets, one queue per
//! [`Queue`]; several commands may be in flight on a queue
//! ([`Queue::submit`] / [`Queue::reap`]).

// PDU fields are bounded by the protocol (header lengths < 256, data
// lengths < 4 GiB) before they are narrowed.
#![allow(clippy::cast_possible_truncation)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use keel_pdu::iscsi::digest::{crc32c, to_wire};
use keel_pdu::nvme::{PduType, Status, CH_LEN, DATA_HLEN, FLAG_LAST_PDU, IC_LEN};

/// The discovery subsystem NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// A received PDU: type, flags, header bytes (without digest), data.
#[derive(Debug, Clone)]
pub struct Pdu {
    /// PDU type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Header.
    pub header: Vec<u8>,
    /// Data.
    pub data: Vec<u8>,
}

/// A completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Command identifier.
    pub cid: u16,
    /// Dword 0.
    pub dw0: u32,
    /// Dword 1.
    pub dw1: u32,
    /// Status.
    pub status: Status,
}

/// One queue (one TCP connection).
pub struct Queue {
    sock: TcpStream,
    /// Buffered reads of the same socket (one recv for many PDUs).
    rd: std::io::BufReader<TcpStream>,
    /// Header digests on.
    pub hd: bool,
    /// Data digests on.
    pub dd: bool,
    /// The controller's MAXH2CDATA.
    pub max_h2c: usize,
    next_cid: u16,
    /// In-capsule data the controller accepts.
    pub inline: usize,
    /// Data-out waiting for an R2T, by CID.
    pending_out: HashMap<u16, Vec<u8>>,
    /// Data-in received so far, by CID.
    data_in: HashMap<u16, Vec<u8>>,
    /// Completions carried by a C2HData SUCCESS flag count as these.
    pub qid: u16,
    /// Corked: PDUs collect in `out` and go in one write when the next
    /// receive would block (see [`Queue::set_cork`]).
    corked: bool,
    out: Vec<u8>,
    /// Tests: each PDU leaves in irregular pieces with short pauses, so
    /// the target sees headers long before their data.
    pub trickle: bool,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Queue {
    /// Connect and exchange ICReq/ICResp.
    pub fn connect(addr: SocketAddr, hd: bool, dd: bool) -> std::io::Result<Queue> {
        let sock = TcpStream::connect(addr)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let rd = std::io::BufReader::with_capacity(256 << 10, sock.try_clone()?);
        let mut q = Queue {
            sock,
            rd,
            hd,
            dd,
            max_h2c: 0,
            next_cid: 0,
            inline: 8192,
            pending_out: HashMap::new(),
            data_in: HashMap::new(),
            qid: 0,
            corked: false,
            out: Vec::new(),
            trickle: false,
        };
        let mut ic = vec![0u8; IC_LEN];
        ic[0] = PduType::IcReq.value();
        ic[2] = IC_LEN as u8;
        ic[4..8].copy_from_slice(&(IC_LEN as u32).to_le_bytes());
        ic[11] = u8::from(hd) | (u8::from(dd) << 1);
        ic[12..16].copy_from_slice(&3u32.to_le_bytes()); // MAXR2T 0-based
        q.sock.write_all(&ic)?;
        let r = q.recv_raw(false)?;
        if r.kind != PduType::IcResp.value() {
            return Err(std::io::Error::other(format!(
                "expected ICResp, got type {:#x}",
                r.kind
            )));
        }
        q.max_h2c = le32(&r.header, 12) as usize;
        Ok(q)
    }

    /// Cork the queue: submitted PDUs are buffered and sent in one write
    /// once nothing more is waiting to be received (a load generator then
    /// costs one write per batch of completions, as a real host's queue
    /// does). Uncorking sends what is buffered.
    pub fn set_cork(&mut self, on: bool) -> std::io::Result<()> {
        self.corked = on;
        if !on {
            self.flush_out()?;
        }
        Ok(())
    }

    fn flush_out(&mut self) -> std::io::Result<()> {
        if self.trickle {
            const SIZES: [usize; 6] = [24, 1, 7, 1000, 40_000, 65_536];
            let mut at = 0;
            for n in SIZES.iter().cycle() {
                if at == self.out.len() {
                    break;
                }
                let n = (*n).min(self.out.len() - at);
                self.sock.write_all(&self.out[at..at + n])?;
                at += n;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            self.out.clear();
        }
        if !self.out.is_empty() {
            self.sock.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// The socket, for raw bytes.
    pub fn socket(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// Send a PDU built from a header (common header filled in here) and
    /// data.
    pub fn send_pdu(
        &mut self,
        kind: PduType,
        mut header: Vec<u8>,
        data: &[u8],
        flags: u8,
    ) -> std::io::Result<()> {
        let hlen = header.len();
        let hd = if self.hd { 4 } else { 0 };
        let dd = if self.dd && !data.is_empty() { 4 } else { 0 };
        header[0] = kind.value();
        header[1] = flags | if self.hd { 0x01 } else { 0 } | if dd > 0 { 0x02 } else { 0 };
        header[2] = hlen as u8;
        header[3] = if data.is_empty() {
            0
        } else {
            (hlen + hd) as u8
        };
        let plen = (hlen + hd + data.len() + dd) as u32;
        header[4..8].copy_from_slice(&plen.to_le_bytes());
        let mut v = std::mem::take(&mut self.out);
        v.extend_from_slice(&header);
        if self.hd {
            v.extend_from_slice(&to_wire(crc32c(&header)));
        }
        v.extend_from_slice(data);
        if dd > 0 {
            v.extend_from_slice(&to_wire(crc32c(data)));
        }
        self.out = v;
        if self.corked {
            Ok(())
        } else {
            self.flush_out()
        }
    }

    fn recv_raw(&mut self, digests: bool) -> std::io::Result<Pdu> {
        if self.rd.buffer().is_empty() {
            // About to block on the socket: what is corked goes first.
            self.flush_out()?;
        }
        let mut ch = [0u8; CH_LEN];
        self.rd.read_exact(&mut ch)?;
        let plen = le32(&ch, 4) as usize;
        if !(CH_LEN..=(16 << 20)).contains(&plen) {
            return Err(std::io::Error::other(format!("bad PLEN {plen}")));
        }
        let hlen = usize::from(ch[2]).clamp(CH_LEN, plen);
        let pdo = usize::from(ch[3]);
        let dd = digests && self.dd && ch[1] & 0x02 != 0;
        let end = if dd { plen - 4 } else { plen };
        // The header (and header digest, padding) up to the data offset,
        // then the data straight into its own buffer: no copy of the whole
        // PDU.
        let data_at = if pdo >= hlen && pdo <= end { pdo } else { end };
        let mut header = vec![0u8; data_at];
        header[..CH_LEN].copy_from_slice(&ch);
        self.rd.read_exact(&mut header[CH_LEN..])?;
        header.truncate(hlen);
        let mut data = vec![0u8; end - data_at];
        self.rd.read_exact(&mut data)?;
        if plen > end {
            let mut digest = [0u8; 4];
            self.rd.read_exact(&mut digest[..plen - end])?;
        }
        if data_at == end {
            data.clear();
        }
        Ok(Pdu {
            kind: ch[0],
            flags: ch[1],
            header,
            data,
        })
    }

    /// Receive one PDU.
    pub fn recv(&mut self) -> std::io::Result<Pdu> {
        self.recv_raw(true)
    }

    fn cid(&mut self) -> u16 {
        self.next_cid = self.next_cid.wrapping_add(1);
        self.next_cid
    }

    /// Submit a command (64-byte SQE with the CID filled in here); `data`
    /// goes in-capsule when it fits, else on R2T. Returns the CID.
    pub fn submit(&mut self, mut sqe: [u8; 64], data: &[u8]) -> std::io::Result<u16> {
        let cid = self.cid();
        sqe[2..4].copy_from_slice(&cid.to_le_bytes());
        let in_capsule = !data.is_empty() && data.len() <= self.inline;
        if !data.is_empty() {
            // SGL: in-capsule offset descriptor, or transport data block.
            sqe[24..32].fill(0);
            sqe[32..36].copy_from_slice(&(data.len() as u32).to_le_bytes());
            sqe[39] = if in_capsule { 0x01 } else { 0x5a };
        }
        let mut h = vec![0u8; CH_LEN + 64];
        h[CH_LEN..].copy_from_slice(&sqe);
        if in_capsule {
            self.send_pdu(PduType::CapsuleCmd, h, data, 0)?;
        } else {
            if !data.is_empty() {
                self.pending_out.insert(cid, data.to_vec());
            }
            self.send_pdu(PduType::CapsuleCmd, h, &[], 0)?;
        }
        Ok(cid)
    }

    /// Wait for the next completion, answering R2Ts and collecting data-in
    /// on the way.
    pub fn reap(&mut self) -> std::io::Result<(Completion, Vec<u8>)> {
        loop {
            let p = self.recv()?;
            match PduType::from(p.kind) {
                PduType::CapsuleResp => {
                    let c = &p.header[CH_LEN..CH_LEN + 16];
                    let cid = u16::from_le_bytes([c[12], c[13]]);
                    let status = Status::from_word(u16::from_le_bytes([c[14], c[15]]));
                    self.pending_out.remove(&cid);
                    let data = self.data_in.remove(&cid).unwrap_or_default();
                    return Ok((
                        Completion {
                            cid,
                            dw0: le32(c, 0),
                            dw1: le32(c, 4),
                            status,
                        },
                        data,
                    ));
                }
                PduType::C2hData => {
                    let cid = u16::from_le_bytes([p.header[8], p.header[9]]);
                    let off = le32(&p.header, 12) as usize;
                    if off == 0 && p.flags & 0x08 != 0 && !self.data_in.contains_key(&cid) {
                        // The whole transfer in one PDU with SUCCESS: its
                        // data is the result.
                        return Ok((
                            Completion {
                                cid,
                                dw0: 0,
                                dw1: 0,
                                status: Status::SUCCESS,
                            },
                            p.data,
                        ));
                    }
                    let buf = self.data_in.entry(cid).or_default();
                    if buf.len() < off + p.data.len() {
                        buf.resize(off + p.data.len(), 0);
                    }
                    buf[off..off + p.data.len()].copy_from_slice(&p.data);
                    if p.flags & 0x08 != 0 {
                        let data = self.data_in.remove(&cid).unwrap_or_default();
                        return Ok((
                            Completion {
                                cid,
                                dw0: 0,
                                dw1: 0,
                                status: Status::SUCCESS,
                            },
                            data,
                        ));
                    }
                }
                PduType::R2t => {
                    let cid = u16::from_le_bytes([p.header[8], p.header[9]]);
                    let ttag = u16::from_le_bytes([p.header[10], p.header[11]]);
                    let off = le32(&p.header, 12) as usize;
                    let len = le32(&p.header, 16) as usize;
                    let data = self.pending_out.get(&cid).cloned().unwrap_or_default();
                    let end = (off + len).min(data.len());
                    let mut at = off;
                    let max = self.max_h2c.max(4096);
                    while at < end {
                        let n = (end - at).min(max);
                        let mut h = vec![0u8; DATA_HLEN];
                        h[8..10].copy_from_slice(&cid.to_le_bytes());
                        h[10..12].copy_from_slice(&ttag.to_le_bytes());
                        h[12..16].copy_from_slice(&(at as u32).to_le_bytes());
                        h[16..20].copy_from_slice(&(n as u32).to_le_bytes());
                        let flags = if at + n == end { FLAG_LAST_PDU } else { 0 };
                        self.send_pdu(PduType::H2cData, h, &data[at..at + n], flags)?;
                        at += n;
                    }
                }
                PduType::C2hTermReq => {
                    return Err(std::io::Error::other(format!(
                        "C2HTermReq FES {:#x}",
                        u16::from_le_bytes([p.header[8], p.header[9]])
                    )));
                }
                other => return Err(std::io::Error::other(format!("unexpected PDU {other:?}"))),
            }
        }
    }

    /// Submit and wait for that command.
    pub fn execute(
        &mut self,
        sqe: [u8; 64],
        data: &[u8],
    ) -> std::io::Result<(Completion, Vec<u8>)> {
        let cid = self.submit(sqe, data)?;
        loop {
            let (c, d) = self.reap()?;
            if c.cid == cid {
                return Ok((c, d));
            }
        }
    }

    /// Fabrics Connect for queue `qid` (0: admin; a new controller).
    pub fn fabric_connect(
        &mut self,
        qid: u16,
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
        kato_ms: u32,
    ) -> std::io::Result<Completion> {
        let mut sqe = [0u8; 64];
        sqe[0] = 0x7f;
        sqe[4] = 0x01;
        sqe[42..44].copy_from_slice(&qid.to_le_bytes());
        sqe[44..46].copy_from_slice(&(if qid == 0 { 31u16 } else { 127 }).to_le_bytes());
        sqe[46] = 0x04; // disable SQ flow control
        sqe[48..52].copy_from_slice(&kato_ms.to_le_bytes());
        let mut d = vec![0u8; 1024];
        d[0..16].copy_from_slice(&[0x6b; 16]);
        d[16..18].copy_from_slice(&cntlid.to_le_bytes());
        d[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
        d[512..512 + hostnqn.len()].copy_from_slice(hostnqn.as_bytes());
        let (c, _) = self.execute(sqe, &d)?;
        if c.status == Status::SUCCESS {
            self.qid = qid;
        }
        Ok(c)
    }

    /// Property Get (`size8`: 8 bytes).
    pub fn property_get(&mut self, offset: u32, size8: bool) -> std::io::Result<(Completion, u64)> {
        let mut sqe = [0u8; 64];
        sqe[0] = 0x7f;
        sqe[4] = 0x04;
        sqe[40] = u8::from(size8);
        sqe[44..48].copy_from_slice(&offset.to_le_bytes());
        let (c, _) = self.execute(sqe, &[])?;
        Ok((c, u64::from(c.dw0) | (u64::from(c.dw1) << 32)))
    }

    /// Property Set (4 bytes).
    pub fn property_set(&mut self, offset: u32, value: u32) -> std::io::Result<Completion> {
        let mut sqe = [0u8; 64];
        sqe[0] = 0x7f;
        sqe[4] = 0x00;
        sqe[44..48].copy_from_slice(&offset.to_le_bytes());
        sqe[48..52].copy_from_slice(&value.to_le_bytes());
        Ok(self.execute(sqe, &[])?.0)
    }

    /// Admin queue setup: Connect, CC.EN=1, wait for CSTS.RDY. Returns
    /// the controller ID.
    pub fn admin(
        addr: SocketAddr,
        subnqn: &str,
        hostnqn: &str,
        kato_ms: u32,
        digests: bool,
    ) -> std::io::Result<(Queue, u16)> {
        let mut q = Queue::connect(addr, digests, digests)?;
        let c = q.fabric_connect(0, 0xffff, subnqn, hostnqn, kato_ms)?;
        if c.status != Status::SUCCESS {
            return Err(std::io::Error::other(format!("connect: {:?}", c.status)));
        }
        let cntlid = (c.dw0 & 0xffff) as u16;
        // CC: EN, IOSQES 6, IOCQES 4.
        q.property_set(0x14, 1 | (6 << 16) | (4 << 20))?;
        for _ in 0..100 {
            let (_, csts) = q.property_get(0x1c, false)?;
            if csts & 1 != 0 {
                return Ok((q, cntlid));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(std::io::Error::other("controller never became ready"))
    }

    /// An I/O queue of controller `cntlid`.
    pub fn io(
        addr: SocketAddr,
        cntlid: u16,
        qid: u16,
        subnqn: &str,
        hostnqn: &str,
        digests: bool,
    ) -> std::io::Result<Queue> {
        let mut q = Queue::connect(addr, digests, digests)?;
        let c = q.fabric_connect(qid, cntlid, subnqn, hostnqn, 0)?;
        if c.status != Status::SUCCESS {
            return Err(std::io::Error::other(format!(
                "I/O connect: {:?}",
                c.status
            )));
        }
        q.inline = 16 << 10;
        Ok(q)
    }

    /// Read / Write SQE.
    pub fn rw_sqe(write: bool, lba: u64, blocks: u32, fua: bool) -> [u8; 64] {
        let mut s = [0u8; 64];
        s[0] = if write { 0x01 } else { 0x02 };
        s[1] = 0x40; // PSDT: SGL
        s[4..8].copy_from_slice(&1u32.to_le_bytes());
        s[40..48].copy_from_slice(&lba.to_le_bytes());
        let mut dw12 = (blocks - 1) & 0xffff;
        if fua {
            dw12 |= 1 << 30;
        }
        s[48..52].copy_from_slice(&dw12.to_le_bytes());
        s
    }

    /// Read `blocks` at `lba` (data-in length set in the SGL).
    pub fn read(
        &mut self,
        lba: u64,
        blocks: u32,
        block_size: u32,
    ) -> std::io::Result<(Completion, Vec<u8>)> {
        let mut s = Self::rw_sqe(false, lba, blocks, false);
        s[32..36].copy_from_slice(&(blocks * block_size).to_le_bytes());
        s[39] = 0x5a;
        self.execute(s, &[])
    }

    /// Write `data` at `lba`.
    pub fn write(
        &mut self,
        lba: u64,
        data: &[u8],
        block_size: u32,
        fua: bool,
    ) -> std::io::Result<Completion> {
        let blocks = (data.len() / block_size as usize) as u32;
        Ok(self.execute(Self::rw_sqe(true, lba, blocks, fua), data)?.0)
    }
}
