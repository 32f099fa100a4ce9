//! `herald demo`: runs the real actor pipeline on embedded adapters over a deterministic
//! workload, prints a summary, and verifies the result against a straight sequential replay
//! of the same events. Exit 0 only if they agree.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::domain::campaign::evaluate_all;
use crate::domain::event::{decode, EventKind};
use crate::domain::keys::{message_fingerprint, user_hash};
use crate::domain::user::UserProfile;
use crate::embedded::EmbeddedRig;
use crate::workload::{MessageKind, Workload, WorkloadSpec};

#[derive(Debug, Clone, Copy)]
pub struct DemoArgs {
    pub events: u64,
    pub users: u64,
    pub seed: u64,
    /// Share of anonymous visitors' messages and their aliases ([`VISITOR_RATE`] for
    /// `herald demo`).
    pub visitors: f64,
}

/// What a demo run measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub events: u64,
    pub ingest_seconds: f64,
    pub total_seconds: f64,
    pub latency_p50_ms: u64,
    pub latency_p99_ms: u64,
    pub users_written: usize,
    /// Ids merged into another profile by an alias.
    pub merged: usize,
    pub forwarded: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub invalid: u64,
    pub statuses: BTreeMap<&'static str, usize>,
    /// `skipped` messages by the first word of their reason.
    pub skip_reasons: BTreeMap<String, usize>,
    pub sends: u64,
    pub retries_scheduled: u64,
    pub retries_fired: u64,
    pub restarts: u64,
    /// Packed users made live again by a later record.
    pub unpacked: u64,
    pub mismatches: Vec<String>,
}

impl DemoReport {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.ingest_seconds.max(1e-9)
    }
}

/// The demo's share of anonymous visitors (page views, tracks, and each one's alias).
pub const VISITOR_RATE: f64 = 0.05;

