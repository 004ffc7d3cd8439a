//! Subsystems, controllers and the discovery service, shared by every
//! NVMe/TCP connection on every reactor.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use keel_blockvol::Volume;

use crate::identify::ana;

/// The well-known discovery subsystem NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// How one NVM subsystem is exported.
#[derive(Debug, Clone)]
pub struct SubsystemSpec {
    /// Subsystem NQN.
    pub nqn: String,
    /// Host NQNs allowed to connect; empty allows any host.
    pub hosts: Vec<String>,
}

/// An NVM subsystem: one volume as namespace 1, one ANA group.
#[derive(Debug)]
pub struct Subsystem {
    /// How it is exported.
    pub spec: SubsystemSpec,
    volume: Arc<Volume>,
    ana_state: AtomicU8,
    ana_changes: AtomicU64,
    /// Serial number shared by its controllers.
    pub serial: String,
    /// Namespace NGUID and UUID (from the volume UUID).
    pub nguid: [u8; 16],
}

impl Subsystem {
    /// A subsystem over `volume`, ANA optimized.
    pub fn new(spec: SubsystemSpec, volume: Arc<Volume>) -> Subsystem {
        let uuid = volume.info().uuid;
        let serial: String = uuid.iter().take(10).map(|b| format!("{b:02x}")).collect();
        Subsystem {
            spec,
            volume,
            ana_state: AtomicU8::new(ana::OPTIMIZED),
            ana_changes: AtomicU64::new(1),
            serial,
            nguid: uuid,
        }
    }

    /// The volume.
    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// Give up the subsystem, keeping the volume.
    pub fn into_volume(self) -> Arc<Volume> {
        self.volume
    }

    /// Current ANA state and change count.
    pub fn ana(&self) -> (u8, u64) {
        (
            self.ana_state.load(Ordering::Acquire),
            self.ana_changes.load(Ordering::Acquire),
        )
    }

    /// Whether `host` may connect.
    pub fn allows(&self, host: &str) -> bool {
        self.spec.hosts.is_empty() || self.spec.hosts.iter().any(|h| h == host)
    }
}

/// Portal settings.
#[derive(Debug, Clone)]
pub struct PortalSpec {
    /// Addresses the discovery log reports (`host:port`); empty: the
    /// address the host connected to.
    pub advertise: Vec<String>,
    /// In-capsule data accepted on I/O queues.
    pub inline_data: u32,
    /// MAXH2CDATA declared in ICResp.
    pub max_h2c_data: u32,
    /// Queue entries (MQES + 1).
    pub queue_size: u16,
    /// I/O queues per controller at most.
    pub max_io_queues: u16,
}

impl Default for PortalSpec {
    fn default() -> Self {
        PortalSpec {
            advertise: Vec::new(),
            inline_data: 16 << 10,
            max_h2c_data: 256 << 10,
            queue_size: 128,
            max_io_queues: 8,
        }
    }
}

/// Asynchronous event completions (dword 0): type notice (2), info, log.
pub mod event {
    /// Namespace attribute changed (log 04h).
    pub const NS_CHANGED: u32 = 2 | (0x04 << 16);
    /// ANA change (log 0Ch).
    pub const ANA_CHANGE: u32 = 2 | (0x03 << 8) | (0x0c << 16);
    /// Discovery log changed (log 70h).
    pub const DISCOVERY_CHANGED: u32 = 2 | (0xf0 << 8) | (0x70 << 16);
}

