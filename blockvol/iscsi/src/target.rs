//! Targets, the portal's settings, and the table of live sessions, shared
//! by every connection on every reactor.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use keel_blockvol::Volume;

use crate::chap::Credentials;
use crate::lun::{Lun, Nexus};
use crate::params::TargetLimits;

/// How one target is exported.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// The target's IQN.
    pub iqn: String,
    /// TargetAlias sent at login, if any.
    pub alias: Option<String>,
    /// Initiator IQNs allowed to log in; empty allows every initiator.
    pub initiators: Vec<String>,
    /// CHAP the initiator must answer (one-way), if set.
    pub chap: Option<Credentials>,
    /// Credentials the target answers with when the initiator asks for
    /// mutual CHAP.
    pub mutual_chap: Option<Credentials>,
}

/// Settings of the portal (the listening address and what it advertises).
#[derive(Debug, Clone)]
pub struct PortalSpec {
    /// Addresses returned by SendTargets (`host:port`); empty: the local
    /// address of the connection that asks.
    pub advertise: Vec<String>,
    /// Target portal group tag.
    pub tpgt: u16,
    /// CHAP for discovery sessions, if required.
    pub discovery_chap: Option<Credentials>,
    /// Limits offered in negotiation.
    pub limits: TargetLimits,
    /// Send a NOP-In to an initiator silent for this long.
    pub nop_interval: Duration,
    /// Drop a connection that does not answer a NOP-In within this.
    pub nop_timeout: Duration,
    /// Login must complete within this.
    pub login_timeout: Duration,
    /// Commands in flight per session (the CmdSN window).
    pub queue_depth: u32,
}

impl Default for PortalSpec {
    fn default() -> Self {
        PortalSpec {
            advertise: Vec::new(),
            tpgt: 1,
            discovery_chap: None,
            limits: TargetLimits::default(),
            nop_interval: Duration::from_secs(10),
            nop_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(15),
            queue_depth: 128,
        }
    }
}

/// Latency buckets (upper bounds in microseconds) of [`Histogram`].
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    50, 100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400, 204_800, 409_600,
    819_200, 1_638_400,
];

/// A latency histogram with fixed buckets, updated lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative; the last is +Inf), sum in
    /// microseconds, count.
    pub fn snapshot(&self) -> (Vec<u64>, u64, u64) {
        (
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.sum_us.load(Ordering::Relaxed),
            self.count.load(Ordering::Relaxed),
        )
    }
}

/// Per-target I/O counters.
#[derive(Debug, Default)]
pub struct TargetStats {
    /// Read command latency.
    pub read_latency: Histogram,
    /// Write command latency.
    pub write_latency: Histogram,
    /// Commands answered with CHECK CONDITION.
    pub check_conditions: AtomicU64,
    /// Logins refused (authentication, authorization, unknown target).
    pub login_failures: AtomicU64,
    /// Connections dropped for protocol errors.
    pub protocol_errors: AtomicU64,
}

/// An exported target.
#[derive(Debug)]
pub struct Target {
    /// How it is exported.
    pub spec: TargetSpec,
    /// Its logical unit 0.
    pub lun: Arc<Lun>,
    /// Counters.
    pub stats: TargetStats,
}

impl Target {
    /// A target over `volume`.
    pub fn new(spec: TargetSpec, volume: Arc<Volume>) -> Target {
        let lun = Arc::new(Lun::new(volume, &spec.iqn));
        Target {
            spec,
            lun,
            stats: TargetStats::default(),
        }
    }

    /// Whether `initiator` may log in.
    pub fn allows(&self, initiator: &str) -> bool {
        self.spec.initiators.is_empty() || self.spec.initiators.iter().any(|i| i == initiator)
    }
}

/// A live session, for `/status`.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// TSIH.
    pub tsih: u16,
    /// Initiator name and ISID.
    pub nexus: Nexus,
    /// Target IQN (None: discovery session).
    pub target: Option<String>,
    /// Initiator address.
    pub peer: SocketAddr,
    /// When the login completed.
    pub since: SystemTime,
    /// Negotiated header/data digests.
    pub digests: (bool, bool),
}

#[derive(Debug)]
struct SessionEntry {
    info: SessionInfo,
    kill: Arc<AtomicBool>,
}

/// Targets and sessions of one server.
#[derive(Debug)]
pub struct Registry {
    targets: RwLock<Vec<Arc<Target>>>,
    portal: RwLock<PortalSpec>,
    sessions: Mutex<Vec<SessionEntry>>,
    next_tsih: AtomicU16,
}

impl Registry {
    /// An empty registry with these portal settings.
    pub fn new(portal: PortalSpec) -> Arc<Registry> {
        Arc::new(Registry {
            targets: RwLock::new(Vec::new()),
            portal: RwLock::new(portal),
            sessions: Mutex::new(Vec::new()),
            next_tsih: AtomicU16::new(1),
        })
    }

    /// Export a target (replacing one with the same IQN).
    pub fn add_target(&self, t: Arc<Target>) {
        let mut v = self
            .targets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        v.retain(|x| x.spec.iqn != t.spec.iqn);
        v.push(t);
    }

    /// Stop exporting `iqn`; live sessions are dropped.
    pub fn remove_target(&self, iqn: &str) -> Option<Arc<Target>> {
        let removed = {
            let mut v = self
                .targets
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let i = v.iter().position(|x| x.spec.iqn == iqn)?;
            v.remove(i)
        };
        for s in self.lock_sessions().iter() {
            if s.info.target.as_deref() == Some(iqn) {
                s.kill.store(true, Ordering::Release);
            }
        }
        Some(removed)
    }

    /// The targets.
    pub fn targets(&self) -> Vec<Arc<Target>> {
        self.targets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A target by IQN (case-insensitive, as iSCSI names are).
    pub fn target(&self, iqn: &str) -> Option<Arc<Target>> {
        self.targets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|t| t.spec.iqn.eq_ignore_ascii_case(iqn))
            .cloned()
    }

    /// The portal settings.
    pub fn portal(&self) -> PortalSpec {
        self.portal
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, Vec<SessionEntry>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Register a new session (reinstating, i.e. dropping, an older one of
    /// the same initiator port and target). Returns its TSIH and kill flag.
    pub(crate) fn open_session(&self, mut info: SessionInfo) -> (u16, Arc<AtomicBool>) {
        let mut s = self.lock_sessions();
        for old in s.iter() {
            if old.info.nexus == info.nexus && old.info.target == info.target {
                old.kill.store(true, Ordering::Release);
            }
        }
        s.retain(|e| !(e.info.nexus == info.nexus && e.info.target == info.target));
        let tsih = loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 && !s.iter().any(|e| e.info.tsih == t) {
                break t;
            }
        };
        info.tsih = tsih;
        let kill = Arc::new(AtomicBool::new(false));
        s.push(SessionEntry {
            info,
            kill: kill.clone(),
        });
        (tsih, kill)
    }

    /// Forget a session.
    pub(crate) fn close_session(&self, tsih: u16) {
        self.lock_sessions().retain(|e| e.info.tsih != tsih);
    }

    /// Whether a session with this TSIH exists (for connection adds).
    pub(crate) fn has_session(&self, tsih: u16) -> bool {
        self.lock_sessions().iter().any(|e| e.info.tsih == tsih)
    }

    /// Live sessions.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.lock_sessions()
            .iter()
            .map(|e| e.info.clone())
            .collect()
    }

    /// Drop every session (server shutdown).
    pub fn kill_all(&self) {
        for s in self.lock_sessions().iter() {
            s.kill.store(true, Ordering::Release);
        }
    }
}
