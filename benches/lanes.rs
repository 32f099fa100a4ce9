//! `cargo bench --bench lanes`: priority lanes (REFERENCE.md §12) under a marketing blast.
//!
//! One dispatcher (the actor `herald run` starts per provider) with a provider limit of
//! HERALD_BENCH_RATE sends/s (default 100) takes HERALD_BENCH_BLAST `low` messages (default
//! 50,000) at once — minutes of backlog — then, every 250 ms, a `high` message (a one-time
//! code), HERALD_BENCH_HIGH of them (default 20). The provider is in-process and answers at
//! once, so what is measured is the dispatcher's queueing alone: how long each `high` message
//! waited between its `Dispatch` and its send, against one send slot (1/rate). Also reported:
//! the same arrival with every message in one lane (`normal`), where a code would wait behind
//! the whole backlog — computed from the backlog ahead of it rather than waited out.
//! Results: `target/bench/lanes.json`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use herald::actors::dispatcher::{
    CampaignRules, Dispatch, Dispatcher, DispatcherPorts, DispatcherSettings,
};
use herald::adapters::memory::docs::MemoryDocumentStore;
use herald::adapters::memory::retry::MemoryRetrySchedule;
use herald::domain::campaign::{Channel, Priority};
use herald::domain::message::{MessageRecord, MessageStatus};
use herald::domain::retry::RetryPolicy;
use herald::domain::status_lookup::LookupSchedule;
use herald::ports::{BoxFut, Provider, SendOutcome, SendRequest, SystemClock, UnknownOutcome};
use herald::telemetry::Metrics;
use parking_lot::Mutex;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Answers every send at once, noting when each message reached it.
struct Instant0 {
    sent: Mutex<HashMap<String, Instant>>,
}

impl Provider for Instant0 {
    fn name(&self) -> &str {
        "instant"
    }

    fn send(&self, request: SendRequest) -> BoxFut<SendOutcome> {
        self.sent
            .lock()
            .insert(request.message_id().to_owned(), Instant::now());
        Box::pin(async move {
            SendOutcome::Accepted {
                provider_message_id: format!("pm-{}", request.message_id()),
            }
        })
    }
}

fn message(id: String, campaign: &str) -> MessageRecord {
    MessageRecord {
        id,
        user_id: "u".into(),
        campaign: campaign.into(),
        channel: Channel::Sms,
        to: Some("+15550100".into()),
        body: "b".into(),
        subject: None,
        provider: None,
        status: MessageStatus::Queued,
        attempts: 0,
        provider_message_id: None,
        error: None,
        created_at: 0,
        updated_at: 0,
        history: Vec::new(),
        lookup_at: None,
        held_until: None,
    }
}

fn dispatch(record: MessageRecord) -> Dispatch {
    Dispatch {
        record: Arc::new(record),
        attempt: 1,
        resend: 0,
        provider_index: 0,
        lease: None,
        park_if_full: false,
    }
}

fn main() {
    let rate = env_u64("HERALD_BENCH_RATE", 100) as u32;
    let blast = env_u64("HERALD_BENCH_BLAST", 50_000) as usize;
    let highs = env_u64("HERALD_BENCH_HIGH", 20) as usize;
    let slot = Duration::from_secs_f64(1.0 / rate as f64);
    let provider = Arc::new(Instant0 {
        sent: Mutex::new(HashMap::new()),
    });
    let waits = System::new().block_on({
        let provider = provider.clone();
        async move {
            let mut campaigns = HashMap::new();
            for (id, priority) in [("blast", Priority::Low), ("otp", Priority::High)] {
                campaigns.insert(
                    id.to_string(),
                    CampaignRules {
                        priority,
                        critical: false,
                    },
                );
            }
            let settings = DispatcherSettings {
                rate_per_sec: rate,
                timeout: Duration::from_secs(2),
                max_concurrency: 64,
                circuit_failures: 1_000_000,
                circuit_open: Duration::from_secs(5),
                retry: RetryPolicy::default(),
                callback_base_url: "http://127.0.0.1:1/callbacks".into(),
                on_unknown_outcome: UnknownOutcome::Retry,
                lookups: LookupSchedule {
                    after_ms: 60_000,
                    max_age_ms: 0,
                },
                campaigns: Arc::new(campaigns),
                cap: None,
            };
            let ports = DispatcherPorts {
                docs: MemoryDocumentStore::new(),
                retries: MemoryRetrySchedule::new(),
                clock: Arc::new(SystemClock),
                metrics: Arc::new(Metrics::new()),
            };
            let addr = Dispatcher::new(provider.clone(), settings, ports, 7).start();
            for i in 0..blast {
                addr.do_send(dispatch(message(format!("blast:{i}"), "blast")));
            }
            // The backlog is queued (the mailbox drained into the lanes) once a probe sent
            // after it is answered: a `high` one, which its own (empty) lane takes at once
            // (a `low` probe would be answered only once the low lane had room).
            let _ = addr
                .send(dispatch(message("otp:probe".into(), "otp")))
                .await;
            let started = Instant::now();
            let mut waits = Vec::new();
            for i in 0..highs {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let id = format!("otp:{i}");
                let asked = Instant::now();
                addr.do_send(dispatch(message(id.clone(), "otp")));
                loop {
                    if let Some(at) = provider.sent.lock().get(&id) {
                        waits.push(at.duration_since(asked));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            (waits, started.elapsed())
        }
    });
    let (waits, measured) = waits;
    let sent_low = provider
        .sent
        .lock()
        .keys()
        .filter(|k| k.starts_with("blast:"))
        .count();
    let mut sorted = waits.clone();
    sorted.sort();
    let max = *sorted.last().unwrap_or(&Duration::ZERO);
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    let backlog = blast.saturating_sub(sent_low);
    let one_lane = Duration::from_secs_f64(backlog as f64 / rate as f64);
    println!(
        "lanes: {highs} high behind {blast} low at {rate}/s (one slot = {:.1} ms): waited p50 {:.1} ms, max {:.1} ms; \
         {sent_low} low sent in the {:.1} s measured, {backlog} still queued; in one lane the last code would wait ~{:.0} s",
        slot.as_secs_f64() * 1e3,
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        measured.as_secs_f64(),
        one_lane.as_secs_f64()
    );
    let verdict = if max <= slot + Duration::from_millis(5) {
        "within one send slot (+5 ms scheduling)"
    } else {
        "MISSED: longer than one send slot"
    };
    println!("lanes: {verdict}");
    std::fs::create_dir_all("target/bench").ok();
    let json = serde_json::json!({
        "rate_per_sec": rate,
        "low_backlog": blast,
        "high_messages": highs,
        "slot_ms": slot.as_secs_f64() * 1e3,
        "high_wait_p50_ms": p50.as_secs_f64() * 1e3,
        "high_wait_max_ms": max.as_secs_f64() * 1e3,
        "low_sent_meanwhile": sent_low,
        "measured_s": measured.as_secs_f64(),
        "one_lane_wait_s": one_lane.as_secs_f64(),
    });
    std::fs::write("target/bench/lanes.json", json.to_string()).ok();
}
