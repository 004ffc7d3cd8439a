//! Operational parameter negotiation (RFC 7143 §6 and §13), without I/O:
//! the initiator's offered keys in, the target's answers and the session's
//! values out.

use keel_pdu::iscsi::text::{parse_bool, parse_number};

/// What the target is willing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetLimits {
    /// Accept `HeaderDigest=CRC32C`.
    pub header_digest: bool,
    /// Accept `DataDigest=CRC32C`.
    pub data_digest: bool,
    /// Our MaxRecvDataSegmentLength (declared to the initiator).
    pub max_recv_data_segment_length: u32,
    /// Largest MaxBurstLength we accept.
    pub max_burst_length: u32,
    /// Largest FirstBurstLength we accept.
    pub first_burst_length: u32,
    /// Largest MaxOutstandingR2T we accept.
    pub max_outstanding_r2t: u32,
    /// Whether we want InitialR2T=Yes.
    pub initial_r2t: bool,
    /// Whether we allow immediate data.
    pub immediate_data: bool,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            header_digest: true,
            data_digest: true,
            max_recv_data_segment_length: 256 << 10,
            max_burst_length: 1 << 20,
            first_burst_length: 256 << 10,
            max_outstanding_r2t: 16,
            initial_r2t: false,
            immediate_data: true,
        }
    }
}

/// The values in force for a session and connection (RFC 7143 defaults
/// until negotiated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// CRC32C header digests.
    pub header_digest: bool,
    /// CRC32C data digests.
    pub data_digest: bool,
    /// MaxConnections.
    pub max_connections: u32,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// ImmediateData.
    pub immediate_data: bool,
    /// The initiator's MaxRecvDataSegmentLength: our Data-In PDUs' limit.
    pub initiator_mrdsl: u32,
    /// Our MaxRecvDataSegmentLength: the initiator's Data-Out limit.
    pub target_mrdsl: u32,
    /// MaxBurstLength.
    pub max_burst_length: u32,
    /// FirstBurstLength.
    pub first_burst_length: u32,
    /// DefaultTime2Wait.
    pub default_time2wait: u32,
    /// DefaultTime2Retain.
    pub default_time2retain: u32,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// DataPDUInOrder.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder.
    pub data_sequence_in_order: bool,
    /// ErrorRecoveryLevel.
    pub error_recovery_level: u32,
    /// SessionType=Discovery.
    pub discovery: bool,
    /// InitiatorName.
    pub initiator_name: Option<String>,
    /// TargetName.
    pub target_name: Option<String>,
}

impl Default for Negotiated {
    fn default() -> Self {
        Negotiated {
            header_digest: false,
            data_digest: false,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            initiator_mrdsl: 8192,
            target_mrdsl: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            discovery: false,
            initiator_name: None,
            target_name: None,
        }
    }
}

/// A negotiation the target cannot go on with: the login fails with
/// Initiator Error (class 2) and this detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// A key sent twice in one negotiation.
    #[error("Key {0} sent twice")]
    Duplicate(String),
    /// A value the target cannot accept where no "Reject" is allowed.
    #[error("Unacceptable {key}={value}")]
    Unacceptable {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
}

const MRDSL_RANGE: (u64, u64) = (512, 16_777_215);

/// Negotiate the keys of one Login or Text request. Returns the answers to
/// send (declarations of our own values included) and updates `n`.
/// `seen` holds the keys of earlier PDUs of the same negotiation.
pub fn negotiate(
    offer: &[(&str, &str)],
    limits: &TargetLimits,
    n: &mut Negotiated,
    seen: &mut Vec<String>,
) -> Result<Vec<(String, String)>, NegotiationError> {
    negotiate_declaring(offer, limits, n, seen, true)
}

