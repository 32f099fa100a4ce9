//! Herald's HTTP listener (REFERENCE.md §5, §6): the webhook receiver
//! `POST /webhooks/{provider}`, and `/metrics`, `/healthz`, `/readyz`.
//!
//! The webhook listener faces providers, so it is public in most deployments: there
//! `/metrics` answers only peers on loopback (others get `404`), and `/readyz` tells other
//! peers only ready or not, without naming what is down. `http.metrics_listen` moves all three
//! to their own listener, which answers everyone in full. `/readyz` answers from the results
//! of a probe task that checks every backend each second, so requests cost no backend calls.
//!
//! A callback is checked in this order, each failure with its code and no state change:
//! unknown provider `404`, body over 64 KiB `413`, signature or timestamp `401`, body `400`.
//! `204` is answered only once the callback's effect is durable; a callback Herald cannot
//! apply yet (its send is not recorded) or a store that is down answers `503`, so the
//! provider calls again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::adapters::providers::callbacks::{self, Receiver, Refusal, MAX_BODY};
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
    pub readiness: Arc<Readiness>,
    pub clock: Arc<dyn Clock>,
}

/// How often the probe task checks every backend, and how long one check may take.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The latest result of every backend's probe, refreshed by [`Readiness::run`].
pub struct Readiness {
    probes: Vec<Arc<dyn Probe>>,
    /// `None` until the first round finished: not ready.
    latest: RwLock<Option<(Instant, Vec<String>)>>,
}

impl Readiness {
    pub fn new(probes: Vec<Arc<dyn Probe>>) -> Arc<Self> {
        Arc::new(Readiness {
            probes,
            latest: RwLock::new(None),
        })
    }

    /// One round: every probe concurrently, each bounded by [`PROBE_TIMEOUT`].
    pub async fn refresh(&self) {
        let checks = self.probes.iter().map(|p| {
            let p = p.clone();
            async move {
                let result = tokio::time::timeout(PROBE_TIMEOUT, p.check())
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")));
                result.err().map(|e| format!("{}: {e}", p.name()))
            }
        });
        let down: Vec<String> = futures::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect();
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), down));
    }

    /// Refreshes every [`PROBE_INTERVAL`] for as long as the process runs.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.refresh().await;
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// `Ok` when every backend answered in the latest round; otherwise what is down.
    pub fn current(&self) -> Result<(), String> {
        let latest = self.latest.read().unwrap_or_else(|e| e.into_inner());
        match &*latest {
            None => Err("starting: backends not checked yet".into()),
            Some((_, down)) if down.is_empty() => Ok(()),
            Some((at, down)) => Err(format!(
                "{} (checked {} ms ago)",
                down.join("; "),
                at.elapsed().as_millis()
            )),
        }
    }
}

/// Whether the request came over loopback (the operator's own machine or pod).
fn from_loopback(req: &HttpRequest) -> bool {
    req.peer_addr().is_some_and(|a| a.ip().is_loopback())
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
    let request = callbacks::Request {
        provider,
        headers: &headers,
        query: req.query_string(),
        now_secs: state.clock.now_ms().div_euclid(1000),
    };
    let callbacks = callbacks::parse(receiver, &request, &body)?;
    // The answer is 2xx only once every one of them is durable.
    state
        .callbacks
        .deliver_all(callbacks)
        .await
        .map_err(|e| match e {
            CallbackError::NotReady(id) => Refusal::NotYet(format!(
                "the send of {id} is not recorded yet; call back later"
            )),
            CallbackError::NotItsSend(why) => Refusal::Conflict(why),
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
            // What failed in a signature check helps only whoever forges one: the body says
            // no more than the code (the log at debug level has the reason).
            let error = match status.as_u16() {
                401 => "unauthorized".to_string(),
                403 => "forbidden".to_string(),
                _ => refusal.to_string(),
            };
            HttpResponse::build(status)
                .content_type("application/json")
                .body(serde_json::json!({ "error": error }).to_string())
        }
    }
}

/// Whether this listener serves `/metrics` and the reasons of `/readyz` to every peer (the
/// `http.metrics_listen` one) or only to peers on loopback (the webhook listener).
#[derive(Clone, Copy)]
struct OpsAudience {
    everyone: bool,
}

impl OpsAudience {
    fn in_full(&self, req: &HttpRequest) -> bool {
        self.everyone || from_loopback(req)
    }
}

