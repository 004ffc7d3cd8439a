//! One NVMe/TCP connection (one queue of an association) as a reactor
//! [`Protocol`]: ICReq/ICResp, Fabrics Connect and properties, the admin
//! command set on queue 0, Read/Write/Flush/Write Zeroes/Dataset
//! Management on I/O queues, in-capsule data, R2T/H2CData, C2HData,
//! header and data digests, keep-alive, asynchronous events.
//!
//! Each I/O queue connection owns an engine [`Handle`]; its eventfd is
//! registered with the reactor so an idle reactor sleeps until the engine or
//! the socket has something. A transport error ends only this connection,
//! with a C2HTermReq carrying the FES the NVMe/TCP specification names.

// Wire fields are masked or bounded to their width before they are
// narrowed (`(cdw10 >> 16) as u16`, lengths checked against MDTS).
#![allow(clippy::cast_possible_truncation)]

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_blockvol::{Completion, ErrorKind, Handle, Op, SleepCheck};
use keel_pdu::iscsi::digest::{crc32c, from_wire, to_wire};
use keel_pdu::nvme::{
    fes, parse_header, Cqe, DataPdu, PduType, Sqe, Status, TcpPdu, CH_LEN, DATA_HLEN, FLAG_DDGST,
    FLAG_HDGST, FLAG_LAST_PDU, FLAG_SUCCESS, IC_LEN,
};
use keel_pdu::segment::{Next, SegmentRx};
use keel_reactor::{
    buffer_pool, BufferPool, Close, CloseReason, Context, Interest, OutQueue, Protocol,
    Registration,
};
use smallvec::SmallVec;
use zerocopy::IntoBytes;

use crate::identify::{self, ana, ControllerInfo, ControllerType, DiscoveryEntry, NamespaceInfo};
use crate::subsystem::{Controller, NvmfTarget, Subsystem, DISCOVERY_NQN};

/// Engine I/O is split into buffers of at most this size.
/// A PDU header under construction (inline: no allocation).
type Header = SmallVec<[u8; 32]>;

const CHUNK: usize = 256 << 10;
/// MDTS: 2^8 pages of 4 KiB = 1 MiB.
const MDTS: u8 = 8;
const MAX_TRANSFER: usize = 4096 << MDTS;
/// Admin in-capsule data (Connect data is 1 KiB).
const ADMIN_INLINE: usize = 8192;

mod opc {
    pub const FABRICS: u8 = 0x7f;
    // Admin.
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0a;
    pub const AER: u8 = 0x0c;
    pub const KEEP_ALIVE: u8 = 0x18;
    // I/O.
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DSM: u8 = 0x09;
}

mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const DISCONNECT: u8 = 0x08;
}

fn st(sct: u8, sc: u8, dnr: bool) -> Status {
    Status {
        sct,
        sc,
        more: false,
        dnr,
    }
}

/// Connect Invalid Parameters.
const CONNECT_INVALID_PARAM: Status = Status {
    sct: 1,
    sc: 0x82,
    more: false,
    dnr: true,
};
/// Connect Invalid Host.
const CONNECT_INVALID_HOST: Status = Status {
    sct: 1,
    sc: 0x84,
    more: false,
    dnr: true,
};

#[derive(Debug)]
enum Work {
    /// Data-out for a write at `lba`.
    Write { lba: u64, fua: bool },
    /// Data-out for an admin command that carries data (Connect).
    Param,
    /// Read `len` bytes at `lba`, sent in chunks.
    Read { lba: u64 },
    /// Engine operations, then the response.
    Plain,
}

#[derive(Debug)]
struct Task {
    serial: u32,
    sqe: Sqe,
    work: Work,
    /// Data-out expected / received.
    want: usize,
    got: usize,
    data: SmallVec<[Vec<u8>; 4]>,
    /// R2T tag and whether one is outstanding.
    ttag: u16,
    r2t_open: bool,
    ops: u32,
    status: Status,
    reads: SmallVec<[Option<Vec<u8>>; 4]>,
    next_send: usize,
    next_submit: usize,
    sent: usize,
    read_len: usize,
    started: Instant,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    WaitIcReq,
    Ready,
    Closed,
}

/// The data of an H2CData PDU whose header was handled before all of its
/// data had arrived. The data goes into the command's buffers as it comes:
/// straight from the socket where the socket I/O allows
/// ([`Protocol::direct_target`]), else copied from the input. It counts,
/// and the command moves on, once the whole PDU (and its digest) is in.
#[derive(Debug)]
struct RxData {
    /// The command's task.
    slot: usize,
    /// Offset of this PDU's first data byte in the command's data.
    first: usize,
    /// The data: what has come, what is still to come.
    seg: SegmentRx,
}

/// An NVMe/TCP connection on a reactor.
pub struct NvmeConn {
    target: Arc<NvmfTarget>,
    peer: SocketAddr,
    local: SocketAddr,
    phase: Phase,
    hd: bool,
    dd: bool,
    qid: Option<u16>,
    sqsize: u16,
    sq_head: u16,
    sqflow_off: bool,
    ctrl: Option<Arc<Controller>>,
    // The registration must drop before the handle (field order).
    notify: Option<Registration>,
    handle: Option<Handle>,
    /// The reactor's buffer pool (known from the first input on).
    pool: Option<Arc<BufferPool>>,
    block_size: u32,
    tasks: Vec<Option<Task>>,
    free: Vec<usize>,
    by_cid: HashMap<u16, usize>,
    by_ttag: HashMap<u16, usize>,
    next_ttag: u16,
    serial: u32,
    completions: Vec<Completion>,
    aers: Vec<u16>,
    timer_armed: Rc<Cell<bool>>,
    /// Wake-up for a write parked by the engine's admission control.
    retry_due: keel_reactor::WakeBy,
    started: Instant,
    /// Data of an H2CData PDU whose header is handled, still arriving.
    rx: Option<RxData>,
}

impl std::fmt::Debug for NvmeConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeConn")
            .field("peer", &self.peer)
            .field("qid", &self.qid)
            .finish()
    }
}

fn engine_status(k: ErrorKind, write: bool) -> Status {
    match k {
        ErrorKind::OutOfRange => Status::LBA_OUT_OF_RANGE,
        ErrorKind::InvalidArgument => Status::INVALID_FIELD,
        ErrorKind::WalFull | ErrorKind::Closed => Status::NAMESPACE_NOT_READY,
        // Media errors: Write Fault / Unrecovered Read Error.
        _ if write => st(2, 0x80, false),
        _ => st(2, 0x81, false),
    }
}

impl NvmeConn {
    /// A new connection from `peer` accepted on `local`.
    pub fn new(target: Arc<NvmfTarget>, peer: SocketAddr, local: SocketAddr) -> NvmeConn {
        NvmeConn {
            target,
            peer,
            local,
            phase: Phase::WaitIcReq,
            hd: false,
            dd: false,
            qid: None,
            sqsize: 32,
            sq_head: 0,
            sqflow_off: false,
            ctrl: None,
            notify: None,
            handle: None,
            pool: None,
            block_size: 512,
            tasks: Vec::new(),
            free: Vec::new(),
            by_cid: HashMap::new(),
            by_ttag: HashMap::new(),
            next_ttag: 1,
            serial: 0,
            completions: Vec::new(),
            aers: Vec::new(),
            timer_armed: Rc::new(Cell::new(false)),
            retry_due: keel_reactor::WakeBy::default(),
            started: Instant::now(),
            rx: None,
        }
    }

    // ---- output -------------------------------------------------------

