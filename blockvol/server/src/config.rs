//! Volume-server configuration: a TOML file, overridden by flags, checked
//! by [`ServerConfig::validate`] before anything starts.
//!
//! ```toml
//! data_dir = "/var/lib/keel"
//!
//! [reactor]
//! cores = 2                 # reactor threads
//! poll_mode = "adaptive"    # busy | adaptive[:<spin µs>] | interrupt
//! socket_io = "epoll"       # epoll | io_uring
//!
//! [engine]
//! backend = "auto"          # standard | auto | io_uring
//!
//! [iscsi]
//! listen = ["0.0.0.0:3260"]
//! advertise = ["192.0.2.10:3260"]   # what SendTargets returns (NAT, VMs)
//! iqn_prefix = "iqn.2026-11.io.keel"
//! discovery_chap = { user = "disc", secret = "discoverysecret" }
//!
//! [admin]
//! listen = "127.0.0.1:9480"
//!
//! [[volume]]
//! name = "db1"
//! size = "100GiB"           # created if missing
//! iqn = "iqn.2026-11.io.keel:db1"   # default: <iqn_prefix>:<name>
//! initiators = ["iqn.1993-08.org.debian:01:host1"]   # empty: any
//! chap = { user = "host1", secret = "host1secret12" }
//! mutual_chap = { user = "target", secret = "targetsecret1" }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::size::parse_size;

/// Default NQN prefix of exported volumes.
pub const DEFAULT_NQN_PREFIX: &str = "nqn.2026-11.io.keel";

/// Default IQN prefix of exported volumes.
pub const DEFAULT_IQN_PREFIX: &str = "iqn.2026-11.io.keel";

/// A configuration error, with the setting it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A setting has an invalid value.
    #[error("invalid setting {key}: {message}")]
    Invalid {
        /// The setting.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// CHAP credentials in the file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChapConfig {
    /// User name.
    pub user: String,
    /// Secret (at least 12 characters, RFC 7143 §12.1.3).
    pub secret: String,
}

/// One volume to host.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Name: the file `<data_dir>/<name>.keel` and the default IQN suffix.
    pub name: String,
    /// Size (`100GiB`); the volume is created with it if missing.
    pub size: Option<String>,
    /// WAL size of a volume created here (`256MiB`; default a quarter of
    /// the size, between 1 MiB and 256 MiB). An existing volume keeps its
    /// own.
    pub wal_size: Option<String>,
    /// Export IQN (default `<iqn_prefix>:<name>`).
    pub iqn: Option<String>,
    /// Initiator IQNs allowed; empty allows any.
    #[serde(default)]
    pub initiators: Vec<String>,
    /// CHAP the initiator must pass.
    pub chap: Option<ChapConfig>,
    /// NVMe subsystem NQN (default `<nqn_prefix>:<name>`).
    pub nqn: Option<String>,
    /// Host NQNs allowed over NVMe/TCP; empty allows any.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Credentials for mutual CHAP.
    pub mutual_chap: Option<ChapConfig>,
}

/// Reactor settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ReactorSection {
    /// Reactor threads.
    pub cores: usize,
    /// CPUs to pin to (empty: no pinning).
    pub cpus: Vec<usize>,
    /// `busy`, `adaptive[:<µs>]` or `interrupt`.
    pub poll_mode: String,
    /// Socket I/O: `epoll` or `io_uring`.
    pub socket_io: String,
    /// Bytes the shared buffer pool may hold.
    pub buffer_pool: String,
}

impl Default for ReactorSection {
    fn default() -> Self {
        ReactorSection {
            cores: 1,
            cpus: Vec::new(),
            poll_mode: "adaptive".into(),
            socket_io: "epoll".into(),
            buffer_pool: "256MiB".into(),
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// `standard`, `auto` or `io_uring`.
    pub backend: String,
    /// Volatile write cache on (SYNCHRONIZE CACHE makes writes durable) or
    /// off (every write durable when acknowledged).
    pub write_cache: bool,
    /// WAL writes written by the reactor into the page cache while the
    /// kernel is far from throttling writers (else by an io-wq worker or
    /// the standard backend's workers); durable ones then go through group
    /// commit.
    pub wal_inline_writes: bool,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            backend: "auto".into(),
            write_cache: true,
            wal_inline_writes: true,
        }
    }
}

