//! The dispatcher as an actor, on the in-process stores and the simulated provider.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::*;
use crate::adapters::memory::docs::MemoryDocumentStore;
use crate::adapters::memory::retry::MemoryRetrySchedule;
use crate::adapters::providers::sim::{SimBehaviour, SimulatedProvider};
use crate::domain::message::tests::queued_record;
use crate::ports::SystemClock;

fn queued(id: &str) -> MessageRecord {
    MessageRecord {
        id: id.into(),
        user_id: format!("user-{id}"),
        ..queued_record()
    }
}

fn settings() -> DispatcherSettings {
    DispatcherSettings {
        rate_per_sec: 100_000,
        timeout: Duration::from_secs(5),
        max_concurrency: 256,
        circuit_failures: 1_000,
        circuit_open: Duration::from_secs(5),
        retry: RetryPolicy::default(),
        callback_base_url: "http://127.0.0.1:1/callbacks".into(),
        on_unknown_outcome: UnknownOutcome::Retry,
        lookups: LookupSchedule {
            after_ms: 60_000,
            max_age_ms: 0,
        },
        campaigns: Arc::default(),
        cap: None,
    }
}

/// A flush's sends handed over together are each sent once — an attempt given twice in the
/// batch included — and their starts are marked in one call to the retry schedule, not one
/// per send.
#[test]
fn sends_handed_over_together_go_once_each_and_are_marked_started_in_one_call() {
    const SENDS: usize = 40;
    let docs = MemoryDocumentStore::new();
    let retries = MemoryRetrySchedule::new();
    let provider = SimulatedProvider::new("sim", SimBehaviour::default(), 7);
    let records: Vec<Arc<MessageRecord>> = (0..SENDS)
        .map(|i| Arc::new(queued(&format!("m{i}"))))
        .collect();
    let leases: Vec<RetryEntry> = records
        .iter()
        .map(|r| RetryEntry {
            message_id: r.id.clone(),
            attempt: 1,
            resend: 0,
            due_ms: SystemClock.now_ms() + LEASE_MS,
            lapsed: false,
        })
        .collect();
    futures::executor::block_on(async {
        docs.insert_messages(records.clone(), 1).await.unwrap();
        let held = retries.hold(leases.clone(), true).await.unwrap();
        assert!(held.iter().all(|h| *h), "every lease is taken");
    });
    let mut jobs: Vec<Dispatch> = records
        .iter()
        .zip(&leases)
        .map(|(r, lease)| Dispatch {
            record: r.clone(),
            attempt: 1,
            resend: 0,
            provider_index: 0,
            lease: Some(lease.clone()),
            park_if_full: true,
        })
        .collect();
    // The same attempt again in the same hand-off: held already, not sent twice.
    jobs.push(Dispatch {
        record: records[0].clone(),
        attempt: 1,
        resend: 0,
        provider_index: 0,
        lease: Some(leases[0].clone()),
        park_if_full: true,
    });
    drop(records);

    let ports = DispatcherPorts {
        docs: docs.clone(),
        retries: retries.clone(),
        clock: Arc::new(SystemClock),
        metrics: Arc::new(Metrics::new()),
    };
    let sim = provider.clone();
    let schedule = retries.clone();
    System::new().block_on(async move {
        let addr = Dispatcher::new(sim, settings(), ports, 1).start();
        addr.send(DispatchAll(jobs)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sent = docs
                .messages()
                .iter()
                .filter(|m| m.status == MessageStatus::Sent)
                .count();
            let settled = futures::executor::block_on(schedule.pending()).unwrap() == 0;
            if sent == SENDS && settled {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{sent} of {SENDS} sent, leases settled: {settled}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert_eq!(provider.sends(), SENDS as u64, "one send per message");
    assert!(provider.repeated_keys().is_empty(), "no attempt sent twice");
    assert_eq!(
        retries.mark_calls.load(Ordering::Relaxed),
        1,
        "the hand-off's sends are marked started together"
    );
}
