//! Twilio's side of the wire that Herald must agree with (REFERENCE.md §10): the
//! `X-Twilio-Signature` of status callbacks, and what each `MessageStatus` means for a
//! message. Pure; the adapter does the HTTP.
//!
//! The signature is base64(HMAC-SHA1(auth token, URL + every POST parameter's name and value
//! concatenated, parameters sorted by name)), the URL being the one Twilio posted to.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// Twilio error code for "the recipient replied STOP" (the carrier opt-out): the number is
/// suppressed, not just this send failed.
pub const OPT_OUT_ERROR_CODE: &str = "21610";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwilioSignatureError {
    #[error("missing X-Twilio-Signature header")]
    Missing,
    #[error("X-Twilio-Signature does not match")]
    Mismatch,
}

fn mac(auth_token: &[u8], url: &str, params: &[(String, String)]) -> HmacSha1 {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // By name, then value (a repeated name is signed in value order, as Twilio's libraries do).
    sorted.sort();
    let mut mac = HmacSha1::new_from_slice(auth_token).expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// The query parameter of Herald's `StatusCallback` URLs that names the message (Twilio signs
/// the URL with it).
pub const MESSAGE_ID_PARAM: &str = "herald_message_id";

/// The `X-Twilio-Signature` of a form POST to `url`.
pub fn sign(auth_token: &[u8], url: &str, params: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(mac(auth_token, url, params).finalize().into_bytes())
}

/// Checks the header against each candidate URL (constant-time comparison).
pub fn verify(
    auth_token: &[u8],
    urls: &[String],
    params: &[(String, String)],
    header: Option<&str>,
) -> Result<(), TwilioSignatureError> {
    let header = header.ok_or(TwilioSignatureError::Missing)?.trim();
    let given = base64::engine::general_purpose::STANDARD
        .decode(header)
        .map_err(|_| TwilioSignatureError::Mismatch)?;
    for url in urls {
        if mac(auth_token, url, params).verify_slice(&given).is_ok() {
            return Ok(());
        }
    }
    Err(TwilioSignatureError::Mismatch)
}

/// What a status callback's `MessageStatus` does to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusEffect {
    /// `queued`, `accepted`, `scheduled`, `sending`, `sent`: progress Herald already knows.
    Nothing,
    /// `delivered`, `read`.
    Delivered,
    /// `undelivered`: the carrier could not deliver it; worth another attempt.
    Retry,
    /// `failed`: Twilio could not send it at all.
    Failed,
}

pub fn status_effect(message_status: &str) -> Option<StatusEffect> {
    Some(match message_status {
        "queued" | "accepted" | "scheduled" | "sending" | "sent" | "receiving" | "received" => {
            StatusEffect::Nothing
        }
        "delivered" | "read" => StatusEffect::Delivered,
        "undelivered" => StatusEffect::Retry,
        "failed" | "canceled" => StatusEffect::Failed,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_signature_verifies_for_any_parameter_order_and_only_its_url_and_token() {
        let url = "https://herald.example/webhooks/twilio".to_string();
        let p = params(&[
            ("MessageSid", "SM1"),
            ("MessageStatus", "delivered"),
            ("AccountSid", "AC1"),
        ]);
        let sig = sign(b"token", &url, &p);
        let mut shuffled = p.clone();
        shuffled.reverse();
        assert_eq!(
            verify(b"token", std::slice::from_ref(&url), &shuffled, Some(&sig)),
            Ok(())
        );
        assert_eq!(
            verify(b"other", std::slice::from_ref(&url), &p, Some(&sig)),
            Err(TwilioSignatureError::Mismatch)
        );
        let elsewhere = "https://herald.example/webhooks/other".to_string();
        assert_eq!(
            verify(b"token", std::slice::from_ref(&elsewhere), &p, Some(&sig)),
            Err(TwilioSignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"token", &[elsewhere, url.clone()], &p, Some(&sig)),
            Ok(())
        );
        let mut changed = p.clone();
        changed[1].1 = "failed".into();
        assert_eq!(
            verify(b"token", std::slice::from_ref(&url), &changed, Some(&sig)),
            Err(TwilioSignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"token", &[url], &p, None),
            Err(TwilioSignatureError::Missing)
        );
    }

    #[test]
    fn statuses_map_as_documented() {
        assert_eq!(status_effect("read"), Some(StatusEffect::Delivered));
        assert_eq!(status_effect("undelivered"), Some(StatusEffect::Retry));
        assert_eq!(status_effect("sent"), Some(StatusEffect::Nothing));
        assert_eq!(status_effect("failed"), Some(StatusEffect::Failed));
        assert_eq!(status_effect("exploded"), None);
    }
}