/// iSCSI settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IscsiSection {
    /// Listen addresses (empty: iSCSI off).
    pub listen: Vec<String>,
    /// Portals returned by SendTargets (`host:port`); empty: the address
    /// the initiator connected to.
    pub advertise: Vec<String>,
    /// Prefix of default IQNs.
    pub iqn_prefix: String,
    /// CHAP for discovery sessions.
    pub discovery_chap: Option<ChapConfig>,
    /// Seconds of initiator silence before a NOP-In ping (0: never).
    pub nop_interval_secs: u64,
    /// Seconds to wait for the ping's answer.
    pub nop_timeout_secs: u64,
}

impl Default for IscsiSection {
    fn default() -> Self {
        IscsiSection {
            listen: vec!["127.0.0.1:3260".into()],
            advertise: Vec::new(),
            iqn_prefix: DEFAULT_IQN_PREFIX.into(),
            discovery_chap: None,
            nop_interval_secs: 10,
            nop_timeout_secs: 30,
        }
    }
}

/// NVMe/TCP settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NvmfSection {
    /// Listen addresses (empty: NVMe/TCP off).
    pub listen: Vec<String>,
    /// Addresses the discovery log reports (`host:port`); empty: the
    /// address the host connected to.
    pub advertise: Vec<String>,
    /// Prefix of default subsystem NQNs.
    pub nqn_prefix: String,
}

impl Default for NvmfSection {
    fn default() -> Self {
        NvmfSection {
            listen: vec!["127.0.0.1:4420".into()],
            advertise: Vec::new(),
            nqn_prefix: DEFAULT_NQN_PREFIX.into(),
        }
    }
}

/// Admin HTTP settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Listen address (empty: off).
    pub listen: String,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: "127.0.0.1:9480".into(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where volume files live.
    pub data_dir: PathBuf,
    /// Reactors.
    pub reactor: ReactorSection,
    /// Engine.
    pub engine: EngineSection,
    /// iSCSI.
    pub iscsi: IscsiSection,
    /// NVMe/TCP.
    pub nvmf: NvmfSection,
    /// Admin HTTP.
    pub admin: AdminSection,
    /// Volumes to host.
    #[serde(rename = "volume")]
    pub volumes: Vec<VolumeSpec>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("./keel-data"),
            reactor: ReactorSection::default(),
            engine: EngineSection::default(),
            iscsi: IscsiSection::default(),
            nvmf: NvmfSection::default(),
            admin: AdminSection::default(),
            volumes: Vec::new(),
        }
    }
}

/// Checked and parsed values the server runs with.
#[derive(Debug, Clone)]
pub struct Validated {
    /// iSCSI listen addresses.
    pub iscsi_listen: Vec<SocketAddr>,
    /// NVMe/TCP listen addresses.
    pub nvmf_listen: Vec<SocketAddr>,
    /// Admin address.
    pub admin_listen: Option<SocketAddr>,
    /// Poll mode.
    pub poll_mode: keel_reactor::PollMode,
    /// Socket I/O.
    pub socket_io: keel_reactor::SocketIoKind,
    /// Engine backend.
    pub backend: keel_blockvol::BackendMode,
    /// Buffer pool bytes.
    pub buffer_pool: usize,
    /// Sizes of the volumes, in the order of `volumes`.
    pub sizes: Vec<VolumeSizes>,
}

/// The sizes of a configured volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeSizes {
    /// Size to create (or grow) it with (None: it must exist).
    pub size: Option<u64>,
    /// WAL size if it is created (None: the default for the size).
    pub wal_size: Option<u64>,
}

