//! The Segment-compatible HTTP ingest (`ingest.listen`, REFERENCE.md §11): `POST /v1/batch`
//! and `/v1/identify|track|page|screen|group|alias`, on a listener of its own. A request is
//! answered 200 only once the broker acknowledged every message of it; nothing of a refused
//! request (400, 401, 429, 503) is published. Memory is bounded by the bytes of requests in
//! flight (`ingest.max_in_flight_bytes`): past it, and when the broker does not acknowledge
//! within `ingest.timeout_ms`, the answer is 503 with `Retry-After`, and clients send again.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::domain::rate_limit::TokenBucket;
use crate::domain::segment::{self, RequestError, Route, MAX_REQUEST_BYTES};
use crate::ports::{Clock, EventPublisher, Publication, RefusedPublication};
use crate::telemetry::Metrics;

/// What the ingest needs.
pub struct IngestState {
    pub publisher: Arc<dyn EventPublisher>,
    pub write_keys: HashSet<String>,
    /// `ingest.rate_per_sec_per_key`: requests per second per write key.
    pub rate_per_sec_per_key: Option<f64>,
    /// `ingest.rate_per_sec_per_peer`: requests per second per client address, for requests
    /// without a write key in the header.
    pub rate_per_sec_per_peer: f64,
    /// How long the broker may take to acknowledge, and a body to arrive.
    pub timeout: Duration,
    /// `limits.max_message_bytes` (§2's check of each completed message).
    pub max_message_bytes: usize,
    /// Bytes of request bodies being published at once; past it, 503.
    pub in_flight: Semaphore,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl IngestState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        publisher: Arc<dyn EventPublisher>,
        write_keys: HashSet<String>,
        rate_per_sec_per_key: Option<f64>,
        rate_per_sec_per_peer: f64,
        timeout: Duration,
        max_message_bytes: usize,
        max_in_flight_bytes: usize,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        IngestState {
            publisher,
            write_keys,
            rate_per_sec_per_key,
            rate_per_sec_per_peer,
            timeout,
            max_message_bytes,
            in_flight: Semaphore::new(max_in_flight_bytes.max(MAX_REQUEST_BYTES)),
            clock,
            metrics,
            buckets: Mutex::default(),
        }
    }
}

/// Serves in the current actix system until the returned server is stopped.
pub fn start(
    state: IngestState,
    listener: TcpListener,
    workers: usize,
) -> std::io::Result<actix_web::dev::ServerHandle> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            // Bodies are read by `ingest` itself, within the request limit.
            .route("/v1/{route}", web::post().to(ingest))
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok(handle)
}

fn answer(state: &IngestState, code: u16, body: serde_json::Value) -> HttpResponse {
    state.metrics.ingest_request(code);
    let status =
        actix_web::http::StatusCode::from_u16(code).unwrap_or(actix_web::http::StatusCode::OK);
    HttpResponse::build(status).json(body)
}

fn refuse(state: &IngestState, code: u16, message: impl Into<String>) -> HttpResponse {
    answer(
        state,
        code,
        json!({"success": false, "message": message.into()}),
    )
}

fn retry_later(state: &IngestState, code: u16, seconds: u64, message: String) -> HttpResponse {
    state.metrics.ingest_request(code);
    let status = actix_web::http::StatusCode::from_u16(code)
        .unwrap_or(actix_web::http::StatusCode::SERVICE_UNAVAILABLE);
    HttpResponse::build(status)
        .insert_header((header::RETRY_AFTER, seconds.max(1).to_string()))
        .json(json!({"success": false, "message": message}))
}

/// The write key of `Authorization: Basic base64(<key>:)`, if the header is there.
fn basic_key(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(
        text.split_once(':')
            .map_or(text.as_str(), |(k, _)| k)
            .to_string(),
    )
}

