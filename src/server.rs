//! Wiring: turn a validated [`Config`] into a ready Pingora [`Server`]. No request logic.

use crate::allowlist::{self, AllowListReloader, ReloadStatus, SharedAllowList};
use crate::config::{Config, ConfigError, CredentialSpec, MetricsListen};
use crate::connections::{ClientConnections, DrainingApp};
use crate::credentials;
use crate::credentials::aws::{self, AwsCredentials, AwsRefresher, AwsSettings};
use crate::lifecycle::{Drain, DrainParts, ExitHook, InFlight, Phase, Signals};
use crate::limits::{self, Registry};
use crate::metrics::{Metrics, MetricsApp, MetricsSources, METRICS_PATH};
use crate::prices::{PriceLoadError, PriceReloader, PriceSources, SharedPrices};
use crate::providers::Router;
use crate::proxy::{Gateway, GatewayParts};
use crate::stats::stats_channel;
use crate::upstream::PeerTable;
use arc_swap::ArcSwap;
use log::info;
use pingora::listeners::ListenerConfig;
use pingora::prelude::*;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::sync::Arc;

/// Why the gateway could not start (printed as one line by main).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The allow-list is missing or malformed at start: fail closed.
    #[error("{path}: {source}")]
    AllowList {
        /// The allow-list path.
        path: String,
        /// What is wrong with it.
        source: allowlist::AllowListError,
    },
    /// An `aws` credential whose signing region is neither configured nor in the upstream
    /// host name.
    #[error("providers.{provider}.credential.aws.region: missing: the upstream host names no region")]
    AwsRegion {
        /// The provider.
        provider: String,
    },
    /// A provider credential cannot be read (a variable unset, a file unreadable).
    #[error("{0}")]
    Credential(ConfigError),
    /// A price file is missing or malformed at start.
    #[error("prices: {0}")]
    Prices(PriceLoadError),
    /// The usage records could not be read back to rebuild the spend of limited keys.
    #[error("{path}: cannot rebuild the spend of limited keys: {reason}")]
    Rebuild {
        /// The stats file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The fleet's Redis settings cannot be used (an unreadable password source).
    #[error("{0}")]
    Fleet(String),
    /// The ClickHouse user or password cannot be read (the message names the key).
    #[error("{0}")]
    ClickHouse(String),
    /// The TLS certificate or key could not be used.
    #[error("server.tls_cert_path {cert}: {reason}")]
    Tls {
        /// Certificate path.
        cert: String,
        /// Why.
        reason: String,
    },
}

/// Read buffer of a client connection (Pingora's default is 64 KiB).
const CLIENT_READ_BUFFER_BYTES: usize = 4096;

/// Raise this process's soft open-file limit to its hard limit and return `(before, after)`.
///
/// Every proxied stream holds two descriptors (client and upstream side), and container
/// runtimes often start processes with a soft limit of 1,024: without this, the 500th
/// concurrent stream would fail with `EMFILE` while the hard limit allows far more. The
/// caller logs the outcome; nothing here fails the start.
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; raising the soft limit up to the hard limit is
        // always permitted.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}

/// Pingora's settings derived from ours.
fn server_conf(cfg: &Config) -> ServerConf {
    let mut conf = ServerConf {
        threads: cfg.server.threads,
        upgrade_sock: cfg.server.upgrade_sock.display().to_string(),
        pid_file: cfg.server.pid_file.display().to_string(),
        // Backstop only: `Drain` exits as soon as in-flight requests are done.
        grace_period_seconds: Some(cfg.server.drain_timeout.as_secs() + 5),
        graceful_shutdown_timeout_seconds: Some(2),
        // A daemon (-d) would otherwise chdir to `/` and lose the relative data/ paths.
        working_directory: std::env::current_dir().ok(),
        ..ServerConf::default()
    };
    conf.upstream_keepalive_pool_size = conf.upstream_keepalive_pool_size.max(256);
    conf
}

