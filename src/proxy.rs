//! The gateway: Pingora's `ProxyHttp` hooks in the order Pingora calls them. Each hook
//! glues a pure piece (routing, key extraction, allow-list lookup, usage parsing) to the
//! request; reading top to bottom tells the life of a request.

use crate::allowlist::{KeyEntry, KeyMode, SharedAllowList};
use crate::auth::{self, KeyTag};
use crate::body_buffer::{self, BODY_READ_TIMEOUT};
use crate::config::LimitsConfig;
use crate::cost::{self, Billable, Charge, Reserved};
use crate::credentials::aws::{self, AwsCredentials};
use crate::credentials::{Credential, ProviderCredentials};
use crate::inbound;
use crate::inject;
use crate::lifecycle::{InFlight, InFlightGuard, Phase};
use crate::limits::fleet::FleetHandle;
use crate::limits::meter::{self as limit_meter, Amounts, Metered, Periods, Reservation, Scope};
use crate::limits::{self, estimate};
use crate::metrics::{self, Metrics, METRICS_PATH};
use crate::outcome::{self, classify_error, Ending, ErrorKind, GatewayError};
use crate::prices::{Price, SharedPrices};
use crate::provider_error::{ErrorClass, ProviderError};
use crate::providers::{self, ApiFormat, Route, Router};
use crate::record::{RecordParts, UsageRecord};
use crate::request_id::{self, RequestId};
use crate::scope;
use crate::sigv4;
use crate::stats::StatsSink;
use crate::upstream::{PeerError, PeerTable};
use crate::usage::{self, BodyKind, Collector, UsageStatus};
use async_trait::async_trait;
use aws_credential_types::Credentials;
use bytes::Bytes;
use log::debug;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorType};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Health check path, answered without a key.
pub const HEALTH_PATH: &str = "/healthz";

/// Per-request state. Each request owns one.
pub struct RequestCtx {
    /// When the request started (wall clock, for the record).
    pub started_at: SystemTime,
    /// When the request started (monotonic, for durations).
    pub started: Instant,
    /// The matched provider.
    pub route: Option<Arc<Route>>,
    /// The presented key, masked.
    pub key_tag: Option<KeyTag>,
    /// The allow-list entry of an accepted key.
    pub key: Option<Arc<KeyEntry>>,
    /// Why the request failed, when it did.
    pub error: Option<ErrorKind>,
    /// `/healthz` and similar: no usage record.
    pub internal: bool,
    /// Reads usage from the response body as it streams past.
    pub usage: Option<Box<Collector>>,
    /// Request start to the upstream response header.
    pub ttfb: Option<Duration>,
    /// The response body's end went downstream.
    pub response_complete: bool,
    /// The whole request body, read in `request_filter` when `body_buffer::needs_body`
    /// said so; forwarded by `request_body_filter`.
    pub request_body: Option<Bytes>,
    /// How this request is signed (Bedrock with a gateway key and an AWS identity).
    pub signing: Option<Signing>,
    /// A gateway key's credential header (none for pass-through keys and signed requests).
    pub credential: Option<Arc<Credential>>,
    /// A limited key's request (boxed: see [`Limited`]).
    pub limited: Option<Box<Limited>>,
    /// The request went upstream (its header was written to a connection).
    pub forwarded: bool,
    /// The upstream's status, once its response header arrived.
    pub upstream_status: Option<u16>,
    /// This request's id (record `request_id`, header `x-lmgate-request-id`).
    pub request_id: RequestId,
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    /// A limited key's reservation is held (not yet settled).
    fn holds_reservation(&self) -> bool {
        self.limited.as_ref().is_some_and(|l| l.reservation.is_some())
    }
}

