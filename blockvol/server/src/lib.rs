//! keel volume server (`keel-volume`): hosts engine volumes and serves them
//! over iSCSI from polled-mode reactors, with an admin HTTP endpoint.
//!
//! ```text
//!  main thread: config -> Server::start -> wait for SIGTERM/SIGINT -> shutdown
//!  reactor threads (keel-reactor): listeners, iSCSI connections, engine handles
//!  admin thread (tokio current-thread): GET /status (JSON), GET /metrics (Prometheus)
//! ```
//!
//! tokio never runs on a reactor thread. Shutdown stops accepting, drops
//! every session (engine operations in flight finish first: a connection's
//! engine handle waits for them when it closes), stops the reactors, then
//! closes each volume, which writes back and checkpoints its WAL. A write the
//! initiator saw acknowledged as durable (FUA, a completed SYNCHRONIZE
//! CACHE, or any write with the write cache off) is in the WAL before the
//! acknowledgement, so it survives a `kill -9` as well.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod size;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use keel_blockvol::{CreateOptions, Volume, VolumeConfig};
use keel_iscsi::chap::Credentials;
use keel_iscsi::{IscsiConn, PortalSpec, Registry, Target, TargetSpec};
use keel_reactor::{
    BufferPoolConfig, Connection, ConnectionConfig, Listener, ListenerConfig, PollMode,
    ReactorConfig, ReactorPool,
};

pub use config::ServerConfig;

/// A volume the server hosts.
#[derive(Debug)]
pub struct Hosted {
    /// Name.
    pub name: String,
    /// File.
    pub path: PathBuf,
    /// The iSCSI target over it.
    pub target: Arc<Target>,
    /// The NVMe subsystem over it.
    pub subsystem: Arc<keel_nvmf::Subsystem>,
}

/// What the admin endpoint reads.
#[derive(Debug)]
pub struct State {
    /// Volumes.
    pub volumes: std::sync::RwLock<Vec<Arc<Hosted>>>,
    /// The configuration it started with (volumes created later are not
    /// added to it).
    pub config: ServerConfig,
    vcfg: VolumeConfig,
    /// iSCSI targets and sessions.
    pub registry: Arc<Registry>,
    /// NVMe/TCP subsystems and controllers.
    pub nvmf: Arc<keel_nvmf::NvmfTarget>,
    /// Bound NVMe/TCP addresses.
    pub nvmf_addrs: Vec<SocketAddr>,
    /// Poll mode in use.
    pub poll_mode: PollMode,
    /// Socket I/O in use.
    pub socket_io: keel_reactor::SocketIoKind,
    /// Reactor threads.
    pub reactors: usize,
    /// Bound iSCSI addresses.
    pub iscsi_addrs: Vec<SocketAddr>,
    /// Started at.
    pub started: Instant,
    /// The buffer pool.
    pub pool: Arc<keel_reactor::BufferPool>,
    /// Reactor counters.
    pub reactor_remotes: Vec<keel_reactor::Remote>,
}

impl State {
    /// The hosted volumes.
    pub fn volumes(&self) -> Vec<Arc<Hosted>> {
        self.volumes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Create (or open) volume `name` of `size` bytes while serving, with
    /// default export settings. Errors if it is already hosted.
    pub fn create_volume(&self, name: &str, size: u64) -> anyhow::Result<Arc<Hosted>> {
        let spec = config::VolumeSpec {
            name: name.to_owned(),
            size: Some(size.to_string()),
            wal_size: None,
            iqn: None,
            initiators: Vec::new(),
            chap: None,
            mutual_chap: None,
            nqn: None,
            hosts: Vec::new(),
        };
        let mut probe = self.config.clone();
        probe.volumes = vec![spec.clone()];
        probe.validate()?;
        let mut vols = self
            .volumes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if vols.iter().any(|h| h.name == name) {
            bail!("volume {name} is already hosted");
        }
        let h = Arc::new(host_volume(
            &self.config,
            &self.vcfg,
            &self.registry,
            &self.nvmf,
            &spec,
            Some(size),
            None,
        )?);
        vols.push(h.clone());
        Ok(h)
    }
}

/// A running volume server.
pub struct Server {
    state: Arc<State>,
    pool: Option<ReactorPool>,
    listeners: Vec<Listener>,
    admin: Option<admin::AdminServer>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("iscsi", &self.state.iscsi_addrs)
            .finish()
    }
}

fn creds(c: &Option<config::ChapConfig>) -> Option<Credentials> {
    c.as_ref().map(|c| Credentials {
        user: c.user.clone(),
        secret: c.secret.clone(),
    })
}

