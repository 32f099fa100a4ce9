//! When a message still `sent` is looked up at its provider (a status lookup, for providers
//! that did not call back): first `after_ms` after its send, then again after as long as it
//! has waited so far (so the lookups of one message thin out geometrically), at most every
//! [`MAX_WAIT_MS`], and never later than `max_age_ms` after the send.

/// The longest wait between two lookups of one message.
pub const MAX_WAIT_MS: i64 = 6 * 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupSchedule {
    /// The first lookup, this long after the send.
    pub after_ms: i64,
    /// No lookup is scheduled later than this long after the send.
    pub max_age_ms: i64,
}

impl LookupSchedule {
    /// The first lookup of a send made at `sent_at`; `None` when `max_age_ms` is shorter than
    /// `after_ms` (lookups are off).
    pub fn first(&self, sent_at: i64) -> Option<i64> {
        (self.after_ms <= self.max_age_ms).then(|| sent_at.saturating_add(self.after_ms))
    }

    /// The lookup after one made at `now` of a send made at `sent_at`; `None` once the last
    /// one (at `max_age_ms`) is made.
    pub fn next(&self, sent_at: i64, now: i64) -> Option<i64> {
        let last = sent_at.saturating_add(self.max_age_ms);
        if now >= last {
            return None;
        }
        let waited = now.saturating_sub(sent_at);
        let wait = waited.clamp(self.after_ms.max(1), MAX_WAIT_MS.max(self.after_ms));
        Some(now.saturating_add(wait).min(last))
    }

    /// Whether a lookup that fell due at `due_at` is past the last one allowed (scheduled by
    /// an earlier configuration with a longer `max_age_ms`).
    pub fn is_expired(&self, sent_at: i64, due_at: i64) -> bool {
        due_at.saturating_sub(sent_at) > self.max_age_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn the_defaults_look_up_a_few_dozen_times_over_three_days() {
        let s = LookupSchedule {
            after_ms: 600_000,
            max_age_ms: 72 * HOUR,
        };
        let mut at = s.first(0).unwrap();
        assert_eq!(at, 600_000);
        let mut times = vec![at];
        while let Some(next) = s.next(0, at) {
            times.push(next);
            at = next;
        }
        assert_eq!(*times.last().unwrap(), 72 * HOUR);
        assert_eq!(&times[..4], &[600_000, 1_200_000, 2_400_000, 4_800_000]);
        assert!(times.len() < 20, "{times:?}");
    }

    #[test]
    fn lookups_are_off_when_the_age_limit_is_shorter_than_the_wait() {
        let s = LookupSchedule {
            after_ms: 10,
            max_age_ms: 5,
        };
        assert_eq!(s.first(100), None);
    }
}
