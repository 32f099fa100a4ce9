//! SendGrid's Event Webhook as Herald reads it (REFERENCE.md §10): the signature
//! (`X-Twilio-Email-Event-Webhook-Signature`: base64 DER ECDSA P-256 / SHA-256 over the
//! `X-Twilio-Email-Event-Webhook-Timestamp` value followed by the raw body, checked with the
//! base64 DER public key SendGrid shows for the webhook) and what each event does. Pure.

use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

use super::suppression::SuppressionReason;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendGridSignatureError {
    #[error("missing X-Twilio-Email-Event-Webhook-Signature or -Timestamp header")]
    Missing,
    #[error("the signature is not base64 DER ECDSA")]
    Malformed,
    #[error("the event webhook signature does not match")]
    Mismatch,
    #[error("the event webhook timestamp is not unix seconds within {WINDOW_SECS} s of now")]
    Stale,
}

/// How far (seconds) an Event Webhook timestamp may be from the receiver's clock: a signed
/// request replayed later is refused.
pub const WINDOW_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the SendGrid webhook public key is not base64 DER (SubjectPublicKeyInfo, P-256): {0}")]
pub struct BadPublicKey(String);

/// A verification key, parsed once from its base64 DER form.
#[derive(Debug, Clone)]
pub struct EventWebhookKey(VerifyingKey);

impl EventWebhookKey {
    pub fn from_base64_der(text: &str) -> Result<EventWebhookKey, BadPublicKey> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| BadPublicKey(e.to_string()))?;
        VerifyingKey::from_public_key_der(&der)
            .map(EventWebhookKey)
            .map_err(|e| BadPublicKey(e.to_string()))
    }

    pub fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_secs: i64,
    ) -> Result<(), SendGridSignatureError> {
        let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
            return Err(SendGridSignatureError::Missing);
        };
        let fresh = timestamp
            .trim()
            .parse::<i64>()
            .is_ok_and(|ts| now_secs.saturating_sub(ts).abs() <= WINDOW_SECS);
        if !fresh {
            return Err(SendGridSignatureError::Stale);
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|_| SendGridSignatureError::Malformed)?;
        let signature = Signature::from_der(&der).map_err(|_| SendGridSignatureError::Malformed)?;
        let mut signed = Vec::with_capacity(timestamp.len() + body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(body);
        self.0
            .verify(&signed, &signature)
            .map_err(|_| SendGridSignatureError::Mismatch)
    }
}

/// What one event does to its message and its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventEffect {
    pub status: EventStatus,
    pub suppress: Option<SuppressionReason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// `processed`, `deferred` (SendGrid retries itself), `open`, `click`, anything newer.
    Nothing,
    Delivered,
    Failed,
}

/// The effect of an event type; event types Herald does not know change nothing (SendGrid
/// adds types over time; refusing the batch would make it resend every event in it).
pub fn event_effect(event: &str) -> EventEffect {
    let (status, suppress) = match event {
        "delivered" => (EventStatus::Delivered, None),
        "bounce" | "dropped" => (EventStatus::Failed, Some(SuppressionReason::Bounce)),
        "spamreport" => (EventStatus::Nothing, Some(SuppressionReason::SpamReport)),
        "unsubscribe" | "group_unsubscribe" => {
            (EventStatus::Nothing, Some(SuppressionReason::Unsubscribe))
        }
        _ => (EventStatus::Nothing, None),
    };
    EventEffect { status, suppress }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::EncodePublicKey;

    fn key_pair() -> (SigningKey, EventWebhookKey) {
        let signing = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let der = signing.verifying_key().to_public_key_der().unwrap();
        let text = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
        (signing, EventWebhookKey::from_base64_der(&text).unwrap())
    }

    fn sign(key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
        let mut signed = timestamp.as_bytes().to_vec();
        signed.extend_from_slice(body);
        let sig: Signature = key.sign(&signed);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }

    #[test]
    fn a_signature_covers_timestamp_and_body() {
        let (signing, key) = key_pair();
        let body = br#"[{"event":"delivered"}]"#;
        let now = 1_700_000_000;
        let sig = sign(&signing, "1700000000", body);
        assert_eq!(
            key.verify(Some("1700000000"), Some(&sig), body, now),
            Ok(())
        );
        assert_eq!(
            key.verify(Some("1700000001"), Some(&sig), body, now),
            Err(SendGridSignatureError::Mismatch)
        );
        assert_eq!(
            key.verify(
                Some("1700000000"),
                Some(&sig),
                br#"[{"event":"bounce"}]"#,
                now
            ),
            Err(SendGridSignatureError::Mismatch)
        );
        assert_eq!(
            key.verify(Some("1700000000"), Some("bm90IGRlcg=="), body, now),
            Err(SendGridSignatureError::Malformed)
        );
        assert_eq!(
            key.verify(None, Some(&sig), body, now),
            Err(SendGridSignatureError::Missing)
        );
        // Correctly signed, but replayed later than the window allows.
        assert_eq!(
            key.verify(Some("1700000000"), Some(&sig), body, now + WINDOW_SECS + 1),
            Err(SendGridSignatureError::Stale)
        );
        assert!(EventWebhookKey::from_base64_der("not a key").is_err());
    }

    #[test]
    fn events_map_as_documented() {
        assert_eq!(event_effect("delivered").status, EventStatus::Delivered);
        let bounce = event_effect("bounce");
        assert_eq!(bounce.status, EventStatus::Failed);
        assert_eq!(bounce.suppress, Some(SuppressionReason::Bounce));
        assert_eq!(event_effect("deferred").status, EventStatus::Nothing);
        assert_eq!(
            event_effect("group_unsubscribe").suppress,
            Some(SuppressionReason::Unsubscribe)
        );
        assert_eq!(
            event_effect("machine_opened"),
            EventEffect {
                status: EventStatus::Nothing,
                suppress: None
            }
        );
    }
}