/// [`negotiate`], declaring our MaxRecvDataSegmentLength only when
/// `declare`: a login declares it in the operational stage (or in the last
/// response, when the initiator skips that stage), where initiators look
/// for operational keys; one that read only the operational stage's
/// answers fell back to 8 KiB data segments when the declaration came in
/// the security stage.
pub fn negotiate_declaring(
    offer: &[(&str, &str)],
    limits: &TargetLimits,
    n: &mut Negotiated,
    seen: &mut Vec<String>,
    declare: bool,
) -> Result<Vec<(String, String)>, NegotiationError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut answer = |k: &str, v: String| out.push((k.to_string(), v));
    for &(key, value) in offer {
        if seen.iter().any(|s| s == key) {
            return Err(NegotiationError::Duplicate(key.to_string()));
        }
        seen.push(key.to_string());
        let num =
            |min: u64, max: u64| parse_number(value, min, max).and_then(|v| u32::try_from(v).ok());
        let yn = |v: bool| {
            if v {
                "Yes".to_string()
            } else {
                "No".to_string()
            }
        };
        match key {
            "HeaderDigest" | "DataDigest" => {
                let allowed = if key == "HeaderDigest" {
                    limits.header_digest
                } else {
                    limits.data_digest
                };
                // The first of the initiator's choices that we support.
                let pick = value
                    .split(',')
                    .find(|c| *c == "None" || (*c == "CRC32C" && allowed));
                match pick {
                    Some(p) => {
                        let on = p == "CRC32C";
                        if key == "HeaderDigest" {
                            n.header_digest = on;
                        } else {
                            n.data_digest = on;
                        }
                        answer(key, p.to_string());
                    }
                    None => answer(key, "Reject".into()),
                }
            }
            "MaxConnections" => match num(1, 65535) {
                Some(_) => {
                    n.max_connections = 1;
                    answer(key, "1".into());
                }
                None => answer(key, "Reject".into()),
            },
            "InitialR2T" => match parse_bool(value) {
                Some(v) => {
                    n.initial_r2t = v || limits.initial_r2t;
                    answer(key, yn(n.initial_r2t));
                }
                None => answer(key, "Reject".into()),
            },
            "ImmediateData" => match parse_bool(value) {
                Some(v) => {
                    n.immediate_data = v && limits.immediate_data;
                    answer(key, yn(n.immediate_data));
                }
                None => answer(key, "Reject".into()),
            },
            "MaxRecvDataSegmentLength" => match num(MRDSL_RANGE.0, MRDSL_RANGE.1) {
                // Declarative: the initiator's own receive limit.
                Some(v) => n.initiator_mrdsl = v,
                None => answer(key, "Reject".into()),
            },
            "MaxBurstLength" => match num(512, 16_777_215) {
                Some(v) => {
                    n.max_burst_length = v.min(limits.max_burst_length);
                    n.first_burst_length = n.first_burst_length.min(n.max_burst_length);
                    answer(key, n.max_burst_length.to_string());
                }
                None => answer(key, "Reject".into()),
            },
            "FirstBurstLength" => match num(512, 16_777_215) {
                Some(v) => {
                    n.first_burst_length = v.min(limits.first_burst_length).min(n.max_burst_length);
                    answer(key, n.first_burst_length.to_string());
                }
                None => answer(key, "Reject".into()),
            },
            "DefaultTime2Wait" => match num(0, 3600) {
                Some(v) => {
                    n.default_time2wait = v.max(2);
                    answer(key, n.default_time2wait.to_string());
                }
                None => answer(key, "Reject".into()),
            },
            "DefaultTime2Retain" => match num(0, 3600) {
                Some(_) => {
                    // Error recovery level 0: nothing to retain.
                    n.default_time2retain = 0;
                    answer(key, "0".into());
                }
                None => answer(key, "Reject".into()),
            },
            "MaxOutstandingR2T" => match num(1, 65535) {
                Some(v) => {
                    n.max_outstanding_r2t = v.min(limits.max_outstanding_r2t);
                    answer(key, n.max_outstanding_r2t.to_string());
                }
                None => answer(key, "Reject".into()),
            },
            "DataPDUInOrder" | "DataSequenceInOrder" => match parse_bool(value) {
                // OR function: we always answer Yes.
                Some(_) => {
                    if key == "DataPDUInOrder" {
                        n.data_pdu_in_order = true;
                    } else {
                        n.data_sequence_in_order = true;
                    }
                    answer(key, "Yes".into());
                }
                None => answer(key, "Reject".into()),
            },
            "ErrorRecoveryLevel" => match num(0, 2) {
                Some(_) => {
                    n.error_recovery_level = 0;
                    answer(key, "0".into());
                }
                None => answer(key, "Reject".into()),
            },
            "SessionType" => match value {
                "Discovery" => n.discovery = true,
                "Normal" => n.discovery = false,
                _ => {
                    return Err(NegotiationError::Unacceptable {
                        key: key.into(),
                        value: value.into(),
                    })
                }
            },
            "InitiatorName" => n.initiator_name = Some(value.to_string()),
            "TargetName" => n.target_name = Some(value.to_string()),
            "InitiatorAlias" | "TargetAlias" => {}
            "IFMarker" | "OFMarker" => answer(key, "No".into()),
            "OFMarkInt" | "IFMarkInt" => answer(key, "Irrelevant".into()),
            _ => answer(key, "NotUnderstood".into()),
        }
    }
    if declare && !seen.iter().any(|s| s == "MaxRecvDataSegmentLength#target") {
        // Declare our own receive limit once per negotiation.
        seen.push("MaxRecvDataSegmentLength#target".into());
        n.target_mrdsl = limits.max_recv_data_segment_length;
        out.push((
            "MaxRecvDataSegmentLength".into(),
            limits.max_recv_data_segment_length.to_string(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(out: &'a [(String, String)], k: &str) -> Option<&'a str> {
        out.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn linux_open_iscsi_offer() {
        // What open-iscsi sends in the operational stage by default.
        let offer = [
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxConnections", "1"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "Yes"),
            ("MaxRecvDataSegmentLength", "262144"),
            ("MaxBurstLength", "16776192"),
            ("FirstBurstLength", "262144"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("MaxOutstandingR2T", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("ErrorRecoveryLevel", "0"),
        ];
        let mut n = Negotiated::default();
        let out = negotiate(&offer, &TargetLimits::default(), &mut n, &mut Vec::new()).unwrap();
        assert_eq!(get(&out, "HeaderDigest"), Some("None"));
        assert_eq!(get(&out, "InitialR2T"), Some("Yes"));
        assert_eq!(get(&out, "ImmediateData"), Some("Yes"));
        assert_eq!(get(&out, "MaxBurstLength"), Some("1048576"));
        assert_eq!(get(&out, "FirstBurstLength"), Some("262144"));
        assert_eq!(get(&out, "MaxRecvDataSegmentLength"), Some("262144"));
        assert_eq!(n.initiator_mrdsl, 262_144);
        assert_eq!((n.max_outstanding_r2t, n.error_recovery_level), (1, 0));
    }

    #[test]
    fn digests_follow_the_initiators_order_and_our_limits() {
        let mut n = Negotiated::default();
        let out = negotiate(
            &[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "None,CRC32C"),
            ],
            &TargetLimits::default(),
            &mut n,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(get(&out, "HeaderDigest"), Some("CRC32C"));
        assert_eq!(get(&out, "DataDigest"), Some("None"));
        assert!(n.header_digest && !n.data_digest);
        let limits = TargetLimits {
            header_digest: false,
            ..TargetLimits::default()
        };
        let mut n = Negotiated::default();
        let out = negotiate(
            &[("HeaderDigest", "CRC32C")],
            &limits,
            &mut n,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(get(&out, "HeaderDigest"), Some("Reject"));
    }

    #[test]
    fn bad_values_unknown_keys_and_duplicates() {
        let mut n = Negotiated::default();
        let mut seen = Vec::new();
        let out = negotiate(
            &[
                ("MaxBurstLength", "100"),
                ("X-com.example.foo", "1"),
                ("ImmediateData", "maybe"),
            ],
            &TargetLimits::default(),
            &mut n,
            &mut seen,
        )
        .unwrap();
        assert_eq!(get(&out, "MaxBurstLength"), Some("Reject"));
        assert_eq!(get(&out, "X-com.example.foo"), Some("NotUnderstood"));
        assert_eq!(get(&out, "ImmediateData"), Some("Reject"));
        assert!(matches!(
            negotiate(
                &[("MaxBurstLength", "4096")],
                &TargetLimits::default(),
                &mut n,
                &mut seen
            ),
            Err(NegotiationError::Duplicate(_))
        ));
        assert!(negotiate(
            &[("SessionType", "Bogus")],
            &TargetLimits::default(),
            &mut n,
            &mut Vec::new()
        )
        .is_err());
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let mut n = Negotiated::default();
        negotiate(
            &[("MaxBurstLength", "8192"), ("FirstBurstLength", "65536")],
            &TargetLimits::default(),
            &mut n,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!((n.max_burst_length, n.first_burst_length), (8192, 8192));
    }

    use proptest::prelude::*;

    const KEYS: &[&str] = &[
        "HeaderDigest",
        "DataDigest",
        "MaxConnections",
        "InitialR2T",
        "ImmediateData",
        "MaxRecvDataSegmentLength",
        "MaxBurstLength",
        "FirstBurstLength",
        "DefaultTime2Wait",
        "DefaultTime2Retain",
        "MaxOutstandingR2T",
        "DataPDUInOrder",
        "DataSequenceInOrder",
        "ErrorRecoveryLevel",
        "SessionType",
        "Bogus",
    ];

    proptest! {
        #[test]
        fn invariants_hold_for_any_offer(
            pairs in proptest::collection::vec((0..KEYS.len(), prop_oneof![
                Just("Yes".to_string()), Just("No".to_string()), Just("CRC32C,None".to_string()),
                Just("None".to_string()), Just("Normal".to_string()), "[0-9]{1,9}", "[ -~]{0,12}"
            ]), 0..20)
        ) {
            let limits = TargetLimits::default();
            let mut n = Negotiated::default();
            let offer: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (KEYS[*k], v.as_str())).collect();
            if let Ok(out) = negotiate(&offer, &limits, &mut n, &mut Vec::new()) {
                prop_assert!(n.first_burst_length <= n.max_burst_length);
                prop_assert!(n.max_burst_length <= limits.max_burst_length.max(262_144));
                prop_assert!(n.max_outstanding_r2t >= 1 && n.max_outstanding_r2t <= limits.max_outstanding_r2t.max(1));
                prop_assert_eq!(n.error_recovery_level, 0);
                prop_assert!(n.initiator_mrdsl >= 512);
                prop_assert!(out.iter().any(|(k, _)| k == "MaxRecvDataSegmentLength"));
            }
        }
    }
}
