//! `herald provider-sim`: a simulated SMS/email/push provider speaking REFERENCE.md §5 over HTTP,
//! for demos, tests, benchmarks and docker-compose.
//!
//! - `POST /v1/messages` takes a send. A repeated `Idempotency-Key` gets the first answer
//!   again and is not a new send (as real providers do). Failures are injected at the
//!   configured rates, or scripted per recipient (`POST /v1/script`).
//! - Accepted sends get a signed callback (`delivered`, `undelivered` or `failed`) POSTed to
//!   their `callback_url`, retried with backoff until Herald answers 2xx.
//! - `GET /v1/messages/{provider_message_id}` answers a status lookup: the send's final
//!   status (its callback's, or a script step's `lookup`), whether or not it called back.
//! - `GET /v1/messages` lists every send received, `GET /v1/stats` counts them.
//!
//! `--kind twilio` and `--kind sendgrid` speak those providers' send APIs instead and call
//! back in their formats, signed their way ([`twilio`], [`sendgrid`]); scripts, failure rates
//! and the listing work the same.

mod sendgrid;
mod twilio;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::domain::signature;
use crate::ports::{Clock, SystemClock};

/// How the simulator behaves when no script says otherwise.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub listen: SocketAddr,
    pub kind: SimKind,
    /// SendGrid: where events are posted (SendGrid's Event Webhook is set per account, not
    /// per message).
    pub event_webhook_url: Option<String>,
    /// Probability of a 5xx answer.
    pub fail_rate: f64,
    /// Probability of a 429 answer (with `Retry-After: 1`).
    pub throttle_rate: f64,
    /// Probability of a 400 answer (a terminal rejection).
    pub reject_rate: f64,
    /// Probability that an accepted send is called back `undelivered`.
    pub undelivered_rate: f64,
    pub latency_ms: u64,
    /// Delay before the callback is sent.
    pub callback_delay_ms: u64,
    /// Webhook kind: each callback is posted once (no retry) before the send is answered.
    pub callback_first: bool,
    pub webhook_secret: Vec<u8>,
    /// When set, sends must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub seed: u64,
}

/// Which provider API the simulator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SimKind {
    /// Herald's own provider protocol (`POST /v1/messages`).
    #[default]
    Webhook,
    Twilio,
    Sendgrid,
}

/// The base64 DER public key the SendGrid simulator's events verify with, for a secret.
pub fn sendgrid_public_key(secret: &[u8]) -> String {
    sendgrid::public_key(secret)
}

/// The `X-Twilio-Email-Event-Webhook-Signature` the SendGrid simulator sends for `body` at
/// `timestamp`, for a secret (for tests and the fuzz targets, which sign what they send).
pub fn sendgrid_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    sendgrid::signature(secret, timestamp, body)
}

/// One scripted answer for a recipient.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Step {
    /// HTTP status to answer.
    pub status: u16,
    /// `Retry-After` seconds (429/503).
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// For a 2xx: the callback to send (`delivered` by default; `none` sends none). Twilio:
    /// a `MessageStatus`; SendGrid: an event type.
    #[serde(default)]
    pub callback: Option<String>,
    /// Twilio: the `code` of a 4xx answer, or the `ErrorCode` of a callback.
    #[serde(default)]
    pub error_code: Option<String>,
    /// This answer's latency instead of `--latency-ms` (an answer slower than the sender's
    /// timeout: the send happened, the sender never heard).
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// For a 2xx: what a status lookup of the send answers (the callback's status by
    /// default, `delivered` when it sends none).
    #[serde(default)]
    pub lookup: Option<String>,
}

impl Step {
    /// What a status lookup of an accepted send answers.
    fn lookup_status(&self) -> String {
        self.lookup
            .clone()
            .or_else(|| self.callback.clone().filter(|c| c != "none"))
            .unwrap_or_else(|| "delivered".into())
    }
}

#[derive(Deserialize)]
struct Script {
    to: String,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct SendBody {
    id: String,
    to: String,
    body: String,
    channel: String,
    callback_url: String,
}

/// A send as the simulator received it.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub idempotency_key: String,
    pub id: String,
    pub to: String,
    pub body: String,
    pub channel: String,
    pub callback_url: String,
    pub received_at_ms: i64,
    pub status: u16,
    pub provider_message_id: Option<String>,
    pub callback: Option<String>,
    /// What a status lookup answers (accepted sends).
    pub lookup: Option<String>,
    /// Requests repeated with the same `Idempotency-Key` (answered, not sent again).
    pub repeats: u32,
}

