//! The JSON forms in which users and messages leave Herald: the changelog topic, the
//! messages topic, feedback webhooks and the read API. The fields are those of the `users`
//! and `messages` documents; dates are RFC 3339 UTC strings with milliseconds.

use serde_json::{json, Map, Value};

use super::message::{HistoryEntry, MessageRecord};
use super::profile::Profile;
use super::segment::rfc3339_ms;

fn date(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| Value::String(rfc3339_ms(ms)))
}

/// A user as its `users` document reads (without `_herald`): the profile, or only
/// `merged_into` for an id an `alias` merged. `version` (the fencing version) is added when
/// given — the changelog's records carry it.
pub fn user_json(
    id: &str,
    profile: &Profile,
    merged_into: Option<&str>,
    updated_at: i64,
    version: Option<u64>,
) -> Value {
    let mut o = Map::new();
    o.insert("_id".into(), json!(id));
    match merged_into {
        Some(into) => {
            o.insert("merged_into".into(), json!(into));
        }
        None => {
            let traits = |t: &super::profile::NameMap<super::trait_value::TraitValue>| -> Value {
                Value::Object(
                    t.iter()
                        .map(|(k, v)| (k.to_string(), v.to_value()))
                        .collect(),
                )
            };
            let events: Map<String, Value> = profile
                .events
                .iter()
                .map(|(name, s)| {
                    (
                        name.to_string(),
                        json!({
                            "count": s.count,
                            "first_at": rfc3339_ms(s.first_at),
                            "last_at": rfc3339_ms(s.last_at),
                        }),
                    )
                })
                .collect();
            o.insert("traits".into(), traits(&profile.traits));
            o.insert(
                "tags".into(),
                Value::Array(profile.tags.iter().map(|t| json!(t)).collect()),
            );
            o.insert("event_count".into(), json!(profile.event_count));
            o.insert("events".into(), Value::Object(events));
            o.insert("first_seen".into(), date(profile.first_seen.get()));
            o.insert("last_seen".into(), date(profile.last_seen.get()));
            o.insert("updated_at".into(), date(Some(updated_at)));
            if !profile.groups.is_empty() {
                let groups: Map<String, Value> = profile
                    .groups
                    .iter()
                    .map(|(id, t)| (id.to_string(), traits(t)))
                    .collect();
                o.insert("groups".into(), Value::Object(groups));
            }
        }
    }
    if let Some(v) = version {
        o.insert("version".into(), json!(v));
    }
    Value::Object(o)
}

/// A message's state after a transition: the value of a messages-topic record and the
/// `message` of a feedback webhook.
pub fn message_event_json(m: &MessageRecord) -> Value {
    json!({
        "_id": m.id,
        "user_id": m.user_id,
        "campaign": m.campaign,
        "channel": m.channel.as_str(),
        "status": m.status.as_str(),
        "attempts": m.attempts,
        "provider": m.provider,
        "provider_message_id": m.provider_message_id,
        "error": m.error,
        "updated_at": rfc3339_ms(m.updated_at),
    })
}

/// A change of a message as the messages topic carries it: its state after the change, and
/// `seq`, the change's place in the message's `history` (a repeat after a crash has the same).
pub fn message_change_json(m: &MessageRecord, seq: u32) -> Value {
    let mut v = message_event_json(m);
    v["seq"] = json!(seq);
    v
}

/// A message as its `messages` document reads (the read API).
pub fn message_json(m: &MessageRecord) -> Value {
    let history: Vec<Value> = m
        .history
        .iter()
        .map(|h| {
            json!({
                "status": h.status.as_str(),
                "at": rfc3339_ms(h.at),
                "provider": h.provider,
                "detail": h.detail,
            })
        })
        .collect();
    json!({
        "_id": m.id,
        "user_id": m.user_id,
        "campaign": m.campaign,
        "channel": m.channel.as_str(),
        "to": m.to,
        "body": m.body,
        "provider": m.provider,
        "status": m.status.as_str(),
        "attempts": m.attempts,
        "provider_message_id": m.provider_message_id,
        "error": m.error,
        "created_at": rfc3339_ms(m.created_at),
        "updated_at": rfc3339_ms(m.updated_at),
        "history": history,
    })
}

/// The state of a message right after history entry `seq`, as the document tells it (the
/// status, time, provider and detail of that entry; the rest as the document stands).
pub fn state_at(record: &MessageRecord, seq: usize) -> MessageRecord {
    let mut state = record.clone();
    if let Some(HistoryEntry {
        status,
        at,
        provider,
        detail,
    }) = record.history.get(seq)
    {
        state.status = *status;
        state.updated_at = *at;
        state.provider = provider.clone().or(state.provider);
        if seq + 1 < record.history.len() {
            state.error = detail.clone();
        }
        state.history.truncate(seq + 1);
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::trait_value::TraitValue;
    use crate::domain::user_profile::EventStats;

    #[test]
    fn a_user_reads_as_its_document_with_dates_in_rfc3339_and_its_version() {
        let mut p = Profile::default();
        p.traits.insert("plan", TraitValue::string("pro"));
        p.tags.insert("vip");
        p.event_count = 2;
        p.events.insert(
            "signup",
            EventStats {
                count: 2,
                first_at: 0,
                last_at: 1_500,
            },
        );
        p.first_seen = Some(0).into();
        p.last_seen = Some(1_500).into();
        let v = user_json("u1", &p, None, 2_000, Some(7));
        assert_eq!(
            v,
            json!({"_id": "u1", "traits": {"plan": "pro"}, "tags": ["vip"], "event_count": 2,
                "events": {"signup": {"count": 2, "first_at": "1970-01-01T00:00:00.000Z",
                    "last_at": "1970-01-01T00:00:01.500Z"}},
                "first_seen": "1970-01-01T00:00:00.000Z", "last_seen": "1970-01-01T00:00:01.500Z",
                "updated_at": "1970-01-01T00:00:02.000Z", "version": 7})
        );
        let merged = user_json("u0", &p, Some("u1"), 2_000, Some(3));
        assert_eq!(
            merged,
            json!({"_id": "u0", "merged_into": "u1", "version": 3})
        );
        let read = user_json("u0", &Profile::default(), None, 0, None);
        assert_eq!(read["first_seen"], Value::Null);
        assert!(read.get("version").is_none());
    }

    #[test]
    fn a_change_reads_as_its_history_entry() {
        use crate::domain::campaign::Channel;
        use crate::domain::message::MessageStatus;
        let entry = |status, at, detail: Option<&str>| HistoryEntry {
            status,
            at,
            provider: Some("sim".into()),
            detail: detail.map(str::to_string),
        };
        let m = MessageRecord {
            id: "w:1".into(),
            user_id: "u".into(),
            campaign: "w".into(),
            channel: Channel::Sms,
            to: None,
            body: "hi".into(),
            subject: None,
            provider: Some("sim".into()),
            status: MessageStatus::Delivered,
            attempts: 2,
            provider_message_id: Some("p".into()),
            error: None,
            created_at: 1,
            updated_at: 9,
            history: vec![
                entry(MessageStatus::Queued, 1, None),
                entry(MessageStatus::Retrying, 4, Some("503")),
                entry(MessageStatus::Delivered, 9, None),
            ],
            lookup_at: None,
            held_until: None,
        };
        let at1 = state_at(&m, 1);
        assert_eq!((at1.status, at1.updated_at), (MessageStatus::Retrying, 4));
        assert_eq!(at1.error.as_deref(), Some("503"));
        assert_eq!(at1.history.len(), 2);
        let last = state_at(&m, 2);
        assert_eq!(last, m, "the last entry is the document as it stands");
    }
}
