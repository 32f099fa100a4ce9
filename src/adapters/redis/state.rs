//! Redis user-state store. Per user, a hash `<prefix>user:<id>` — `v` (the fencing version),
//! `o` (the owner that claimed it), `s` (the state blob, `domain::stored_state`) — and a sorted
//! set `<prefix>seen:<id>` of dedup fingerprints (8 bytes, big-endian) scored by when they were
//! seen, appended per write and trimmed by age and count, never rewritten whole.
//!
//! Claims and writes are Lua scripts over a chunk of users, so each is one round trip and
//! atomic per user. A schema-1 state (a plain string under the same key, before fencing)
//! loads as version 0 and is converted to the hash form by its first claim.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use crate::domain::stored_state;
use crate::ports::{BoxFut, LoadedState, SeenPolicy, StateStore, StoreError, UserSnapshot};

use super::connection::transient;

/// Users per script call (keeps each round trip well under the response timeout).
const CHUNK: usize = 500;

const LOAD: &str = r#"
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

const CLAIM: &str = r#"
local owner = ARGV[1]
local out = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local want = ARGV[i + 1]
  local t = redis.call('TYPE', k).ok
  local cur, o = 0, false
  if t == 'string' then
    local old = redis.call('GET', k)
    redis.call('DEL', k)
    redis.call('HSET', k, 's', old)
  elseif t == 'hash' then
    local h = redis.call('HMGET', k, 'v', 'o')
    cur = tonumber(h[1] or '0')
    o = h[2]
  end
  if cur == tonumber(want) - 1 then
    redis.call('HSET', k, 'v', want, 'o', owner)
    out[i] = 1
  elseif cur == tonumber(want) and o == owner then
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"#;

const SAVE: &str = r#"
local owner = ARGV[1]
local cutoff = ARGV[2]
local max = tonumber(ARGV[3])
local a = 4
local out = {}
for i = 1, #KEYS / 2 do
  local k = KEYS[2 * i - 1]
  local z = KEYS[2 * i]
  local v = ARGV[a]
  local blob = ARGV[a + 1]
  local m = tonumber(ARGV[a + 2])
  a = a + 3
  local ok = false
  if redis.call('TYPE', k).ok == 'hash' then
    local h = redis.call('HMGET', k, 'v', 'o')
    ok = h[1] == v and h[2] == owner
  end
  if ok then
    redis.call('HSET', k, 's', blob)
    for j = 0, m - 1 do
      redis.call('ZADD', z, ARGV[a + 2 * j + 1], ARGV[a + 2 * j])
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. cutoff)
    local c = redis.call('ZCARD', z)
    if c > max then
      redis.call('ZREMRANGEBYRANK', z, 0, c - max - 1)
    end
    out[i] = 1
  else
    out[i] = 0
  end
  a = a + 2 * m
end
return out
"#;

#[derive(Clone)]
pub struct RedisStateStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
}

struct Scripts {
    load: Script,
    claim: Script,
    save: Script,
}

fn unexpected(what: &str) -> StoreError {
    StoreError::Transient(format!("redis: unexpected reply to {what}"))
}

impl RedisStateStore {
    /// Connects (the manager reconnects by itself with backoff after a connection loss).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::BadData {
            key: "redis.url".into(),
            detail: e.to_string(),
        })?;
        let config = ConnectionManagerConfig::new()
            // The 500 ms default is too short for a 500-user script on a busy machine.
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(transient)?;
        Ok(RedisStateStore {
            conn,
            prefix: Arc::from(prefix),
            scripts: Arc::new(Scripts {
                load: Script::new(LOAD),
                claim: Script::new(CLAIM),
                save: Script::new(SAVE),
            }),
        })
    }

    pub fn key(&self, user_id: &str) -> String {
        format!("{}user:{user_id}", self.prefix)
    }

    pub fn seen_key(&self, user_id: &str) -> String {
        format!("{}seen:{user_id}", self.prefix)
    }

    /// PING, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(transient)
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