#[derive(Default, Serialize)]
struct Stats {
    sends: u64,
    repeated_keys: u64,
    callbacks_sent: u64,
    callbacks_refused: u64,
    lookups: u64,
}

struct Answer {
    status: u16,
    retry_after: Option<u64>,
    provider_message_id: Option<String>,
}

struct Sim {
    options: SimOptions,
    rng: Mutex<SmallRng>,
    scripts: Mutex<HashMap<String, VecDeque<Step>>>,
    received: Mutex<Vec<Received>>,
    /// Idempotency key → index in `received`.
    by_key: Mutex<HashMap<String, usize>>,
    next_id: AtomicU64,
    repeated: AtomicU64,
    callbacks_sent: AtomicU64,
    callbacks_refused: AtomicU64,
    lookups: AtomicU64,
    http: reqwest::Client,
}

impl Sim {
    fn decide(&self, to: &str) -> Step {
        if let Some(step) = self.scripts.lock().get_mut(to).and_then(|q| q.pop_front()) {
            return step;
        }
        let o = &self.options;
        let mut rng = self.rng.lock();
        let x: f64 = rng.gen();
        if x < o.reject_rate {
            Step {
                status: 400,
                retry_after: None,
                callback: None,
                error_code: None,
                latency_ms: None,
                lookup: None,
            }
        } else if x < o.reject_rate + o.throttle_rate {
            Step {
                status: 429,
                retry_after: Some(1),
                callback: None,
                error_code: None,
                latency_ms: None,
                lookup: None,
            }
        } else if x < o.reject_rate + o.throttle_rate + o.fail_rate {
            Step {
                status: 503,
                retry_after: None,
                callback: None,
                error_code: None,
                latency_ms: None,
                lookup: None,
            }
        } else {
            let undelivered = rng.gen_bool(o.undelivered_rate.clamp(0.0, 1.0));
            Step {
                status: 200,
                retry_after: None,
                callback: Some(
                    if undelivered {
                        "undelivered"
                    } else {
                        "delivered"
                    }
                    .into(),
                ),
                error_code: None,
                latency_ms: None,
                lookup: None,
            }
        }
    }

    /// Records a send; a repeated `key` is counted (and returns its first record's index).
    fn receive(&self, record: Received) -> Option<usize> {
        // The same order as `send` takes them.
        let mut by_key = self.by_key.lock();
        let mut received = self.received.lock();
        if let Some(&i) = by_key.get(&record.idempotency_key) {
            self.repeated.fetch_add(1, Ordering::Relaxed);
            received[i].repeats += 1;
            return Some(i);
        }
        by_key.insert(record.idempotency_key.clone(), received.len());
        received.push(record);
        None
    }

    /// The send the provider named `provider_message_id`, for a status lookup.
    fn looked_up(&self, provider_message_id: &str) -> Option<Received> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.received
            .lock()
            .iter()
            .find(|r| r.provider_message_id.as_deref() == Some(provider_message_id))
            .cloned()
    }

    fn next_provider_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// POSTs a callback until it is accepted (2xx), like a real provider; `headers` signs each
