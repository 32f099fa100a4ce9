//! Firebase Cloud Messaging HTTP v1 (REFERENCE.md §10): `POST
//! {base_url}/v1/projects/{project_id}/messages:send` with a bearer token obtained from the
//! service-account key — an RS256-signed JWT assertion exchanged at the key's `token_uri`
//! (scope `firebase.messaging`) — and reused until a minute before it expires.
//!
//! `200` with the message `name` is `sent`; `UNREGISTERED` or `404` fails the send and
//! suppresses the token; `429`/`500`/`503` are retryable; `401` drops the cached token and is
//! retryable; other `4xx` reject the send.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::FutureExt;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::domain::suppression::SuppressionReason;
use crate::ports::{BoxFut, Clock, Provider, SendOutcome, SendRequest};

use super::http::{client, request_failed, short, Answer};

/// The OAuth scope FCM sends need.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// A token is renewed this long before it expires.
const RENEW_BEFORE_MS: i64 = 60_000;

/// The fields of a service-account key file Herald uses.
#[derive(Deserialize)]
pub struct ServiceAccountKey {
    pub client_email: String,
    pub private_key: String,
    pub token_uri: String,
    #[serde(default)]
    pub private_key_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FcmSetupError {
    #[error("the service-account key file is not JSON with client_email, private_key and token_uri: {0}")]
    BadKeyFile(String),
    #[error("the service-account private_key is not a PKCS#8 PEM RSA key: {0}")]
    BadPrivateKey(String),
}

struct CachedToken {
    token: String,
    expires_at_ms: i64,
}

pub struct FcmProvider {
    name: String,
    send_url: String,
    key: ServiceAccountKey,
    /// The key signing the assertions (ring's RSA: blinded, constant-time signing).
    signer: RsaKeyPair,
    token: Arc<Mutex<Option<CachedToken>>>,
    clock: Arc<dyn Clock>,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
}

#[derive(Deserialize)]
struct SendAnswer {
    name: String,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl FcmProvider {
    pub fn new(
        name: impl Into<String>,
        base_url: &str,
        project_id: &str,
        key_json: &str,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, FcmSetupError> {
        let key: ServiceAccountKey =
            serde_json::from_str(key_json).map_err(|e| FcmSetupError::BadKeyFile(e.to_string()))?;
        let der = pem_body(&key.private_key, "PRIVATE KEY")
            .ok_or_else(|| FcmSetupError::BadPrivateKey("no PKCS#8 PEM block".into()))?;
        let private = RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| FcmSetupError::BadPrivateKey(e.to_string()))?;
        Ok(FcmProvider {
            name: name.into(),
            send_url: format!(
                "{}/v1/projects/{project_id}/messages:send",
                base_url.trim_end_matches('/')
            ),
            key,
            signer: private,
            token: Arc::new(Mutex::new(None)),
            clock,
            client: client(timeout).map_err(|e| FcmSetupError::BadKeyFile(e.to_string()))?,
        })
    }

    /// The RS256 JWT assertion for the token exchange, valid for an hour from `now_secs`.
    pub fn assertion(&self, now_secs: i64) -> String {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key.private_key_id {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": self.key.client_email,
            "scope": SCOPE,
            "aud": self.key.token_uri,
            "iat": now_secs,
            "exp": now_secs + 3600,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut signature = vec![0; self.signer.public().modulus_len()];
        // Signing fails only for a key ring refused at load, or a broken system RNG.
        if let Err(e) = self.signer.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            signing_input.as_bytes(),
            &mut signature,
        ) {
            tracing::error!(error = %e, "could not sign the FCM token assertion");
        }
        format!("{signing_input}.{}", b64url(&signature))
    }
}

/// The DER bytes of a PEM block labelled `label` (`-----BEGIN <label>-----`).
fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// A bearer token: the cached one, or a new one from the token endpoint.
async fn bearer(
    cache: &Mutex<Option<CachedToken>>,
    client: &reqwest::Client,
    token_uri: &str,
    assertion: impl FnOnce() -> String,
    now_ms: i64,
) -> Result<String, SendOutcome> {
    let mut cached = cache.lock().await;
    if let Some(t) = cached.as_ref() {
        if now_ms < t.expires_at_ms - RENEW_BEFORE_MS {
            return Ok(t.token.clone());
        }
    }
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("assertion", &assertion()),
    ];
    let response = client
        .post(token_uri)
        .form(&form)
        .send()
        .await
        // Nothing was sent to FCM yet: plainly retryable.
        .map_err(|e| SendOutcome::Retryable {
            retry_after_ms: None,
            detail: format!("token exchange at {token_uri} failed: {e}"),
        })?;
    // Read with the same limit as every provider answer.
    let answer = Answer::read(response).await;
    let (status, text) = (answer.status, answer.text);
    if !status.is_success() {
        return Err(SendOutcome::Retryable {
            retry_after_ms: None,
            detail: format!("token exchange answered {status}: {}", short(&text)),
        });
    }
    let answer: TokenAnswer = serde_json::from_str(&text).map_err(|e| SendOutcome::Retryable {
        retry_after_ms: None,
        detail: format!("token exchange answer unreadable: {e}"),
    })?;
    *cached = Some(CachedToken {
        token: answer.access_token.clone(),
        expires_at_ms: now_ms + answer.expires_in.unwrap_or(3600) * 1000,
    });
    Ok(answer.access_token)
}

/// Whether an FCM error body says the token is no longer registered.
fn unregistered(body: &serde_json::Value) -> bool {
    let error = &body["error"];
    error["details"]
        .as_array()
        .is_some_and(|d| d.iter().any(|x| x["errorCode"] == "UNREGISTERED"))
        || error["status"] == "UNREGISTERED"
}

impl Provider for FcmProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, request: SendRequest) -> BoxFut<SendOutcome> {
        let now_ms = self.clock.now_ms();
        let assertion = self.assertion(now_ms / 1000);
        let cache = self.token.clone();
        let client = self.client.clone();
        let token_uri = self.key.token_uri.clone();
        let url = self.send_url.clone();
        let body = json!({
            "message": {
                "token": request.to(),
                "notification": { "body": request.body() },
                "data": { "herald_message_id": request.message_id() },
            }
        });
        async move {
            let token = match bearer(&cache, &client, &token_uri, || assertion, now_ms).await {
                Ok(t) => t,
                Err(outcome) => return outcome,
            };
            let response = match client
                .post(&url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => return request_failed(e),
            };
            let answer = Answer::read(response).await;
            if answer.status.is_success() {
                return answer.accepted("a message name", |a: SendAnswer| a.name);
            }
            let parsed: serde_json::Value = serde_json::from_str(&answer.text).unwrap_or_default();
            let detail = answer.detail();
            if answer.status == reqwest::StatusCode::NOT_FOUND || unregistered(&parsed) {
                return SendOutcome::Rejected {
                    detail,
                    suppress: Some(SuppressionReason::Unregistered),
                };
            }
            if answer.status == reqwest::StatusCode::UNAUTHORIZED {
                // The token was revoked or expired early: the next attempt gets a new one.
                *cache.lock().await = None;
                return SendOutcome::Retryable {
                    retry_after_ms: None,
                    detail,
                };
            }
            answer.refused(detail, None)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_read_and_others_refused() {
        let pem = "-----BEGIN PRIVATE KEY-----\nAAEC\nAw==\n-----END PRIVATE KEY-----\n";
        assert_eq!(pem_body(pem, "PRIVATE KEY"), Some(vec![0, 1, 2, 3]));
        assert_eq!(pem_body(pem, "RSA PRIVATE KEY"), None);
        assert_eq!(pem_body("no pem", "PRIVATE KEY"), None);
    }

    #[test]
    fn unregistered_is_read_from_the_error_details() {
        let body = json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}
        ]}});
        assert!(unregistered(&body));
        assert!(!unregistered(
            &json!({"error": {"status": "INVALID_ARGUMENT"}})
        ));
    }
}