/// Open (or create with `size`, and `wal_size` or the default WAL) the
/// volume of `spec` and export it over iSCSI and NVMe/TCP.
fn host_volume(
    cfg: &ServerConfig,
    vcfg: &VolumeConfig,
    registry: &Registry,
    nvmf: &keel_nvmf::NvmfTarget,
    spec: &config::VolumeSpec,
    size: Option<u64>,
    wal_size: Option<u64>,
) -> anyhow::Result<Hosted> {
    let path = cfg.path_of(spec);
    let exists = path.exists();
    let vol = if exists {
        let vol = Volume::open(&path, vcfg)
            .with_context(|| format!("cannot open volume {}", path.display()))?;
        if let Some(size) = size {
            let have = vol.info().size;
            if size > have {
                vol.expand(size).with_context(|| {
                    format!("cannot expand volume {} to {size} bytes", spec.name)
                })?;
                tracing::info!(volume = %spec.name, from = have, to = size, "volume expanded");
            } else if size < have {
                tracing::warn!(volume = %spec.name, configured = size, actual = have, "configured size is below the volume's; keeping the volume's (shrinking is not supported)");
            }
        }
        let have = vol.info().wal_size;
        if let Some(w) = wal_size.filter(|&w| w != have) {
            tracing::warn!(volume = %spec.name, configured = w, actual = have, "configured WAL size differs from the volume's; keeping the volume's (it is set at creation)");
        }
        vol
    } else {
        let Some(size) = size else {
            bail!(
                "volume {} does not exist at {} and has no size to create it with",
                spec.name,
                path.display()
            );
        };
        let mut opts = CreateOptions::new(size);
        if let Some(w) = wal_size {
            opts.wal_size = w;
        }
        Volume::create(&path, &opts, vcfg)
            .with_context(|| format!("cannot create volume {}", path.display()))?
    };
    let info = vol.info();
    let status = vol.status();
    tracing::info!(
        volume = %spec.name,
        path = %path.display(),
        size = info.size,
        created = !exists,
        backend = status.backend,
        "volume ready"
    );
    let vol = Arc::new(vol);
    let subsystem = Arc::new(keel_nvmf::Subsystem::new(
        keel_nvmf::SubsystemSpec {
            nqn: cfg.nqn_of(spec),
            hosts: spec.hosts.clone(),
        },
        vol.clone(),
    ));
    nvmf.add_subsystem(subsystem.clone());
    let target = Arc::new(Target::new(
        TargetSpec {
            iqn: cfg.iqn_of(spec),
            alias: Some(spec.name.clone()),
            initiators: spec.initiators.clone(),
            chap: creds(&spec.chap),
            mutual_chap: creds(&spec.mutual_chap),
        },
        vol,
    ));
    registry.add_target(target.clone());
    Ok(Hosted {
        name: spec.name.clone(),
        path,
        target,
        subsystem,
    })
}