/// attempt.
async fn deliver(
    sim: Arc<Sim>,
    url: String,
    content_type: &'static str,
    body: String,
    headers: impl Fn(&str) -> Vec<(&'static str, String)>,
) {
    tokio::time::sleep(Duration::from_millis(sim.options.callback_delay_ms)).await;
    let mut delay = Duration::from_millis(50);
    for _ in 0..60 {
        let mut request = sim
            .http
            .post(&url)
            .header("content-type", content_type)
            .body(body.clone());
        for (name, value) in headers(&body) {
            request = request.header(name, value);
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => {
                sim.callbacks_sent.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(r) => {
                sim.callbacks_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(status = %r.status(), url, "callback refused; retrying");
            }
            Err(e) => tracing::debug!(error = %e, url, "callback failed; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    tracing::warn!(url, "callback abandoned after 60 attempts");
}

fn answer(a: &Answer) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(a.status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = HttpResponse::build(status);
    if let Some(s) = a.retry_after {
        r.insert_header(("Retry-After", s.to_string()));
    }
    match &a.provider_message_id {
        Some(id) => r.json(serde_json::json!({ "provider_message_id": id })),
        None => r.json(serde_json::json!({ "error": format!("simulated {}", a.status) })),
    }
}

/// Whether a request carries `Authorization: Bearer <token>` (any request, with no token).
fn bearer_ok(req: &HttpRequest, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    auth == Some(&format!("Bearer {token}"))
}

/// A refusal with `Retry-After: <secs>` when the scripted step has one.
fn with_retry_after(mut response: HttpResponse, secs: Option<u64>) -> HttpResponse {
    if let Some(v) = secs.and_then(|s| s.to_string().parse().ok()) {
        response
            .headers_mut()
            .insert(actix_web::http::header::RETRY_AFTER, v);
    }
    response
}

async fn send(sim: web::Data<Sim>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if !bearer_ok(&req, sim.options.token.as_deref()) {
        return HttpResponse::Unauthorized().json(serde_json::json!({"error": "bad token"}));
    }
    let Some(key) = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return HttpResponse::BadRequest()
            .json(serde_json::json!({"error": "missing Idempotency-Key"}));
    };
    let parsed: SendBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return HttpResponse::BadRequest().json(serde_json::json!({"error": e.to_string()}))
        }
    };
    // A repeated key: the same answer, no new send.
    if let Some(&i) = sim.by_key.lock().get(&key) {
        sim.repeated.fetch_add(1, Ordering::Relaxed);
        let r = {
            let mut received = sim.received.lock();
            received[i].repeats += 1;
            received[i].clone()
        };
        return answer(&Answer {
            status: r.status,
            retry_after: None,
            provider_message_id: r.provider_message_id,
        });
    }
    let step = sim.decide(&parsed.to);
    let accepted = (200..300).contains(&step.status);
    let provider_message_id =
        accepted.then(|| format!("sim-{}", sim.next_id.fetch_add(1, Ordering::Relaxed)));
    let callback = if accepted {
        step.callback.clone().or_else(|| Some("delivered".into()))
    } else {
        None
    }
    .filter(|c| c != "none");
    let record = Received {
        idempotency_key: key.clone(),
        id: parsed.id.clone(),
        to: parsed.to.clone(),
        body: parsed.body,
        channel: parsed.channel,
        callback_url: parsed.callback_url.clone(),
        received_at_ms: SystemClock.now_ms(),
        status: step.status,
        provider_message_id: provider_message_id.clone(),
        callback: callback.clone(),
        lookup: accepted.then(|| step.lookup_status()),
        repeats: 0,
    };
    {
        let mut received = sim.received.lock();
        sim.by_key.lock().insert(key, received.len());
        received.push(record);
    }
    let latency = step.latency_ms.unwrap_or(sim.options.latency_ms);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if let (Some(status), Some(pid)) = (callback, provider_message_id.clone()) {
        let sim = sim.clone().into_inner();
        let body = serde_json::json!({
            "id": parsed.id,
            "provider_message_id": pid,
            "status": status,
            "error": (status != "delivered").then(|| format!("simulated {status}")),
            "retryable": status == "undelivered",
        })
        .to_string();
        if sim.options.callback_first {
            call_back_once(&sim, &parsed.callback_url, body).await;
        } else {
            actix_web::rt::spawn(call_back(sim, parsed.callback_url, body));
        }
    }
    answer(&Answer {
        status: step.status,
        retry_after: step.retry_after,
        provider_message_id,
    })
}

/// Herald's protocol: `X-Herald-Signature` over timestamp + body, fresh per attempt.
async fn call_back(sim: Arc<Sim>, url: String, body: String) {
    let secret = sim.options.webhook_secret.clone();
    deliver(sim, url, "application/json", body, move |body| {
        let ts = SystemClock.now_ms().div_euclid(1000).to_string();
        let sig = signature::sign(&secret, &ts, body.as_bytes());
        vec![("X-Herald-Timestamp", ts), ("X-Herald-Signature", sig)]
    })
    .await
}

/// Herald's protocol, one attempt only (a provider that does not retry its callbacks).
async fn call_back_once(sim: &Sim, url: &str, body: String) {
    let ts = SystemClock.now_ms().div_euclid(1000).to_string();
    let sig = signature::sign(&sim.options.webhook_secret, &ts, body.as_bytes());
    let sent = sim
        .http
        .post(url)
        .header("content-type", "application/json")
        .header("X-Herald-Timestamp", ts)
        .header("X-Herald-Signature", sig)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => sim.callbacks_sent.fetch_add(1, Ordering::Relaxed),
        _ => sim.callbacks_refused.fetch_add(1, Ordering::Relaxed),
    };
}

/// `GET /v1/messages/{provider_message_id}`: what became of a send (REFERENCE.md §16).
async fn look_up(sim: web::Data<Sim>, req: HttpRequest, pid: web::Path<String>) -> HttpResponse {
    if !bearer_ok(&req, sim.options.token.as_deref()) {
        return HttpResponse::Unauthorized().json(serde_json::json!({"error": "bad token"}));
    }
    let Some(status) = sim.looked_up(&pid).and_then(|r| r.lookup) else {
        return HttpResponse::NotFound().json(serde_json::json!({"error": "no such message"}));
    };
    HttpResponse::Ok().json(serde_json::json!({
        "status": status,
        "error": (status != "delivered").then(|| format!("simulated {status}")),
        "retryable": status == "undelivered",
    }))
}

async fn script(sim: web::Data<Sim>, body: web::Json<Script>) -> HttpResponse {
    let Script { to, steps } = body.into_inner();
    sim.scripts.lock().entry(to).or_default().extend(steps);
    HttpResponse::NoContent().finish()
}

async fn list(sim: web::Data<Sim>) -> HttpResponse {
    let received = sim.received.lock().clone();
    HttpResponse::Ok().json(received)
}

async fn stats(sim: web::Data<Sim>) -> HttpResponse {
    HttpResponse::Ok().json(Stats {
        sends: sim.received.lock().len() as u64,
        repeated_keys: sim.repeated.load(Ordering::Relaxed),
        callbacks_sent: sim.callbacks_sent.load(Ordering::Relaxed),
        callbacks_refused: sim.callbacks_refused.load(Ordering::Relaxed),
        lookups: sim.lookups.load(Ordering::Relaxed),
    })
}

/// Serves until SIGINT/SIGTERM.
pub async fn run(options: SimOptions) -> anyhow::Result<()> {
    let listen = options.listen;
    let sim = web::Data::new(Sim {
        rng: Mutex::new(SmallRng::seed_from_u64(options.seed)),
        options,
        scripts: Mutex::default(),
        received: Mutex::default(),
        by_key: Mutex::default(),
        next_id: AtomicU64::new(1),
        repeated: AtomicU64::new(0),
        callbacks_sent: AtomicU64::new(0),
        callbacks_refused: AtomicU64::new(0),
        lookups: AtomicU64::new(0),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
    });
    let kind = sim.options.kind;
    if kind == SimKind::Sendgrid {
        tracing::info!(
            public_key = %sendgrid::public_key(&sim.options.webhook_secret),
            "events are signed with this key's private half (webhook_public_key_env)"
        );
    }
    let server = HttpServer::new(move || {
        let app = App::new()
            .app_data(sim.clone())
            .app_data(web::PayloadConfig::new(1 << 20));
        let app = match kind {
            SimKind::Webhook => app
                .route("/v1/messages", web::post().to(send))
                .route("/v1/messages/{pid}", web::get().to(look_up)),
            SimKind::Twilio => app
                .route(
                    "/2010-04-01/Accounts/{sid}/Messages.json",
                    web::post().to(twilio::send),
                )
                .route(
                    "/2010-04-01/Accounts/{sid}/Messages/{message}.json",
                    web::get().to(twilio::fetch),
                ),
            SimKind::Sendgrid => app
                .route("/v3/mail/send", web::post().to(sendgrid::send))
                .route("/mail/send", web::post().to(sendgrid::send))
                .route("/v1/public-key", web::get().to(sendgrid::public_key_route)),
        };
        app.route("/v1/messages", web::get().to(list))
            .route("/v1/script", web::post().to(script))
            .route("/v1/stats", web::get().to(stats))
            .route(
                "/healthz",
                web::get().to(|| async { HttpResponse::Ok().body("ok\n") }),
            )
    })
    .workers(2)
    .bind(listen)
    .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?
    .run();
    tracing::info!(%listen, "provider-sim listening");
    server.await?;
    Ok(())
}