/// What a limited key's request carries from admission to its record. Boxed in the
/// context, which most requests (no limits) would otherwise carry empty: Pingora moves the
/// context with its per-request future, a few copies of every byte (callgrind: ~3
/// instructions per byte of context per request).
pub struct Limited {
    /// The hold on the key's meters, settled when the answer ends (in
    /// `response_body_filter`), else in `logging`.
    pub reservation: Option<Reservation>,
    /// The price of the model the request named (priced again from the response's model).
    pub price: Option<Price>,
    /// The charge settled when the answer ended (before the last bytes reached the
    /// client, so its next request sees the settled counters); the record shows it.
    pub charge: Option<Charge>,
}

/// What a SigV4-signed request carries from `request_filter` to the upstream header.
pub struct Signing {
    /// The identity (its region; told when the upstream says the token expired).
    pub identity: Arc<AwsCredentials>,
    /// The credentials taken when the request arrived.
    pub credentials: Arc<Credentials>,
}

/// The gateway: routes, keys, peers.
pub struct Gateway {
    router: Router,
    peers: Arc<PeerTable>,
    allowlist: SharedAllowList,
    in_flight: Arc<InFlight>,
    phase: Arc<Phase>,
    stats: Arc<StatsSink>,
    capture_limit: usize,
    metrics: Option<Arc<Metrics>>,
    serve_metrics: bool,
    max_buffered_body: usize,
    aws_identities: Vec<Option<Arc<AwsCredentials>>>,
    credentials: Arc<ProviderCredentials>,
    prices: SharedPrices,
    limits: LimitsConfig,
    fleet: Option<FleetHandle>,
    instance: u32,
}

/// What a [`Gateway`] is built from.
pub struct GatewayParts {
    /// Prefix routes.
    pub router: Router,
    /// Upstream peers.
    pub peers: Arc<PeerTable>,
    /// The allow-list.
    pub allowlist: SharedAllowList,
    /// In-flight counter for the drain.
    pub in_flight: Arc<InFlight>,
    /// Stopping (`/healthz` 503) and draining (`Connection: close`), for the hooks.
    pub phase: Arc<Phase>,
    /// Where usage records go.
    pub stats: Arc<StatsSink>,
    /// `stats.capture_limit_bytes`.
    pub capture_limit: usize,
    /// Prometheus metrics, when enabled.
    pub metrics: Option<Arc<Metrics>>,
    /// Answer `/metrics` on this (the main) listener.
    pub serve_metrics: bool,
    /// `server.max_buffered_body_bytes`.
    pub max_buffered_body: usize,
    /// The AWS identity of each route that signs with one, by route index.
    pub aws_identities: Vec<Option<Arc<AwsCredentials>>>,
    /// Provider credentials for gateway keys, by route index.
    pub credentials: Arc<ProviderCredentials>,
    /// Model prices.
    pub prices: SharedPrices,
    /// How limited requests are estimated.
    pub limits: LimitsConfig,
    /// The fleet lease service, when limits are shared through Redis.
    pub fleet: Option<FleetHandle>,
    /// This process's request-id prefix.
    pub instance: u32,
}

impl Gateway {
    /// Wire the pieces built at start.
    pub fn new(p: GatewayParts) -> Self {
        Gateway {
            router: p.router,
            peers: p.peers,
            allowlist: p.allowlist,
            in_flight: p.in_flight,
            phase: p.phase,
            stats: p.stats,
            capture_limit: p.capture_limit,
            metrics: p.metrics,
            serve_metrics: p.serve_metrics,
            max_buffered_body: p.max_buffered_body,
            aws_identities: p.aws_identities,
            credentials: p.credentials,
            prices: p.prices,
            limits: p.limits,
            fleet: p.fleet,
            instance: p.instance,
        }
    }

    /// The AWS identity that signs requests on `route` made with `key`: Bedrock routes with
    /// an `aws` credential, gateway keys only (a pass-through key is never signed for).
    fn signer_for(&self, route: &Route, key: &KeyEntry) -> Option<&Arc<AwsCredentials>> {
        if route.format != ApiFormat::Bedrock || key.mode != KeyMode::Gateway {
            return None;
        }
        self.aws_identities.get(route.index)?.as_ref()
    }

