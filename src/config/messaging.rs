//! `[[campaigns]]` and `[[providers]]`: what is sent on which event, and through which
//! provider, with the checks each provider kind needs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::domain::campaign::Channel;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignConfig {
    pub id: String,
    pub on_event: String,
    pub channel: String,
    pub template: String,
    /// Email subject template.
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub when_traits: BTreeMap<String, serde_json::Value>,
    /// What `traits.preferences.categories.<category> = false` opts a user out of.
    #[serde(default)]
    pub category: Option<String>,
    /// Sent despite opt-outs and frequency caps (one-time codes, receipts).
    #[serde(default)]
    pub critical: bool,
    #[serde(default)]
    pub quiet_hours: Option<QuietHoursConfig>,
    /// `high`, `normal` or `low`: the provider queue its messages wait in.
    #[serde(default)]
    pub priority: Option<String>,
}

/// `quiet_hours = { start = "21:00", end = "08:00", policy = "hold" }`, in the user's time zone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursConfig {
    pub start: String,
    pub end: String,
    /// `hold` (send at the window's end) or `drop` (skip).
    #[serde(default = "default_quiet_policy")]
    pub policy: String,
}

fn default_quiet_policy() -> String {
    "hold".into()
}

/// `[[frequency_caps]]`: at most `max` messages per user on `channel` in any `per_ms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCapConfig {
    pub channel: String,
    pub max: u32,
    pub per_ms: u64,
}

/// `[policy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The time zone of users without a valid `traits.timezone` (an IANA name).
    pub default_timezone: String,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            default_timezone: "UTC".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    /// Which provider API this is (`webhook`: Herald's own protocol).
    #[serde(default)]
    pub kind: ProviderKind,
    pub channel: String,
    /// `webhook`: the send endpoint; `smtp`: `smtp://host:port` or `smtps://host:port`.
    #[serde(default)]
    pub url: Option<String>,
    /// Twilio, SendGrid, FCM: the API's base URL (defaults to the provider's public API).
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default = "default_priority")]
    pub priority: u32,
    #[serde(default = "default_rate")]
    pub rate_per_sec: u32,
    #[serde(default = "default_provider_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Consecutive retryable failures (429, 5xx, timeouts) that open the circuit.
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    /// How long an open circuit stays open (its sends go to the fallback meanwhile).
    #[serde(default = "default_circuit_open_ms")]
    pub circuit_open_ms: u64,
    /// What a send whose answer was lost becomes: `retry` (default) or `fail`.
    #[serde(default)]
    pub on_unknown_outcome: OnUnknownOutcome,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
    /// Twilio.
    #[serde(default)]
    pub account_sid_env: Option<String>,
    #[serde(default)]
    pub auth_token_env: Option<String>,
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// Twilio (a phone number), SendGrid and SMTP (an address).
    #[serde(default)]
    pub from: Option<String>,
    /// SendGrid.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub webhook_public_key_env: Option<String>,
    /// SMTP.
    #[serde(default)]
    pub username_env: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub unsubscribe_url: Option<String>,
    /// FCM.
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub service_account_file_env: Option<String>,
}

/// `[[providers]] kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[default]
    Webhook,
    Twilio,
    Sendgrid,
    Smtp,
    Fcm,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Webhook => "webhook",
            ProviderKind::Twilio => "twilio",
            ProviderKind::Sendgrid => "sendgrid",
            ProviderKind::Smtp => "smtp",
            ProviderKind::Fcm => "fcm",
        }
    }

    /// The one channel a provider of this kind sends on (`webhook`: any).
    pub fn channel(self) -> Option<Channel> {
        match self {
            ProviderKind::Webhook => None,
            ProviderKind::Twilio => Some(Channel::Sms),
            ProviderKind::Sendgrid | ProviderKind::Smtp => Some(Channel::Email),
            ProviderKind::Fcm => Some(Channel::Push),
        }
    }

    /// The provider's public API.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Twilio => Some("https://api.twilio.com"),
            ProviderKind::Sendgrid => Some("https://api.sendgrid.com/v3"),
            ProviderKind::Fcm => Some("https://fcm.googleapis.com"),
            ProviderKind::Webhook | ProviderKind::Smtp => None,
        }
    }
}