impl Server {
    /// Validate `cfg`, open or create its volumes, start reactors, listeners
    /// and the admin endpoint.
    pub fn start(cfg: &ServerConfig) -> anyhow::Result<Server> {
        let v = cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
        let vcfg = VolumeConfig {
            backend: v.backend,
            write_cache: cfg.engine.write_cache,
            wal_inline_writes: cfg.engine.wal_inline_writes,
            ..VolumeConfig::default()
        };
        let portal = PortalSpec {
            advertise: cfg.iscsi.advertise.clone(),
            discovery_chap: creds(&cfg.iscsi.discovery_chap),
            nop_interval: std::time::Duration::from_secs(cfg.iscsi.nop_interval_secs),
            nop_timeout: std::time::Duration::from_secs(cfg.iscsi.nop_timeout_secs.max(1)),
            ..PortalSpec::default()
        };
        let registry = Registry::new(portal);
        let nvmf = keel_nvmf::NvmfTarget::new(keel_nvmf::PortalSpec {
            advertise: cfg.nvmf.advertise.clone(),
            ..keel_nvmf::PortalSpec::default()
        });
        let mut volumes = Vec::new();
        for (spec, sz) in cfg.volumes.iter().zip(&v.sizes) {
            volumes.push(Arc::new(host_volume(
                cfg,
                &vcfg,
                &registry,
                &nvmf,
                spec,
                sz.size,
                sz.wal_size,
            )?));
        }

        let pool = ReactorPool::start(&ReactorConfig {
            reactors: cfg.reactor.cores,
            cpus: cfg.reactor.cpus.clone(),
            poll_mode: v.poll_mode,
            socket_io: v.socket_io,
            buffer_pool: BufferPoolConfig {
                max_bytes: v.buffer_pool,
            },
            name: "keel-reactor".into(),
            ..ReactorConfig::default()
        })
        .context("cannot start reactors")?;
        let mut listeners = Vec::new();
        let mut iscsi_addrs = Vec::new();
        for addr in &v.iscsi_listen {
            let reg = registry.clone();
            let factory: keel_reactor::ConnectionFactory =
                Arc::new(move |stream: TcpStream, cx: &mut keel_reactor::Context| {
                    let peer = stream.peer_addr().ok()?;
                    let local = stream.local_addr().ok()?;
                    let proto = IscsiConn::new(reg.clone(), peer, local);
                    Connection::boxed(stream, proto, ConnectionConfig::default(), None, cx).ok()
                });
            let l = Listener::bind(&pool, *addr, ListenerConfig::default(), factory)
                .with_context(|| format!("cannot listen for iSCSI on {addr}"))?;
            tracing::info!(addr = %l.local_addr(), "iSCSI portal listening");
            iscsi_addrs.push(l.local_addr());
            listeners.push(l);
        }
        let mut nvmf_addrs = Vec::new();
        for addr in &v.nvmf_listen {
            let t = nvmf.clone();
            let factory: keel_reactor::ConnectionFactory =
                Arc::new(move |stream: TcpStream, cx: &mut keel_reactor::Context| {
                    let peer = stream.peer_addr().ok()?;
                    let local = stream.local_addr().ok()?;
                    let proto = keel_nvmf::NvmeConn::new(t.clone(), peer, local);
                    Connection::boxed(stream, proto, ConnectionConfig::default(), None, cx).ok()
                });
            let l = Listener::bind(&pool, *addr, ListenerConfig::default(), factory)
                .with_context(|| format!("cannot listen for NVMe/TCP on {addr}"))?;
            tracing::info!(addr = %l.local_addr(), "NVMe/TCP portal listening");
            nvmf_addrs.push(l.local_addr());
            listeners.push(l);
        }
        let state = Arc::new(State {
            volumes: std::sync::RwLock::new(volumes),
            config: cfg.clone(),
            vcfg,
            registry,
            nvmf,
            nvmf_addrs,
            poll_mode: pool.poll_mode(),
            socket_io: pool.socket_io(),
            reactors: pool.len(),
            iscsi_addrs,
            started: Instant::now(),
            pool: pool.buffer_pool().clone(),
            reactor_remotes: pool.reactors().to_vec(),
        });
        let admin = match v.admin_listen {
            Some(a) => Some(admin::AdminServer::start(a, state.clone())?),
            None => None,
        };
        Ok(Server {
            state,
            pool: Some(pool),
            listeners,
            admin,
        })
    }

    /// Shared state (volumes, sessions).
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Bound iSCSI addresses.
    pub fn iscsi_addrs(&self) -> &[SocketAddr] {
        &self.state.iscsi_addrs
    }

    /// Bound NVMe/TCP addresses.
    pub fn nvmf_addrs(&self) -> &[SocketAddr] {
        &self.state.nvmf_addrs
    }

    /// Bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(admin::AdminServer::addr)
    }

    /// Stop accepting, drop sessions, stop reactors, close volumes.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        for l in &self.listeners {
            l.close();
        }
        self.state.registry.kill_all();
        let _subsystems = self.state.nvmf.clear();
        drop(_subsystems);
        if let Some(mut p) = self.pool.take() {
            // Stopping a reactor shuts its connections down; each closes its
            // engine handle after the operations in flight.
            p.stop();
        }
        if let Some(a) = self.admin.take() {
            a.stop();
        }
        let state = Arc::try_unwrap(self.state)
            .map_err(|_| anyhow::anyhow!("server state still in use at shutdown"))?;
        let mut first_err = None;
        for t in state.registry.targets() {
            state.registry.remove_target(&t.spec.iqn);
        }
        drop(state.nvmf);
        let volumes = state
            .volumes
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for h in volumes {
            let Ok(h) = Arc::try_unwrap(h) else {
                first_err.get_or_insert(anyhow::anyhow!("a volume is still in use at shutdown"));
                continue;
            };
            drop(h.subsystem);
            let target = Arc::try_unwrap(h.target);
            let closed = match target {
                Ok(t) => match Arc::try_unwrap(t.lun) {
                    Ok(lun) => match Arc::try_unwrap(lun.into_volume()) {
                        Ok(vol) => vol.close().map_err(anyhow::Error::from),
                        Err(_) => Err(anyhow::anyhow!("volume {} still in use", h.name)),
                    },
                    Err(_) => Err(anyhow::anyhow!("volume {} still in use", h.name)),
                },
                Err(_) => Err(anyhow::anyhow!("target of volume {} still in use", h.name)),
            };
            match closed {
                Ok(()) => tracing::info!(volume = %h.name, "volume closed"),
                Err(e) => {
                    tracing::error!(volume = %h.name, error = %e, "volume not closed cleanly");
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Block until SIGTERM or SIGINT.
pub fn wait_for_signal() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        Ok::<(), std::io::Error>(())
    })?;
    Ok(())
}
