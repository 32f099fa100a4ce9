//! The durable retry schedule in Redis (REFERENCE.md §5), spread over [`SHARDS`] parts so that
//! no key is hot and, on a Redis Cluster, every script works inside one hash slot. A message
//! belongs to part `xxh3(id) mod 16`; part `n` is five keys tagged `{r<n>}`:
//!
//! - `<prefix>retry:{r<n>}:due`: a sorted set, message id → due time (ms). The truth.
//! - `<prefix>retry:{r<n>}:entry`: a hash, message id → attempt number.
//! - `<prefix>retry:{r<n>}:owner`: a hash, message id → the token of the instance holding its
//!   lease (random per process), `<token>!` once it marked the send started: only the holder
//!   extends or completes a lease, and a claim of a lease marked started reports it lapsed
//!   (its send is in doubt). A scheduled entry has no owner.
//! - `<prefix>retry:{r<n>}:live`: a hash, holder token → the time (ms) until which that
//!   process is alive (written every few seconds by each process): a lease marked started
//!   whose holder is still alive is not claimed by another process, even once it ran out.
//! - `<prefix>retry:{r<n>}:mark`: a marker only a loss of the part's data removes (a Redis
//!   restarted without persistence, a flush, a failover to a replica that had not caught up):
//!   finding it missing makes the reconciler rebuild the schedule from `messages` (G10).
//!
//! `<prefix>retry:wake` (in the dedicated `redis.retry_db` on a single server): one timer key
//! whose expiry wakes the retry actors of every instance early. One key, not one per message:
//! expiry events get later the more TTL keys share a database (measured: a median of ~0.1 s
//! alone, ~24 s next to 10k other TTL keys; keys in other databases did not slow them), and
//! they are fire-and-forget (a disconnected subscriber misses them), so the sweeper stays the
//! safety net — on a cluster (database 0 only) the sweeper alone.
//!
//! Claims are Lua scripts (atomic on the server), so with several instances each due entry is
//! leased to exactly one of them.

use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use futures::{FutureExt, StreamExt};
use redis::Script;

use crate::domain::keys::owner_shard;
use crate::ports::{BoxFut, RetryEntry, RetrySchedule, StoreError};

use super::connection::{transient, url_with_db, RedisConn, RedisTarget};

/// Parts of the schedule.
pub const SHARDS: usize = 16;

// KEYS of every script: due (sorted set), entry (hash), owner (hash).

/// Leases due entries to ARGV[4]: re-scores each to `now + lease` and returns id, attempt,
/// due, and 1 when its holder had marked it sending (`<token>!`) and let the lease run out.
/// A marked entry whose holder is still alive (KEYS[4], token → alive-until) is another
/// process's send in progress: it is only re-scored, not claimed. One marked by the claimer
/// itself (its own lease ran out in a stall) keeps its mark.
const CLAIM: &str = r#"
local now = tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
local out = {}
for i = 1, #ids, 2 do
  local id = ids[i]
  local attempt = redis.call('HGET', KEYS[2], id)
  if attempt then
    local owner = redis.call('HGET', KEYS[3], id)
    local marked = owner and string.sub(owner, -1) == '!'
    local holder = marked and string.sub(owner, 1, -2) or nil
    local alive = holder and tonumber(redis.call('HGET', KEYS[4], holder) or '0') or 0
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    if not (marked and holder ~= ARGV[4] and alive > now) then
      if not (marked and holder == ARGV[4]) then
        redis.call('HSET', KEYS[3], id, ARGV[4])
      end
      table.insert(out, id)
      table.insert(out, attempt)
      table.insert(out, ids[i + 1])
      table.insert(out, marked and '1' or '0')
    end
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
return out
"#;

/// Records that holder ARGV[1] is alive until ARGV[2] (KEYS[1]: the part's liveness hash) and
/// forgets holders whose liveness ran out before ARGV[3] (processes that stopped).
const HEARTBEAT: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) < tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return 1
"#;

