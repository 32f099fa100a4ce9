//! Metrics of REFERENCE.md §7, in one registry. Each reportable thing has one method here, so the
//! metric and its log line live together instead of counters scattered through the code.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::domain::event::RejectReason;
use crate::domain::suppression::SuppressionReason;

/// Codes the HTTP ingest answers with.
const INGEST_CODES: [u16; 6] = [200, 400, 401, 404, 429, 503];
/// `herald_dispatch_total`'s outcomes.
const DISPATCH_OUTCOMES: [&str; 4] = ["sent", "retryable", "rejected", "unknown"];
/// Codes the webhook receiver answers a provider's callbacks with.
const WEBHOOK_CODES: [u16; 6] = [204, 400, 401, 403, 413, 503];

type Labels = Vec<(&'static str, String)>;

/// All of Herald's metrics. Cheap to share (`Arc<Metrics>`); every update is an atomic.
pub struct Metrics {
    registry: Registry,
    consumed: Family<Labels, Counter>,
    pub applied: Counter,
    pub duplicates: Counter,
    invalid: Family<Labels, Counter>,
    pub batch_size: Histogram,
    pub mongo_bulk_write_seconds: Histogram,
    documents_written: Family<Labels, Counter>,
    consumer_lag: Family<Labels, Gauge>,
    source_paused: Family<Labels, Gauge>,
    commit_offset: Family<Labels, Gauge>,
    pub aggregators_active: Gauge,
    users_resident: Gauge,
    users_packed: Gauge,
    pub users_unpacked: Counter,
    stale_writes: Counter,
    users_contended: Counter,
    drain_timeouts: Counter,
    states_unreadable: Counter,
    pub end_to_end_latency: Histogram,
    dispatch: Family<Labels, Counter>,
    pub retries_scheduled: Counter,
    pub retries_fired: Counter,
    pub messages_reconciled: Counter,
    webhook_requests: Family<Labels, Counter>,
    callback_journal_pending: Gauge,
    callback_journal_dropped: Family<Labels, Counter>,
    early_callbacks: Family<Labels, Counter>,
    status_lookups: Family<Labels, Counter>,
    merges: Family<Labels, Counter>,
    pub messages_forwarded: Counter,
    suppressed: Family<Labels, Counter>,
    policy_skipped: Family<Labels, Counter>,
    feed_records: Family<Labels, Counter>,
    feed_dropped: Family<Labels, Counter>,
    changelog_aborted: Counter,
    feedback: Family<Labels, Counter>,
    pub messages_held: Gauge,
    ingest_requests: Family<Labels, Counter>,
    ingest_request_seconds: Histogram,
    ingest_messages: Family<Labels, Counter>,
    actor_restarts: Family<Labels, Counter>,
    /// Exact latency percentiles for the demo summary (milliseconds).
    latency_ms: Mutex<hdrhistogram::Histogram<u64>>,
    consumed_total: AtomicU64,
    invalid_total: AtomicU64,
    restarts_total: AtomicU64,
    sent_total: AtomicU64,
    aggregators: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let consumed = Family::<Labels, Counter>::default();
        let applied = Counter::default();
        let duplicates = Counter::default();
        let invalid = Family::<Labels, Counter>::default();
        let batch_size = Histogram::new(exponential_buckets(1.0, 4.0, 10));
        let mongo_bulk_write_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let documents_written = Family::<Labels, Counter>::default();
        let consumer_lag = Family::<Labels, Gauge>::default();
        let source_paused = Family::<Labels, Gauge>::default();
        let commit_offset = Family::<Labels, Gauge>::default();
        let aggregators_active = Gauge::default();
        let users_resident = Gauge::default();
        let users_packed = Gauge::default();
        let users_unpacked = Counter::default();
        let stale_writes = Counter::default();
        let users_contended = Counter::default();
        let drain_timeouts = Counter::default();
        let states_unreadable = Counter::default();
        registry.register(
            "herald_users_resident",
            "Users whose state is held in memory on this instance (at most aggregator.max_resident)",
            users_resident.clone(),
        );
        registry.register(
            "herald_users_packed",
            "Resident users held packed (idle for aggregator.pack_after_ms: their state as compact bytes, unpacked by their next record)",
            users_packed.clone(),
        );
        registry.register(
            "herald_users_unpacked",
            "Packed users unpacked by a record or a merge step (their state made live again)",
            users_unpacked.clone(),
        );
        registry.register(
            "herald_stale_writes",
            "User writes refused because another owner wrote a newer version (fencing)",
            stale_writes.clone(),
        );
        registry.register(
            "herald_users_contended",
            "Users whose write lost to another owner's newer version (a user whose partitions two instances own): reloaded from MongoDB and their records applied again",
            users_contended.clone(),
        );
        registry.register(
            "herald_revoke_drain_timeouts",
            "Revoked partitions given up uncommitted because they did not drain in time",
            drain_timeouts.clone(),
        );
        registry.register(
            "herald_state_unreadable",
            "Users quarantined because their stored state cannot be read",
            states_unreadable.clone(),
        );
        let end_to_end_latency = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let dispatch = Family::<Labels, Counter>::default();
        let retries_scheduled = Counter::default();
        let retries_fired = Counter::default();
        let messages_reconciled = Counter::default();
        let webhook_requests = Family::<Labels, Counter>::default();
        let callback_journal_pending = Gauge::default();
        let callback_journal_dropped = Family::<Labels, Counter>::default();
        let early_callbacks = Family::<Labels, Counter>::default();
        let status_lookups = Family::<Labels, Counter>::default();
        let merges = Family::<Labels, Counter>::default();
        let messages_forwarded = Counter::default();
        let suppressed = Family::<Labels, Counter>::default();
        let policy_skipped = Family::<Labels, Counter>::default();
        let feed_records = Family::<Labels, Counter>::default();
        let feed_dropped = Family::<Labels, Counter>::default();
        registry.register(
            "herald_feed_dropped",
            "Records the broker did not acknowledge or the producer's queue refused (published again by the feed sweep)",
            feed_dropped.clone(),
        );
        let changelog_aborted = Counter::default();
        let feedback = Family::<Labels, Counter>::default();
        registry.register(
            "herald_feed_records",
            "Records acknowledged by the downstream feeds' topics (feed = changelog | messages)",
            feed_records.clone(),
        );
        registry.register(
            "herald_changelog_aborted",
            "Changelog transactions aborted (a user of the flush did not stand, or the commit failed): their users are written and published again",
            changelog_aborted.clone(),
        );
        registry.register(
            "herald_feedback",
            "Feedback webhook calls by outcome: delivered (2xx), retried (another answer, or none)",
            feedback.clone(),
        );
        let messages_held = Gauge::default();
        let ingest_requests = Family::<Labels, Counter>::default();
        let ingest_request_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let ingest_messages = Family::<Labels, Counter>::default();
        let actor_restarts = Family::<Labels, Counter>::default();
        registry.register(
            "herald_events_consumed",
            "Records read from the source",
            consumed.clone(),
        );
        registry.register(
            "herald_events_applied",
            "Events applied to user state",
            applied.clone(),
        );
        registry.register(
            "herald_events_duplicate",
            "Events skipped as replays or duplicate messageIds",
            duplicates.clone(),
        );
        registry.register(
            "herald_events_invalid",
            "Invalid records sent to the dead-letter destination",
            invalid.clone(),
        );
        registry.register(
            "herald_batch_size",
            "Events per batcher flush",
            batch_size.clone(),
        );
        registry.register(
            "herald_mongo_bulk_write_seconds",
            "Duration of document store bulk writes",
            mongo_bulk_write_seconds.clone(),
        );
        registry.register(
            "herald_mongo_documents_written",
            "Documents written per collection",
            documents_written.clone(),
        );
        registry.register(
            "herald_consumer_lag",
            "Records behind the source's high watermark",
            consumer_lag.clone(),
        );
        registry.register(
            "herald_source_paused",
            "1 while the source has stopped fetching the partition (its hand-off is full)",
            source_paused.clone(),
        );
        registry.register(
            "herald_commit_offset",
            "Last committed source position",
            commit_offset.clone(),
        );
        registry.register(
            "herald_aggregators_active",
            "Live per-user aggregator actors",
            aggregators_active.clone(),
        );
        registry.register(
            "herald_end_to_end_latency_seconds",
            "Event timestamp to durable write",
            end_to_end_latency.clone(),
        );
        registry.register(
            "herald_dispatch",
            "Provider send outcomes",
            dispatch.clone(),
        );
        registry.register(
            "herald_retries_scheduled",
            "Retries put on the durable schedule",
            retries_scheduled.clone(),
        );
        registry.register(
            "herald_retries_fired",
            "Retries taken off the schedule and dispatched",
            retries_fired.clone(),
        );
        registry.register(
            "herald_messages_reconciled",
            "Messages found waiting on a send nobody held (a crash between storing and \
             leasing it, a lost retry schedule) and adopted by the reconciler",
            messages_reconciled.clone(),
        );
        registry.register(
            "herald_policy_skipped",
            "Triggered messages the messaging policy skipped, by reason (opted_out, \
             quiet_hours, frequency_capped)",
            policy_skipped.clone(),
        );
        registry.register(
            "herald_messages_held",
            "Messages held through their campaign's quiet hours, as last counted in messages",
            messages_held.clone(),
        );
        registry.register(
            "herald_webhook_requests",
            "Provider callbacks received, by response code",
            webhook_requests.clone(),
        );
        registry.register(
            "herald_callback_journal_pending",
            "Callbacks in the journal not applied yet (http.callback_journal)",
            callback_journal_pending.clone(),
        );
        registry.register(
            "herald_callback_journal_dropped",
            "Journaled callbacks given up: unreadable, or not applicable for too long",
            callback_journal_dropped.clone(),
        );
        registry.register(
            "herald_early_callbacks",
            "Callbacks that could not apply on arrival (their send not recorded yet), by \
             outcome: kept, full (answered 503), applied, refused, expired, unreadable",
            early_callbacks.clone(),
        );
        registry.register(
            "herald_status_lookups",
            "Status lookups of messages still sent, by provider and outcome: delivered, failed, \
             undelivered (applied as their callback), pending, not_found, error, refused, \
             expired, unsupported",
            status_lookups.clone(),
        );
        registry.register(
            "herald_merges",
            "Aliases by outcome: merged, same_id and already_merged (nothing to do), \
             blocked_id and merge_limit (dead-lettered), retargeted (the source had been merged \
             into another id), gave_way (a merge waiting on this one went first)",
            merges.clone(),
        );
        registry.register(
            "herald_messages_forwarded",
            "Records of merged ids forwarded to the profile they were merged into",
            messages_forwarded.clone(),
        );
        registry.register(
            "herald_suppressed",
            "Suppression events by reason: an address newly suppressed by a provider's report, \
             and each triggered message skipped because its address is suppressed",
            suppressed.clone(),
        );
        registry.register(
            "herald_ingest_requests",
            "HTTP ingest requests (ingest.listen), by response code",
            ingest_requests.clone(),
        );
        registry.register(
            "herald_ingest_request_seconds",
            "HTTP ingest requests, from their headers to their answer (the body read, the \
             checks and the broker's acknowledgement of every message)",
            ingest_request_seconds.clone(),
        );
        registry.register(
            "herald_ingest_messages",
            "HTTP ingest messages: published to the source, or rejected (dead-lettered)",
            ingest_messages.clone(),
        );
        registry.register(
            "herald_actor_restarts",
            "Actor restarts after a contained panic or failure",
            actor_restarts.clone(),
        );
        let metrics = Metrics {
            registry,
            consumed,
            applied,
            duplicates,
            invalid,
            batch_size,
            mongo_bulk_write_seconds,
            documents_written,
            consumer_lag,
            source_paused,
            commit_offset,
            aggregators_active,
            users_resident,
            users_packed,
            users_unpacked,
            stale_writes,
            users_contended,
            drain_timeouts,
            states_unreadable,
            end_to_end_latency,
            dispatch,
            retries_scheduled,
            retries_fired,
            messages_reconciled,
            webhook_requests,
            callback_journal_pending,
            callback_journal_dropped,
            early_callbacks,
            status_lookups,
            merges,
            messages_forwarded,
            suppressed,
            policy_skipped,
            feed_records,
            feed_dropped,
            changelog_aborted,
            feedback,
            messages_held,
            ingest_requests,
            ingest_request_seconds,
            ingest_messages,
            actor_restarts,
            latency_ms: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000, 3)
                    .expect("static histogram bounds are valid"),
            ),
            consumed_total: AtomicU64::new(0),
            invalid_total: AtomicU64::new(0),
            restarts_total: AtomicU64::new(0),
            sent_total: AtomicU64::new(0),
            aggregators: AtomicI64::new(0),
        };
        metrics.declare_known();
        metrics
    }

    pub fn shared() -> Arc<Metrics> {
        Arc::new(Self::new())
    }

    /// Every series whose labels are known before any traffic, at 0, so a dashboard or an
    /// alert sees 0 rather than nothing (Prometheus' instrumentation advice): called by
    /// [`Metrics::new`]. Providers and partitions come later ([`Metrics::declare_providers`],
    /// [`Metrics::partition_assigned`]).
    fn declare_known(&self) {
        let one = |family: &Family<Labels, Counter>, name: &'static str, value: &str| {
            let _ = family.get_or_create(&vec![(name, value.to_string())]);
        };
        for reason in RejectReason::ALL {
            one(&self.invalid, "reason", reason.code());
        }
        for reason in [
            "store_refused",
            "state_unreadable",
            "profile_too_large",
            "poison",
        ] {
            one(&self.invalid, "reason", reason);
        }
        for collection in ["users", "messages"] {
            one(&self.documents_written, "collection", collection);
        }
        for reason in SuppressionReason::ALL {
            one(&self.suppressed, "reason", reason.as_str());
        }
        for reason in ["opted_out", "quiet_hours", "frequency_capped"] {
            one(&self.policy_skipped, "reason", reason);
        }
        for feed in ["changelog", "messages"] {
            one(&self.feed_records, "feed", feed);
        }
        one(&self.feed_dropped, "feed", "messages");
        for outcome in ["delivered", "retried"] {
            one(&self.feedback, "outcome", outcome);
        }
        for code in INGEST_CODES {
            one(&self.ingest_requests, "code", &code.to_string());
        }
        for outcome in ["published", "rejected"] {
            one(&self.ingest_messages, "outcome", outcome);
        }
        for actor in ["partition", "aggregator", "batcher"] {
            one(&self.actor_restarts, "actor", actor);
        }
        for reason in ["unreadable", "expired"] {
            one(&self.callback_journal_dropped, "reason", reason);
        }
    }

    /// The configured providers' dispatch outcomes and webhook answers, at 0.
    pub fn declare_providers<'a>(&self, providers: impl IntoIterator<Item = &'a str>) {
        for provider in providers {
            for outcome in DISPATCH_OUTCOMES {
                let _ = self.dispatch.get_or_create(&vec![
                    ("provider", provider.to_string()),
                    ("outcome", outcome.to_string()),
                ]);
            }
            for code in WEBHOOK_CODES {
                let _ = self.webhook_requests.get_or_create(&vec![
                    ("provider", provider.to_string()),
                    ("code", code.to_string()),
                ]);
            }
        }
    }

    /// A partition (or queue) this instance now consumes: its series exist from now on, the
    /// commit offset at the position it starts from. (The lag appears with the first known
    /// high watermark: a 0 before it would claim "caught up".)
    pub fn partition_assigned(&self, source: &str, partition: u32, from: u64) {
        let p = vec![("partition", partition.to_string())];
        let _ = self.consumed.get_or_create(&vec![
            ("source", source.to_string()),
            ("partition", partition.to_string()),
        ]);
        self.commit_offset
            .get_or_create(&p)
            .set(from.min(i64::MAX as u64) as i64);
        self.source_paused.get_or_create(&p).set(0);
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn records_consumed(&self, source: &str, partition: u32, n: u64) {
        self.consumed
            .get_or_create(&vec![
                ("source", source.to_string()),
                ("partition", partition.to_string()),
            ])
            .inc_by(n);
        self.consumed_total.fetch_add(n, Ordering::Relaxed);
    }

    /// A record whose resulting user document MongoDB refused, dead-lettered after the fact.
    pub fn store_refused(&self, partition: u32, detail: &str) {
        self.invalid
            .get_or_create(&vec![("reason", "store_refused".to_string())])
            .inc();
        self.invalid_total.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            partition,
            detail,
            "record dead-lettered: store refused its result"
        );
    }

    pub fn invalid_record(&self, reason: RejectReason, partition: u32, detail: &str) {
        self.invalid
            .get_or_create(&vec![("reason", reason.code().to_string())])
            .inc();
        self.invalid_total.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            partition,
            reason = reason.code(),
            detail,
            "invalid record dead-lettered"
        );
    }

    pub fn documents_written(&self, collection: &'static str, n: u64) {
        self.documents_written
            .get_or_create(&vec![("collection", collection.to_string())])
            .inc_by(n);
    }

    pub fn committed(&self, partition: u32, offset: u64, high_watermark: Option<u64>) {
        let p = vec![("partition", partition.to_string())];
        self.commit_offset
            .get_or_create(&p)
            .set(offset.min(i64::MAX as u64) as i64);
        if let Some(hw) = high_watermark {
            self.consumer_lag
                .get_or_create(&p)
                .set(hw.saturating_sub(offset).min(i64::MAX as u64) as i64);
        }
    }

    pub fn source_paused(&self, partition: u32, paused: bool) {
        self.source_paused
            .get_or_create(&vec![("partition", partition.to_string())])
            .set(i64::from(paused));
    }

    /// Resident users changed by `delta` (`herald_users_resident`, and
    /// `herald_aggregators_active`: a resident user is a live aggregator).
    pub fn aggregators_changed(&self, delta: i64) {
        let now = self.aggregators.fetch_add(delta, Ordering::Relaxed) + delta;
        self.aggregators_active.set(now);
        self.users_resident.set(now);
    }

    pub fn users_resident(&self) -> i64 {
        self.aggregators.load(Ordering::Relaxed)
    }

    /// Packed resident users changed by `delta` (`herald_users_packed`).
    pub fn packed_changed(&self, delta: i64) {
        self.users_packed.inc_by(delta);
    }

    pub fn users_packed(&self) -> i64 {
        self.users_packed.get()
    }

    /// A user write refused as stale (another owner wrote a newer version): the user is
    /// reloaded and its records applied again.
    pub fn stale_write(&self) {
        self.stale_writes.inc();
        self.users_contended.inc();
    }

    /// A record whose application panicked twice, dead-lettered.
    pub fn poison_record(&self, partition: u32, detail: &str) {
        self.invalid
            .get_or_create(&vec![("reason", "poison".to_string())])
            .inc();
        self.invalid_total.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(partition, detail, "record dead-lettered: poison");
    }

    pub fn drain_timed_out(&self, partition: u32) {
        self.drain_timeouts.inc();
        tracing::debug!(partition, "revoke drain timed out");
    }

    /// A user's stored state could not be read (the user is quarantined).
    pub fn state_unreadable(&self) {
        self.states_unreadable.inc();
    }

    /// A record of a quarantined user, dead-lettered.
    pub fn state_unreadable_record(&self, partition: u32, detail: &str) {
        self.invalid
            .get_or_create(&vec![("reason", "state_unreadable".to_string())])
            .inc();
        self.invalid_total.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            partition,
            detail,
            "record of a quarantined user dead-lettered"
        );
    }

    /// A record that would grow its user's profile past `limits.max_profile_bytes`,
    /// dead-lettered.
    pub fn profile_too_large_record(&self, partition: u32, detail: &str) {
        self.invalid
            .get_or_create(&vec![("reason", "profile_too_large".to_string())])
            .inc();
        self.invalid_total.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(partition, detail, "record dead-lettered: profile too large");
    }

    /// `count` events became durable `latency_ms` after their timestamp.
    pub fn durable_latency(&self, latency_ms: i64, count: u64) {
        let ms = latency_ms.max(1) as u64;
        for _ in 0..count.min(64) {
            self.end_to_end_latency.observe(ms as f64 / 1000.0);
        }
        let _ = self.latency_ms.lock().record_n(ms.min(3_600_000), count);
    }

    pub fn dispatch_outcome(&self, provider: &str, outcome: &'static str) {
        self.dispatch
            .get_or_create(&vec![
                ("provider", provider.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
        if outcome == "sent" {
            self.sent_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn webhook_request(&self, provider: &str, code: u16) {
        self.webhook_requests
            .get_or_create(&vec![
                ("provider", provider.to_string()),
                ("code", code.to_string()),
            ])
            .inc();
    }

    pub fn callback_journal_pending(&self, n: u64) {
        self.callback_journal_pending.set(n as i64);
    }

    pub fn callback_journal_dropped(&self, reason: &str) {
        self.callback_journal_dropped
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn early_callback(&self, outcome: &str) {
        self.early_callbacks
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    pub fn status_lookup(&self, provider: &str, outcome: &str) {
        self.status_lookups
            .get_or_create(&vec![
                ("provider", provider.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    pub fn merge(&self, outcome: &str) {
        self.merges
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    /// A record dead-lettered by the merge rules (`blocked_id`, `merge_limit`).
    pub fn merge_refused(&self, reason: &'static str) {
        self.merge(reason);
        self.invalid
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
        self.invalid_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Changelog records committed (`herald_feed_records_total{feed="changelog"}`).
    pub fn changelog_records(&self, n: u64) {
        self.feed_records("changelog", n);
    }

    /// Records a feed's topic acknowledged.
    pub fn feed_records(&self, feed: &'static str, n: u64) {
        self.feed_records
            .get_or_create(&vec![("feed", feed.to_string())])
            .inc_by(n);
    }

    /// A record a feed could not publish.
    pub fn feed_dropped(&self, feed: &'static str) {
        self.feed_dropped
            .get_or_create(&vec![("feed", feed.to_string())])
            .inc();
    }

    /// A changelog transaction aborted (`herald_changelog_aborted_total`).
    pub fn changelog_aborted(&self) {
        self.changelog_aborted.inc();
    }

    /// A feedback webhook call (`herald_feedback_total{outcome}`).
    pub fn feedback(&self, outcome: &'static str) {
        self.feedback
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    /// A message the policy skipped (`herald_policy_skipped_total{reason}`).
    pub fn policy_skipped(&self, reason: &str) {
        self.policy_skipped
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn suppressed(&self, reason: &str) {
        self.suppressed
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn ingest_request(&self, code: u16) {
        self.ingest_requests
            .get_or_create(&vec![("code", code.to_string())])
            .inc();
    }

    pub fn ingest_request_took(&self, seconds: f64) {
        self.ingest_request_seconds.observe(seconds);
    }

    /// `outcome`: `published` or `rejected`.
    pub fn ingest_messages(&self, outcome: &'static str, n: usize) {
        self.ingest_messages
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc_by(n as u64);
    }

    pub fn actor_restarted(&self, actor: &'static str, cause: &str) {
        self.actor_restarts
            .get_or_create(&vec![("actor", actor.to_string())])
            .inc();
        self.restarts_total.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(actor, cause, "actor restarted");
    }

    pub fn consumed_total(&self) -> u64 {
        self.consumed_total.load(Ordering::Relaxed)
    }
    pub fn invalid_total(&self) -> u64 {
        self.invalid_total.load(Ordering::Relaxed)
    }
    pub fn restarts_total(&self) -> u64 {
        self.restarts_total.load(Ordering::Relaxed)
    }
    pub fn sent_total(&self) -> u64 {
        self.sent_total.load(Ordering::Relaxed)
    }

    /// (p50, p99) end-to-end latency in milliseconds.
    pub fn latency_percentiles_ms(&self) -> (u64, u64) {
        let h = self.latency_ms.lock();
        (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
    }
}