    /// After the key lookup: the key's provider scope, then a gateway key's credential, then
    /// the body when it must be read first, then the key's model scope. `Ok(true)`: refused
    /// and answered.
    async fn apply_scope(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        entry: &KeyEntry,
    ) -> Result<bool> {
        if let Some(denial) = entry.scope.check_provider(&route.name) {
            let e = ProviderError::new(
                ErrorClass::Permission,
                ErrorKind::ScopeDenied,
                denial.message(&entry.id),
            );
            debug!("scope denied: {} key {:?}: provider", route.name, ctx.key_tag);
            return respond_provider_error(session, ctx, route.format, &e).await;
        }
        if entry.mode == KeyMode::Gateway {
            let slot = self.credentials.get(route.index);
            match inject::for_gateway_key(&route.name, slot, SystemTime::now) {
                Ok(c) => ctx.credential = c,
                Err(e) => return respond_provider_error(session, ctx, route.format, &e).await,
            }
        }
        let signer = self.signer_for(route, entry);
        if let Some(identity) = signer {
            // Before the body is read: what cannot be signed, or not now.
            let path = session.req_header().uri.path();
            match signing_credentials(path, identity, SystemTime::now()) {
                Ok(credentials) => {
                    ctx.signing = Some(Signing {
                        identity: Arc::clone(identity),
                        credentials,
                    })
                }
                Err(e) => return respond_provider_error(session, ctx, route.format, &e).await,
            }
        }
        if body_buffer::needs_body(route.format, entry, signer.is_some()) {
            match body_buffer::read_whole_body(session, self.max_buffered_body, BODY_READ_TIMEOUT).await? {
                Ok(body) => ctx.request_body = Some(body),
                Err(refusal) => {
                    debug!(
                        "request body refused: {} key {:?}: {refusal:?}",
                        route.name, ctx.key_tag
                    );
                    return respond_provider_error(session, ctx, route.format, &refusal.provider_error())
                        .await;
                }
            }
        }
        if entry.scope.models.is_none() && entry.meters.is_none() {
            return Ok(false);
        }
        let path = session.req_header().uri.path();
        let rest = providers::strip_segment_prefix(path, &route.prefix).unwrap_or(path);
        let body = ctx.request_body.as_deref();
        // Token and dollar limits read the body once (model and output cap together); a
        // model scope keeps its own reading of the model, as before limits existed.
        let facts = body
            .filter(|b| !b.is_empty() && entry.meters.is_some() && entry.limits.needs_estimate())
            .map(|b| (b.len(), estimate::body_facts(b)));
        let model = match &facts {
            Some((_, f)) if entry.scope.models.is_none() && scope::model_in_body(route.format) => {
                f.model.clone()
            }
            None if entry.scope.models.is_none() => None,
            _ => scope::request_model(route.format, rest, body),
        };
        if let Some(message) = entry
            .scope
            .check_model(model.as_deref())
            .map(|d| d.message(&entry.id))
        {
            debug!("scope denied: {} key {:?}: model", route.name, ctx.key_tag);
            let e = ProviderError::new(ErrorClass::Permission, ErrorKind::ScopeDenied, message);
            return respond_provider_error(session, ctx, route.format, &e).await;
        }
        let Some(meters) = &entry.meters else {
            return Ok(false);
        };
        let estimate = facts.map(|(len, f)| (len, f.max_output));
        match self
            .reserve(route, entry, meters, model.as_deref(), estimate)
            .await
        {
            Ok((reservation, price)) => {
                ctx.limited = Some(Box::new(Limited {
                    reservation: Some(reservation),
                    price,
                    charge: None,
                }));
                Ok(false)
            }
            Err(e) => {
                debug!("limit: {} key {:?}: {:?}", route.name, ctx.key_tag, e.kind);
                respond_provider_error(session, ctx, route.format, &e).await
            }
        }
    }

