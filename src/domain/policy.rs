//! Messaging policy, the pure part (ARCHITECTURE.md, "Messaging policy"): whether a triggered
//! message may go now, later or not at all — a user's channel and category opt-outs, a
//! campaign's quiet hours in the user's time zone, and the sliding window of a frequency cap.
//! Not wired into the pipeline yet.

use chrono::{LocalResult, NaiveDate, NaiveTime, TimeZone, Timelike};
use chrono_tz::Tz;
use serde_json::Value;

use super::user_profile::TraitLookup;

/// Why a message is not sent (the `skipped` detail and the `reason` of
/// `herald_policy_skipped_total`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// `opted_out: <channel or category>`.
    OptedOut(String),
    QuietHours,
    FrequencyCapped,
}

impl SkipReason {
    pub fn code(&self) -> &'static str {
        match self {
            SkipReason::OptedOut(_) => "opted_out",
            SkipReason::QuietHours => "quiet_hours",
            SkipReason::FrequencyCapped => "frequency_capped",
        }
    }
}

/// The channel or category a user opted out of, if any: `traits.preferences.<channel>` or
/// `traits.preferences.categories.<category>` set to `false` (anything else opts out of
/// nothing).
pub fn opted_out(
    profile: &impl TraitLookup,
    channel: &str,
    category: Option<&str>,
) -> Option<String> {
    let preferences = profile.trait_value("preferences")?;
    if preferences.get(channel) == Some(&Value::Bool(false)) {
        return Some(channel.to_string());
    }
    let category = category?;
    if preferences.get("categories")?.get(category) == Some(&Value::Bool(false)) {
        return Some(category.to_string());
    }
    None
}

/// What quiet hours do to a message inside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuietPolicy {
    /// `held` until the window ends.
    Hold,
    /// `skipped` with `quiet_hours`.
    Drop,
}

/// A daily window of local wall-clock time, `[start, end)`; `start > end` crosses midnight,
/// `start == end` is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
    pub policy: QuietPolicy,
}

/// The user's time zone: `traits.timezone` when it names one, else `default`.
pub fn time_zone(profile: &impl TraitLookup, default: Tz) -> Tz {
    profile
        .trait_value("timezone")
        .and_then(|v| v.as_str().and_then(|name| name.parse::<Tz>().ok()))
        .unwrap_or(default)
}

impl QuietHours {
    /// Parses `"HH:MM"` times.
    pub fn new(start: &str, end: &str, policy: QuietPolicy) -> Result<QuietHours, String> {
        let time = |t: &str| {
            NaiveTime::parse_from_str(t, "%H:%M")
                .map_err(|_| format!("{t:?} is not a time of day as HH:MM"))
        };
        Ok(QuietHours {
            start: time(start)?,
            end: time(end)?,
            policy,
        })
    }

    fn contains_local(&self, t: NaiveTime) -> bool {
        if self.start <= self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// Whether the instant `at_ms` falls in the window, in `tz`.
    pub fn contains(&self, at_ms: i64, tz: Tz) -> bool {
        match tz.timestamp_millis_opt(at_ms).single() {
            Some(local) => self.contains_local(local.time()),
            None => false,
        }
    }

    /// When the window that holds `at_ms` ends: the first instant at or after `at_ms` whose
    /// local time is `end` — where `end` falls in a gap (a spring-forward day), the first
    /// instant after the gap; where it occurs twice (a fall-back day), whichever occurrence
    /// comes first after `at_ms`.
    pub fn window_end(&self, at_ms: i64, tz: Tz) -> i64 {
        let Some(local) = tz.timestamp_millis_opt(at_ms).single() else {
            return at_ms;
        };
        let today = local.date_naive();
        (0..=2)
            .filter_map(|days| today.checked_add_days(chrono::Days::new(days)))
            .flat_map(|date| instants_at(tz, date, self.end))
            .filter(|t| *t >= at_ms)
            .min()
            .unwrap_or(at_ms)
    }
}

/// The instants (ms) whose local date and time in `tz` are `date` and `time`: one, two (a
/// fall-back hour), or — when that local time does not exist — the first instant after the
/// gap.
fn instants_at(tz: Tz, date: NaiveDate, time: NaiveTime) -> Vec<i64> {
    let mut naive = date.and_time(time);
    // A gap is at most a day long (Samoa skipped one in 2011): step through it by minutes.
    for _ in 0..=(26 * 60) {
        match tz.from_local_datetime(&naive) {
            LocalResult::Single(t) => return vec![t.timestamp_millis()],
            LocalResult::Ambiguous(a, b) => {
                return vec![a.timestamp_millis(), b.timestamp_millis()]
            }
            LocalResult::None => {}
        }
        naive += chrono::Duration::minutes(1);
        let Some(whole) = naive.with_second(0) else {
            return Vec::new();
        };
        naive = whole;
    }
    Vec::new()
}

/// What policy decides at the trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Send,
    Skip(SkipReason),
    /// `held` until then (ms).
    Hold(i64),
}

