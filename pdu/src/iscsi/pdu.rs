//! Typed iSCSI PDUs (RFC 7143 §11): decoded from and encoded to a
//! [`RawBhs`]. The data segment is not part of these types; `data_len` says
//! how long it is.

use zerocopy::byteorder::big_endian::{U32, U64};

use super::bhs::{Opcode, RawBhs};
use super::PduError;

fn w(v: u32) -> U32 {
    U32::new(v)
}

fn base(op: Opcode, immediate: bool, flags: u8, data_len: usize) -> RawBhs {
    let mut r = RawBhs {
        opcode: op.value() | if immediate { 0x40 } else { 0 },
        flags,
        ..RawBhs::default()
    };
    r.set_data_len(data_len);
    r
}

fn bit(v: bool, mask: u8) -> u8 {
    if v {
        mask
    } else {
        0
    }
}

/// SCSI Command (§11.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiCommand {
    /// Immediate delivery.
    pub immediate: bool,
    /// F: no unsolicited Data-Out follows.
    pub final_bit: bool,
    /// R: data flows to the initiator.
    pub read: bool,
    /// W: data flows to the target.
    pub write: bool,
    /// Task attributes (bits 0-2).
    pub attr: u8,
    /// AHS length in bytes.
    pub ahs_len: usize,
    /// Immediate data in this PDU.
    pub data_len: usize,
    /// Logical unit number field.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Expected Data Transfer Length.
    pub expected_len: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// The CDB (16 bytes; longer CDBs continue in an extended-CDB AHS).
    pub cdb: [u8; 16],
}

impl ScsiCommand {
    fn decode(r: &RawBhs) -> ScsiCommand {
        let mut cdb = [0u8; 16];
        cdb[..4].copy_from_slice(&r.w32.get().to_be_bytes());
        cdb[4..8].copy_from_slice(&r.w36.get().to_be_bytes());
        cdb[8..12].copy_from_slice(&r.w40.get().to_be_bytes());
        cdb[12..].copy_from_slice(&r.w44.get().to_be_bytes());
        ScsiCommand {
            immediate: r.immediate(),
            final_bit: r.final_bit(),
            read: r.flags & 0x40 != 0,
            write: r.flags & 0x20 != 0,
            attr: r.flags & 0x07,
            ahs_len: r.ahs_len(),
            data_len: r.data_len(),
            lun: r.lun.get(),
            itt: r.itt.get(),
            expected_len: r.w20.get(),
            cmd_sn: r.w24.get(),
            exp_stat_sn: r.w28.get(),
            cdb,
        }
    }

    /// Encode. The AHS length is set by the caller when it sends one.
    pub fn encode(&self) -> RawBhs {
        let flags = bit(self.final_bit, 0x80)
            | bit(self.read, 0x40)
            | bit(self.write, 0x20)
            | (self.attr & 7);
        let mut r = base(Opcode::ScsiCommand, self.immediate, flags, self.data_len);
        r.total_ahs_len = u8::try_from(self.ahs_len / 4).unwrap_or(u8::MAX);
        r.lun = U64::new(self.lun);
        r.itt = w(self.itt);
        r.w20 = w(self.expected_len);
        r.w24 = w(self.cmd_sn);
        r.w28 = w(self.exp_stat_sn);
        let c = &self.cdb;
        r.w32 = w(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        r.w36 = w(u32::from_be_bytes([c[4], c[5], c[6], c[7]]));
        r.w40 = w(u32::from_be_bytes([c[8], c[9], c[10], c[11]]));
        r.w44 = w(u32::from_be_bytes([c[12], c[13], c[14], c[15]]));
        r
    }
}

/// Residual flags of SCSI Response and Data-In (§11.4.1, §11.7.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Residual {
    /// o: bidirectional read residual overflow.
    pub bidi_overflow: bool,
    /// u: bidirectional read residual underflow.
    pub bidi_underflow: bool,
    /// O: residual overflow.
    pub overflow: bool,
    /// U: residual underflow.
    pub underflow: bool,
}

impl Residual {
    fn from_flags(f: u8) -> Residual {
        Residual {
            bidi_overflow: f & 0x10 != 0,
            bidi_underflow: f & 0x08 != 0,
            overflow: f & 0x04 != 0,
            underflow: f & 0x02 != 0,
        }
    }
    fn flags(self) -> u8 {
        bit(self.bidi_overflow, 0x10)
            | bit(self.bidi_underflow, 0x08)
            | bit(self.overflow, 0x04)
            | bit(self.underflow, 0x02)
    }
}