fn check_chap(key: &str, c: &ChapConfig) -> Result<(), ConfigError> {
    if c.user.is_empty() {
        return Err(invalid(format!("{key}.user"), "must not be empty"));
    }
    if c.secret.len() < 12 || c.secret.len() > 255 {
        return Err(invalid(
            format!("{key}.secret"),
            "must be 12 to 255 characters (RFC 7143 §12.1.3)",
        ));
    }
    Ok(())
}

/// Whether `s` looks like an iSCSI name (`iqn.YYYY-MM.reversed.domain[:x]`
/// or `eui.` + 16 hex digits or `naa.`), RFC 3720 §3.2.6.
pub fn valid_iscsi_name(s: &str) -> bool {
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':'));
    if !ok_chars || s.len() > 223 {
        return false;
    }
    if let Some(rest) = s.strip_prefix("iqn.") {
        let b = rest.as_bytes();
        return b.len() > 8
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..7].iter().all(u8::is_ascii_digit)
            && b[7] == b'.';
    }
    s.strip_prefix("eui.")
        .is_some_and(|h| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()))
        || s.strip_prefix("naa.").is_some_and(|h| {
            (h.len() == 16 || h.len() == 32) && h.chars().all(|c| c.is_ascii_hexdigit())
        })
}

/// Whether `s` is an NVMe Qualified Name: `nqn.YYYY-MM.reversed.domain:x`
/// or the UUID form, at most 223 bytes (NVMe Base 2.0 §4.5).
pub fn valid_nqn(s: &str) -> bool {
    if s.len() > 223 || s.chars().any(|c| c.is_control() || c == ' ') {
        return false;
    }
    let Some(rest) = s.strip_prefix("nqn.") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() > 8
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'.'
}