/// Removes the entry ARGV[1] only if it still is attempt ARGV[2] and ARGV[3] holds it (an
/// entry written before owners were recorded has none: anyone settles it).
const COMPLETE: &str = r#"
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  local owner = redis.call('HGET', KEYS[3], ARGV[1])
  if owner and owner ~= ARGV[3] and owner ~= ARGV[3] .. '!' then
    return 0
  end
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  return 1
end
return 0
"#;

/// Moves leases held by ARGV[2] to ARGV[1], each (ARGV[2k+1], ARGV[2k+2] = id, stored
/// attempt) only while it is still that attempt, never earlier than it is. Returns the ids
/// that are not (any more) this holder's attempt.
const EXTEND: &str = r#"
local lost = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local owner = redis.call('HGET', KEYS[3], id)
  if redis.call('HGET', KEYS[2], id) == ARGV[i + 1] and (not owner or owner == ARGV[2] or owner == ARGV[2] .. '!') then
    redis.call('ZADD', KEYS[1], 'XX', 'GT', tonumber(ARGV[1]), id)
  else
    table.insert(lost, id)
  end
end
return lost
"#;

/// Marks leases of ARGV[1] as sending (owner `<token>!`), each (ARGV[2k], ARGV[2k+1] = id,
/// stored attempt) only while it is still that attempt and this holder's. Returns the ids
/// that are not.
const MARK_SENDING: &str = r#"
local lost = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local owner = redis.call('HGET', KEYS[3], id)
  if redis.call('HGET', KEYS[2], id) == ARGV[i + 1] and (owner == ARGV[1] or owner == ARGV[1] .. '!') then
    redis.call('HSET', KEYS[3], id, ARGV[1] .. '!')
  else
    table.insert(lost, id)
  end
end
return lost
"#;

/// Creates entries (ARGV[2k], ARGV[2k+1], ARGV[2k+2] = id, stored attempt, due) held by
/// ARGV[1] (or by nobody when it is empty: only due), each only if its message has none.
/// Returns 1 (created) or 0 for each.
const HOLD: &str = r#"
local out = {}
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  if redis.call('HSETNX', KEYS[2], id, ARGV[i + 1]) == 1 then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[i + 2]), id)
    if ARGV[1] ~= '' then
      redis.call('HSET', KEYS[3], id, ARGV[1])
    end
    table.insert(out, 1)
  else
    table.insert(out, 0)
  end
end
return out
"#;

/// Arms the wake-up timer unless it already fires sooner.
const ARM: &str = r#"
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or ttl > tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"#;

/// The keys of one part of the schedule.
struct Part {
    due: String,
    entry: String,
    owner: String,
    mark: String,
    live: String,
}

#[derive(Clone)]
pub struct RedisRetrySchedule {
    conn: RedisConn,
    /// The connection to `redis.retry_db` (the cluster connection on a cluster).
    timer_conn: RedisConn,
    parts: Arc<Vec<Part>>,
    wake_key: Arc<str>,
    /// This process's lease-holder token.
    owner: Arc<str>,
    claim: Arc<Script>,
    complete: Arc<Script>,
    extend: Arc<Script>,
    hold: Arc<Script>,
    mark_sending: Arc<Script>,
    heartbeat: Arc<Script>,
    arm: Arc<Script>,
    /// Where the next claim starts (so no part waits behind the others).
    next_part: Arc<std::sync::atomic::AtomicUsize>,
}

