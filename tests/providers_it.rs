//! Real provider kinds against real parts: `herald run` (Kafka, Redis, MongoDB) sending
//! through Twilio's and SendGrid's APIs — as the providers publish them (Prism serving their
//! OpenAPI documents, with `--errors`: a request the document does not allow is refused) and
//! as `herald provider-sim --kind twilio|sendgrid` speaks them with callbacks — and callbacks
//! signed by the providers' official Python libraries (`tests/provider_libs.py`), so Herald's
//! signature checks are held against the providers' implementations, not against its own.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use mongodb::bson::Document;
use serde_json::json;

const TWILIO_SID: &str = "AC00000000000000000000000000000000";
const TWILIO_TOKEN: &str = "it-twilio-auth-token";
const SENDGRID_KEY: &str = "SG.it-api-key";

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Runs `tests/provider_libs.py` (the providers' official libraries) and returns its output.
fn provider_lib(args: &[&str]) -> String {
    let out = Command::new(tools().join("venv/bin/python"))
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/provider_libs.py"))
        .args(args)
        .output()
        .expect("run provider_libs.py");
    assert!(
        out.status.success(),
        "provider_libs.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Prism mocking a provider's published API document.
fn prism(port: u16, spec: &str, tag: &str) -> Private {
    let log = std::fs::File::create(log_dir().join(format!("prism-{tag}-{port}.log"))).unwrap();
    let child = Command::new(tools().join("node_modules/.bin/prism"))
        .args([
            "mock",
            "--errors",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/provider-specs")
                .join(spec),
        )
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn prism");
    let prism = Private(child);
    wait_port(port, Duration::from_secs(120));
    prism
}

fn write_config(names: &Names, text: &str) -> PathBuf {
    let path = log_dir().join(format!("{}.toml", names.base));
    std::fs::write(&path, text).unwrap();
    path
}

/// An identify with `traits`, then a `signed_up` track.
fn signs_up(user: &str, traits: serde_json::Value) -> Vec<(String, String)> {
    vec![
        (
            user.to_string(),
            json!({"messageId": format!("id-{user}"), "type": "identify", "userId": user,
                "timestamp": "2026-11-23T10:00:00Z", "traits": traits})
            .to_string(),
        ),
        (
            user.to_string(),
            json!({"messageId": format!("su-{user}"), "type": "track", "userId": user,
                "timestamp": "2026-11-23T10:00:01Z", "event": "signed_up"})
            .to_string(),
        ),
    ]
}

/// How many sends the Twilio simulator took for an address: it lists each distinct
/// address + body once and counts the same content sent again in `repeats` (Twilio has no
/// idempotency key, so that is all a repeat looks like).
fn twilio_sends_to(sends: &[serde_json::Value], to: &str) -> usize {
    sends
        .iter()
        .filter(|s| s["to"] == to)
        .map(|s| 1 + s["repeats"].as_u64().unwrap_or(0) as usize)
        .sum()
}

fn status(doc: &Document) -> &str {
    doc.get_str("status").unwrap_or("?")
}

async fn message(names: &Names, id: &str) -> Option<Document> {
    mongo_messages(names).await.remove(id)
}

async fn wait_status(names: &Names, id: &str, want: &str, limit: Duration) -> Document {
    eventually(&format!("{id} is {want}"), limit, || async {
        message(names, id).await.is_some_and(|d| status(&d) == want)
    })
    .await;
    message(names, id).await.unwrap()
}

async fn suppression(names: &Names, id: &str) -> Option<Document> {
    let client = mongodb::Client::with_uri_str(&names.mongo).await.unwrap();
    client
        .database(&names.base)
        .collection::<Document>("suppressions")
        .find_one(mongodb::bson::doc! {"_id": id})
        .await
        .unwrap()
}

async fn post(url: &str, content_type: &str, body: &[u8], headers: &[(&str, String)]) -> u16 {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

fn herald_env<'a>(listen: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![("HERALD__HTTP__LISTEN", listen)];
    env.extend_from_slice(extra);
    env
}

/// Twilio through `provider-sim --kind twilio` (its API, its signed form callbacks): delivered,
/// undelivered then retried, a carrier failure, an opted-out number (error 21610) that is
/// suppressed so a later trigger for it is `skipped`, and a callback signed by Twilio's own
/// library accepted while a forged one is refused with 403.
#[test]
fn twilio_sends_retries_and_suppresses_with_callbacks_signed_twilios_way() {
    let names = Names::new("twilio", 1);
    let (sim_port, http) = (free_port(), free_port());
    let _sim = spawn_sim(sim_port, TWILIO_TOKEN, &["--kind", "twilio"], "twilio");
    let config = write_config(
        &names,
        &format!(
            r#"
[retry]
base_ms = 200
max_delay_ms = 1000

[[campaigns]]
id = "welcome"
on_event = "signed_up"
channel = "sms"
template = "Hi {{{{traits.first_name}}}}"

[[providers]]
name = "tw"
kind = "twilio"
channel = "sms"
base_url = "http://127.0.0.1:{sim_port}"
account_sid_env = "IT_TWILIO_SID"
auth_token_env = "IT_TWILIO_TOKEN"
from = "+15550000000"
"#
        ),
    );
    let phone = |n: u32| format!("+1555100{n:04}");
    block_on(async {
        sim_script(sim_port, &phone(2), json!([{"status": 201, "callback": "undelivered"}, {"status": 201, "callback": "delivered"}])).await;
        sim_script(
            sim_port,
            &phone(3),
            json!([{"status": 400, "error_code": "21610"}]),
        )
        .await;
        sim_script(
            sim_port,
            &phone(4),
            json!([{"status": 201, "callback": "failed", "error_code": "30007"}]),
        )
        .await;
        sim_script(
            sim_port,
            &phone(5),
            json!([{"status": 201, "callback": "none"}]),
        )
        .await;
    });
    let mut records = Vec::new();
    for (user, n) in [
        ("u-del", 1),
        ("u-undel", 2),
        ("u-stop", 3),
        ("u-fail", 4),
        ("u-lib", 5),
    ] {
        records.extend(signs_up(
            user,
            json!({"phone": phone(n), "first_name": user}),
        ));
    }
    produce_records(&names, &records);
    let listen = format!("127.0.0.1:{http}");
    let _herald = spawn_herald_with_config(
        &names,
        &config,
        &herald_env(
            &listen,
            &[
                ("IT_TWILIO_SID", TWILIO_SID),
                ("IT_TWILIO_TOKEN", TWILIO_TOKEN),
            ],
        ),
        "twilio",
    );
    block_on(async {
        let limit = Duration::from_secs(90);
        wait_status(&names, "welcome:su-u-del", "delivered", limit).await;
        let undel = wait_status(&names, "welcome:su-u-undel", "delivered", limit).await;
        let attempts = undel
            .get("attempts")
            .and_then(|a| a.as_i64().or(a.as_i32().map(i64::from)));
        assert_eq!(attempts, Some(2), "undelivered is retried once: {undel}");
        let failed = wait_status(&names, "welcome:su-u-fail", "failed", limit).await;
        assert!(
            failed.get_str("error").unwrap().contains("30007"),
            "{failed}"
        );
        let stop = wait_status(&names, "welcome:su-u-stop", "failed", limit).await;
        assert!(stop.get_str("error").unwrap().contains("21610"), "{stop}");
        let s = suppression(&names, &format!("sms:{}", phone(3)))
            .await
            .expect("opt-out suppressed");
        assert_eq!(s.get_str("reason").unwrap(), "provider_opt_out");
        assert_eq!(s.get_str("provider").unwrap(), "tw");
        assert!(
            suppression(&names, &format!("sms:{}", phone(4)))
                .await
                .is_none(),
            "a carrier failure suppresses nothing"
        );

        // A callback signed by Twilio's library, after a forged one.
        let lib = wait_status(&names, "welcome:su-u-lib", "sent", limit).await;
        let sid = lib.get_str("provider_message_id").unwrap().to_string();
        let url = format!("http://127.0.0.1:{http}/webhooks/tw");
        let form = format!(
            "MessageSid={sid}&MessageStatus=delivered&AccountSid={TWILIO_SID}&To=%2B15551000005"
        );
        let forged = provider_lib(&["twilio-sign", "not-the-token", &url, &form]);
        let code = post(
            &url,
            "application/x-www-form-urlencoded",
            form.as_bytes(),
            &[("X-Twilio-Signature", forged)],
        )
        .await;
        assert_eq!(code, 403, "a forged Twilio signature");
        assert_eq!(
            status(&message(&names, "welcome:su-u-lib").await.unwrap()),
            "sent"
        );
        let signature = provider_lib(&["twilio-sign", TWILIO_TOKEN, &url, &form]);
        let code = post(
            &url,
            "application/x-www-form-urlencoded",
            form.as_bytes(),
            &[("X-Twilio-Signature", signature.clone())],
        )
        .await;
        assert_eq!(code, 204, "a callback signed by twilio's library");
        wait_status(&names, "welcome:su-u-lib", "delivered", limit).await;
        // The same callback again changes nothing and is still acknowledged.
        let code = post(
            &url,
            "application/x-www-form-urlencoded",
            form.as_bytes(),
            &[("X-Twilio-Signature", signature)],
        )
        .await;
        assert_eq!(code, 204, "a duplicate callback");
    });

    // A later trigger for the opted-out number is skipped, not sent.
    produce_records(
        &names,
        &signs_up(
            "u-stop-again",
            json!({"phone": phone(3), "first_name": "again"}),
        ),
    );
    block_on(async {
        let skipped = wait_status(
            &names,
            "welcome:su-u-stop-again",
            "skipped",
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(
            skipped.get_str("error").unwrap(),
            "suppressed: provider_opt_out"
        );
        let sends = sim_sends(sim_port).await;
        let to_stopped = sends
            .iter()
            .filter(|s| s["to"] == phone(3).as_str())
            .count();
        assert_eq!(
            to_stopped, 1,
            "the suppressed number got another send: {sends:?}"
        );
    });
    let scraped = scrape(http);
    assert!(
        sum(
            &scraped,
            "herald_suppressed_total",
            &[("reason", "provider_opt_out")]
        ) >= 2.0,
        "one suppression recorded and one message skipped for it"
    );
}

/// SendGrid through `provider-sim --kind sendgrid` (Mail Send, signed Event Webhook arrays):
/// delivered; a bounce fails the message and suppresses the address (case-folded), so a
/// later trigger for it is `skipped`; a spam report after acceptance suppresses without
/// changing the status.
#[test]
fn sendgrid_events_deliver_fail_and_suppress() {
    let names = Names::new("sendgrid", 1);
    let (sim_port, http) = (free_port(), free_port());
    let secret = "it-sendgrid-sim-seed";
    let events_url = format!("http://127.0.0.1:{http}/webhooks/sg");
    let _sim = spawn_sim(
        sim_port,
        secret,
        &[
            "--kind",
            "sendgrid",
            "--token",
            SENDGRID_KEY,
            "--event-webhook-url",
            &events_url,
        ],
        "sendgrid",
    );
    let public_key = herald::provider_sim::sendgrid_public_key(secret.as_bytes());
    let config = write_config(
        &names,
        &format!(
            r#"
[[campaigns]]
id = "hello"
on_event = "signed_up"
channel = "email"
template = "Hello {{{{traits.first_name}}}}"
subject = "Welcome, {{{{traits.first_name}}}}"

[[providers]]
name = "sg"
kind = "sendgrid"
channel = "email"
base_url = "http://127.0.0.1:{sim_port}/v3"
api_key_env = "IT_SG_KEY"
webhook_public_key_env = "IT_SG_PUBLIC_KEY"
from = "noreply@herald.test"
"#
        ),
    );
    block_on(async {
        sim_script(
            sim_port,
            "Bounce@Example.test",
            json!([{"status": 202, "callback": "bounce"}]),
        )
        .await;
        sim_script(
            sim_port,
            "spam@example.test",
            json!([{"status": 202, "callback": "spamreport"}]),
        )
        .await;
    });
    let mut records = Vec::new();
    for (user, email) in [
        ("e-ok", "ok@example.test"),
        ("e-bounce", "Bounce@Example.test"),
        ("e-spam", "spam@example.test"),
    ] {
        records.extend(signs_up(user, json!({"email": email, "first_name": user})));
    }
    produce_records(&names, &records);
    let listen = format!("127.0.0.1:{http}");
    let _herald = spawn_herald_with_config(
        &names,
        &config,
        &herald_env(
            &listen,
            &[
                ("IT_SG_KEY", SENDGRID_KEY),
                ("IT_SG_PUBLIC_KEY", &public_key),
            ],
        ),
        "sendgrid",
    );
    block_on(async {
        let limit = Duration::from_secs(90);
        wait_status(&names, "hello:su-e-ok", "delivered", limit).await;
        let bounced = wait_status(&names, "hello:su-e-bounce", "failed", limit).await;
        assert!(
            bounced.get_str("error").unwrap().contains("bounce"),
            "{bounced}"
        );
        let s = suppression(&names, "email:bounce@example.test")
            .await
            .expect("bounce suppressed");
        assert_eq!(s.get_str("reason").unwrap(), "bounce");
        eventually("the spam report is recorded", limit, || async {
            suppression(&names, "email:spam@example.test")
                .await
                .is_some()
        })
        .await;
        let spam = message(&names, "hello:su-e-spam").await.unwrap();
        assert_eq!(
            status(&spam),
            "sent",
            "a spam report changes no status: {spam}"
        );
        assert_eq!(
            suppression(&names, "email:spam@example.test")
                .await
                .unwrap()
                .get_str("reason")
                .unwrap(),
            "spam_report"
        );
    });
    produce_records(
        &names,
        &signs_up("e-bounce-again", json!({"email": "bounce@example.test"})),
    );
    block_on(async {
        let skipped = wait_status(
            &names,
            "hello:su-e-bounce-again",
            "skipped",
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(skipped.get_str("error").unwrap(), "suppressed: bounce");
        let sends = sim_sends(sim_port).await;
        assert_eq!(sends.len(), 3, "only the first three were sent: {sends:?}");
        assert_eq!(
            sim_stats(sim_port).await["repeated_keys"],
            0,
            "a send went out twice"
        );
    });
}

/// Herald's Twilio and SendGrid requests as the providers' own API documents allow them
/// (Prism with `--errors` answers 4xx to anything else, which would make the messages
/// `failed`), then callbacks for them signed by the providers' official libraries: accepted;
/// tampered with: 403.
#[test]
fn requests_match_the_providers_api_documents_and_callbacks_their_libraries() {
    let names = Names::new("prism", 1);
    let (twilio_port, sendgrid_port, http) = (free_port(), free_port(), free_port());
    let keys = log_dir().join(format!("{}-sendgrid-key", names.base));
    std::fs::create_dir_all(&keys).unwrap();
    let public_key = provider_lib(&["sendgrid-keypair", keys.to_str().unwrap()]);
    let _twilio = prism(twilio_port, "twilio_api_v2010.json", "twilio");
    let _sendgrid = prism(sendgrid_port, "sendgrid_v3.json", "sendgrid");
    let config = write_config(
        &names,
        &format!(
            r#"
[[campaigns]]
id = "sms"
on_event = "signed_up"
channel = "sms"
template = "Hi {{{{traits.first_name}}}}"

[[campaigns]]
id = "mail"
on_event = "signed_up"
channel = "email"
template = "Hello {{{{traits.first_name}}}}"
subject = "Welcome, {{{{traits.first_name}}}}"

[[providers]]
name = "tw"
kind = "twilio"
channel = "sms"
base_url = "http://127.0.0.1:{twilio_port}"
account_sid_env = "IT_TWILIO_SID"
auth_token_env = "IT_TWILIO_TOKEN"
from = "+15550000000"

[[providers]]
name = "sg"
kind = "sendgrid"
channel = "email"
base_url = "http://127.0.0.1:{sendgrid_port}"
api_key_env = "IT_SG_KEY"
webhook_public_key_env = "IT_SG_PUBLIC_KEY"
from = "noreply@herald.test"
"#
        ),
    );
    produce_records(
        &names,
        &signs_up(
            "p-1",
            json!({"phone": "+15552000001", "email": "p1@example.test", "first_name": "Ada"}),
        ),
    );
    let listen = format!("127.0.0.1:{http}");
    let _herald = spawn_herald_with_config(
        &names,
        &config,
        &herald_env(
            &listen,
            &[
                ("IT_TWILIO_SID", TWILIO_SID),
                ("IT_TWILIO_TOKEN", TWILIO_TOKEN),
                ("IT_SG_KEY", SENDGRID_KEY),
                ("IT_SG_PUBLIC_KEY", &public_key),
                // Sends still `sent` after a second are looked up (Twilio's Message resource).
                ("HERALD__RECONCILE__STATUS_AFTER_MS", "1000"),
                ("HERALD__RECONCILE__LOOKUP_EVERY_MS", "200"),
            ],
        ),
        "prism",
    );
    block_on(async {
        let limit = Duration::from_secs(90);
        for id in ["sms:su-p-1", "mail:su-p-1"] {
            eventually(&format!("{id} leaves queued"), limit, || async {
                message(&names, id)
                    .await
                    .is_some_and(|d| status(&d) != "queued")
            })
            .await;
            let doc = message(&names, id).await.unwrap();
            assert_eq!(
                status(&doc),
                "sent",
                "the provider's API document refused the request: {doc}"
            );
        }

        // Twilio: the send is looked up with a request Twilio's API document takes (the
        // document's example answers `sent`: still on its way).
        let lookups = |outcome: &'static str| async move {
            let text = reqwest::get(format!("http://127.0.0.1:{http}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines()
                .filter(|l| l.starts_with("herald_status_lookups_total{"))
                .filter(|l| {
                    l.contains("provider=\"tw\"") && l.contains(&format!("outcome=\"{outcome}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        eventually("the Twilio send looked up", limit, || async {
            lookups("pending").await >= 1.0
        })
        .await;
        assert_eq!(lookups("error").await, 0.0, "Prism refused the lookup");

        // Twilio: a status callback signed by twilio's RequestValidator.
        let sms = message(&names, "sms:su-p-1").await.unwrap();
        let sid = sms.get_str("provider_message_id").unwrap().to_string();
        let url = format!("http://127.0.0.1:{http}/webhooks/tw");
        let form = format!("AccountSid={TWILIO_SID}&MessageSid={sid}&MessageStatus=delivered");
        let signature = provider_lib(&["twilio-sign", TWILIO_TOKEN, &url, &form]);
        let tampered = form.replace("delivered", "undelivered");
        let code = post(
            &url,
            "application/x-www-form-urlencoded",
            tampered.as_bytes(),
            &[("X-Twilio-Signature", signature.clone())],
        )
        .await;
        assert_eq!(code, 403, "a tampered Twilio callback");
        let code = post(
            &url,
            "application/x-www-form-urlencoded",
            form.as_bytes(),
            &[("X-Twilio-Signature", signature)],
        )
        .await;
        assert_eq!(code, 204, "a Twilio callback signed by twilio's library");
        wait_status(&names, "sms:su-p-1", "delivered", limit).await;

        // SendGrid: an Event Webhook array signed as the sendgrid library verifies it.
        let mail = message(&names, "mail:su-p-1").await.unwrap();
        let pid = mail.get_str("provider_message_id").unwrap().to_string();
        let events = json!([
            {"email": "p1@example.test", "timestamp": now_secs(), "event": "processed",
             "sg_event_id": "ev-1", "sg_message_id": format!("{pid}.filter0001"), "herald_message_id": "mail:su-p-1"},
            {"email": "p1@example.test", "timestamp": now_secs(), "event": "delivered",
             "sg_event_id": "ev-2", "sg_message_id": format!("{pid}.filter0001"), "herald_message_id": "mail:su-p-1"},
            // Unmatched events do not hold the others back: one about a message not stored
            // (kept for later), one about a message another provider sent (skipped).
            {"email": "x@example.test", "timestamp": now_secs(), "event": "delivered",
             "sg_event_id": "ev-3", "sg_message_id": "unknown.filter0001", "herald_message_id": "mail:not-stored"},
            {"email": "p1@example.test", "timestamp": now_secs(), "event": "bounce",
             "sg_event_id": "ev-4", "sg_message_id": format!("{sid}.filter0001"), "herald_message_id": "sms:su-p-1"},
        ])
        .to_string();
        let payload = keys.join("events.json");
        std::fs::write(&payload, &events).unwrap();
        let ts = now_secs().to_string();
        let signature = provider_lib(&[
            "sendgrid-sign",
            keys.to_str().unwrap(),
            &ts,
            payload.to_str().unwrap(),
        ]);
        let headers = [
            ("X-Twilio-Email-Event-Webhook-Signature", signature),
            ("X-Twilio-Email-Event-Webhook-Timestamp", ts),
        ];
        let url = format!("http://127.0.0.1:{http}/webhooks/sg");
        let stale_ts = (now_secs() - 3600).to_string();
        let stale_sig = provider_lib(&[
            "sendgrid-sign",
            keys.to_str().unwrap(),
            &stale_ts,
            payload.to_str().unwrap(),
        ]);
        let stale = [
            ("X-Twilio-Email-Event-Webhook-Signature", stale_sig),
            ("X-Twilio-Email-Event-Webhook-Timestamp", stale_ts),
        ];
        assert_eq!(
            post(&url, "application/json", events.as_bytes(), &stale).await,
            403,
            "a correctly signed array replayed an hour later"
        );
        assert_eq!(
            post(&url, "application/json", events.as_bytes(), &[]).await,
            403,
            "an unsigned event array"
        );
        let tampered = events.replace("\"delivered\"", "\"bounce\"");
        assert_eq!(
            post(&url, "application/json", tampered.as_bytes(), &headers).await,
            403,
            "a tampered event array"
        );
        assert_eq!(
            post(&url, "application/json", events.as_bytes(), &headers).await,
            204,
            "events signed SendGrid's way"
        );
        wait_status(&names, "mail:su-p-1", "delivered", limit).await;
        assert!(suppression(&names, "email:p1@example.test").await.is_none());
        let sms = message(&names, "sms:su-p-1").await.unwrap();
        assert_eq!(
            status(&sms),
            "delivered",
            "SendGrid's event about Twilio's send changed it"
        );
    });
}

/// A stand-in from `tests/provider_standins.py`, ready once it wrote `<dir>/ready`.
fn standin(kind: &str, port: u16, dir: &std::path::Path, args: &[&str]) -> Private {
    std::fs::create_dir_all(dir).unwrap();
    let _ = std::fs::remove_file(dir.join("ready"));
    let _ = std::fs::remove_file(dir.join("received.jsonl"));
    let log = std::fs::File::create(log_dir().join(format!("standin-{kind}-{port}.log"))).unwrap();
    let child = Command::new(tools().join("venv/bin/python"))
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/provider_standins.py"))
        .arg(kind)
        .arg(port.to_string())
        .arg(dir)
        .args(args)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn a provider stand-in");
    let standin = Private(child);
    let started = std::time::Instant::now();
    while !dir.join("ready").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{kind} stand-in did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_port(port, Duration::from_secs(20));
    standin
}

fn received(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("received.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// SMTP through aiosmtpd requiring STARTTLS and AUTH (certificate trusted through
/// `ca_file`): a message taken is `sent` with its Message-ID, subject and List-Unsubscribe;
/// a 550 recipient is `failed`; a 451 recipient is retried and then `sent`.
#[test]
fn smtp_sends_over_starttls_with_auth_and_classifies_replies() {
    let names = Names::new("smtp", 1);
    let (smtp_port, http) = (free_port(), free_port());
    let dir = log_dir().join(format!("{}-smtp", names.base));
    let _smtp = standin("smtp", smtp_port, &dir, &["herald", "it-smtp-password"]);
    let config = write_config(
        &names,
        &format!(
            r#"
[retry]
base_ms = 200
max_delay_ms = 1000

[[campaigns]]
id = "hello"
on_event = "signed_up"
channel = "email"
template = "Hello {{{{traits.first_name}}}}"
subject = "Welcome, {{{{traits.first_name}}}}"

[[providers]]
name = "mail"
kind = "smtp"
channel = "email"
url = "smtp://127.0.0.1:{smtp_port}"
username_env = "IT_SMTP_USER"
password_env = "IT_SMTP_PASSWORD"
ca_file = "{ca}"
from = "Herald <noreply@herald.test>"
unsubscribe_url = "https://herald.test/unsubscribe"
"#,
            ca = dir.join("cert.pem").display()
        ),
    );
    let mut records = Vec::new();
    for (user, email) in [
        ("m-ok", "ok@example.test"),
        ("m-reject", "reject@example.test"),
        ("m-later", "later@example.test"),
    ] {
        records.extend(signs_up(user, json!({"email": email, "first_name": user})));
    }
    produce_records(&names, &records);
    let listen = format!("127.0.0.1:{http}");
    let _herald = spawn_herald_with_config(
        &names,
        &config,
        &herald_env(
            &listen,
            &[
                ("IT_SMTP_USER", "herald"),
                ("IT_SMTP_PASSWORD", "it-smtp-password"),
            ],
        ),
        "smtp",
    );
    block_on(async {
        let limit = Duration::from_secs(90);
        wait_status(&names, "hello:su-m-ok", "sent", limit).await;
        let rejected = wait_status(&names, "hello:su-m-reject", "failed", limit).await;
        assert!(
            rejected.get_str("error").unwrap().contains("550"),
            "{rejected}"
        );
        let later = wait_status(&names, "hello:su-m-later", "sent", limit).await;
        let attempts = later
            .get("attempts")
            .and_then(|a| a.as_i64().or(a.as_i32().map(i64::from)));
        assert_eq!(attempts, Some(2), "a 451 is retried once: {later}");
    });
    let mail = received(&dir);
    let ok = mail
        .iter()
        .find(|m| m["to"][0] == "ok@example.test")
        .expect("the ok message reached the server");
    assert_eq!(ok["tls"], true, "sent without TLS: {ok}");
    assert_eq!(ok["authenticated"], true, "sent without AUTH: {ok}");
    assert_eq!(ok["message_id"], "<hello:su-m-ok@herald>");
    assert_eq!(ok["subject"], "Welcome, m-ok");
    assert_eq!(ok["list_unsubscribe"], "<https://herald.test/unsubscribe>");
    assert_eq!(ok["body"], "Hello m-ok");
    assert_eq!(mail.len(), 2, "ok and later once each: {mail:?}");
}

/// FCM HTTP v1 against a stand-in whose token endpoint checks Herald's RS256 assertion with
/// Google's google-auth library: sends are `sent` with FCM's message name, one token serves
/// them all, and an `UNREGISTERED` token fails its message and is suppressed, so a later
/// trigger for it is `skipped`.
#[test]
fn fcm_sends_with_one_exchanged_token_and_suppresses_unregistered_tokens() {
    let names = Names::new("fcm", 1);
    let (fcm_port, http) = (free_port(), free_port());
    let dir = log_dir().join(format!("{}-fcm", names.base));
    let _fcm = standin("fcm", fcm_port, &dir, &["it-project"]);
    let config = write_config(
        &names,
        &format!(
            r#"
[[campaigns]]
id = "push"
on_event = "signed_up"
channel = "push"
template = "Welcome {{{{traits.first_name}}}}"

[[providers]]
name = "fcm"
kind = "fcm"
channel = "push"
base_url = "http://127.0.0.1:{fcm_port}"
project_id = "it-project"
service_account_file_env = "IT_FCM_KEY_FILE"
"#
        ),
    );
    let mut records = Vec::new();
    for (user, token) in [
        ("f-1", "device-token-1"),
        ("f-2", "device-token-2"),
        ("f-3", "device-token-3"),
        ("f-gone", "unregistered-token-9"),
    ] {
        records.extend(signs_up(
            user,
            json!({"push_token": token, "first_name": user}),
        ));
    }
    produce_records(&names, &records);
    let listen = format!("127.0.0.1:{http}");
    let key_file = dir.join("sa.json");
    let key_file = key_file.to_str().unwrap();
    let _herald = spawn_herald_with_config(
        &names,
        &config,
        &herald_env(&listen, &[("IT_FCM_KEY_FILE", key_file)]),
        "fcm",
    );
    block_on(async {
        let limit = Duration::from_secs(90);
        for user in ["f-1", "f-2", "f-3"] {
            let doc = wait_status(&names, &format!("push:su-{user}"), "sent", limit).await;
            assert!(
                doc.get_str("provider_message_id")
                    .unwrap()
                    .starts_with("projects/it-project/messages/"),
                "{doc}"
            );
        }
        let gone = wait_status(&names, "push:su-f-gone", "failed", limit).await;
        assert!(
            gone.get_str("error").unwrap().contains("UNREGISTERED"),
            "{gone}"
        );
        let s = suppression(&names, "push:unregistered-token-9")
            .await
            .expect("the unregistered token is suppressed");
        assert_eq!(s.get_str("reason").unwrap(), "unregistered");
        let stats: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{fcm_port}/stats"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            stats["refused_assertions"], 0,
            "google-auth refused an assertion"
        );
        assert_eq!(
            stats["tokens_issued"], 1,
            "the access token was not reused: {stats}"
        );
    });
    produce_records(
        &names,
        &signs_up(
            "f-gone-again",
            json!({"push_token": "unregistered-token-9"}),
        ),
    );
    block_on(async {
        let skipped = wait_status(
            &names,
            "push:su-f-gone-again",
            "skipped",
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(
            skipped.get_str("error").unwrap(),
            "suppressed: unregistered"
        );
    });
    let sends = received(&dir);
    assert_eq!(sends.len(), 4, "each message sent once: {sends:?}");
    let first = sends
        .iter()
        .find(|m| m["token"] == "device-token-1")
        .unwrap();
    assert_eq!(first["notification"]["body"], "Welcome f-1");
    assert_eq!(first["data"]["herald_message_id"], "push:su-f-1");
}

/// The outbox on a provider without idempotency keys: Twilio through `provider-sim --kind
/// twilio`, two instances, one SIGKILLed while sends, retries (a scripted 503) and callbacks
/// (a scripted `undelivered`, which retries) are in flight, then restarted. Every message ends
/// `delivered`; a Twilio send cannot be deduplicated, so the only sends that may reach an
/// address twice are those the killed instance had in flight (its leases fire again) — at
/// most its concurrency plus its unrecorded answers, never the other instance's work or a
/// retry fired twice.
#[test]
fn twilio_sends_survive_a_sigkill_with_two_instances() {
    let names = Names::new("twkill", 2);
    let sim_port = free_port();
    let (http_1, http_2) = (free_port(), free_port());
    let _sim = spawn_sim(
        sim_port,
        TWILIO_TOKEN,
        &["--kind", "twilio", "--latency-ms", "20"],
        "twkill",
    );
    const MAX_CONCURRENCY: usize = 4;
    let config = write_config(
        &names,
        &format!(
            r#"
[retry]
base_ms = 300
max_delay_ms = 1500
sweep_ms = 200

[[campaigns]]
id = "welcome"
on_event = "signed_up"
channel = "sms"
template = "Hi {{{{traits.first_name}}}}"

[[providers]]
name = "tw"
kind = "twilio"
channel = "sms"
base_url = "http://127.0.0.1:{sim_port}"
account_sid_env = "IT_TWILIO_SID"
auth_token_env = "IT_TWILIO_TOKEN"
from = "+15550000000"
max_concurrency = {MAX_CONCURRENCY}
circuit_failures = 1000000
"#
        ),
    );
    const N: usize = 600;
    let phone = |i: usize| format!("+1555300{i:04}");
    // The oracle: how many sends each class takes, all ending `delivered`.
    let sends_for = |i: usize| if i % 3 == 0 { 1 } else { 2 };
    block_on(async {
        for i in 0..N {
            let steps = match i % 3 {
                0 => json!([{"status": 201, "callback": "delivered"}]),
                1 => json!([{"status": 503}, {"status": 201, "callback": "delivered"}]),
                _ => json!([{"status": 201, "callback": "undelivered"},
                             {"status": 201, "callback": "delivered"}]),
            };
            sim_script(sim_port, &phone(i), steps).await;
        }
    });
    let mut records = Vec::new();
    for i in 0..N {
        records.extend(signs_up(
            &format!("k-{i}"),
            json!({"phone": phone(i), "first_name": "K"}),
        ));
    }
    produce_records(&names, &records);
    let spawn = |http: u16, instance: &str, tag: &str| {
        let listen = format!("127.0.0.1:{http}");
        let public = format!("http://127.0.0.1:{http}");
        spawn_herald_with_config(
            &names,
            &config,
            &[
                ("HERALD__HTTP__LISTEN", listen.as_str()),
                ("HERALD__HTTP__PUBLIC_URL", public.as_str()),
                ("HERALD__KAFKA__GROUP_INSTANCE_ID", instance),
                ("IT_TWILIO_SID", TWILIO_SID),
                ("IT_TWILIO_TOKEN", TWILIO_TOKEN),
            ],
            tag,
        )
    };
    let mut first = spawn(http_1, "one", "one-a");
    let _second = spawn(http_2, "two", "two");
    block_on(async {
        eventually(
            "a third of the messages settled",
            Duration::from_secs(120),
            || async {
                let docs = mongo_messages(&names).await;
                docs.values().filter(|d| status(d) == "delivered").count() >= N / 3
            },
        )
        .await;
    });
    // What reached the provider in the last second before the kill bounds what the killed
    // instance can have sent without recording it (a `sent` write takes well under that).
    let requests = || {
        let stats = block_on(sim_stats(sim_port));
        stats["sends"].as_u64().unwrap() + stats["repeated_keys"].as_u64().unwrap()
    };
    let window_start = requests();
    std::thread::sleep(Duration::from_secs(1));
    let just_before_kill = requests() - window_start;
    kill9(&mut first);
    let _first_again = spawn(http_1, "one", "one-b");
    block_on(async {
        eventually(
            "every message delivered",
            Duration::from_secs(180),
            || async {
                let docs = mongo_messages(&names).await;
                docs.len() == N && docs.values().all(|d| status(d) == "delivered")
            },
        )
        .await;
        let sends = sim_sends(sim_port).await;
        let mut extra = Vec::new();
        for i in 0..N {
            let n = twilio_sends_to(&sends, &phone(i));
            assert!(n >= sends_for(i), "{} got {n} sends", phone(i));
            if n > sends_for(i) {
                extra.push((phone(i), n - sends_for(i)));
            }
        }
        let repeated: usize = extra.iter().map(|(_, n)| n).sum();
        eprintln!("sends repeated after the kill: {repeated} {extra:?}");
        // Cut off by the kill: sends in flight (at most MAX_CONCURRENCY) and answers whose
        // `sent` was not written yet — each resent once at most, and no more of them than
        // both instances sent in the second before the kill.
        assert!(
            extra.iter().all(|(_, n)| *n == 1),
            "a message was resent more than once: {extra:?}"
        );
        assert!(
            repeated as u64 <= just_before_kill.max(MAX_CONCURRENCY as u64),
            "{repeated} sends repeated: more than the {just_before_kill} sent in the second before the kill {extra:?}"
        );
    });
}

/// `on_unknown_outcome = "fail"` is at most once across a crash: a send that was under way
/// when its instance was SIGKILLed fails ("outcome unknown") instead of going out again,
/// and the sends that had not started go out once after the restart.
#[test]
fn with_on_unknown_outcome_fail_a_send_cut_off_by_a_sigkill_is_failed_not_repeated() {
    let names = Names::new("twdoubt", 1);
    let sim_port = free_port();
    let http = free_port();
    let _sim = spawn_sim(
        sim_port,
        TWILIO_TOKEN,
        &["--kind", "twilio", "--latency-ms", "1500"],
        "twdoubt",
    );
    const MAX_CONCURRENCY: usize = 4;
    let config = write_config(
        &names,
        &format!(
            r#"
[retry]
sweep_ms = 200

[[campaigns]]
id = "welcome"
on_event = "signed_up"
channel = "sms"
template = "Hi {{{{traits.first_name}}}}"

[[providers]]
name = "tw"
kind = "twilio"
channel = "sms"
base_url = "http://127.0.0.1:{sim_port}"
account_sid_env = "IT_TWILIO_SID"
auth_token_env = "IT_TWILIO_TOKEN"
from = "+15550000000"
max_concurrency = {MAX_CONCURRENCY}
timeout_ms = 20000
on_unknown_outcome = "fail"
"#
        ),
    );
    const N: usize = 60;
    let phone = |i: usize| format!("+1555400{i:04}");
    let mut records = Vec::new();
    for i in 0..N {
        records.extend(signs_up(
            &format!("d-{i}"),
            json!({"phone": phone(i), "first_name": "D"}),
        ));
    }
    produce_records(&names, &records);
    let listen = format!("127.0.0.1:{http}");
    let public = format!("http://127.0.0.1:{http}");
    let env = [
        ("HERALD__HTTP__LISTEN", listen.as_str()),
        ("HERALD__HTTP__PUBLIC_URL", public.as_str()),
        ("IT_TWILIO_SID", TWILIO_SID),
        ("IT_TWILIO_TOKEN", TWILIO_TOKEN),
    ];
    let mut first = spawn_herald_with_config(&names, &config, &env, "doubt-a");
    block_on(async {
        // Sends go out 4 at a time, each answered after 1.5 s: past 8 received, 4 are under
        // way whenever we look.
        eventually("sends under way", Duration::from_secs(120), || async {
            sim_sends(sim_port).await.len() >= 2 * MAX_CONCURRENCY
        })
        .await;
    });
    kill9(&mut first);
    let _again = spawn_herald_with_config(&names, &config, &env, "doubt-b");
    block_on(async {
        eventually(
            "every message delivered or failed",
            Duration::from_secs(180),
            || async {
                let docs = mongo_messages(&names).await;
                docs.len() == N
                    && docs
                        .values()
                        .all(|d| matches!(status(d), "delivered" | "failed"))
            },
        )
        .await;
        let docs = mongo_messages(&names).await;
        let sends = sim_sends(sim_port).await;
        let mut failed = 0;
        for d in docs.values() {
            let to = d.get_str("to").unwrap_or("?");
            let n = twilio_sends_to(&sends, to);
            match status(d) {
                "delivered" => assert_eq!(n, 1, "{to} was delivered after {n} sends"),
                _ => {
                    failed += 1;
                    let error = d.get_str("error").unwrap_or("");
                    assert!(error.contains("outcome unknown"), "{to} failed: {error}");
                    assert!(n <= 1, "{to} failed after {n} sends");
                }
            }
        }
        // Only sends under way at the kill (at most MAX_CONCURRENCY) or answered but not yet
        // recorded (as many again) are in doubt; those merely queued were sent, once.
        assert!(
            (1..=2 * MAX_CONCURRENCY).contains(&failed),
            "{failed} messages failed; {MAX_CONCURRENCY} sends were under way at the kill"
        );
    });
}
