//! Builds the configured providers (REFERENCE.md §5, §10) and their callback receivers from
//! `[[providers]]`, secrets from the environment. A missing secret is a one-line error at
//! start naming the variable (a callback-only secret is a warning: callbacks are refused).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::actors::ProviderSpec;
use crate::adapters::providers::callbacks::Receiver;
use crate::adapters::providers::fcm::FcmProvider;
use crate::adapters::providers::sendgrid::SendGridProvider;
use crate::adapters::providers::smtp::{SmtpProvider, SmtpSettings};
use crate::adapters::providers::twilio::{TwilioProvider, TwilioSender};
use crate::adapters::providers::webhook::HttpProvider;
use crate::config::{Config, OnUnknownOutcome, ProviderConfig, ProviderKind};
use crate::domain::campaign::Channel;
use crate::domain::sendgrid::EventWebhookKey;
use crate::ports::{Provider, SystemClock, UnknownOutcome};

fn secret(p: &ProviderConfig, key: &str, var: &Option<String>) -> anyhow::Result<String> {
    let var = var
        .as_ref()
        .ok_or_else(|| anyhow!("provider {}: {key} is required", p.name))?;
    std::env::var(var)
        .map_err(|_| anyhow!("provider {}: {key} names ${var}, which is not set", p.name))
}

fn optional_secret(var: &Option<String>) -> Option<String> {
    var.as_ref().and_then(|v| std::env::var(v).ok())
}

fn base_url(p: &ProviderConfig) -> anyhow::Result<String> {
    p.effective_base_url()
        .ok_or_else(|| anyhow!("provider {}: base_url is required", p.name))
}

fn build(p: &ProviderConfig, timeout: Duration) -> anyhow::Result<Arc<dyn Provider>> {
    let context = || format!("provider {}: building its HTTP client", p.name);
    Ok(match p.kind {
        ProviderKind::Webhook => {
            let token = match &p.token_env {
                Some(_) => Some(secret(p, "token_env", &p.token_env)?),
                None => None,
            };
            let url = p.url.as_deref().unwrap_or_default();
            Arc::new(HttpProvider::new(&p.name, url, token, timeout).with_context(context)?)
        }
        ProviderKind::Twilio => {
            let sender = match (&p.from, &p.messaging_service_sid) {
                (_, Some(sid)) => TwilioSender::MessagingService(sid.clone()),
                (Some(from), None) => TwilioSender::From(from.clone()),
                (None, None) => return Err(anyhow!("provider {}: from is required", p.name)),
            };
            Arc::new(
                TwilioProvider::new(
                    &p.name,
                    &base_url(p)?,
                    secret(p, "account_sid_env", &p.account_sid_env)?,
                    secret(p, "auth_token_env", &p.auth_token_env)?,
                    sender,
                    timeout,
                )
                .with_context(context)?,
            )
        }
        ProviderKind::Sendgrid => Arc::new(
            SendGridProvider::new(
                &p.name,
                &base_url(p)?,
                secret(p, "api_key_env", &p.api_key_env)?,
                p.from.clone().unwrap_or_default(),
                timeout,
            )
            .with_context(context)?,
        ),
        ProviderKind::Smtp => {
            let ca_pem = match &p.ca_file {
                Some(path) => Some(std::fs::read(path).with_context(|| {
                    format!("provider {}: reading ca_file {}", p.name, path.display())
                })?),
                None => None,
            };
            let settings = SmtpSettings {
                url: p.url.clone().unwrap_or_default(),
                username: optional_secret(&p.username_env),
                password: optional_secret(&p.password_env),
                ca_pem,
                from: p.from.clone().unwrap_or_default(),
                unsubscribe_url: p.unsubscribe_url.clone(),
                timeout,
            };
            for (key, var) in [
                ("username_env", &p.username_env),
                ("password_env", &p.password_env),
            ] {
                if var.is_some() {
                    secret(p, key, var)?;
                }
            }
            Arc::new(
                SmtpProvider::new(&p.name, settings)
                    .map_err(|e| anyhow!("provider {}: {e}", p.name))?,
            )
        }
        ProviderKind::Fcm => {
            let path = secret(p, "service_account_file_env", &p.service_account_file_env)?;
            let key = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "provider {}: reading the service-account key {path}",
                    p.name
                )
            })?;
            Arc::new(
                FcmProvider::new(
                    &p.name,
                    &base_url(p)?,
                    p.project_id.as_deref().unwrap_or_default(),
                    &key,
                    timeout,
                    Arc::new(SystemClock),
                )
                .map_err(|e| anyhow!("provider {}: {e}", p.name))?,
            )
        }
    })
}

/// One provider per `[[providers]]`.
pub fn providers(config: &Config) -> anyhow::Result<Vec<ProviderSpec>> {
    let mut out = Vec::new();
    for p in &config.providers {
        let timeout = Duration::from_millis(p.timeout_ms);
        let channel = Channel::parse(&p.channel)
            .ok_or_else(|| anyhow!("provider {}: unknown channel {}", p.name, p.channel))?;
        out.push(ProviderSpec {
            provider: build(p, timeout)?,
            channel,
            priority: p.priority,
            rate_per_sec: p.rate_per_sec,
            timeout,
            max_concurrency: p.max_concurrency,
            circuit_failures: p.circuit_failures,
            circuit_open: Duration::from_millis(p.circuit_open_ms),
            on_unknown_outcome: match p.on_unknown_outcome {
                OnUnknownOutcome::Retry => UnknownOutcome::Retry,
                OnUnknownOutcome::Fail => UnknownOutcome::Fail,
            },
        });
    }
    Ok(out)
}

/// Provider name → how its callbacks are checked. `public_url` is `http.public_url`.
pub fn receivers(config: &Config, public_url: &str) -> anyhow::Result<HashMap<String, Receiver>> {
    let mut out = HashMap::new();
    for p in &config.providers {
        let receiver = match p.kind {
            ProviderKind::Webhook => {
                let secret = optional_secret(&p.webhook_secret_env).map(String::into_bytes);
                if secret.is_none() {
                    tracing::warn!(provider = %p.name, "no webhook secret set: its callbacks are refused with 401");
                }
                Receiver::Herald { secret }
            }
            ProviderKind::Twilio => Receiver::Twilio {
                auth_token: secret(p, "auth_token_env", &p.auth_token_env)?.into_bytes(),
                url: format!("{}/webhooks/{}", public_url.trim_end_matches('/'), p.name),
            },
            ProviderKind::Sendgrid => {
                let key = match optional_secret(&p.webhook_public_key_env) {
                    Some(text) => Some(EventWebhookKey::from_base64_der(&text).map_err(|e| {
                        anyhow!("provider {}: webhook_public_key_env: {e}", p.name)
                    })?),
                    None => {
                        tracing::warn!(provider = %p.name, "no webhook public key set: its event webhooks are refused with 403");
                        None
                    }
                };
                Receiver::SendGrid { key }
            }
            ProviderKind::Smtp | ProviderKind::Fcm => Receiver::NoCallbacks,
        };
        out.insert(p.name.clone(), receiver);
    }
    Ok(out)
}
