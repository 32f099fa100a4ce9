//! Provider callbacks in each provider's own format (REFERENCE.md §5, §10), from a request's
//! headers and raw body to [`Callback`]s — verified first, each scheme its own way:
//!
//! - `webhook` (Herald's protocol): `X-Herald-Signature`, HMAC-SHA256; bad → `401`.
//! - `twilio`: form-encoded status callback, `X-Twilio-Signature` over the public URL Twilio
//!   posted to and the sorted parameters; bad → `403`.
//! - `sendgrid`: Event Webhook JSON array, ECDSA P-256 over timestamp + body; bad → `403`.
//!
//! SMTP and FCM have no callbacks: their names answer `404`.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use serde::Deserialize;

use crate::domain::sendgrid::{self, EventStatus, EventWebhookKey, SendGridSignatureError};
use crate::domain::signature::{self, SignatureError};
use crate::domain::suppression::SuppressionReason;
use crate::domain::twilio::{
    self, StatusEffect, TwilioSignatureError, MESSAGE_ID_PARAM, OPT_OUT_ERROR_CODE,
};
use crate::ports::{Callback, CallbackStatus};

/// Largest callback body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// How one provider's callbacks are received.
pub enum Receiver {
    /// `None`: the secret's variable was not set, so every callback is refused.
    Herald { secret: Option<Vec<u8>> },
    Twilio {
        auth_token: Vec<u8>,
        /// `<http.public_url>/webhooks/<name>`: what Twilio signed.
        url: String,
    },
    /// `None`: no `webhook_public_key_env` set, every callback is refused.
    SendGrid { key: Option<EventWebhookKey> },
    /// A provider without callbacks (SMTP, FCM).
    NoCallbacks,
}