/// SCSI Response (§11.4). The data segment carries SenseLength (2 bytes)
/// and sense data, or response data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    /// Residual flags.
    pub residual: Residual,
    /// iSCSI service response (0: command completed at target).
    pub response: u8,
    /// SCSI status.
    pub status: u8,
    /// Data segment length.
    pub data_len: usize,
    /// Initiator Task Tag.
    pub itt: u32,
    /// SNACK Tag.
    pub snack_tag: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// ExpDataSN.
    pub exp_data_sn: u32,
    /// Bidirectional read residual count.
    pub bidi_residual: u32,
    /// Residual count.
    pub residual_count: u32,
}

impl ScsiResponse {
    fn decode(r: &RawBhs) -> ScsiResponse {
        ScsiResponse {
            residual: Residual::from_flags(r.flags),
            response: r.b2,
            status: r.b3,
            data_len: r.data_len(),
            itt: r.itt.get(),
            snack_tag: r.w20.get(),
            stat_sn: r.w24.get(),
            exp_cmd_sn: r.w28.get(),
            max_cmd_sn: r.w32.get(),
            exp_data_sn: r.w36.get(),
            bidi_residual: r.w40.get(),
            residual_count: r.w44.get(),
        }
    }

    /// Encode.
    pub fn encode(&self) -> RawBhs {
        let mut r = base(
            Opcode::ScsiResponse,
            false,
            0x80 | self.residual.flags(),
            self.data_len,
        );
        r.b2 = self.response;
        r.b3 = self.status;
        r.itt = w(self.itt);
        r.w20 = w(self.snack_tag);
        r.w24 = w(self.stat_sn);
        r.w28 = w(self.exp_cmd_sn);
        r.w32 = w(self.max_cmd_sn);
        r.w36 = w(self.exp_data_sn);
        r.w40 = w(self.bidi_residual);
        r.w44 = w(self.residual_count);
        r
    }
}

/// SCSI Data-Out (§11.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DataOut {
    /// F: last PDU of the sequence.
    pub final_bit: bool,
    /// Data segment length.
    pub data_len: usize,
    /// LUN field.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag (0xffffffff for unsolicited data).
    pub ttt: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// DataSN.
    pub data_sn: u32,
    /// Buffer Offset.
    pub buffer_offset: u32,
}

impl DataOut {
    fn decode(r: &RawBhs) -> DataOut {
        DataOut {
            final_bit: r.final_bit(),
            data_len: r.data_len(),
            lun: r.lun.get(),
            itt: r.itt.get(),
            ttt: r.w20.get(),
            exp_stat_sn: r.w28.get(),
            data_sn: r.w36.get(),
            buffer_offset: r.w40.get(),
        }
    }

    /// Encode.
    pub fn encode(&self) -> RawBhs {
        let mut r = base(
            Opcode::DataOut,
            false,
            bit(self.final_bit, 0x80),
            self.data_len,
        );
        r.lun = U64::new(self.lun);
        r.itt = w(self.itt);
        r.w20 = w(self.ttt);
        r.w28 = w(self.exp_stat_sn);
        r.w36 = w(self.data_sn);
        r.w40 = w(self.buffer_offset);
        r
    }
}

/// SCSI Data-In (§11.7), with optional phase-collapsed status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DataIn {
    /// F: last PDU of the sequence.
    pub final_bit: bool,
    /// A: acknowledge requested.
    pub ack: bool,
    /// Residual flags (only with status).
    pub residual: Residual,
    /// S: carries the command's status (then also F).
    pub status: Option<u8>,
    /// Data segment length.
    pub data_len: usize,
    /// LUN field.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag.
    pub ttt: u32,
    /// StatSN (only with status).
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// DataSN.
    pub data_sn: u32,
    /// Buffer Offset.
    pub buffer_offset: u32,
    /// Residual count (only with status).
    pub residual_count: u32,
}