    fn header(&self, t: PduType, hlen: usize, data: usize, extra_flags: u8) -> Header {
        let hd = if self.hd { 4 } else { 0 };
        let dd = if self.dd && data > 0 { 4 } else { 0 };
        let pdo = if data > 0 { hlen + hd } else { 0 };
        let plen = hlen + hd + data + dd;
        let mut h = Header::from_elem(0, hlen);
        h[0] = t.value();
        h[1] = extra_flags
            | if self.hd { FLAG_HDGST } else { 0 }
            | if dd > 0 { FLAG_DDGST } else { 0 };
        h[2] = u8::try_from(hlen).unwrap_or(0);
        h[3] = u8::try_from(pdo).unwrap_or(0);
        h[4..8].copy_from_slice(&u32::try_from(plen).unwrap_or(0).to_le_bytes());
        h
    }

    fn push_header(&self, out: &mut OutQueue, h: &[u8]) {
        out.push(h);
        if self.hd {
            out.push(&to_wire(crc32c(h)));
        }
    }

    fn respond(&mut self, out: &mut OutQueue, cid: u16, status: Status, dw0: u32, dw1: u32) {
        self.sq_head = (self.sq_head + 1) % self.sqsize.max(1);
        let cqe = Cqe {
            dw0: dw0.into(),
            dw1: dw1.into(),
            sqhd: if self.sqflow_off {
                0xffff
            } else {
                self.sq_head
            }
            .into(),
            sqid: self.qid.unwrap_or(0).into(),
            cid: cid.into(),
            status: status.to_word(false).into(),
        };
        let mut h = self.header(PduType::CapsuleResp, CH_LEN + 16, 0, 0);
        h[CH_LEN..].copy_from_slice(cqe.as_bytes());
        self.push_header(out, &h);
    }

    /// C2HData of `data` at `offset`; `last` closes the command's data
    /// and, without SQ flow control, carries the success. A `pooled`
    /// buffer (read data) is queued by move and goes back to the pool once
    /// sent; any other (identify data, log pages) is copied, as the pool
    /// must get back only the buffers it handed out.
    #[allow(clippy::too_many_arguments)]
    fn c2h(
        &mut self,
        out: &mut OutQueue,
        cid: u16,
        offset: usize,
        data: Vec<u8>,
        last: bool,
        success: bool,
        pooled: bool,
    ) {
        let flags = if last { FLAG_LAST_PDU } else { 0 } | if success { FLAG_SUCCESS } else { 0 };
        let mut h = self.header(PduType::C2hData, DATA_HLEN, data.len(), flags);
        h[8..10].copy_from_slice(&cid.to_le_bytes());
        h[12..16].copy_from_slice(&u32::try_from(offset).unwrap_or(0).to_le_bytes());
        h[16..20].copy_from_slice(&u32::try_from(data.len()).unwrap_or(0).to_le_bytes());
        self.push_header(out, &h);
        let crc = self.dd.then(|| crc32c(&data));
        if pooled {
            out.push_buf(data);
        } else {
            out.push(&data);
        }
        if let Some(c) = crc {
            out.push(&to_wire(c));
        }
    }

    /// Answer a command with data-in (identify, log pages) and status.
    fn data_in(&mut self, out: &mut OutQueue, sqe: &Sqe, mut data: Vec<u8>, len: usize) {
        data.resize(len, 0);
        let cid = sqe.cid.get();
        if len > 0 {
            let success = self.sqflow_off;
            self.c2h(out, cid, 0, data, true, success, false);
            if success {
                self.sq_head = (self.sq_head + 1) % self.sqsize.max(1);
                return;
            }
        }
        self.respond(out, cid, Status::SUCCESS, 0, 0);
    }

