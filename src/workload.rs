//! Deterministic Segment-shaped workloads for `herald demo`, `herald produce`, tests and
//! benchmarks: the same `(events, users, seed)` always yields the same bytes.
//!
//! A workload mixes identify and track calls, re-published duplicates (same bytes, same
//! `messageId`) and invalid messages of every kind the generator can build; with
//! `visitor_rate`, anonymous visitors too (`anonymousId` page views and tracks), each later
//! aliased into a user once — a visitor who signs up. Visitors set no traits or tags, so where
//! their records land relative to the alias changes no profile: a sequential replay predicts
//! the result whatever order partitions are read in.

use std::fmt::Write as _;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadSpec {
    pub events: u64,
    pub users: u64,
    pub seed: u64,
    /// Share of messages that re-publish an earlier valid message.
    pub duplicate_rate: f64,
    /// Share of messages that are invalid.
    pub invalid_rate: f64,
    /// Event time of the first message (ms since epoch).
    pub start_ms: i64,
    /// Share of messages from anonymous visitors and their aliases.
    pub visitor_rate: f64,
}

impl WorkloadSpec {
    pub fn new(events: u64, users: u64, seed: u64) -> Self {
        WorkloadSpec {
            events,
            users: users.max(1),
            seed,
            duplicate_rate: 0.01,
            invalid_rate: 0.01,
            // 2026-11-23T00:00:00Z
            start_ms: 1_795_392_000_000,
            visitor_rate: 0.0,
        }
    }

    /// With anonymous visitors and their aliases (`visitor_rate` of the messages).
    pub fn with_visitors(mut self, rate: f64) -> Self {
        self.visitor_rate = rate;
        self
    }
}

/// One generated message.
#[derive(Debug, Clone)]
pub struct GeneratedMessage {
    /// The record key: the `userId` (or a best-effort key for invalid messages).
    pub key: String,
    pub payload: Bytes,
    pub kind: MessageKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Valid,
    Duplicate,
    Invalid,
}

/// Track event names with their weights (out of 100).
const EVENT_NAMES: [(&str, u32); 6] = [
    ("page_viewed", 40),
    ("app_opened", 25),
    ("added_to_cart", 20),
    ("purchased", 8),
    ("signed_up", 5),
    ("password_reset", 2),
];
const FIRST_NAMES: [&str; 8] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Frances", "Zoë",
];
const PLANS: [&str; 3] = ["free", "pro", "team"];
/// `traits.timezone` values: quiet hours (REFERENCE.md §12) fall at different instants.
const TIME_ZONES: [&str; 6] = [
    "America/New_York",
    "Europe/Zurich",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Auckland",
    "Not/A_Zone",
];
const TAGS: [&str; 5] = ["vip", "trial", "beta", "churn_risk", "newsletter"];

/// An iterator over the workload's messages, in publication order.
pub struct Workload {
    spec: WorkloadSpec,
    rng: SmallRng,
    next: u64,
    recent_valid: Vec<(String, Bytes)>,
    buf: String,
    /// Visitors so far, and how many of them (the oldest) were aliased.
    visitors: u64,
    aliased: u64,
}

impl Workload {
    pub fn new(spec: WorkloadSpec) -> Self {
        Workload {
            spec,
            rng: SmallRng::seed_from_u64(spec.seed),
            next: 0,
            recent_valid: Vec::with_capacity(1024),
            buf: String::with_capacity(512),
            visitors: 0,
            aliased: 0,
        }
    }

    /// A visitor's page view or track, or the alias of the oldest visitor not aliased yet
    /// into a user.
    fn visitor(&mut self, i: u64) -> (String, Bytes) {
        let ts = self.timestamp(i);
        let id = format!("m-{}-{i}", self.spec.seed);
        let seed = self.spec.seed;
        if self.aliased < self.visitors && self.rng.gen_bool(0.25) {
            let visitor = format!("anon-{seed}-{}", self.aliased);
            self.aliased += 1;
            let user = format!("u-{}", self.rng.gen_range(0..self.spec.users));
            let body = format!(
                r#"{{"messageId":"{id}","type":"alias","previousId":"{visitor}","userId":"{user}","timestamp":"{ts}"}}"#
            );
            return (user, Bytes::from(body.into_bytes()));
        }
        if self.visitors == 0 || self.rng.gen_bool(0.3) {
            self.visitors += 1;
        }
        // One of the last 100 visitors, aliased or not (an aliased one's records follow it).
        let k = self.visitors - 1 - self.rng.gen_range(0..self.visitors.min(100));
        let visitor = format!("anon-{seed}-{k}");
        let body = if self.rng.gen_bool(0.6) {
            format!(
                r#"{{"messageId":"{id}","type":"page","anonymousId":"{visitor}","timestamp":"{ts}","name":"Home"}}"#
            )
        } else {
            let event = ["app_opened", "added_to_cart"][self.rng.gen_range(0..2)];
            format!(
                r#"{{"messageId":"{id}","type":"track","anonymousId":"{visitor}","timestamp":"{ts}","event":"{event}"}}"#
            )
        };
        (visitor, Bytes::from(body.into_bytes()))
    }