impl DataIn {
    fn decode(r: &RawBhs) -> DataIn {
        let has_status = r.flags & 0x01 != 0;
        DataIn {
            final_bit: r.final_bit(),
            ack: r.flags & 0x40 != 0,
            residual: Residual::from_flags(r.flags & 0x06),
            status: has_status.then_some(r.b3),
            data_len: r.data_len(),
            lun: r.lun.get(),
            itt: r.itt.get(),
            ttt: r.w20.get(),
            stat_sn: r.w24.get(),
            exp_cmd_sn: r.w28.get(),
            max_cmd_sn: r.w32.get(),
            data_sn: r.w36.get(),
            buffer_offset: r.w40.get(),
            residual_count: r.w44.get(),
        }
    }

    /// Encode.
    pub fn encode(&self) -> RawBhs {
        let flags = bit(self.final_bit, 0x80)
            | bit(self.ack, 0x40)
            | (self.residual.flags() & 0x06)
            | bit(self.status.is_some(), 0x01);
        let mut r = base(Opcode::DataIn, false, flags, self.data_len);
        r.b3 = self.status.unwrap_or(0);
        r.lun = U64::new(self.lun);
        r.itt = w(self.itt);
        r.w20 = w(self.ttt);
        r.w24 = w(self.stat_sn);
        r.w28 = w(self.exp_cmd_sn);
        r.w32 = w(self.max_cmd_sn);
        r.w36 = w(self.data_sn);
        r.w40 = w(self.buffer_offset);
        r.w44 = w(self.residual_count);
        r
    }
}

/// Ready To Transfer (§11.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct R2t {
    /// LUN field.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag.
    pub ttt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// R2TSN.
    pub r2t_sn: u32,
    /// Buffer Offset.
    pub buffer_offset: u32,
    /// Desired Data Transfer Length.
    pub desired_len: u32,
}

impl R2t {
    fn decode(r: &RawBhs) -> R2t {
        R2t {
            lun: r.lun.get(),
            itt: r.itt.get(),
            ttt: r.w20.get(),
            stat_sn: r.w24.get(),
            exp_cmd_sn: r.w28.get(),
            max_cmd_sn: r.w32.get(),
            r2t_sn: r.w36.get(),
            buffer_offset: r.w40.get(),
            desired_len: r.w44.get(),
        }
    }

    /// Encode.
    pub fn encode(&self) -> RawBhs {
        let mut r = base(Opcode::R2t, false, 0x80, 0);
        r.lun = U64::new(self.lun);
        r.itt = w(self.itt);
        r.w20 = w(self.ttt);
        r.w24 = w(self.stat_sn);
        r.w28 = w(self.exp_cmd_sn);
        r.w32 = w(self.max_cmd_sn);
        r.w36 = w(self.r2t_sn);
        r.w40 = w(self.buffer_offset);
        r.w44 = w(self.desired_len);
        r
    }
}

/// NOP-Out (§11.18) and NOP-In (§11.19) share a layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Nop {
    /// Immediate delivery (NOP-Out).
    pub immediate: bool,
    /// Ping data length.
    pub data_len: usize,
    /// LUN field.
    pub lun: u64,
    /// Initiator Task Tag (0xffffffff: no answer wanted / target ping).
    pub itt: u32,
    /// Target Transfer Tag.
    pub ttt: u32,
    /// CmdSN (NOP-Out) or StatSN (NOP-In).
    pub sn: u32,
    /// ExpStatSN (NOP-Out) or ExpCmdSN (NOP-In).
    pub exp_sn: u32,
    /// MaxCmdSN (NOP-In).
    pub max_cmd_sn: u32,
}

impl Nop {
    fn decode(r: &RawBhs, out: bool) -> Nop {
        Nop {
            immediate: out && r.immediate(),
            data_len: r.data_len(),
            lun: r.lun.get(),
            itt: r.itt.get(),
            ttt: r.w20.get(),
            sn: r.w24.get(),
            exp_sn: r.w28.get(),
            max_cmd_sn: if out { 0 } else { r.w32.get() },
        }
    }

    /// Encode as NOP-Out (`out`) or NOP-In.
    pub fn encode(&self, out: bool) -> RawBhs {
        let op = if out { Opcode::NopOut } else { Opcode::NopIn };
        let mut r = base(op, out && self.immediate, 0x80, self.data_len);
        r.lun = U64::new(self.lun);
        r.itt = w(self.itt);
        r.w20 = w(self.ttt);
        r.w24 = w(self.sn);
        r.w28 = w(self.exp_sn);
        if !out {
            r.w32 = w(self.max_cmd_sn);
        }
        r
    }
}

