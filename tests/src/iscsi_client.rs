//! A small blocking iSCSI initiator on `keel-pdu`, for the protocol edge
//! cases real initiators never send (hostile input, broken sequences) and
//! for tests that need exact control over PDUs. Real-initiator coverage
//! comes from libiscsi, QEMU and Linux open-iscsi.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use keel_pdu::iscsi::digest::{crc32c, to_wire};
use keel_pdu::iscsi::text::{parse_pairs, push_pair};
use keel_pdu::iscsi::{
    body_len, padded_len, parse, DataOut, Login, LogoutRequest, Nop, Pdu, RawBhs, ScsiCommand,
    TaskMgmtRequest, BHS_LEN,
};

/// A received PDU.
#[derive(Debug, Clone)]
pub struct Received {
    /// Header.
    pub bhs: RawBhs,
    /// Decoded header.
    pub pdu: Pdu,
    /// Data segment.
    pub data: Vec<u8>,
}

/// Result of a SCSI command.
#[derive(Debug, Clone, Default)]
pub struct ScsiResult {
    /// SCSI status.
    pub status: u8,
    /// Sense key, ASC, ASCQ when CHECK CONDITION.
    pub sense: Option<(u8, u8, u8)>,
    /// Data-in.
    pub data: Vec<u8>,
    /// Residual count of the response.
    pub residual: u32,
}

/// An initiator connection.
pub struct Client {
    sock: TcpStream,
    /// Next CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN to send.
    pub exp_stat_sn: u32,
    itt: u32,
    isid: [u8; 6],
    /// Target's MaxRecvDataSegmentLength.
    pub target_mrdsl: usize,
    /// Operational keys the next login proposes instead of the defaults
    /// (digests, ImmediateData, ...); the digests it proposes are used.
    pub login_keys: Vec<(String, String)>,
    /// CRC32C header digests on this connection.
    pub header_digest: bool,
    /// CRC32C data digests on this connection.
    pub data_digest: bool,
}

/// Why a login failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// The target answered with this status class and detail.
    Status(u8, u8),
    /// The connection broke or the target answered nonsense.
    Io(String),
}

