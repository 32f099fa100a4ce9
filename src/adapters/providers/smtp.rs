//! Email over SMTP (REFERENCE.md §10) with `lettre`: `smtp://host:port` requires STARTTLS,
//! `smtps://host:port` is implicit TLS; AUTH with the configured credentials; the server's
//! certificate checked against the system's roots or `ca_file`. Each message carries
//! `Message-ID: <message id>@herald` and, when configured, `List-Unsubscribe`.
//!
//! SMTP answers `250` when the server took the message (`sent`: SMTP reports no delivery);
//! a `4xx` reply is retryable, a `5xx` reply rejects the send; a connection that breaks after
//! the message went out leaves the outcome unknown.

use std::time::Duration;

use futures::FutureExt;
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::ports::{BoxFut, Provider, SendOutcome, SendRequest};

use super::http::short;
use super::sendgrid::NO_SUBJECT;

/// How to reach the server (from `url`, `ca_file` and the credentials).
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM certificates trusted besides the system roots.
    pub ca_pem: Option<Vec<u8>>,
    pub from: String,
    pub unsubscribe_url: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SmtpSetupError {
    #[error("url must be smtp://host:port or smtps://host:port, got {0:?}")]
    BadUrl(String),
    #[error("from is not an email address: {0}")]
    BadFrom(String),
    #[error("ca_file: {0}")]
    BadCa(String),
    #[error("TLS set-up: {0}")]
    Tls(String),
}

pub struct SmtpProvider {
    name: String,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    unsubscribe_url: Option<String>,
}

/// `List-Unsubscribe: <url>` (RFC 2369).
#[derive(Debug, Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(
            s.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string(),
        ))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), format!("<{}>", self.0))
    }
}

impl SmtpProvider {
    pub fn new(name: impl Into<String>, s: SmtpSettings) -> Result<Self, SmtpSetupError> {
        let (implicit, rest) = if let Some(rest) = s.url.strip_prefix("smtps://") {
            (true, rest)
        } else if let Some(rest) = s.url.strip_prefix("smtp://") {
            (false, rest)
        } else {
            return Err(SmtpSetupError::BadUrl(s.url.clone()));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| SmtpSetupError::BadUrl(s.url.clone()))?,
            ),
            None => (rest.to_string(), if implicit { 465 } else { 587 }),
        };
        if host.is_empty() {
            return Err(SmtpSetupError::BadUrl(s.url.clone()));
        }
        let mut tls = TlsParameters::builder(host.clone());
        if let Some(pem) = &s.ca_pem {
            let cert =
                Certificate::from_pem(pem).map_err(|e| SmtpSetupError::BadCa(e.to_string()))?;
            tls = tls.add_root_certificate(cert);
        }
        let tls = tls
            .build_rustls()
            .map_err(|e| SmtpSetupError::Tls(e.to_string()))?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(if implicit {
                Tls::Wrapper(tls)
            } else {
                Tls::Required(tls)
            })
            .timeout(Some(s.timeout));
        if let (Some(user), Some(password)) = (s.username, s.password) {
            builder = builder.credentials(Credentials::new(user, password));
        }
        let from: Mailbox = s
            .from
            .parse()
            .map_err(|e| SmtpSetupError::BadFrom(format!("{e}")))?;
        Ok(SmtpProvider {
            name: name.into(),
            transport: builder.build(),
            from,
            unsubscribe_url: s.unsubscribe_url,
        })
    }

    fn message(&self, request: &SendRequest) -> Result<Message, String> {
        let to: Mailbox = request
            .to()
            .parse()
            .map_err(|e| format!("not an email address {:?}: {e}", request.to()))?;
        let subject = request
            .subject()
            .filter(|s| !s.is_empty())
            .unwrap_or(NO_SUBJECT);
        let mut builder = Message::builder()
            .message_id(Some(format!("<{}@herald>", request.message_id())))
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN);
        if let Some(url) = &self.unsubscribe_url {
            builder = builder.header(ListUnsubscribe(url.clone()));
        }
        builder
            .body(request.body().to_owned())
            .map_err(|e| format!("cannot build the message: {e}"))
    }
}

fn classify(
    result: Result<lettre::transport::smtp::response::Response, lettre::transport::smtp::Error>,
) -> SendOutcome {
    match result {
        Ok(response) => SendOutcome::Accepted {
            // The server's queue id, when it says one ("250 2.0.0 Ok: queued as ABC").
            provider_message_id: response
                .message()
                .last()
                .map(short)
                .unwrap_or_else(|| response.code().to_string()),
        },
        Err(e) if e.is_permanent() => SendOutcome::Rejected {
            detail: short(&e.to_string()),
            suppress: None,
        },
        Err(e) if e.is_transient() => SendOutcome::Retryable {
            retry_after_ms: None,
            detail: short(&e.to_string()),
        },
        // A timeout or a broken connection: the server may have taken the message.
        Err(e) if e.is_timeout() => SendOutcome::Unknown {
            detail: short(&e.to_string()),
        },
        Err(e) => SendOutcome::Retryable {
            retry_after_ms: None,
            detail: short(&e.to_string()),
        },
    }
}

impl Provider for SmtpProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, request: SendRequest) -> BoxFut<SendOutcome> {
        let message = self.message(&request);
        let transport = self.transport.clone();
        async move {
            match message {
                Ok(message) => classify(transport.send(message).await),
                Err(detail) => SendOutcome::Rejected {
                    detail,
                    suppress: None,
                },
            }
        }
        .boxed()
    }
}
