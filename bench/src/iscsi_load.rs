//! A pipelined iSCSI load generator on `keel-pdu`: one session, one
//! connection, QD commands in flight, 4 KiB (or larger) random READ(10) or
//! WRITE(10) with the data sent as immediate data when the session allows
//! it (R2T and Data-Out otherwise).
//!
//! Why our own: Debian's fio has no libiscsi engine, `iscsi-perf` only
//! reads, and the write clients that do exist here (fio through
//! qemu-storage-daemon and NBD, `qemu-img bench`) saturate below either
//! target: they measured the same write IOPS for keel and tgt. This client
//! costs about one `read` and one `write` system call per batch of
//! completions, and treats every target the same: it negotiates with the
//! standard keys and honours MaxCmdSN, R2T and NOP-In.

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use keel_pdu::iscsi::text::{parse_pairs, push_pair};
use keel_pdu::iscsi::{
    body_len, padded_len, parse, DataOut, Login, Nop, Pdu, RawBhs, ScsiCommand, BHS_LEN,
};

use crate::targets::{cpu_seconds, Measure};

/// One logged-in session.
pub struct Session {
    rd: BufReader<TcpStream>,
    wr: TcpStream,
    out: Vec<u8>,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    itt: u32,
    /// The target's MaxRecvDataSegmentLength.
    target_mrdsl: usize,
    immediate: bool,
    first_burst: usize,
}

/// A received PDU.
struct Got {
    pdu: Pdu,
    data: Vec<u8>,
}

/// Serial-number "a <= b" (RFC 1982, 32 bits).
fn sn_le(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < 1 << 31
}

impl Session {
    /// Connect to `addr` and log in to `target` (no authentication).
    pub fn login(addr: SocketAddr, target: &str) -> Result<Session> {
        let sock = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut s = Session {
            rd: BufReader::with_capacity(1 << 20, sock.try_clone()?),
            wr: sock,
            out: Vec::with_capacity(1 << 20),
            cmd_sn: 1,
            exp_stat_sn: 0,
            max_cmd_sn: 1,
            itt: 0,
            target_mrdsl: 8192,
            immediate: false,
            first_burst: 0,
        };
        let mut isid = [0x80u8, 0, 0, 0, 0, 0];
        isid[2..].copy_from_slice(&rand::random::<u32>().to_be_bytes());
        let mut keys = Vec::new();
        push_pair(&mut keys, "InitiatorName", "iqn.2026-11.io.keel.bench:load");
        push_pair(&mut keys, "SessionType", "Normal");
        push_pair(&mut keys, "TargetName", target);
        push_pair(&mut keys, "AuthMethod", "None");
        let req = Login {
            transit: true,
            csg: 0,
            nsg: 1,
            isid,
            itt: 0,
            sn: s.cmd_sn,
            exp_sn: 0,
            data_len: keys.len(),
            ..Login::default()
        };
        s.login_step(&req, &keys)?;
        let mut ops = Vec::new();
        for (k, v) in [
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxRecvDataSegmentLength", "262144"),
            ("MaxBurstLength", "1048576"),
            ("FirstBurstLength", "262144"),
            ("MaxOutstandingR2T", "1"),
            ("ErrorRecoveryLevel", "0"),
        ] {
            push_pair(&mut ops, k, v);
        }
        let req = Login {
            transit: true,
            csg: 1,
            nsg: 3,
            isid,
            itt: 0,
            sn: s.cmd_sn,
            exp_sn: s.exp_stat_sn,
            data_len: ops.len(),
            ..Login::default()
        };
        let text = s.login_step(&req, &ops)?;
        let pairs = parse_pairs(&text).map_err(|e| anyhow::anyhow!("login keys: {e}"))?;
        let get = |k: &str| pairs.iter().find(|(a, _)| *a == k).map(|p| p.1.to_owned());
        s.target_mrdsl = get("MaxRecvDataSegmentLength")
            .and_then(|v| v.parse().ok())
            .unwrap_or(8192);
        // Declarative and negotiated keys default to the RFC's values when
        // the target does not answer them.
        s.immediate = get("ImmediateData").is_none_or(|v| v == "Yes");
        s.first_burst = get("FirstBurstLength")
            .and_then(|v| v.parse().ok())
            .unwrap_or(65536);
        Ok(s)
    }