impl Client {
    /// Connect.
    pub fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let sock = TcpStream::connect(addr)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut isid = [0x80, 0, 0, 0, 0, 0];
        let r: u32 = rand::random();
        isid[2..].copy_from_slice(&r.to_be_bytes());
        Ok(Client {
            sock,
            cmd_sn: 1,
            exp_stat_sn: 0,
            itt: 1,
            isid,
            target_mrdsl: 8192,
            login_keys: Vec::new(),
            header_digest: false,
            data_digest: false,
        })
    }

    /// The socket (to send raw bytes or shut it down).
    pub fn socket(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// A fresh Initiator Task Tag (for PDUs a test builds itself).
    pub fn next_itt(&mut self) -> u32 {
        self.itt = self.itt.wrapping_add(1);
        self.itt
    }

    /// The ITT of the last command this client sent.
    pub fn last_itt(&self) -> u32 {
        self.itt
    }

    /// Send an immediate task-management request (`function` 1 ABORT TASK,
    /// 2 ABORT TASK SET, 5 LOGICAL UNIT RESET, ...) and return the
    /// response code of its answer. PDUs that arrive first (other tasks'
    /// responses) are returned in `before`.
    pub fn task_mgmt(
        &mut self,
        function: u8,
        ref_itt: u32,
        ref_cmd_sn: u32,
        before: &mut Vec<Received>,
    ) -> std::io::Result<u8> {
        let itt = self.next_itt();
        let m = TaskMgmtRequest {
            immediate: true,
            function,
            lun: 0,
            itt,
            ref_task_tag: ref_itt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ref_cmd_sn,
            exp_data_sn: 0,
        };
        self.send(&m.encode(), &[])?;
        loop {
            let r = self.recv()?;
            match r.pdu {
                Pdu::TaskMgmtResponse(x) if x.itt == itt => {
                    self.exp_stat_sn = x.stat_sn.wrapping_add(1);
                    return Ok(x.response);
                }
                _ => before.push(r),
            }
        }
    }

    /// The wire bytes of a PDU (no AHS), with the connection's digests.
    pub fn encode(&self, bhs: &RawBhs, data: &[u8]) -> Vec<u8> {
        let mut v = bhs.to_bytes().to_vec();
        if self.header_digest {
            v.extend_from_slice(&to_wire(crc32c(&v)));
        }
        let at = v.len();
        v.extend_from_slice(data);
        v.resize(at + padded_len(data.len()), 0);
        if self.data_digest && !data.is_empty() {
            let d = to_wire(crc32c(&v[at..]));
            v.extend_from_slice(&d);
        }
        v
    }

    /// Send a PDU.
    pub fn send(&mut self, bhs: &RawBhs, data: &[u8]) -> std::io::Result<()> {
        let v = self.encode(bhs, data);
        self.sock.write_all(&v)
    }

    /// Receive one PDU (digests are skipped, not checked).
    pub fn recv(&mut self) -> std::io::Result<Received> {
        let mut h = [0u8; BHS_LEN];
        self.sock.read_exact(&mut h)?;
        let (bhs, pdu) = parse(&h).map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut body = vec![0u8; body_len(&bhs, self.header_digest, self.data_digest)];
        self.sock.read_exact(&mut body)?;
        let ahs = bhs.ahs_len() + if self.header_digest { 4 } else { 0 };
        let data = body[ahs..ahs + bhs.data_len()].to_vec();
        Ok(Received { bhs, pdu, data })
    }

    /// Log in (security stage with optional CHAP, then operational).
    /// `target` None: a discovery session.
    pub fn login(
        &mut self,
        initiator: &str,
        target: Option<&str>,
        chap: Option<(&str, &str)>,
    ) -> Result<(), LoginError> {
        let io = |e: std::io::Error| LoginError::Io(e.to_string());
        let itt = self.next_itt();
        let mut keys = Vec::new();
        push_pair(&mut keys, "InitiatorName", initiator);
        match target {
            Some(t) => {
                push_pair(&mut keys, "SessionType", "Normal");
                push_pair(&mut keys, "TargetName", t);
            }
            None => push_pair(&mut keys, "SessionType", "Discovery"),
        }
        push_pair(
            &mut keys,
            "AuthMethod",
            if chap.is_some() { "CHAP" } else { "None" },
        );
        let mut req = Login {
            transit: chap.is_none(),
            csg: 0,
            nsg: 1,
            isid: self.isid,
            itt,
            sn: self.cmd_sn,
            exp_sn: self.exp_stat_sn,
            data_len: keys.len(),
            ..Login::default()
        };
        let mut resp = self.login_step(&req, &keys).map_err(io)?;
        if let Some((user, secret)) = chap {
            let mut k = Vec::new();
            push_pair(&mut k, "CHAP_A", "5");
            req.data_len = k.len();
            resp = self.login_step(&req, &k).map_err(io)?;
            let text = resp.1.clone();
            let pairs = parse_pairs(&text).map_err(|e| LoginError::Io(e.to_string()))?;
            let get = |key: &str| {
                pairs
                    .iter()
                    .find(|(a, _)| *a == key)
                    .map(|p| p.1.to_owned())
            };
            let id: u8 = get("CHAP_I")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| LoginError::Io("no CHAP_I".into()))?;
            let c = get("CHAP_C")
                .and_then(|v| keel_iscsi_chap::decode(&v))
                .ok_or_else(|| LoginError::Io("no CHAP_C".into()))?;
            let r = keel_iscsi_chap::md5_response(id, secret.as_bytes(), &c);
            let mut k = Vec::new();
            push_pair(&mut k, "CHAP_N", user);
            push_pair(&mut k, "CHAP_R", &keel_iscsi_chap::hex(&r));
            req.transit = true;
            req.data_len = k.len();
            resp = self.login_step(&req, &k).map_err(io)?;
        }
        let _ = resp;
        let mut ops = Vec::new();
        for (k, v) in [
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxRecvDataSegmentLength", "262144"),
            ("MaxBurstLength", "1048576"),
            ("FirstBurstLength", "65536"),
            ("ErrorRecoveryLevel", "0"),
        ] {
            match self.login_keys.iter().find(|(a, _)| a == k) {
                Some((_, mine)) => push_pair(&mut ops, k, mine),
                None => push_pair(&mut ops, k, v),
            }
        }
        let req = Login {
            transit: true,
            csg: 1,
            nsg: 3,
            isid: self.isid,
            itt,
            sn: self.cmd_sn,
            exp_sn: self.exp_stat_sn,
            data_len: ops.len(),
            ..Login::default()
        };
        let (_, text) = self.login_step(&req, &ops).map_err(io)?;
        if let Ok(pairs) = parse_pairs(&text) {
            if let Some((_, v)) = pairs.iter().find(|(k, _)| *k == "MaxRecvDataSegmentLength") {
                self.target_mrdsl = v.parse().unwrap_or(8192);
            }
            let on = |key: &str| pairs.iter().any(|(k, v)| *k == key && *v == "CRC32C");
            self.header_digest = on("HeaderDigest");
            self.data_digest = on("DataDigest");
        }
        Ok(())
    }

    fn login_step(&mut self, req: &Login, data: &[u8]) -> std::io::Result<(Login, Vec<u8>)> {
        self.send(&req.encode(true), data)?;
        let r = self.recv()?;
        let Pdu::LoginResponse(l) = r.pdu else {
            return Err(std::io::Error::other(format!(
                "not a login response: {:?}",
                r.pdu
            )));
        };
        self.exp_stat_sn = l.sn.wrapping_add(1);
        if l.status_class != 0 {
            return Err(std::io::Error::other(format!(
                "login status {}/{}",
                l.status_class, l.status_detail
            )));
        }
        Ok((l, r.data))
    }

    /// Log in, mapping a login-status failure to [`LoginError::Status`].
    pub fn try_login(
        &mut self,
        initiator: &str,
        target: Option<&str>,
        chap: Option<(&str, &str)>,
    ) -> Result<(), LoginError> {
        match self.login(initiator, target, chap) {
            Err(LoginError::Io(m)) if m.starts_with("login status ") => {
                let nums: Vec<u8> = m["login status ".len()..]
                    .split('/')
                    .filter_map(|x| x.parse().ok())
                    .collect();
                Err(LoginError::Status(
                    nums.first().copied().unwrap_or(0),
                    nums.get(1).copied().unwrap_or(0),
                ))
            }
            other => other,
        }
    }

    /// Run a SCSI command on `lun`: `read_len` bytes of data-in expected,
    /// or `write` data sent on R2T.
    pub fn scsi(
        &mut self,
        lun: u64,
        cdb: &[u8],
        read_len: u32,
        write: &[u8],
    ) -> std::io::Result<ScsiResult> {
        let itt = self.next_itt();
        let mut c = [0u8; 16];
        c[..cdb.len().min(16)].copy_from_slice(&cdb[..cdb.len().min(16)]);
        let cmd = ScsiCommand {
            immediate: false,
            final_bit: true,
            read: read_len > 0,
            write: !write.is_empty(),
            attr: 1,
            ahs_len: 0,
            data_len: 0,
            lun,
            itt,
            expected_len: if write.is_empty() {
                read_len
            } else {
                u32::try_from(write.len()).unwrap_or(u32::MAX)
            },
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: c,
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.send(&cmd.encode(), &[])?;
        let mut out = ScsiResult::default();
        loop {
            let r = self.recv()?;
            match r.pdu {
                Pdu::R2t(t) => {
                    let mut off = t.buffer_offset as usize;
                    let end = off + t.desired_len as usize;
                    let mut sn = 0;
                    while off < end {
                        let n = (end - off).min(self.target_mrdsl);
                        let d = DataOut {
                            final_bit: off + n == end,
                            data_len: n,
                            lun,
                            itt,
                            ttt: t.ttt,
                            exp_stat_sn: self.exp_stat_sn,
                            data_sn: sn,
                            buffer_offset: u32::try_from(off).unwrap_or(0),
                        };
                        self.send(&d.encode(), &write[off..off + n])?;
                        off += n;
                        sn += 1;
                    }
                }
                Pdu::DataIn(d) => {
                    out.data.extend_from_slice(&r.data);
                    if let Some(st) = d.status {
                        self.exp_stat_sn = d.stat_sn.wrapping_add(1);
                        out.status = st;
                        out.residual = d.residual_count;
                        return Ok(out);
                    }
                }
                Pdu::ScsiResponse(s) => {
                    self.exp_stat_sn = s.stat_sn.wrapping_add(1);
                    out.status = s.status;
                    out.residual = s.residual_count;
                    if r.data.len() >= 2 + 14 {
                        let sd = &r.data[2..];
                        out.sense = Some((sd[2] & 0x0f, sd[12], sd[13]));
                    }
                    return Ok(out);
                }
                Pdu::NopIn(n) if n.itt == 0xffff_ffff => {
                    // Answer the target's ping.
                    let a = Nop {
                        immediate: true,
                        itt: 0xffff_ffff,
                        ttt: n.ttt,
                        sn: self.cmd_sn,
                        exp_sn: self.exp_stat_sn,
                        ..Nop::default()
                    };
                    self.send(&a.encode(true), &[])?;
                }
                other => {
                    return Err(std::io::Error::other(format!("unexpected PDU {other:?}")));
                }
            }
        }
    }

    /// READ(16) of `blocks` at `lba`.
    pub fn read16(
        &mut self,
        lba: u64,
        blocks: u32,
        block_size: u32,
    ) -> std::io::Result<ScsiResult> {
        let mut c = [0u8; 16];
        c[0] = 0x88;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        self.scsi(0, &c, blocks * block_size, &[])
    }

    /// WRITE(16) at `lba`.
    pub fn write16(
        &mut self,
        lba: u64,
        data: &[u8],
        block_size: u32,
        fua: bool,
    ) -> std::io::Result<ScsiResult> {
        let mut c = [0u8; 16];
        c[0] = 0x8a;
        if fua {
            c[1] = 0x08;
        }
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        let blocks = u32::try_from(data.len() / block_size as usize).unwrap_or(0);
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        self.scsi(0, &c, 0, data)
    }

    /// SYNCHRONIZE CACHE(10) of the whole unit.
    pub fn sync_cache(&mut self) -> std::io::Result<ScsiResult> {
        self.scsi(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, &[])
    }

    /// NOP-Out ping with data; waits for the NOP-In.
    pub fn ping(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let itt = self.next_itt();
        let n = Nop {
            immediate: true,
            data_len: data.len(),
            itt,
            ttt: 0xffff_ffff,
            sn: self.cmd_sn,
            exp_sn: self.exp_stat_sn,
            ..Nop::default()
        };
        self.send(&n.encode(true), data)?;
        loop {
            let r = self.recv()?;
            if let Pdu::NopIn(x) = r.pdu {
                if x.itt == itt {
                    return Ok(r.data);
                }
            }
        }
    }

    /// Log out.
    pub fn logout(&mut self) -> std::io::Result<()> {
        let itt = self.next_itt();
        let l = LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.send(&l.encode(), &[])?;
        let r = self.recv()?;
        match r.pdu {
            Pdu::LogoutResponse(_) => Ok(()),
            other => Err(std::io::Error::other(format!(
                "not a logout response: {other:?}"
            ))),
        }
    }
}

/// CHAP helpers (MD5), kept here so the client does not share the
/// target's code.
mod keel_iscsi_chap {
    pub fn md5_response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
        use md5::{Digest, Md5};
        let mut h = Md5::new();
        h.update([id]);
        h.update(secret);
        h.update(challenge);
        h.finalize().into()
    }
    pub fn hex(b: &[u8]) -> String {
        let mut s = String::from("0x");
        for x in b {
            s.push_str(&format!("{x:02x}"));
        }
        s
    }
    pub fn decode(v: &str) -> Option<Vec<u8>> {
        let h = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X"))?;
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
            .collect()
    }
}