impl ServerConfig {
    /// Read a TOML file.
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// The IQN volume `v` is exported as.
    pub fn iqn_of(&self, v: &VolumeSpec) -> String {
        v.iqn
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.iscsi.iqn_prefix, v.name))
    }

    /// The NQN volume `v` is exported as.
    pub fn nqn_of(&self, v: &VolumeSpec) -> String {
        v.nqn
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.nvmf.nqn_prefix, v.name))
    }

    /// The file of volume `v`.
    pub fn path_of(&self, v: &VolumeSpec) -> PathBuf {
        self.data_dir.join(format!("{}.keel", v.name))
    }

    /// Check every setting; the first problem is returned with its key.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self.reactor.cores == 0 || self.reactor.cores > 256 {
            return Err(invalid("reactor.cores", "must be 1 to 256"));
        }
        let poll_mode =
            self.reactor
                .poll_mode
                .parse()
                .map_err(|e: keel_reactor::ParsePollModeError| {
                    invalid("reactor.poll_mode", e.to_string())
                })?;
        let socket_io: keel_reactor::SocketIoKind =
            self.reactor
                .socket_io
                .parse()
                .map_err(|e: keel_reactor::ParseSocketIoError| {
                    invalid("reactor.socket_io", e.to_string())
                })?;
        if !socket_io.compiled_in() {
            return Err(invalid(
                "reactor.socket_io",
                format!(
                    "{socket_io} socket I/O is not compiled into this build (cargo feature sockets-uring)"
                ),
            ));
        }
        let buffer_pool =
            parse_size(&self.reactor.buffer_pool).map_err(|e| invalid("reactor.buffer_pool", e))?;
        if buffer_pool < 1 << 20 {
            return Err(invalid("reactor.buffer_pool", "must be at least 1MiB"));
        }
        let buffer_pool = usize::try_from(buffer_pool)
            .map_err(|_| invalid("reactor.buffer_pool", "too large"))?;
        let backend = match self.engine.backend.as_str() {
            "standard" | "std" => keel_blockvol::BackendMode::Standard,
            "auto" => keel_blockvol::BackendMode::Auto,
            "io_uring" | "uring" => keel_blockvol::BackendMode::IoUring,
            other => {
                return Err(invalid(
                    "engine.backend",
                    format!("{other:?} is not one of standard, auto, io_uring"),
                ))
            }
        };
        let mut iscsi_listen = Vec::new();
        for a in &self.iscsi.listen {
            iscsi_listen.push(
                a.parse::<SocketAddr>().map_err(|e| {
                    invalid("iscsi.listen", format!("{a:?}: {e} (expected IP:PORT)"))
                })?,
            );
        }
        let mut nvmf_listen = Vec::new();
        for a in &self.nvmf.listen {
            nvmf_listen.push(
                a.parse::<SocketAddr>().map_err(|e| {
                    invalid("nvmf.listen", format!("{a:?}: {e} (expected IP:PORT)"))
                })?,
            );
        }
        for a in &self.nvmf.advertise {
            let ok = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(invalid("nvmf.advertise", format!("{a:?} is not HOST:PORT")));
            }
        }
        if !valid_nqn(&format!("{}:x", self.nvmf.nqn_prefix)) {
            return Err(invalid(
                "nvmf.nqn_prefix",
                format!(
                    "{:?} is not an NQN prefix like nqn.2026-11.com.example",
                    self.nvmf.nqn_prefix
                ),
            ));
        }
        for a in &self.iscsi.advertise {
            let ok = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(invalid(
                    "iscsi.advertise",
                    format!("{a:?} is not HOST:PORT"),
                ));
            }
        }
        if !valid_iscsi_name(&format!("{}:x", self.iscsi.iqn_prefix)) {
            return Err(invalid(
                "iscsi.iqn_prefix",
                format!(
                    "{:?} is not an iSCSI name prefix like iqn.2026-11.com.example",
                    self.iscsi.iqn_prefix
                ),
            ));
        }
        if let Some(c) = &self.iscsi.discovery_chap {
            check_chap("iscsi.discovery_chap", c)?;
        }
        let admin_listen = if self.admin.listen.is_empty() {
            None
        } else {
            Some(self.admin.listen.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "admin.listen",
                    format!("{:?}: {e} (expected IP:PORT)", self.admin.listen),
                )
            })?)
        };
        let mut sizes = Vec::new();
        let mut names = std::collections::HashSet::new();
        let mut iqns = std::collections::HashSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let key = format!("volume[{i}]");
            let name_ok = !v.name.is_empty()
                && v.name.len() <= 64
                && v.name.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_')
                });
            if !name_ok {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?}: use 1-64 of a-z, 0-9, '-', '_'", v.name),
                ));
            }
            if !names.insert(v.name.clone()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?} appears twice", v.name),
                ));
            }
            let iqn = self.iqn_of(v);
            if !valid_iscsi_name(&iqn) {
                return Err(invalid(
                    format!("{key}.iqn"),
                    format!("{iqn:?} is not a valid iSCSI name"),
                ));
            }
            let nqn = self.nqn_of(v);
            if !valid_nqn(&nqn) {
                return Err(invalid(
                    format!("{key}.nqn"),
                    format!("{nqn:?} is not a valid NQN"),
                ));
            }
            for h in &v.hosts {
                if !valid_nqn(h) {
                    return Err(invalid(
                        format!("{key}.hosts"),
                        format!("{h:?} is not a valid NQN"),
                    ));
                }
            }
            if !iqns.insert(iqn.clone()) {
                return Err(invalid(
                    format!("{key}.iqn"),
                    format!("{iqn:?} appears twice"),
                ));
            }
            for ini in &v.initiators {
                if !valid_iscsi_name(ini) {
                    return Err(invalid(
                        format!("{key}.initiators"),
                        format!("{ini:?} is not a valid iSCSI name"),
                    ));
                }
            }
            if let Some(c) = &v.chap {
                check_chap(&format!("{key}.chap"), c)?;
            }
            if let Some(c) = &v.mutual_chap {
                check_chap(&format!("{key}.mutual_chap"), c)?;
                if v.chap.is_none() {
                    return Err(invalid(format!("{key}.mutual_chap"), "needs chap as well"));
                }
            }
            let size = match &v.size {
                Some(s) => Some(parse_size(s).map_err(|e| invalid(format!("{key}.size"), e))?),
                None => None,
            };
            let wal_size = match &v.wal_size {
                Some(s) => {
                    let w = parse_size(s).map_err(|e| invalid(format!("{key}.wal_size"), e))?;
                    keel_blockvol::check_wal_size(w)
                        .map_err(|e| invalid(format!("{key}.wal_size"), e.to_string()))?;
                    Some(w)
                }
                None => None,
            };
            sizes.push(VolumeSizes { size, wal_size });
        }
        Ok(Validated {
            iscsi_listen,
            nvmf_listen,
            admin_listen,
            poll_mode,
            socket_io,
            backend,
            buffer_pool,
            sizes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file_parses_and_validates() {
        let text = r#"
data_dir = "/tmp/k"
[reactor]
cores = 2
poll_mode = "adaptive:80"
[engine]
backend = "standard"
[iscsi]
listen = ["127.0.0.1:3260"]
advertise = ["10.0.2.2:3260"]
[admin]
listen = "127.0.0.1:9480"
[[volume]]
name = "db1"
size = "1GiB"
wal_size = "512MiB"
initiators = ["iqn.1993-08.org.debian:01:host1"]
chap = { user = "u", secret = "123456789012" }
"#;
        let c: ServerConfig = toml::from_str(text).unwrap();
        let v = c.validate().unwrap();
        assert_eq!(
            v.sizes,
            vec![VolumeSizes {
                size: Some(1 << 30),
                wal_size: Some(512 << 20)
            }]
        );
        assert_eq!(c.iqn_of(&c.volumes[0]), "iqn.2026-11.io.keel:db1");
        assert_eq!(c.path_of(&c.volumes[0]), PathBuf::from("/tmp/k/db1.keel"));
    }

    #[test]
    fn errors_name_the_setting() {
        let bad = |text: &str, key: &str| {
            let e = match toml::from_str::<ServerConfig>(text) {
                Ok(c) => c.validate().unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(key), "{e:?} should mention {key}");
        };
        bad("[reactor]\ncores = 0", "reactor.cores");
        bad("[reactor]\npoll_mode = \"spin\"", "reactor.poll_mode");
        bad("[reactor]\nsocket_io = \"kqueue\"", "reactor.socket_io");
        bad("[engine]\nbackend = \"fast\"", "engine.backend");
        bad("[iscsi]\nlisten = [\"localhost\"]", "iscsi.listen");
        bad("[[volume]]\nname = \"A B\"", "volume[0].name");
        bad("[[volume]]\nname = \"a\"\nsize = \"1XB\"", "volume[0].size");
        bad(
            "[[volume]]\nname = \"a\"\nwal_size = \"1000\"",
            "volume[0].wal_size",
        );
        bad(
            "[[volume]]\nname = \"a\"\nwal_size = \"32KiB\"",
            "volume[0].wal_size",
        );
        bad(
            "[[volume]]\nname = \"a\"\nchap = { user = \"u\", secret = \"short\" }",
            "volume[0].chap.secret",
        );
        bad(
            "[[volume]]\nname = \"a\"\n[[volume]]\nname = \"a\"",
            "appears twice",
        );
        bad("bogus = 1", "bogus");
        bad(
            "[[volume]]\nname = \"a\"\niqn = \"IQN.bad\"",
            "volume[0].iqn",
        );
    }

    #[test]
    fn iscsi_names() {
        assert!(valid_iscsi_name("iqn.2026-11.io.keel:vol0"));
        assert!(valid_iscsi_name("iqn.1993-08.org.debian:01:abc"));
        assert!(valid_iscsi_name("eui.02004567a425678d"));
        assert!(!valid_iscsi_name("iqn.26-11.io"));
        assert!(!valid_iscsi_name("iqn.2026-11.io.Keel"));
        assert!(!valid_iscsi_name("foo"));
    }
}