    fn login_step(&mut self, req: &Login, data: &[u8]) -> Result<Vec<u8>> {
        self.queue(&req.encode(true), data);
        self.flush()?;
        let r = self.recv()?;
        let Pdu::LoginResponse(l) = r.pdu else {
            bail!("not a login response: {:?}", r.pdu);
        };
        if l.status_class != 0 {
            bail!("login refused: {}/{}", l.status_class, l.status_detail);
        }
        self.exp_stat_sn = l.sn.wrapping_add(1);
        self.max_cmd_sn = l.max_cmd_sn;
        Ok(r.data)
    }

    fn queue(&mut self, bhs: &RawBhs, data: &[u8]) {
        self.out.extend_from_slice(&bhs.to_bytes());
        self.out.extend_from_slice(data);
        let pad = padded_len(data.len()) - data.len();
        self.out.extend(std::iter::repeat_n(0u8, pad));
    }

    fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.wr.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<Got> {
        let mut h = [0u8; BHS_LEN];
        self.rd.read_exact(&mut h)?;
        let (bhs, pdu) = parse(&h).map_err(|e| anyhow::anyhow!("bad PDU from target: {e}"))?;
        let mut body = vec![0u8; body_len(&bhs, false, false)];
        self.rd.read_exact(&mut body)?;
        let ahs = bhs.ahs_len();
        body.truncate(ahs + bhs.data_len());
        body.drain(..ahs);
        Ok(Got { pdu, data: body })
    }

    /// TEST UNIT READY until it succeeds: a target reports a unit attention
    /// (power on, reset) on the first command of a new nexus.
    fn clear_unit_attention(&mut self, lun: u64) -> Result<()> {
        for _ in 0..8 {
            self.itt = self.itt.wrapping_add(1);
            let cmd = ScsiCommand {
                immediate: false,
                final_bit: true,
                read: false,
                write: false,
                attr: 1,
                ahs_len: 0,
                data_len: 0,
                lun,
                itt: self.itt,
                expected_len: 0,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                cdb: [0u8; 16],
            };
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
            self.queue(&cmd.encode(), &[]);
            self.flush()?;
            loop {
                let g = self.recv()?;
                if let Pdu::ScsiResponse(r) = g.pdu {
                    self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                    self.max_cmd_sn = r.max_cmd_sn;
                    if r.status == 0 {
                        return Ok(());
                    }
                    break;
                }
            }
        }
        bail!("TEST UNIT READY keeps failing on LUN {lun:#x}")
    }

    fn window_open(&self) -> bool {
        sn_le(self.cmd_sn, self.max_cmd_sn)
    }

    /// Queue a READ(10) or WRITE(10) of `data.len()` bytes (write) or
    /// `read_len` bytes at `lba` on `lun`; returns its task tag.
    fn command(&mut self, lun: u64, lba: u64, write: Option<&[u8]>, read_len: u32, bs: u32) -> u32 {
        self.itt = self.itt.wrapping_add(1);
        let itt = self.itt;
        let len = write.map_or(read_len, |d| u32::try_from(d.len()).unwrap_or(0));
        let blocks = u16::try_from(len / bs).unwrap_or(u16::MAX);
        let mut cdb = [0u8; 16];
        cdb[0] = if write.is_some() { 0x2a } else { 0x28 };
        cdb[2..6].copy_from_slice(&u32::try_from(lba).unwrap_or(u32::MAX).to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let imm = match write {
            Some(d) if self.immediate => d.len().min(self.first_burst).min(self.target_mrdsl),
            _ => 0,
        };
        let cmd = ScsiCommand {
            immediate: false,
            final_bit: true,
            read: write.is_none(),
            write: write.is_some(),
            attr: 1,
            ahs_len: 0,
            data_len: imm,
            lun,
            itt,
            expected_len: len,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb,
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let bhs = cmd.encode();
        self.queue(&bhs, write.map_or(&[][..], |d| &d[..imm]));
        itt
    }
}

/// A workload.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Writes (else reads).
    pub write: bool,
    /// Bytes per I/O.
    pub size: u32,
    /// Commands in flight.
    pub qd: usize,
}

/// Where to send the load.
#[derive(Clone, Debug)]
pub struct Lun<'a> {
    /// Portal.
    pub addr: SocketAddr,
    /// Target IQN.
    pub target: &'a str,
    /// The 8-byte LUN field (LUN 1 in single-level addressing: `1 << 48`).
    pub lun: u64,
    /// Logical block size.
    pub block_size: u32,
    /// The target's process (for CPU per I/O; 0: none).
    pub pid: u32,
}

