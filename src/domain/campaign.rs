//! Campaign rules and templating (REFERENCE.md §4): a track event triggers a message whose
//! recipient and body come from the user's state right after the trigger is applied.

use std::fmt;

use serde_json::Value;

use super::event::{Event, EventKind};
use super::user::TraitLookup;
#[cfg(test)]
use super::user::UserProfile;

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

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Trait(String),
    UserId,
}

/// A parsed template: literal text with `{{traits.<name>}}` and `{{userId}}` placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{{{` at byte {0}")]
    Unclosed(usize),
    #[error("unknown placeholder `{{{{{0}}}}}`: only `traits.<name>` and `userId` are allowed")]
    UnknownPlaceholder(String),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut segments = Vec::new();
        let mut rest = text;
        let mut consumed = 0;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                segments.push(Segment::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or(TemplateError::Unclosed(consumed + start))?;
            let name = after[..end].trim();
            let seg = if name == "userId" {
                Segment::UserId
            } else if let Some(t) = name.strip_prefix("traits.").filter(|t| !t.is_empty()) {
                Segment::Trait(t.to_string())
            } else {
                return Err(TemplateError::UnknownPlaceholder(name.to_string()));
            };
            segments.push(seg);
            let advance = start + 2 + end + 2;
            consumed += advance;
            rest = &rest[advance..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_string()));
        }
        Ok(Template { segments })
    }

    /// Renders against a user; a missing trait renders as an empty string.
    pub fn render(&self, user_id: &str, profile: &impl TraitLookup) -> String {
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Literal(s) => out.push_str(s),
                Segment::UserId => out.push_str(user_id),
                Segment::Trait(name) => {
                    if let Some(v) = profile.trait_value(name) {
                        push_value(&mut out, v);
                    }
                }
            }
        }
        out
    }
}

fn push_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => {}
        Value::String(s) => out.push_str(s),
        other => out.push_str(&other.to_string()),
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
    /// Evaluates this campaign for an event already applied to `profile`.
    pub fn evaluate(&self, event: &Event, profile: &impl TraitLookup) -> Option<TriggeredMessage> {
        let EventKind::Track { event: name } = &event.kind else {
            return None;
        };
        if name != &self.on_event {
            return None;
        }
        let address = profile
            .trait_value(self.channel.address_trait())
            .and_then(address_text);
        let unmet = self
            .when_traits
            .iter()
            .find(|(k, want)| profile.trait_value(k) != Some(want));
        let skipped = if let Some((k, want)) = unmet {
            Some(format!("when_traits not met: traits.{k} is not {want}"))
        } else if address.is_none() {
            Some(format!(
                "no address: traits.{} is missing",
                self.channel.address_trait()
            ))
        } else {
            None
        };
        let body = if skipped.is_none() {
            self.template.render(&event.user_id, profile)
        } else {
            String::new()
        };
        let subject = match (&self.subject, &skipped) {
            (Some(t), None) => Some(t.render(&event.user_id, profile)),
            _ => None,
        };
        Some(TriggeredMessage {
            id: message_id(&self.id, &event.message_id),
            user_id: event.user_id.clone(),
            campaign: self.id.clone(),
            channel: self.channel,
            to: address,
            body,
            subject,
            skipped,
            trigger_at: event.timestamp_ms,
        })
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
) -> Vec<TriggeredMessage> {
    if !matches!(event.kind, EventKind::Track { .. }) {
        return Vec::new();
    }
    campaigns
        .iter()
        .filter_map(|c| c.evaluate(event, profile))
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
        }
    }

    fn signed_up() -> Event {
        Event {
            message_id: "m-2".into(),
            user_id: "u-42".into(),
            timestamp_ms: 7,
            kind: EventKind::Track {
                event: "signed_up".into(),
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
    fn renders_traits_and_user_id_missing_as_empty() {
        let t =
            Template::parse("Hi {{traits.first_name}}{{ traits.last }} ({{userId}}) {{traits.n}}")
                .unwrap();
        let p = profile(json!({"first_name":"Ada","n":3}));
        assert_eq!(t.render("u-1", &p), "Hi Ada (u-1) 3");
    }

    #[test]
    fn template_errors() {
        assert_eq!(
            Template::parse("Hi {{traits.x"),
            Err(TemplateError::Unclosed(3))
        );
        assert!(matches!(
            Template::parse("{{event}}"),
            Err(TemplateError::UnknownPlaceholder(_))
        ));
        assert!(Template::parse("{{traits.}}").is_err());
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
            .evaluate(&signed_up(), &profile(json!({"subscribed":true})))
            .unwrap();
        assert!(m.skipped.unwrap().contains("no address"));
        let m = c
            .evaluate(
                &signed_up(),
                &profile(json!({"phone":"+1","subscribed":false})),
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
        };
        assert!(c.evaluate(&e, &UserProfile::default()).is_none());
    }
}
