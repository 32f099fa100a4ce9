//! Identity merge (`alias`) on the embedded pipeline: random streams with chains, repeats,
//! self-aliases, cycles, retargets, blocked and unknown ids, against the reference model's
//! merge rule (tests/common/oracle.rs), through a rebalance and a lost cache.

#[allow(dead_code)]
#[path = "common/oracle.rs"]
mod oracle;

#[allow(dead_code)]
#[path = "common/aliases.rs"]
mod aliases;

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::config::Config;
use herald::embedded::EmbeddedRig;

use aliases::AliasStream;

const TEST_TOML: &str = r#"
[source]
kind = "embedded"
[batch]
max_size = 200
max_wait_ms = 5
shards = 3
[pipeline]
commit_interval_ms = 10
max_in_flight_per_partition = 400
fetch_max_records = 100
workers = 2
[demo]
partitions = 4
"#;

fn config(extra: &str) -> Config {
    Config::load_with(&[], &[("test", TEST_TOML), ("test extra", extra)], &[]).expect("test config")
}

async fn until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn run<F: Future<Output = ()>>(f: F) {
    actix::System::new().block_on(f);
}

fn publish(rig: &EmbeddedRig, phase: &[(String, String)]) {
    for (key, payload) in phase {
        rig.source.append(key, Bytes::from(payload.clone()));
    }
}

fn check(rig: &EmbeddedRig, stream: &AliasStream, phases: usize) {
    let want = stream.expected(phases);
    let users = rig.docs.users();
    for (id, profile) in &want.users {
        assert_eq!(
            users.get(id),
            Some(profile),
            "after phase {phases}: user {id}"
        );
    }
    assert_eq!(
        users.len(),
        want.users.len(),
        "after phase {phases}: live users"
    );
    assert_eq!(
        rig.docs.merged(),
        want.merged,
        "after phase {phases}: merged ids"
    );
}

#[test]
fn aliases_merge_once_transitively_through_a_rebalance_and_a_lost_cache() {
    let cfg = config("");
    for seed in [1u64, 2, 3] {
        let rig = EmbeddedRig::new(&cfg, seed);
        let stream = AliasStream::new(seed, 60, 40, 1500);
        let want = stream.expected(stream.phases.len());
        assert!(
            want.merged.len() >= 40,
            "a stream rich in merges: {:?}",
            want.merged
        );
        run(async {
            let pipeline = rig.start(&cfg, seed);
            rig.source.assign_all();
            for (n, phase) in stream.phases.iter().enumerate() {
                publish(&rig, phase);
                if n == 1 {
                    // A rebalance while the aliases are merging.
                    let revoked = rig.source.revoke(&[0, 1]);
                    revoked.await.expect("revoke completes");
                    rig.source.assign(&[0, 1]);
                }
                if n == 3 {
                    rig.cache.clear();
                }
                until("phase committed", 60, || rig.source.fully_committed()).await;
                check(&rig, &stream, n + 1);
            }
            pipeline.shutdown().await.expect("clean shutdown");
        });
        let dead = rig.source.dead_letters();
        let blocked = dead
            .iter()
            .filter(|d| d.error.starts_with("blocked_id: "))
            .count();
        assert_eq!(
            Some(&blocked),
            stream.refused().get("blocked_id"),
            "{:?}",
            dead.iter().map(|d| &d.error).collect::<Vec<_>>()
        );
        assert_eq!(dead.len(), blocked, "nothing else dead-lettered");
        let merges = rig.metrics.render();
        for outcome in [
            "merged",
            "retargeted",
            "same_id",
            "already_merged",
            "blocked_id",
        ] {
            assert!(
                merges.contains(&format!("herald_merges_total{{outcome=\"{outcome}\"}}")),
                "{outcome}: {merges}"
            );
        }
        assert!(
            merges.contains("herald_messages_forwarded_total"),
            "{merges}"
        );
    }
}

#[test]
fn a_profile_takes_no_more_than_merge_max_ids() {
    let cfg = config("[merge]\nmax_ids = 2\n");
    let rig = EmbeddedRig::new(&cfg, 9);
    let alias = |n: u32, from: &str| {
        format!(
            r#"{{"type":"alias","messageId":"a-{n}","userId":"u","previousId":"{from}","timestamp":"2026-11-23T10:00:00Z"}}"#
        )
    };
    let track = |from: &str| {
        format!(
            r#"{{"type":"track","messageId":"t-{from}","userId":"{from}","event":"e","timestamp":"2026-11-23T10:00:00Z"}}"#
        )
    };
    for v in ["v1", "v2", "v3"] {
        rig.source.append(v, Bytes::from(track(v)));
    }
    run(async {
        let pipeline = rig.start(&cfg, 9);
        rig.source.assign_all();
        until("visitors written", 30, || rig.docs.users().len() == 3).await;
        for (n, v) in ["v1", "v2", "v3"].iter().enumerate() {
            rig.source.append("u", Bytes::from(alias(n as u32, v)));
        }
        until("all committed", 30, || rig.source.fully_committed()).await;
        pipeline.shutdown().await.expect("clean shutdown");
    });
    let users = rig.docs.users();
    assert_eq!(users["u"].event_count, 2, "{users:?}");
    assert!(users.contains_key("v3"));
    let dead = rig.source.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].error.starts_with("merge_limit: "),
        "{}",
        dead[0].error
    );
}