/// Login Request (§11.12) and Login Response (§11.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Login {
    /// T: transit to the next stage.
    pub transit: bool,
    /// C: the text continues in the next PDU.
    pub continue_bit: bool,
    /// Current stage (0 security, 1 operational, 3 full feature).
    pub csg: u8,
    /// Next stage.
    pub nsg: u8,
    /// Version-max.
    pub version_max: u8,
    /// Version-min (request) or Version-active (response).
    pub version: u8,
    /// Data segment length.
    pub data_len: usize,
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH.
    pub tsih: u16,
    /// Initiator Task Tag.
    pub itt: u32,
    /// CID (request).
    pub cid: u16,
    /// CmdSN (request) or StatSN (response).
    pub sn: u32,
    /// ExpStatSN (request) or ExpCmdSN (response).
    pub exp_sn: u32,
    /// MaxCmdSN (response).
    pub max_cmd_sn: u32,
    /// Status-Class (response).
    pub status_class: u8,
    /// Status-Detail (response).
    pub status_detail: u8,
}

impl Login {
    fn decode(r: &RawBhs, request: bool) -> Login {
        let status = r.w36.get().to_be_bytes();
        Login {
            transit: r.flags & 0x80 != 0,
            continue_bit: r.flags & 0x40 != 0,
            csg: (r.flags >> 2) & 3,
            nsg: r.flags & 3,
            version_max: r.b2,
            version: r.b3,
            data_len: r.data_len(),
            isid: r.isid(),
            tsih: r.tsih(),
            itt: r.itt.get(),
            cid: if request { r.w20_hi16() } else { 0 },
            sn: r.w24.get(),
            exp_sn: r.w28.get(),
            max_cmd_sn: if request { 0 } else { r.w32.get() },
            status_class: if request { 0 } else { status[0] },
            status_detail: if request { 0 } else { status[1] },
        }
    }

    /// Encode as a request (`request`, always immediate) or a response.
    pub fn encode(&self, request: bool) -> RawBhs {
        let flags = bit(self.transit, 0x80)
            | bit(self.continue_bit, 0x40)
            | ((self.csg & 3) << 2)
            | (self.nsg & 3);
        let op = if request {
            Opcode::LoginRequest
        } else {
            Opcode::LoginResponse
        };
        let mut r = base(op, request, flags, self.data_len);
        r.b2 = self.version_max;
        r.b3 = self.version;
        r.set_isid_tsih(self.isid, self.tsih);
        r.itt = w(self.itt);
        if request {
            r.w20 = w(u32::from(self.cid) << 16);
        }
        r.w24 = w(self.sn);
        r.w28 = w(self.exp_sn);
        if !request {
            r.w32 = w(self.max_cmd_sn);
            r.w36 = w(u32::from_be_bytes([
                self.status_class,
                self.status_detail,
                0,
                0,
            ]));
        }
        r
    }
}

/// Text Request (§11.10) and Text Response (§11.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Text {
    /// Immediate delivery (request).
    pub immediate: bool,
    /// F: final.
    pub final_bit: bool,
    /// C: continue.
    pub continue_bit: bool,
    /// Data segment length.
    pub data_len: usize,
    /// LUN field.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag.
    pub ttt: u32,
    /// CmdSN (request) or StatSN (response).
    pub sn: u32,
    /// ExpStatSN (request) or ExpCmdSN (response).
    pub exp_sn: u32,
    /// MaxCmdSN (response).
    pub max_cmd_sn: u32,
}

impl Text {
    fn decode(r: &RawBhs, request: bool) -> Text {
        Text {
            immediate: request && r.immediate(),
            final_bit: r.final_bit(),
            continue_bit: r.flags & 0x40 != 0,
            data_len: r.data_len(),
            lun: r.lun.get(),
            itt: r.itt.get(),
            ttt: r.w20.get(),
            sn: r.w24.get(),
            exp_sn: r.w28.get(),
            max_cmd_sn: if request { 0 } else { r.w32.get() },
        }
    }

    /// Encode as a request or a response.
    pub fn encode(&self, request: bool) -> RawBhs {
        let op = if request {
            Opcode::TextRequest
        } else {
            Opcode::TextResponse
        };
        let flags = bit(self.final_bit, 0x80) | bit(self.continue_bit, 0x40);
        let mut r = base(op, request && self.immediate, flags, self.data_len);
        r.lun = U64::new(self.lun);
        r.itt = w(self.itt);
        r.w20 = w(self.ttt);
        r.w24 = w(self.sn);
        r.w28 = w(self.exp_sn);
        if !request {
            r.w32 = w(self.max_cmd_sn);
        }
        r
    }
}

