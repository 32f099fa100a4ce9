//! Herald's HTTP listener (REFERENCE.md §5, §6): the webhook receiver
//! `POST /webhooks/{provider}`, and `/metrics`, `/healthz`, `/readyz`.
//!
//! A callback is checked in this order, each failure with its code and no state change:
//! unknown provider `404`, body over 64 KiB `413`, signature or timestamp `401`, body `400`.
//! `204` is answered only once the callback's effect is durable; a callback Herald cannot
//! apply yet (its send is not recorded) or a store that is down answers `503`, so the
//! provider calls again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::callback_formats::{self, Receiver, Refusal, MAX_BODY};
use crate::ports::{CallbackError, CallbackSink, Clock, Probe};
use crate::telemetry::Metrics;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures::StreamExt;

/// What the listener serves.
pub struct HttpState {
    /// Provider name → how its callbacks are verified and read.
    pub receivers: HashMap<String, Receiver>,
    pub callbacks: Arc<dyn CallbackSink>,
    pub metrics: Arc<Metrics>,
    pub probes: Vec<Arc<dyn Probe>>,
    pub clock: Arc<dyn Clock>,
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Reads the body, refusing (before reading it all) anything over [`MAX_BODY`].
async fn read_body(req: &HttpRequest, mut payload: web::Payload) -> Result<Vec<u8>, Refusal> {
    let declared = header(req, "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(Refusal::TooLarge);
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(1024).min(MAX_BODY as u64) as usize);
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| Refusal::Malformed(format!("unreadable body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(Refusal::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn handle_webhook(
    state: &HttpState,
    provider: &str,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<(), Refusal> {
    let receiver = match state.receivers.get(provider) {
        None | Some(Receiver::NoCallbacks) => return Err(Refusal::UnknownProvider),
        Some(r) => r,
    };
    let body = read_body(req, payload).await?;
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let request = callback_formats::Request {
        provider,
        headers: &headers,
        query: req.query_string(),
        now_secs: state.clock.now_ms().div_euclid(1000),
    };
    let callbacks = callback_formats::parse(receiver, &request, &body)?;
    // The answer is 2xx only once every one of them is durable.
    state
        .callbacks
        .deliver_all(callbacks)
        .await
        .map_err(|e| match e {
            CallbackError::NotReady(id) => Refusal::NotYet(format!(
                "the send of {id} is not recorded yet; call back later"
            )),
            CallbackError::Store(e) => Refusal::Store(e.to_string()),
        })
}

async fn webhook(
    state: web::Data<HttpState>,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let provider = path.into_inner();
    let result = handle_webhook(&state, &provider, &req, payload).await;
    // Unknown names are not labels (a scanner must not grow the metric without bound).
    let label = if state.receivers.contains_key(&provider) {
        provider.as_str()
    } else {
        "unknown"
    };
    match result {
        Ok(()) => {
            state.metrics.webhook_request(label, 204);
            HttpResponse::NoContent().finish()
        }
        Err(refusal) => {
            let status = refusal.status();
            state.metrics.webhook_request(label, status.as_u16());
            if status.is_server_error() {
                tracing::warn!(provider = label, error = %refusal, "callback not applied yet");
            } else {
                tracing::debug!(provider = label, error = %refusal, code = status.as_u16(), "callback refused");
            }
            HttpResponse::build(status)
                .content_type("application/json")
                .body(serde_json::json!({ "error": refusal.to_string() }).to_string())
        }
    }
}

async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<HttpState>) -> HttpResponse {
    let checks = state.probes.iter().map(|p| {
        let p = p.clone();
        async move {
            let result = tokio::time::timeout(std::time::Duration::from_secs(2), p.check())
                .await
                .unwrap_or_else(|_| Err("no answer within 2 s".into()));
            (p.name(), result)
        }
    });
    let results = futures::future::join_all(checks).await;
    let down: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    if down.is_empty() {
        HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("not ready: {}\n", down.join("; ")))
    }
}

fn webhooks(cfg: &mut web::ServiceConfig) {
    cfg.route("/webhooks/{provider}", web::post().to(webhook));
}

fn ops(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// Bound listeners (bound before anything else starts, so a taken port is a one-line error
/// at start).
pub struct Listeners {
    pub main: std::net::TcpListener,
    pub metrics: Option<std::net::TcpListener>,
}

impl Listeners {
    pub fn bind(listen: SocketAddr, metrics_listen: Option<SocketAddr>) -> std::io::Result<Self> {
        let bind = |addr: SocketAddr| {
            std::net::TcpListener::bind(addr)
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        };
        Ok(Listeners {
            main: bind(listen)?,
            metrics: metrics_listen.map(bind).transpose()?,
        })
    }
}

/// Serves in the current actix system until the returned servers are stopped.
pub fn start(
    state: HttpState,
    listeners: Listeners,
    workers: usize,
) -> std::io::Result<Vec<actix_web::dev::ServerHandle>> {
    let state = web::Data::new(state);
    let mut handles = Vec::new();
    let main_state = state.clone();
    let with_ops = listeners.metrics.is_none();
    let main = HttpServer::new(move || {
        let app = App::new().app_data(main_state.clone()).configure(webhooks);
        if with_ops {
            app.configure(ops)
        } else {
            app
        }
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listeners.main)?
    .run();
    handles.push(main.handle());
    actix_web::rt::spawn(main);
    if let Some(listener) = listeners.metrics {
        let ops_state = state.clone();
        let server = HttpServer::new(move || App::new().app_data(ops_state.clone()).configure(ops))
            .workers(1)
            .disable_signals()
            .shutdown_timeout(1)
            .listen(listener)?
            .run();
        handles.push(server.handle());
        actix_web::rt::spawn(server);
    }
    Ok(handles)
}
