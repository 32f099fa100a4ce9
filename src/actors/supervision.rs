//! Supervision helpers: restart intensity (Erlang's "at most N restarts in T") and panic
//! containment for handlers and futures, so one bad event cannot take an arbiter down.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;

/// At most `max` restarts within `window`; beyond that the failure escalates.
#[derive(Debug, Clone)]
pub struct RestartIntensity {
    max: usize,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl Default for RestartIntensity {
    fn default() -> Self {
        RestartIntensity::new(5, Duration::from_secs(10))
    }
}

impl RestartIntensity {
    pub fn new(max: usize, window: Duration) -> Self {
        RestartIntensity {
            max,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; false when the limit is exceeded (escalate).
    pub fn allow(&mut self, now: Instant) -> bool {
        while let Some(t) = self.recent.front() {
            if now.duration_since(*t) > self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        self.recent.len() <= self.max
    }
}

/// The message of a caught panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Runs `f`, turning a panic into `Err(message)`.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_message(p.as_ref()))
}

/// Polls `fut`, turning a panic into `Err(message)`.
pub async fn contain_async<T>(fut: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(|p| panic_message(p.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intensity_limits_restarts_in_window() {
        let mut r = RestartIntensity::new(2, Duration::from_secs(10));
        let t = Instant::now();
        assert!(r.allow(t));
        assert!(r.allow(t));
        assert!(!r.allow(t));
        assert!(r.allow(t + Duration::from_secs(11)));
    }

    #[test]
    fn contains_panics() {
        assert_eq!(contain(|| 1), Ok(1));
        let e = contain(|| -> u32 { panic!("boom") }).unwrap_err();
        assert_eq!(e, "boom");
    }
}