/// Logout Request (§11.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogoutRequest {
    /// Immediate delivery.
    pub immediate: bool,
    /// Reason code (0 close session, 1 close connection, 2 remove for recovery).
    pub reason: u8,
    /// Initiator Task Tag.
    pub itt: u32,
    /// CID.
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

impl LogoutRequest {
    fn decode(r: &RawBhs) -> LogoutRequest {
        LogoutRequest {
            immediate: r.immediate(),
            reason: r.flags & 0x7f,
            itt: r.itt.get(),
            cid: r.w20_hi16(),
            cmd_sn: r.w24.get(),
            exp_stat_sn: r.w28.get(),
        }
    }

    /// Encode.
    pub fn encode(&self) -> RawBhs {
        let mut r = base(
            Opcode::LogoutRequest,
            self.immediate,
            0x80 | (self.reason & 0x7f),
            0,
        );
        r.itt = w(self.itt);
        r.w20 = w(u32::from(self.cid) << 16);
        r.w24 = w(self.cmd_sn);
        r.w28 = w(self.exp_stat_sn);
        r
    }
}

/// Logout Response (§11.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogoutResponse {
    /// Response (0 closed successfully).
    pub response: u8,
    /// Initiator Task Tag.
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Time2Wait.
    pub time2wait: u16,
    /// Time2Retain.
    pub time2retain: u16,
}

impl LogoutResponse {
    fn decode(r: &RawBhs) -> LogoutResponse {
        let (t2w, t2r) = r.w40_halves();
        LogoutResponse {
            response: r.b2,
            itt: r.itt.get(),
            stat_sn: r.w24.get(),
            exp_cmd_sn: r.w28.get(),
            max_cmd_sn: r.w32.get(),
            time2wait: t2w,
            time2retain: t2r,
        }
    }

    /// Encode.
    pub fn encode(&self) -> RawBhs {
        let mut r = base(Opcode::LogoutResponse, false, 0x80, 0);
        r.b2 = self.response;
        r.itt = w(self.itt);
        r.w24 = w(self.stat_sn);
        r.w28 = w(self.exp_cmd_sn);
        r.w32 = w(self.max_cmd_sn);
        r.w40 = w((u32::from(self.time2wait) << 16) | u32::from(self.time2retain));
        r
    }
}

/// Task Management Function Request (§11.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TaskMgmtRequest {
    /// Immediate delivery.
    pub immediate: bool,
    /// Function (1 ABORT TASK, 2 ABORT TASK SET, 3 CLEAR ACA, 4 CLEAR TASK
    /// SET, 5 LOGICAL UNIT RESET, 6 TARGET WARM RESET, 7 TARGET COLD RESET,
    /// 8 TASK REASSIGN).
    pub function: u8,
    /// LUN field.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Referenced Task Tag.
    pub ref_task_tag: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// RefCmdSN.
    pub ref_cmd_sn: u32,
    /// ExpDataSN.
    pub exp_data_sn: u32,
}

impl TaskMgmtRequest {
    fn decode(r: &RawBhs) -> TaskMgmtRequest {
        TaskMgmtRequest {
            immediate: r.immediate(),
            function: r.flags & 0x7f,
            lun: r.lun.get(),
            itt: r.itt.get(),
            ref_task_tag: r.w20.get(),
            cmd_sn: r.w24.get(),
            exp_stat_sn: r.w28.get(),
            ref_cmd_sn: r.w32.get(),
            exp_data_sn: r.w36.get(),
        }
    }

    /// Encode.
    pub fn encode(&self) -> RawBhs {
        let mut r = base(
            Opcode::TaskMgmtRequest,
            self.immediate,
            0x80 | (self.function & 0x7f),
            0,
        );
        r.lun = U64::new(self.lun);
        r.itt = w(self.itt);
        r.w20 = w(self.ref_task_tag);
        r.w24 = w(self.cmd_sn);
        r.w28 = w(self.exp_stat_sn);
        r.w32 = w(self.ref_cmd_sn);
        r.w36 = w(self.exp_data_sn);
        r
    }
}

