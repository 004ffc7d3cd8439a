//! The admin HTTP endpoint, on its own thread with a current-thread tokio
//! runtime (never on a reactor): `GET /status` (JSON) and `GET /metrics`
//! (Prometheus text exposition format 0.0.4).
//!
//! The exposition is written here directly rather than through a metrics
//! registry: every value is read from the engine's and the targets' own
//! atomic counters at scrape time, so there is nothing to register or keep
//! in sync, and the format is a few lines of text.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{Path as AxPath, State as AxState};
use axum::http::header;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::State;

/// A running admin endpoint.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Bind `addr` (in the caller's thread, so errors surface at once) and
    /// serve on a new thread.
    pub fn start(addr: SocketAddr, state: Arc<State>) -> anyhow::Result<AdminServer> {
        let std_listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen for admin HTTP on {addr}"))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("keel-admin".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "admin runtime failed");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "admin listener failed");
                            return;
                        }
                    };
                    let app = Router::new()
                        .route("/status", get(status))
                        .route("/metrics", get(metrics))
                        .route("/volumes/{name}/ana/{state}", post(set_ana))
                        .route("/volumes/{name}/create/{size}", post(create_volume))
                        .with_state(state);
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                });
            })?;
        tracing::info!(%addr, "admin HTTP listening (/status, /metrics)");
        Ok(AdminServer {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving and join the thread.
    pub fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The `/status` document.
pub fn status_json(state: &State) -> Value {
    let sessions = state.registry.sessions();
    let hosted = state.volumes();
    let volumes: Vec<Value> = hosted
        .iter()
        .map(|h| {
            let st = h.target.lun.volume().status();
            let n_sessions = sessions
                .iter()
                .filter(|s| s.target.as_deref() == Some(h.target.spec.iqn.as_str()))
                .count();
            json!({
                "name": h.name,
                "path": h.path.display().to_string(),
                "uuid": hex(&st.info.uuid),
                "size_bytes": st.info.size,
                "block_size": st.info.block_size,
                "iqn": h.target.spec.iqn,
                "lun": 0,
                "sessions": n_sessions,
                "backend": st.backend,
                "backend_reason": st.backend_reason,
                "write_cache": st.write_cache,
                "failed": st.failed,
                "wal": {
                    "size_bytes": st.info.wal_size,
                    "used_bytes": st.wal_used,
                    "used_fraction": st.wal_used_fraction,
                    "pressure": st.pressure.as_str(),
                },
                "lsn": {
                    "next": st.next_lsn,
                    "written": st.written_lsn,
                    "durable": st.durable_lsn,
                    "checkpoint": st.checkpoint_lsn,
                },
                "epoch": st.epoch,
                "role": format!("{:?}", st.role).to_lowercase(),
            })
        })
        .collect();
    let sess: Vec<Value> = sessions
        .iter()
        .map(|s| {
            json!({
                "tsih": s.tsih,
                "initiator": s.nexus.initiator,
                "isid": hex(&s.nexus.isid),
                "target": s.target,
                "type": if s.target.is_some() { "normal" } else { "discovery" },
                "peer": s.peer.to_string(),
                "header_digest": s.digests.0,
                "data_digest": s.digests.1,
            })
        })
        .collect();
    json!({
        "uptime_seconds": state.started.elapsed().as_secs(),
        "poll_mode": state.poll_mode.to_string(),
        "socket_io": state.socket_io.as_str(),
        "reactors": state.reactors,
        "iscsi_listen": state.iscsi_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "volumes": volumes,
        "sessions": sess,
    })
}

async fn status(AxState(state): AxState<Arc<State>>) -> Json<Value> {
    Json(status_json(&state))
}

fn line(out: &mut String, name: &str, labels: &str, v: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {v}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

/// One labelled Prometheus histogram: `finite` holds each finite bucket's
/// upper bound and its own (not cumulative) count; `+Inf` is `count`.
fn histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    finite: &[(f64, u64)],
    sum: f64,
    count: u64,
) {
    let mut cum = 0;
    for &(le, n) in finite {
        cum += n;
        line(
            out,
            &format!("{name}_bucket"),
            &format!("{labels},le=\"{le}\""),
            cum,
        );
    }
    line(
        out,
        &format!("{name}_bucket"),
        &format!("{labels},le=\"+Inf\""),
        count,
    );
    line(out, &format!("{name}_sum"), labels, sum);
    line(out, &format!("{name}_count"), labels, count);
}

/// The finite upper bounds of an engine histogram (its last bucket,
/// `u64::MAX`, is everything above), divided into the exported unit.
fn engine_buckets(bounds: &[u64], div: f64) -> impl Iterator<Item = f64> + '_ {
    bounds
        .iter()
        .filter(|&&b| b != u64::MAX)
        .map(move |&b| b as f64 / div)
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escape a label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `/metrics` text.
#[allow(clippy::too_many_lines)]
pub fn metrics_text(state: &State) -> String {
    let mut o = String::new();
    let hosted = state.volumes();
    let vols: Vec<_> = hosted
        .iter()
        .map(|h| (format!("volume=\"{}\"", esc(&h.name)), h))
        .collect();
    let stats: Vec<_> = vols
        .iter()
        .map(|(l, h)| (l, h, h.target.lun.volume().status()))
        .collect();
    type Counter = (
        &'static str,
        &'static str,
        fn(&keel_blockvol::StatsSnapshot) -> u64,
    );
    type Gauge = (
        &'static str,
        &'static str,
        fn(&keel_blockvol::VolumeStatus) -> f64,
    );
    let counters: [Counter; 19] = [
        ("keel_volume_read_ops_total", "Read operations", |s| {
            s.read_ops
        }),
        ("keel_volume_read_bytes_total", "Bytes read", |s| {
            s.read_bytes
        }),
        ("keel_volume_write_ops_total", "Write operations", |s| {
            s.write_ops
        }),
        ("keel_volume_write_bytes_total", "Bytes written", |s| {
            s.write_bytes
        }),
        ("keel_volume_fua_writes_total", "Writes with FUA", |s| {
            s.fua_writes
        }),
        (
            "keel_volume_trim_ops_total",
            "Trim (unmap) operations",
            |s| s.trim_ops,
        ),
        (
            "keel_volume_zero_ops_total",
            "Write-zeroes operations",
            |s| s.zero_ops,
        ),
        ("keel_volume_flush_ops_total", "Flush operations", |s| {
            s.flush_ops
        }),
        ("keel_volume_fdatasyncs_total", "WAL fdatasync calls", |s| {
            s.fdatasyncs
        }),
        (
            "keel_volume_linked_syncs_total",
            "Linked write+fdatasync chains",
            |s| s.linked_syncs,
        ),
        (
            "keel_volume_coalesced_wal_writes_total",
            "WAL writes sent coalesced with neighbours in one writev",
            |s| s.coalesced_writes,
        ),
        (
            "keel_volume_coalesced_wal_writevs_total",
            "Coalesced WAL writevs",
            |s| s.coalesced_groups,
        ),
        (
            "keel_volume_inline_wal_writes_total",
            "WAL writes written into the page cache by the submitting thread",
            |s| s.inline_wal_writes,
        ),
        ("keel_volume_group_commits_total", "Group commits", |s| {
            s.group_commits
        }),
        (
            "keel_volume_group_commit_waiters_total",
            "Waiters served by group commits",
            |s| s.group_commit_waiters,
        ),
        ("keel_volume_flusher_runs_total", "Flusher passes", |s| {
            s.flusher_runs
        }),
        (
            "keel_volume_flusher_bytes_total",
            "Bytes written back by the flusher",
            |s| s.flusher_bytes,
        ),
        (
            "keel_volume_admission_waits_total",
            "Writes delayed or held by WAL pressure",
            |s| s.admission_soft_waits + s.admission_hard_waits,
        ),
        ("keel_volume_io_errors_total", "I/O errors", |s| s.io_errors),
    ];
    for (name, help, f) in counters {
        head(&mut o, name, "counter", help);
        for (l, _, st) in &stats {
            line(&mut o, name, l, f(&st.stats));
        }
    }
    let gauges: [Gauge; 7] = [
        ("keel_volume_size_bytes", "Volume size", |s| {
            s.info.size as f64
        }),
        ("keel_volume_wal_size_bytes", "WAL size", |s| {
            s.info.wal_size as f64
        }),
        (
            "keel_volume_wal_used_bytes",
            "WAL bytes not yet written back",
            |s| s.wal_used as f64,
        ),
        ("keel_volume_wal_used_ratio", "WAL used fraction", |s| {
            s.wal_used_fraction
        }),
        ("keel_volume_dirty_blocks", "Blocks only in the WAL", |s| {
            s.dirty_blocks as f64
        }),
        (
            "keel_volume_flusher_lag_lsn",
            "Records waiting for write-back",
            |s| s.flusher_lag_lsn as f64,
        ),
        (
            "keel_volume_failed",
            "1 after an I/O error failed the volume",
            |s| f64::from(u8::from(s.failed.is_some())),
        ),
    ];
    for (name, help, f) in gauges {
        head(&mut o, name, "gauge", help);
        for (l, _, st) in &stats {
            line(&mut o, name, l, f(st));
        }
    }
    // Group commit as it adapts to load: how many waiters each fdatasync
    // completed, and how long the fdatasyncs took.
    let name = "keel_volume_group_commit_batch_size";
    head(
        &mut o,
        name,
        "histogram",
        "Waiters (flushes, FUA and write-through writes) completed per group-commit fdatasync",
    );
    for (l, _, st) in &stats {
        let s = &st.stats;
        let finite: Vec<(f64, u64)> = engine_buckets(&keel_blockvol::BATCH_BUCKETS, 1.0)
            .zip(s.group_commit_batch_hist)
            .collect();
        let sum = s.group_commit_waiters as f64;
        histogram(&mut o, name, l, &finite, sum, s.group_commits);
    }
    let name = "keel_volume_group_commit_sync_seconds";
    head(
        &mut o,
        name,
        "histogram",
        "Latency of the group-commit thread's WAL fdatasyncs",
    );
    for (l, _, st) in &stats {
        let s = &st.stats;
        let finite: Vec<(f64, u64)> = engine_buckets(&keel_blockvol::SYNC_BUCKETS_US, 1e6)
            .zip(s.group_commit_sync_hist)
            .collect();
        let count = s.group_commit_sync_hist.iter().sum::<u64>();
        let sum = s.group_commit_sync_us_sum as f64 / 1e6;
        histogram(&mut o, name, l, &finite, sum, count);
    }
    for (name, help, pick) in [
        (
            "keel_scsi_read_latency_seconds",
            "SCSI READ command latency (command received to status sent)",
            0,
        ),
        (
            "keel_scsi_write_latency_seconds",
            "SCSI WRITE command latency (command received to status sent)",
            1,
        ),
    ] {
        head(&mut o, name, "histogram", help);
        for (l, h, _) in &stats {
            let hist = if pick == 0 {
                &h.target.stats.read_latency
            } else {
                &h.target.stats.write_latency
            };
            let (buckets, sum_us, count) = hist.snapshot();
            let finite: Vec<(f64, u64)> = keel_iscsi::target::LATENCY_BUCKETS_US
                .iter()
                .map(|&b| b as f64 / 1e6)
                .zip(buckets.iter().copied())
                .collect();
            histogram(&mut o, name, l, &finite, sum_us as f64 / 1e6, count);
        }
    }
    head(
        &mut o,
        "keel_iscsi_check_conditions_total",
        "counter",
        "Commands answered with CHECK CONDITION",
    );
    for (l, h, _) in &stats {
        line(
            &mut o,
            "keel_iscsi_check_conditions_total",
            l,
            h.target
                .stats
                .check_conditions
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    head(
        &mut o,
        "keel_iscsi_login_failures_total",
        "counter",
        "Logins refused",
    );
    for (l, h, _) in &stats {
        line(
            &mut o,
            "keel_iscsi_login_failures_total",
            l,
            h.target
                .stats
                .login_failures
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    head(
        &mut o,
        "keel_iscsi_protocol_errors_total",
        "counter",
        "Connections dropped for protocol errors",
    );
    for (l, h, _) in &stats {
        line(
            &mut o,
            "keel_iscsi_protocol_errors_total",
            l,
            h.target
                .stats
                .protocol_errors
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    let sessions = state.registry.sessions();
    head(
        &mut o,
        "keel_iscsi_sessions",
        "gauge",
        "Live iSCSI sessions",
    );
    for (l, h, _) in &stats {
        let n = sessions
            .iter()
            .filter(|s| s.target.as_deref() == Some(h.target.spec.iqn.as_str()))
            .count();
        line(&mut o, "keel_iscsi_sessions", l, n);
    }
    let ps = state.pool.stats();
    head(
        &mut o,
        "keel_buffer_pool_bytes",
        "gauge",
        "Buffer pool bytes allocated / in use",
    );
    line(
        &mut o,
        "keel_buffer_pool_bytes",
        "state=\"allocated\"",
        ps.allocated_bytes,
    );
    line(
        &mut o,
        "keel_buffer_pool_bytes",
        "state=\"in_use\"",
        ps.in_use_bytes,
    );
    head(
        &mut o,
        "keel_buffer_pool_events_total",
        "counter",
        "Buffer pool hits, misses, waits, refusals",
    );
    line(
        &mut o,
        "keel_buffer_pool_events_total",
        "event=\"hit\"",
        ps.hits,
    );
    line(
        &mut o,
        "keel_buffer_pool_events_total",
        "event=\"miss\"",
        ps.misses,
    );
    line(
        &mut o,
        "keel_buffer_pool_events_total",
        "event=\"wait\"",
        ps.waits,
    );
    line(
        &mut o,
        "keel_buffer_pool_events_total",
        "event=\"refusal\"",
        ps.refusals,
    );
    // Each family's lines together, after its header (one group per
    // metric, as the text format requires).
    let cs: Vec<_> = state
        .reactor_remotes
        .iter()
        .map(|r| (format!("reactor=\"{}\"", r.index()), r.counters()))
        .collect();
    head(
        &mut o,
        "keel_reactor_iterations_total",
        "counter",
        "Reactor loop iterations by outcome",
    );
    for (l, c) in &cs {
        let busy = format!("{l},kind=\"busy\"");
        line(
            &mut o,
            "keel_reactor_iterations_total",
            &busy,
            c.busy_iterations,
        );
        let idle = format!("{l},kind=\"idle\"");
        line(
            &mut o,
            "keel_reactor_iterations_total",
            &idle,
            c.idle_iterations,
        );
    }
    head(
        &mut o,
        "keel_reactor_sleeps_total",
        "counter",
        "Times a reactor went to sleep",
    );
    for (l, c) in &cs {
        line(&mut o, "keel_reactor_sleeps_total", l, c.sleeps);
    }
    head(
        &mut o,
        "keel_reactor_pollers",
        "gauge",
        "Pollers (connections, listeners) on a reactor",
    );
    for (l, c) in &cs {
        line(&mut o, "keel_reactor_pollers", l, c.pollers);
    }
    head(
        &mut o,
        "keel_reactor_received_bytes_total",
        "counter",
        "Bytes connections received: into their input buffers, or straight into pool buffers (write data, no copy)",
    );
    for (l, c) in &cs {
        let input = format!("{l},into=\"input\"");
        line(
            &mut o,
            "keel_reactor_received_bytes_total",
            &input,
            c.recv_bytes,
        );
        let direct = format!("{l},into=\"pool_buffer\"");
        let n = c.direct_recv_bytes;
        line(&mut o, "keel_reactor_received_bytes_total", &direct, n);
    }
    o
}

/// `POST /volumes/{name}/create/{size}`: create (or open) and export a
/// volume while serving, with default export settings; answers with its
/// status as JSON.
async fn create_volume(
    AxState(state): AxState<Arc<State>>,
    AxPath((name, size)): AxPath<(String, String)>,
) -> (StatusCode, String) {
    let size = match crate::size::parse_size(&size) {
        Ok(s) => s,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // Creating a volume writes and syncs files: off the async runtime.
    let st = state.clone();
    let r = tokio::task::spawn_blocking(move || st.create_volume(&name, size)).await;
    match r {
        Ok(Ok(h)) => (
            StatusCode::CREATED,
            format!(
                "{}\n",
                json!({"name": h.name, "iqn": h.target.spec.iqn, "nqn": h.subsystem.spec.nqn, "path": h.path.display().to_string()})
            ),
        ),
        Ok(Err(e)) => (StatusCode::CONFLICT, format!("{e:#}\n")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// `POST /volumes/{name}/ana/{state}`: set the NVMe ANA state of a volume's
/// subsystem (`optimized`, `non-optimized`, `inaccessible`,
/// `persistent-loss`, `change`); hosts get an ANA-change event. The control
/// plane uses it when a volume's role changes (failover); operators can
/// drain a server by hand with it.
async fn set_ana(
    AxState(state): AxState<Arc<State>>,
    AxPath((name, ana)): AxPath<(String, String)>,
) -> (StatusCode, String) {
    use keel_nvmf::identify::ana as a;
    let code = match ana.as_str() {
        "optimized" => a::OPTIMIZED,
        "non-optimized" => a::NON_OPTIMIZED,
        "inaccessible" => a::INACCESSIBLE,
        "persistent-loss" => a::PERSISTENT_LOSS,
        "change" => a::CHANGE,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown ANA state {ana:?}\n"),
            )
        }
    };
    let hosted = state.volumes();
    let Some(h) = hosted.iter().find(|h| h.name == name) else {
        return (StatusCode::NOT_FOUND, format!("no volume {name:?}\n"));
    };
    state.nvmf.set_ana_state(&h.subsystem.spec.nqn, code);
    tracing::info!(volume = %name, state = %ana, "ANA state set");
    (StatusCode::OK, format!("{name}: ANA {ana}\n"))
}

async fn metrics(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_text(&state),
    )
}
