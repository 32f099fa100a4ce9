//! `provider-sim --kind twilio`: Twilio's Messages API as Herald uses it —
//! `POST /2010-04-01/Accounts/{sid}/Messages.json`, form-encoded, Basic auth `sid:auth token`
//! (the token is the simulator's webhook secret, as Twilio's auth token both authenticates
//! and signs) — answering `201` with a message `sid`, or Twilio's error JSON. Accepted sends
//! get form-encoded status callbacks at their `StatusCallback`, signed with
//! `X-Twilio-Signature`.
//!
//! Twilio takes no idempotency key: a repeated `To` + `Body` is counted as a repeated send.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde_json::json;

use crate::domain::twilio;
use crate::ports::{Clock, SystemClock};

use super::{deliver, with_retry_after, Received, Sim};

fn error(status: u16, code: &str, message: &str) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let code_json = code
        .parse::<u64>()
        .map_or_else(|_| json!(code), |n| json!(n));
    HttpResponse::build(status).json(json!({
        "code": code_json,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    }))
}

fn authorised(req: &HttpRequest, sid: &str, token: &[u8]) -> bool {
    let Some(value) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value.trim()) else {
        return false;
    };
    let mut expected = format!("{sid}:").into_bytes();
    expected.extend_from_slice(token);
    decoded == expected
}

pub(super) async fn send(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let account = path.into_inner();
    if !authorised(&req, &account, &sim.options.webhook_secret) {
        return error(401, "20003", "Authenticate");
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let Some(to) = field("To") else {
        return error(400, "21604", "A 'To' phone number is required.");
    };
    let Some(from) = field("From").or_else(|| field("MessagingServiceSid")) else {
        return error(400, "21603", "A 'From' phone number is required.");
    };
    let Some(text) = field("Body") else {
        return error(400, "21602", "Message body is required.");
    };
    let callback_url = field("StatusCallback").unwrap_or_default();
    let step = sim.decide(&to);
    let accepted = (200..300).contains(&step.status);
    let sid = accepted.then(|| format!("SM{:032x}", sim.next_provider_id()));
    let callback = accepted
        .then(|| step.callback.clone().unwrap_or_else(|| "delivered".into()))
        .filter(|c| c != "none");
    let repeated = sim.receive(Received {
        idempotency_key: format!("{to}\n{text}"),
        id: String::new(),
        to: to.clone(),
        body: text.clone(),
        channel: "sms".into(),
        callback_url: callback_url.clone(),
        received_at_ms: SystemClock.now_ms(),
        status: step.status,
        provider_message_id: sid.clone(),
        callback: callback.clone(),
        lookup: accepted.then(|| step.lookup_status()),
        repeats: 0,
    });
    let _ = repeated; // counted; Twilio sends it again all the same
    let latency = step.latency_ms.unwrap_or(sim.options.latency_ms);
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    let Some(sid) = sid else {
        let code = step
            .error_code
            .clone()
            .unwrap_or_else(|| match step.status {
                429 => "20429".into(),
                s if s >= 500 => "20500".into(),
                _ => "21211".into(),
            });
        return with_retry_after(
            error(step.status, &code, "simulated error"),
            step.retry_after,
        );
    };
    if let (Some(status), false) = (callback, callback_url.is_empty()) {
        let mut params = vec![
            ("MessageSid".to_string(), sid.clone()),
            ("SmsSid".to_string(), sid.clone()),
            ("AccountSid".to_string(), account.clone()),
            ("From".to_string(), from.clone()),
            ("To".to_string(), to.clone()),
            ("MessageStatus".to_string(), status.clone()),
            ("SmsStatus".to_string(), status.clone()),
            ("ApiVersion".to_string(), "2010-04-01".to_string()),
        ];
        if let Some(code) = step
            .error_code
            .clone()
            .or_else(|| matches!(status.as_str(), "undelivered" | "failed").then(|| "30003".into()))
        {
            params.push(("ErrorCode".to_string(), code));
        }
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter())
            .finish();
        let token = sim.options.webhook_secret.clone();
        let idempotency = format!("{}-{sid}-{status}", account);
        let url = callback_url.clone();
        let sim: Arc<Sim> = sim.into_inner();
        actix_web::rt::spawn(deliver(
            sim,
            callback_url,
            "application/x-www-form-urlencoded",
            body,
            move |_| {
                vec![
                    ("X-Twilio-Signature", twilio::sign(&token, &url, &params)),
                    ("I-Twilio-Idempotency-Token", idempotency.clone()),
                ]
            },
        ));
        return created(&sid, &account, &to, &from, &text);
    }
    created(&sid, &account, &to, &from, &text)
}

/// `GET /2010-04-01/Accounts/{sid}/Messages/{MessageSid}.json`: the Message resource, its
/// `status` the send's final one (a status lookup).
pub(super) async fn fetch(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (account, message) = path.into_inner();
    if !authorised(&req, &account, &sim.options.webhook_secret) {
        return error(401, "20003", "Authenticate");
    }
    let Some(r) = sim.looked_up(&message) else {
        return error(
            404,
            "20404",
            &format!("The requested resource /2010-04-01/Accounts/{account}/Messages/{message}.json was not found"),
        );
    };
    let status = r.lookup.unwrap_or_else(|| "failed".into());
    let error_code = matches!(status.as_str(), "undelivered" | "failed").then_some(30003);
    HttpResponse::Ok().json(json!({
        "sid": message,
        "account_sid": account,
        "to": r.to,
        "body": r.body,
        "status": status,
        "error_code": error_code,
        "error_message": error_code.map(|_| "Unreachable destination handset"),
        "num_segments": "1",
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "uri": format!("/2010-04-01/Accounts/{account}/Messages/{message}.json"),
    }))
}

fn created(sid: &str, account: &str, to: &str, from: &str, body: &str) -> HttpResponse {
    HttpResponse::Created().json(json!({
        "sid": sid,
        "account_sid": account,
        "to": to,
        "from": from,
        "body": body,
        "status": "queued",
        "num_segments": "1",
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "uri": format!("/2010-04-01/Accounts/{account}/Messages/{sid}.json"),
    }))
}