/// Task Management Function Response (§11.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TaskMgmtResponse {
    /// Response (0 function complete, 1 task does not exist, 2 LUN does not
    /// exist, 3 task still allegiant, 4 reassignment not supported, 5 not
    /// supported, 6 authorization failed, 255 rejected).
    pub response: u8,
    /// Initiator Task Tag.
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
}

impl TaskMgmtResponse {
    fn decode(r: &RawBhs) -> TaskMgmtResponse {
        TaskMgmtResponse {
            response: r.b2,
            itt: r.itt.get(),
            stat_sn: r.w24.get(),
            exp_cmd_sn: r.w28.get(),
            max_cmd_sn: r.w32.get(),
        }
    }

    /// Encode.
    pub fn encode(&self) -> RawBhs {
        let mut r = base(Opcode::TaskMgmtResponse, false, 0x80, 0);
        r.b2 = self.response;
        r.itt = w(self.itt);
        r.w24 = w(self.stat_sn);
        r.w28 = w(self.exp_cmd_sn);
        r.w32 = w(self.max_cmd_sn);
        r
    }
}

/// Reject (§11.17); the data segment is the rejected PDU's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Reject {
    /// Reason (2 data digest error, 4 protocol error, 5 command not
    /// supported, 9 invalid PDU field, 11 waiting for logout, ...).
    pub reason: u8,
    /// Data segment length.
    pub data_len: usize,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// DataSN/R2TSN.
    pub data_sn: u32,
}

impl Reject {
    fn decode(r: &RawBhs) -> Reject {
        Reject {
            reason: r.b2,
            data_len: r.data_len(),
            stat_sn: r.w24.get(),
            exp_cmd_sn: r.w28.get(),
            max_cmd_sn: r.w32.get(),
            data_sn: r.w36.get(),
        }
    }

    /// Encode (ITT is 0xffffffff, §11.17).
    pub fn encode(&self) -> RawBhs {
        let mut r = base(Opcode::Reject, false, 0x80, self.data_len);
        r.b2 = self.reason;
        r.itt = w(0xffff_ffff);
        r.w24 = w(self.stat_sn);
        r.w28 = w(self.exp_cmd_sn);
        r.w32 = w(self.max_cmd_sn);
        r.w36 = w(self.data_sn);
        r
    }
}

/// Asynchronous Message (§11.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AsyncMessage {
    /// Data segment length.
    pub data_len: usize,
    /// LUN field.
    pub lun: u64,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// AsyncEvent (1 logout requested, 2 connection drop, 3 session drop, 4
    /// parameter negotiation).
    pub event: u8,
    /// AsyncVCode.
    pub vcode: u8,
    /// Parameter1, Parameter2, Parameter3.
    pub params: [u16; 3],
}

impl AsyncMessage {
    fn decode(r: &RawBhs) -> AsyncMessage {
        let b = r.w36.get().to_be_bytes();
        let (p2, p3) = r.w40_halves();
        AsyncMessage {
            data_len: r.data_len(),
            lun: r.lun.get(),
            stat_sn: r.w24.get(),
            exp_cmd_sn: r.w28.get(),
            max_cmd_sn: r.w32.get(),
            event: b[0],
            vcode: b[1],
            params: [u16::from_be_bytes([b[2], b[3]]), p2, p3],
        }
    }

    /// Encode (ITT is 0xffffffff).
    pub fn encode(&self) -> RawBhs {
        let mut r = base(Opcode::AsyncMessage, false, 0x80, self.data_len);
        r.lun = U64::new(self.lun);
        r.itt = w(0xffff_ffff);
        r.w24 = w(self.stat_sn);
        r.w28 = w(self.exp_cmd_sn);
        r.w32 = w(self.max_cmd_sn);
        let p1 = self.params[0].to_be_bytes();
        r.w36 = w(u32::from_be_bytes([self.event, self.vcode, p1[0], p1[1]]));
        r.w40 = w((u32::from(self.params[1]) << 16) | u32::from(self.params[2]));
        r
    }
}

/// SNACK Request (§11.16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Snack {
    /// Type (0 Data/R2T, 1 status, 2 DataACK, 3 R-Data).
    pub kind: u8,
    /// LUN field.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag.
    pub ttt: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// BegRun.
    pub beg_run: u32,
    /// RunLength.
    pub run_length: u32,
}

impl Snack {
    fn decode(r: &RawBhs) -> Snack {
        Snack {
            kind: r.flags & 0x0f,
            lun: r.lun.get(),
            itt: r.itt.get(),
            ttt: r.w20.get(),
            exp_stat_sn: r.w28.get(),
            beg_run: r.w40.get(),
            run_length: r.w44.get(),
        }
    }

