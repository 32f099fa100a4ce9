//! Campaign rules (REFERENCE.md §4, §12): a track event triggers a message whose recipient and
//! body come from the user's state right after the trigger is applied, and whose first status
//! the campaign's policy decides (preferences, quiet hours).

use std::fmt;

use serde_json::Value;

use chrono_tz::Tz;

use super::event::{Event, EventKind};
use super::policy::{decide, CampaignPolicy, Decision, QuietHours, SkipReason};
use super::template::{Template, TriggerEvent};
use super::user::TraitLookup;
#[cfg(test)]
use super::user::UserProfile;

/// A campaign's dispatch lane (REFERENCE.md §12): a provider sends every waiting `high`
/// message before any `normal` one, and every `normal` before any `low`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Its queue's index, `high` first.
    pub fn lane(self) -> usize {
        self as usize
    }
}

/// What evaluating a trigger needs besides the event and the profile.
#[derive(Debug, Clone, Copy)]
pub struct TriggerContext {
    /// The wall clock at the trigger (quiet hours are about when a message would go out).
    pub now_ms: i64,
    /// `policy.default_timezone`.
    pub default_tz: Tz,
    /// `limits.max_message_body_bytes`.
    pub max_body_bytes: usize,
}

impl Default for TriggerContext {
    fn default() -> Self {
        TriggerContext {
            now_ms: 0,
            default_tz: Tz::UTC,
            max_body_bytes: 65_536,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Sms,
    Email,
    Push,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Email => "email",
            Channel::Push => "push",
        }
    }

    /// The trait holding this channel's address.
    pub fn address_trait(self) -> &'static str {
        match self {
            Channel::Sms => "phone",
            Channel::Email => "email",
            Channel::Push => "push_token",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        match s {
            "sms" => Some(Channel::Sms),
            "email" => Some(Channel::Email),
            "push" => Some(Channel::Push),
            _ => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A configured campaign (validated).
#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    pub id: String,
    pub on_event: String,
    pub channel: Channel,
    pub template: Template,
    /// Email subject template (`subject`), rendered like `template`.
    pub subject: Option<Template>,
    pub when_traits: Vec<(String, Value)>,
    /// The category a user's `traits.preferences.categories` can opt out of.
    pub category: Option<String>,
    /// Sent even to users who opted out, and not counted against frequency caps.
    pub critical: bool,
    pub quiet_hours: Option<QuietHours>,
    pub priority: Priority,
}

impl Campaign {
    /// The rules of this campaign the policy module decides on.
    pub fn policy(&self) -> CampaignPolicy<'_> {
        CampaignPolicy {
            channel: self.channel.as_str(),
            category: self.category.as_deref(),
            critical: self.critical,
            quiet_hours: self.quiet_hours,
        }
    }
}

/// A message a campaign produced, before any provider has seen it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TriggeredMessage {
    /// `<campaign id>:<trigger messageId>` — deterministic, so replays upsert the same document.
    pub id: String,
    pub user_id: String,
    pub campaign: String,
    pub channel: Channel,
    pub to: Option<String>,
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `None` when the message is to be sent; `Some(reason)` when it is `skipped`.
    pub skipped: Option<String>,
    /// Set when the policy skipped it (the `reason` of `herald_policy_skipped_total`).
    #[serde(skip)]
    pub policy_skip: Option<&'static str>,
    /// `Some(error)` when its template did not render: the message is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// `Some(ms)` when quiet hours hold it until then: the message is `held`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until: Option<i64>,
    /// Event time of the trigger (ms).
    pub trigger_at: i64,
}

pub fn message_id(campaign: &str, trigger_message_id: &str) -> String {
    let mut s = String::with_capacity(campaign.len() + 1 + trigger_message_id.len());
    s.push_str(campaign);
    s.push(':');
    s.push_str(trigger_message_id);
    s
}

impl Campaign {
    /// Evaluates this campaign for an event already applied to `profile`: the recipient and
    /// `when_traits` first, then preferences and quiet hours (REFERENCE.md §12's order; caps
    /// are counted at dispatch), then the templates.
    pub fn evaluate(
        &self,
        event: &Event,
        profile: &impl TraitLookup,
        ctx: &TriggerContext,
    ) -> Option<TriggeredMessage> {
        let EventKind::Track {
            event: name,
            properties,
        } = &event.kind
        else {
            return None;
        };
        if name != &self.on_event {
            return None;
        }
        let address = profile
            .trait_value(self.channel.address_trait())
            .and_then(|v| address_text(&v));
        let mut m = TriggeredMessage {
            id: message_id(&self.id, &event.message_id),
            user_id: event.user_id.as_str().to_owned(),
            campaign: self.id.clone(),
            channel: self.channel,
            to: address,
            body: String::new(),
            subject: None,
            skipped: None,
            policy_skip: None,
            failed: None,
            held_until: None,
            trigger_at: event.timestamp_ms,
        };
        let unmet = self
            .when_traits
            .iter()
            .find(|(k, want)| profile.trait_value(k).as_deref() != Some(want));
        if let Some((k, want)) = unmet {
            m.skipped = Some(format!("when_traits not met: traits.{k} is not {want}"));
            return Some(m);
        }
        if m.to.is_none() {
            m.skipped = Some(format!(
                "no address: traits.{} is missing",
                self.channel.address_trait()
            ));
            return Some(m);
        }
        match decide(&self.policy(), profile, ctx.now_ms, ctx.default_tz) {
            Decision::Send => {}
            Decision::Hold(until) => m.held_until = Some(until),
            Decision::Skip(reason) => {
                m.policy_skip = Some(reason.code());
                m.skipped = Some(skip_text(&reason));
                return Some(m);
            }
        }
        // Parsed from their text only for a template that can read them.
        let reads_event =
            self.template.reads_event() || self.subject.as_ref().is_some_and(|t| t.reads_event());
        let properties = properties
            .as_ref()
            .filter(|_| reads_event)
            .map(|p| p.to_map());
        let trigger = TriggerEvent {
            name,
            properties: properties.as_ref(),
        };
        let rendered = self
            .template
            .render(&event.user_id, profile, Some(trigger), ctx.max_body_bytes)
            .and_then(|body| {
                let subject = self
                    .subject
                    .as_ref()
                    .map(|t| t.render(&event.user_id, profile, Some(trigger), ctx.max_body_bytes))
                    .transpose()?;
                Ok((body, subject))
            });
        match rendered {
            Ok((body, subject)) => {
                m.body = body;
                m.subject = subject;
            }
            Err(e) => {
                m.held_until = None;
                m.failed = Some(format!("campaign {}: {e}", self.id));
            }
        }
        Some(m)
    }
}