/// Reads the body, at most [`MAX_REQUEST_BYTES`] of it, gzip undone.
async fn read_body(req: &HttpRequest, mut payload: web::Payload) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| format!("reading the request body: {e}"))?;
        if body.len() + chunk.len() > MAX_REQUEST_BYTES {
            return Err(RequestError::TooLarge(body.len() + chunk.len()).to_string());
        }
        body.extend_from_slice(&chunk);
    }
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    undo_encoding(encoding, body)
}

/// A body as its `Content-Encoding` says (none, `identity` or `gzip`), at most
/// [`MAX_REQUEST_BYTES`] once decompressed.
pub fn undo_encoding(encoding: Option<&str>, body: Vec<u8>) -> Result<Vec<u8>, String> {
    let encoding = encoding.map(|v| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(body),
        Some("gzip") => {
            let mut plain = Vec::new();
            // One byte past the limit tells "over" from "at".
            flate2::read::GzDecoder::new(&body[..])
                .take(MAX_REQUEST_BYTES as u64 + 1)
                .read_to_end(&mut plain)
                .map_err(|e| format!("the body is not valid gzip: {e}"))?;
            if plain.len() > MAX_REQUEST_BYTES {
                return Err(format!(
                    "the request body is over {MAX_REQUEST_BYTES} bytes once decompressed"
                ));
            }
            Ok(plain)
        }
        Some(other) => Err(format!(
            "Content-Encoding {other:?} is not supported (gzip is)"
        )),
    }
}

/// Most token buckets kept (write keys and client addresses): past it the idle ones go.
const MAX_BUCKETS: usize = 100_000;

/// A request's answer when its write key is over `ingest.rate_per_sec_per_key`.
fn over_rate(state: &IngestState, key: &str, now_ms: i64) -> Option<HttpResponse> {
    let rate = state.rate_per_sec_per_key?;
    over_bucket(state, format!("key:{key}"), rate, now_ms, "this write key")
}

/// A request without a key in its header, when its client address is over
/// `ingest.rate_per_sec_per_peer`.
fn over_peer_rate(state: &IngestState, req: &HttpRequest, now_ms: i64) -> Option<HttpResponse> {
    let peer = req.peer_addr().map(|a| a.ip().to_string())?;
    let rate = state.rate_per_sec_per_peer;
    over_bucket(
        state,
        format!("peer:{peer}"),
        rate,
        now_ms,
        "this client address",
    )
}

fn over_bucket(
    state: &IngestState,
    bucket: String,
    rate: f64,
    now_ms: i64,
    whose: &str,
) -> Option<HttpResponse> {
    let taken = {
        let mut buckets = state.buckets.lock();
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&bucket) {
            // Full buckets are the idle ones: forgetting them forgives nothing.
            buckets.retain(|_, b| !b.is_full(now_ms));
        }
        buckets
            .entry(bucket)
            .or_insert_with(|| TokenBucket::new(rate, now_ms))
            .take(now_ms)
    };
    let wait_ms = taken.err()?;
    Some(retry_later(
        state,
        429,
        wait_ms.div_ceil(1000),
        format!("over {rate} requests per second for {whose}"),
    ))
}

fn broker_busy(state: &IngestState) -> HttpResponse {
    retry_later(
        state,
        503,
        1,
        "too many requests are waiting for the broker".into(),
    )
}

/// Times every request, whatever its answer (`herald_ingest_request_seconds`).
async fn ingest(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<IngestState>,
) -> HttpResponse {
    let started = Instant::now();
    let response = handle(req, path, payload, state.clone()).await;
    state
        .metrics
        .ingest_request_took(started.elapsed().as_secs_f64());
    response
}

