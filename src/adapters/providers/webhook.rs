//! A provider over HTTP (REFERENCE.md §5): `POST url` with the message as JSON,
//! `Idempotency-Key: <message id>:<attempt>` and an optional bearer token. The answer is
//! classified, not decided on: `2xx` accepted, `429`/`5xx`/timeout/connection error
//! retryable (with `Retry-After`), other `4xx` rejected.

use std::time::Duration;

use futures::FutureExt;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::domain::suppression::SuppressionReason;
use crate::ports::{BoxFut, Provider, SendOutcome, SendRequest};

pub struct HttpProvider {
    name: String,
    url: String,
    token: Option<String>,
    client: reqwest::Client,
}

#[derive(Serialize)]
struct SendBody<'a> {
    id: &'a str,
    to: &'a str,
    body: &'a str,
    channel: &'a str,
    callback_url: &'a str,
}

#[derive(Deserialize)]
struct Accepted {
    provider_message_id: String,
}

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

impl HttpProvider {
    pub fn new(
        name: impl Into<String>,
        url: impl Into<String>,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let client = client(timeout)?;
        Ok(HttpProvider {
            name: name.into(),
            url: url.into(),
            token,
            client,
        })
    }
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

async fn classify(response: reqwest::Response) -> SendOutcome {
    let answer = Answer::read(response).await;
    if answer.status.is_success() {
        // Without an id the send may have happened: the same attempt is sent again under the
        // same Idempotency-Key, which the provider answers with the first send's result (G4).
        return answer.accepted("provider_message_id", |a: Accepted| a.provider_message_id);
    }
    answer.refused(answer.detail(), None)
}

impl Provider for HttpProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, request: SendRequest) -> BoxFut<SendOutcome> {
        let body = SendBody {
            id: &request.message_id,
            to: &request.to,
            body: &request.body,
            channel: request.channel.as_str(),
            callback_url: &request.callback_url,
        };
        let mut builder = self
            .client
            .post(&self.url)
            .header("Idempotency-Key", request.idempotency_key())
            .json(&body);
        if let Some(token) = &self.token {
            builder = builder.bearer_auth(token);
        }
        async move {
            match builder.send().await {
                Ok(response) => classify(response).await,
                Err(e) => request_failed(e),
            }
        }
        .boxed()
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

    /// A provider that streams a body without end: the answer is read up to the limit and
    /// the send goes on (without the limit this never returns, or eats the memory).
    #[tokio::test]
    async fn an_endless_answer_body_is_read_only_up_to_the_limit() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("{:x}\r\n{}\r\n", 8192, "x".repeat(8192));
            while socket.write_all(chunk.as_bytes()).await.is_ok() {}
        });
        let client = client(Duration::from_secs(30)).unwrap();
        let response = client
            .post(format!("http://{addr}/v1/messages"))
            .send()
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), Answer::read(response))
            .await
            .expect("the answer is read within the limit, not to the end");
        assert_eq!(answer.text.len(), MAX_ANSWER_BYTES);
        assert!(matches!(
            answer.accepted("provider_message_id", |a: Accepted| a.provider_message_id),
            SendOutcome::Unknown { .. }
        ));
    }
}
