//! One iSCSI connection (and its session: MaxConnections=1, error recovery
//! level 0) as a reactor [`Protocol`]: login with negotiation and CHAP,
//! discovery, the full-feature phase with CmdSN windows, immediate and
//! unsolicited data, R2T and Data-Out, Data-In with phase-collapsed status,
//! NOP, task management and logout.
//!
//! Each connection owns an engine [`Handle`] on its reactor's thread, so
//! completions come back to the connection that submitted them without any
//! routing; the handle's eventfd is registered with the reactor so an idle
//! reactor sleeps until the engine or the socket has something.
//!
//! Errors from the initiator get the protocol's answer (a Reject, a login
//! failure status, CHECK CONDITION with sense) or a dropped connection; they
//! never reach other connections.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_blockvol::{Completion, Error as EngineError, Handle, Op, SleepCheck};
use keel_pdu::iscsi::digest::{crc32c, crc32c_parts, from_wire, to_wire};
use keel_pdu::iscsi::text::{parse_pairs, push_pair};
use keel_pdu::iscsi::{
    padded_len, DataIn, DataOut, Login, LogoutRequest, LogoutResponse, Nop, Pdu, R2t, RawBhs,
    Reject, Residual, ScsiCommand, ScsiResponse, TaskMgmtRequest, TaskMgmtResponse, Text, BHS_LEN,
};
use keel_pdu::scsi::sense::{asc, key, Sense};
use keel_pdu::scsi::{parse_cdb, status, Cdb};
use keel_pdu::segment::{Next, SegmentRx};
use keel_reactor::{
    buffer_pool, BufferPool, Close, CloseReason, Context, Interest, OutQueue, Protocol,
    Registration,
};
use smallvec::SmallVec;

use crate::chap::{self, Credentials};
use crate::lun::{Action, DataAction, Nexus, ASC_INVALID_FIELD_IN_IU, ASC_MISCOMPARE};
use crate::params::{negotiate_declaring, Negotiated};
use crate::target::{PortalSpec, Registry, SessionInfo, Target};

/// Engine I/O is split into buffers of at most this size.
const CHUNK: usize = 256 << 10;

/// A task's data-out buffers, one per [`CHUNK`]; inline up to 1 MiB (no
/// allocation for the list itself).
type Chunks = SmallVec<[Vec<u8>; 4]>;

/// Data bytes a login PDU may carry.
const LOGIN_MAX_DATA: usize = 64 << 10;
/// Reserved TTT meaning "none".
const NO_TTT: u32 = 0xffff_ffff;
/// Solicited (R2T) bytes outstanding per connection at most.
const MAX_SOLICITED: u64 = 16 << 20;

/// Reject reasons (RFC 7143 §11.17.1).
mod reject {
    pub const DATA_DIGEST: u8 = 0x02;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const NOT_SUPPORTED: u8 = 0x05;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
}

/// Login status (class, detail), RFC 7143 §11.13.5.
mod login_status {
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0);
    pub const AUTH_FAILED: (u8, u8) = (2, 1);
    pub const NOT_AUTHORIZED: (u8, u8) = (2, 2);
    pub const NOT_FOUND: (u8, u8) = (2, 3);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 5);
    pub const MISSING_PARAMETER: (u8, u8) = (2, 7);
    pub const SESSION_NOT_FOUND: (u8, u8) = (2, 10);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (2, 11);
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// No authentication required or chosen yet.
    Start,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    WaitAlgorithm,
    /// Challenge sent; waiting for CHAP_N/CHAP_R.
    Challenged { id: u8, challenge: Vec<u8> },
    /// Authenticated (or none needed).
    Done,
}

#[derive(Debug)]
struct LoginState {
    started: Instant,
    first: bool,
    isid: [u8; 6],
    tsih: u16,
    itt: u32,
    cid: u16,
    cmd_sn: u32,
    neg: Negotiated,
    seen: Vec<String>,
    text: Vec<u8>,
    initiator: Option<String>,
    target: Option<Arc<Target>>,
    discovery: bool,
    auth: Auth,
    creds: Option<Credentials>,
    mutual: Option<Credentials>,
    tpgt_sent: bool,
}

#[derive(Debug)]
enum Phase {
    Login(Box<LoginState>),
    Full,
    Closed,
}

/// What a task does once its data-out is in (or at once).
#[derive(Debug)]
enum Work {
    /// A WRITE: chunks go to the engine as they are.
    Write { lba: u64, fua: bool, atomic: bool },
    /// Parameter data for [`crate::lun::Lun::with_data`].
    Param,
    /// A READ (or VERIFY without BYTCHK when `send` is false).
    Read { lba: u64, blocks: u32, send: bool },
    /// SYNCHRONIZE CACHE.
    Flush,
    /// Engine work from a data action.
    Data(DataAction),
    /// A write whose last block is partial: reading that block first.
    Tail { lba: u64, fua: bool },
    /// WRITE SAME of a pattern, a few chunks in flight at a time.
    Same {
        lba: u64,
        blocks: u32,
        pattern: Vec<u8>,
        done: u32,
    },
    /// Nothing left but the status.
    None,
}

/// A SCSI task in flight.
#[derive(Debug)]
struct Task {
    serial: u32,
    itt: u32,
    lun: u64,
    cdb: Cdb,
    raw: [u8; 16],
    edtl: u32,
    started: Instant,
    work: Work,
    /// Bytes of data-out the command needs (0 when none or rejected).
    want: u32,
    /// Data-out received into `data` (bytes, counted once per offset).
    got: u32,
    /// Data-out buffers of `CHUNK` bytes each.
    data: Chunks,
    /// Unsolicited Data-Out still expected (the F bit has not come).
    unsol_open: bool,
    /// End of the unsolicited region.
    unsol_end: u32,
    /// DataSN expected on the next unsolicited Data-Out.
    unsol_sn: u32,
    /// Next offset to ask for with an R2T.
    next_r2t: u32,
    r2t_sn: u32,
    /// Outstanding R2Ts: (ttt, offset, length, next DataSN expected).
    r2ts: SmallVec<[(u32, u32, u32, u32); 2]>,
    /// The command is answered with this once the unsolicited data is in
    /// (an EDTL that does not match the CDB).
    reject_with: Option<(u8, Option<Sense>, Residual, u32)>,
    /// Engine operations in flight.
    ops: u32,
    /// First error of the engine operations.
    error: Option<(u8, Option<Sense>)>,
    /// Read buffers by chunk index, and the next chunk to send.
    reads: SmallVec<[Option<Vec<u8>>; 4]>,
    next_send: usize,
    /// Next chunk to submit (reads wait for pool buffers).
    next_submit: usize,
    data_sn: u32,
    sent: u32,
    /// Bytes of data-in to send (min(EDTL, the data)).
    send_len: u32,
    /// Residual of a data-out command whose EDTL differs from the CDB.
    resid: Option<(Residual, u32)>,
    /// CAW / VERIFY stage: compare done, now writing.
    staged: bool,
    aborted: bool,
}

/// The data segment of a SCSI Command or Data-Out PDU whose header was
/// handled before all of its data had arrived. The data goes into the
/// task's buffers as it comes: straight from the socket where the socket
/// I/O allows ([`Protocol::direct_target`]), else copied from the input.
/// The data counts, and the task moves on, once the whole segment (and its
/// digest) is in.
#[derive(Debug)]
struct RxData {
    /// The task and its serial (`None`: the data is dropped).
    task: Option<(usize, u32)>,
    /// Buffer offset of this PDU's first data byte.
    first: u32,
    /// The data segment: what has come, what is still to come.
    seg: SegmentRx,
    /// The header, for a reject.
    bhs: RawBhs,
}

/// A task-management request waiting for aborted tasks to drain.
#[derive(Debug)]
struct PendingTmf {
    itt: u32,
    waiting: Vec<usize>,
    response: u8,
    cold_reset: bool,
}

/// An iSCSI connection on a reactor.
pub struct IscsiConn {
    reg: Arc<Registry>,
    portal: PortalSpec,
    peer: SocketAddr,
    local: SocketAddr,
    phase: Phase,
    neg: Negotiated,
    hd: bool,
    dd: bool,
    stat_sn: u32,
    exp_cmd_sn: u32,
    depth: u32,
    target: Option<Arc<Target>>,
    nexus: Nexus,
    tsih: u16,
    kill: Option<Arc<AtomicBool>>,
    // The registration must drop before the handle (field order).
    notify: Option<Registration>,
    handle: Option<Handle>,
    /// The reactor's buffer pool (known from the first input on).
    pool: Option<Arc<BufferPool>>,
    block_size: u32,
    tasks: Vec<Option<Task>>,
    free: Vec<usize>,
    by_itt: HashMap<u32, usize>,
    /// Tasks with something to do in `pump` (R2Ts, reads to submit, data).
    ready: VecDeque<usize>,
    serial: u32,
    next_ttt: u32,
    solicited: u64,
    completions: Vec<Completion>,
    tmfs: Vec<PendingTmf>,
    last_rx: Instant,
    ping: Option<(u32, Instant)>,
    /// When the wake-up timer armed last is due (None: not armed).
    timer_due: Rc<Cell<Option<Instant>>>,
    /// Wake-up for a write parked by the engine's admission control.
    retry_due: keel_reactor::WakeBy,
    logout_after_flush: bool,
    discovery: bool,
    /// Data of a PDU whose header is handled, still arriving.
    rx: Option<RxData>,
}

use std::cell::Cell;
use std::rc::Rc;

impl std::fmt::Debug for IscsiConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IscsiConn")
            .field("peer", &self.peer)
            .field("tsih", &self.tsih)
            .field("tasks", &(self.tasks.len() - self.free.len()))
            .finish()
    }
}

fn residual_for(edtl: u32, spdtl: u32) -> (Residual, u32) {
    use std::cmp::Ordering as O;
    match edtl.cmp(&spdtl) {
        O::Less => (
            Residual {
                overflow: true,
                ..Residual::default()
            },
            spdtl - edtl,
        ),
        O::Greater => (
            Residual {
                underflow: true,
                ..Residual::default()
            },
            edtl - spdtl,
        ),
        O::Equal => (Residual::default(), 0),
    }
}

fn engine_sense(e: &EngineError, write: bool) -> (u8, Option<Sense>) {
    use keel_blockvol::ErrorKind as K;
    match e.kind() {
        K::OutOfRange => (
            status::CHECK_CONDITION,
            Some(Sense::new(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE)),
        ),
        K::InvalidArgument => (
            status::CHECK_CONDITION,
            Some(Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)),
        ),
        K::WalFull => (status::BUSY, None),
        K::Closed => (
            status::CHECK_CONDITION,
            Some(Sense::new(key::NOT_READY, asc::NOT_READY)),
        ),
        _ => (
            status::CHECK_CONDITION,
            Some(Sense::new(
                key::MEDIUM_ERROR,
                if write {
                    asc::WRITE_ERROR
                } else {
                    asc::UNRECOVERED_READ_ERROR
                },
            )),
        ),
    }
}