/// A campaign's policy, as the trigger checks it: preferences (unless `critical`), then
/// quiet hours. Frequency caps are checked at dispatch ([`take_slot`]).
#[derive(Debug, Clone)]
pub struct CampaignPolicy<'a> {
    pub channel: &'a str,
    pub category: Option<&'a str>,
    pub critical: bool,
    pub quiet_hours: Option<QuietHours>,
}

pub fn decide(
    policy: &CampaignPolicy<'_>,
    profile: &impl TraitLookup,
    now_ms: i64,
    default_tz: Tz,
) -> Decision {
    if !policy.critical {
        if let Some(what) = opted_out(profile, policy.channel, policy.category) {
            return Decision::Skip(SkipReason::OptedOut(what));
        }
    }
    if let Some(q) = &policy.quiet_hours {
        let tz = time_zone(profile, default_tz);
        if q.contains(now_ms, tz) {
            return match q.policy {
                QuietPolicy::Hold => Decision::Hold(q.window_end(now_ms, tz)),
                QuietPolicy::Drop => Decision::Skip(SkipReason::QuietHours),
            };
        }
    }
    Decision::Send
}

/// `[[frequency_caps]]`: at most `max` messages per user on `channel` in any `per_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrequencyCap {
    pub channel: super::campaign::Channel,
    pub max: usize,
    pub per_ms: i64,
}

/// A frequency cap's count for one user and channel: the messages dispatched in the last
/// `per_ms`, by id, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapWindow {
    pub entries: Vec<(String, i64)>,
}

/// What asking for a slot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Counted now.
    Taken,
    /// This message was counted before (a retry, a replay, a second instance): it goes.
    AlreadyCounted,
    /// `max` messages in the window already: skipped, `frequency_capped`.
    Full,
}

impl CapWindow {
    /// Counts message `id` dispatched at `now_ms` if fewer than `max` were in the `per_ms`
    /// before it; entries that fell out of the window are dropped first (a message asked about
    /// again after its window passed counts in the new one: otherwise it would go uncounted
    /// beside `max` others).
    pub fn take_slot(&mut self, id: &str, now_ms: i64, max: usize, per_ms: i64) -> Slot {
        self.entries
            .retain(|(_, at)| now_ms.saturating_sub(*at) < per_ms);
        if self.entries.iter().any(|(e, _)| e == id) {
            return Slot::AlreadyCounted;
        }
        if self.entries.len() >= max {
            return Slot::Full;
        }
        self.entries.push((id.to_string(), now_ms));
        Slot::Taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn traits(v: Value) -> BTreeMap<String, Value> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    struct Traits(BTreeMap<String, Value>);
    impl TraitLookup for Traits {
        fn trait_value(&self, key: &str) -> Option<std::borrow::Cow<'_, Value>> {
            self.0.get(key).map(std::borrow::Cow::Borrowed)
        }
        fn each_trait(&self, f: &mut dyn FnMut(&str, &Value)) {
            for (k, v) in &self.0 {
                f(k, v);
            }
        }
        fn each_event(&self, _: &mut dyn FnMut(&str, &crate::domain::user_profile::EventStats)) {}
    }

