//! SendGrid Mail Send v3 (REFERENCE.md §10): `POST {base_url}/mail/send` with a bearer API
//! key. The message id and attempt travel in `custom_args`, so every Event Webhook event
//! names them. `202` is `sent` with the `X-Message-ID` header as the provider's id.

use std::time::Duration;

use futures::FutureExt;
use serde_json::json;

use crate::ports::{BoxFut, Provider, SendOutcome, SendRequest};

use super::http::{client, request_failed, Answer};

/// Subject of an email whose campaign has none (SendGrid requires one).
pub const NO_SUBJECT: &str = "(no subject)";

pub struct SendGridProvider {
    name: String,
    send_url: String,
    api_key: String,
    from: String,
    client: reqwest::Client,
}

impl SendGridProvider {
    pub fn new(
        name: impl Into<String>,
        base_url: &str,
        api_key: String,
        from: String,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(SendGridProvider {
            name: name.into(),
            send_url: format!("{}/mail/send", base_url.trim_end_matches('/')),
            api_key,
            from,
            client: client(timeout)?,
        })
    }
}

/// The Mail Send body of one message.
pub fn mail_body(request: &SendRequest, from: &str) -> serde_json::Value {
    let subject = request
        .subject()
        .filter(|s| !s.is_empty())
        .unwrap_or(NO_SUBJECT);
    json!({
        "personalizations": [{
            "to": [{ "email": request.to() }],
            "custom_args": {
                "herald_message_id": request.message_id(),
                "herald_attempt": request.attempt.to_string(),
            },
        }],
        "from": { "email": from },
        "subject": subject,
        "content": [{ "type": "text/plain", "value": request.body() }],
    })
}

async fn classify(response: reqwest::Response, request: &SendRequest) -> SendOutcome {
    let answer = Answer::read(response).await;
    if answer.status.is_success() {
        // Without `X-Message-ID` (a stand-in server) the send is still accepted; its events
        // are matched by `herald_message_id`, and the idempotency key stands for the id.
        let id = answer
            .headers
            .get("x-message-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        return SendOutcome::Accepted {
            provider_message_id: id.unwrap_or_else(|| request.idempotency_key()),
        };
    }
    answer.refused(answer.detail(), None)
}

impl Provider for SendGridProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, request: SendRequest) -> BoxFut<SendOutcome> {
        let builder = self
            .client
            .post(&self.send_url)
            .bearer_auth(&self.api_key)
            .json(&mail_body(&request, &self.from));
        async move {
            match builder.send().await {
                Ok(response) => classify(response, &request).await,
                Err(e) => request_failed(e),
            }
        }
        .boxed()
    }
}
