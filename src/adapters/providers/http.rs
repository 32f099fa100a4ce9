//! HTTP plumbing shared by the provider adapters that send over HTTP (webhook, Twilio,
//! SendGrid, FCM): the client, how a failed request and an answer are classified.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use crate::domain::suppression::SuppressionReason;
use crate::ports::{LookupOutcome, SendOutcome};

/// Longest detail kept from a provider's error body.
const DETAIL_CHARS: usize = 200;

/// The HTTP client every provider adapter uses: `timeout` per request, a shorter connect
/// timeout, a warm connection pool.
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(64)
        .build()
}

/// Whether an HTTP status is worth retrying (429, 408, 5xx).
pub fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// `Retry-After` in seconds or as an HTTP date, in milliseconds from now.
pub fn retry_after_ms(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then_some((secs * 1000.0) as u64);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// A request that got no answer: never sent (connection refused) is plainly retryable; a
/// timeout or a reset after the request went out leaves the outcome unknown.
pub fn request_failed(e: reqwest::Error) -> SendOutcome {
    if e.is_connect() {
        SendOutcome::Retryable {
            retry_after_ms: None,
            detail: format!("connection failed: {e}"),
        }
    } else if e.is_timeout() {
        SendOutcome::Unknown {
            detail: "timed out".to_string(),
        }
    } else {
        SendOutcome::Unknown {
            detail: format!("request failed: {e}"),
        }
    }
}

/// A lookup that got no answer.
pub fn lookup_failed(e: reqwest::Error) -> LookupOutcome {
    LookupOutcome::Unavailable(format!("lookup failed: {e}"))
}

pub fn short(text: &str) -> String {
    text.chars().take(DETAIL_CHARS).collect()
}

/// Most of a provider's answer body Herald reads (the rest is not waited for: a provider
/// streaming a huge body cannot hold a send or its memory).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A provider's HTTP answer, read once: its status, `Retry-After`, and at most
/// [`MAX_ANSWER_BYTES`] of its body.
pub struct Answer {
    pub status: StatusCode,
    pub retry_after_ms: Option<u64>,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    pub async fn read(mut response: reqwest::Response) -> Answer {
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            let room = MAX_ANSWER_BYTES - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_ANSWER_BYTES {
                break;
            }
        }
        Answer {
            status,
            retry_after_ms: retry_after_ms(&headers),
            headers,
            text: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// A `2xx` whose body names the send (`id` picks it from the parsed body). Without one the
    /// provider took the request but Herald cannot tell which send it made: unknown outcome.
    pub fn accepted<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        id: impl FnOnce(T) -> String,
    ) -> SendOutcome {
        match serde_json::from_str::<T>(&self.text) {
            Ok(parsed) => SendOutcome::Accepted {
                provider_message_id: id(parsed),
            },
            Err(e) => SendOutcome::Unknown {
                detail: format!("{} without {what} ({e})", self.status),
            },
        }
    }

    /// A non-`2xx`: retryable (`429`, `408`, `5xx`, honouring `Retry-After`) or rejected.
    pub fn refused(&self, detail: String, suppress: Option<SuppressionReason>) -> SendOutcome {
        if is_retryable(self.status) {
            SendOutcome::Retryable {
                retry_after_ms: self.retry_after_ms,
                detail,
            }
        } else {
            SendOutcome::Rejected { detail, suppress }
        }
    }

    /// `<status>: <the start of the body>`.
    pub fn detail(&self) -> String {
        format!("{}: {}", self.status, short(&self.text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after_ms(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after_ms(&h), Some(2000));
        h.insert(RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(retry_after_ms(&h), Some(500));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after_ms(&h), Some(0), "a past date means now");
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after_ms(&h), None);
    }
}
