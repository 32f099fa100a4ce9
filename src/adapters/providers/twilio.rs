//! Twilio Programmable Messaging (REFERENCE.md §10): `POST
//! {base_url}/2010-04-01/Accounts/{sid}/Messages.json`, form-encoded, Basic auth with the
//! account SID and auth token. `201` with the message `sid` is `sent`; `429`/`5xx` are
//! retryable; any other `4xx` rejects the send, and error `21610` (the recipient replied STOP)
//! suppresses the number too. A send is looked up with `GET
//! {base_url}/2010-04-01/Accounts/{sid}/Messages/{MessageSid}.json`, its `status` read as a
//! status callback's `MessageStatus`.

use std::time::Duration;

use futures::FutureExt;
use serde::Deserialize;

use crate::domain::suppression::SuppressionReason;
use crate::domain::twilio::{status_effect, StatusEffect, MESSAGE_ID_PARAM, OPT_OUT_ERROR_CODE};
use crate::ports::{BoxFut, CallbackStatus, LookupOutcome, Provider, SendOutcome, SendRequest};

use super::http::{client, lookup_failed, request_failed, short, Answer};

/// Who the message is from.
#[derive(Debug, Clone)]
pub enum TwilioSender {
    /// A phone number or alphanumeric sender id (`From`).
    From(String),
    /// A Messaging Service (`MessagingServiceSid`), which picks the number.
    MessagingService(String),
}

pub struct TwilioProvider {
    name: String,
    messages_url: String,
    /// `…/Messages`, to which `/{MessageSid}.json` is appended for a lookup.
    message_url: String,
    account_sid: String,
    auth_token: String,
    sender: TwilioSender,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct Created {
    sid: String,
}

/// The Message resource, as far as a lookup reads it.
#[derive(Deserialize)]
struct MessageResource {
    status: String,
    #[serde(default)]
    error_code: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct TwilioError {
    code: Option<serde_json::Value>,
    message: Option<String>,
}

impl TwilioProvider {
    pub fn new(
        name: impl Into<String>,
        base_url: &str,
        account_sid: String,
        auth_token: String,
        sender: TwilioSender,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(TwilioProvider {
            name: name.into(),
            messages_url: format!(
                "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
                base_url.trim_end_matches('/')
            ),
            message_url: format!(
                "{}/2010-04-01/Accounts/{account_sid}/Messages",
                base_url.trim_end_matches('/')
            ),
            account_sid,
            auth_token,
            sender,
            client: client(timeout)?,
        })
    }
}

/// What the Message resource says of the send, read as its status callback would be.
fn looked_up(answer: Answer) -> LookupOutcome {
    if answer.status == reqwest::StatusCode::NOT_FOUND {
        return LookupOutcome::NotFound;
    }
    if !answer.status.is_success() {
        return LookupOutcome::Unavailable(answer.detail());
    }
    let message = match serde_json::from_str::<MessageResource>(&answer.text) {
        Ok(m) => m,
        Err(e) => return LookupOutcome::Unavailable(format!("unreadable Message resource: {e}")),
    };
    let code = message.error_code.and_then(|c| match c {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let status = match status_effect(&message.status) {
        Some(StatusEffect::Nothing) => return LookupOutcome::Pending,
        Some(StatusEffect::Delivered) => CallbackStatus::Delivered,
        Some(StatusEffect::Retry) => CallbackStatus::Undelivered,
        Some(StatusEffect::Failed) => CallbackStatus::Failed,
        None => return LookupOutcome::Unavailable(format!("unknown status {:?}", message.status)),
    };
    // An opted-out number is not worth another attempt (as with its callback).
    let opted_out = code.as_deref() == Some(OPT_OUT_ERROR_CODE);
    LookupOutcome::Final {
        status: if opted_out {
            CallbackStatus::Failed
        } else {
            status
        },
        error: code.map(|c| format!("{}, error {c}", message.status)),
        retryable: false,
    }
}

async fn classify(response: reqwest::Response) -> SendOutcome {
    let answer = Answer::read(response).await;
    if answer.status.is_success() {
        return answer.accepted("a message sid", |c: Created| c.sid);
    }
    let error = serde_json::from_str::<TwilioError>(&answer.text).ok();
    let code = error
        .as_ref()
        .and_then(|e| e.code.as_ref())
        .map(|c| match c {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    let detail = match (&code, error.as_ref().and_then(|e| e.message.as_deref())) {
        (Some(code), Some(message)) => {
            format!("{}: error {code}: {}", answer.status, short(message))
        }
        _ => answer.detail(),
    };
    let opted_out = code.as_deref() == Some(OPT_OUT_ERROR_CODE);
    answer.refused(
        detail,
        opted_out.then_some(SuppressionReason::ProviderOptOut),
    )
}

impl Provider for TwilioProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, request: SendRequest) -> BoxFut<SendOutcome> {
        let sender = match &self.sender {
            TwilioSender::From(from) => ("From", from.as_str()),
            TwilioSender::MessagingService(sid) => ("MessagingServiceSid", sid.as_str()),
        };
        // The callback URL names Herald's message (signed by Twilio with the URL), so its
        // callbacks are found by `_id` rather than by a lookup of the `MessageSid`.
        let status_callback = format!(
            "{}?{}",
            request.callback_url,
            form_urlencoded::Serializer::new(String::new())
                .append_pair(MESSAGE_ID_PARAM, request.message_id())
                .finish()
        );
        let form = [
            ("To", request.to()),
            sender,
            ("Body", request.body()),
            ("StatusCallback", status_callback.as_str()),
        ];
        let builder = self
            .client
            .post(&self.messages_url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .form(&form);
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
        let sid: String = provider_message_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let builder = self
            .client
            .get(format!("{}/{sid}.json", self.message_url))
            .basic_auth(&self.account_sid, Some(&self.auth_token));
        async move {
            match builder.send().await {
                Ok(response) => looked_up(Answer::read(response).await),
                Err(e) => lookup_failed(e),
            }
        }
        .boxed()
    }
}