impl RedisRetrySchedule {
    pub async fn connect(target: &RedisTarget, prefix: &str) -> Result<Self, StoreError> {
        let conn = RedisConn::connect(target, Duration::from_secs(5)).await?;
        let timer_conn = match target {
            RedisTarget::Single { url, retry_db } => RedisConn::Single(
                super::connection::manager(url_with_db(url, *retry_db)?, Duration::from_secs(5))
                    .await?,
            ),
            RedisTarget::Cluster { .. } => conn.clone(),
        };
        let parts = (0..SHARDS)
            .map(|n| Part {
                due: format!("{prefix}retry:{{r{n}}}:due"),
                entry: format!("{prefix}retry:{{r{n}}}:entry"),
                owner: format!("{prefix}retry:{{r{n}}}:owner"),
                mark: format!("{prefix}retry:{{r{n}}}:mark"),
                live: format!("{prefix}retry:{{r{n}}}:live"),
            })
            .collect();
        Ok(RedisRetrySchedule {
            conn,
            timer_conn,
            parts: Arc::new(parts),
            wake_key: format!("{prefix}retry:wake").into(),
            owner: format!("{:016x}", rand::random::<u64>()).into(),
            claim: Arc::new(Script::new(CLAIM)),
            complete: Arc::new(Script::new(COMPLETE)),
            extend: Arc::new(Script::new(EXTEND)),
            hold: Arc::new(Script::new(HOLD)),
            mark_sending: Arc::new(Script::new(MARK_SENDING)),
            heartbeat: Arc::new(Script::new(HEARTBEAT)),
            arm: Arc::new(Script::new(ARM)),
            next_part: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    fn part(&self, message_id: &str) -> &Part {
        &self.parts[owner_shard(message_id, SHARDS)]
    }

    /// Groups entries by their part, keeping their order inside each (and their index).
    fn by_part<'a>(&self, entries: &'a [RetryEntry]) -> Vec<(usize, Vec<(usize, &'a RetryEntry)>)> {
        let mut groups: Vec<Vec<(usize, &RetryEntry)>> = (0..SHARDS).map(|_| Vec::new()).collect();
        for (i, e) in entries.iter().enumerate() {
            groups[owner_shard(&e.message_id, SHARDS)].push((i, e));
        }
        groups
            .into_iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .collect()
    }

    /// Writes the entry, leased to this instance or to nobody.
    fn put(&self, entry: RetryEntry, leased: bool) -> BoxFut<Result<(), StoreError>> {
        let this = self.clone();
        async move {
            let mut conn = this.conn.clone();
            let part = this.part(&entry.message_id);
            let mut pipe = redis::pipe();
            pipe.atomic()
                .hset(&part.entry, &entry.message_id, entry.stored_attempt())
                .ignore()
                .zadd(&part.due, &entry.message_id, entry.due_ms)
                .ignore();
            if leased {
                pipe.hset(&part.owner, &entry.message_id, &*this.owner);
            } else {
                pipe.hdel(&part.owner, &entry.message_id);
            }
            pipe.ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(transient)?;
            let now = crate::ports::Clock::now_ms(&crate::ports::SystemClock);
            // Waking early is an optimisation: the sweeper fires the entry anyway.
            if let Err(e) = this.arm_wake(entry.due_ms - now).await {
                tracing::debug!(error = %e, "could not arm the retry wake-up key");
            }
            Ok(())
        }
        .boxed()
    }

    /// Arms the shared wake-up key to expire in `delay_ms`, unless it expires sooner already.
    pub async fn arm_wake(&self, delay_ms: i64) -> Result<(), StoreError> {
        let mut conn = self.timer_conn.clone();
        self.arm
            .key(&*self.wake_key)
            .arg(delay_ms.max(1))
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(transient)
    }

    /// Leases up to `limit` due entries of one part.
    async fn claim_part(
        &self,
        part: &Part,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<RetryEntry>, StoreError> {
        let mut conn = self.conn.clone();
        let flat: Vec<String> = self
            .claim
            .key(&part.due)
            .key(&part.entry)
            .key(&part.owner)
            .key(&part.live)
            .arg(now_ms)
            .arg(lease_ms)
            .arg(limit)
            .arg(&*self.owner)
            .invoke_async(&mut conn)
            .await
            .map_err(transient)?;
        let mut out = Vec::with_capacity(flat.len() / 4);
        for chunk in flat.chunks_exact(4) {
            let (Some((attempt, resend)), Ok(due)) = (
                RetryEntry::parse_stored_attempt(&chunk[1]),
                chunk[2].parse::<f64>(),
            ) else {
                tracing::error!(id = chunk[0], "unreadable retry entry; left for its lease");
                continue;
            };
            out.push(RetryEntry {
                message_id: chunk[0].clone(),
                attempt,
                resend,
                due_ms: due as i64,
                lapsed: chunk[3] == "1",
            });
        }
        Ok(out)
    }

    /// Runs `script` once per part over that part's entries (id and stored attempt each, after
    /// `lead` arguments), and gathers the ids it answers.
    async fn per_part_ids(
        &self,
        script: &Script,
        entries: &[RetryEntry],
        lead: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let calls = self.by_part(entries).into_iter().map(|(n, group)| {
            let mut conn = self.conn.clone();
            let part = &self.parts[n];
            let mut invocation = script.key(&part.due);
            invocation.key(&part.entry).key(&part.owner);
            for a in lead {
                invocation.arg(a);
            }
            for (_, e) in &group {
                invocation.arg(&e.message_id).arg(e.stored_attempt());
            }
            async move {
                invocation
                    .invoke_async::<Vec<String>>(&mut conn)
                    .await
                    .map_err(transient)
            }
        });
        Ok(try_join_all(calls).await?.into_iter().flatten().collect())
    }
}

impl RetrySchedule for RedisRetrySchedule {
    fn schedule(&self, entry: RetryEntry) -> BoxFut<Result<(), StoreError>> {
        self.put(entry, false)
    }

    fn hand_off(&self, entry: RetryEntry) -> BoxFut<Result<(), StoreError>> {
        self.put(entry, true)
    }

    fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> BoxFut<Result<Vec<RetryEntry>, StoreError>> {
        let this = self.clone();
        async move {
            // Part by part from a rotating start, until `limit` are claimed: fewer than
            // `limit` means nothing more is due anywhere.
            let start = this
                .next_part
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut out = Vec::new();
            for k in 0..SHARDS {
                if out.len() >= limit {
                    break;
                }
                let part = &this.parts[(start + k) % SHARDS];
                let claimed = this
                    .claim_part(part, now_ms, lease_ms, limit - out.len())
                    .await?;
                out.extend(claimed);
            }
            // Re-arm the wake-up for what is due next (the key may have been armed for an
            // entry just claimed).
            if let Ok(Some(next)) = this.next_due().await {
                if let Err(e) = this.arm_wake(next - now_ms).await {
                    tracing::debug!(error = %e, "could not arm the retry wake-up key");
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn lost_entries(&self) -> BoxFut<Result<bool, StoreError>> {
        let this = self.clone();
        async move {
            let cmds = this
                .parts
                .iter()
                .map(|p| {
                    let mut c = redis::cmd("SET");
                    c.arg(&p.mark).arg(1).arg("NX");
                    c
                })
                .collect();
            let answers = this.conn.query_many(cmds).await?;
            // `OK` where the marker was missing (set now), nil where it was there.
            Ok(answers.iter().any(|a| !matches!(a, redis::Value::Nil)))
        }
        .boxed()
    }

    fn complete(&self, entry: RetryEntry) -> BoxFut<Result<(), StoreError>> {
        let this = self.clone();
        async move {
            let mut conn = this.conn.clone();
            let part = this.part(&entry.message_id);
            this.complete
                .key(&part.due)
                .key(&part.entry)
                .key(&part.owner)
                .arg(&entry.message_id)
                .arg(entry.stored_attempt())
                .arg(&*this.owner)
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(transient)
        }
        .boxed()
    }

    fn hold(
        &self,
        entries: Vec<RetryEntry>,
        leased: bool,
    ) -> BoxFut<Result<Vec<bool>, StoreError>> {
        let this = self.clone();
        async move {
            let mut out = vec![false; entries.len()];
            let calls = this.by_part(&entries).into_iter().map(|(n, group)| {
                let mut conn = this.conn.clone();
                let part = &this.parts[n];
                let mut invocation = this.hold.key(&part.due);
                invocation.key(&part.entry).key(&part.owner).arg(if leased {
                    &*this.owner
                } else {
                    ""
                });
                for (_, e) in &group {
                    invocation
                        .arg(&e.message_id)
                        .arg(e.stored_attempt())
                        .arg(e.due_ms);
                }
                let indexes: Vec<usize> = group.iter().map(|(i, _)| *i).collect();
                async move {
                    let created: Vec<i64> = invocation
                        .invoke_async(&mut conn)
                        .await
                        .map_err(transient)?;
                    Ok::<_, StoreError>(indexes.into_iter().zip(created).collect::<Vec<_>>())
                }
            });
            for (i, created) in try_join_all(calls).await?.into_iter().flatten() {
                out[i] = created == 1;
            }
            Ok(out)
        }
        .boxed()
    }

    fn extend(
        &self,
        entries: Vec<RetryEntry>,
        until_ms: i64,
    ) -> BoxFut<Result<Vec<String>, StoreError>> {
        let this = self.clone();
        async move {
            let lead = [until_ms.to_string(), this.owner.to_string()];
            this.per_part_ids(&this.extend, &entries, &lead).await
        }
        .boxed()
    }

    fn heartbeat(&self, now_ms: i64, alive_until_ms: i64) -> BoxFut<Result<(), StoreError>> {
        let this = self.clone();
        async move {
            let calls = this.parts.iter().map(|part| {
                let mut conn = this.conn.clone();
                let mut invocation = this.heartbeat.key(&part.live);
                invocation.arg(&*this.owner).arg(alive_until_ms).arg(now_ms);
                async move {
                    invocation
                        .invoke_async::<i64>(&mut conn)
                        .await
                        .map_err(transient)
                }
            });
            try_join_all(calls).await.map(|_| ())
        }
        .boxed()
    }

    fn mark_sending(&self, entries: Vec<RetryEntry>) -> BoxFut<Result<Vec<String>, StoreError>> {
        let this = self.clone();
        async move {
            let lead = [this.owner.to_string()];
            this.per_part_ids(&this.mark_sending, &entries, &lead).await
        }
        .boxed()
    }

    fn cancel(&self, message_id: String) -> BoxFut<Result<(), StoreError>> {
        let this = self.clone();
        async move {
            let mut conn = this.conn.clone();
            let part = this.part(&message_id);
            redis::pipe()
                .atomic()
                .zrem(&part.due, &message_id)
                .ignore()
                .hdel(&part.entry, &message_id)
                .ignore()
                .hdel(&part.owner, &message_id)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(transient)
        }
        .boxed()
    }

    fn entry(&self, message_id: String) -> BoxFut<Result<Option<RetryEntry>, StoreError>> {
        let this = self.clone();
        async move {
            let mut conn = this.conn.clone();
            let part = this.part(&message_id);
            let (attempt, due): (Option<String>, Option<f64>) = redis::pipe()
                .hget(&part.entry, &message_id)
                .zscore(&part.due, &message_id)
                .query_async(&mut conn)
                .await
                .map_err(transient)?;
            let attempt = attempt
                .as_deref()
                .and_then(RetryEntry::parse_stored_attempt);
            Ok(attempt.zip(due).map(|((attempt, resend), due)| RetryEntry {
                message_id,
                attempt,
                resend,
                due_ms: due as i64,
                lapsed: false,
            }))
        }
        .boxed()
    }

    fn pending(&self) -> BoxFut<Result<usize, StoreError>> {
        let this = self.clone();
        async move {
            let cmds = this
                .parts
                .iter()
                .map(|p| {
                    let mut c = redis::cmd("ZCARD");
                    c.arg(&p.due);
                    c
                })
                .collect();
            let counts = this.conn.query_many(cmds).await?;
            counts
                .iter()
                .map(|c| match c {
                    redis::Value::Int(n) => Ok(*n as usize),
                    _ => Err(StoreError::Transient(
                        "redis: unexpected reply to ZCARD".into(),
                    )),
                })
                .sum()
        }
        .boxed()
    }

    fn next_due(&self) -> BoxFut<Result<Option<i64>, StoreError>> {
        let this = self.clone();
        async move {
            let calls = this.parts.iter().map(|p| {
                let mut conn = this.conn.clone();
                async move {
                    redis::cmd("ZRANGE")
                        .arg(&p.due)
                        .arg(0)
                        .arg(0)
                        .arg("WITHSCORES")
                        .query_async::<Vec<(String, f64)>>(&mut conn)
                        .await
                        .map_err(transient)
                }
            });
            let firsts = try_join_all(calls).await?;
            Ok(firsts
                .iter()
                .filter_map(|f| f.first().map(|(_, due)| *due as i64))
                .min())
        }
        .boxed()
    }
}

/// Listens for the wake-up key's expiry on `retry_db` and calls `wake` for each, for as
/// long as the process runs; reconnects with backoff (events missed meanwhile are covered
/// by the sweeper). `notify-keyspace-events` is a server-wide setting other applications of a
/// shared Redis depend on: Herald sets it (to `Ex`) only when `configure` is
/// (`redis.configure_notifications`); otherwise it only says when expiry events are off.
/// Logs, once per connection, when the server's `notify-keyspace-events` does not include key
/// expiry events (`E` or `K` with `x`, or `A`): retries then fire from the sweep alone.
async fn report_notifications(conn: &mut redis::aio::MultiplexedConnection) {
    let got: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(conn)
        .await;
    let Ok(pair) = got else { return };
    let flags = pair.get(1).map(String::as_str).unwrap_or("");
    if !expiry_events_on(flags) {
        tracing::info!(
            notify_keyspace_events = flags,
            "Redis sends no key-expiry events: retries fire from the due-time sweep (retry.sweep_ms); \
             set notify-keyspace-events Ex on the server or redis.configure_notifications = true for early wake-ups"
        );
    }
}

/// Whether `notify-keyspace-events` flags make Redis publish `__keyevent@<db>__:expired`.
pub fn expiry_events_on(flags: &str) -> bool {
    let has = |c: char| flags.contains(c);
    has('E') && (has('x') || has('A'))
}

pub async fn listen_for_wakeups(
    target: RedisTarget,
    prefix: String,
    configure: bool,
    wake: impl Fn(),
) {
    let (url, retry_db) = match target {
        RedisTarget::Single { url, retry_db } => (url, retry_db),
        RedisTarget::Cluster { .. } => {
            // Database 0 only, and the timer key's events would come from whichever primary
            // holds it: retries fire from the due-time sweep.
            tracing::info!("Redis Cluster: retries fire from the due-time sweep (retry.sweep_ms), without key-expiry wake-ups");
            return;
        }
    };
    let wake_key = format!("{prefix}retry:wake");
    let channel = format!("__keyevent@{retry_db}__:expired");
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = async {
            let info = url_with_db(&url, retry_db).map_err(|e| e.to_string())?;
            let client = redis::Client::open(info).map_err(|e| e.to_string())?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            if configure {
                let set: Result<(), _> = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("notify-keyspace-events")
                    .arg("Ex")
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = set {
                    tracing::info!(error = %e, "cannot set notify-keyspace-events (the sweeper still fires retries)");
                }
            } else {
                report_notifications(&mut conn).await;
            }
            let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
            pubsub
                .subscribe(&channel)
                .await
                .map_err(|e| e.to_string())?;
            tracing::debug!(channel, "listening for retry wake-ups");
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                if msg.get_payload::<String>().is_ok_and(|k| k == wake_key) {
                    wake();
                }
            }
            Err::<(), String>("subscription closed".into())
        };
        if let Err(e) = attempt.await {
            tracing::warn!(error = %e, "retry wake-up listener lost Redis; reconnecting");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