    /// Admission for a key with limits: estimate the request (from its body when a token or
    /// dollar limit needs it), price it, reserve it on the key's and owner's meters.
    async fn reserve(
        &self,
        route: &Route,
        entry: &KeyEntry,
        meters: &limits::Meters,
        model: Option<&str>,
        estimate: Option<(usize, Option<u64>)>,
    ) -> std::result::Result<(Reservation, Option<Price>), ProviderError> {
        let l = &entry.limits;
        // `estimate`: (body length, output cap) when a token or dollar limit applies and the
        // request has a body. Without one (`GET /v1/models`) a request generates nothing:
        // one request, no tokens, nothing to price.
        let price = match (estimate, model) {
            (Some(_), Some(m)) => self.prices.load().lookup(&route.name, m),
            _ => None,
        };
        if l.has_money() && estimate.is_some() && price.is_none() && !l.allow_unpriced {
            return Err(limits::unpriced_error(&entry.id, &route.name, model));
        }
        let (input, output) = match estimate {
            Some((len, cap)) => (
                estimate::input_tokens(len, self.limits.bytes_per_input_token),
                cap.unwrap_or(self.limits.default_output_tokens),
            ),
            None => (0, 0),
        };
        let micros = price.map_or(0, |p| {
            // Every output token at the dearer of the output and reasoning rates.
            let p = Price {
                output: p.output.max(p.reasoning.unwrap_or(0)),
                ..p
            };
            Billable {
                input,
                output,
                ..Billable::default()
            }
            .cost_micros(&p)
        });
        let periods = Periods::now();
        let metered = Metered {
            key: (&meters.key, &l.key),
            owner: meters.owner.as_ref().map(|o| (o, &l.owner)),
        };
        let asked = Amounts {
            requests: 1,
            input,
            output,
            micros,
        };
        let mut periods = periods;
        let mut admitted = limit_meter::admit(&metered, asked, periods);
        // In a fleet: refused by this instance's lease while the fleet has room. Ask the
        // lease service for more and try again (a bounded wait; rare at steady state, where
        // the service refills leases before they run out). One round per counter at most.
        let mut asked_for: Vec<(Scope, usize)> = Vec::new();
        while let (Err(r), Some(fleet)) = (&admitted, &self.fleet) {
            // Nothing to wait for while Redis is known to be down (the fallback applies),
            // nor for a counter whose top-up did not help.
            let counter = (r.scope, r.kind as usize);
            if !r.lease_short || fleet.redis_down() || asked_for.contains(&counter) {
                break;
            }
            asked_for.push(counter);
            let meter = match (r.scope, &meters.owner) {
                (Scope::Owner, Some(owner)) => owner,
                _ => &meters.key,
            };
            fleet.top_up(meter, r.kind as usize, r.asked).await;
            periods = Periods::now();
            admitted = limit_meter::admit(&metered, asked, periods);
        }
        admitted.map(|r| (r, price)).map_err(|r| {
            if r.lease_short && self.fleet.as_ref().is_some_and(|f| f.redis_down()) {
                limits::lease_error(&r, &entry.id, &entry.owner, &periods)
            } else {
                limits::refusal_error(&r, &entry.id, &entry.owner, &periods)
            }
        })
    }

    /// What a finished request cost and is charged: its counts at the price of the model
    /// the response (else the URL, else the request) names.
    fn charge(
        &self,
        ctx: &RequestCtx,
        usage: &usage::Usage,
        status: UsageStatus,
        model: Option<&str>,
    ) -> Charge {
        let (stream, bytes) = ctx
            .usage
            .as_ref()
            .map_or((false, 0), |c| (c.kind().is_stream(), c.bytes()));
        let unread = cost::counts_may_be_missing(ctx.forwarded, ctx.upstream_status, stream, bytes, status);
        let Some(route) = &ctx.route else {
            return cost::charge(ApiFormat::OpenAi, usage, status, None, None, false);
        };
        let price = model
            .and_then(|m| self.prices.load().lookup(&route.name, m))
            .or(ctx.limited.as_ref().and_then(|l| l.price));
        let reservation = ctx.limited.as_ref().and_then(|l| l.reservation.as_ref());
        let reserved: Option<Reserved> = reservation.map(|r| {
            let a = r.reserved();
            (a.input, a.output, a.micros)
        });
        cost::charge(route.format, usage, status, price.as_ref(), reserved, unread)
    }

