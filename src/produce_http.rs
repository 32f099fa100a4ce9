//! `herald produce --via http`: the load generator through the HTTP ingest (REFERENCE.md §11)
//! instead of straight to the broker, the way a Segment client sends: batches of 100, Basic
//! auth with a write key, a few requests in flight, `429`/`503` sent again after their
//! `Retry-After`. Workload messages the Tracking API cannot carry (not a JSON object, over
//! 32 KB) are skipped and counted. The edge: `anyhow`.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures::StreamExt;

use crate::config::Config;
use crate::domain::segment::MAX_MESSAGE_BYTES;
use crate::workload::{Workload, WorkloadSpec};

const BATCH: usize = 100;
const IN_FLIGHT: usize = 8;
/// Attempts of one batch before giving up (each after the answer's `Retry-After`).
const MAX_ATTEMPTS: u32 = 30;

/// Where to send: `url`, else `http://<ingest.listen>`; the first key of `ingest.write_keys_env`.
pub async fn produce(
    config: Config,
    spec: WorkloadSpec,
    rate: Option<u64>,
    url: Option<String>,
) -> anyhow::Result<()> {
    let base = match url {
        Some(u) => u,
        None => format!(
            "http://{}",
            config
                .ingest
                .listen
                .ok_or_else(|| anyhow!("--via http needs --url or ingest.listen"))?
        ),
    };
    let endpoint = format!("{}/v1/batch", base.trim_end_matches('/'));
    let var = &config.ingest.write_keys_env;
    let key = std::env::var(var)
        .ok()
        .and_then(|v| {
            v.split(',')
                .map(str::trim)
                .find(|k| !k.is_empty())
                .map(str::to_string)
        })
        .ok_or_else(|| anyhow!("--via http needs a write key in ${var}"))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut skipped = 0u64;
    let mut batches = Vec::new();
    let mut current: Vec<&[u8]> = Vec::new();
    let messages: Vec<_> = Workload::new(spec).collect();
    for m in &messages {
        let carried = m.payload.len() <= MAX_MESSAGE_BYTES
            && matches!(
                serde_json::from_slice::<serde_json::Value>(&m.payload),
                Ok(serde_json::Value::Object(_))
            );
        if !carried {
            skipped += 1;
            continue;
        }
        current.push(&m.payload);
        if current.len() == BATCH {
            batches.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        batches.push(current);
    }
    let started = Instant::now();
    let total = messages.len() as u64 - skipped;
    let mut sent = 0u64;
    let mut pending = futures::stream::iter(batches.into_iter().enumerate())
        .map(|(i, batch)| {
            let client = client.clone();
            let (endpoint, key) = (endpoint.clone(), key.clone());
            async move {
                if let Some(r) = rate {
                    let due = Duration::from_secs_f64((i * BATCH) as f64 / r.max(1) as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                let n = batch.len() as u64;
                let mut body = b"{\"batch\":[".to_vec();
                for (j, p) in batch.iter().enumerate() {
                    if j > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(p);
                }
                body.extend_from_slice(b"]}");
                send(&client, &endpoint, &key, body).await.map(|()| n)
            }
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(r) = pending.next().await {
        sent += r?;
    }
    eprintln!(
        "produced {sent} of {total} messages through {endpoint} in {:.2} s ({skipped} skipped: not carried by the Tracking API)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn send(client: &reqwest::Client, url: &str, key: &str, body: Vec<u8>) -> anyhow::Result<()> {
    for _ in 0..MAX_ATTEMPTS {
        let answer = client
            .post(url)
            .basic_auth(key, Some(""))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let wait = match answer {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if r.status() == 429 || r.status() == 503 => r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1),
            Ok(r) => {
                let code = r.status();
                let text = r.text().await.unwrap_or_default();
                bail!("the ingest refused a batch: {code} {text}");
            }
            Err(e) => {
                tracing::warn!(error = %e, "sending a batch failed; sending it again");
                1
            }
        };
        tokio::time::sleep(Duration::from_secs(wait.min(30))).await;
    }
    Err(anyhow!(
        "a batch was not accepted after {MAX_ATTEMPTS} attempts"
    ))
    .context(url.to_string())
}