/// The `error` of a message the policy skipped.
pub fn skip_text(reason: &SkipReason) -> String {
    match reason {
        SkipReason::OptedOut(what) => format!("opted_out: {what}"),
        other => other.code().to_string(),
    }
}

fn address_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Evaluates every campaign against an applied event.
pub fn evaluate_all(
    campaigns: &[Campaign],
    event: &Event,
    profile: &impl TraitLookup,
    ctx: &TriggerContext,
) -> Vec<TriggeredMessage> {
    if !matches!(event.kind, EventKind::Track { .. }) {
        return Vec::new();
    }
    campaigns
        .iter()
        .filter_map(|c| c.evaluate(event, profile, ctx))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn campaign(template: &str, when: Vec<(&str, Value)>) -> Campaign {
        Campaign {
            id: "welcome".into(),
            on_event: "signed_up".into(),
            channel: Channel::Sms,
            template: Template::parse(template).unwrap(),
            subject: None,
            when_traits: when.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            category: Some("marketing".into()),
            critical: false,
            quiet_hours: None,
            priority: Priority::Normal,
        }
    }

    fn ctx() -> TriggerContext {
        TriggerContext::default()
    }

    fn signed_up() -> Event {
        Event {
            message_id: "m-2".into(),
            user_id: "u-42".into(),
            timestamp_ms: 7,
            kind: EventKind::Track {
                event: "signed_up".into(),
                properties: None,
            },
        }
    }

    fn profile(traits: Value) -> UserProfile {
        let mut p = UserProfile::default();
        for (k, v) in traits.as_object().unwrap() {
            p.traits.insert(k.clone(), v.clone());
        }
        p
    }

    #[test]
    fn triggers_with_deterministic_id() {
        let c = campaign(
            "Hi {{traits.first_name}}",
            vec![("subscribed", json!(true))],
        );
        let m = c
            .evaluate(
                &signed_up(),
                &profile(json!({"phone":"+1555","first_name":"Ada","subscribed":true})),
                &ctx(),
            )
            .unwrap();
        assert_eq!(m.id, "welcome:m-2");
        assert_eq!(m.to.as_deref(), Some("+1555"));
        assert_eq!(m.body, "Hi Ada");
        assert_eq!(m.skipped, None);
    }

    #[test]
    fn skipped_without_address_or_unmet_condition() {
        let c = campaign("x", vec![("subscribed", json!(true))]);
        let m = c
            .evaluate(&signed_up(), &profile(json!({"subscribed":true})), &ctx())
            .unwrap();
        assert!(m.skipped.unwrap().contains("no address"));
        let m = c
            .evaluate(
                &signed_up(),
                &profile(json!({"phone":"+1","subscribed":false})),
                &ctx(),
            )
            .unwrap();
        assert!(m.skipped.unwrap().contains("when_traits"));
    }

    #[test]
    fn other_events_do_not_trigger() {
        let c = campaign("x", vec![]);
        let mut e = signed_up();
        e.kind = EventKind::Track {
            event: "other".into(),
            properties: None,
        };
        assert!(c.evaluate(&e, &UserProfile::default(), &ctx()).is_none());
    }

    #[test]
    fn opted_out_quiet_hours_and_render_errors_decide_the_first_status() {
        let mut c = campaign("Hi {{ traits.first_name | default: \"there\" }}", vec![]);
        let opted =
            profile(json!({"phone": "+1", "preferences": {"categories": {"marketing": false}}}));
        let m = c.evaluate(&signed_up(), &opted, &ctx()).unwrap();
        assert_eq!(m.skipped.as_deref(), Some("opted_out: marketing"));
        assert_eq!(m.policy_skip, Some("opted_out"));
        c.critical = true;
        let m = c.evaluate(&signed_up(), &opted, &ctx()).unwrap();
        assert_eq!((m.skipped, m.body.as_str()), (None, "Hi there"));
        c.critical = false;
        c.category = None;
        // 23:00 UTC on 1970-01-01 is inside 21:00-08:00: held until 08:00 the next day.
        c.quiet_hours = Some(
            QuietHours::new("21:00", "08:00", super::super::policy::QuietPolicy::Hold).unwrap(),
        );
        let late = TriggerContext {
            now_ms: 23 * 3_600_000,
            ..ctx()
        };
        let m = c.evaluate(&signed_up(), &opted, &late).unwrap();
        assert_eq!(m.held_until, Some(32 * 3_600_000));
        assert_eq!(m.body, "Hi there", "rendered at the trigger");
        c.template = Template::parse("{{ traits.phone | divided_by: 0 }}").unwrap();
        let m = c.evaluate(&signed_up(), &opted, &late).unwrap();
        assert!(m.failed.unwrap().starts_with("campaign welcome: "));
        assert_eq!(m.held_until, None);
    }
}