/// One user's `{version, blob, [member, score, …]}` from the load script.
fn parse_loaded(v: Value) -> Option<LoadedState> {
    let mut parts = array_of(v)?.into_iter();
    let version: u64 = std::str::from_utf8(&bytes_of(&parts.next()?)?)
        .ok()?
        .parse()
        .ok()?;
    let blob = parts.next()?;
    let seen = array_of(parts.next().unwrap_or(Value::Nil))?;
    let mut entries = Vec::with_capacity(seen.len() / 2);
    for pair in seen.chunks(2) {
        let [member, score] = pair else { break };
        let member = bytes_of(member)?;
        let fingerprint = u64::from_be_bytes(member.as_slice().try_into().ok()?);
        entries.push((fingerprint, number_of(score)? as i64));
    }
    let Some(blob) = bytes_of(&blob) else {
        return Some(match stored_state::claimed_unwritten(version, entries) {
            Some(state) => LoadedState::Found(state),
            None => LoadedState::Absent,
        });
    };
    Some(match stored_state::decode(&blob, version, entries) {
        Ok(state) => LoadedState::Found(state),
        Err(e) => LoadedState::Unreadable(e.0),
    })
}

fn flags(v: Value, what: &str, n: usize) -> Result<Vec<bool>, StoreError> {
    let a = array_of(v).ok_or_else(|| unexpected(what))?;
    if a.len() != n {
        return Err(unexpected(what));
    }
    Ok(a.iter().map(|x| matches!(x, Value::Int(1))).collect())
}

impl StateStore for RedisStateStore {
    fn load(&self, users: Vec<Arc<str>>) -> BoxFut<Result<Vec<LoadedState>, StoreError>> {
        let mut conn = self.conn.clone();
        let me = self.clone();
        async move {
            let mut out = Vec::with_capacity(users.len());
            for chunk in users.chunks(CHUNK) {
                let mut inv = me.scripts.load.prepare_invoke();
                for u in chunk {
                    inv.key(me.key(u));
                }
                for u in chunk {
                    inv.key(me.seen_key(u));
                }
                let reply: Value = inv.invoke_async(&mut conn).await.map_err(transient)?;
                let rows = array_of(reply).ok_or_else(|| unexpected("load"))?;
                if rows.len() != chunk.len() {
                    return Err(unexpected("load"));
                }
                for row in rows {
                    out.push(parse_loaded(row).unwrap_or_else(|| {
                        LoadedState::Unreadable("stored state has an unexpected shape".into())
                    }));
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn claim(
        &self,
        owner: u64,
        claims: Vec<(Arc<str>, u64)>,
    ) -> BoxFut<Result<Vec<bool>, StoreError>> {
        let mut conn = self.conn.clone();
        let me = self.clone();
        async move {
            let mut out = Vec::with_capacity(claims.len());
            for chunk in claims.chunks(CHUNK) {
                let mut inv = me.scripts.claim.prepare_invoke();
                inv.arg(owner.to_string());
                for (u, version) in chunk {
                    inv.key(me.key(u));
                    inv.arg(version.to_string());
                }
                let reply: Value = inv.invoke_async(&mut conn).await.map_err(transient)?;
                out.extend(flags(reply, "claim", chunk.len())?);
            }
            Ok(out)
        }
        .boxed()
    }

    fn save(
        &self,
        owner: u64,
        users: Vec<Arc<UserSnapshot>>,
        seen: SeenPolicy,
    ) -> BoxFut<Result<Vec<bool>, StoreError>> {
        let mut conn = self.conn.clone();
        let me = self.clone();
        async move {
            let mut out = Vec::with_capacity(users.len());
            for chunk in users.chunks(CHUNK) {
                let mut inv = me.scripts.save.prepare_invoke();
                inv.arg(owner.to_string())
                    .arg(seen.expire_before_ms)
                    .arg(seen.max_ids);
                for u in chunk {
                    inv.key(me.key(&u.user_id));
                    inv.key(me.seen_key(&u.user_id));
                    inv.arg(u.version.to_string())
                        .arg(stored_state::encode(&u.profile, &u.positions))
                        .arg(u.seen_added.len());
                    for (fingerprint, at) in &u.seen_added {
                        inv.arg(&fingerprint.to_be_bytes()[..]).arg(*at);
                    }
                }
                let reply: Value = inv.invoke_async(&mut conn).await.map_err(transient)?;
                out.extend(flags(reply, "save", chunk.len())?);
            }
            Ok(out)
        }
        .boxed()
    }
}