    /// Replace a limited request's reservation with its charge (once).
    fn settle(ctx: &mut RequestCtx, charge: &Charge) {
        if let Some(r) = ctx.limited.as_mut().and_then(|l| l.reservation.take()) {
            r.settle(Amounts {
                requests: 1,
                input: charge.input,
                output: charge.output,
                micros: charge.cost_micros.unwrap_or(0),
            });
        }
    }
}

/// The credentials to sign a request for `path` with, or why it cannot be signed: the
/// bidirectional stream never (400), and nothing while the identity holds no usable
/// credentials (503, retried by the SDKs).
fn signing_credentials(
    path: &str,
    identity: &AwsCredentials,
    now: SystemTime,
) -> std::result::Result<Arc<Credentials>, ProviderError> {
    if sigv4::is_bidirectional_stream(path) {
        return Err(ProviderError::new(
            ErrorClass::InvalidRequest,
            ErrorKind::BadRequest,
            "InvokeModelWithBidirectionalStream is not available with a gateway key: the gateway \
             signs each request over its whole body, and this API streams the body both ways",
        ));
    }
    identity.current(now).ok_or_else(|| {
        ProviderError::new(
            ErrorClass::Unavailable,
            ErrorKind::CredentialUnavailable,
            "the gateway's AWS credentials are not available yet; retry shortly",
        )
    })
}

/// Put the gateway's SigV4 signature on the upstream request, which is final by now (prefix
/// stripped, Host set, body framed). Whatever the client sent to authenticate goes first:
/// its own signature headers and the gateway key, which is never forwarded.
fn sign_upstream(req: &mut RequestHeader, route: &Route, s: &Signing, body: &[u8]) -> Result<()> {
    for name in sigv4::CLIENT_SIGNATURE_HEADERS
        .into_iter()
        .chain(["x-api-key", "x-goog-api-key"])
    {
        req.remove_header(name);
    }
    let body_sha256_hex = sigv4::body_sha256_hex(body);
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let forwarded = sigv4::Forwarded {
        method: req.method.as_str(),
        host: &route.upstream.host_header,
        path_and_query: req.uri.path_and_query().map_or("/", |p| p.as_str()),
        content_type,
        body_sha256_hex: &body_sha256_hex,
    };
    let headers = sigv4::sign_request(&s.credentials, s.identity.region(), &forwarded, SystemTime::now())
        .map_err(|e| Error::explain(ErrorType::InternalError, e.to_string()))?;
    for (name, value) in headers {
        let mut value =
            http::HeaderValue::try_from(value).or_err(ErrorType::InternalError, "signature header")?;
        // The signature and the session token: `http` prints a sensitive value as
        // "Sensitive" (Pingora logs the upstream request header at debug).
        value.set_sensitive(name != "x-amz-date");
        req.insert_header(name, value)?;
    }
    Ok(())
}

/// A rejected request's body is read and dropped up to this size so the connection can
/// serve the next request (keep-alive); a larger one closes the connection instead.
const MAX_DRAIN_BYTES: usize = 1024 * 1024;
/// How long draining a rejected request's body may take.
const DRAIN_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Read and drop a small unread request body, or Pingora closes the connection after the
/// answer.
async fn drain_small_body(session: &mut Session) {
    let small_body = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n <= MAX_DRAIN_BYTES);
    if small_body && session.response_written().is_none() {
        let _ = tokio::time::timeout(DRAIN_BODY_TIMEOUT, session.drain_request_body()).await;
    }
}

