//! Every provider callback parser behind its signature check (Herald's webhook, Twilio's form,
//! SendGrid's event array), on any body: never a panic; a body signed the provider's way reaches
//! the parser; the same body under a signature of other bytes, or none, is refused.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use herald::adapters::providers::callbacks::{parse, Receiver, Request, MAX_BODY};
use herald::domain::sendgrid::EventWebhookKey;
use herald::domain::{signature, twilio};
use herald::provider_sim::{sendgrid_public_key, sendgrid_signature};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_795_392_000;
const SECRET: &[u8] = b"fuzz-secret";
const URL: &str = "http://herald.test/webhooks/p";

fn request<'a>(headers: &'a HashMap<String, String>, query: &'a str) -> Request<'a> {
    Request {
        provider: "p",
        headers,
        query,
        now_secs: NOW,
    }
}

fn check_accepted(callbacks: &[herald::ports::Callback]) {
    for c in callbacks {
        if let Some(id) = &c.message_id {
            assert!(
                !id.is_empty() && id.len() <= 512,
                "message id of {} bytes",
                id.len()
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    if body.len() > MAX_BODY {
        return;
    }
    let ts = NOW.to_string();
    let mut other = body.to_vec();
    other.push(b' ');
    match selector % 3 {
        0 => {
            let receiver = Receiver::Herald {
                secret: Some(SECRET.to_vec()),
            };
            let mut headers = HashMap::from([("x-herald-timestamp".to_string(), ts.clone())]);
            headers.insert(
                "x-herald-signature".into(),
                signature::sign(SECRET, &ts, &other),
            );
            assert!(parse(&receiver, &request(&headers, ""), body).is_err());
            headers.insert(
                "x-herald-signature".into(),
                signature::sign(SECRET, &ts, body),
            );
            if let Ok(c) = parse(&receiver, &request(&headers, ""), body) {
                check_accepted(&c);
            }
        }
        1 => {
            let receiver = Receiver::Twilio {
                auth_token: SECRET.to_vec(),
                url: URL.into(),
            };
            let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
            // The query, when the selector says so: a message id from the body's first bytes.
            let query = if selector & 0x10 != 0 {
                let id: String = String::from_utf8_lossy(&body[..body.len().min(24)]).into_owned();
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("herald_message_id", &id)
                    .finish()
            } else {
                String::new()
            };
            let signed_url = if query.is_empty() {
                URL.to_string()
            } else {
                format!("{URL}?{query}")
            };
            let mut headers = HashMap::new();
            let mut forged = params.clone();
            forged.push(("Forged".into(), "1".into()));
            headers.insert(
                "x-twilio-signature".into(),
                twilio::sign(SECRET, &signed_url, &forged),
            );
            assert!(parse(&receiver, &request(&headers, &query), body).is_err());
            headers.insert(
                "x-twilio-signature".into(),
                twilio::sign(SECRET, &signed_url, &params),
            );
            if let Ok(c) = parse(&receiver, &request(&headers, &query), body) {
                check_accepted(&c);
            }
        }
        _ => {
            // The key is derived once (an EC scalar multiplication per input would be most of
            // the run); each input still costs one signature and two verifications.
            static KEY: OnceLock<EventWebhookKey> = OnceLock::new();
            let key = KEY.get_or_init(|| {
                EventWebhookKey::from_base64_der(&sendgrid_public_key(SECRET)).unwrap()
            });
            let receiver = Receiver::SendGrid {
                key: Some(key.clone()),
            };
            let mut headers = HashMap::from([(
                "x-twilio-email-event-webhook-timestamp".to_string(),
                ts.clone(),
            )]);
            headers.insert(
                "x-twilio-email-event-webhook-signature".into(),
                sendgrid_signature(SECRET, &ts, &other),
            );
            assert!(parse(&receiver, &request(&headers, ""), body).is_err());
            headers.insert(
                "x-twilio-email-event-webhook-signature".into(),
                sendgrid_signature(SECRET, &ts, body),
            );
            if let Ok(c) = parse(&receiver, &request(&headers, ""), body) {
                check_accepted(&c);
            }
        }
    }
});