/// Run `w` for `seconds` against `t` over the first `region` bytes of the
/// LUN.
pub fn run(t: &Lun<'_>, region: u64, w: Workload, seconds: f64) -> Result<Measure> {
    use rand::Rng;
    let (addr, target, lun, bs, pid) = (t.addr, t.target, t.lun, t.block_size, t.pid);
    let mut s = Session::login(addr, target)?;
    s.clear_unit_attention(lun)?;
    let data = vec![0xa5u8; w.size as usize];
    let blocks_per_io = u64::from(w.size / bs);
    let slots = region / u64::from(w.size);
    let mut rng = rand::rngs::ThreadRng::default();
    let mut inflight: HashMap<u32, Instant> = HashMap::with_capacity(w.qd * 2);
    let mut lat: Vec<u64> = Vec::with_capacity(1 << 20);
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(seconds);
    let mut ios = 0u64;
    let submit =
        |s: &mut Session, inflight: &mut HashMap<u32, Instant>, rng: &mut rand::rngs::ThreadRng| {
            let lba = rng.gen_range(0..slots) * blocks_per_io;
            let itt = if w.write {
                s.command(lun, lba, Some(&data), 0, bs)
            } else {
                s.command(lun, lba, None, w.size, bs)
            };
            inflight.insert(itt, Instant::now());
        };
    while inflight.len() < w.qd && s.window_open() {
        submit(&mut s, &mut inflight, &mut rng);
    }
    s.flush()?;
    while !inflight.is_empty() {
        let g = s.recv()?;
        let done = match g.pdu {
            Pdu::ScsiResponse(r) => {
                s.exp_stat_sn = r.stat_sn.wrapping_add(1);
                s.max_cmd_sn = r.max_cmd_sn;
                if r.status != 0 {
                    bail!("target answered status {:#x}", r.status);
                }
                Some(r.itt)
            }
            Pdu::DataIn(d) => {
                s.max_cmd_sn = d.max_cmd_sn;
                if let Some(st) = d.status {
                    s.exp_stat_sn = d.stat_sn.wrapping_add(1);
                    if st != 0 {
                        bail!("target answered status {st:#x}");
                    }
                    Some(d.itt)
                } else {
                    None
                }
            }
            Pdu::R2t(t) => {
                s.max_cmd_sn = t.max_cmd_sn;
                let mut off = t.buffer_offset as usize;
                let stop = off + t.desired_len as usize;
                let mut sn = 0;
                while off < stop {
                    let n = (stop - off).min(s.target_mrdsl);
                    let d = DataOut {
                        final_bit: off + n == stop,
                        data_len: n,
                        lun,
                        itt: t.itt,
                        ttt: t.ttt,
                        exp_stat_sn: s.exp_stat_sn,
                        data_sn: sn,
                        buffer_offset: u32::try_from(off).unwrap_or(0),
                    };
                    s.queue(&d.encode(), &data[off..off + n]);
                    off += n;
                    sn += 1;
                }
                None
            }
            Pdu::NopIn(n) if n.itt == 0xffff_ffff => {
                let a = Nop {
                    immediate: true,
                    itt: 0xffff_ffff,
                    ttt: n.ttt,
                    sn: s.cmd_sn,
                    exp_sn: s.exp_stat_sn,
                    ..Nop::default()
                };
                s.queue(&a.encode(true), &[]);
                None
            }
            Pdu::NopIn(_) => None,
            other => bail!("unexpected PDU {other:?}"),
        };
        let _ = g.data;
        if let Some(itt) = done {
            if let Some(t) = inflight.remove(&itt) {
                lat.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                ios += 1;
            }
            if Instant::now() < end {
                while inflight.len() < w.qd && s.window_open() {
                    submit(&mut s, &mut inflight, &mut rng);
                }
            }
        }
        // Send once nothing more is waiting in the receive buffer: one
        // write for a whole batch of completions.
        if s.rd.buffer().is_empty() || inflight.is_empty() {
            s.flush()?;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    lat.sort_unstable();
    let pct = |permille: usize| {
        lat.get(lat.len().saturating_sub(1) * permille / 1000)
            .map_or(0.0, |&v| v as f64 / 1000.0)
    };
    Ok(Measure {
        iops: ios as f64 / secs,
        p50_us: pct(500),
        p99_us: pct(990),
        cpu_us_per_io: cpu / (ios.max(1) as f64) * 1e6,
        max_us: lat.last().map_or(0.0, |&v| v as f64 / 1000.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_number_window() {
        assert!(sn_le(5, 5));
        assert!(sn_le(5, 6));
        assert!(!sn_le(6, 5));
        assert!(sn_le(u32::MAX, 1));
        assert!(!sn_le(1, u32::MAX));
    }
}