/// Write a complete small response. `Ok(true)` for `request_filter`: the response is sent.
async fn respond(
    session: &mut Session,
    id: &RequestId,
    status: u16,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Result<bool> {
    let body: Bytes = body.into();
    drain_small_body(session).await;
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header(request_id::HEADER, id.as_str())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

/// Answer one of the gateway's own errors (JSON body), noting its kind for the record.
async fn respond_error(session: &mut Session, ctx: &mut RequestCtx, e: GatewayError) -> Result<bool> {
    ctx.error = Some(e.kind());
    respond(session, &ctx.request_id, e.status(), "application/json", e.body()).await
}

/// Answer a refusal in the provider's error shape (`format`), noting its kind for the
/// record. A body refused for its size or its slowness is left unread, so the connection
/// closes after the answer; any other refusal drains a small body first, as [`respond`].
async fn respond_provider_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    format: ApiFormat,
    e: &ProviderError,
) -> Result<bool> {
    ctx.error = Some(e.kind);
    let rendered = e.render(format);
    let close = matches!(e.class, ErrorClass::TooLarge | ErrorClass::Timeout);
    if close {
        session.set_keepalive(None);
    } else {
        drain_small_body(session).await;
    }
    let mut resp = ResponseHeader::build(rendered.status, Some(4 + rendered.headers.len()))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", rendered.body.len().to_string())?;
    resp.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
    for (name, value) in rendered.headers {
        resp.insert_header(name, value)?;
    }
    if close {
        resp.insert_header("connection", "close")?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(rendered.body)), true)
        .await?;
    Ok(true)
}

