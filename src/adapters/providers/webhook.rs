//! A provider over HTTP (REFERENCE.md §5): `POST url` with the message as JSON,
//! `Idempotency-Key: <message id>:<attempt>` and an optional bearer token. The answer is
//! classified, not decided on: `2xx` accepted, `429`/`5xx`/timeout/connection error
//! retryable (with `Retry-After`), other `4xx` rejected. A send is looked up with `GET
//! <url>/<provider_message_id>`, answered `{"status", "error", "retryable"}`.

use std::time::Duration;

use futures::FutureExt;
use serde::{Deserialize, Serialize};

use crate::ports::{BoxFut, CallbackStatus, LookupOutcome, Provider, SendOutcome, SendRequest};

use super::http::{client, lookup_failed, request_failed, Answer};

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

/// The answer to a lookup.
#[derive(Deserialize)]
struct Looked {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    retryable: bool,
}

/// What a lookup's answer says of the send.
fn looked_up(answer: Answer) -> LookupOutcome {
    if answer.status == reqwest::StatusCode::NOT_FOUND {
        return LookupOutcome::NotFound;
    }
    if !answer.status.is_success() {
        return LookupOutcome::Unavailable(answer.detail());
    }
    match serde_json::from_str::<Looked>(&answer.text) {
        Ok(looked) => match CallbackStatus::parse(&looked.status) {
            Some(status) => LookupOutcome::Final {
                status,
                error: looked.error,
                retryable: looked.retryable,
            },
            // `queued`, `sent`, …: not final yet.
            None => LookupOutcome::Pending,
        },
        Err(e) => LookupOutcome::Unavailable(format!("unreadable lookup answer: {e}")),
    }
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
            id: request.message_id(),
            to: request.to(),
            body: request.body(),
            channel: request.channel().as_str(),
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

    fn can_look_up(&self) -> bool {
        true
    }

    fn look_up(&self, provider_message_id: String) -> BoxFut<LookupOutcome> {
        let url = format!(
            "{}/{}",
            self.url.trim_end_matches('/'),
            urlencoding_path(&provider_message_id)
        );
        let mut builder = self.client.get(url);
        if let Some(token) = &self.token {
            builder = builder.bearer_auth(token);
        }
        async move {
            match builder.send().await {
                Ok(response) => looked_up(Answer::read(response).await),
                Err(e) => lookup_failed(e),
            }
        }
        .boxed()
    }
}

/// A provider's id as one path segment (percent-encoded where it must be).
fn urlencoding_path(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::super::http::MAX_ANSWER_BYTES;
    use super::*;

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
