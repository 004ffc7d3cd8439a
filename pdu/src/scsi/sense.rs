//! Sense data (SPC-4 §4.5): fixed (0x70) and descriptor (0x72) formats.

/// Sense keys (SPC-4 §4.5.6).
pub mod key {
    /// NO SENSE.
    pub const NO_SENSE: u8 = 0x0;
    /// RECOVERED ERROR.
    pub const RECOVERED_ERROR: u8 = 0x1;
    /// NOT READY.
    pub const NOT_READY: u8 = 0x2;
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// HARDWARE ERROR.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// DATA PROTECT.
    pub const DATA_PROTECT: u8 = 0x7;
    /// ABORTED COMMAND.
    pub const ABORTED_COMMAND: u8 = 0xb;
    /// MISCOMPARE.
    pub const MISCOMPARE: u8 = 0xe;
}

/// Additional sense code and qualifier pairs a block target uses.
pub mod asc {
    /// NO ADDITIONAL SENSE INFORMATION.
    pub const NO_ADDITIONAL: (u8, u8) = (0x00, 0x00);
    /// LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE.
    pub const NOT_READY: (u8, u8) = (0x04, 0x00);
    /// LOGICAL UNIT NOT READY, TARGET PORT IN STANDBY STATE.
    pub const NOT_READY_STANDBY: (u8, u8) = (0x04, 0x0b);
    /// LOGICAL UNIT NOT READY, TARGET PORT IN UNAVAILABLE STATE.
    pub const NOT_READY_UNAVAILABLE: (u8, u8) = (0x04, 0x0c);
    /// WRITE ERROR.
    pub const WRITE_ERROR: (u8, u8) = (0x0c, 0x00);
    /// UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ_ERROR: (u8, u8) = (0x11, 0x00);
    /// PARAMETER LIST LENGTH ERROR.
    pub const PARAMETER_LIST_LENGTH_ERROR: (u8, u8) = (0x1a, 0x00);
    /// MISCOMPARE DURING VERIFY OPERATION.
    pub const MISCOMPARE_DURING_VERIFY: (u8, u8) = (0x1d, 0x00);
    /// INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: (u8, u8) = (0x20, 0x00);
    /// LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: (u8, u8) = (0x21, 0x00);
    /// INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: (u8, u8) = (0x24, 0x00);
    /// LOGICAL UNIT NOT SUPPORTED.
    pub const LUN_NOT_SUPPORTED: (u8, u8) = (0x25, 0x00);
    /// INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: (u8, u8) = (0x26, 0x00);
    /// WRITE PROTECTED.
    pub const WRITE_PROTECTED: (u8, u8) = (0x27, 0x00);
    /// SPACE ALLOCATION FAILED WRITE PROTECT.
    pub const SPACE_ALLOCATION_FAILED: (u8, u8) = (0x27, 0x07);
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub const POWER_ON_RESET: (u8, u8) = (0x29, 0x00);
    /// MODE PARAMETERS CHANGED.
    pub const MODE_PARAMETERS_CHANGED: (u8, u8) = (0x2a, 0x01);
    /// RESERVATIONS PREEMPTED.
    pub const RESERVATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x03);
    /// RESERVATIONS RELEASED.
    pub const RESERVATIONS_RELEASED: (u8, u8) = (0x2a, 0x04);
    /// REGISTRATIONS PREEMPTED.
    pub const REGISTRATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x05);
    /// ASYMMETRIC ACCESS STATE CHANGED.
    pub const ASYMMETRIC_ACCESS_STATE_CHANGED: (u8, u8) = (0x2a, 0x06);
    /// CAPACITY DATA HAS CHANGED.
    pub const CAPACITY_DATA_CHANGED: (u8, u8) = (0x2a, 0x09);
    /// COMMANDS CLEARED BY ANOTHER INITIATOR.
    pub const COMMANDS_CLEARED_BY_ANOTHER: (u8, u8) = (0x2f, 0x00);
    /// SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: (u8, u8) = (0x39, 0x00);
    /// INTERNAL TARGET FAILURE.
    pub const INTERNAL_TARGET_FAILURE: (u8, u8) = (0x44, 0x00);
}

