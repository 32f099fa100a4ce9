//! Webhook signatures (REFERENCE.md §5): `X-Herald-Signature: v1=<hex HMAC-SHA256(secret,
//! timestamp + "." + raw body)>` with `X-Herald-Timestamp: <unix seconds>`, accepted within
//! a window around the receiver's clock. Pure: the caller passes the time in.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far (seconds) a callback's timestamp may be from the receiver's clock.
pub const WINDOW_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Herald-Timestamp header")]
    MissingTimestamp,
    #[error("X-Herald-Timestamp is not unix seconds")]
    BadTimestamp,
    #[error("timestamp is {0} s away from now (window {WINDOW_SECS} s)")]
    OutsideWindow(i64),
    #[error("missing X-Herald-Signature header")]
    MissingSignature,
    #[error("X-Herald-Signature is not v1=<hex>")]
    MalformedSignature,
    #[error("signature does not match")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Herald-Signature` value for a body sent at `timestamp` (unix seconds, as text).
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Checks a callback's headers against its raw body at `now_secs`. The comparison is
/// constant-time (`Mac::verify_slice`).
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), SignatureError> {
    let timestamp = timestamp.ok_or(SignatureError::MissingTimestamp)?.trim();
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    let skew = now_secs.saturating_sub(ts);
    if skew.abs() > WINDOW_SECS {
        return Err(SignatureError::OutsideWindow(skew));
    }
    let signature = signature.ok_or(SignatureError::MissingSignature)?.trim();
    let hex_part = signature
        .strip_prefix("v1=")
        .ok_or(SignatureError::MalformedSignature)?;
    let expected = hex::decode(hex_part).map_err(|_| SignatureError::MalformedSignature)?;
    mac(secret, timestamp, body)
        .verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // Computed independently with Python's hmac module.
        assert_eq!(
            sign(b"secret", "1700000000", b"{}"),
            "v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn accepts_its_own_signature_and_refuses_tampering() {
        let body = br#"{"id":"w:m-1","status":"delivered"}"#;
        let sig = sign(b"k", "1000", body);
        assert_eq!(verify(b"k", Some("1000"), Some(&sig), body, 1000), Ok(()));
        assert_eq!(
            verify(b"other", Some("1000"), Some(&sig), body, 1000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"k", Some("1001"), Some(&sig), body, 1000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"k", Some("1000"), Some(&sig), b"{}", 1000),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn window_and_header_errors() {
        let sig = sign(b"k", "1000", b"x");
        assert_eq!(
            verify(b"k", Some("1000"), Some(&sig), b"x", 1301),
            Err(SignatureError::OutsideWindow(301))
        );
        assert_eq!(verify(b"k", Some("1000"), Some(&sig), b"x", 1300), Ok(()));
        assert_eq!(
            verify(b"k", Some("1000"), Some(&sig), b"x", 699),
            Err(SignatureError::OutsideWindow(-301))
        );
        assert_eq!(
            verify(b"k", None, Some(&sig), b"x", 1000),
            Err(SignatureError::MissingTimestamp)
        );
        assert_eq!(
            verify(b"k", Some("soon"), Some(&sig), b"x", 1000),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify(b"k", Some("1000"), None, b"x", 1000),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(
            verify(b"k", Some("1000"), Some("v2=00"), b"x", 1000),
            Err(SignatureError::MalformedSignature)
        );
        assert_eq!(
            verify(b"k", Some("1000"), Some("v1=zz"), b"x", 1000),
            Err(SignatureError::MalformedSignature)
        );
    }
}