    fn timestamp(&mut self, i: u64) -> String {
        // Roughly 10 ms apart with ±5 s of jitter, so event times arrive out of order.
        let jitter = self.rng.gen_range(-5_000i64..=5_000);
        let ms = self.spec.start_ms + (i as i64) * 10 + jitter;
        let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
        t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }

    fn valid(&mut self, i: u64) -> (String, Bytes) {
        let user = format!("u-{}", self.rng.gen_range(0..self.spec.users));
        let ts = self.timestamp(i);
        let id = format!("m-{}-{i}", self.spec.seed);
        self.buf.clear();
        let b = &mut self.buf;
        if self.rng.gen_bool(0.3) {
            let _ = write!(
                b,
                r#"{{"messageId":"{id}","type":"identify","userId":"{user}","timestamp":"{ts}","traits":{{"#
            );
            let mut first = true;
            let mut field = |b: &mut String, k: &str, v: String| {
                if !first {
                    b.push(',');
                }
                first = false;
                let _ = write!(b, r#""{k}":{v}"#);
            };
            if self.rng.gen_bool(0.5) {
                let n = FIRST_NAMES[self.rng.gen_range(0..FIRST_NAMES.len())];
                field(b, "first_name", format!("\"{n}\""));
            }
            if self.rng.gen_bool(0.6) {
                let digits = self.rng.gen_range(1_000_000u64..9_999_999);
                field(b, "phone", format!("\"+1555{digits}\""));
            }
            if self.rng.gen_bool(0.4) {
                field(b, "email", format!("\"{user}@example.com\""));
            }
            if self.rng.gen_bool(0.5) {
                field(b, "subscribed", self.rng.gen_bool(0.7).to_string());
            }
            if self.rng.gen_bool(0.3) {
                let plan = if self.rng.gen_bool(0.2) {
                    "null".to_string()
                } else {
                    format!("\"{}\"", PLANS[self.rng.gen_range(0..PLANS.len())])
                };
                field(b, "plan", plan);
            }
            if self.rng.gen_bool(0.2) {
                field(b, "score", self.rng.gen_range(0..1000).to_string());
            }
            if self.rng.gen_bool(0.2) {
                let zone = TIME_ZONES[self.rng.gen_range(0..TIME_ZONES.len())];
                field(b, "timezone", format!("\"{zone}\""));
            }
            if self.rng.gen_bool(0.05) {
                let preferences = if self.rng.gen_bool(0.5) {
                    r#"{"categories":{"marketing":false}}"#
                } else {
                    r#"{"sms":false}"#
                };
                field(b, "preferences", preferences.to_string());
            }
            if self.rng.gen_bool(0.1) {
                field(
                    b,
                    "address",
                    r#"{"city":"Zürich","zip":"8001"}"#.to_string(),
                );
            }
            b.push('}');
            if self.rng.gen_bool(0.3) {
                let add = TAGS[self.rng.gen_range(0..TAGS.len())];
                let remove = TAGS[self.rng.gen_range(0..TAGS.len())];
                let _ = write!(b, r#","tags":{{"add":["{add}"],"remove":["{remove}"]}}"#);
            }
            b.push('}');
        } else {
            let mut pick = self.rng.gen_range(0..100u32);
            let mut name = EVENT_NAMES[0].0;
            for (n, w) in EVENT_NAMES {
                if pick < w {
                    name = n;
                    break;
                }
                pick -= w;
            }
            let _ = write!(
                b,
                r#"{{"messageId":"{id}","type":"track","userId":"{user}","timestamp":"{ts}","event":"{name}","properties":{{"source":"web","n":{i}}}}}"#
            );
        }
        (user, Bytes::from(self.buf.clone().into_bytes()))
    }

    fn invalid(&mut self, i: u64) -> (String, Bytes) {
        let user = format!("u-{}", self.rng.gen_range(0..self.spec.users));
        let ts = self.timestamp(i);
        let id = format!("bad-{}-{i}", self.spec.seed);
        let body = match self.rng.gen_range(0..8) {
            0 => format!(r#"{{"messageId":"{id}","type":"track","userId":"{user}","#),
            1 => format!(r#"{{"messageId":"{id}","type":"track","timestamp":"{ts}","event":"x"}}"#),
            2 => format!(
                r#"{{"messageId":"{id}","type":"track","userId":"{user}","timestamp":"not a time","event":"x"}}"#
            ),
            3 => format!(
                r#"{{"messageId":"{id}","type":"pageview","userId":"{user}","timestamp":"{ts}"}}"#
            ),
            4 => format!(
                r#"{{"messageId":"{id}","type":"track","userId":"{user}","timestamp":"{ts}","event":"no/slashes"}}"#
            ),
            5 => format!(
                r#"{{"messageId":"{id}","type":"identify","userId":"{user}","timestamp":"{ts}","traits":"oops"}}"#
            ),
            6 => format!(r#"["{id}","{user}"]"#),
            _ => format!(
                r#"{{"messageId":{i},"type":"track","userId":"{user}","timestamp":"{ts}","event":"x"}}"#
            ),
        };
        (user, Bytes::from(body.into_bytes()))
    }
}

impl Iterator for Workload {
    type Item = GeneratedMessage;

    fn next(&mut self) -> Option<GeneratedMessage> {
        if self.next >= self.spec.events {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let roll: f64 = self.rng.gen();
        if roll < self.spec.invalid_rate {
            let (key, payload) = self.invalid(i);
            return Some(GeneratedMessage {
                key,
                payload,
                kind: MessageKind::Invalid,
            });
        }
        if roll < self.spec.invalid_rate + self.spec.duplicate_rate && !self.recent_valid.is_empty()
        {
            let (key, payload) =
                self.recent_valid[self.rng.gen_range(0..self.recent_valid.len())].clone();
            return Some(GeneratedMessage {
                key,
                payload,
                kind: MessageKind::Duplicate,
            });
        }
        let (key, payload) =
            if self.spec.visitor_rate > 0.0 && self.rng.gen_bool(self.spec.visitor_rate.min(1.0)) {
                self.visitor(i)
            } else {
                self.valid(i)
            };
        if self.recent_valid.len() < 1024 {
            self.recent_valid.push((key.clone(), payload.clone()));
        } else {
            let slot = self.rng.gen_range(0..1024);
            self.recent_valid[slot] = (key.clone(), payload.clone());
        }
        Some(GeneratedMessage {
            key,
            payload,
            kind: MessageKind::Valid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::decode;

    #[test]
    fn deterministic_and_classified_correctly() {
        let a: Vec<_> = Workload::new(WorkloadSpec::new(5_000, 100, 7)).collect();
        let b: Vec<_> = Workload::new(WorkloadSpec::new(5_000, 100, 7)).collect();
        assert_eq!(a.len(), 5_000);
        assert!(a.iter().zip(&b).all(|(x, y)| x.payload == y.payload));
        let mut kinds = std::collections::HashMap::new();
        for m in &a {
            let ok = decode(&m.payload, 1 << 20).is_ok();
            assert_eq!(
                ok,
                m.kind != MessageKind::Invalid,
                "{:?}",
                String::from_utf8_lossy(&m.payload)
            );
            *kinds.entry(m.kind as u8).or_insert(0) += 1;
        }
        assert_eq!(kinds.len(), 3, "valid, duplicate and invalid all present");
    }

    #[test]
    fn visitors_are_aliased_once_each() {
        let spec = WorkloadSpec::new(20_000, 100, 3).with_visitors(0.2);
        let mut aliased = std::collections::HashSet::new();
        let mut visitors = 0;
        for m in Workload::new(spec).filter(|m| m.kind == MessageKind::Valid) {
            let e = decode(&m.payload, 1 << 20).unwrap();
            match e.kind {
                crate::domain::event::EventKind::Alias { previous_id } => {
                    assert!(aliased.insert(previous_id), "aliased twice");
                    assert_eq!(m.key, e.user_id);
                }
                _ if e.user_id.starts_with("anon-") => visitors += 1,
                _ => {}
            }
        }
        assert!(
            aliased.len() > 500 && visitors > 2_000,
            "{} {visitors}",
            aliased.len()
        );
    }
}