    /// Encode.
    pub fn encode(&self) -> RawBhs {
        let mut r = base(Opcode::SnackRequest, false, 0x80 | (self.kind & 0x0f), 0);
        r.lun = U64::new(self.lun);
        r.itt = w(self.itt);
        r.w20 = w(self.ttt);
        r.w28 = w(self.exp_stat_sn);
        r.w40 = w(self.beg_run);
        r.w44 = w(self.run_length);
        r
    }
}

/// A decoded PDU header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pdu {
    /// SCSI Command.
    ScsiCommand(ScsiCommand),
    /// SCSI Response.
    ScsiResponse(ScsiResponse),
    /// Data-Out.
    DataOut(DataOut),
    /// Data-In.
    DataIn(DataIn),
    /// R2T.
    R2t(R2t),
    /// NOP-Out.
    NopOut(Nop),
    /// NOP-In.
    NopIn(Nop),
    /// Login Request.
    LoginRequest(Login),
    /// Login Response.
    LoginResponse(Login),
    /// Text Request.
    TextRequest(Text),
    /// Text Response.
    TextResponse(Text),
    /// Logout Request.
    LogoutRequest(LogoutRequest),
    /// Logout Response.
    LogoutResponse(LogoutResponse),
    /// Task Management Request.
    TaskMgmtRequest(TaskMgmtRequest),
    /// Task Management Response.
    TaskMgmtResponse(TaskMgmtResponse),
    /// Reject.
    Reject(Reject),
    /// Asynchronous Message.
    AsyncMessage(AsyncMessage),
    /// SNACK.
    Snack(Snack),
    /// An opcode this crate does not know: the raw header.
    Unknown(RawBhs),
}

impl Pdu {
    /// Decode a BHS.
    pub fn decode(r: &RawBhs) -> Pdu {
        match r.op() {
            Opcode::ScsiCommand => Pdu::ScsiCommand(ScsiCommand::decode(r)),
            Opcode::ScsiResponse => Pdu::ScsiResponse(ScsiResponse::decode(r)),
            Opcode::DataOut => Pdu::DataOut(DataOut::decode(r)),
            Opcode::DataIn => Pdu::DataIn(DataIn::decode(r)),
            Opcode::R2t => Pdu::R2t(R2t::decode(r)),
            Opcode::NopOut => Pdu::NopOut(Nop::decode(r, true)),
            Opcode::NopIn => Pdu::NopIn(Nop::decode(r, false)),
            Opcode::LoginRequest => Pdu::LoginRequest(Login::decode(r, true)),
            Opcode::LoginResponse => Pdu::LoginResponse(Login::decode(r, false)),
            Opcode::TextRequest => Pdu::TextRequest(Text::decode(r, true)),
            Opcode::TextResponse => Pdu::TextResponse(Text::decode(r, false)),
            Opcode::LogoutRequest => Pdu::LogoutRequest(LogoutRequest::decode(r)),
            Opcode::LogoutResponse => Pdu::LogoutResponse(LogoutResponse::decode(r)),
            Opcode::TaskMgmtRequest => Pdu::TaskMgmtRequest(TaskMgmtRequest::decode(r)),
            Opcode::TaskMgmtResponse => Pdu::TaskMgmtResponse(TaskMgmtResponse::decode(r)),
            Opcode::Reject => Pdu::Reject(Reject::decode(r)),
            Opcode::AsyncMessage => Pdu::AsyncMessage(AsyncMessage::decode(r)),
            Opcode::SnackRequest => Pdu::Snack(Snack::decode(r)),
            Opcode::Unknown(_) => Pdu::Unknown(*r),
        }
    }