/// One AWS identity per provider (in config order, which is route index order) whose
/// credential is `aws`: the service that fills the holder the proxy reads.
fn aws_identities(cfg: &Config) -> Result<Vec<Option<AwsRefresher>>, StartError> {
    cfg.providers
        .iter()
        .map(|p| {
            let Some(CredentialSpec::Aws(spec)) = &p.credential else {
                return Ok(None);
            };
            let region = aws::signing_region(spec.region.as_deref(), &p.upstream.host).ok_or_else(|| {
                StartError::AwsRegion {
                    provider: p.name.clone(),
                }
            })?;
            let settings = AwsSettings {
                region: region.clone(),
                assume_role_arn: spec.assume_role_arn.clone(),
                profile: spec.profile.clone(),
            };
            info!(
                "{}: requests with gateway keys are signed (SigV4, region {region}{})",
                p.name,
                spec.assume_role_arn
                    .as_deref()
                    .map(|a| format!(", assuming {a}"))
                    .unwrap_or_default()
            );
            let holder = Arc::new(AwsCredentials::new(region));
            Ok(Some(AwsRefresher::new(p.name.clone(), settings, holder)))
        })
        .collect()
}

/// Refill the meters of limited keys from this month's usage records, so a restart or an
/// upgrade does not reset a budget. Runs before the listeners start; returns the service
/// that adds what another process (the old one of an upgrade) appends after that.
fn rebuild_spend(
    cfg: &Config,
    list: &allowlist::AllowList,
    instance: u32,
) -> Result<Option<limits::rebuild::CatchUp>, StartError> {
    let meters = list.meters_by_id();
    if meters.is_empty() {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let formats: limits::rebuild::Formats =
        cfg.providers.iter().map(|p| (p.name.clone(), p.format)).collect();
    let (stats, tail) = limits::rebuild::rebuild(
        &cfg.stats.output_path,
        &meters,
        &formats,
        std::time::SystemTime::now(),
    )
    .map_err(|e| StartError::Rebuild {
        path: cfg.stats.output_path.display().to_string(),
        reason: e.to_string(),
    })?;
    info!(
        "spend of {} limited key ids rebuilt from {} records of this month ({} files, {} MB read, {} unreadable lines) in {} ms",
        meters.len(),
        stats.charged,
        stats.files,
        stats.bytes / 1_000_000,
        stats.malformed,
        started.elapsed().as_millis()
    );
    // The old process of an upgrade drains for at most the drain timeout after it stops
    // accepting (5 s after the handover).
    let window = cfg.server.drain_timeout + std::time::Duration::from_secs(15);
    Ok(Some(limits::rebuild::CatchUp::new(
        tail, meters, formats, instance, window,
    )))
}

/// Build every service, and the signal handling that stops them. The caller runs the
/// server with those signals.
pub fn build(cfg: &Config, opt: Opt) -> Result<(Server, Signals), StartError> {
    let mut list =
        allowlist::load_allowlist(&cfg.auth.allowlist_path).map_err(|source| StartError::AllowList {
            path: cfg.auth.allowlist_path.display().to_string(),
            source,
        })?;
    info!(
        "allowlist {} loaded: {} keys",
        cfg.auth.allowlist_path.display(),
        list.len()
    );
    let instance = crate::request_id::new_instance();
    let meters = Arc::new(Registry::new(cfg.fleet.is_some()));
    list.attach_meters(&meters);
    let upgrading = opt.upgrade;
    // In a fleet the spend lives in Redis (each instance's figures, kept by the others
    // after it stops); the local files hold only this instance's share.
    let catch_up = if cfg.fleet.is_some() {
        None
    } else {
        rebuild_spend(cfg, &list, instance)?.filter(|_| upgrading)
    };
    let fleet = match &cfg.fleet {
        None => None,
        Some(f) => {
            let env = |var: &str| std::env::var(var).ok();
            Some(limits::fleet::fleet(f, instance, Arc::clone(&meters), &env).map_err(StartError::Fleet)?)
        }
    };
    let (fleet_service, fleet_handle) = match fleet {
        Some((s, h)) => (Some(s), Some(h)),
        None => (None, None),
    };
    let reload_status = Arc::new(ReloadStatus::loaded(list.len()));
    let allowlist: SharedAllowList = Arc::new(ArcSwap::from_pointee(list));
    let price_sources = PriceSources {
        snapshot: cfg.prices.path.clone(),
        overrides: cfg.prices.override_path.clone(),
    };
    let table = price_sources.load().map_err(StartError::Prices)?;
    info!("prices: {}", price_sources.describe(&table));
    let prices: SharedPrices = Arc::new(ArcSwap::from_pointee(table));

    let env = |var: &str| std::env::var(var).ok();
    let (credentials, refresher) = credentials::load(&cfg.file, &cfg.providers, &env, cfg.auth.poll_interval)
        .map_err(StartError::Credential)?;
    for p in cfg.providers.iter().filter(|p| p.credential.is_some()) {
        let mode = credentials::describe(p.credential.as_ref(), &p.upstream.host);
        info!("provider {}: gateway keys get {mode}", p.name);
    }

    let router = Router::new(&cfg.providers);
    let peers = Arc::new(PeerTable::new(router.routes(), cfg.upstream.clone()));
    for r in router.routes() {
        info!(
            "route {} -> {}://{}:{}{} ({:?})",
            r.prefix,
            if r.upstream.tls { "https" } else { "http" },
            r.upstream.host,
            r.upstream.port,
            r.upstream.base_path,
            r.format
        );
    }
    let in_flight = Arc::new(InFlight::default());
    let phase = Arc::new(Phase::default());
    let connections = Arc::new(ClientConnections::default());
    let aws_refreshers = aws_identities(cfg)?;

    let mut server = Server::new_with_opt_and_conf(opt, server_conf(cfg));
    server.bootstrap();

    let (sink, writer, finisher) = stats_channel(&cfg.stats);
    let outbox = crate::ship::outbox(cfg, &env).map_err(StartError::ClickHouse)?;
    if let Some(c) = &cfg.clickhouse {
        info!(
            "usage records shipped to {} ({}.{}), checkpoint {}",
            c.url,
            c.database,
            c.table,
            c.checkpoint_path.display()
        );
    }
    let metrics = cfg.metrics.enabled.then(|| {
        Arc::new(Metrics::new(
            MetricsSources {
                in_flight: Arc::clone(&in_flight),
                stats: Arc::clone(sink.counters()),
                allowlist: Arc::clone(&reload_status),
                credentials: Arc::clone(&credentials),
                fleet: fleet_handle.as_ref().map(|h| Arc::clone(h.stats())),
                aws: cfg
                    .providers
                    .iter()
                    .zip(&aws_refreshers)
                    .filter_map(|(p, r)| Some((p.name.clone(), Arc::clone(r.as_ref()?.holder()))))
                    .collect(),
                ship: outbox
                    .as_ref()
                    .filter(|_| cfg.clickhouse.is_some())
                    .map(|(o, _)| Arc::clone(o.counters())),
            },
            cfg.metrics.per_key_labels,
        ))
    });
    let gateway = Gateway::new(GatewayParts {
        router,
        peers: Arc::clone(&peers),
        allowlist: Arc::clone(&allowlist),
        in_flight: Arc::clone(&in_flight),
        phase: Arc::clone(&phase),
        stats: Arc::new(sink),
        capture_limit: cfg.stats.capture_limit_bytes,
        metrics: metrics.clone(),
        serve_metrics: cfg.metrics.listen == MetricsListen::MainPort,
        max_buffered_body: cfg.server.max_buffered_body_bytes,
        credentials,
        prices: Arc::clone(&prices),
        limits: cfg.limits.clone(),
        fleet: fleet_handle.clone(),
        instance,
        aws_identities: aws_refreshers
            .iter()
            .map(|r| r.as_ref().map(|r| Arc::clone(r.holder())))
            .collect(),
    });
    // The proxy app behind a wrapper that keeps idle keep-alive connections open through
    // the drain (Pingora would close them the moment its listeners stop).
    let mut proxy = Service::new(
        "lmgate proxy".into(),
        DrainingApp::new(
            pingora::proxy::http_proxy(&server.configuration, gateway),
            Arc::clone(&connections),
        ),
    );
    // Pingora gives every client connection a zero-filled 64 KiB read buffer; the HTTP/1
    // parser keeps its own, so 4 KiB here saves ~60 KiB per open connection (idle
    // keep-alive clients, long streams) at no measured cost.
    proxy.add_listener(
        ListenerConfig::tcp(cfg.server.listen_addr())
            .l4_buffer(L4BufferSettings::new(CLIENT_READ_BUFFER_BYTES, 1460)),
    );
    if let Some(tls) = &cfg.server.tls {
        let addr = cfg.server.addr_with_port(tls.port);
        let (cert, key) = (
            tls.cert_path.display().to_string(),
            tls.key_path.display().to_string(),
        );
        // Pingora reads the files only when the listener starts, and panics there; check
        // them now so a bad certificate is a clear start-up error.
        match pingora::tls::load_certs_and_key_files(&cert, &key) {
            Ok(Some((certs, _))) if !certs.is_empty() => {}
            Ok(_) => {
                return Err(StartError::Tls {
                    cert,
                    reason: "no PEM certificate, or no PEM private key in server.tls_key_path".into(),
                })
            }
            Err(e) => {
                return Err(StartError::Tls {
                    cert,
                    reason: e.to_string(),
                })
            }
        }
        proxy.add_tls(&addr, &cert, &key).map_err(|e| StartError::Tls {
            cert: cert.clone(),
            reason: e.to_string(),
        })?;
        info!("lmgate listening with TLS on {addr}");
    }
    proxy.threads = Some(cfg.server.threads);

    let reloader = AllowListReloader::new(
        cfg.auth.allowlist_path.clone(),
        cfg.auth.poll_interval,
        allowlist,
        reload_status,
        meters,
    );
    let price_reloader = PriceReloader::new(price_sources, cfg.prices.poll_interval, prices);
    // In this order: the leases given back, the records written, then shipped.
    let mut hooks: Vec<Arc<dyn ExitHook>> = Vec::new();
    if let Some(h) = &fleet_handle {
        hooks.push(Arc::new(h.clone()));
    }
    hooks.push(Arc::new(finisher));
    let outbox = outbox.map(|(service, finisher)| {
        hooks.push(Arc::new(finisher));
        service
    });
    let trimmer = crate::memory::HeapTrimmer::new(Arc::clone(&in_flight));
    let mut listen_ports = vec![cfg.server.port];
    listen_ports.extend(cfg.server.tls.as_ref().map(|t| t.port));
    let drain = Drain::new(DrainParts {
        in_flight,
        connections,
        phase: Arc::clone(&phase),
        listen_ports,
        timeout: cfg.server.drain_timeout,
        hooks,
    });

    server.add_service(proxy);
    if let (Some(m), MetricsListen::Separate(listen)) = (&metrics, &cfg.metrics.listen) {
        let mut svc = Service::new("metrics".into(), MetricsApp(Arc::clone(m)));
        svc.add_tcp(listen);
        server.add_service(svc);
        info!("metrics on http://{listen}{METRICS_PATH}");
    }
    server.add_service(background_service("allowlist reload", reloader));
    server.add_service(background_service("price reload", price_reloader));
    if let Some(c) = catch_up {
        server.add_service(background_service("spend catch-up", c));
    }
    if let Some(f) = fleet_service {
        server.add_service(background_service("fleet leases", f));
    }
    if !refresher.is_idle() {
        server.add_service(background_service("credential refresh", refresher));
    }
    server.add_service(pingora::services::background::GenBackgroundService::new(
        "dns refresh".into(),
        peers,
    ));
    server.add_service(background_service("stats writer", writer));
    if let Some(o) = outbox {
        server.add_service(background_service("stats outbox", o));
    }
    server.add_service(background_service("drain", drain));
    server.add_service(background_service("heap trim", trimmer));
    for refresher in aws_refreshers.into_iter().flatten() {
        server.add_service(background_service("aws credentials", refresher));
    }
    info!(
        "lmgate listening on {} with {} routes",
        cfg.server.listen_addr(),
        cfg.providers.len()
    );
    Ok((server, Signals::new(phase, cfg.server.shutdown_delay)))
}
