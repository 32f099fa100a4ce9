//! The in-process provider simulator: random 5xx, 429 and 4xx answers, send latency, and
//! delivery callbacks (`delivered` or `undelivered`) delivered back into Herald through a
//! [`CallbackSink`], retried until they are accepted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::ports::{
    BoxFut, Callback, CallbackSink, CallbackStatus, Provider, SendOutcome, SendRequest,
};

/// How the simulator behaves; rates are probabilities in `[0, 1]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimBehaviour {
    pub fail_rate: f64,
    pub throttle_rate: f64,
    pub reject_rate: f64,
    pub undelivered_rate: f64,
    pub latency_ms: u64,
    pub callback_latency_ms: u64,
}

pub struct SimulatedProvider {
    name: String,
    behaviour: SimBehaviour,
    rng: Mutex<SmallRng>,
    sink: OnceLock<Arc<dyn CallbackSink>>,
    next_id: AtomicU64,
    /// Sends seen per idempotency key (to prove "at most one send per attempt").
    sends: Mutex<HashMap<String, u32, ahash::RandomState>>,
    accepted: AtomicU64,
}

impl SimulatedProvider {
    pub fn new(name: impl Into<String>, behaviour: SimBehaviour, seed: u64) -> Arc<Self> {
        Arc::new(SimulatedProvider {
            name: name.into(),
            behaviour,
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            sink: OnceLock::new(),
            next_id: AtomicU64::new(1),
            sends: Mutex::new(HashMap::default()),
            accepted: AtomicU64::new(0),
        })
    }

    /// Where delivery callbacks go; set once the pipeline is built.
    pub fn connect(&self, sink: Arc<dyn CallbackSink>) {
        let _ = self.sink.set(sink);
    }

    /// Total sends received (every attempt, whatever the answer).
    pub fn sends(&self) -> u64 {
        self.sends.lock().values().map(|n| *n as u64).sum()
    }

    /// Idempotency keys that were sent more than once.
    pub fn repeated_keys(&self) -> Vec<String> {
        self.sends
            .lock()
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

enum Roll {
    Reject,
    Throttle,
    Fail,
    Accept { undelivered: bool },
}

impl Provider for SimulatedProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, request: SendRequest) -> BoxFut<SendOutcome> {
        *self
            .sends
            .lock()
            .entry(request.idempotency_key())
            .or_insert(0) += 1;
        let b = self.behaviour;
        let roll = {
            let mut rng = self.rng.lock();
            let x: f64 = rng.gen();
            if x < b.reject_rate {
                Roll::Reject
            } else if x < b.reject_rate + b.throttle_rate {
                Roll::Throttle
            } else if x < b.reject_rate + b.throttle_rate + b.fail_rate {
                Roll::Fail
            } else {
                Roll::Accept {
                    undelivered: rng.gen_bool(b.undelivered_rate.clamp(0.0, 1.0)),
                }
            }
        };
        let provider_message_id = format!(
            "{}-{}",
            self.name,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let sink = self.sink.get().cloned();
        let name = self.name.clone();
        if matches!(roll, Roll::Accept { .. }) {
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
        async move {
            if b.latency_ms > 0 {
                tokio::time::sleep(Duration::from_millis(b.latency_ms)).await;
            }
            match roll {
                Roll::Reject => SendOutcome::Rejected {
                    detail: "400 invalid recipient (simulated)".into(),
                    suppress: None,
                },
                Roll::Throttle => SendOutcome::Retryable {
                    retry_after_ms: Some(10),
                    detail: "429 too many requests (simulated)".into(),
                },
                Roll::Fail => SendOutcome::Retryable {
                    retry_after_ms: None,
                    detail: "503 service unavailable (simulated)".into(),
                },
                Roll::Accept { undelivered } => {
                    if let Some(sink) = sink {
                        let callback = Callback {
                            provider: name,
                            message_id: Some(request.message_id().to_owned()),
                            provider_message_id: Some(provider_message_id.clone()),
                            status: if undelivered {
                                CallbackStatus::Undelivered
                            } else {
                                CallbackStatus::Delivered
                            },
                            error: undelivered.then(|| "handset unreachable (simulated)".into()),
                            retryable: undelivered,
                            suppress: None,
                        };
                        tokio::spawn(deliver_with_retries(sink, callback, b.callback_latency_ms));
                    }
                    SendOutcome::Accepted {
                        provider_message_id,
                    }
                }
            }
        }
        .boxed()
    }
}

/// A provider retries its callbacks until Herald accepts them.
async fn deliver_with_retries(sink: Arc<dyn CallbackSink>, callback: Callback, latency_ms: u64) {
    tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    let mut delay = Duration::from_millis(10);
    loop {
        match sink.deliver(callback.clone()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, "simulated callback refused; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}
