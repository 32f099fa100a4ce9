//! The Redis cache of user states: one key per user, `<prefix>state:{<userId>}` (the user id
//! as the hash tag, so on a cluster each user's entry is one slot's), holding the whole state
//! in the compact binary form of `domain::stored_state` (version, positions, dedup window,
//! profile), expiring `redis.state_ttl_ms` after its last write, and beside it
//! `<prefix>state:{<userId>}:w`, the in-flux mark a flush sets before it writes the user's
//! document and clears with the cache write after it (a mark left by a writer that died in
//! between makes the entry load as a miss; it expires after 10 minutes). MongoDB is the system
//! of record: a miss, an unreadable entry or a cache that cannot answer is read there instead,
//! and an entry older than the document that slipped through (Redis rolled back) is found out
//! by the fenced write.
//!
//! While Redis does not answer, the cache steps aside for a second at a time (loads go to
//! MongoDB, writes are skipped), so a Redis outage slows loads rather than stopping them.
//!
//! Earlier releases kept the state itself in Redis — a hash `<prefix>user:<id>` (`v`, `o`,
//! `s`: the JSON state) beside a sorted set `<prefix>seen:<id>` of dedup fingerprints, or
//! (schema 1) a plain JSON string. [`RedisStateCache::load_legacy`] reads that form for
//! users whose document has no bookkeeping yet, so an upgrade keeps their replay protection.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use redis::{Script, Value};

use crate::domain::stored_state;
use crate::domain::user::UserState;
use crate::ports::{BoxFut, Clock, LoadedState, StateCache, StoreError, SystemClock, UserSnapshot};

use super::connection::{transient, RedisConn, RedisTarget};

/// How long the cache steps aside after Redis failed to answer.
const STEP_ASIDE_MS: i64 = 1_000;
/// How long an in-flux mark outlives a writer that died before clearing it.
const MARK_TTL_MS: u64 = 600_000;
/// Users per legacy-load script call.
const LEGACY_CHUNK: usize = 500;

/// Reads an earlier release's state of each user: `{version, blob|false, [member, score, …]}`.
const LEGACY_LOAD: &str = r#"
local n = #KEYS / 2
local out = {}
for i = 1, n do
  local k = KEYS[i]
  local t = redis.call('TYPE', k).ok
  if t == 'none' then
    out[i] = {'0', false, {}}
  elseif t == 'string' then
    out[i] = {'0', redis.call('GET', k), {}}
  else
    local h = redis.call('HMGET', k, 'v', 's')
    out[i] = {h[1] or '0', h[2], redis.call('ZRANGE', KEYS[n + i], 0, -1, 'WITHSCORES')}
  end
end
return out
"#;

#[derive(Clone)]
pub struct RedisStateCache {
    conn: RedisConn,
    prefix: Arc<str>,
    ttl_ms: u64,
    /// Until when (ms) the cache steps aside after a failure.
    aside_until: Arc<AtomicI64>,
    /// Whether the earlier releases' keys can exist (never on a cluster, which is new).
    legacy: bool,
    legacy_load: Arc<Script>,
}

impl RedisStateCache {
    /// Connects (a single server's connection reconnects by itself with backoff, the cluster
    /// client follows the cluster's topology). Answers wait at most 2 s: a cache that is
    /// slower than that is stepped around.
    pub async fn connect(
        target: &RedisTarget,
        prefix: &str,
        ttl_ms: u64,
    ) -> Result<Self, StoreError> {
        let conn = RedisConn::connect(target, Duration::from_secs(2)).await?;
        Ok(RedisStateCache {
            conn,
            prefix: Arc::from(prefix),
            ttl_ms: ttl_ms.max(1),
            aside_until: Arc::new(AtomicI64::new(0)),
            legacy: !target.is_cluster(),
            legacy_load: Arc::new(Script::new(LEGACY_LOAD)),
        })
    }

    pub fn key(&self, user_id: &str) -> String {
        format!("{}state:{{{user_id}}}", self.prefix)
    }

    /// The user's in-flux mark (same hash slot as its entry).
    pub fn mark_key(&self, user_id: &str) -> String {
        format!("{}state:{{{user_id}}}:w", self.prefix)
    }

    /// PING, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.conn.ping().await
    }

    fn now() -> i64 {
        SystemClock.now_ms()
    }

    fn stepped_aside(&self) -> bool {
        self.aside_until.load(Ordering::Relaxed) > Self::now()
    }

    fn step_aside(&self, e: &StoreError) {
        if !self.stepped_aside() {
            tracing::warn!(error = %e, "the Redis state cache does not answer; reading MongoDB instead for a while");
        }
        self.aside_until
            .store(Self::now() + STEP_ASIDE_MS, Ordering::Relaxed);
    }
}

fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn number_of(v: &Value) -> Option<f64> {
    match v {
        Value::Double(d) => Some(*d),
        Value::Int(i) => Some(*i as f64),
        other => std::str::from_utf8(&bytes_of(other)?).ok()?.parse().ok(),
    }
}

fn array_of(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) => Some(a),
        Value::Set(a) => Some(a),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