/// Why a callback was refused, with its status code.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("unknown provider")]
    UnknownProvider,
    #[error("body over {MAX_BODY} bytes")]
    TooLarge,
    #[error("{0}")]
    Signature(#[from] SignatureError),
    #[error("{0}")]
    Forbidden(String),
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("{0}")]
    NotYet(String),
    /// A callback about a send its provider did not make.
    #[error("{0}")]
    Conflict(String),
    #[error("store unavailable: {0}")]
    Store(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::UnknownProvider => StatusCode::NOT_FOUND,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Signature(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            Refusal::Conflict(_) => StatusCode::CONFLICT,
            Refusal::NotYet(_) | Refusal::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<TwilioSignatureError> for Refusal {
    fn from(e: TwilioSignatureError) -> Self {
        Refusal::Forbidden(e.to_string())
    }
}

impl From<SendGridSignatureError> for Refusal {
    fn from(e: SendGridSignatureError) -> Self {
        Refusal::Forbidden(e.to_string())
    }
}

/// What a callback request brings besides its body.
pub struct Request<'a> {
    pub provider: &'a str,
    /// Lower-case header name → value.
    pub headers: &'a HashMap<String, String>,
    /// The raw query string (`""` when none).
    pub query: &'a str,
    pub now_secs: i64,
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Verifies and parses one callback request.
pub fn parse(receiver: &Receiver, req: &Request, body: &[u8]) -> Result<Vec<Callback>, Refusal> {
    match receiver {
        Receiver::Herald { secret } => {
            let secret = secret
                .as_ref()
                .ok_or(Refusal::Signature(SignatureError::Mismatch))?;
            signature::verify(
                secret,
                req.header("x-herald-timestamp"),
                req.header("x-herald-signature"),
                body,
                req.now_secs,
            )?;
            Ok(vec![parse_herald(req.provider, body)?])
        }
        Receiver::Twilio { auth_token, url } => parse_twilio(auth_token, url, req, body),
        Receiver::SendGrid { key } => {
            let key = key.as_ref().ok_or_else(|| {
                Refusal::Forbidden("no webhook public key is configured for this provider".into())
            })?;
            key.verify(
                req.header("x-twilio-email-event-webhook-timestamp"),
                req.header("x-twilio-email-event-webhook-signature"),
                body,
                req.now_secs,
            )?;
            parse_sendgrid(req.provider, body)
        }
        Receiver::NoCallbacks => Err(Refusal::UnknownProvider),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeraldBody {
    id: String,
    #[serde(default)]
    provider_message_id: Option<String>,
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    retryable: Option<bool>,
}

/// Longest message id a callback may name.
const MAX_ID: usize = 512;

fn parse_herald(provider: &str, body: &[u8]) -> Result<Callback, Refusal> {
    let parsed: HeraldBody =
        serde_json::from_slice(body).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let status = CallbackStatus::parse(&parsed.status)
        .ok_or_else(|| Refusal::Malformed(format!("unknown status {:?}", parsed.status)))?;
    if parsed.id.is_empty() || parsed.id.len() > MAX_ID {
        return Err(Refusal::Malformed(format!("id must be 1-{MAX_ID} bytes")));
    }
    Ok(Callback {
        provider: provider.to_string(),
        message_id: Some(parsed.id),
        provider_message_id: parsed.provider_message_id,
        status,
        error: parsed.error,
        retryable: parsed.retryable.unwrap_or(false),
        suppress: None,
    })
}

fn parse_twilio(
    auth_token: &[u8],
    url: &str,
    req: &Request,
    body: &[u8],
) -> Result<Vec<Callback>, Refusal> {
    let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    // Twilio signs the URL it was given: Herald gives `<public_url>/webhooks/<name>?
    // herald_message_id=<id>`, and a StatusCallback configured elsewhere may have no query
    // or another. The message id is taken from the query only when the signature covers it.
    let signature = req.header("x-twilio-signature");
    let signed_query = !req.query.is_empty()
        && twilio::verify(
            auth_token,
            &[format!("{url}?{}", req.query)],
            &params,
            signature,
        )
        .is_ok();
    if !signed_query {
        twilio::verify(auth_token, &[url.to_string()], &params, signature)?;
    }
    let message_id = signed_query
        .then(|| {
            form_urlencoded::parse(req.query.as_bytes())
                .find(|(k, _)| k == MESSAGE_ID_PARAM)
                .map(|(_, v)| v.into_owned())
        })
        .flatten()
        .filter(|id| !id.is_empty() && id.len() <= MAX_ID && !id.chars().any(char::is_control));
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let sid = param("MessageSid")
        .or_else(|| param("SmsSid"))
        .ok_or_else(|| Refusal::Malformed("no MessageSid".into()))?;
    let status_text = param("MessageStatus")
        .or_else(|| param("SmsStatus"))
        .ok_or_else(|| Refusal::Malformed("no MessageStatus".into()))?;
    let effect = twilio::status_effect(status_text)
        .ok_or_else(|| Refusal::Malformed(format!("unknown MessageStatus {status_text:?}")))?;
    let error_code = param("ErrorCode");
    let status = match effect {
        StatusEffect::Nothing => return Ok(Vec::new()),
        StatusEffect::Delivered => CallbackStatus::Delivered,
        StatusEffect::Retry => CallbackStatus::Undelivered,
        StatusEffect::Failed => CallbackStatus::Failed,
    };
    let opted_out = error_code == Some(OPT_OUT_ERROR_CODE);
    Ok(vec![Callback {
        provider: req.provider.to_string(),
        message_id,
        provider_message_id: Some(sid.to_string()),
        // An opted-out number is not worth another attempt.
        status: if opted_out {
            CallbackStatus::Failed
        } else {
            status
        },
        error: error_code.map(|c| format!("{status_text}, error {c}")),
        retryable: false,
        suppress: opted_out.then_some(SuppressionReason::ProviderOptOut),
    }])
}

#[derive(Deserialize)]
struct SendGridEvent {
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    herald_message_id: Option<String>,
    #[serde(default)]
    sg_message_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    response: Option<String>,
}

fn parse_sendgrid(provider: &str, body: &[u8]) -> Result<Vec<Callback>, Refusal> {
    let events: Vec<SendGridEvent> = serde_json::from_slice(body)
        .map_err(|e| Refusal::Malformed(format!("not an array of events: {e}")))?;
    let mut out = Vec::new();
    for e in events {
        // Events of mail Herald did not send (no `custom_args`) are not Herald's business.
        let (Some(kind), Some(id)) = (e.event, e.herald_message_id) else {
            continue;
        };
        if id.is_empty() || id.len() > MAX_ID {
            return Err(Refusal::Malformed(format!(
                "herald_message_id must be 1-{MAX_ID} bytes"
            )));
        }
        let effect = sendgrid::event_effect(&kind);
        let status = match effect.status {
            EventStatus::Nothing if effect.suppress.is_none() => continue,
            EventStatus::Nothing => CallbackStatus::NoChange,
            EventStatus::Delivered => CallbackStatus::Delivered,
            EventStatus::Failed => CallbackStatus::Failed,
        };
        let why = e.reason.or(e.response);
        out.push(Callback {
            provider: provider.to_string(),
            message_id: Some(id),
            provider_message_id: e.sg_message_id.filter(|s| !s.is_empty()),
            status,
            error: (status != CallbackStatus::Delivered)
                .then(|| why.map_or(kind.clone(), |w| format!("{kind}: {w}"))),
            retryable: false,
            suppress: effect.suppress,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(headers: &'a HashMap<String, String>) -> Request<'a> {
        Request {
            provider: "p",
            headers,
            query: "",
            now_secs: 0,
        }
    }

    #[test]
    fn parses_the_herald_body() {
        let cb = parse_herald(
            "sim",
            br#"{"id":"w:m-1","provider_message_id":"p-1","status":"failed","error":"x","retryable":true}"#,
        )
        .unwrap();
        assert_eq!(cb.status, CallbackStatus::Failed);
        assert!(cb.retryable);
        assert_eq!(cb.provider_message_id.as_deref(), Some("p-1"));
        let minimal = parse_herald("sim", br#"{"id":"w:m-1","status":"delivered"}"#).unwrap();
        assert!(!minimal.retryable);
        for bad in [
            &br#"{"id":"w:m-1","status":"lost"}"#[..],
            br#"{"status":"delivered"}"#,
            b"[]",
        ] {
            assert!(matches!(
                parse_herald("sim", bad),
                Err(Refusal::Malformed(_))
            ));
        }
    }

    #[test]
    fn a_twilio_callback_is_checked_against_the_public_url_and_names_only_the_sid() {
        let url = "http://herald.test/webhooks/p";
        let body = b"MessageSid=SM1&MessageStatus=undelivered&ErrorCode=30003&AccountSid=AC1";
        let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        let mut headers = HashMap::new();
        headers.insert(
            "x-twilio-signature".to_string(),
            twilio::sign(b"tok", url, &params),
        );
        let receiver = Receiver::Twilio {
            auth_token: b"tok".to_vec(),
            url: url.into(),
        };
        let cbs = parse(&receiver, &request(&headers), body).unwrap();
        assert_eq!(cbs.len(), 1);
        assert_eq!(cbs[0].status, CallbackStatus::Undelivered);
        assert_eq!(cbs[0].message_id, None);
        assert_eq!(cbs[0].provider_message_id.as_deref(), Some("SM1"));
        let other = Receiver::Twilio {
            auth_token: b"tok".to_vec(),
            url: "http://herald.test/webhooks/q".into(),
        };
        let refused = parse(&other, &request(&headers), body).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn a_twilio_callback_names_the_message_only_through_a_signed_query() {
        let url = "http://herald.test/webhooks/p";
        let query = "herald_message_id=welcome%3Am-1";
        let body = b"MessageSid=SM1&MessageStatus=delivered";
        let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        let receiver = Receiver::Twilio {
            auth_token: b"tok".to_vec(),
            url: url.into(),
        };
        let with = |signed_url: &str, query: &'static str| {
            let mut headers = HashMap::new();
            headers.insert(
                "x-twilio-signature".to_string(),
                twilio::sign(b"tok", signed_url, &params),
            );
            let request = Request {
                provider: "p",
                headers: &headers,
                query,
                now_secs: 0,
            };
            parse(&receiver, &request, body).map(|cbs| cbs[0].message_id.clone())
        };
        assert_eq!(
            with(&format!("{url}?{query}"), query).unwrap().as_deref(),
            Some("welcome:m-1")
        );
        // A query appended to a callback signed without it names nothing.
        assert_eq!(with(url, query).unwrap(), None);
        assert!(with(&format!("{url}?herald_message_id=other"), query).is_err());
    }

    #[test]
    fn twilio_progress_changes_nothing_and_an_opt_out_suppresses() {
        let url = "http://h/webhooks/p";
        let signed = |body: &[u8]| {
            let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
            let mut headers = HashMap::new();
            headers.insert(
                "x-twilio-signature".to_string(),
                twilio::sign(b"t", url, &params),
            );
            headers
        };
        let receiver = Receiver::Twilio {
            auth_token: b"t".to_vec(),
            url: url.into(),
        };
        let body = b"MessageSid=SM1&MessageStatus=sent";
        assert!(parse(&receiver, &request(&signed(body)), body)
            .unwrap()
            .is_empty());
        let body = b"MessageSid=SM1&MessageStatus=failed&ErrorCode=21610";
        let cbs = parse(&receiver, &request(&signed(body)), body).unwrap();
        assert_eq!(cbs[0].suppress, Some(SuppressionReason::ProviderOptOut));
        let body = b"MessageSid=SM1&MessageStatus=teleported";
        assert!(matches!(
            parse(&receiver, &request(&signed(body)), body),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn sendgrid_events_keep_theirs_and_skip_the_rest() {
        let body = br#"[
            {"event":"processed","herald_message_id":"c:1"},
            {"event":"delivered","herald_message_id":"c:1","sg_message_id":"X1.filter"},
            {"event":"bounce","herald_message_id":"c:2","reason":"550 no such user"},
            {"event":"spamreport","herald_message_id":"c:3"},
            {"event":"delivered","email":"not-ours@example.com"}
        ]"#;
        let cbs = parse_sendgrid("sg", body).unwrap();
        assert_eq!(cbs.len(), 3);
        assert_eq!(cbs[0].status, CallbackStatus::Delivered);
        assert_eq!(cbs[0].provider_message_id.as_deref(), Some("X1.filter"));
        assert_eq!(cbs[1].status, CallbackStatus::Failed);
        assert_eq!(cbs[1].suppress, Some(SuppressionReason::Bounce));
        assert_eq!(cbs[1].error.as_deref(), Some("bounce: 550 no such user"));
        assert_eq!(cbs[2].status, CallbackStatus::NoChange);
        assert_eq!(cbs[2].suppress, Some(SuppressionReason::SpamReport));
        assert!(matches!(
            parse_sendgrid("sg", b"{}"),
            Err(Refusal::Malformed(_))
        ));
    }
}
