//! The retry policy (REFERENCE.md §5): attempt `n` is due after `base × 2^(n-1)` with full
//! jitter, capped at `max_delay`; after `max_attempts` the message fails.

/// Retry settings (`retry.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base_ms: u64,
    pub max_delay_ms: u64,
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_ms: 2_000,
            max_delay_ms: 300_000,
            max_attempts: 5,
        }
    }
}

/// What to do after attempt number `attempts_made` failed retryably.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again as attempt `attempt` after `delay_ms`.
    RetryAfter {
        attempt: u32,
        delay_ms: u64,
    },
    GiveUp,
}

impl RetryPolicy {
    /// The un-jittered ceiling of the delay before retry number `n` (n ≥ 1).
    pub fn ceiling_ms(&self, n: u32) -> u64 {
        let shift = n.saturating_sub(1).min(63);
        self.base_ms
            .saturating_mul(1u64 << shift)
            .min(self.max_delay_ms)
    }

    /// `unit` is a uniform random number in `[0, 1)` (full jitter); `min_delay_ms` honours a
    /// provider's `Retry-After`.
    pub fn decide(&self, attempts_made: u32, unit: f64, min_delay_ms: u64) -> RetryDecision {
        if attempts_made >= self.max_attempts {
            return RetryDecision::GiveUp;
        }
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let ceiling = self.ceiling_ms(attempts_made.max(1));
        let jittered = (ceiling as f64 * unit) as u64;
        // A provider's `Retry-After` is honoured up to `max_delay_ms`: a huge one (`9e15`)
        // must neither overflow the due time nor park the message for ever.
        let floor = min_delay_ms.min(self.max_delay_ms);
        RetryDecision::RetryAfter {
            attempt: attempts_made + 1,
            delay_ms: jittered.min(ceiling).max(floor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_with_cap() {
        let p = RetryPolicy {
            base_ms: 100,
            max_delay_ms: 1_000,
            max_attempts: 10,
        };
        assert_eq!(p.ceiling_ms(1), 100);
        assert_eq!(p.ceiling_ms(2), 200);
        assert_eq!(p.ceiling_ms(4), 800);
        assert_eq!(p.ceiling_ms(5), 1_000);
        assert_eq!(p.ceiling_ms(200), 1_000);
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let p = RetryPolicy::default();
        assert_eq!(p.decide(5, 0.5, 0), RetryDecision::GiveUp);
        assert_eq!(
            p.decide(1, 0.5, 0),
            RetryDecision::RetryAfter {
                attempt: 2,
                delay_ms: 1_000
            }
        );
    }

    #[test]
    fn retry_after_is_capped_by_the_maximum_delay() {
        let p = RetryPolicy::default();
        for huge in [9_000_000_000_000_000_000, u64::MAX] {
            assert_eq!(
                p.decide(1, 0.5, huge),
                RetryDecision::RetryAfter {
                    attempt: 2,
                    delay_ms: p.max_delay_ms
                }
            );
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.decide(1, 0.0, 5_000),
            RetryDecision::RetryAfter {
                attempt: 2,
                delay_ms: 5_000
            }
        );
    }
}
