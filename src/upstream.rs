//! Upstream peers: one pre-built `HttpPeer` per route, made from a resolved `SocketAddr`
//! so that no hook ever does blocking DNS (Pingora's `HttpPeer::new` with a host name
//! blocks and panics when it fails).
//!
//! IP-literal upstreams are built at start. Named ones are resolved asynchronously on the
//! first request that needs them, and refreshed by [`PeerTable`] as a background service;
//! a name that does not resolve is not fatal: that route answers 502 until it does.

use crate::config::UpstreamConfig;
use crate::providers::{Route, UpstreamUrl};
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use log::{debug, info, warn};
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::socket::SocketAddr as L4Addr;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Why no peer could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The host name did not resolve (or resolved to nothing).
    #[error("upstream host {0} did not resolve")]
    Unresolved(String),
    /// Resolution took longer than the connect timeout.
    #[error("resolving upstream host {0} timed out")]
    Timeout(String),
}

struct Slot {
    url: UpstreamUrl,
    peer: ArcSwapOption<HttpPeer>,
}

/// The peer for each route, swapped lock-free when DNS answers change.
pub struct PeerTable {
    slots: Vec<Slot>,
    opts: UpstreamConfig,
}

impl PeerTable {
    /// One slot per route, indexed by `Route::index`.
    pub fn new(routes: &[Arc<Route>], opts: UpstreamConfig) -> PeerTable {
        let mut ordered: Vec<&Arc<Route>> = routes.iter().collect();
        ordered.sort_by_key(|r| r.index);
        let slots = ordered
            .into_iter()
            .map(|r| {
                let peer = r.upstream.ip().map(|ip| {
                    Arc::new(build_peer(
                        &r.upstream,
                        SocketAddr::new(ip, r.upstream.port),
                        &opts,
                    ))
                });
                Slot {
                    url: r.upstream.clone(),
                    peer: ArcSwapOption::new(peer),
                }
            })
            .collect();
        PeerTable { slots, opts }
    }

    /// The peer for route `index`, resolving its host now if it never resolved before.
    pub async fn get(&self, index: usize) -> Result<Box<HttpPeer>, PeerError> {
        let slot = &self.slots[index];
        if let Some(peer) = slot.peer.load().as_ref() {
            return Ok(Box::new(HttpPeer::clone(peer)));
        }
        let peer = self.resolve(slot).await?;
        Ok(Box::new(HttpPeer::clone(&peer)))
    }

    async fn resolve(&self, slot: &Slot) -> Result<Arc<HttpPeer>, PeerError> {
        let host = &slot.url.host;
        let lookup = tokio::net::lookup_host((host.as_str(), slot.url.port));
        let addrs = match tokio::time::timeout(self.opts.connect_timeout, lookup).await {
            Err(_) => return Err(PeerError::Timeout(host.clone())),
            Ok(Err(e)) => {
                debug!("resolving {host} failed: {e}");
                return Err(PeerError::Unresolved(host.clone()));
            }
            Ok(Ok(addrs)) => addrs,
        };
        // Prefer IPv4: it is what most egress paths (and containers) route.
        let addrs: Vec<SocketAddr> = addrs.collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| PeerError::Unresolved(host.clone()))?;
        let current = slot.peer.load();
        if let Some(p) = current.as_ref() {
            if matches!(&p._address, L4Addr::Inet(a) if *a == addr) {
                return Ok(Arc::clone(p));
            }
        }
        let peer = Arc::new(build_peer(&slot.url, addr, &self.opts));
        info!("upstream {host} resolved to {addr}");
        slot.peer.store(Some(Arc::clone(&peer)));
        Ok(peer)
    }

    fn has_names(&self) -> bool {
        self.slots.iter().any(|s| s.url.ip().is_none())
    }
}

fn build_peer(url: &UpstreamUrl, addr: SocketAddr, opts: &UpstreamConfig) -> HttpPeer {
    // SNI is the host name: an empty SNI would disable certificate verification.
    let sni = if url.tls { url.host.clone() } else { String::new() };
    let mut peer = HttpPeer::new(addr, url.tls, sni);
    peer.options.connection_timeout = Some(opts.connect_timeout);
    peer.options.total_connection_timeout = Some(opts.connect_timeout);
    peer.options.read_timeout = Some(opts.read_timeout);
    peer.options.write_timeout = Some(opts.write_timeout);
    peer.options.idle_timeout = Some(opts.idle_timeout);
    if url.tls && url.ip().is_some() {
        // An IP literal cannot be checked against a name; verify the certificate chain
        // but not the host name.
        peer.options.verify_hostname = false;
    }
    peer
}

/// Refreshes named upstreams every `dns_refresh`; a failed refresh keeps the old address.
#[async_trait]
impl BackgroundService for PeerTable {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !self.has_names() {
            return;
        }
        let mut first = true;
        loop {
            for slot in self.slots.iter().filter(|s| s.url.ip().is_none()) {
                if let Err(e) = self.resolve(slot).await {
                    if slot.peer.load().is_some() {
                        warn!("{e}; keeping the last address");
                    } else if first {
                        warn!("{e}; its provider answers 502 until it resolves");
                    }
                }
            }
            first = false;
            let wait = if self.slots.iter().any(|s| s.peer.load().is_none()) {
                Duration::from_secs(5).min(self.opts.dns_refresh)
            } else {
                self.opts.dns_refresh
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
