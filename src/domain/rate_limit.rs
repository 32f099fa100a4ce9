//! A token bucket: `rate` per second, holding at most one second's worth (`rate`, at least
//! 1), so a client may burst a second of its allowance and no more. Time is passed in.

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at_ms: i64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: f64, now_ms: i64) -> Self {
        let capacity = rate_per_sec.max(1.0);
        TokenBucket {
            rate: rate_per_sec.max(f64::MIN_POSITIVE),
            capacity,
            tokens: capacity,
            at_ms: now_ms,
        }
    }

    /// Whether the bucket would be full at `now_ms` (its holder has been idle a second or
    /// more): such a bucket can be forgotten and made anew without forgiving anything.
    pub fn is_full(&self, now_ms: i64) -> bool {
        let elapsed = (now_ms - self.at_ms).max(0) as f64 / 1000.0;
        self.tokens + elapsed * self.rate >= self.capacity
    }

    /// Takes one token, or says in how many milliseconds one is there.
    pub fn take(&mut self, now_ms: i64) -> Result<(), u64> {
        let elapsed = (now_ms - self.at_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / self.rate) * 1000.0).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_second_of_burst_then_the_rate() {
        let mut b = TokenBucket::new(10.0, 0);
        for _ in 0..10 {
            assert!(b.take(0).is_ok());
        }
        let wait = b.take(0).unwrap_err();
        assert_eq!(wait, 100);
        assert!(b.take(99).is_err());
        assert!(b.take(100).is_ok());
        // A long pause refills to the capacity, not beyond.
        for _ in 0..10 {
            assert!(b.take(60_000).is_ok());
        }
        assert!(b.take(60_000).is_err());
    }

    #[test]
    fn is_full_once_idle_long_enough() {
        let mut b = TokenBucket::new(10.0, 0);
        assert!(b.is_full(0));
        b.take(0).unwrap();
        assert!(!b.is_full(0));
        assert!(!b.is_full(50));
        assert!(b.is_full(100));
    }

    #[test]
    fn a_slow_rate_waits_whole_seconds() {
        let mut b = TokenBucket::new(0.5, 0);
        assert!(b.take(0).is_ok());
        assert_eq!(b.take(0).unwrap_err(), 2_000);
        assert!(b.take(2_000).is_ok());
    }
}