    /// Encode back to a BHS.
    pub fn encode(&self) -> RawBhs {
        match self {
            Pdu::ScsiCommand(p) => p.encode(),
            Pdu::ScsiResponse(p) => p.encode(),
            Pdu::DataOut(p) => p.encode(),
            Pdu::DataIn(p) => p.encode(),
            Pdu::R2t(p) => p.encode(),
            Pdu::NopOut(p) => p.encode(true),
            Pdu::NopIn(p) => p.encode(false),
            Pdu::LoginRequest(p) => p.encode(true),
            Pdu::LoginResponse(p) => p.encode(false),
            Pdu::TextRequest(p) => p.encode(true),
            Pdu::TextResponse(p) => p.encode(false),
            Pdu::LogoutRequest(p) => p.encode(),
            Pdu::LogoutResponse(p) => p.encode(),
            Pdu::TaskMgmtRequest(p) => p.encode(),
            Pdu::TaskMgmtResponse(p) => p.encode(),
            Pdu::Reject(p) => p.encode(),
            Pdu::AsyncMessage(p) => p.encode(),
            Pdu::Snack(p) => p.encode(),
            Pdu::Unknown(r) => *r,
        }
    }
}

/// Parse the BHS at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<(RawBhs, Pdu), PduError> {
    let raw = RawBhs::parse(buf)?;
    Ok((raw, Pdu::decode(&raw)))
}

/// Bytes a whole PDU takes on the wire after its BHS: AHS, header digest,
/// padded data segment, data digest.
pub fn body_len(raw: &RawBhs, header_digest: bool, data_digest: bool) -> usize {
    let d = raw.data_len();
    raw.ahs_len()
        + if header_digest { 4 } else { 0 }
        + super::padded_len(d)
        + if data_digest && d > 0 { 4 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn read10_command_from_known_bytes() {
        // A SCSI Command as Linux sends it: READ(10) of 8 blocks at LBA 0x1234,
        // immediate bit clear, F+R, simple task, LUN 0, ITT 0x10, EDTL 4096.
        let mut b = [0u8; 48];
        b[0] = 0x01;
        b[1] = 0xc1;
        b[16..20].copy_from_slice(&0x10u32.to_be_bytes());
        b[20..24].copy_from_slice(&4096u32.to_be_bytes());
        b[24..28].copy_from_slice(&7u32.to_be_bytes());
        b[28..32].copy_from_slice(&3u32.to_be_bytes());
        b[32..42].copy_from_slice(&[0x28, 0, 0, 0, 0x12, 0x34, 0, 0, 8, 0]);
        let (_, p) = parse(&b).unwrap();
        let Pdu::ScsiCommand(c) = p else {
            panic!("{p:?}")
        };
        assert!(c.final_bit && c.read && !c.write && !c.immediate);
        assert_eq!(
            (c.attr, c.itt, c.expected_len, c.cmd_sn, c.exp_stat_sn),
            (1, 0x10, 4096, 7, 3)
        );
        assert_eq!(&c.cdb[..10], &[0x28, 0, 0, 0, 0x12, 0x34, 0, 0, 8, 0]);
        assert_eq!(c.encode().to_bytes(), b);
    }

    #[test]
    fn login_request_fields() {
        let l = Login {
            transit: true,
            csg: 1,
            nsg: 3,
            isid: [0x80, 0, 0x12, 0x34, 0, 1],
            tsih: 0,
            itt: 1,
            cid: 7,
            sn: 1,
            exp_sn: 0,
            data_len: 120,
            ..Login::default()
        };
        let b = l.encode(true).to_bytes();
        assert_eq!(b[0], 0x43); // immediate + login
        assert_eq!(b[1], 0x87);
        assert_eq!(&b[8..14], &[0x80, 0, 0x12, 0x34, 0, 1]);
        assert_eq!(&b[20..22], &[0, 7]);
        assert_eq!(parse(&b).unwrap().1, Pdu::LoginRequest(l));
    }

    #[test]
    fn body_lengths() {
        let mut r = RawBhs::default();
        r.set_data_len(5);
        r.total_ahs_len = 1;
        assert_eq!(body_len(&r, false, false), 4 + 8);
        assert_eq!(body_len(&r, true, true), 4 + 4 + 8 + 4);
        r.set_data_len(0);
        assert_eq!(body_len(&r, true, true), 4 + 4);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        #[test]
        fn short_input_is_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            prop_assert!(parse(&bytes).is_err());
        }

        #[test]
        fn any_header_parses_and_decode_encode_is_stable(bytes in proptest::collection::vec(any::<u8>(), 48..64)) {
            match parse(&bytes) {
                Err(_) => prop_assert!(false, "48 bytes must parse"),
                Ok((_, p)) => {
                    // Encoding what we decoded and decoding again gives the
                    // same PDU (no field is read from one place and written
                    // to another).
                    let again = Pdu::decode(&p.encode());
                    prop_assert_eq!(again, p);
                }
            }
        }
    }
}