/// A request's order of checks is cheapest first, so that what a client cannot be served
/// costs the least: a write key in the header is checked and rate-limited before the body is
/// read, and the body's bytes are reserved from `ingest.max_in_flight_bytes` (by its
/// `Content-Length`) before they are read. A request without a key in its header is
/// rate-limited by its client address before its body is read, and its write key (in the body)
/// checked once parsed. Every body must arrive within `ingest.timeout_ms` (else 408).
/// 401s say no more than "unauthorized" (which key was wrong helps only a guesser).
async fn handle(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<IngestState>,
) -> HttpResponse {
    let Some(route) = Route::parse(&path) else {
        return refuse(&state, 404, format!("no such endpoint: /v1/{path}"));
    };
    let arrived_at = state.clock.now_ms();
    let header_key = basic_key(&req);
    if let Some(key) = &header_key {
        if !state.write_keys.contains(key) {
            return refuse(&state, 401, "unauthorized");
        }
        if let Some(answer) = over_rate(&state, key, arrived_at) {
            return answer;
        }
    } else if let Some(answer) = over_peer_rate(&state, &req, arrived_at) {
        return answer;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BYTES) {
        return refuse(
            &state,
            400,
            RequestError::TooLarge(declared.unwrap_or(0)).to_string(),
        );
    }
    // Without a length the body may be as large as the limit.
    let reserved = declared.unwrap_or(MAX_REQUEST_BYTES).max(1);
    let Ok(mut permit) = state.in_flight.try_acquire_many(reserved as u32) else {
        return broker_busy(&state);
    };
    let body = match tokio::time::timeout(state.timeout, read_body(&req, payload)).await {
        Ok(Ok(b)) => b,
        Ok(Err(why)) => return refuse(&state, 400, why),
        Err(_) => {
            return refuse(
                &state,
                408,
                format!(
                    "the request body did not arrive within {} ms",
                    state.timeout.as_millis()
                ),
            )
        }
    };
    // A gzip body takes more once decompressed than its length reserved.
    if body.len() > reserved {
        match state
            .in_flight
            .try_acquire_many((body.len() - reserved) as u32)
        {
            Ok(more) => permit.merge(more),
            Err(_) => return broker_busy(&state),
        }
    }
    let _permit = permit;
    let received_at = state.clock.now_ms();
    let prepared = segment::prepare(
        route,
        &body,
        received_at,
        header_key.as_deref(),
        state.max_message_bytes,
    );
    let request = match prepared {
        Ok(r) => r,
        // Without a key in the header, a body that cannot be read has no key either.
        Err(_) if header_key.is_none() => return refuse(&state, 401, "unauthorized"),
        Err(e) => return refuse(&state, 400, e.to_string()),
    };
    if header_key.is_none() {
        match &request.write_key {
            Some(k) if state.write_keys.contains(k) => {
                if let Some(answer) = over_rate(&state, k, received_at) {
                    return answer;
                }
            }
            _ => return refuse(&state, 401, "unauthorized"),
        }
    }
    let mut messages = Vec::new();
    let mut refused = Vec::new();
    let mut rejected = Vec::new();
    for m in request.messages {
        match m.verdict {
            Ok(_) => messages.push(Publication {
                key: m.key,
                payload: m.payload,
            }),
            Err(why) => {
                rejected.push(json!({"index": m.index, "reason": why.to_string()}));
                refused.push(RefusedPublication {
                    key: m.key,
                    payload: m.payload,
                    error: why.to_string(),
                });
            }
        }
    }
    let (published, dead) = (messages.len(), refused.len());
    let publish = state.publisher.publish(messages, refused);
    match tokio::time::timeout(state.timeout, publish).await {
        Ok(Ok(())) => {
            state.metrics.ingest_messages("published", published);
            state.metrics.ingest_messages("rejected", dead);
            let mut body = json!({"success": true});
            if !rejected.is_empty() {
                body["rejected"] = serde_json::Value::Array(rejected);
            }
            answer(&state, 200, body)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "ingest request not published; answered 503");
            retry_later(&state, 503, 1, e.to_string())
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = state.timeout.as_millis() as u64,
                "the broker did not acknowledge an ingest request in time; answered 503"
            );
            retry_later(
                &state,
                503,
                1,
                format!(
                    "the broker did not acknowledge within {} ms",
                    state.timeout.as_millis()
                ),
            )
        }
    }
}