/// A controller: one association of a host with a subsystem (admin queue
/// plus I/O queues over several connections).
#[derive(Debug)]
pub struct Controller {
    /// Controller ID.
    pub cntlid: u16,
    /// The subsystem (None: discovery controller).
    pub subsystem: Option<Arc<Subsystem>>,
    /// Host NQN.
    pub hostnqn: String,
    /// Host identifier.
    pub hostid: [u8; 16],
    /// Keep-alive timeout in ms (0: none).
    pub kato_ms: AtomicU32,
    last_keep_alive: Mutex<Instant>,
    /// CC property.
    pub cc: AtomicU32,
    /// CSTS property.
    pub csts: AtomicU32,
    /// I/O queues granted (Number of Queues feature, 1-based).
    pub io_queues: AtomicU16,
    /// Asynchronous Event Configuration feature.
    pub aec: AtomicU32,
    /// Keep Alive Timer feature value (ms).
    pub kato_feature: AtomicU32,
    /// Events waiting for an AER.
    events: Mutex<VecDeque<u32>>,
    /// Namespace changed since the Changed Namespace log was read.
    pub ns_changed: AtomicBool,
    /// Torn down: every connection of the association closes.
    pub dead: AtomicBool,
    connected_queues: Mutex<Vec<u16>>,
}

impl Controller {
    /// Note a Keep Alive.
    pub fn keep_alive(&self) {
        *lock(&self.last_keep_alive) = Instant::now();
    }

    /// Whether the keep-alive timer expired (the host went silent).
    pub fn expired(&self, now: Instant) -> bool {
        let kato = self.kato_ms.load(Ordering::Acquire);
        if kato == 0 {
            return false;
        }
        let last = *lock(&self.last_keep_alive);
        // A little slack over KATO for scheduling on a loaded host.
        now.saturating_duration_since(last) > Duration::from_millis(u64::from(kato) + 500)
    }

    /// Queue an asynchronous event if its notice is enabled.
    pub fn post_event(&self, ev: u32) {
        let enabled = match ev {
            event::NS_CHANGED => self.aec.load(Ordering::Acquire) & (1 << 8) != 0,
            event::ANA_CHANGE => self.aec.load(Ordering::Acquire) & (1 << 11) != 0,
            event::DISCOVERY_CHANGED => self.aec.load(Ordering::Acquire) & (1 << 31) != 0,
            _ => true,
        };
        if enabled {
            let mut q = lock(&self.events);
            if !q.contains(&ev) && q.len() < 16 {
                q.push_back(ev);
            }
        }
    }

    /// Take the next event.
    pub fn next_event(&self) -> Option<u32> {
        lock(&self.events).pop_front()
    }

    /// Register an I/O queue; false if it is already connected.
    pub fn add_queue(&self, qid: u16) -> bool {
        let mut q = lock(&self.connected_queues);
        if q.contains(&qid) {
            return false;
        }
        q.push(qid);
        true
    }

    /// Forget an I/O queue.
    pub fn remove_queue(&self, qid: u16) {
        lock(&self.connected_queues).retain(|&q| q != qid);
    }

    /// Connected I/O queues.
    pub fn queues(&self) -> Vec<u16> {
        lock(&self.connected_queues).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counters of the target.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connects refused (unknown subsystem, host not allowed, bad queue).
    pub connect_failures: AtomicU64,
    /// Connections terminated with a C2HTermReq or dropped.
    pub transport_errors: AtomicU64,
    /// Associations torn down for a keep-alive timeout.
    pub keep_alive_timeouts: AtomicU64,
}

/// The NVMe/TCP target of one server.
#[derive(Debug)]
pub struct NvmfTarget {
    subsystems: RwLock<Vec<Arc<Subsystem>>>,
    controllers: Mutex<HashMap<u16, Arc<Controller>>>,
    next_cntlid: AtomicU16,
    discovery_generation: AtomicU64,
    portal: PortalSpec,
    /// Counters.
    pub stats: Stats,
}

impl NvmfTarget {
    /// A target with these portal settings.
    pub fn new(portal: PortalSpec) -> Arc<NvmfTarget> {
        Arc::new(NvmfTarget {
            subsystems: RwLock::new(Vec::new()),
            controllers: Mutex::new(HashMap::new()),
            next_cntlid: AtomicU16::new(1),
            discovery_generation: AtomicU64::new(1),
            portal,
            stats: Stats::default(),
        })
    }

    /// Portal settings.
    pub fn portal(&self) -> &PortalSpec {
        &self.portal
    }

    /// Export a subsystem.
    pub fn add_subsystem(&self, s: Arc<Subsystem>) {
        let mut v = self
            .subsystems
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        v.retain(|x| x.spec.nqn != s.spec.nqn);
        v.push(s);
        drop(v);
        self.discovery_changed();
    }

