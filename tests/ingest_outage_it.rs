//! The HTTP ingest while Kafka stops acknowledging (the broker SIGSTOPped for longer than
//! `ingest.timeout_ms`, then resumed): Herald answers 503 with `Retry-After` instead of
//! buffering, the official libraries (Segment's Python and Node.js, RudderStack's Python) send
//! again, and every message lands in `users` once.
//! Its own test binary: it stops the shared broker, which no other test may see.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// The broker's pid, from `scripts/backends.sh`'s pid file.
fn kafka_pid() -> u32 {
    let data = std::env::var_os("HERALD_BACKENDS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HERALD_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/herald")
                })
                .join("backends")
        });
    std::fs::read_to_string(data.join("kafka/pid"))
        .expect("Kafka's pid file (scripts/backends.sh up)")
        .trim()
        .parse()
        .unwrap()
}

/// Resumes the broker even if the test fails while it is stopped.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

#[test]
fn a_broker_that_stops_acknowledging_gets_503_and_the_clients_lose_and_double_nothing() {
    let names = Names::new("ingest_outage", 2);
    let ingest = free_port();
    let http = free_port();
    let (ingest_listen, http_listen) = (format!("127.0.0.1:{ingest}"), format!("127.0.0.1:{http}"));
    let mut herald = spawn_herald(
        &names,
        &[
            ("HERALD__INGEST__LISTEN", &ingest_listen),
            ("HERALD__HTTP__LISTEN", &http_listen),
            ("HERALD__INGEST__TIMEOUT_MS", "1500"),
            ("HERALD_INGEST_WRITE_KEYS", "outage-key"),
        ],
        "outage",
    );
    wait_port(ingest, Duration::from_secs(60));
    // Each official library sends its own users' messages, paced so that all three are sending
    // while the broker is stopped.
    let libraries = ["segment", "rudder", "node"];
    let mut calls: Vec<Value> = Vec::new();
    let mut senders = Vec::new();
    for lib in libraries {
        let mine: Vec<Value> = (0..1_000)
            .map(|i| {
                json!({"type": "track", "userId": format!("{lib}-{}", i % 40), "event": "tick",
                       "messageId": format!("{lib}-{i}"),
                       "timestamp": format!("2026-11-23T10:00:{:02}.{:03}Z", i % 60, i % 1000)})
            })
            .collect();
        let sender = ingest_client(lib, ingest, "outage-key", &mine)
            .env("INGEST_PACE_MS", "6")
            .spawn()
            .unwrap();
        senders.push((lib, sender));
        calls.extend(mine);
    }
    let offsets = offsets_client(&names);
    block_on(eventually(
        "some messages published",
        Duration::from_secs(60),
        || {
            let any = end_offsets(&offsets, &names).iter().sum::<i64>() > 0;
            async move { any }
        },
    ));
    let pid = kafka_pid();
    signal(pid, "-STOP");
    let resume = Resume(pid);
    // The outage lasts until the ingest has answered 503 (past its 1.5 s timeout) to several
    // requests, so the client's retries meet a broker that is still stopped.
    let stopped = std::time::Instant::now();
    while sum(
        &scrape(http),
        "herald_ingest_requests_total",
        &[("code", "503")],
    ) < 3.0
    {
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "no 503 answers while the broker was stopped"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(resume);
    for (lib, mut sender) in senders {
        let status = sender.wait().unwrap();
        assert!(
            status.success(),
            "{lib}: the client gave up on some messages"
        );
    }
    block_on(users_become(&names, &calls, Duration::from_secs(120)));
    kill9(&mut herald);
}