/// A Data-Out out of DataSN order: at error recovery level 0 the data of
/// the command cannot be recovered, so the command ends with ABORTED
/// COMMAND / DATA PHASE ERROR once its outstanding Data-Out sequences are
/// over (the initiator may retry it), nothing after the error is written
/// (full chunks streamed before it may have been), and the session goes on.
fn data_sequence_error(t: &mut Task) {
    t.reject_with = Some((
        status::CHECK_CONDITION,
        Some(Sense::new(key::ABORTED_COMMAND, (0x4b, 0x00))),
        Residual::default(),
        0,
    ));
    t.work = Work::None;
    t.next_r2t = t.want;
}

fn u32_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl IscsiConn {
    /// A new connection from `peer` accepted on `local`.
    pub fn new(reg: Arc<Registry>, peer: SocketAddr, local: SocketAddr) -> IscsiConn {
        let portal = reg.portal();
        let mut sn = [0u8; 4];
        chap::random_bytes(&mut sn);
        IscsiConn {
            reg,
            depth: portal.queue_depth.max(1),
            portal,
            peer,
            local,
            phase: Phase::Login(Box::new(LoginState {
                started: Instant::now(),
                first: true,
                isid: [0; 6],
                tsih: 0,
                itt: 0,
                cid: 0,
                cmd_sn: 0,
                neg: Negotiated::default(),
                seen: Vec::new(),
                text: Vec::new(),
                initiator: None,
                target: None,
                discovery: false,
                auth: Auth::Start,
                creds: None,
                mutual: None,
                tpgt_sent: false,
            })),
            neg: Negotiated::default(),
            hd: false,
            dd: false,
            stat_sn: u32::from_be_bytes(sn) & 0x00ff_ffff,
            exp_cmd_sn: 0,
            target: None,
            nexus: Nexus {
                initiator: String::new(),
                isid: [0; 6],
            },
            tsih: 0,
            kill: None,
            notify: None,
            handle: None,
            pool: None,
            block_size: 512,
            tasks: Vec::new(),
            free: Vec::new(),
            by_itt: HashMap::new(),
            ready: VecDeque::new(),
            serial: 0,
            next_ttt: 1,
            solicited: 0,
            completions: Vec::new(),
            tmfs: Vec::new(),
            last_rx: Instant::now(),
            ping: None,
            timer_due: Rc::new(Cell::new(None)),
            retry_due: keel_reactor::WakeBy::default(),
            logout_after_flush: false,
            discovery: false,
            rx: None,
        }
    }

    fn max_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.wrapping_add(self.depth - 1)
    }

    // ---- output -------------------------------------------------------

    /// Queue a PDU: header (+digest), data (+padding, +digest).
    fn send(&self, out: &mut OutQueue, bhs: &RawBhs, data: &[u8]) {
        let b = bhs.to_bytes();
        out.push(&b);
        if self.hd {
            out.push(&to_wire(crc32c(&b)));
        }
        if !data.is_empty() {
            out.push(data);
            let pad = padded_len(data.len()) - data.len();
            if pad > 0 {
                out.push(&[0u8; 3][..pad]);
            }
            if self.dd {
                out.push(&to_wire(crc32c_parts(&[data, &[0u8; 3][..pad]])));
            }
        }
    }

    /// Queue a PDU whose data is a pool buffer, moved (no copy).
    fn send_buf(&self, out: &mut OutQueue, bhs: &RawBhs, data: Vec<u8>) {
        let b = bhs.to_bytes();
        out.push(&b);
        if self.hd {
            out.push(&to_wire(crc32c(&b)));
        }
        let pad = padded_len(data.len()) - data.len();
        let dcrc = self.dd.then(|| crc32c_parts(&[&data, &[0u8; 3][..pad]]));
        out.push_buf(data);
        if pad > 0 {
            out.push(&[0u8; 3][..pad]);
        }
        if let Some(c) = dcrc {
            out.push(&to_wire(c));
        }
    }

    fn next_stat_sn(&mut self) -> u32 {
        let s = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        s
    }

    fn send_reject(&mut self, out: &mut OutQueue, reason: u8, bad: &RawBhs) {
        let r = Reject {
            reason,
            data_len: BHS_LEN,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
            data_sn: 0,
        };
        self.send(out, &r.encode(), &bad.to_bytes());
    }

    fn protocol_error(&mut self, out: &mut OutQueue, bad: &RawBhs, why: &str) -> Close {
        if let Some(t) = &self.target {
            t.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(suppressed) = crate::ratelimit::CONNECTION_EVENTS.allow() {
            tracing::info!(peer = %self.peer, why, suppressed, "iSCSI protocol error; dropping the connection");
        }
        self.send_reject(out, reject::PROTOCOL_ERROR, bad);
        Close::AfterFlush
    }

    // ---- login --------------------------------------------------------

    fn login_fail(&mut self, out: &mut OutQueue, ls: &LoginState, st: (u8, u8)) -> Close {
        if let Some(t) = &ls.target {
            t.stats.login_failures.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(suppressed) = crate::ratelimit::CONNECTION_EVENTS.allow() {
            tracing::info!(
                peer = %self.peer,
                initiator = ls.initiator.as_deref().unwrap_or("?"),
                class = st.0,
                detail = st.1,
                suppressed,
                "iSCSI login refused"
            );
        }
        let r = Login {
            transit: false,
            continue_bit: false,
            csg: 0,
            nsg: 0,
            version_max: 0,
            version: 0,
            data_len: 0,
            isid: ls.isid,
            tsih: 0,
            itt: ls.itt,
            cid: 0,
            sn: self.next_stat_sn(),
            exp_sn: ls.cmd_sn,
            max_cmd_sn: ls.cmd_sn,
            status_class: st.0,
            status_detail: st.1,
        };
        self.send(out, &r.encode(false), &[]);
        Close::AfterFlush
    }

    #[allow(clippy::too_many_lines)]
    fn on_login(
        &mut self,
        mut ls: Box<LoginState>,
        req: &Login,
        data: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<(), Close> {
        if ls.first {
            ls.first = false;
            ls.isid = req.isid;
            ls.tsih = req.tsih;
            ls.cid = req.cid;
            ls.cmd_sn = req.sn;
            ls.itt = req.itt;
            if req.version > 0 {
                return Err(self.login_fail(out, &ls, login_status::UNSUPPORTED_VERSION));
            }
        } else if req.isid != ls.isid || req.tsih != ls.tsih {
            return Err(self.login_fail(out, &ls, login_status::INITIATOR_ERROR));
        }
        ls.itt = req.itt;
        ls.cmd_sn = req.sn;
        if req.csg == 2 || req.csg == 3 || (req.transit && (req.nsg == 2 || req.nsg <= req.csg)) {
            return Err(self.login_fail(out, &ls, login_status::INITIATOR_ERROR));
        }
        if ls.text.len() + data.len() > 4 * LOGIN_MAX_DATA {
            return Err(self.login_fail(out, &ls, login_status::INITIATOR_ERROR));
        }
        ls.text.extend_from_slice(data);
        if req.continue_bit {
            // More text follows: acknowledge with an empty response.
            let r = Login {
                csg: req.csg,
                isid: ls.isid,
                itt: ls.itt,
                sn: self.next_stat_sn(),
                exp_sn: ls.cmd_sn,
                max_cmd_sn: ls.cmd_sn.wrapping_add(self.depth - 1),
                ..Login::default()
            };
            self.send(out, &r.encode(false), &[]);
            self.phase = Phase::Login(ls);
            return Ok(());
        }
        let text = std::mem::take(&mut ls.text);
        let Ok(pairs) = parse_pairs(&text) else {
            return Err(self.login_fail(out, &ls, login_status::INITIATOR_ERROR));
        };
        let mut answer: Vec<u8> = Vec::new();
        type Pairs<'a> = Vec<(&'a str, &'a str)>;
        let (auth_keys, op_keys): (Pairs<'_>, Pairs<'_>) = pairs
            .into_iter()
            .partition(|(k, _)| *k == "AuthMethod" || k.starts_with("CHAP_"));

        // Session type, names, target, ACL (first PDU carrying them).
        for (k, v) in &op_keys {
            match *k {
                "InitiatorName" => ls.initiator = Some((*v).to_owned()),
                "SessionType" => ls.discovery = *v == "Discovery",
                _ => {}
            }
        }
        if ls.initiator.is_none() {
            return Err(self.login_fail(out, &ls, login_status::MISSING_PARAMETER));
        }
        if ls.tsih != 0 && !self.reg.has_session(ls.tsih) {
            return Err(self.login_fail(out, &ls, login_status::SESSION_NOT_FOUND));
        }
        if !ls.discovery && ls.target.is_none() {
            let Some(name) = op_keys
                .iter()
                .find(|(k, _)| *k == "TargetName")
                .map(|p| p.1)
            else {
                return Err(self.login_fail(out, &ls, login_status::MISSING_PARAMETER));
            };
            let Some(t) = self.reg.target(name) else {
                return Err(self.login_fail(out, &ls, login_status::NOT_FOUND));
            };
            if !t.allows(ls.initiator.as_deref().unwrap_or("")) {
                ls.target = Some(t);
                return Err(self.login_fail(out, &ls, login_status::NOT_AUTHORIZED));
            }
            ls.creds = t.spec.chap.clone();
            ls.mutual = t.spec.mutual_chap.clone();
            ls.target = Some(t);
        } else if ls.discovery && ls.auth == Auth::Start {
            ls.creds = self.portal.discovery_chap.clone();
            ls.mutual = None;
        }
        if ls.auth == Auth::Start && ls.creds.is_none() && req.csg == 1 {
            ls.auth = Auth::Done;
        }

        // Security stage.
        if req.csg == 0 {
            for (k, v) in &auth_keys {
                match *k {
                    "AuthMethod" => {
                        let offered: Vec<&str> = v.split(',').collect();
                        if ls.creds.is_some() {
                            if offered.contains(&"CHAP") {
                                push_pair(&mut answer, "AuthMethod", "CHAP");
                                ls.auth = Auth::WaitAlgorithm;
                            } else {
                                return Err(self.login_fail(out, &ls, login_status::AUTH_FAILED));
                            }
                        } else if offered.contains(&"None") {
                            push_pair(&mut answer, "AuthMethod", "None");
                            ls.auth = Auth::Done;
                        } else {
                            return Err(self.login_fail(out, &ls, login_status::AUTH_FAILED));
                        }
                    }
                    "CHAP_A" => {
                        if ls.auth != Auth::WaitAlgorithm {
                            return Err(self.login_fail(out, &ls, login_status::INITIATOR_ERROR));
                        }
                        if !v.split(',').any(|a| a == "5") {
                            push_pair(&mut answer, "CHAP_A", "Reject");
                            return Err(self.login_fail(out, &ls, login_status::AUTH_FAILED));
                        }
                        let mut id = [0u8; 1];
                        chap::random_bytes(&mut id);
                        let mut challenge = vec![0u8; chap::CHALLENGE_LEN];
                        chap::random_bytes(&mut challenge);
                        push_pair(&mut answer, "CHAP_A", "5");
                        push_pair(&mut answer, "CHAP_I", &id[0].to_string());
                        push_pair(&mut answer, "CHAP_C", &chap::encode_hex(&challenge));
                        ls.auth = Auth::Challenged {
                            id: id[0],
                            challenge,
                        };
                    }
                    _ => {}
                }
            }
            if let Auth::Challenged { id, challenge } = ls.auth.clone() {
                let get = |k: &str| auth_keys.iter().find(|(a, _)| *a == k).map(|p| p.1);
                if let (Some(n), Some(r)) = (get("CHAP_N"), get("CHAP_R")) {
                    let creds = ls.creds.clone().unwrap_or(Credentials {
                        user: String::new(),
                        secret: String::new(),
                    });
                    let expect = chap::response(id, creds.secret.as_bytes(), &challenge);
                    let ok = n == creds.user
                        && chap::decode_binary(r).is_some_and(|r| chap::equal(&r, &expect));
                    if !ok {
                        return Err(self.login_fail(out, &ls, login_status::AUTH_FAILED));
                    }
                    match (get("CHAP_I"), get("CHAP_C")) {
                        (Some(i), Some(c)) => {
                            let Some(m) = ls.mutual.clone() else {
                                return Err(self.login_fail(out, &ls, login_status::AUTH_FAILED));
                            };
                            let (Ok(i), Some(c)) = (i.parse::<u8>(), chap::decode_binary(c)) else {
                                return Err(self.login_fail(out, &ls, login_status::AUTH_FAILED));
                            };
                            // A reflected challenge would let an attacker
                            // use us as an oracle.
                            if c == challenge || c.is_empty() {
                                return Err(self.login_fail(out, &ls, login_status::AUTH_FAILED));
                            }
                            let r = chap::response(i, m.secret.as_bytes(), &c);
                            push_pair(&mut answer, "CHAP_N", &m.user);
                            push_pair(&mut answer, "CHAP_R", &chap::encode_hex(&r));
                        }
                        (None, None) => {}
                        _ => return Err(self.login_fail(out, &ls, login_status::AUTH_FAILED)),
                    }
                    ls.auth = Auth::Done;
                } else if get("CHAP_N").is_some() || get("CHAP_R").is_some() {
                    return Err(self.login_fail(out, &ls, login_status::AUTH_FAILED));
                }
            }
        } else if !auth_keys.is_empty() {
            return Err(self.login_fail(out, &ls, login_status::INITIATOR_ERROR));
        }
        if ls.auth != Auth::Done && req.csg == 1 {
            // Operational stage without the authentication we require.
            return Err(self.login_fail(out, &ls, login_status::AUTH_FAILED));
        }

        // Operational keys (also accepted in the security stage).
        let limits = self.portal.limits.clone();
        // Our MaxRecvDataSegmentLength goes out in the operational stage
        // (or with the move to full feature phase), not with security keys.
        let declare = req.csg == 1 || (req.transit && req.nsg == 3);
        match negotiate_declaring(&op_keys, &limits, &mut ls.neg, &mut ls.seen, declare) {
            Ok(ans) => {
                for (k, v) in ans {
                    push_pair(&mut answer, &k, &v);
                }
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "login negotiation failed");
                return Err(self.login_fail(out, &ls, login_status::INITIATOR_ERROR));
            }
        }
        if !ls.discovery && !ls.tpgt_sent {
            ls.tpgt_sent = true;
            push_pair(
                &mut answer,
                "TargetPortalGroupTag",
                &self.portal.tpgt.to_string(),
            );
            if let Some(alias) = ls.target.as_ref().and_then(|t| t.spec.alias.clone()) {
                push_pair(&mut answer, "TargetAlias", &alias);
            }
        }

        // Stage transition.
        let mut transit = req.transit;
        if req.csg == 0 && ls.auth != Auth::Done {
            if matches!(ls.auth, Auth::Start) && ls.creds.is_some() {
                return Err(self.login_fail(out, &ls, login_status::AUTH_FAILED));
            }
            transit = false;
            if matches!(ls.auth, Auth::Start) {
                // No AuthMethod yet and none required.
                ls.auth = Auth::Done;
                transit = req.transit;
            }
        }
        let nsg = if transit { req.nsg } else { 0 };
        let full = transit && nsg == 3;
        if answer.len() > LOGIN_MAX_DATA {
            return Err(self.login_fail(out, &ls, login_status::INITIATOR_ERROR));
        }
        let mut tsih = 0;
        if full {
            tsih = self.finish_login(&ls, cx)?;
        }
        let r = Login {
            transit,
            continue_bit: false,
            csg: req.csg,
            nsg,
            version_max: 0,
            version: 0,
            data_len: answer.len(),
            isid: ls.isid,
            tsih,
            itt: ls.itt,
            cid: 0,
            sn: self.next_stat_sn(),
            exp_sn: ls.cmd_sn,
            max_cmd_sn: ls.cmd_sn.wrapping_add(self.depth - 1),
            status_class: 0,
            status_detail: 0,
        };
        self.send(out, &r.encode(false), &answer);
        if full {
            // Digests apply from the first full-feature PDU on.
            self.hd = self.neg.header_digest;
            self.dd = self.neg.data_digest;
            self.phase = Phase::Full;
        } else {
            self.phase = Phase::Login(ls);
        }
        Ok(())
    }

    fn finish_login(&mut self, ls: &LoginState, cx: &mut Context) -> Result<u16, Close> {
        self.neg = ls.neg.clone();
        self.discovery = ls.discovery;
        self.exp_cmd_sn = ls.cmd_sn;
        self.nexus = Nexus {
            initiator: ls.initiator.clone().unwrap_or_default(),
            isid: ls.isid,
        };
        if let Some(t) = &ls.target {
            let h = match t.lun.volume().handle() {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open an engine handle");
                    return Err(Close::Now);
                }
            };
            match cx.register(h.notify_as_fd(), Interest::READABLE) {
                Ok(reg) => self.notify = Some(reg),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register the engine eventfd");
                    return Err(Close::Now);
                }
            }
            self.block_size = h.block_size();
            self.handle = Some(h);
            t.lun.nexus_joined(&Nexus {
                initiator: ls.initiator.clone().unwrap_or_default(),
                isid: ls.isid,
            });
            self.target = Some(t.clone());
        }
        let (tsih, kill) = if ls.tsih != 0 {
            (ls.tsih, Arc::new(AtomicBool::new(false)))
        } else {
            self.reg.open_session(SessionInfo {
                tsih: 0,
                nexus: self.nexus.clone(),
                target: ls.target.as_ref().map(|t| t.spec.iqn.clone()),
                peer: self.peer,
                since: std::time::SystemTime::now(),
                digests: (ls.neg.header_digest, ls.neg.data_digest),
            })
        };
        self.tsih = tsih;
        self.kill = Some(kill);
        if crate::ratelimit::CONNECTION_EVENTS.allow().is_some() {
            tracing::info!(
                peer = %self.peer,
                initiator = %self.nexus.initiator,
                target = ls.target.as_ref().map_or("discovery", |t| t.spec.iqn.as_str()),
                tsih,
                "iSCSI login"
            );
        }
        Ok(tsih)
    }

    // ---- full feature phase --------------------------------------------

    /// CmdSN check for a non-immediate command: `true` to execute it.
    fn accept_cmd_sn(&mut self, cmd_sn: u32, immediate: bool) -> bool {
        if immediate {
            return true;
        }
        // Serial number arithmetic (RFC 1982).
        let d = cmd_sn.wrapping_sub(self.exp_cmd_sn);
        if d == 0 {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            true
        } else {
            // Outside the window (too low: a duplicate; too high: beyond
            // MaxCmdSN) or a gap a single connection cannot fill: ignore.
            tracing::debug!(peer = %self.peer, cmd_sn, exp = self.exp_cmd_sn, "CmdSN outside the window; ignored");
            false
        }
    }

    fn alloc_task(&mut self, t: Task) -> usize {
        if let Some(i) = self.free.pop() {
            self.tasks[i] = Some(t);
            i
        } else {
            self.tasks.push(Some(t));
            self.tasks.len() - 1
        }
    }

    fn free_task(&mut self, i: usize) -> Option<Task> {
        let mut t = self.tasks.get_mut(i)?.take()?;
        // Data buffers still held (a failed, aborted or unsent command) go
        // back to the pool: a dropped pool buffer would stay counted as in
        // use and shrink the pool for good.
        let pool = self.pool.as_ref();
        for b in t.data.drain(..).filter(|b| b.capacity() > 0) {
            buffer_pool::give_back(pool, b);
        }
        for b in t.reads.drain(..).flatten() {
            buffer_pool::give_back(pool, b);
        }
        self.by_itt.remove(&t.itt);
        self.free.push(i);
        for (ttt, off, len, _) in &t.r2ts {
            let _ = (ttt, off);
            self.solicited = self.solicited.saturating_sub(u64::from(*len));
        }
        Some(t)
    }

    fn send_status(
        &mut self,
        out: &mut OutQueue,
        itt: u32,
        st: u8,
        sense: Option<Sense>,
        residual: Residual,
        residual_count: u32,
    ) {
        let mut data = Vec::new();
        if let Some(s) = sense {
            tracing::debug!(peer = %self.peer, itt, key = s.key, asc = s.asc.0, ascq = s.asc.1, "CHECK CONDITION");
            let f = s.fixed();
            data.extend_from_slice(&u16::try_from(f.len()).unwrap_or(0).to_be_bytes());
            data.extend_from_slice(&f);
            if let Some(t) = &self.target {
                t.stats.check_conditions.fetch_add(1, Ordering::Relaxed);
            }
        }
        let r = ScsiResponse {
            residual,
            response: 0,
            status: st,
            data_len: data.len(),
            itt,
            snack_tag: 0,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
            exp_data_sn: 0,
            bidi_residual: 0,
            residual_count,
        };
        self.send(out, &r.encode(), &data);
    }

    /// Send emulated data-in (cut to EDTL) with collapsed GOOD status.
    fn send_data_in(&mut self, out: &mut OutQueue, itt: u32, lun: u64, edtl: u32, data: &[u8]) {
        let (residual, rc) = residual_for(edtl, u32_len(data.len()));
        let n = data.len().min(edtl as usize);
        if n == 0 {
            self.send_status(out, itt, status::GOOD, None, residual, rc);
            return;
        }
        let max = (self.neg.initiator_mrdsl as usize).max(512);
        let mut off = 0;
        let mut sn = 0;
        while off < n {
            let len = (n - off).min(max);
            let last = off + len == n;
            let d = DataIn {
                final_bit: last,
                ack: false,
                residual: if last { residual } else { Residual::default() },
                status: last.then_some(status::GOOD),
                data_len: len,
                lun,
                itt,
                ttt: NO_TTT,
                stat_sn: if last { self.next_stat_sn() } else { 0 },
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.max_cmd_sn(),
                data_sn: sn,
                buffer_offset: u32_len(off),
                residual_count: if last { rc } else { 0 },
            };
            self.send(out, &d.encode(), &data[off..off + len]);
            off += len;
            sn += 1;
        }
    }

    #[allow(clippy::too_many_lines)]
    fn on_command(
        &mut self,
        cmd: &ScsiCommand,
        raw_bhs: &RawBhs,
        ahs: &[u8],
        data: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<(), Close> {
        if let Some(slot) = self.command_head(cmd, raw_bhs, ahs, data.len(), out)? {
            if !data.is_empty() {
                self.take_data(slot, 0, data);
            }
            self.advance(slot, out, cx);
        }
        Ok(())
    }

    /// The header part of a SCSI Command with `dlen` bytes of immediate
    /// data: checks, the plan, the task. Returns the task that takes the
    /// data and moves on once it is in (`None`: answered or dropped
    /// already; its data is dropped).
    fn command_head(
        &mut self,
        cmd: &ScsiCommand,
        raw_bhs: &RawBhs,
        ahs: &[u8],
        dlen: usize,
        out: &mut OutQueue,
    ) -> Result<Option<usize>, Close> {
        if !self.accept_cmd_sn(cmd.cmd_sn, cmd.immediate) {
            return Ok(None);
        }
        if self.discovery || self.target.is_none() {
            self.send_reject(out, reject::PROTOCOL_ERROR, raw_bhs);
            return Ok(None);
        }
        if self.by_itt.contains_key(&cmd.itt) {
            // An ITT still in use: task in progress.
            self.send_reject(out, 0x07, raw_bhs);
            return Ok(None);
        }
        if !cmd.final_bit && !cmd.write {
            return Err(self.protocol_error(out, raw_bhs, "F=0 without W"));
        }
        if dlen > cmd.expected_len as usize
            || dlen > self.neg.first_burst_length as usize
            || (dlen > 0 && !self.neg.immediate_data)
        {
            return Err(self.protocol_error(out, raw_bhs, "immediate data beyond the limits"));
        }
        // CDB: 16 bytes in the BHS, more in an extended-CDB AHS.
        let mut cdb_bytes: SmallVec<[u8; 32]> = SmallVec::from_slice(&cmd.cdb);
        if ahs.len() >= 4 && ahs[2] == 0x01 {
            let l = usize::from(u16::from_be_bytes([ahs[0], ahs[1]]));
            if l >= 1 && 3 + l <= ahs.len() {
                cdb_bytes.extend_from_slice(&ahs[4..3 + l]);
            }
        }
        let target = self.target.clone().ok_or(Close::Now)?;
        let lun_ok = cmd.lun == 0;
        let cdb = parse_cdb(&cdb_bytes);
        let action = match (&cdb, lun_ok) {
            (Err(_), _) => Action::Status(
                status::CHECK_CONDITION,
                Some(Sense::new(key::ILLEGAL_REQUEST, (0x20, 0))),
            ),
            (Ok(Cdb::ReportLuns { .. }), _) => target.lun.plan(
                cdb.as_ref().map_err(|_| Close::Now)?,
                &cdb_bytes,
                &self.nexus,
            ),
            (
                Ok(Cdb::Inquiry {
                    evpd: false,
                    alloc_len,
                    ..
                }),
                false,
            ) => {
                // Peripheral qualifier 3: no logical unit here.
                let mut v = vec![0u8; 36];
                v[0] = 0x7f;
                v[2] = 0x06;
                v[3] = 0x12;
                v[4] = 31;
                v.truncate(usize::from(*alloc_len));
                Action::Data(v)
            }
            (Ok(_), false) => Action::Status(
                status::CHECK_CONDITION,
                Some(Sense::new(key::ILLEGAL_REQUEST, asc::LUN_NOT_SUPPORTED)),
            ),
            (Ok(c), true) => target.lun.plan(c, &cdb_bytes, &self.nexus),
        };
        let cdb = cdb.unwrap_or(Cdb::TestUnitReady);
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&cmd.cdb);
        let bs = self.block_size;
        let mut task = Task {
            serial: 0,
            itt: cmd.itt,
            lun: cmd.lun,
            cdb,
            raw,
            edtl: cmd.expected_len,
            started: Instant::now(),
            work: Work::None,
            want: 0,
            got: 0,
            data: Chunks::new(),
            unsol_open: !cmd.final_bit,
            unsol_end: 0,
            unsol_sn: 0,
            next_r2t: 0,
            r2t_sn: 0,
            r2ts: SmallVec::new(),
            reject_with: None,
            ops: 0,
            error: None,
            reads: SmallVec::new(),
            next_send: 0,
            next_submit: 0,
            data_sn: 0,
            sent: 0,
            send_len: 0,
            resid: None,
            staged: false,
            aborted: false,
        };
        let need = match &action {
            Action::Write { blocks, .. } => blocks * bs,
            Action::NeedData { len } => *len,
            _ => 0,
        };
        match action {
            Action::Data(v) => {
                if task.unsol_open || dlen > 0 {
                    // Data-out for a data-in command: absorb, then answer.
                    task.reject_with = Some((
                        status::CHECK_CONDITION,
                        Some(Sense::new(key::ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_IU)),
                        Residual::default(),
                        0,
                    ));
                } else {
                    self.send_data_in(out, cmd.itt, cmd.lun, cmd.expected_len, &v);
                    return Ok(None);
                }
            }
            Action::Status(st, sense) => {
                let (residual, rc) = residual_for(cmd.expected_len, 0);
                if task.unsol_open {
                    task.reject_with = Some((st, sense, residual, rc));
                } else {
                    self.send_status(out, cmd.itt, st, sense, residual, rc);
                    return Ok(None);
                }
            }
            Action::Read { lba, blocks } => {
                task.work = Work::Read {
                    lba,
                    blocks,
                    send: true,
                };
                let spdtl = blocks * bs;
                task.send_len = spdtl.min(cmd.expected_len);
                let chunks = (task.send_len as usize).div_ceil(CHUNK);
                task.reads.resize(chunks, None);
            }
            Action::CheckRead { lba, blocks } => {
                task.work = Work::Read {
                    lba,
                    blocks,
                    send: false,
                };
                task.send_len = 0;
                let chunks = ((blocks * bs) as usize).div_ceil(CHUNK);
                task.reads.resize(chunks, None);
            }
            Action::Flush => task.work = Work::Flush,
            Action::Immediate(d) => task.work = Work::Data(d),
            Action::Write { lba, fua, .. } => {
                task.work = Work::Write {
                    lba,
                    fua,
                    atomic: matches!(task.cdb, Cdb::WriteAtomic { .. }),
                }
            }
            Action::NeedData { .. } => task.work = Work::Param,
        }
        if need > 0 {
            // EDTL and the CDB disagree: process what both allow and
            // report the difference as a residual (FCP-4 / SAM-5 option a:
            // data beyond EDTL is neither requested nor written).
            let len = if cmd.write {
                need.min(cmd.expected_len)
            } else {
                0
            };
            if len != need || cmd.expected_len != need {
                task.resid = Some(residual_for(cmd.expected_len, need));
            }
            if len == 0 {
                let (residual, rc) = residual_for(cmd.expected_len, need);
                task.reject_with = Some((status::GOOD, None, residual, rc));
                task.work = Work::None;
            } else {
                task.want = len;
                task.data.resize((len as usize).div_ceil(CHUNK), Vec::new());
            }
        }
        // The unsolicited region: immediate data, then (InitialR2T=No)
        // Data-Out PDUs up to FirstBurstLength.
        task.unsol_end = if self.neg.initial_r2t {
            u32_len(dlen)
        } else {
            cmd.expected_len.min(self.neg.first_burst_length)
        };
        if !task.unsol_open {
            task.unsol_end = u32_len(dlen);
        }
        task.next_r2t = task.unsol_end.min(task.want.max(task.unsol_end));
        self.serial = self.serial.wrapping_add(1);
        task.serial = self.serial;
        let itt = task.itt;
        let slot = self.alloc_task(task);
        self.by_itt.insert(itt, slot);
        Ok(Some(slot))
    }

    /// Copy data-out at `offset` into the task's buffers and count it.
    fn take_data(&mut self, slot: usize, offset: u32, data: &[u8]) {
        self.copy_data(slot, offset, data);
        self.data_arrived(slot, offset, data.len());
    }

    /// Copy data-out at `offset` into the task's buffers (not counted yet).
    fn copy_data(&mut self, slot: usize, offset: u32, data: &[u8]) {
        let pool = self.pool.as_ref();
        let Some(t) = self.tasks[slot].as_mut() else {
            return;
        };
        if t.want == 0 || t.reject_with.is_some() {
            return;
        }
        let mut off = offset as usize;
        let mut src = data;
        while !src.is_empty() && off < t.want as usize {
            let c = off / CHUNK;
            let within = off % CHUNK;
            let buf = &mut t.data[c];
            let room = CHUNK.min(t.want as usize - c * CHUNK) - within;
            let n = room.min(src.len());
            if buf.capacity() == 0 {
                *buf = buffer_pool::take(pool, CHUNK.min(t.want as usize - c * CHUNK));
            }
            buffer_pool::place(buf, within, &src[..n]);
            off += n;
            src = &src[n..];
        }
    }

    /// Count `len` bytes of data-out at `offset`, in the task's buffers
    /// now, and stream the chunks they filled to the engine.
    fn data_arrived(&mut self, slot: usize, offset: u32, len: usize) {
        let Some(t) = self.tasks[slot].as_mut() else {
            return;
        };
        if t.want == 0 || t.reject_with.is_some() {
            return;
        }
        let want = t.want as usize;
        let start = (offset as usize).min(want);
        let end = (offset as usize + len).min(want);
        t.got = t.got.saturating_add(u32_len(end - start));
        // Stream full chunks of a plain write to the engine as they fill,
        // so a large write never holds more than the data in flight.
        let bs = self.block_size as usize;
        let Work::Write {
            lba,
            fua,
            atomic: false,
        } = t.work
        else {
            return;
        };
        if want % bs != 0 {
            return;
        }
        let mut ready: SmallVec<[(usize, Vec<u8>); 4]> = SmallVec::new();
        for c in start / CHUNK..end.div_ceil(CHUNK).min(t.data.len()) {
            let size = CHUNK.min(want - c * CHUNK);
            if t.data[c].len() == size {
                ready.push((c, std::mem::take(&mut t.data[c])));
            }
        }
        for (c, buf) in ready {
            let at = lba + (c * CHUNK / bs) as u64;
            self.submit(slot, Op::Write { lba: at, buf, fua });
        }
    }

    /// Move a task forward: answer a rejected one, issue R2Ts, start the
    /// engine work once its data is in.
    fn advance(&mut self, slot: usize, out: &mut OutQueue, cx: &mut Context) {
        let _ = cx;
        let Some(t) = self.tasks[slot].as_mut() else {
            return;
        };
        if t.aborted {
            if t.ops == 0 && !t.unsol_open {
                self.free_task(slot);
                self.tmf_progress(out);
            }
            return;
        }
        if let Some((st, sense, residual, rc)) = t.reject_with {
            if !t.unsol_open && t.ops == 0 && t.r2ts.is_empty() {
                let itt = t.itt;
                self.free_task(slot);
                self.send_status(out, itt, st, sense, residual, rc);
            }
            return;
        }
        // Data still to come?
        if t.want > 0 && t.got < t.want {
            self.issue_r2ts(slot, out);
            return;
        }
        if t.unsol_open {
            return;
        }
        self.start(slot, out);
    }

    fn issue_r2ts(&mut self, slot: usize, out: &mut OutQueue) {
        let max_out = self.neg.max_outstanding_r2t.max(1) as usize;
        let burst = self.neg.max_burst_length.max(512);
        loop {
            let Some(t) = self.tasks[slot].as_ref() else {
                return;
            };
            if t.next_r2t >= t.want || t.r2ts.len() >= max_out {
                return;
            }
            if self.solicited >= MAX_SOLICITED {
                // Ask later, when other transfers are in.
                if !self.ready.contains(&slot) {
                    self.ready.push_back(slot);
                }
                return;
            }
            let ttt = self.next_ttt;
            self.next_ttt = self.next_ttt.wrapping_add(1);
            if self.next_ttt == NO_TTT {
                self.next_ttt = 1;
            }
            let exp_cmd_sn = self.exp_cmd_sn;
            let max_cmd_sn = self.max_cmd_sn();
            let stat_sn = self.stat_sn;
            let Some(t) = self.tasks[slot].as_mut() else {
                return;
            };
            let len = (t.want - t.next_r2t).min(burst);
            let r = R2t {
                lun: t.lun,
                itt: t.itt,
                ttt,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                r2t_sn: t.r2t_sn,
                buffer_offset: t.next_r2t,
                desired_len: len,
            };
            t.r2ts.push((ttt, t.next_r2t, len, 0));
            t.r2t_sn += 1;
            t.next_r2t += len;
            self.solicited += u64::from(len);
            let bhs = r.encode();
            self.send(out, &bhs, &[]);
        }
    }

    fn on_data_out(
        &mut self,
        d: &DataOut,
        raw_bhs: &RawBhs,
        data: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<(), Close> {
        if let Some(slot) = self.data_out_head(d, raw_bhs, data.len(), out)? {
            self.take_data(slot, d.buffer_offset, data);
            self.advance(slot, out, cx);
        }
        Ok(())
    }

    /// The header part of a Data-Out PDU with `dlen` bytes of data: checks
    /// and R2T bookkeeping. Returns the task that takes the data and moves
    /// on once it is in (`None`: the data is dropped).
    fn data_out_head(
        &mut self,
        d: &DataOut,
        raw_bhs: &RawBhs,
        dlen: usize,
        out: &mut OutQueue,
    ) -> Result<Option<usize>, Close> {
        let Some(&slot) = self.by_itt.get(&d.itt) else {
            // A task we answered already (or never knew): drop the data.
            return Ok(None);
        };
        let Some(t) = self.tasks[slot].as_mut() else {
            return Ok(None);
        };
        let end = d.buffer_offset.checked_add(u32_len(dlen));
        if end.is_none_or(|e| e > t.edtl) {
            return Err(self.protocol_error(out, raw_bhs, "Data-Out past the expected length"));
        }
        let end = end.unwrap_or(0);
        if d.ttt == NO_TTT {
            if !t.unsol_open || end > t.unsol_end.max(self.neg.first_burst_length.min(t.edtl)) {
                return Err(self.protocol_error(
                    out,
                    raw_bhs,
                    "unsolicited data beyond FirstBurstLength",
                ));
            }
            if d.data_sn != t.unsol_sn && t.reject_with.is_none() {
                data_sequence_error(t);
            }
            t.unsol_sn = t.unsol_sn.wrapping_add(1);
            if d.final_bit {
                t.unsol_open = false;
            }
        } else {
            let Some(i) = t.r2ts.iter().position(|r| r.0 == d.ttt) else {
                return Err(self.protocol_error(out, raw_bhs, "Data-Out for an unknown TTT"));
            };
            let (ttt, off, len, sn) = t.r2ts[i];
            if d.data_sn != sn && t.reject_with.is_none() {
                data_sequence_error(t);
            }
            if d.buffer_offset < off || end > off + len {
                return Err(self.protocol_error(out, raw_bhs, "Data-Out outside its R2T"));
            }
            t.r2ts[i].3 = sn.wrapping_add(1);
            if d.final_bit || end == off + len {
                t.r2ts.remove(i);
                self.solicited = self.solicited.saturating_sub(u64::from(len));
                let _ = ttt;
            }
        }
        Ok(Some(slot))
    }

    fn submit(&mut self, slot: usize, op: Op) {
        self.submit_chunk(slot, 0, op);
    }

    /// Submit with the index of the read chunk in the tag:
    /// serial (32 bits) | chunk (12) | slot (20).
    fn submit_chunk(&mut self, slot: usize, chunk: usize, op: Op) {
        let Some(t) = self.tasks[slot].as_mut() else {
            return;
        };
        let tag =
            (u64::from(t.serial) << 32) | ((chunk as u64 & 0xfff) << 20) | (slot as u64 & 0xf_ffff);
        t.ops += 1;
        let Some(h) = self.handle.as_mut() else {
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

    /// All data is in: run the engine work.
    fn start(&mut self, slot: usize, out: &mut OutQueue) {
        let Some(t) = self.tasks[slot].as_mut() else {
            return;
        };

        let work = std::mem::replace(&mut t.work, Work::None);
        match work {
            Work::Write { lba, fua, atomic } => {
                let bsz = self.block_size as usize;
                let want = t.want as usize;
                if want % bsz != 0 {
                    // A partial last block (EDTL not a block multiple):
                    // read it, merge, then write.
                    t.work = Work::Tail { lba, fua };
                    let tail = lba + (want / bsz) as u64;
                    self.submit(
                        slot,
                        Op::Read {
                            lba: tail,
                            buf: buffer_pool::take_zeroed(self.pool.as_ref(), bsz),
                        },
                    );
                } else if atomic {
                    // One engine write: one WAL record, all or nothing.
                    let pool = self.pool.as_ref();
                    let mut all = buffer_pool::take(pool, want);
                    for c in t.data.drain(..) {
                        all.extend_from_slice(&c);
                        buffer_pool::give_back(pool, c);
                    }
                    self.submit(slot, Op::Write { lba, buf: all, fua });
                } else {
                    let chunks = std::mem::take(&mut t.data);
                    self.submit_writes(slot, lba, fua, chunks);
                }
            }
            Work::Flush => self.submit(slot, Op::Flush),
            Work::Read { lba, blocks, send } => {
                t.work = Work::Read { lba, blocks, send };
                self.submit_reads(slot);
            }
            Work::Param => {
                // A plain Vec: the LUN parses it, or keeps it as a compare
                // buffer or pattern, and drops it; none goes to the pool.
                let mut all = Vec::with_capacity(t.want as usize);
                for c in t.data.drain(..) {
                    all.extend_from_slice(&c);
                    buffer_pool::give_back(self.pool.as_ref(), c);
                }
                let target = self.target.clone();
                let Some(target) = target else { return };
                let (cdb, raw) = (t.cdb, t.raw);
                let d = target.lun.with_data(&cdb, &raw, all, &self.nexus);
                self.run_data_action(slot, d, out);
            }
            Work::Data(d) => self.run_data_action(slot, d, out),
            Work::Same { .. } | Work::Tail { .. } | Work::None => {}
        }
        self.maybe_finish(slot, out);
    }

    fn run_data_action(&mut self, slot: usize, d: DataAction, out: &mut OutQueue) {
        let _ = out;
        let bs = self.block_size as usize;
        match d {
            DataAction::Status(st, sense) => {
                if let Some(t) = self.tasks[slot].as_mut() {
                    if st != status::GOOD {
                        t.error = Some((st, sense));
                    }
                }
            }
            DataAction::Trim(ranges) => {
                for (lba, blocks) in ranges {
                    self.submit(slot, Op::Trim { lba, blocks });
                }
            }
            DataAction::Zero { lba, blocks, fua } => {
                self.submit(slot, Op::WriteZeroes { lba, blocks, fua });
            }
            DataAction::Same {
                lba,
                blocks,
                pattern,
            } => {
                if let Some(t) = self.tasks[slot].as_mut() {
                    t.work = Work::Same {
                        lba,
                        blocks,
                        pattern,
                        done: 0,
                    };
                }
                self.submit_same(slot);
            }
            DataAction::CompareAndWrite {
                lba,
                blocks,
                fua,
                expect,
                data,
            } => {
                if let Some(t) = self.tasks[slot].as_mut() {
                    t.work = Work::Data(DataAction::CompareAndWrite {
                        lba,
                        blocks,
                        fua,
                        expect,
                        data,
                    });
                }
                let buf = buffer_pool::take_zeroed(self.pool.as_ref(), blocks as usize * bs);
                self.submit(slot, Op::Read { lba, buf });
            }
            DataAction::Or { lba, fua, data } => {
                let len = data.len();
                if let Some(t) = self.tasks[slot].as_mut() {
                    t.work = Work::Data(DataAction::Or { lba, fua, data });
                }
                let buf = buffer_pool::take_zeroed(self.pool.as_ref(), len);
                self.submit(slot, Op::Read { lba, buf });
            }
            DataAction::Compare {
                lba,
                blocks,
                expect,
                same,
            } => {
                if let Some(t) = self.tasks[slot].as_mut() {
                    t.work = Work::Data(DataAction::Compare {
                        lba,
                        blocks,
                        expect,
                        same,
                    });
                }
                let buf = buffer_pool::take_zeroed(self.pool.as_ref(), blocks as usize * bs);
                self.submit(slot, Op::Read { lba, buf });
            }
        }
    }

    fn submit_writes(&mut self, slot: usize, lba: u64, fua: bool, chunks: Chunks) {
        let bs = u64::from(self.block_size);
        // Empty chunks went to the engine already (streamed as they
        // filled); one that holds a buffer but no data (taken for data that
        // never came) goes back to the pool.
        for (i, buf) in chunks.into_iter().enumerate() {
            if buf.is_empty() {
                if buf.capacity() > 0 {
                    buffer_pool::give_back(self.pool.as_ref(), buf);
                }
                continue;
            }
            let at = lba + (i * CHUNK) as u64 / bs;
            self.submit(slot, Op::Write { lba: at, buf, fua });
        }
    }

    /// Keep up to four WRITE SAME chunks in flight.
    fn submit_same(&mut self, slot: usize) {
        let bs = self.block_size as usize;
        let per = u32_len((CHUNK / bs).max(1));
        loop {
            let Some(t) = self.tasks[slot].as_mut() else {
                return;
            };
            if t.ops >= 4 || t.error.is_some() {
                return;
            }
            let Work::Same {
                lba,
                blocks,
                ref pattern,
                ref mut done,
            } = t.work
            else {
                return;
            };
            if *done >= blocks {
                return;
            }
            let n = per.min(blocks - *done);
            let mut buf = buffer_pool::take(self.pool.as_ref(), n as usize * bs);
            for _ in 0..n {
                buf.extend_from_slice(pattern);
            }
            let at = lba + u64::from(*done);
            *done += n;
            self.submit(
                slot,
                Op::Write {
                    lba: at,
                    buf,
                    fua: false,
                },
            );
        }
    }

    fn submit_reads(&mut self, slot: usize) {
        let bs = u64::from(self.block_size);
        loop {
            let Some(t) = self.tasks[slot].as_mut() else {
                return;
            };
            let Work::Read { lba, blocks, .. } = t.work else {
                return;
            };
            let total = u64::from(blocks) * bs;
            let send_total = if t.send_len > 0 {
                u64::from(t.send_len).div_ceil(bs) * bs
            } else {
                total
            };
            let i = t.next_submit;
            // At most eight chunks (2 MiB) read ahead of what was sent.
            if i >= t.reads.len() || i >= t.next_send + 8 {
                return;
            }
            let off = (i * CHUNK) as u64;
            let len = usize::try_from((send_total - off).min(CHUNK as u64)).unwrap_or(CHUNK);
            t.next_submit += 1;
            let buf = buffer_pool::take_zeroed(self.pool.as_ref(), len);
            self.submit_chunk(
                slot,
                i,
                Op::Read {
                    lba: lba + off / bs,
                    buf,
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
        let is_write = !matches!(t.work, Work::Read { .. });
        if let Err(e) = &c.result {
            if t.error.is_none() {
                t.error = Some(engine_sense(e, is_write));
            }
        }
        if t.aborted {
            if let Some(b) = c.buf {
                buffer_pool::give_back(self.pool.as_ref(), b);
            }
            if t.ops == 0 {
                self.free_task(slot);
                self.tmf_progress(out);
            }
            return;
        }
        match &mut t.work {
            Work::Read { .. } => {
                if let Some(buf) = c.buf {
                    match t.reads.get_mut(chunk) {
                        Some(r) if c.result.is_ok() => *r = Some(buf),
                        _ => buffer_pool::give_back(self.pool.as_ref(), buf),
                    }
                }
                self.pump_read(slot, out);
            }
            Work::Data(
                DataAction::CompareAndWrite { .. }
                | DataAction::Compare { .. }
                | DataAction::Or { .. },
            ) if !t.staged => {
                t.staged = true;
                let Ok(()) = c.result else {
                    if let Some(b) = c.buf {
                        buffer_pool::give_back(self.pool.as_ref(), b);
                    }
                    self.maybe_finish(slot, out);
                    return;
                };
                let got = c.buf.unwrap_or_default();
                // The LUN's buffers (`expect`, `data`: parts of the
                // parameter data) are plain Vecs: what goes to the engine
                // is copied into a pool buffer, as the write's completion
                // gives its buffer to the pool.
                let pool = self.pool.clone();
                let pooled = |v: &[u8]| {
                    let mut b = buffer_pool::take(pool.as_ref(), v.len());
                    b.extend_from_slice(v);
                    b
                };
                let work = std::mem::replace(&mut t.work, Work::None);
                match work {
                    Work::Data(DataAction::CompareAndWrite {
                        lba,
                        fua,
                        expect,
                        data,
                        ..
                    }) => {
                        if let Some(at) = got.iter().zip(&expect).position(|(a, b)| a != b) {
                            t.error = Some((
                                status::CHECK_CONDITION,
                                Some(
                                    Sense::new(key::MISCOMPARE, ASC_MISCOMPARE)
                                        .with_info(at as u64),
                                ),
                            ));
                        } else {
                            let buf = pooled(&data);
                            self.submit(slot, Op::Write { lba, buf, fua });
                        }
                    }
                    Work::Data(DataAction::Or { lba, fua, mut data }) => {
                        for (d, g) in data.iter_mut().zip(&got) {
                            *d |= g;
                        }
                        let buf = pooled(&data);
                        self.submit(slot, Op::Write { lba, buf, fua });
                    }
                    Work::Data(DataAction::Compare { expect, same, .. }) => {
                        let bs = self.block_size as usize;
                        let bad = if same {
                            got.chunks(bs).enumerate().find_map(|(i, b)| {
                                b.iter()
                                    .zip(&expect)
                                    .position(|(x, y)| x != y)
                                    .map(|p| i * bs + p)
                            })
                        } else {
                            got.iter().zip(&expect).position(|(a, b)| a != b)
                        };
                        if let (Some(at), Some(t)) = (bad, self.tasks[slot].as_mut()) {
                            t.error = Some((
                                status::CHECK_CONDITION,
                                Some(
                                    Sense::new(key::MISCOMPARE, ASC_MISCOMPARE)
                                        .with_info(at as u64),
                                ),
                            ));
                        }
                    }
                    _ => {}
                }
                if got.capacity() > 0 {
                    buffer_pool::give_back(self.pool.as_ref(), got);
                }
                self.maybe_finish(slot, out);
            }
            Work::Same { .. } => {
                // A chunk of the pattern written: its buffer to the pool.
                if let Some(b) = c.buf {
                    buffer_pool::give_back(self.pool.as_ref(), b);
                }
                self.submit_same(slot);
                self.maybe_finish(slot, out);
            }
            Work::Tail { lba, fua } => {
                let (lba, fua) = (*lba, *fua);
                t.work = Work::None;
                match (&c.result, c.buf) {
                    (Ok(()), Some(block)) => {
                        let mut chunks = std::mem::take(&mut t.data);
                        let want = t.want as usize;
                        let keep = want % self.block_size as usize;
                        if let Some(last) = chunks.last_mut() {
                            last.extend_from_slice(&block[keep..]);
                        }
                        buffer_pool::give_back(self.pool.as_ref(), block);
                        self.submit_writes(slot, lba, fua, chunks);
                    }
                    (_, Some(block)) => buffer_pool::give_back(self.pool.as_ref(), block),
                    (_, None) => {}
                }
                self.maybe_finish(slot, out);
            }
            _ => {
                // A write's data buffer comes back: to the pool.
                if let Some(b) = c.buf {
                    buffer_pool::give_back(self.pool.as_ref(), b);
                }
                self.maybe_finish(slot, out);
            }
        }
    }

    /// Send read chunks that are in, in order; finish when all are sent.
    fn pump_read(&mut self, slot: usize, out: &mut OutQueue) {
        let mrdsl = (self.neg.initiator_mrdsl as usize).max(512);
        let exp_cmd_sn = self.exp_cmd_sn;
        let max_cmd_sn = self.max_cmd_sn();
        loop {
            let Some(t) = self.tasks[slot].as_mut() else {
                return;
            };
            if t.error.is_some() {
                break;
            }
            let Work::Read { send, .. } = t.work else {
                break;
            };
            if t.next_send >= t.reads.len() {
                break;
            }
            let Some(mut buf) = t.reads[t.next_send].take() else {
                break;
            };
            t.next_send += 1;
            if !send {
                buffer_pool::give_back(self.pool.as_ref(), buf);
                continue;
            }
            let remaining = (t.send_len - t.sent) as usize;
            buf.truncate(remaining);
            let last_chunk = t.next_send == t.reads.len();
            // Status rides on the last Data-In when all went well and no
            // engine op is still out.
            let collapse = last_chunk && t.ops == 0;
            let (residual, rc) = residual_for(t.edtl, {
                let Work::Read { blocks, .. } = t.work else {
                    break;
                };
                blocks * self.block_size
            });
            let n = buf.len();
            if n <= mrdsl {
                let d = DataIn {
                    final_bit: last_chunk,
                    ack: false,
                    residual: if collapse {
                        residual
                    } else {
                        Residual::default()
                    },
                    status: collapse.then_some(status::GOOD),
                    data_len: n,
                    lun: t.lun,
                    itt: t.itt,
                    ttt: NO_TTT,
                    stat_sn: 0,
                    exp_cmd_sn,
                    max_cmd_sn,
                    data_sn: t.data_sn,
                    buffer_offset: t.sent,
                    residual_count: if collapse { rc } else { 0 },
                };
                t.data_sn += 1;
                t.sent += u32_len(n);
                let mut d = d;
                if collapse {
                    d.stat_sn = self.stat_sn;
                    self.stat_sn = self.stat_sn.wrapping_add(1);
                }
                self.send_buf(out, &d.encode(), buf);
            } else {
                let mut off = 0;
                while off < n {
                    let len = (n - off).min(mrdsl);
                    let last = last_chunk && off + len == n;
                    let c = last && collapse;
                    let Some(t) = self.tasks[slot].as_mut() else {
                        return;
                    };
                    let mut d = DataIn {
                        final_bit: last,
                        ack: false,
                        residual: if c { residual } else { Residual::default() },
                        status: c.then_some(status::GOOD),
                        data_len: len,
                        lun: t.lun,
                        itt: t.itt,
                        ttt: NO_TTT,
                        stat_sn: 0,
                        exp_cmd_sn,
                        max_cmd_sn,
                        data_sn: t.data_sn,
                        buffer_offset: t.sent,
                        residual_count: if c { rc } else { 0 },
                    };
                    t.data_sn += 1;
                    t.sent += u32_len(len);
                    if c {
                        d.stat_sn = self.stat_sn;
                        self.stat_sn = self.stat_sn.wrapping_add(1);
                    }
                    self.send(out, &d.encode(), &buf[off..off + len]);
                    off += len;
                }
            }
            if collapse {
                let Some(t) = self.free_task(slot) else {
                    return;
                };
                if let Some(tg) = &self.target {
                    tg.stats.read_latency.observe(t.started.elapsed());
                }
                return;
            }
        }
        self.submit_reads(slot);
        self.maybe_finish(slot, out);
    }

    /// Answer a task whose engine work is over.
    fn maybe_finish(&mut self, slot: usize, out: &mut OutQueue) {
        let Some(t) = self.tasks[slot].as_ref() else {
            return;
        };
        if t.ops > 0 {
            return;
        }
        // A write whose data is still arriving (its first chunks may have
        // completed already) is not done.
        if matches!(t.work, Work::Write { .. }) && t.reject_with.is_none() {
            return;
        }
        if let Work::Read { .. } = t.work {
            if t.error.is_none() && t.next_send < t.reads.len() {
                return;
            }
        }
        if let Work::Same { blocks, done, .. } = t.work {
            if done < blocks && t.error.is_none() {
                return;
            }
        }
        if matches!(
            t.work,
            Work::Data(
                DataAction::CompareAndWrite { .. }
                    | DataAction::Compare { .. }
                    | DataAction::Or { .. }
            )
        ) && !t.staged
        {
            return;
        }
        let Some(t) = self.free_task(slot) else {
            return;
        };
        let is_read = matches!(t.work, Work::Read { .. });
        let (st, sense) = t.error.unwrap_or((status::GOOD, None));
        let spdtl = match (&t.work, t.want) {
            (
                Work::Read {
                    blocks, send: true, ..
                },
                _,
            ) => blocks * self.block_size,
            (_, w) => w,
        };
        let (residual, rc) = t.resid.unwrap_or_else(|| residual_for(t.edtl, spdtl));
        self.send_status(out, t.itt, st, sense, residual, rc);
        if let Some(tg) = &self.target {
            let h = if is_read {
                &tg.stats.read_latency
            } else {
                &tg.stats.write_latency
            };
            if matches!(t.cdb, Cdb::Read { .. } | Cdb::Write { .. }) {
                h.observe(t.started.elapsed());
            }
        }
    }

    fn on_nop_out(
        &mut self,
        n: &Nop,
        raw_bhs: &RawBhs,
        data: &[u8],
        out: &mut OutQueue,
    ) -> Result<(), Close> {
        if n.itt == NO_TTT {
            // An answer to our ping, or a one-way NOP.
            if let Some((ttt, _)) = self.ping {
                if n.ttt == ttt {
                    self.ping = None;
                }
            }
            if n.ttt == NO_TTT && !n.immediate {
                self.accept_cmd_sn(n.sn, false);
            }
            return Ok(());
        }
        if n.ttt != NO_TTT {
            return Err(self.protocol_error(out, raw_bhs, "NOP-Out with ITT and TTT"));
        }
        if !self.accept_cmd_sn(n.sn, n.immediate) {
            return Ok(());
        }
        let r = Nop {
            immediate: false,
            data_len: data.len(),
            lun: n.lun,
            itt: n.itt,
            ttt: NO_TTT,
            sn: self.next_stat_sn(),
            exp_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
        };
        self.send(out, &r.encode(false), data);
        Ok(())
    }

    fn send_targets(&self, which: &str) -> Vec<u8> {
        let mut v = Vec::new();
        let portals: Vec<String> = if self.portal.advertise.is_empty() {
            vec![match self.local {
                SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
                SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            }]
        } else {
            self.portal.advertise.clone()
        };
        for t in self.reg.targets() {
            let visible = match which {
                "All" => self.discovery,
                "" => self
                    .target
                    .as_ref()
                    .is_some_and(|me| me.spec.iqn == t.spec.iqn),
                name => t.spec.iqn.eq_ignore_ascii_case(name),
            };
            if !visible || !t.allows(&self.nexus.initiator) {
                continue;
            }
            push_pair(&mut v, "TargetName", &t.spec.iqn);
            for p in &portals {
                push_pair(
                    &mut v,
                    "TargetAddress",
                    &format!("{p},{}", self.portal.tpgt),
                );
            }
        }
        v
    }

    fn on_text(
        &mut self,
        tx: &Text,
        raw_bhs: &RawBhs,
        data: &[u8],
        out: &mut OutQueue,
    ) -> Result<(), Close> {
        if !self.accept_cmd_sn(tx.sn, tx.immediate) {
            return Ok(());
        }
        let Ok(pairs) = parse_pairs(data) else {
            return Err(self.protocol_error(out, raw_bhs, "malformed text"));
        };
        let mut answer = Vec::new();
        for (k, v) in pairs {
            if k == "SendTargets" {
                answer.extend(self.send_targets(v));
            } else {
                push_pair(&mut answer, k, "NotUnderstood");
            }
        }
        answer.truncate(self.neg.initiator_mrdsl as usize);
        let r = Text {
            immediate: false,
            final_bit: true,
            continue_bit: false,
            data_len: answer.len(),
            lun: 0,
            itt: tx.itt,
            ttt: NO_TTT,
            sn: self.next_stat_sn(),
            exp_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
        };
        self.send(out, &r.encode(false), &answer);
        Ok(())
    }

    fn on_logout(&mut self, l: &LogoutRequest, out: &mut OutQueue) -> Result<(), Close> {
        self.accept_cmd_sn(l.cmd_sn, l.immediate);
        // Reason 0: close the session; 1: this connection (the same here);
        // 2: connection recovery, unsupported at ERL 0.
        let response = if l.reason == 2 { 2 } else { 0 };
        let r = LogoutResponse {
            response,
            itt: l.itt,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
            time2wait: 0,
            time2retain: 0,
        };
        self.send(out, &r.encode(), &[]);
        if response == 0 {
            self.logout_after_flush = true;
            return Err(Close::AfterFlush);
        }
        Ok(())
    }

    /// Whether an ABORT TASK's RefCmdSN lies in the CmdSN window
    /// [ExpCmdSN, MaxCmdSN] and before the TMF's own CmdSN (serial number
    /// arithmetic): a command the target has not received yet.
    fn ref_cmd_sn_not_yet_received(&self, m: &TaskMgmtRequest) -> bool {
        let from_exp = m.ref_cmd_sn.wrapping_sub(self.exp_cmd_sn);
        let window = self.max_cmd_sn().wrapping_sub(self.exp_cmd_sn);
        let d = m.cmd_sn.wrapping_sub(m.ref_cmd_sn);
        let before_tmf = d != 0 && d < 1 << 31;
        from_exp <= window && before_tmf
    }

    fn abort_slot(&mut self, slot: usize) -> bool {
        let Some(t) = self.tasks[slot].as_mut() else {
            return false;
        };
        t.aborted = true;
        t.unsol_open = false;
        let len: u64 = t.r2ts.drain(..).map(|r| u64::from(r.2)).sum();
        self.solicited = self.solicited.saturating_sub(len);
        if t.ops == 0 {
            self.free_task(slot);
            false
        } else {
            true
        }
    }

    fn on_tmf(&mut self, m: &TaskMgmtRequest, out: &mut OutQueue) -> Result<(), Close> {
        // The window as it was before this TMF's own CmdSN is accepted.
        let ref_not_received = self.ref_cmd_sn_not_yet_received(m);
        self.accept_cmd_sn(m.cmd_sn, m.immediate);
        let mut waiting = Vec::new();
        let mut cold = false;
        let response = match m.function {
            // ABORT TASK.
            1 => {
                if m.lun != 0 {
                    2
                } else if let Some(&slot) = self.by_itt.get(&m.ref_task_tag) {
                    if self.abort_slot(slot) {
                        waiting.push(slot);
                    }
                    0
                } else if ref_not_received {
                    // RFC 7143 11.5.1 b): the referenced command was never
                    // received but its CmdSN is in the window and before
                    // the TMF's: it counts as received and aborted.
                    0
                } else {
                    // 11.5.1 c): not found and outside the window, so the
                    // task completed (its response is already queued) or
                    // never existed: "Task does not exist". Answering
                    // "Function complete" here told the initiator a
                    // command was aborted whose GOOD status it had just
                    // received (libiscsi iSCSITMF.AbortTaskSimpleAsync).
                    1
                }
            }
            // ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET,
            // TARGET WARM/COLD RESET.
            2 | 4 | 5 | 6 | 7 => {
                if m.lun != 0 && matches!(m.function, 2 | 4 | 5) {
                    2
                } else {
                    let slots: Vec<usize> = self.by_itt.values().copied().collect();
                    for s in slots {
                        if self.abort_slot(s) {
                            waiting.push(s);
                        }
                    }
                    if matches!(m.function, 5..=7) {
                        if let Some(t) = &self.target {
                            t.lun.reset(&self.nexus);
                        }
                    }
                    cold = m.function == 7;
                    0
                }
            }
            // CLEAR ACA, TASK REASSIGN and others: not supported.
            3 => 5,
            8 => 4,
            _ => 5,
        };
        self.tmfs.push(PendingTmf {
            itt: m.itt,
            waiting,
            response,
            cold_reset: cold,
        });
        if self.tmf_progress(out) {
            return Err(Close::AfterFlush);
        }
        Ok(())
    }

    /// Answer task-management requests whose tasks have drained. Returns
    /// whether the connection must close (a cold reset was answered).
    fn tmf_progress(&mut self, out: &mut OutQueue) -> bool {
        let mut close = false;
        let mut i = 0;
        while i < self.tmfs.len() {
            let done = self.tmfs[i].waiting.iter().all(|&s| {
                self.tasks
                    .get(s)
                    .is_none_or(|t| t.as_ref().is_none_or(|t| !t.aborted))
            });
            if done {
                let p = self.tmfs.remove(i);
                let r = TaskMgmtResponse {
                    response: p.response,
                    itt: p.itt,
                    stat_sn: self.next_stat_sn(),
                    exp_cmd_sn: self.exp_cmd_sn,
                    max_cmd_sn: self.max_cmd_sn(),
                };
                self.send(out, &r.encode(), &[]);
                close |= p.cold_reset;
            } else {
                i += 1;
            }
        }
        close
    }

    fn dispatch(
        &mut self,
        raw: &RawBhs,
        pdu: Pdu,
        ahs: &[u8],
        data: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<(), Close> {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Login(ls) => {
                let Pdu::LoginRequest(req) = pdu else {
                    // Anything but a login before the full-feature phase.
                    let ls2 = ls;
                    return Err(self.login_fail(out, &ls2, login_status::INVALID_DURING_LOGIN));
                };
                self.on_login(ls, &req, data, out, cx)
            }
            Phase::Closed => Err(Close::Now),
            Phase::Full => {
                self.phase = Phase::Full;
                match pdu {
                    Pdu::ScsiCommand(c) => self.on_command(&c, raw, ahs, data, out, cx),
                    Pdu::DataOut(d) => self.on_data_out(&d, raw, data, out, cx),
                    Pdu::NopOut(n) => self.on_nop_out(&n, raw, data, out),
                    Pdu::TextRequest(t) => self.on_text(&t, raw, data, out),
                    Pdu::LogoutRequest(l) => self.on_logout(&l, out),
                    Pdu::TaskMgmtRequest(m) => self.on_tmf(&m, out),
                    Pdu::Snack(_) => {
                        // Error recovery level 0: no SNACK.
                        self.send_reject(out, reject::NOT_SUPPORTED, raw);
                        Ok(())
                    }
                    Pdu::LoginRequest(_) => {
                        Err(self.protocol_error(out, raw, "login in full feature phase"))
                    }
                    _ => {
                        self.send_reject(out, reject::NOT_SUPPORTED, raw);
                        Ok(())
                    }
                }
            }
        }
    }

    fn timers(&mut self, out: &mut OutQueue, cx: &mut Context) -> Result<(), Close> {
        let now = cx.now();
        match &self.phase {
            Phase::Login(ls) => {
                if now.duration_since(ls.started) > self.portal.login_timeout {
                    if crate::ratelimit::CONNECTION_EVENTS.allow().is_some() {
                        tracing::info!(peer = %self.peer, "iSCSI login timed out");
                    }
                    return Err(Close::Now);
                }
            }
            Phase::Full => {
                if let Some((_, sent)) = self.ping {
                    if now.duration_since(sent) > self.portal.nop_timeout {
                        if crate::ratelimit::CONNECTION_EVENTS.allow().is_some() {
                            tracing::info!(peer = %self.peer, "initiator did not answer NOP-In; dropping the connection");
                        }
                        return Err(Close::Now);
                    }
                } else if now.duration_since(self.last_rx) > self.portal.nop_interval
                    && self.portal.nop_interval > Duration::ZERO
                {
                    let ttt = self.next_ttt;
                    self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
                    let n = Nop {
                        immediate: false,
                        data_len: 0,
                        lun: 0,
                        itt: NO_TTT,
                        ttt,
                        sn: self.stat_sn,
                        exp_sn: self.exp_cmd_sn,
                        max_cmd_sn: self.max_cmd_sn(),
                    };
                    self.send(out, &n.encode(false), &[]);
                    tracing::debug!(peer = %self.peer, ttt, "NOP-In ping to an idle initiator");
                    self.ping = Some((ttt, now));
                }
            }
            Phase::Closed => {}
        }
        Ok(())
    }
}

impl IscsiConn {
    /// Handle the header of a SCSI Command or Data-Out whose data has not
    /// all arrived (`have`: the bytes after the header that did) and take
    /// the data as it comes. Returns the input consumed.
    #[allow(clippy::too_many_arguments)]
    fn start_rx(
        &mut self,
        raw: &RawBhs,
        pdu: Pdu,
        ahs: &[u8],
        head: usize,
        have: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<usize, Close> {
        let len = raw.data_len();
        let (slot, first) = match pdu {
            Pdu::ScsiCommand(c) => (self.command_head(&c, raw, ahs, len, out)?, 0),
            Pdu::DataOut(d) => (self.data_out_head(&d, raw, len, out)?, d.buffer_offset),
            _ => return Err(Close::Now),
        };
        let task = slot.and_then(|i| self.tasks[i].as_ref().map(|t| (i, t.serial)));
        self.rx = Some(RxData {
            task,
            first,
            seg: SegmentRx::new(len, padded_len(len) - len, self.dd),
            bhs: *raw,
        });
        let n = have.len().min(len);
        self.rx_copy(&have[..n], out, cx)?;
        Ok(head + n)
    }

    /// The task receiving the data, if it is still the same task.
    fn rx_task(&self) -> Option<usize> {
        let (slot, serial) = self.rx.as_ref()?.task?;
        let t = self.tasks.get(slot)?.as_ref()?;
        (t.serial == serial).then_some(slot)
    }

    /// Buffer offset of the next data byte of the PDU being received.
    fn rx_at(rx: &RxData) -> u32 {
        rx.first.saturating_add(u32_len(rx.seg.done()))
    }

    /// Data bytes of the PDU being received, from the input.
    fn rx_copy(&mut self, data: &[u8], out: &mut OutQueue, cx: &mut Context) -> Result<(), Close> {
        let slot = self.rx_task();
        let Some(rx) = self.rx.as_mut() else {
            return Ok(());
        };
        let at = Self::rx_at(rx);
        rx.seg.arrived(data);
        if let Some(slot) = slot {
            self.copy_data(slot, at, data);
        }
        self.rx_progress(out, cx)
    }

    /// Finish the PDU once its data is in and nothing follows it.
    fn rx_progress(&mut self, out: &mut OutQueue, cx: &mut Context) -> Result<(), Close> {
        match &self.rx {
            Some(rx) if rx.seg.complete_without_tail() => self.rx_finish(&[], out, cx),
            _ => Ok(()),
        }
    }

    /// Input while a PDU's data is being received: its data (when the
    /// socket I/O did not put it in place), then its padding and digest.
    fn rx_input(
        &mut self,
        input: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<usize, Close> {
        let Some(rx) = &self.rx else {
            return Ok(0);
        };
        self.last_rx = cx.now();
        match rx.seg.next(input.len()) {
            Next::Data(n) => self.rx_copy(&input[..n], out, cx).map(|()| n),
            Next::Wait => Ok(0),
            Next::Tail(n) => self.rx_finish(&input[..n], out, cx).map(|()| n),
        }
    }

    /// The whole data segment is in (`tail`: its padding and digest):
    /// check the digest, count the data, move the task on.
    fn rx_finish(
        &mut self,
        tail: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<(), Close> {
        let slot = self.rx_task();
        let Some(rx) = self.rx.take() else {
            return Ok(());
        };
        if !rx.seg.tail_ok(tail) {
            // ERL 0: reject and end the session.
            self.send_reject(out, reject::DATA_DIGEST, &rx.bhs);
            return Err(Close::AfterFlush);
        }
        if let Some(slot) = slot {
            self.data_arrived(slot, rx.first, rx.seg.len());
            self.advance(slot, out, cx);
        }
        Ok(())
    }
}

fn verify_data_digest(data: &[u8], pad: usize, wire: [u8; 4]) -> bool {
    crc32c_parts(&[data, &[0u8; 3][..pad]]) == from_wire(wire)
}

impl Protocol for IscsiConn {
    fn on_input(
        &mut self,
        input: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<usize, Close> {
        if self.rx.is_some() {
            return self.rx_input(input, out, cx);
        }
        if input.len() < BHS_LEN {
            return Ok(0);
        }
        if self.pool.is_none() {
            self.pool = Some(cx.buffer_pool().clone());
        }
        let (raw, pdu) = match keel_pdu::iscsi::parse(input) {
            Ok(x) => x,
            Err(_) => return Err(Close::Now),
        };
        let limit = match self.phase {
            Phase::Login(_) => LOGIN_MAX_DATA,
            _ => (self.portal.limits.max_recv_data_segment_length as usize).max(8192),
        };
        let dlen = raw.data_len();
        if dlen > limit {
            let bad = raw;
            return Err(self.protocol_error(
                out,
                &bad,
                "data segment longer than MaxRecvDataSegmentLength",
            ));
        }
        let body = keel_pdu::iscsi::body_len(&raw, self.hd, self.dd);
        let total = BHS_LEN + body;
        let ahs_len = raw.ahs_len();
        let head = BHS_LEN + ahs_len + if self.hd { 4 } else { 0 };
        // A write's data that has not all arrived is taken as it comes,
        // into the task's buffers, once the header is in.
        let rx_data = input.len() < total
            && input.len() >= head
            && dlen > 0
            && matches!(self.phase, Phase::Full)
            && matches!(pdu, Pdu::ScsiCommand(_) | Pdu::DataOut(_));
        if input.len() < total && !rx_data {
            return Ok(0);
        }
        self.last_rx = cx.now();
        let mut at = BHS_LEN + ahs_len;
        if self.hd {
            let wire = [input[at], input[at + 1], input[at + 2], input[at + 3]];
            if crc32c(&input[..at]) != from_wire(wire) {
                tracing::debug!(peer = %self.peer, "header digest error; dropping the connection");
                return Err(Close::Now);
            }
            at += 4;
        }
        let ahs = &input[BHS_LEN..BHS_LEN + ahs_len];
        if rx_data {
            return self.start_rx(&raw, pdu, ahs, head, &input[head..], out, cx);
        }
        let data = &input[at..at + dlen];
        let pad = padded_len(dlen) - dlen;
        if self.dd && dlen > 0 {
            let p = at + dlen + pad;
            let wire = [input[p], input[p + 1], input[p + 2], input[p + 3]];
            if !verify_data_digest(data, pad, wire) {
                // ERL 0: reject and end the session.
                self.send_reject(out, reject::DATA_DIGEST, &raw);
                return Err(Close::AfterFlush);
            }
        }
        let _ = reject::INVALID_PDU_FIELD;
        self.dispatch(&raw, pdu, ahs, data, out, cx)?;
        Ok(total)
    }

    fn direct_target(&mut self) -> Option<(&mut Vec<u8>, usize)> {
        let rx = self.rx.as_ref()?;
        let (left, at) = (rx.seg.left(), Self::rx_at(rx) as usize);
        let (slot, serial) = rx.task?;
        if left == 0 {
            return None;
        }
        let t = self.tasks.get_mut(slot)?.as_mut()?;
        let want = t.want as usize;
        if t.serial != serial || t.reject_with.is_some() || at >= want {
            return None;
        }
        let c = at / CHUNK;
        let size = CHUNK.min(want - c * CHUNK);
        buffer_pool::room_at(self.pool.as_ref(), &mut t.data[c], size, at % CHUNK, left)
    }

    fn direct_then(&self) -> usize {
        // The next PDU's basic header segment and header digest.
        BHS_LEN + if self.hd { 4 } else { 0 }
    }

    fn on_direct(
        &mut self,
        n: usize,
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<usize, Close> {
        // The bytes just received end the chunk buffer they went to.
        let slot = self.rx_task();
        let Some(rx) = self.rx.as_mut() else {
            return Ok(0);
        };
        let at = Self::rx_at(rx) as usize;
        let (c, within) = (at / CHUNK, at % CHUNK);
        match slot.and_then(|i| self.tasks[i].as_ref()) {
            Some(t) => rx.seg.arrived(&t.data[c][within..within + n]),
            None => return Err(Close::Now),
        }
        self.last_rx = cx.now();
        self.rx_progress(out, cx)?;
        Ok(1)
    }

    fn poll(&mut self, out: &mut OutQueue, cx: &mut Context) -> Result<usize, Close> {
        if self
            .kill
            .as_ref()
            .is_some_and(|k| k.load(Ordering::Acquire))
        {
            return Err(Close::Now);
        }
        let mut work = 0;
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
            if !self.tmfs.is_empty() && self.tmf_progress(out) {
                return Err(Close::AfterFlush);
            }
            work += 1;
        }
        while let Some(slot) = self.ready.pop_front() {
            if self.solicited >= MAX_SOLICITED {
                self.ready.push_front(slot);
                break;
            }
            self.issue_r2ts(slot, out);
            work += 1;
        }
        self.timers(out, cx)?;
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
        // Wake up for the login timeout or the next NOP-In. A timer armed
        // for a later moment (e.g. during login) does not hold back an
        // earlier one.
        let delay = match self.phase {
            Phase::Login(_) => self.portal.login_timeout,
            _ => self.portal.nop_interval.min(self.portal.nop_timeout),
        }
        .max(Duration::from_millis(100))
            / 2;
        let want = cx.now() + delay;
        if self
            .timer_due
            .get()
            .is_none_or(|due| due > want + delay / 2)
        {
            let due = self.timer_due.clone();
            due.set(Some(want));
            cx.add_timer(delay, move |_| due.set(None));
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
            self.free_task(i);
        }
        for c in self.completions.drain(..) {
            if let Some(b) = c.buf {
                buffer_pool::give_back(self.pool.as_ref(), b);
            }
        }
        if let Some(t) = &self.target {
            t.lun.nexus_lost(&self.nexus);
        }
        if self.tsih != 0 {
            self.reg.close_session(self.tsih);
        }
        if !self.logout_after_flush {
            tracing::debug!(peer = %self.peer, ?reason, "iSCSI connection closed");
        }
        self.phase = Phase::Closed;
    }
}