    /// Stop exporting every subsystem (shutdown); associations die.
    pub fn clear(&self) -> Vec<Arc<Subsystem>> {
        for c in lock(&self.controllers).values() {
            c.dead.store(true, Ordering::Release);
        }
        lock(&self.controllers).clear();
        std::mem::take(
            &mut *self
                .subsystems
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The subsystems.
    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        self.subsystems
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A subsystem by NQN.
    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.subsystems().into_iter().find(|s| s.spec.nqn == nqn)
    }

    /// Discovery log generation.
    pub fn discovery_generation(&self) -> u64 {
        self.discovery_generation.load(Ordering::Acquire)
    }

    fn discovery_changed(&self) {
        self.discovery_generation.fetch_add(1, Ordering::AcqRel);
        for c in lock(&self.controllers).values() {
            if c.subsystem.is_none() {
                c.post_event(event::DISCOVERY_CHANGED);
            }
        }
    }

    /// Create a controller for an admin-queue Connect.
    pub fn create_controller(
        &self,
        subsystem: Option<Arc<Subsystem>>,
        hostnqn: &str,
        hostid: [u8; 16],
        kato_ms: u32,
    ) -> Option<Arc<Controller>> {
        let mut map = lock(&self.controllers);
        let mut cntlid = 0;
        for _ in 0..0xffef {
            let c = self.next_cntlid.fetch_add(1, Ordering::AcqRel);
            let c = if c == 0 || c >= 0xfff0 {
                self.next_cntlid.store(2, Ordering::Release);
                1
            } else {
                c
            };
            if !map.contains_key(&c) {
                cntlid = c;
                break;
            }
        }
        if cntlid == 0 {
            return None;
        }
        let c = Arc::new(Controller {
            cntlid,
            subsystem,
            hostnqn: hostnqn.to_owned(),
            hostid,
            kato_ms: AtomicU32::new(kato_ms),
            last_keep_alive: Mutex::new(Instant::now()),
            cc: AtomicU32::new(0),
            csts: AtomicU32::new(0),
            io_queues: AtomicU16::new(self.portal.max_io_queues),
            aec: AtomicU32::new(0),
            kato_feature: AtomicU32::new(kato_ms),
            events: Mutex::new(VecDeque::new()),
            ns_changed: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            connected_queues: Mutex::new(Vec::new()),
        });
        map.insert(cntlid, c.clone());
        Some(c)
    }

    /// A live controller by ID.
    pub fn controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        lock(&self.controllers)
            .get(&cntlid)
            .filter(|c| !c.dead.load(Ordering::Acquire))
            .cloned()
    }

    /// Tear an association down (its admin queue closed, or keep-alive
    /// expiry): every connection of it closes.
    pub fn remove_controller(&self, cntlid: u16) {
        if let Some(c) = lock(&self.controllers).remove(&cntlid) {
            c.dead.store(true, Ordering::Release);
        }
    }

    /// Live controllers.
    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        lock(&self.controllers).values().cloned().collect()
    }

    /// Set a subsystem's ANA state (a role change) and tell its hosts.
    pub fn set_ana_state(&self, nqn: &str, state: u8) {
        let Some(s) = self.subsystem(nqn) else {
            return;
        };
        if s.ana_state.swap(state, Ordering::AcqRel) != state {
            s.ana_changes.fetch_add(1, Ordering::AcqRel);
            for c in self.controllers() {
                if c.subsystem.as_ref().is_some_and(|x| x.spec.nqn == nqn) {
                    c.post_event(event::ANA_CHANGE);
                }
            }
        }
    }

    /// The namespace of `nqn` changed (e.g. it grew): AER to its hosts.
    pub fn namespace_changed(&self, nqn: &str) {
        for c in self.controllers() {
            if c.subsystem.as_ref().is_some_and(|x| x.spec.nqn == nqn) {
                c.ns_changed.store(true, Ordering::Release);
                c.post_event(event::NS_CHANGED);
            }
        }
    }
}