/// Where in the CDB or parameter list the bad field is (sense-key specific
/// field pointer, SPC-4 §4.5.2.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// In the CDB (else in the parameter list).
    pub in_cdb: bool,
    /// Byte.
    pub byte: u16,
    /// Bit (0-7), when it points at a bit.
    pub bit: Option<u8>,
}

/// Sense data to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code and qualifier.
    pub asc: (u8, u8),
    /// INFORMATION field (the LBA or offset it concerns).
    pub info: Option<u64>,
    /// Field pointer.
    pub field: Option<FieldPointer>,
}

impl Sense {
    /// Sense data with a key and ASC/ASCQ.
    pub fn new(key: u8, asc: (u8, u8)) -> Sense {
        Sense {
            key,
            asc,
            info: None,
            field: None,
        }
    }

    /// With an INFORMATION field.
    pub fn with_info(mut self, info: u64) -> Sense {
        self.info = Some(info);
        self
    }

    /// With a field pointer.
    pub fn with_field(mut self, in_cdb: bool, byte: u16, bit: Option<u8>) -> Sense {
        self.field = Some(FieldPointer { in_cdb, byte, bit });
        self
    }

    fn sks(&self) -> Option<[u8; 3]> {
        self.field.map(|f| {
            let mut b0 = 0x80 | if f.in_cdb { 0x40 } else { 0 };
            if let Some(bit) = f.bit {
                b0 |= 0x08 | (bit & 7);
            }
            let p = f.byte.to_be_bytes();
            [b0, p[0], p[1]]
        })
    }

    /// Fixed format (18 bytes, response code 0x70). An INFORMATION value
    /// over 32 bits sets VALID only if it fits.
    pub fn fixed(&self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = self.key & 0x0f;
        if let Some(info) = self.info.and_then(|i| u32::try_from(i).ok()) {
            s[0] |= 0x80;
            s[3..7].copy_from_slice(&info.to_be_bytes());
        }
        s[7] = 10;
        s[12] = self.asc.0;
        s[13] = self.asc.1;
        if let Some(k) = self.sks() {
            s[15..18].copy_from_slice(&k);
        }
        s
    }

    /// Descriptor format (response code 0x72) with information and
    /// sense-key specific descriptors as needed. Returns the buffer and its
    /// length.
    pub fn descriptor(&self) -> ([u8; 28], usize) {
        let mut s = [0u8; 28];
        s[0] = 0x72;
        s[1] = self.key & 0x0f;
        s[2] = self.asc.0;
        s[3] = self.asc.1;
        let mut n = 8;
        if let Some(info) = self.info {
            s[n] = 0x00;
            s[n + 1] = 0x0a;
            s[n + 2] = 0x80;
            s[n + 4..n + 12].copy_from_slice(&info.to_be_bytes());
            n += 12;
        }
        if let Some(k) = self.sks() {
            s[n] = 0x02;
            s[n + 1] = 0x06;
            s[n + 4..n + 7].copy_from_slice(&k);
            n += 8;
        }
        s[7] = u8::try_from(n - 8).unwrap_or(0);
        (s, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_lba_out_of_range() {
        let s = Sense::new(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE).fixed();
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 5);
        assert_eq!((s[12], s[13]), (0x21, 0));
        assert_eq!(s[7], 10);
    }

    #[test]
    fn field_pointer_and_info() {
        let s = Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)
            .with_field(true, 1, Some(3))
            .fixed();
        assert_eq!(&s[15..18], &[0x80 | 0x40 | 0x08 | 3, 0, 1]);
        let m = Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY)
            .with_info(513)
            .fixed();
        assert_eq!(m[0], 0xf0);
        assert_eq!(&m[3..7], &513u32.to_be_bytes());
        let (d, n) = Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY)
            .with_info(1 << 40)
            .with_field(false, 7, None)
            .descriptor();
        assert_eq!((d[0], d[1], d[2], n), (0x72, 0xe, 0x1d, 28));
        assert_eq!(d[7], 20);
        assert_eq!(&d[12..20], &(1u64 << 40).to_be_bytes());
        assert_eq!(&d[20..22], &[0x02, 0x06]);
    }
}