/// `[[providers]] on_unknown_outcome`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnknownOutcome {
    #[default]
    Retry,
    Fail,
}

impl ProviderConfig {
    /// `base_url` or the provider's public API, without a trailing `/`.
    pub fn effective_base_url(&self) -> Option<String> {
        self.base_url
            .as_deref()
            .or(self.kind.default_base_url())
            .map(|u| u.trim_end_matches('/').to_string())
    }

    /// The environment variables this provider reads secrets from, with what each holds.
    pub fn secret_vars(&self) -> Vec<(&'static str, &String)> {
        [
            ("token", &self.token_env),
            ("webhook secret", &self.webhook_secret_env),
            ("account sid", &self.account_sid_env),
            ("auth token", &self.auth_token_env),
            ("API key", &self.api_key_env),
            ("webhook public key", &self.webhook_public_key_env),
            ("username", &self.username_env),
            ("password", &self.password_env),
            ("service-account key file", &self.service_account_file_env),
        ]
        .into_iter()
        .filter_map(|(what, var)| var.as_ref().map(|v| (what, v)))
        .collect()
    }
}

fn default_priority() -> u32 {
    1
}
fn default_rate() -> u32 {
    500
}
fn default_provider_timeout() -> u64 {
    2000
}
fn default_concurrency() -> usize {
    64
}
fn default_circuit_failures() -> u32 {
    5
}
fn default_circuit_open_ms() -> u64 {
    5000
}

fn is_http_url(u: &str) -> bool {
    u.starts_with("http://") || u.starts_with("https://")
}

/// What each provider kind needs (REFERENCE.md §10): `Err((key, problem))`.
pub(super) fn validate_provider_kind(p: &ProviderConfig) -> Result<(), (&'static str, String)> {
    let channel = Channel::parse(&p.channel);
    if let (Some(want), Some(got)) = (p.kind.channel(), channel) {
        if want != got {
            return Err((
                "channel",
                format!("a {} provider sends on {want}, not {got}", p.kind.as_str()),
            ));
        }
    }
    if let Some(base) = &p.base_url {
        if !is_http_url(base) {
            return Err(("base_url", "expected an http:// or https:// URL".into()));
        }
    }
    let need = |key: &'static str, v: &Option<String>| match v {
        Some(v) if !v.is_empty() => Ok(()),
        _ => Err((key, format!("required for kind = \"{}\"", p.kind.as_str()))),
    };
    match p.kind {
        ProviderKind::Webhook => match &p.url {
            Some(u) if is_http_url(u) => Ok(()),
            Some(_) => Err(("url", "expected an http:// or https:// URL".into())),
            None => Err(("url", "required for kind = \"webhook\"".into())),
        },
        ProviderKind::Twilio => {
            need("account_sid_env", &p.account_sid_env)?;
            need("auth_token_env", &p.auth_token_env)?;
            if p.from.is_none() == p.messaging_service_sid.is_none() {
                return Err((
                    "from",
                    "set exactly one of from and messaging_service_sid".into(),
                ));
            }
            Ok(())
        }
        ProviderKind::Sendgrid => {
            need("api_key_env", &p.api_key_env)?;
            need("from", &p.from)
        }
        ProviderKind::Smtp => {
            match &p.url {
                Some(u) if u.starts_with("smtp://") || u.starts_with("smtps://") => {}
                _ => {
                    return Err((
                        "url",
                        "expected smtp://host:port (STARTTLS) or smtps://host:port".into(),
                    ))
                }
            }
            need("from", &p.from)
        }
        ProviderKind::Fcm => {
            need("project_id", &p.project_id)?;
            need("service_account_file_env", &p.service_account_file_env)
        }
    }
}
