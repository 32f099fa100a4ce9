//! `cargo bench --bench pipeline`: in one run on the same input bytes, (a) a decode-only pass
//! on all cores and (b) the full embedded pipeline (`herald demo`'s actor tree with campaigns,
//! simulated providers and self-verification); prints events/s for both and their ratio, and
//! writes them to `target/bench/pipeline.json`.
//!
//! Size: HERALD_BENCH_EVENTS (default 1,000,000) and HERALD_BENCH_USERS (default 100,000);
//! HERALD_BENCH_VISITORS, the share of anonymous visitors' messages and their aliases (default
//! 0: the identify/track workload; `herald demo` runs 0.05): with it, merges per second too.
//! `HERALD__SECTION__KEY` variables and a TOML file named by HERALD_BENCH_CONFIG change the
//! demo's configuration (e.g. `campaigns = []`: the engine without messages).

use std::time::Instant;

use herald::config::Config;
use herald::demo::{self, DemoArgs};
use herald::domain::event::decode;
use herald::workload::{Workload, WorkloadSpec};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    herald::huge_pages::disable().expect("transparent huge pages off");
    let events = env_u64("HERALD_BENCH_EVENTS", 1_000_000);
    let users = env_u64("HERALD_BENCH_USERS", 100_000);
    let visitors: f64 = std::env::var("HERALD_BENCH_VISITORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let seed = 42;
    let spec = WorkloadSpec::new(events, users, seed).with_visitors(visitors);
    let payloads: Vec<bytes::Bytes> = Workload::new(spec).map(|m| m.payload).collect();
    let bytes: usize = payloads.iter().map(|p| p.len()).sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // (a) decode only, all cores.
    let started = Instant::now();
    let valid: usize = std::thread::scope(|s| {
        let chunk = payloads.len().div_ceil(cores);
        let handles: Vec<_> = payloads
            .chunks(chunk.max(1))
            .map(|c| s.spawn(move || c.iter().filter(|p| decode(p, 1 << 20).is_ok()).count()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let decode_secs = started.elapsed().as_secs_f64();
    let decode_rate = events as f64 / decode_secs;

    // (b) the full pipeline on the same bytes (same workload spec and seed).
    // `HERALD__SECTION__KEY` variables tune the pipeline's configuration as they do `herald demo`'s.
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("HERALD__"))
        .collect();
    let demo_toml = include_str!("../config/demo.toml");
    // HERALD_BENCH_CONFIG names a TOML file layered over the demo's (e.g. `campaigns = []`).
    let extra = std::env::var("HERALD_BENCH_CONFIG").ok().map(|path| {
        (
            std::fs::read_to_string(&path).expect("HERALD_BENCH_CONFIG"),
            path,
        )
    });
    let mut layers = vec![("config/demo.toml", demo_toml)];
    if let Some((text, path)) = &extra {
        layers.push((path.as_str(), text.as_str()));
    }
    let config = Config::load_with(&[], &layers, &env).expect("demo config");
    let report = demo::run(
        config,
        DemoArgs {
            events,
            users,
            seed,
            visitors,
        },
    )
    .expect("pipeline run");
    assert!(
        report.mismatches.is_empty(),
        "pipeline result differs from replay: {:?}",
        report.mismatches
    );
    let pipeline_rate = report.events_per_sec();
    let ratio = pipeline_rate / decode_rate;

    println!("machine: {cores} cores");
    println!("input: {events} events, {users} users, {bytes} bytes, {valid} valid");
    println!("decode-only ({cores} threads): {decode_rate:>12.0} events/s ({decode_secs:.3} s)");
    println!(
        "full pipeline:                {pipeline_rate:>12.0} events/s ({:.3} s to durable; p50 {} ms, p99 {} ms)",
        report.ingest_seconds, report.latency_p50_ms, report.latency_p99_ms
    );
    println!("pipeline / decode-only:       {:>12.1} %", ratio * 100.0);
    let merges_per_sec = report.merged as f64 / report.ingest_seconds.max(1e-9);
    println!(
        "merges (visitors {visitors}):      {:>12} ids merged, {merges_per_sec:.0}/s alongside; {} records forwarded",
        report.merged, report.forwarded
    );
    let messages: usize = report.statuses.values().sum();
    println!(
        "messages:                     {messages:>12} triggered, {} sends",
        report.sends
    );
    let json = format!(
        "{{\"events\":{events},\"users\":{users},\"cores\":{cores},\"decode_events_per_sec\":{decode_rate:.0},\"pipeline_events_per_sec\":{pipeline_rate:.0},\"ratio\":{ratio:.4},\"latency_p50_ms\":{},\"latency_p99_ms\":{},\"visitors\":{visitors},\"merged\":{},\"forwarded\":{},\"messages\":{messages},\"sends\":{}}}\n",
        report.latency_p50_ms, report.latency_p99_ms, report.merged, report.forwarded, report.sends
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("pipeline.json"), json);
    }
}
