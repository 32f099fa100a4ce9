//! Suppressions (REFERENCE.md §10): addresses a provider told us not to send to again — a
//! bounce, a spam report, an unsubscribe, an unregistered push token, a carrier opt-out. A
//! campaign triggered for a suppressed address gives a `skipped` message instead of a send.

use serde::{Deserialize, Serialize};

use super::campaign::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionReason {
    Bounce,
    SpamReport,
    Unsubscribe,
    Unregistered,
    ProviderOptOut,
}

impl SuppressionReason {
    pub const ALL: [SuppressionReason; 5] = [
        SuppressionReason::Bounce,
        SuppressionReason::SpamReport,
        SuppressionReason::Unsubscribe,
        SuppressionReason::Unregistered,
        SuppressionReason::ProviderOptOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionReason::Bounce => "bounce",
            SuppressionReason::SpamReport => "spam_report",
            SuppressionReason::Unsubscribe => "unsubscribe",
            SuppressionReason::Unregistered => "unregistered",
            SuppressionReason::ProviderOptOut => "provider_opt_out",
        }
    }

    pub fn parse(s: &str) -> Option<SuppressionReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The `error` of a message skipped for this reason.
    pub fn skip_reason(self) -> String {
        format!("suppressed: {}", self.as_str())
    }
}

/// One suppressed address (`suppressions` document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    pub channel: Channel,
    pub address: String,
    pub reason: SuppressionReason,
    pub provider: String,
    pub at: i64,
}

impl Suppression {
    pub fn id(&self) -> String {
        suppression_id(self.channel, &self.address)
    }
}

/// How an address is compared: email addresses without surrounding space and in lower case
/// (providers report them as they like: `Ann@Example.com` bounced is `ann@example.com`);
/// phone numbers and push tokens exactly, less surrounding space.
pub fn normalise_address(channel: Channel, address: &str) -> String {
    let trimmed = address.trim();
    match channel {
        Channel::Email => trimmed.to_lowercase(),
        Channel::Sms | Channel::Push => trimmed.to_string(),
    }
}

/// `_id` of the `suppressions` document: `<channel>:<normalised address>`.
pub fn suppression_id(channel: Channel, address: &str) -> String {
    format!(
        "{}:{}",
        channel.as_str(),
        normalise_address(channel, address)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_and_name_the_skip() {
        for r in SuppressionReason::ALL {
            assert_eq!(SuppressionReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(
            SuppressionReason::SpamReport.skip_reason(),
            "suppressed: spam_report"
        );
        assert_eq!(SuppressionReason::parse("spam"), None);
    }

    #[test]
    fn email_ids_ignore_case_and_space_phone_ids_do_not_fold() {
        assert_eq!(
            suppression_id(Channel::Email, " Ann@Example.COM "),
            "email:ann@example.com"
        );
        assert_eq!(suppression_id(Channel::Sms, "+15551234"), "sms:+15551234");
        assert_eq!(suppression_id(Channel::Push, "Tok-A"), "push:Tok-A");
    }
}