pub fn run(config: Config, args: DemoArgs) -> anyhow::Result<DemoReport> {
    let spec = WorkloadSpec::new(args.events, args.users, args.seed).with_visitors(args.visitors);
    eprintln!(
        "herald demo: generating {} events over {} users (seed {})…",
        args.events, args.users, args.seed
    );
    let messages: Vec<_> = Workload::new(spec).collect();
    let rig = EmbeddedRig::new(&config, args.seed);
    let invalid_expected = messages
        .iter()
        .filter(|m| m.kind == MessageKind::Invalid)
        .count();
    rig.source
        .append_all(messages.iter().map(|m| (m.key.clone(), m.payload.clone())));
    let total = rig.source.total_records();

    let system = actix::System::new();
    let (ingest, elapsed) = system.block_on(async {
        let started = Instant::now();
        let pipeline = rig.start(&config, args.seed);
        rig.source.assign_all();
        let bar = progress_bar(total);
        let mut ingest = None;
        loop {
            if let Some(reason) = pipeline.failure() {
                bar.abandon();
                let _ = pipeline.shutdown().await;
                return Err(anyhow::anyhow!("pipeline failed: {reason}"));
            }
            let committed = rig.source.total_committed();
            bar.set_position(committed);
            if ingest.is_none() && rig.source.fully_committed() {
                ingest = Some(started.elapsed());
                bar.set_message("events durable; waiting for messages to settle");
            }
            if ingest.is_some() && rig.quiescent() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bar.finish_and_clear();
        let elapsed = started.elapsed();
        pipeline.shutdown().await.context("shutdown")?;
        Ok::<_, anyhow::Error>((ingest.unwrap_or(elapsed), elapsed))
    })?;

    eprintln!("herald demo: verifying against a sequential replay…");
    let mismatches = verify(&rig, &config, &messages, invalid_expected);
    let (p50, p99) = rig.metrics.latency_percentiles_ms();
    Ok(DemoReport {
        events: total,
        ingest_seconds: ingest.as_secs_f64(),
        total_seconds: elapsed.as_secs_f64(),
        latency_p50_ms: p50,
        latency_p99_ms: p99,
        users_written: rig.docs.user_count(),
        merged: rig.docs.merged().len(),
        forwarded: rig.metrics.messages_forwarded.get(),
        applied: rig.metrics.applied.get(),
        duplicates: rig.metrics.duplicates.get(),
        invalid: rig.metrics.invalid_total(),
        statuses: rig.docs.status_counts(),
        skip_reasons: rig.docs.skip_reasons(),
        sends: rig.providers.iter().map(|p| p.sends()).sum(),
        retries_scheduled: rig.metrics.retries_scheduled.get(),
        retries_fired: rig.metrics.retries_fired.get(),
        restarts: rig.metrics.restarts_total(),
        unpacked: rig.metrics.users_unpacked.get(),
        mismatches,
    })
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} durable ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// The sequential replay: each distinct messageId of a user applied once, in order, with the
/// campaigns evaluated after each applied event.
fn verify(
    rig: &EmbeddedRig,
    config: &Config,
    messages: &[crate::workload::GeneratedMessage],
    invalid_expected: usize,
) -> Vec<String> {
    let mut mismatches = Vec::new();
    // The plain-map profile and a set of every (user, messageId) seen: not the pipeline's
    // compact state or its bounded dedup window.
    let mut seen: HashSet<(u64, u64), ahash::RandomState> = HashSet::default();
    let mut expected: BTreeMap<String, UserProfile> = BTreeMap::new();
    let mut merged: BTreeMap<String, String> = BTreeMap::new();
    let mut expected_messages = BTreeSet::new();
    let live = |merged: &BTreeMap<String, String>, id: &str| {
        let mut id = id.to_string();
        while let Some(next) = merged.get(&id) {
            id = next.clone();
        }
        id
    };
    for m in messages {
        let Ok(event) = decode(&m.payload, config.limits.max_message_bytes) else {
            continue;
        };
        let pair = (
            user_hash(&event.user_id),
            message_fingerprint(&event.message_id),
        );
        if !seen.insert(pair) {
            continue;
        }
        if let EventKind::Alias { previous_id } = &event.kind {
            // The workload's visitors are aliased once each, never into one another.
            let (from, into) = (live(&merged, previous_id), live(&merged, &event.user_id));
            if from != into {
                let source = expected.remove(&from).unwrap_or_default();
                expected.entry(into).or_default().absorb(&source);
                merged.insert(from, event.user_id.as_str().to_owned());
            }
            continue;
        }
        let owner = live(&merged, &event.user_id);
        let profile = expected.entry(owner).or_default();
        profile.apply(&event);
        let ctx = config.trigger_context(0);
        for msg in evaluate_all(&config.parsed_campaigns, &event, profile, &ctx) {
            expected_messages.insert(msg.id);
        }
    }
    let actual = rig.docs.users();
    if expected.len() != actual.len() {
        mismatches.push(format!(
            "users: replay has {}, pipeline wrote {}",
            expected.len(),
            actual.len()
        ));
    }
    for (id, want) in &expected {
        match actual.get(id) {
            None => mismatches.push(format!("user {id}: missing")),
            Some(got) if got != want => mismatches.push(format!(
                "user {id}: differs\n  want {want:?}\n  got  {got:?}"
            )),
            Some(_) => {}
        }
        if mismatches.len() >= 10 {
            break;
        }
    }
    let stored_merged = rig.docs.merged();
    if stored_merged != merged {
        mismatches.push(format!(
            "merged ids: replay has {}, pipeline wrote {}",
            merged.len(),
            stored_merged.len()
        ));
    }
    let stored: BTreeSet<String> = rig.docs.messages().into_iter().map(|m| m.id).collect();
    if stored != expected_messages {
        let missing = expected_messages.difference(&stored).count();
        let extra = stored.difference(&expected_messages).count();
        mismatches.push(format!(
            "messages: {missing} expected but missing, {extra} unexpected"
        ));
    }
    let unfinished = rig.docs.unfinished();
    if unfinished > 0 {
        mismatches.push(format!("messages: {unfinished} not in a terminal status"));
    }
    let repeated: Vec<String> = rig
        .providers
        .iter()
        .flat_map(|p| p.repeated_keys())
        .collect();
    if !repeated.is_empty() {
        mismatches.push(format!(
            "providers: {} idempotency keys sent more than once (e.g. {})",
            repeated.len(),
            repeated[0]
        ));
    }
    let dead = rig.source.dead_letters().len();
    if dead != invalid_expected {
        mismatches.push(format!(
            "dead letters: {dead}, expected {invalid_expected} invalid messages"
        ));
    }
    mismatches
}

/// Prints the summary; errors if verification failed.
pub fn print_summary(r: &DemoReport) -> anyhow::Result<()> {
    let count = |s: &str| r.statuses.get(s).copied().unwrap_or(0);
    println!("Herald demo summary");
    println!("  events            {:>12}", r.events);
    println!(
        "  throughput        {:>12.0} events/s (all events durable in {:.2} s)",
        r.events_per_sec(),
        r.ingest_seconds
    );
    println!(
        "  end-to-end        p50 {} ms, p99 {} ms (record read → durable write)",
        r.latency_p50_ms, r.latency_p99_ms
    );
    println!(
        "  users written     {:>12} ({} packed users unpacked by a later record)",
        r.users_written, r.unpacked
    );
    println!(
        "  merged ids        {:>12} (aliases; {} records forwarded to where they merged)",
        r.merged, r.forwarded
    );
    println!("  events applied    {:>12}", r.applied);
    println!("  duplicates seen   {:>12}", r.duplicates);
    println!("  invalid (DLQ)     {:>12}", r.invalid);
    println!(
        "  messages          {:>12} (sent {}, delivered {}, failed {}, skipped {})",
        r.statuses.values().sum::<usize>(),
        count("sent"),
        count("delivered"),
        count("failed"),
        count("skipped")
    );
    let reason = |s: &str| r.skip_reasons.get(s).copied().unwrap_or(0);
    println!(
        "  policy            {:>12} held (until their quiet hours end), skipped: {} opted out, {} quiet hours, {} frequency capped",
        count("held"),
        reason("opted_out"),
        reason("quiet_hours"),
        reason("frequency_capped")
    );
    println!("  provider sends    {:>12}", r.sends);
    println!(
        "  retries           {:>12} scheduled, {} fired",
        r.retries_scheduled, r.retries_fired
    );
    println!("  actor restarts    {:>12}", r.restarts);
    println!("  total time        {:>12.2} s", r.total_seconds);
    if r.mismatches.is_empty() {
        println!("  verification      OK: users and messages equal a sequential replay");
        Ok(())
    } else {
        println!("  verification      FAILED:");
        for m in &r.mismatches {
            println!("    - {m}");
        }
        bail!("the pipeline's result differs from the sequential replay")
    }
}
