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

fn settings(max_concurrency: usize) -> DispatcherSettings {
    DispatcherSettings {
        rate_per_sec: 100_000,
        timeout: Duration::from_secs(5),
        max_concurrency,
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

/// Hands `sends` stored, leased messages (and, with `again`, the first one's attempt a second
/// time) to one dispatcher in one `DispatchAll`, waits until every one is `sent` and its lease
/// settled, and answers the provider's sends and the schedule's mark calls.
fn hand_over(sends: usize, max_concurrency: usize, again: bool) -> (Arc<SimulatedProvider>, usize) {
    let docs = MemoryDocumentStore::new();
    let retries = MemoryRetrySchedule::new();
    let provider = SimulatedProvider::new("sim", SimBehaviour::default(), 7);
    let records: Vec<Arc<MessageRecord>> = (0..sends)
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
    let job = |i: usize| Dispatch {
        record: records[i].clone(),
        attempt: 1,
        resend: 0,
        provider_index: 0,
        lease: Some(leases[i].clone()),
        park_if_full: true,
    };
    let mut jobs: Vec<Dispatch> = (0..sends).map(job).collect();
    if again {
        jobs.push(job(0));
    }
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
        let addr = Dispatcher::new(sim, settings(max_concurrency), ports, 1).start();
        addr.send(DispatchAll(jobs)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sent = docs
                .messages()
                .iter()
                .filter(|m| m.status == MessageStatus::Sent)
                .count();
            let settled = futures::executor::block_on(schedule.pending()).unwrap() == 0;
            if sent == sends && settled {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{sent} of {sends} sent, leases settled: {settled}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (provider, retries.mark_calls.load(Ordering::Relaxed))
}

/// A flush's sends handed over together are each sent once — an attempt given twice in the
/// batch included — and their starts are marked in one call to the retry schedule, not one
/// per send.
#[test]
fn sends_handed_over_together_go_once_each_and_are_marked_started_in_one_call() {
    let (provider, marks) = hand_over(40, 256, true);
    assert_eq!(provider.sends(), 40, "one send per message");
    assert!(provider.repeated_keys().is_empty(), "no attempt sent twice");
    assert_eq!(marks, 1, "the hand-off's sends are marked started together");
}

/// Past the concurrency cap, the slots that completions ready together free are filled
/// together: 40 sends four at a time take about ten mark calls, not one per completion.
#[test]
fn slots_freed_together_are_filled_and_marked_together() {
    let (provider, marks) = hand_over(40, 4, false);
    assert_eq!(provider.sends(), 40, "one send per message");
    assert!(provider.repeated_keys().is_empty(), "no attempt sent twice");
    assert!(
        marks <= 12,
        "{marks} mark calls for 40 sends, four at a time"
    );
}