    fn ms(tz: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn channel_and_category_opt_outs_and_critical() {
        let p = Traits(traits(json!({"preferences": {"sms": false, "email": true,
            "categories": {"marketing": false}}})));
        assert_eq!(opted_out(&p, "sms", None), Some("sms".into()));
        assert_eq!(
            opted_out(&p, "email", Some("marketing")),
            Some("marketing".into())
        );
        assert_eq!(opted_out(&p, "email", Some("billing")), None);
        assert_eq!(opted_out(&p, "push", None), None);
        let policy = CampaignPolicy {
            channel: "sms",
            category: None,
            critical: true,
            quiet_hours: None,
        };
        assert_eq!(decide(&policy, &p, 0, Tz::UTC), Decision::Send);
    }

    #[test]
    fn a_window_across_midnight_holds_until_its_local_end() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let q = QuietHours::new("21:00", "08:00", QuietPolicy::Hold).unwrap();
        let late = ms(ny, 2026, 6, 1, 23, 0);
        assert!(q.contains(late, ny));
        assert_eq!(q.window_end(late, ny), ms(ny, 2026, 6, 2, 8, 0));
        assert!(!q.contains(ms(ny, 2026, 6, 1, 12, 0), ny));
    }

    #[test]
    fn an_end_in_the_spring_forward_gap_is_the_first_instant_after_it() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT.
        let q = QuietHours::new("21:00", "02:30", QuietPolicy::Hold).unwrap();
        let night = ms(ny, 2026, 3, 7, 23, 0);
        let end = q.window_end(night, ny);
        assert_eq!(end, ms(ny, 2026, 3, 8, 3, 0));
        let lord_howe: Tz = "Australia/Lord_Howe".parse().unwrap();
        // 2026-10-04: 02:00 jumps to 02:30 (a 30-minute shift).
        let q = QuietHours::new("22:00", "02:15", QuietPolicy::Hold).unwrap();
        let end = q.window_end(ms(lord_howe, 2026, 10, 3, 23, 0), lord_howe);
        assert_eq!(end, ms(lord_howe, 2026, 10, 4, 2, 30));
    }

    #[test]
    fn in_the_repeated_fall_back_hour_the_window_ends_at_the_next_occurrence() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:00-02:00 happens twice.
        let q = QuietHours::new("01:00", "01:30", QuietPolicy::Hold).unwrap();
        let first = ny
            .with_ymd_and_hms(2026, 11, 1, 1, 10, 0)
            .earliest()
            .unwrap();
        let second = ny.with_ymd_and_hms(2026, 11, 1, 1, 10, 0).latest().unwrap();
        let ends = |t: chrono::DateTime<Tz>| q.window_end(t.timestamp_millis(), ny);
        assert_eq!(
            ends(first) - first.timestamp_millis(),
            20 * 60_000,
            "01:30 EDT"
        );
        assert_eq!(
            ends(second) - second.timestamp_millis(),
            20 * 60_000,
            "01:30 EST"
        );
    }

    #[test]
    fn caps_count_each_message_once_in_a_sliding_window() {
        let mut w = CapWindow::default();
        assert_eq!(w.take_slot("a", 0, 2, 100), Slot::Taken);
        assert_eq!(w.take_slot("a", 10, 2, 100), Slot::AlreadyCounted);
        assert_eq!(w.take_slot("b", 20, 2, 100), Slot::Taken);
        assert_eq!(w.take_slot("c", 99, 2, 100), Slot::Full);
        assert_eq!(w.take_slot("c", 100, 2, 100), Slot::Taken);
    }
}