    fn term(&mut self, out: &mut OutQueue, fes_code: u16, fei: u32, why: &str) -> Close {
        self.target
            .stats
            .transport_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %self.peer, why, fes = fes_code, "NVMe/TCP transport error; terminating");
        let mut h = vec![0u8; DATA_HLEN];
        h[0] = PduType::C2hTermReq.value();
        h[2] = u8::try_from(DATA_HLEN).unwrap_or(0);
        h[4..8].copy_from_slice(&u32::try_from(DATA_HLEN).unwrap_or(0).to_le_bytes());
        h[8..10].copy_from_slice(&fes_code.to_le_bytes());
        h[10..14].copy_from_slice(&fei.to_le_bytes());
        out.push(&h);
        Close::AfterFlush
    }

    // ---- tasks --------------------------------------------------------

    fn alloc(&mut self, t: Task) -> usize {
        let cid = t.sqe.cid.get();
        let slot = if let Some(i) = self.free.pop() {
            self.tasks[i] = Some(t);
            i
        } else {
            self.tasks.push(Some(t));
            self.tasks.len() - 1
        };
        self.by_cid.insert(cid, slot);
        slot
    }

    fn release(&mut self, slot: usize) -> Option<Task> {
        let mut t = self.tasks.get_mut(slot)?.take()?;
        // Data buffers still held (a failed or unsent command) go back to
        // the pool: a dropped pool buffer would stay counted as in use and
        // shrink the pool for good.
        let pool = self.pool.as_ref();
        for b in t.data.drain(..).filter(|b| b.capacity() > 0) {
            buffer_pool::give_back(pool, b);
        }
        for b in t.reads.drain(..).flatten() {
            buffer_pool::give_back(pool, b);
        }
        self.by_cid.remove(&t.sqe.cid.get());
        if t.r2t_open {
            self.by_ttag.remove(&t.ttag);
        }
        self.free.push(slot);
        Some(t)
    }

    fn new_task(&mut self, sqe: Sqe, work: Work) -> Task {
        self.serial = self.serial.wrapping_add(1);
        Task {
            serial: self.serial,
            sqe,
            work,
            want: 0,
            got: 0,
            data: SmallVec::new(),
            ttag: 0,
            r2t_open: false,
            ops: 0,
            status: Status::SUCCESS,
            reads: SmallVec::new(),
            next_send: 0,
            next_submit: 0,
            sent: 0,
            read_len: 0,
            started: Instant::now(),
        }
    }

    fn submit(&mut self, slot: usize, chunk: usize, op: Op) {
        let Some(t) = self.tasks[slot].as_mut() else {
            return;
        };
        let tag =
            (u64::from(t.serial) << 32) | ((chunk as u64 & 0xfff) << 20) | (slot as u64 & 0xf_ffff);
        t.ops += 1;
        let Some(h) = self.handle.as_mut() else {
            t.ops -= 1;
            t.status = Status::INTERNAL_ERROR;
            return;
        };
        if let Err(e) = h.submit(tag, op) {
            let buf = match e.op {
                Op::Read { buf, .. } | Op::Write { buf, .. } => Some(buf),
                _ => None,
            };
            self.completions.push(Completion {
                tag,
                result: Err(e.error),
                buf,
            });
        }
    }

    // ---- input --------------------------------------------------------

    fn on_icreq(&mut self, ic: &keel_pdu::nvme::IcPdu, out: &mut OutQueue) -> Result<(), Close> {
        if self.phase != Phase::WaitIcReq {
            return Err(self.term(out, fes::PDU_SEQUENCE_ERROR, 0, "second ICReq"));
        }
        if ic.pfv.get() != 0 {
            return Err(self.term(out, fes::INVALID_HEADER_FIELD, 8, "unsupported PFV"));
        }
        if ic.pda > 31 {
            return Err(self.term(out, fes::INVALID_HEADER_FIELD, 10, "HPDA out of range"));
        }
        self.hd = ic.dgst & 1 != 0;
        self.dd = ic.dgst & 2 != 0;
        let mut r = vec![0u8; IC_LEN];
        r[0] = PduType::IcResp.value();
        r[2] = u8::try_from(IC_LEN).unwrap_or(0);
        r[4..8].copy_from_slice(&u32::try_from(IC_LEN).unwrap_or(0).to_le_bytes());
        // PFV 0, CPDA 0, digests as asked, MAXH2CDATA.
        r[10] = 0;
        r[11] = ic.dgst & 3;
        r[12..16].copy_from_slice(&self.target.portal().max_h2c_data.to_le_bytes());
        out.push(&r);
        self.phase = Phase::Ready;
        Ok(())
    }

    fn on_capsule(
        &mut self,
        sqe: Sqe,
        data: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<(), Close> {
        let cid = sqe.cid.get();
        if self.by_cid.contains_key(&cid) {
            // A command identifier still in use: a host bug.
            self.respond(out, cid, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
            return Ok(());
        }
        let fused = sqe.flags & 0x03 != 0;
        if fused {
            self.respond(out, cid, Status::INVALID_FIELD, 0, 0);
            return Ok(());
        }
        if sqe.opcode == opc::FABRICS {
            return self.on_fabrics(sqe, data, out, cx);
        }
        if self.ctrl.is_none() {
            // Anything but Connect before Connect.
            self.respond(out, cid, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
            return Ok(());
        }
        if self.qid == Some(0) {
            self.on_admin(sqe, data, out);
        } else {
            self.on_io(sqe, data, out);
        }
        Ok(())
    }

    /// The data length of a command's SGL, and whether it is in-capsule.
    fn sgl(sqe: &Sqe) -> (usize, bool) {
        let len = sqe.dptr.length.get() as usize;
        let in_capsule = sqe.dptr.id == 0x01;
        (len, in_capsule)
    }

    fn on_fabrics(
        &mut self,
        sqe: Sqe,
        data: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<(), Close> {
        let cid = sqe.cid.get();
        match sqe.fctype() {
            fctype::CONNECT => {
                if self.qid.is_some() {
                    self.respond(out, cid, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
                    return Ok(());
                }
                let (len, in_capsule) = Self::sgl(&sqe);
                if len < 1024 {
                    self.respond(out, cid, Status::SGL_LENGTH_INVALID, 0, 0);
                    return Ok(());
                }
                if in_capsule {
                    if data.len() < 1024 {
                        self.respond(out, cid, Status::SGL_LENGTH_INVALID, 0, 0);
                        return Ok(());
                    }
                    self.connect(&sqe, &data[..1024], out, cx);
                } else {
                    let mut t = self.new_task(sqe, Work::Param);
                    t.want = 1024;
                    let slot = self.alloc(t);
                    self.r2t(slot, out);
                }
            }
            fctype::PROPERTY_GET | fctype::PROPERTY_SET if self.qid == Some(0) => {
                self.property(&sqe, out);
            }
            fctype::DISCONNECT => {
                self.respond(out, cid, Status::SUCCESS, 0, 0);
                return Err(Close::AfterFlush);
            }
            _ => self.respond(out, cid, Status::INVALID_OPCODE, 0, 0),
        }
        Ok(())
    }

    fn connect(&mut self, sqe: &Sqe, d: &[u8], out: &mut OutQueue, cx: &mut Context) {
        let cid = sqe.cid.get();
        let keel_pdu::nvme::fabrics::Connect {
            recfmt,
            qid,
            sqsize,
            cattr,
            kato,
        } = keel_pdu::nvme::fabrics::Connect::from_sqe(sqe);
        let Some(cd) = keel_pdu::nvme::fabrics::ConnectData::parse(d) else {
            self.respond(out, cid, Status::SGL_LENGTH_INVALID, 0, 0);
            return;
        };
        let hostid = cd.hostid;
        let cntlid = cd.cntlid.get();
        let subnqn = cd.subnqn().unwrap_or_default().to_owned();
        let hostnqn = cd.hostnqn().unwrap_or_default().to_owned();
        // Invalid Parameters carries IATTR/IPO: which field is wrong.
        let bad = |this: &mut Self, out: &mut OutQueue, in_data: bool, offset: u16| {
            this.target
                .stats
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
            let dw0 = (u32::from(offset) << 16) | u32::from(in_data);
            this.respond(out, cid, CONNECT_INVALID_PARAM, dw0, 0);
        };
        if recfmt != 0 {
            return bad(self, out, false, 40);
        }
        let qsize = self.target.portal().queue_size;
        if sqsize == 0 || sqsize >= qsize || (qid == 0 && sqsize < 31) {
            return bad(self, out, false, 44);
        }
        let discovery = subnqn == DISCOVERY_NQN;
        let subsystem: Option<Arc<Subsystem>> = if discovery {
            None
        } else {
            match self.target.subsystem(&subnqn) {
                Some(s) => Some(s),
                None => return bad(self, out, true, 256),
            }
        };
        if let Some(s) = &subsystem {
            if !s.allows(&hostnqn) {
                self.target
                    .stats
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.respond(out, cid, CONNECT_INVALID_HOST, 0, 0);
                return;
            }
        }
        let ctrl = if qid == 0 {
            if cntlid != 0xffff && cntlid != 0xfffe {
                // Dynamic controller model: the host must ask for any ID.
                return bad(self, out, true, 16);
            }
            match self
                .target
                .create_controller(subsystem.clone(), &hostnqn, hostid, kato)
            {
                Some(c) => c,
                None => return bad(self, out, true, 16),
            }
        } else {
            let Some(c) = self.target.controller(cntlid) else {
                return bad(self, out, true, 16);
            };
            let same_sub = c.subsystem.as_ref().map(|s| s.spec.nqn.as_str())
                == subsystem.as_ref().map(|s| s.spec.nqn.as_str());
            if !same_sub || c.hostnqn != hostnqn || c.hostid != hostid || c.subsystem.is_none() {
                return bad(self, out, true, 16);
            }
            if qid > c.io_queues.load(Ordering::Acquire) || !c.add_queue(qid) {
                return bad(self, out, false, 42);
            }
            if c.csts.load(Ordering::Acquire) & 1 == 0 {
                // The controller is not enabled.
                c.remove_queue(qid);
                self.respond(out, cid, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
                return;
            }
            c
        };
        if let Some(s) = &ctrl.subsystem {
            if qid > 0 {
                let h = match s.volume().handle() {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open an engine handle");
                        ctrl.remove_queue(qid);
                        self.respond(out, cid, Status::INTERNAL_ERROR, 0, 0);
                        return;
                    }
                };
                match cx.register(h.notify_as_fd(), Interest::READABLE) {
                    Ok(r) => self.notify = Some(r),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot register the engine eventfd");
                        ctrl.remove_queue(qid);
                        self.respond(out, cid, Status::INTERNAL_ERROR, 0, 0);
                        return;
                    }
                }
                self.block_size = h.block_size();
                self.handle = Some(h);
            } else {
                self.block_size = s.volume().info().block_size;
            }
        }
        self.qid = Some(qid);
        self.sqsize = sqsize + 1;
        self.sqflow_off = cattr & 0x04 != 0;
        tracing::info!(
            peer = %self.peer,
            host = %hostnqn,
            subsystem = %subnqn,
            qid,
            cntlid = ctrl.cntlid,
            "NVMe/TCP connect"
        );
        let id = ctrl.cntlid;
        self.ctrl = Some(ctrl);
        self.respond(out, cid, Status::SUCCESS, u32::from(id), 0);
    }

    fn property(&mut self, sqe: &Sqe, out: &mut OutQueue) {
        let cid = sqe.cid.get();
        let Some(c) = self.ctrl.clone() else {
            self.respond(out, cid, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
            return;
        };
        let keel_pdu::nvme::fabrics::Property {
            size8,
            offset,
            value,
        } = keel_pdu::nvme::fabrics::Property::from_sqe(sqe);
        let qsize = self.target.portal().queue_size;
        if sqe.fctype() == fctype::PROPERTY_GET {
            let v: u64 = match offset {
                identify::prop::CAP => identify::prop::cap(qsize - 1),
                identify::prop::VS => u64::from(identify::VERSION),
                identify::prop::CC => u64::from(c.cc.load(Ordering::Acquire)),
                identify::prop::CSTS => u64::from(c.csts.load(Ordering::Acquire)),
                _ => {
                    self.respond(out, cid, Status::INVALID_FIELD, 0, 0);
                    return;
                }
            };
            if !size8 && offset == identify::prop::CAP {
                self.respond(out, cid, Status::INVALID_FIELD, 0, 0);
                return;
            }
            self.respond(out, cid, Status::SUCCESS, v as u32, (v >> 32) as u32);
            return;
        }
        match offset {
            identify::prop::CC => {
                let new = value as u32;
                let old = c.cc.swap(new, Ordering::AcqRel);
                let mut csts = c.csts.load(Ordering::Acquire);
                let en = new & 1 != 0;
                let shn = (new >> 14) & 3;
                if en && old & 1 == 0 {
                    // Enable: I/O queue entry sizes must be 64/16 bytes.
                    let iosqes = (new >> 16) & 0xf;
                    let iocqes = (new >> 20) & 0xf;
                    let css = (new >> 4) & 7;
                    if (iosqes != 6 || iocqes != 4) && c.subsystem.is_some() || css != 0 {
                        csts |= 2; // CFS
                    } else {
                        csts |= 1; // RDY
                    }
                } else if !en && old & 1 != 0 {
                    csts &= !1;
                }
                if shn != 0 {
                    // Shutdown: make everything written durable first.
                    if let Some(s) = &c.subsystem {
                        if let Ok(h) = s.volume().handle() {
                            let _ = keel_blockvol::SyncHandle::new(h).flush();
                        }
                    }
                    csts = (csts & !0x0c) | (2 << 2); // SHST complete
                } else {
                    csts &= !0x0c;
                }
                c.csts.store(csts, Ordering::Release);
                self.respond(out, cid, Status::SUCCESS, 0, 0);
            }
            identify::prop::NSSR => self.respond(out, cid, Status::INVALID_FIELD, 0, 0),
            _ => self.respond(out, cid, Status::INVALID_FIELD, 0, 0),
        }
    }

    #[allow(clippy::too_many_lines)]
    fn on_admin(&mut self, sqe: Sqe, _data: &[u8], out: &mut OutQueue) {
        let cid = sqe.cid.get();
        let Some(c) = self.ctrl.clone() else {
            return;
        };
        let (sgl_len, _) = Self::sgl(&sqe);
        match sqe.opcode {
            opc::KEEP_ALIVE => {
                c.keep_alive();
                self.respond(out, cid, Status::SUCCESS, 0, 0);
            }
            opc::IDENTIFY => {
                let cns = sqe.cdw10.get() & 0xff;
                let nsid = sqe.nsid.get();
                let csi = (sqe.cdw11.get() >> 24) & 0xff;
                let page = match (cns, &c.subsystem) {
                    (0x01, sub) => Some(identify::controller(&ControllerInfo {
                        kind: if sub.is_some() {
                            ControllerType::Io
                        } else {
                            ControllerType::Discovery
                        },
                        cntlid: c.cntlid,
                        serial: sub.as_ref().map_or("discovery", |s| s.serial.as_str()),
                        subnqn: sub.as_ref().map_or(DISCOVERY_NQN, |s| s.spec.nqn.as_str()),
                        mdts: MDTS,
                        inline_data: self.target.portal().inline_data,
                        vwc: true,
                        awun: sub.as_ref().map_or(0, |s| {
                            let i = s.volume().info();
                            u16::try_from(
                                i.max_write_blocks
                                    .min(MAX_TRANSFER as u32 / i.block_size)
                                    .saturating_sub(1),
                            )
                            .unwrap_or(0)
                        }),
                    })),
                    (0x00, Some(s)) if nsid == 1 => Some(self.ns_page(s)),
                    (0x00, Some(_)) if nsid == 0xffff_ffff => None,
                    (0x02, Some(_)) => Some(identify::active_ns_list(nsid)),
                    (0x03, Some(s)) if nsid == 1 => {
                        Some(identify::ns_descriptors(&s.nguid, &s.nguid))
                    }
                    // I/O command set specific structures of the NVM set.
                    (0x05, Some(_)) if nsid == 1 && csi == 0 => Some(vec![0u8; 4096]),
                    (0x06, Some(_)) if csi == 0 => Some(vec![0u8; 4096]),
                    _ => None,
                };
                match page {
                    Some(p) => self.data_in(out, &sqe, p, sgl_len.min(4096)),
                    None if cns == 0 || cns == 3 => {
                        self.respond(out, cid, Status::INVALID_NAMESPACE, 0, 0)
                    }
                    None => self.respond(out, cid, Status::INVALID_FIELD, 0, 0),
                }
            }
            opc::GET_LOG_PAGE => {
                let keel_pdu::nvme::admin::GetLogPage {
                    lid,
                    lsp,
                    len,
                    offset,
                } = keel_pdu::nvme::admin::GetLogPage::from_sqe(&sqe);
                let len = len.min(sgl_len);
                let lpo = usize::try_from(offset).unwrap_or(usize::MAX);
                let log = match (lid, &c.subsystem) {
                    (0x01, _) => Some(vec![0u8; 64]),
                    (0x02, Some(s)) => {
                        let stats = s.volume().stats();
                        let hours = self.started.elapsed().as_secs() / 3600;
                        Some(identify::smart(
                            stats.read_bytes,
                            stats.write_bytes,
                            stats.read_ops,
                            stats.write_ops,
                            hours,
                        ))
                    }
                    (0x03, _) => Some(identify::firmware_slots()),
                    (0x04, Some(_)) => Some(identify::changed_ns_list(
                        c.ns_changed.swap(false, Ordering::AcqRel),
                    )),
                    (0x05, Some(_)) => Some(identify::effects()),
                    (0x0c, Some(s)) => {
                        let (state, count) = s.ana();
                        Some(identify::ana_log(count, 1, state, lsp & 1 != 0))
                    }
                    (0x70, None) => Some(self.discovery_log()),
                    _ => None,
                };
                match log {
                    Some(l) => {
                        let page = l.get(lpo.min(l.len())..).unwrap_or(&[]).to_vec();
                        if lpo > l.len() {
                            self.respond(out, cid, Status::INVALID_FIELD, 0, 0);
                        } else {
                            self.data_in(out, &sqe, page, len);
                        }
                    }
                    None => self.respond(out, cid, Status::INVALID_FIELD, 0, 0),
                }
            }
            opc::GET_FEATURES | opc::SET_FEATURES => {
                let set = sqe.opcode == opc::SET_FEATURES;
                let fid = (sqe.cdw10.get() & 0xff) as u8;
                let dw11 = sqe.cdw11.get();
                let r = match fid {
                    // Volatile write cache: the engine's write-cache mode.
                    0x06 => c.subsystem.as_ref().map(|s| {
                        if set {
                            s.volume().set_write_cache(dw11 & 1 != 0);
                        }
                        u32::from(s.volume().write_cache())
                    }),
                    // Number of queues: both counts 0-based.
                    0x07 => {
                        if set {
                            if !c.queues().is_empty() {
                                self.respond(out, cid, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
                                return;
                            }
                            let nsq = (dw11 & 0xffff) as u16;
                            let ncq = (dw11 >> 16) as u16;
                            if nsq == 0xffff || ncq == 0xffff {
                                self.respond(out, cid, Status::INVALID_FIELD, 0, 0);
                                return;
                            }
                            let n = (nsq.min(ncq) + 1).min(self.target.portal().max_io_queues);
                            c.io_queues.store(n, Ordering::Release);
                        }
                        let n = u32::from(c.io_queues.load(Ordering::Acquire).max(1) - 1);
                        Some(n | (n << 16))
                    }
                    // Async event configuration.
                    0x0b => {
                        if set {
                            c.aec.store(dw11, Ordering::Release);
                        }
                        Some(c.aec.load(Ordering::Acquire))
                    }
                    // Keep alive timer (ms).
                    0x0f => {
                        if set {
                            c.kato_ms.store(dw11, Ordering::Release);
                            c.kato_feature.store(dw11, Ordering::Release);
                            c.keep_alive();
                        }
                        Some(c.kato_feature.load(Ordering::Acquire))
                    }
                    // Arbitration, power management, temperature threshold,
                    // interrupt coalescing: accepted, nothing to tune.
                    0x01 | 0x02 | 0x04 | 0x08 => Some(if fid == 0x04 && !set { 0x0157 } else { 0 }),
                    _ => None,
                };
                match r {
                    Some(v) => self.respond(out, cid, Status::SUCCESS, v, 0),
                    None => self.respond(out, cid, Status::INVALID_FIELD, 0, 0),
                }
            }
            opc::AER => {
                if self.aers.len() >= 4 {
                    // AER limit exceeded.
                    self.respond(out, cid, st(1, 0x05, true), 0, 0);
                } else {
                    self.aers.push(cid);
                    self.deliver_events(out);
                }
            }
            opc::ABORT => {
                // Commands run to completion; dword 0 bit 0: not aborted.
                self.respond(out, cid, Status::SUCCESS, 1, 0);
            }
            _ => self.respond(out, cid, Status::INVALID_OPCODE, 0, 0),
        }
    }

    fn ns_page(&self, s: &Subsystem) -> Vec<u8> {
        let i = s.volume().info();
        let mut eui64 = [0u8; 8];
        eui64.copy_from_slice(&s.nguid[8..16]);
        identify::namespace(&NamespaceInfo {
            blocks: i.blocks,
            block_size: i.block_size,
            nguid: s.nguid,
            eui64,
            anagrpid: 1,
            nawun: u16::try_from(
                i.max_write_blocks
                    .min(MAX_TRANSFER as u32 / i.block_size)
                    .saturating_sub(1),
            )
            .unwrap_or(0),
        })
    }

    fn discovery_log(&self) -> Vec<u8> {
        let portals: Vec<String> = if self.target.portal().advertise.is_empty() {
            vec![self.local.to_string()]
        } else {
            self.target.portal().advertise.clone()
        };
        let host = self
            .ctrl
            .as_ref()
            .map(|c| c.hostnqn.clone())
            .unwrap_or_default();
        let mut entries = Vec::new();
        for (portid, p) in portals.iter().enumerate() {
            let (addr, port) = match p.rsplit_once(':') {
                Some((a, port)) => (
                    a.trim_start_matches('[').trim_end_matches(']').to_owned(),
                    port.to_owned(),
                ),
                None => (p.clone(), "4420".to_owned()),
            };
            let ipv6 = addr.contains(':');
            for s in self.target.subsystems() {
                if !s.allows(&host) {
                    continue;
                }
                entries.push(DiscoveryEntry {
                    subtype: 2,
                    portid: u16::try_from(portid + 1).unwrap_or(1),
                    trsvcid: port.clone(),
                    traddr: addr.clone(),
                    ipv6,
                    subnqn: s.spec.nqn.clone(),
                });
            }
            entries.push(DiscoveryEntry {
                subtype: 3,
                portid: u16::try_from(portid + 1).unwrap_or(1),
                trsvcid: port,
                traddr: addr,
                ipv6,
                subnqn: DISCOVERY_NQN.into(),
            });
        }
        identify::discovery_log(self.target.discovery_generation(), &entries)
    }

    fn deliver_events(&mut self, out: &mut OutQueue) {
        let Some(c) = self.ctrl.clone() else {
            return;
        };
        while !self.aers.is_empty() {
            let Some(ev) = c.next_event() else {
                break;
            };
            let cid = self.aers.remove(0);
            self.respond(out, cid, Status::SUCCESS, ev, 0);
        }
    }

    fn on_io(&mut self, sqe: Sqe, data: &[u8], out: &mut OutQueue) {
        let cid = sqe.cid.get();
        let Some(sub) = self.ctrl.as_ref().and_then(|c| c.subsystem.clone()) else {
            self.respond(out, cid, Status::INVALID_OPCODE, 0, 0);
            return;
        };
        if sqe.nsid.get() != 1 {
            self.respond(out, cid, Status::INVALID_NAMESPACE, 0, 0);
            return;
        }
        let (state, _) = sub.ana();
        if state != ana::OPTIMIZED && state != ana::NON_OPTIMIZED {
            let sc = if state == ana::INACCESSIBLE {
                0x02
            } else if state == ana::PERSISTENT_LOSS {
                0x01
            } else {
                0x03
            };
            self.respond(out, cid, st(3, sc, false), 0, 0);
            return;
        }
        let bs = self.block_size as usize;
        let blocks = self.handle.as_ref().map_or(0, Handle::blocks);
        let (sgl_len, in_capsule) = Self::sgl(&sqe);
        match sqe.opcode {
            opc::FLUSH => {
                let t = self.new_task(sqe, Work::Plain);
                let slot = self.alloc(t);
                self.submit(slot, 0, Op::Flush);
            }
            opc::READ | opc::WRITE => {
                let lba = sqe.slba();
                let n = u64::from(sqe.nlb()) + 1;
                let len = n as usize * bs;
                if lba.checked_add(n).is_none_or(|e| e > blocks) {
                    self.respond(out, cid, Status::LBA_OUT_OF_RANGE, 0, 0);
                    return;
                }
                if len > MAX_TRANSFER {
                    self.respond(out, cid, Status::INVALID_FIELD, 0, 0);
                    return;
                }
                if sgl_len != len {
                    self.respond(out, cid, Status::SGL_LENGTH_INVALID, 0, 0);
                    return;
                }
                if sqe.opcode == opc::READ {
                    let mut t = self.new_task(sqe, Work::Read { lba });
                    t.read_len = len;
                    t.reads.resize(len.div_ceil(CHUNK), None);
                    let slot = self.alloc(t);
                    self.submit_reads(slot);
                } else {
                    let fua = sqe.fua();
                    let mut t = self.new_task(sqe, Work::Write { lba, fua });
                    t.want = len;
                    t.data.resize(len.div_ceil(CHUNK), Vec::new());
                    let slot = self.alloc(t);
                    if in_capsule {
                        if data.len() != len {
                            self.release(slot);
                            self.respond(out, cid, Status::SGL_LENGTH_INVALID, 0, 0);
                            return;
                        }
                        self.take_data(slot, 0, data);
                        self.start(slot, out);
                    } else {
                        self.r2t(slot, out);
                    }
                }
            }
            opc::WRITE_ZEROES => {
                let lba = sqe.slba();
                let n = u32::from(sqe.nlb()) + 1;
                if lba.checked_add(u64::from(n)).is_none_or(|e| e > blocks) {
                    self.respond(out, cid, Status::LBA_OUT_OF_RANGE, 0, 0);
                    return;
                }
                let deac = sqe.cdw12.get() & (1 << 25) != 0;
                let t = self.new_task(sqe, Work::Plain);
                let slot = self.alloc(t);
                if deac {
                    // DLFEAT: deallocated blocks read as zeros.
                    self.submit(slot, 0, Op::Trim { lba, blocks: n });
                } else {
                    self.submit(
                        slot,
                        0,
                        Op::WriteZeroes {
                            lba,
                            blocks: n,
                            fua: sqe.fua(),
                        },
                    );
                }
            }
            opc::DSM => {
                let nr = (sqe.cdw10.get() & 0xff) as usize + 1;
                let deallocate = sqe.cdw11.get() & (1 << 2) != 0;
                if sgl_len < nr * 16 {
                    self.respond(out, cid, Status::SGL_LENGTH_INVALID, 0, 0);
                    return;
                }
                let mut t = self.new_task(sqe, Work::Plain);
                if !deallocate {
                    // Integral read/write hints only: nothing to do.
                    self.respond(out, cid, Status::SUCCESS, 0, 0);
                    return;
                }
                t.want = sgl_len;
                t.data.push(Vec::new());
                let slot = self.alloc(t);
                if in_capsule {
                    self.take_data(slot, 0, data);
                    self.start(slot, out);
                } else {
                    self.r2t(slot, out);
                }
            }
            _ => self.respond(out, cid, Status::INVALID_OPCODE, 0, 0),
        }
    }

    fn r2t(&mut self, slot: usize, out: &mut OutQueue) {
        let ttag = loop {
            let t = self.next_ttag;
            self.next_ttag = self.next_ttag.wrapping_add(1).max(1);
            if !self.by_ttag.contains_key(&t) {
                break t;
            }
        };
        let Some(t) = self.tasks[slot].as_mut() else {
            return;
        };
        t.ttag = ttag;
        t.r2t_open = true;
        let (cid, off, len) = (t.sqe.cid.get(), t.got, t.want - t.got);
        self.by_ttag.insert(ttag, slot);
        let mut h = self.header(PduType::R2t, DATA_HLEN, 0, 0);
        h[8..10].copy_from_slice(&cid.to_le_bytes());
        h[10..12].copy_from_slice(&ttag.to_le_bytes());
        h[12..16].copy_from_slice(&u32::try_from(off).unwrap_or(0).to_le_bytes());
        h[16..20].copy_from_slice(&u32::try_from(len).unwrap_or(0).to_le_bytes());
        self.push_header(out, &h);
    }

    fn take_data(&mut self, slot: usize, offset: usize, data: &[u8]) {
        self.copy_data(slot, offset, data);
        if let Some(t) = self.tasks[slot].as_mut() {
            t.got = t.got.max(offset + data.len()).min(t.want);
        }
    }

    /// Where byte `off` of a task's data goes: buffer index, offset in it,
    /// and the buffer's size (a write's data in `CHUNK`s; other data in
    /// one buffer).
    fn place_of(t: &Task, off: usize) -> (usize, usize, usize) {
        if matches!(t.work, Work::Write { .. }) {
            (
                off / CHUNK,
                off % CHUNK,
                CHUNK.min(t.want - (off / CHUNK) * CHUNK),
            )
        } else {
            (0, off, t.want)
        }
    }

    /// Copy data at `offset` into the task's buffers (not counted).
    fn copy_data(&mut self, slot: usize, offset: usize, data: &[u8]) {
        let pool = self.pool.as_ref();
        let Some(t) = self.tasks[slot].as_mut() else {
            return;
        };
        let mut off = offset;
        let mut src = data;
        while !src.is_empty() && off < t.want {
            let (c, within, cap) = Self::place_of(t, off);
            let buf = &mut t.data[c];
            if buf.capacity() == 0 {
                *buf = buffer_pool::take(pool, cap);
            }
            let n = (cap - within).min(src.len());
            buffer_pool::place(buf, within, &src[..n]);
            off += n;
            src = &src[n..];
        }
    }

    fn on_h2c(
        &mut self,
        d: &DataPdu,
        data: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<(), Close> {
        let slot = self.h2c_head(d, data.len(), out)?;
        self.take_data(slot, d.offset.get() as usize, data);
        self.h2c_done(slot, out, cx);
        Ok(())
    }

    /// The header part of an H2CData PDU with `len` bytes of data: the
    /// checks. Returns the task the data is for.
    fn h2c_head(&mut self, d: &DataPdu, len: usize, out: &mut OutQueue) -> Result<usize, Close> {
        let Some(&slot) = self.by_ttag.get(&d.ttag.get()) else {
            return Err(self.term(
                out,
                fes::INVALID_HEADER_FIELD,
                10,
                "H2CData for an unknown TTAG",
            ));
        };
        let Some(t) = self.tasks[slot].as_ref() else {
            return Err(Close::Now);
        };
        let off = d.offset.get() as usize;
        if d.cccid.get() != t.sqe.cid.get() {
            return Err(self.term(out, fes::INVALID_HEADER_FIELD, 8, "H2CData CCCID mismatch"));
        }
        if off != t.got || off + len > t.want || d.length.get() as usize != len {
            return Err(self.term(out, fes::DATA_OUT_OF_RANGE, 0, "H2CData outside the R2T"));
        }
        if len > self.target.portal().max_h2c_data as usize {
            return Err(self.term(
                out,
                fes::DATA_LIMIT_EXCEEDED,
                0,
                "H2CData beyond MAXH2CDATA",
            ));
        }
        Ok(slot)
    }

    /// An H2CData PDU's data is in and counted: start the command once it
    /// has all of its data.
    fn h2c_done(&mut self, slot: usize, out: &mut OutQueue, cx: &mut Context) {
        let done = self.tasks[slot].as_ref().is_some_and(|t| t.got == t.want);
        if done {
            if let Some(t) = self.tasks[slot].as_mut() {
                t.r2t_open = false;
                let tt = t.ttag;
                self.by_ttag.remove(&tt);
            }
            if matches!(
                self.tasks[slot].as_ref().map(|t| &t.work),
                Some(Work::Param)
            ) {
                // Connect data that came through R2T (taken before the
                // release hands the task's buffers back to the pool).
                let d: Vec<u8> = self.tasks[slot]
                    .as_ref()
                    .map(|t| t.data.concat())
                    .unwrap_or_default();
                let Some(t) = self.release(slot) else {
                    return;
                };
                self.connect(&t.sqe, &d, out, cx);
                return;
            }
            self.start(slot, out);
        }
    }

    /// Handle the header of an H2CData PDU whose data has not all arrived
    /// (`have`: the bytes from its data offset on that did) and take the
    /// data as it comes. Returns the input consumed.
    fn start_rx(
        &mut self,
        d: &DataPdu,
        pdo: usize,
        len: usize,
        have: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<usize, Close> {
        let slot = self.h2c_head(d, len, out)?;
        self.rx = Some(RxData {
            slot,
            first: d.offset.get() as usize,
            seg: SegmentRx::new(len, 0, self.dd),
        });
        let n = have.len().min(len);
        self.rx_copy(&have[..n], out, cx)?;
        Ok(pdo + n)
    }

    /// Data bytes of the PDU being received, from the input.
    fn rx_copy(&mut self, data: &[u8], out: &mut OutQueue, cx: &mut Context) -> Result<(), Close> {
        let Some(rx) = self.rx.as_mut() else {
            return Ok(());
        };
        let (slot, at) = (rx.slot, rx.first + rx.seg.done());
        rx.seg.arrived(data);
        self.copy_data(slot, at, data);
        if self
            .rx
            .as_ref()
            .is_some_and(|rx| rx.seg.complete_without_tail())
        {
            self.rx_finish(&[], out, cx)?;
        }
        Ok(())
    }

    /// Input while a PDU's data is being received: its data (when the
    /// socket I/O did not put it in place), then its data digest.
    fn rx_input(
        &mut self,
        input: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<usize, Close> {
        let Some(rx) = &self.rx else {
            return Ok(0);
        };
        match rx.seg.next(input.len()) {
            Next::Data(n) => self.rx_copy(&input[..n], out, cx).map(|()| n),
            Next::Wait => Ok(0),
            Next::Tail(n) => self.rx_finish(&input[..n], out, cx).map(|()| n),
        }
    }

    /// The whole data is in (`tail`: its digest): check the digest, count
    /// the data, move the command on.
    fn rx_finish(
        &mut self,
        tail: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<(), Close> {
        let Some(rx) = self.rx.take() else {
            return Ok(());
        };
        if !rx.seg.tail_ok(tail) {
            // A transport error: the command fails with the connection.
            return Err(self.term(out, fes::HEADER_DIGEST_ERROR, 0, "data digest"));
        }
        if let Some(t) = self.tasks[rx.slot].as_mut() {
            t.got = t.got.max(rx.first + rx.seg.len()).min(t.want);
            self.h2c_done(rx.slot, out, cx);
        }
        Ok(())
    }

    /// All data is in: run the engine work.
    fn start(&mut self, slot: usize, out: &mut OutQueue) {
        let Some(t) = self.tasks[slot].as_mut() else {
            return;
        };
        let bs = u64::from(self.block_size);
        match t.work {
            Work::Write { lba, fua } => {
                let chunks = std::mem::take(&mut t.data);
                for (i, buf) in chunks.into_iter().enumerate() {
                    self.submit(
                        slot,
                        0,
                        Op::Write {
                            lba: lba + (i * CHUNK) as u64 / bs,
                            buf,
                            fua,
                        },
                    );
                }
            }
            Work::Plain => {
                // DSM ranges: 16 bytes each (attributes, NLB, SLBA).
                let d = t.data.concat();
                let nr = (t.sqe.cdw10.get() & 0xff) as usize + 1;
                let blocks = self.handle.as_ref().map_or(0, Handle::blocks);
                let mut ranges = Vec::new();
                for i in 0..nr.min(d.len() / 16) {
                    let r = &d[i * 16..i * 16 + 16];
                    let n = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
                    let mut s = [0u8; 8];
                    s.copy_from_slice(&r[8..16]);
                    let slba = u64::from_le_bytes(s);
                    if n == 0 {
                        continue;
                    }
                    if slba.checked_add(u64::from(n)).is_none_or(|e| e > blocks) {
                        t.status = Status::LBA_OUT_OF_RANGE;
                        ranges.clear();
                        break;
                    }
                    ranges.push((slba, n));
                }
                for (lba, n) in ranges {
                    self.submit(slot, 0, Op::Trim { lba, blocks: n });
                }
            }
            _ => {}
        }
        self.maybe_finish(slot, out);
    }

    fn submit_reads(&mut self, slot: usize) {
        let bs = u64::from(self.block_size);
        loop {
            let Some(t) = self.tasks[slot].as_mut() else {
                return;
            };
            let Work::Read { lba } = t.work else {
                return;
            };
            let i = t.next_submit;
            if i >= t.reads.len() || i >= t.next_send + 8 {
                return;
            }
            let off = i * CHUNK;
            let len = (t.read_len - off).min(CHUNK);
            t.next_submit += 1;
            self.submit(
                slot,
                i,
                Op::Read {
                    lba: lba + off as u64 / bs,
                    buf: buffer_pool::take_zeroed(self.pool.as_ref(), len),
                },
            );
        }
    }

    fn on_completion(&mut self, c: Completion, out: &mut OutQueue) {
        let slot = (c.tag & 0xf_ffff) as usize;
        let chunk = ((c.tag >> 20) & 0xfff) as usize;
        let serial = (c.tag >> 32) as u32;
        let Some(t) = self
            .tasks
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|t| t.serial == serial)
        else {
            if let Some(b) = c.buf {
                buffer_pool::give_back(self.pool.as_ref(), b);
            }
            return;
        };
        t.ops = t.ops.saturating_sub(1);
        let write = !matches!(t.work, Work::Read { .. });
        if let Err(e) = &c.result {
            if t.status == Status::SUCCESS {
                t.status = engine_status(e.kind(), write);
            }
        }
        if let Some(buf) = c.buf {
            match (&t.work, t.reads.get_mut(chunk)) {
                (Work::Read { .. }, Some(r)) if c.result.is_ok() => *r = Some(buf),
                // A write's data buffer, or a failed read's: to the pool.
                _ => buffer_pool::give_back(self.pool.as_ref(), buf),
            }
        }
        if matches!(t.work, Work::Read { .. }) {
            self.pump_read(slot, out);
        } else {
            self.maybe_finish(slot, out);
        }
    }

    fn pump_read(&mut self, slot: usize, out: &mut OutQueue) {
        loop {
            let sqflow_off = self.sqflow_off;
            let Some(t) = self.tasks[slot].as_mut() else {
                return;
            };
            if t.status != Status::SUCCESS || t.next_send >= t.reads.len() {
                break;
            }
            let Some(buf) = t.reads[t.next_send].take() else {
                break;
            };
            t.next_send += 1;
            let last = t.next_send == t.reads.len();
            let success = last && sqflow_off && t.ops == 0;
            let (cid, off) = (t.sqe.cid.get(), t.sent);
            t.sent += buf.len();
            self.c2h(out, cid, off, buf, last, success, true);
            if success {
                self.sq_head = (self.sq_head + 1) % self.sqsize.max(1);
                self.release(slot);
                return;
            }
        }
        self.submit_reads(slot);
        self.maybe_finish(slot, out);
    }

    fn maybe_finish(&mut self, slot: usize, out: &mut OutQueue) {
        let Some(t) = self.tasks[slot].as_ref() else {
            return;
        };
        if t.ops > 0 || (t.want > 0 && t.got < t.want && t.status == Status::SUCCESS) {
            return;
        }
        if matches!(t.work, Work::Read { .. })
            && t.status == Status::SUCCESS
            && t.next_send < t.reads.len()
        {
            return;
        }
        let Some(t) = self.release(slot) else {
            return;
        };
        let _ = t.started;
        self.respond(out, t.sqe.cid.get(), t.status, 0, 0);
    }

    fn verify_digests(
        &self,
        input: &[u8],
        hlen: usize,
        plen: usize,
        pdo: usize,
    ) -> Result<(), (u16, &'static str)> {
        if self.hd {
            let w = [
                input[hlen],
                input[hlen + 1],
                input[hlen + 2],
                input[hlen + 3],
            ];
            if crc32c(&input[..hlen]) != from_wire(w) {
                return Err((fes::HEADER_DIGEST_ERROR, "header digest"));
            }
        }
        if self.dd && pdo > 0 && plen > pdo + 4 {
            let d = &input[pdo..plen - 4];
            let w = [
                input[plen - 4],
                input[plen - 3],
                input[plen - 2],
                input[plen - 1],
            ];
            if crc32c(d) != from_wire(w) {
                return Err((0, "data digest"));
            }
        }
        Ok(())
    }
}

impl Protocol for NvmeConn {
    fn on_input(
        &mut self,
        input: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<usize, Close> {
        if self.rx.is_some() {
            return self.rx_input(input, out, cx);
        }
        if input.len() < CH_LEN {
            return Ok(0);
        }
        if self.pool.is_none() {
            self.pool = Some(cx.buffer_pool().clone());
        }
        let plen = u32::from_le_bytes([input[4], input[5], input[6], input[7]]) as usize;
        let portal = self.target.portal();
        let limit = DATA_HLEN
            + 8
            + (portal.max_h2c_data as usize)
                .max(portal.inline_data as usize + 64)
                .max(ADMIN_INLINE + 72);
        if plen > limit {
            return Err(self.term(out, fes::DATA_LIMIT_EXCEEDED, 4, "PDU longer than allowed"));
        }
        let hdgst = self.hd && self.phase == Phase::Ready;
        let pdu = match parse_header(input, hdgst) {
            Ok(p) => p,
            Err(keel_pdu::nvme::HeaderError::Incomplete(_)) => return Ok(0),
            Err(e) => {
                let (f, fei) = e.fes();
                return Err(self.term(out, f, fei, "invalid PDU header"));
            }
        };
        let hlen = usize::from(input[2]);
        let pdo = usize::from(input[3]);
        if input.len() < plen {
            // Host data that has not all arrived is taken as it comes, into
            // the command's buffers, once the header is in.
            let TcpPdu::H2cData(d) = &pdu else {
                return Ok(0);
            };
            let data_end = if self.dd {
                plen.saturating_sub(4)
            } else {
                plen
            };
            let head = hlen + if self.hd { 4 } else { 0 };
            if self.phase != Phase::Ready || pdo < head || pdo >= data_end || input.len() < pdo {
                return Ok(0);
            }
            if let Err((f, why)) = self.verify_digests(input, hlen, 0, 0) {
                return Err(self.term(out, f, 0, why));
            }
            let d = *d;
            return self.start_rx(&d, pdo, data_end - pdo, &input[pdo..], out, cx);
        }
        if self.phase == Phase::WaitIcReq {
            return match pdu {
                TcpPdu::IcReq(ic) => {
                    self.on_icreq(&ic, out)?;
                    Ok(plen)
                }
                _ => Err(self.term(out, fes::PDU_SEQUENCE_ERROR, 0, "PDU before ICReq")),
            };
        }
        if let Err((f, why)) = self.verify_digests(input, hlen, plen, pdo) {
            if f == 0 {
                // Data digest error: the command fails, the connection
                // is terminated (NVMe/TCP 7.4.6.2: a transport error).
                return Err(self.term(out, fes::HEADER_DIGEST_ERROR, 0, why));
            }
            return Err(self.term(out, f, 0, why));
        }
        let data_end = if self.dd && pdo > 0 && plen > pdo {
            plen - 4
        } else {
            plen
        };
        let data = if pdo > 0 {
            &input[pdo.min(data_end)..data_end]
        } else {
            &[][..]
        };
        match pdu {
            TcpPdu::CapsuleCmd(_, sqe) => {
                let max = if self.qid == Some(0) || self.qid.is_none() {
                    ADMIN_INLINE
                } else {
                    portal.inline_data as usize
                };
                if data.len() > max {
                    return Err(self.term(
                        out,
                        fes::DATA_LIMIT_EXCEEDED,
                        0,
                        "in-capsule data beyond IOCCSZ",
                    ));
                }
                self.on_capsule(sqe, data, out, cx)?;
            }
            TcpPdu::H2cData(d) => self.on_h2c(&d, data, out, cx)?,
            TcpPdu::H2cTermReq(_) => return Err(Close::Now),
            TcpPdu::IcReq(_) => {
                return Err(self.term(out, fes::PDU_SEQUENCE_ERROR, 0, "second ICReq"))
            }
            _ => {
                return Err(self.term(
                    out,
                    fes::INVALID_HEADER_FIELD,
                    0,
                    "PDU type a host must not send",
                ))
            }
        }
        Ok(plen)
    }

    fn direct_target(&mut self) -> Option<(&mut Vec<u8>, usize)> {
        let rx = self.rx.as_ref()?;
        let (left, at) = (rx.seg.left(), rx.first + rx.seg.done());
        if left == 0 {
            return None;
        }
        let t = self.tasks.get_mut(rx.slot)?.as_mut()?;
        if at >= t.want {
            return None;
        }
        let (c, within, size) = Self::place_of(t, at);
        buffer_pool::room_at(self.pool.as_ref(), &mut t.data[c], size, within, left)
    }

    fn direct_then(&self) -> usize {
        // The next PDU's header: a command capsule's (the longest a host
        // sends with data) and its digest; an H2CData header is shorter.
        CH_LEN + 64 + if self.hd { 4 } else { 0 }
    }

    fn on_direct(
        &mut self,
        n: usize,
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<usize, Close> {
        // The bytes just received end the buffer they went to.
        let Some(rx) = self.rx.as_mut() else {
            return Ok(0);
        };
        let at = rx.first + rx.seg.done();
        match self.tasks[rx.slot].as_ref() {
            Some(t) => {
                let (c, within, _) = Self::place_of(t, at);
                rx.seg.arrived(&t.data[c][within..within + n]);
            }
            None => return Err(Close::Now),
        }
        if rx.seg.complete_without_tail() {
            self.rx_finish(&[], out, cx)?;
        }
        Ok(1)
    }

    fn poll(&mut self, out: &mut OutQueue, cx: &mut Context) -> Result<usize, Close> {
        let mut work = 0;
        if let Some(c) = &self.ctrl {
            if c.dead.load(Ordering::Acquire) {
                return Err(Close::Now);
            }
            if self.qid == Some(0) && c.expired(cx.now()) {
                self.target
                    .stats
                    .keep_alive_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(peer = %self.peer, cntlid = c.cntlid, "keep-alive timeout; tearing the association down");
                self.target.remove_controller(c.cntlid);
                return Err(Close::Now);
            }
        }
        if let Some(h) = self.handle.as_mut() {
            let comps = &mut self.completions;
            work += h.poll_completions(|c| comps.push(c));
        }
        if !self.completions.is_empty() {
            let mut cs = std::mem::take(&mut self.completions);
            for c in cs.drain(..) {
                self.on_completion(c, out);
            }
            if self.completions.is_empty() {
                self.completions = cs;
            }
            work += 1;
        }
        if !self.aers.is_empty() {
            self.deliver_events(out);
        }
        Ok(work)
    }

    fn in_flight(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| h.in_flight() > 0)
    }

    fn before_sleep(&mut self, cx: &mut Context) -> bool {
        if !self.completions.is_empty() {
            return false;
        }
        if let Some(h) = self.handle.as_mut() {
            let comps = &mut self.completions;
            match h.before_sleep(|c| comps.push(c)) {
                SleepCheck::PollAgain => return false,
                SleepCheck::Sleep { wake_at: Some(t) } => self.retry_due.at(t, cx),
                SleepCheck::Sleep { wake_at: None } => {}
            }
        }
        // Wake for keep-alive checks and asynchronous events.
        if self.qid == Some(0) && !self.timer_armed.get() {
            let flag = self.timer_armed.clone();
            flag.set(true);
            cx.add_timer(Duration::from_millis(500), move |_| flag.set(false));
        }
        true
    }

    fn on_close(&mut self, reason: &CloseReason, _cx: &mut Context) {
        self.notify = None;
        // Operations in flight finish before the handle goes, so no buffer
        // is freed under the kernel; every buffer it holds comes back.
        if let Some(h) = self.handle.take() {
            let pool = self.pool.as_ref();
            h.close(|b| buffer_pool::give_back(pool, b));
        }
        // Buffers of unfinished commands back to the pool.
        for i in 0..self.tasks.len() {
            self.release(i);
        }
        for c in self.completions.drain(..) {
            if let Some(b) = c.buf {
                buffer_pool::give_back(self.pool.as_ref(), b);
            }
        }
        if let (Some(c), Some(qid)) = (&self.ctrl, self.qid) {
            if qid == 0 {
                // The admin queue going away ends the association.
                self.target.remove_controller(c.cntlid);
            } else {
                c.remove_queue(qid);
            }
        }
        tracing::debug!(peer = %self.peer, ?reason, qid = ?self.qid, "NVMe/TCP connection closed");
        self.phase = Phase::Closed;
    }
}