/// One user's `{version, blob, [member, score, …]}` from the legacy load script.
fn parse_legacy(v: Value) -> Option<Option<LoadedState>> {
    let mut parts = array_of(v)?.into_iter();
    let _version = parts.next()?;
    let blob = parts.next()?;
    let seen = array_of(parts.next().unwrap_or(Value::Nil))?;
    let mut entries = Vec::with_capacity(seen.len() / 2);
    for pair in seen.chunks(2) {
        let [member, score] = pair else { break };
        let member = bytes_of(member)?;
        let fingerprint = u64::from_be_bytes(member.as_slice().try_into().ok()?);
        entries.push((fingerprint, number_of(score)? as i64));
    }
    // A claim whose writer died before writing its state left no state: nothing to use.
    let Some(blob) = bytes_of(&blob) else {
        return Some(None);
    };
    Some(Some(match stored_state::decode_legacy(&blob, entries) {
        Ok(state) => LoadedState::Found(state),
        Err(e) => LoadedState::Unreadable(e.0),
    }))
}

impl StateCache for RedisStateCache {
    fn load(&self, users: Vec<Arc<str>>) -> BoxFut<Result<Vec<Option<UserState>>, StoreError>> {
        let me = self.clone();
        async move {
            if me.stepped_aside() {
                return Ok(vec![None; users.len()]);
            }
            let mut cmds = Vec::with_capacity(2 * users.len());
            for u in &users {
                let mut get = redis::cmd("GET");
                get.arg(me.key(u));
                let mut marked = redis::cmd("EXISTS");
                marked.arg(me.mark_key(u));
                cmds.push(get);
                cmds.push(marked);
            }
            let values = match me.conn.query_many(cmds).await {
                Ok(v) => v,
                Err(e) => {
                    me.step_aside(&e);
                    return Err(e);
                }
            };
            Ok(users
                .iter()
                .zip(values.chunks(2))
                .map(|(user, pair)| {
                    if matches!(pair.get(1), Some(Value::Int(n)) if *n > 0) {
                        // Its writer may have written the document and not this entry.
                        return None;
                    }
                    let bytes = bytes_of(pair.first()?)?;
                    match stored_state::decode_cached(&bytes) {
                        Ok(state) => Some(state),
                        Err(e) => {
                            // MongoDB holds the truth: an entry this release cannot read is
                            // a miss (and is overwritten by the user's next write).
                            tracing::debug!(user_id = %user, error = %e, "unreadable cache entry; reading MongoDB");
                            None
                        }
                    }
                })
                .collect())
        }
        .boxed()
    }

    fn begin_writes(&self, users: Vec<Arc<str>>) -> BoxFut<Result<(), StoreError>> {
        let me = self.clone();
        async move {
            if me.stepped_aside() || users.is_empty() {
                return Ok(());
            }
            let cmds = users
                .iter()
                .map(|u| {
                    let mut c = redis::cmd("SET");
                    c.arg(me.mark_key(u)).arg(1).arg("PX").arg(MARK_TTL_MS);
                    c
                })
                .collect();
            match me.conn.query_many(cmds).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    me.step_aside(&e);
                    Err(e)
                }
            }
        }
        .boxed()
    }

    fn save(&self, users: Vec<Arc<UserSnapshot>>) -> BoxFut<Result<(), StoreError>> {
        let me = self.clone();
        async move {
            if me.stepped_aside() || users.is_empty() {
                return Ok(());
            }
            let mut cmds = Vec::with_capacity(2 * users.len());
            for u in &users {
                let blob = stored_state::encode_cached(
                    u.version,
                    &u.profile,
                    &u.positions,
                    &u.seen,
                    u.identity.as_deref(),
                );
                let mut set = redis::cmd("SET");
                set.arg(me.key(&u.user_id))
                    .arg(blob)
                    .arg("PX")
                    .arg(me.ttl_ms);
                let mut unmark = redis::cmd("DEL");
                unmark.arg(me.mark_key(&u.user_id));
                cmds.push(set);
                cmds.push(unmark);
            }
            match me.conn.query_many(cmds).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    me.step_aside(&e);
                    Err(e)
                }
            }
        }
        .boxed()
    }

    fn load_legacy(
        &self,
        users: Vec<Arc<str>>,
    ) -> BoxFut<Result<Vec<Option<LoadedState>>, StoreError>> {
        let me = self.clone();
        async move {
            if !me.legacy {
                return Ok(vec![None; users.len()]);
            }
            let mut out = Vec::with_capacity(users.len());
            let mut conn = me.conn.clone();
            for chunk in users.chunks(LEGACY_CHUNK) {
                let mut inv = me.legacy_load.prepare_invoke();
                for u in chunk {
                    inv.key(format!("{}user:{u}", me.prefix));
                }
                for u in chunk {
                    inv.key(format!("{}seen:{u}", me.prefix));
                }
                let reply: Value = inv.invoke_async(&mut conn).await.map_err(transient)?;
                let rows = array_of(reply)
                    .filter(|r| r.len() == chunk.len())
                    .ok_or_else(|| {
                        StoreError::Transient("redis: unexpected reply to the legacy load".into())
                    })?;
                for row in rows {
                    out.push(parse_legacy(row).unwrap_or_else(|| {
                        Some(LoadedState::Unreadable(
                            "stored state has an unexpected shape".into(),
                        ))
                    }));
                }
            }
            Ok(out)
        }
        .boxed()
    }
}
