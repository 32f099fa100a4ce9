//! `provider-sim --kind sendgrid`: SendGrid's Mail Send as Herald uses it —
//! `POST /v3/mail/send` (and `/mail/send`), bearer API key when `--token` is set — answering
//! `202` with `X-Message-ID`, then posting Event Webhook arrays (`processed` and the step's
//! event) to `--event-webhook-url`, signed with ECDSA P-256 over timestamp + body.
//!
//! The signing key is derived from the webhook secret, so a test knows the public key
//! without reading the simulator's output: [`public_key`] (also `GET /v1/public-key`, and
//! logged at start).

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::ports::{Clock, SystemClock};

use super::{bearer_ok, deliver, with_retry_after, Received, Sim};

/// The simulator's signing key for a secret: SHA-256 of it, hashed again until it is a valid
/// P-256 scalar (the first hash is, but for a 2^-128 chance).
fn signing_key(secret: &[u8]) -> SigningKey {
    let mut seed: [u8; 32] = Sha256::digest(secret).into();
    loop {
        if let Ok(key) = SigningKey::from_slice(&seed) {
            return key;
        }
        seed = Sha256::digest(seed).into();
    }
}

/// Base64 DER (SubjectPublicKeyInfo) public key, as SendGrid shows it.
pub fn public_key(secret: &[u8]) -> String {
    let der = signing_key(secret)
        .verifying_key()
        .to_public_key_der()
        .expect("a P-256 public key encodes");
    base64::engine::general_purpose::STANDARD.encode(der.as_bytes())
}

/// The signature of `body` at `timestamp` with the key of `secret`.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    sign(&signing_key(secret), timestamp, body)
}

fn sign(key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
    let mut signed = timestamp.as_bytes().to_vec();
    signed.extend_from_slice(body);
    let signature: Signature = key.sign(&signed);
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
}

fn error(status: u16, message: &str) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(json!({"errors": [{"message": message, "field": null}]}))
}

pub(super) async fn send(sim: web::Data<Sim>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if !bearer_ok(&req, sim.options.token.as_deref()) {
        return error(
            401,
            "The provided authorization grant is invalid, expired, or revoked",
        );
    }
    let Ok(mail) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "Bad Request");
    };
    let personalization = &mail["personalizations"][0];
    let Some(to) = personalization["to"][0]["email"]
        .as_str()
        .map(str::to_string)
    else {
        return error(
            400,
            "The to array is required for all personalization objects.",
        );
    };
    if mail["from"]["email"].as_str().is_none() {
        return error(
            400,
            "The from object must be provided for every email send.",
        );
    }
    let args = &personalization["custom_args"];
    let message_id = args["herald_message_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let attempt = args["herald_attempt"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let text = mail["content"][0]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let step = sim.decide(&to);
    let accepted = (200..300).contains(&step.status);
    let x_message_id = accepted.then(|| format!("sgsim{:016x}", sim.next_provider_id()));
    let event = accepted
        .then(|| step.callback.clone().unwrap_or_else(|| "delivered".into()))
        .filter(|c| c != "none");
    sim.receive(Received {
        // No idempotency key at SendGrid: the same message and attempt again is a repeat.
        idempotency_key: format!("{message_id}:{attempt}"),
        id: message_id.clone(),
        to: to.clone(),
        body: text,
        channel: "email".into(),
        callback_url: sim.options.event_webhook_url.clone().unwrap_or_default(),
        received_at_ms: SystemClock.now_ms(),
        status: step.status,
        provider_message_id: x_message_id.clone(),
        callback: event.clone(),
        lookup: accepted.then(|| step.lookup_status()),
        repeats: 0,
    });
    let latency = step.latency_ms.unwrap_or(sim.options.latency_ms);
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    let Some(x_message_id) = x_message_id else {
        return with_retry_after(error(step.status, "simulated error"), step.retry_after);
    };
    if let (Some(event), Some(url)) = (event, sim.options.event_webhook_url.clone()) {
        let now = SystemClock.now_ms() / 1000;
        let n = sim.next_provider_id();
        let sg_message_id = format!("{x_message_id}.filterdrecv-sim-{n}.0");
        let one = |kind: &str, i: u64| {
            let mut e = json!({
                "email": to,
                "timestamp": now,
                "event": kind,
                "sg_event_id": format!("sim-{n}-{i}"),
                "sg_message_id": sg_message_id,
                "herald_message_id": message_id,
                "herald_attempt": attempt,
            });
            if kind == "bounce" || kind == "dropped" {
                e["reason"] = json!("550 5.1.1 The email account does not exist (simulated)");
            }
            e
        };
        let events = json!([one("processed", 0), one(&event, 1)]).to_string();
        let key = signing_key(&sim.options.webhook_secret);
        let sim: Arc<Sim> = sim.into_inner();
        actix_web::rt::spawn(deliver(sim, url, "application/json", events, move |body| {
            let ts = (SystemClock.now_ms() / 1000).to_string();
            vec![
                (
                    "X-Twilio-Email-Event-Webhook-Signature",
                    sign(&key, &ts, body.as_bytes()),
                ),
                ("X-Twilio-Email-Event-Webhook-Timestamp", ts),
            ]
        }));
    }
    HttpResponse::Accepted()
        .insert_header(("X-Message-ID", x_message_id))
        .finish()
}

pub(super) async fn public_key_route(sim: web::Data<Sim>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain")
        .body(public_key(&sim.options.webhook_secret))
}