/// Answer without reading the request body (the connection will be closed).
async fn respond_now(session: &mut Session, ctx: &mut RequestCtx, e: GatewayError) -> Result<bool> {
    ctx.error = Some(e.kind());
    let body = e.body();
    let mut resp = ResponseHeader::build(e.status(), Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("connection", "close")?;
    resp.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await?;
    Ok(true)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started_at: SystemTime::now(),
            started: Instant::now(),
            route: None,
            key_tag: None,
            key: None,
            error: None,
            internal: false,
            usage: None,
            ttfb: None,
            response_complete: false,
            request_body: None,
            signing: None,
            credential: None,
            limited: None,
            forwarded: false,
            upstream_status: None,
            request_id: request_id::next(self.instance),
            _in_flight: self.in_flight.enter(),
        }
    }

    /// Route and authorize before any upstream work. `Ok(true)`: we already responded.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let path = req.uri.path();
        if path == HEALTH_PATH && (req.method == http::Method::GET || req.method == http::Method::HEAD) {
            ctx.internal = true;
            let (status, body) = self.phase.health(); // 503 once a stop was asked for
            return respond(session, &ctx.request_id, status, "text/plain", body).await;
        }
        if path == METRICS_PATH && self.serve_metrics && req.method == http::Method::GET {
            if let Some(m) = &self.metrics {
                ctx.internal = true;
                let body = m.render();
                return respond(session, &ctx.request_id, 200, metrics::CONTENT_TYPE, body).await;
            }
        }
        if let Some(refusal) = inbound::check(req) {
            if refusal.closes_connection() {
                // Ambiguous framing or a huge header: do not read on, do not reuse.
                session.set_keepalive(None);
                return respond_now(session, ctx, GatewayError::Refused(refusal)).await;
            }
            return respond_error(session, ctx, GatewayError::Refused(refusal)).await;
        }
        let Some((route, _rest)) = self.router.match_path(path) else {
            return respond_error(session, ctx, GatewayError::NoRoute).await;
        };
        ctx.route = Some(Arc::clone(route));
        let presented = auth::extract_key(&req.headers, req.uri.query());
        let entry = presented.as_ref().and_then(|(_, k)| {
            ctx.key_tag = Some(KeyTag::new(k));
            self.allowlist.load().lookup(k)
        });
        match entry {
            Some(entry) => {
                ctx.key = Some(Arc::clone(&entry));
                let route = Arc::clone(route);
                self.apply_scope(session, ctx, &route, &entry).await
            }
            None => {
                debug!("forbidden: {} key {:?}", route.name, ctx.key_tag);
                respond_error(session, ctx, GatewayError::Forbidden).await
            }
        }
    }

    /// Peers are pre-built from resolved addresses: cloning one does no DNS.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route in upstream_peer"))?;
        self.peers.get(route.index).await.map_err(|e| {
            let etype = match e {
                PeerError::Timeout(_) => ErrorType::ConnectTimedout,
                PeerError::Unresolved(_) => ErrorType::ConnectNoRoute,
            };
            Error::explain(etype, e.to_string()).into_up()
        })
    }

    /// Strip the prefix (exact bytes), join onto the upstream base path, set `Host`; for a
    /// gateway key, swap the key for the provider credential (or the signature).
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route in upstream_request_filter"))?;
        let gateway = ctx.key.as_ref().is_some_and(|k| k.mode == KeyMode::Gateway);
        let uri = &upstream_request.uri;
        let rest = providers::strip_segment_prefix(uri.path(), &route.prefix).unwrap_or("/");
        let query = inject::forwarded_query(uri.query(), gateway);
        let target = providers::upstream_target(&route.upstream.base_path, rest, query.as_deref());
        let uri =
            http::Uri::try_from(target).or_err(ErrorType::InternalError, "rewritten path is not a URI")?;
        upstream_request.set_uri(uri);
        upstream_request.insert_header(http::header::HOST, route.host_header.clone())?;
        if gateway {
            inject::apply(upstream_request, ctx.credential.as_deref())?;
        }
        ctx.forwarded = true;
        if let Some(body) = &ctx.request_body {
            body_buffer::frame_upstream_request(upstream_request, body)?;
            if let Some(s) = &ctx.signing {
                sign_upstream(upstream_request, route, s, body)?;
            }
        }
        Ok(())
    }

    /// A body read whole in `request_filter` goes upstream here, in one piece at the end
    /// (see `body_buffer`); every other body streams through untouched.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(full) = ctx.request_body.as_ref().filter(|b| !b.is_empty()) {
            body_buffer::emit_whole_body(full, body, end_of_stream);
        }
        Ok(())
    }

    /// Note upstream failures and pick how to read usage from the body; the header goes
    /// downstream unchanged.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.ttfb = Some(ctx.started.elapsed());
        if self.phase.draining() {
            // The listeners have stopped: the client's next request must go to a new
            // connection (to the new process, after an upgrade).
            session.set_keepalive(None);
        }
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        // Ours, beside the provider's own `x-request-id` (which passes unchanged).
        upstream_response.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
        if status >= 400 {
            ctx.error = Some(ErrorKind::UpstreamHttp);
            if status == 401 && ctx.credential.is_some() {
                // The provider refused the credential we hold: re-read or re-fetch it now.
                if let Some(slot) = ctx.route.as_ref().and_then(|r| self.credentials.get(r.index)) {
                    slot.refresh_soon();
                }
            }
            if let Some(s) = &ctx.signing {
                let errortype = upstream_response.headers.get("x-amzn-errortype");
                if aws::is_expired_token(status, errortype.map(|v| v.as_bytes())) {
                    // Tell the refresher; never wait for it here.
                    s.identity.expired();
                }
            }
        }
        if let Some(key) = ctx.key.as_ref().filter(|_| ctx.holds_reservation()) {
            if let Some(meters) = &key.meters {
                for (name, value) in limits::ratelimit_headers(&key.limits, meters, &Periods::now()) {
                    upstream_response.insert_header(name, value)?;
                }
            }
        }
        if let Some(route) = &ctx.route {
            let h = &upstream_response.headers;
            let content_type = h.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let encoding = h
                .get(http::header::CONTENT_ENCODING)
                .map(|v| v.to_str().unwrap_or("unreadable"));
            let kind = BodyKind::from_response(route.format, content_type, session.req_header().uri.path());
            ctx.usage = Some(Box::new(Collector::new(kind, encoding, self.capture_limit)));
        }
        Ok(())
    }

    /// Observe only: the chunk goes downstream untouched (streaming stays streaming).
    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        ctx.response_complete |= end_of_stream;
        if let Some(c) = ctx.usage.as_mut() {
            if let Some(chunk) = body.as_ref() {
                c.feed(chunk);
            }
            if end_of_stream {
                c.finish();
            }
        }
        if end_of_stream && ctx.holds_reservation() {
            // Settle before this last chunk goes out: the client's next request must see
            // this one's exact counts, not its reservation.
            if let Some(c) = ctx.usage.as_ref() {
                let (u, status) = c.outcome();
                let path = session.req_header().uri.path();
                let model = u.model.clone().or_else(|| usage::model_from_path(path));
                let charge = self.charge(ctx, &u, status, model.as_deref());
                Self::settle(ctx, &charge);
                if let Some(l) = ctx.limited.as_mut() {
                    l.charge = Some(charge);
                }
            }
        }
        Ok(None)
    }

    /// Every failure gets the right status and a JSON body (when nothing was sent yet).
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        // The record's kind is decided in `logging`, which gets the same error.
        let (mut code, kind) = classify_error(e);
        if session.response_written().is_some() {
            // Mid-body: the status is already out; the client sees the stream end.
            code = 0;
        }
        if code > 0 {
            let body = GatewayError::for_failure(kind).body();
            if let Err(e) = respond(session, &ctx.request_id, code, "application/json", body).await {
                debug!("could not send the error response: {e}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Runs for every request (rejected, failed and disconnected ones too): one usage
    /// record each, handed to the writer without waiting.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.internal {
            return;
        }
        let (status, error) = outcome::record_outcome(Ending {
            sent: session.response_written().map(|r| r.status.as_u16()),
            complete: ctx.response_complete,
            noted: ctx.error,
            failure: e.map(|e| classify_error(e).1),
        });
        ctx.error = error;
        let (usage, usage_status, stream) = match ctx.usage.as_mut() {
            Some(c) => {
                let (u, s) = c.outcome();
                (u, s, c.kind().is_stream())
            }
            None => (Default::default(), UsageStatus::Absent, false),
        };
        let endpoint = session.req_header().uri.path();
        let url_model = if usage.model.is_none() {
            usage::model_from_path(endpoint)
        } else {
            None
        };
        let charge = match ctx.limited.as_mut().and_then(|l| l.charge.take()) {
            Some(c) => c,
            None => {
                let model = usage.model.as_deref().or(url_model.as_deref());
                self.charge(ctx, &usage, usage_status, model)
            }
        };
        // Every reservation settles here at the latest (errors, timeouts, disconnects).
        Self::settle(ctx, &charge);
        let record = UsageRecord::build(RecordParts {
            started_at: ctx.started_at,
            lmgate_id: ctx.key.as_ref().map(|k| Arc::clone(&k.id)),
            provider: ctx.route.as_ref().map(|r| Arc::clone(&r.name)),
            endpoint,
            usage,
            url_model,
            status,
            // The record is the tag's last use: moved, not copied.
            masked_key: ctx.key_tag.take().map(KeyTag::into_string),
            error_type: ctx.error.map(ErrorKind::as_str),
            usage_status,
            stream,
            duration_ms: ctx.started.elapsed().as_millis() as u64,
            cost_micros: charge.cost_micros,
            cost_status: charge.status,
            request_id: ctx.request_id,
        });
        if let Some(m) = &self.metrics {
            m.observe(&record, ctx.ttfb);
        }
        self.stats.submit(record);
    }

    /// Error logs name the request without its query string (`?key=` is a secret).
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }
}