async fn metrics(
    state: web::Data<HttpState>,
    audience: web::Data<OpsAudience>,
    req: HttpRequest,
) -> HttpResponse {
    if !audience.in_full(&req) {
        return HttpResponse::NotFound().finish();
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(
    state: web::Data<HttpState>,
    audience: web::Data<OpsAudience>,
    req: HttpRequest,
) -> HttpResponse {
    match state.readiness.current() {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"),
        Err(reason) if audience.in_full(&req) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("not ready: {reason}\n")),
        Err(_) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("not ready\n"),
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
        let app = App::new()
            .app_data(main_state.clone())
            .app_data(web::Data::new(OpsAudience { everyone: false }))
            .configure(webhooks);
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
        let server = HttpServer::new(move || {
            App::new()
                .app_data(ops_state.clone())
                .app_data(web::Data::new(OpsAudience { everyone: true }))
                .configure(ops)
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{BoxFut, Callback, SystemClock};
    use actix_web::test::{call_service, init_service, read_body, TestRequest};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct CountingProbe {
        calls: Arc<AtomicUsize>,
        down: bool,
    }

    impl Probe for CountingProbe {
        fn name(&self) -> &'static str {
            "redis"
        }
        fn check(&self) -> BoxFut<Result<(), String>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let down = self.down;
            Box::pin(async move {
                if down {
                    Err("connection refused".into())
                } else {
                    Ok(())
                }
            })
        }
    }

    /// Callbacks that pass their checks would land here; the tests' never do.
    struct NoSink;
    impl CallbackSink for NoSink {
        fn deliver(&self, _: Callback) -> BoxFut<Result<(), CallbackError>> {
            Box::pin(async {
                Err(CallbackError::Store(crate::ports::StoreError::Transient(
                    "not in this test".into(),
                )))
            })
        }
    }

    fn state(down: bool) -> (HttpState, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let probe = CountingProbe {
            calls: calls.clone(),
            down,
        };
        let receivers = HashMap::from([(
            "sim".to_string(),
            Receiver::Herald {
                secret: Some(b"s3cret".to_vec()),
            },
        )]);
        let state = HttpState {
            receivers,
            callbacks: Arc::new(NoSink),
            metrics: Arc::new(Metrics::new()),
            readiness: Readiness::new(vec![Arc::new(probe)]),
            clock: Arc::new(SystemClock),
        };
        (state, calls)
    }

    const OUTSIDE: &str = "203.0.113.7:40000";
    const LOOPBACK: &str = "127.0.0.1:40000";

    macro_rules! app {
        ($state:expr, $everyone:expr) => {
            init_service(
                App::new()
                    .app_data(web::Data::new($state))
                    .app_data(web::Data::new(OpsAudience {
                        everyone: $everyone,
                    }))
                    .configure(webhooks)
                    .configure(ops),
            )
            .await
        };
    }

    #[actix_web::test]
    async fn the_webhook_listener_shows_metrics_and_readiness_reasons_only_to_loopback() {
        let (state, _) = state(true);
        state.readiness.refresh().await;
        let app = app!(state, false);
        let get = |path: &str, peer: &str| {
            TestRequest::get()
                .uri(path)
                .peer_addr(peer.parse().unwrap())
                .to_request()
        };
        let outside = call_service(&app, get("/metrics", OUTSIDE)).await;
        assert_eq!(outside.status(), 404, "/metrics to a peer off loopback");
        let local = call_service(&app, get("/metrics", LOOPBACK)).await;
        assert_eq!(local.status(), 200);
        assert!(String::from_utf8_lossy(&read_body(local).await).contains("herald_"));

        let outside = call_service(&app, get("/readyz", OUTSIDE)).await;
        assert_eq!(outside.status(), 503);
        assert_eq!(
            read_body(outside).await,
            "not ready\n",
            "no reason off loopback"
        );
        let local = call_service(&app, get("/readyz", LOOPBACK)).await;
        assert_eq!(local.status(), 503);
        let body = String::from_utf8_lossy(&read_body(local).await).into_owned();
        assert!(body.contains("redis: connection refused"), "{body}");

        let health = call_service(&app, get("/healthz", OUTSIDE)).await;
        assert_eq!(health.status(), 200, "liveness stays open to every peer");
    }

    #[actix_web::test]
    async fn the_ops_listener_answers_every_peer_in_full() {
        let (state, _) = state(true);
        state.readiness.refresh().await;
        let app = app!(state, true);
        let req = |path: &str| {
            TestRequest::get()
                .uri(path)
                .peer_addr(OUTSIDE.parse().unwrap())
                .to_request()
        };
        assert_eq!(call_service(&app, req("/metrics")).await.status(), 200);
        let ready = call_service(&app, req("/readyz")).await;
        let body = String::from_utf8_lossy(&read_body(ready).await).into_owned();
        assert!(body.contains("redis: connection refused"), "{body}");
    }

    #[actix_web::test]
    async fn readyz_answers_from_the_latest_probe_round_without_calling_backends() {
        let (state, calls) = state(false);
        let readiness = state.readiness.clone();
        let app = app!(state, false);
        let req = || {
            TestRequest::get()
                .uri("/readyz")
                .peer_addr(LOOPBACK.parse().unwrap())
                .to_request()
        };
        let before = call_service(&app, req()).await;
        assert_eq!(before.status(), 503, "not ready before the first round");
        readiness.refresh().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        for _ in 0..50 {
            assert_eq!(call_service(&app, req()).await.status(), 200);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "50 requests made no backend call"
        );
    }

    #[actix_web::test]
    async fn a_refused_signature_says_no_more_than_its_code() {
        let (state, _) = state(false);
        let app = app!(state, false);
        let now = SystemClock.now_ms() / 1000;
        let forged = TestRequest::post()
            .uri("/webhooks/sim")
            .peer_addr(OUTSIDE.parse().unwrap())
            .insert_header(("x-herald-timestamp", now.to_string()))
            .insert_header(("x-herald-signature", "v1=00ff"))
            .set_payload(r#"{"id":"m1","provider_message_id":"p1","status":"delivered"}"#)
            .to_request();
        let answer = call_service(&app, forged).await;
        assert_eq!(answer.status(), 401);
        assert_eq!(read_body(answer).await, r#"{"error":"unauthorized"}"#);
        let unsigned = TestRequest::post()
            .uri("/webhooks/sim")
            .set_payload("{}")
            .to_request();
        let answer = call_service(&app, unsigned).await;
        assert_eq!(answer.status(), 401);
        assert_eq!(read_body(answer).await, r#"{"error":"unauthorized"}"#);
    }
}
