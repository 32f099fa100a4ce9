//! Segment's HTTP Tracking API as Herald takes it (REFERENCE.md §11): one request body into
//! the messages to publish, each completed the way Segment completes them (`receivedAt`, a
//! `messageId`, `timestamp`, the batch's `context`) and checked by the input rules of §2.
//! Pure: the clock reading is passed in; a `messageId` Herald fills in is derived from the
//! message itself, so a client that sends a request again changes nothing (G2).

use serde_json::{Map, Value};

use super::event::{decode, parse_timestamp, Event, Rejection};

/// Most bytes of one message (its JSON as received).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// Most bytes of one request body (after gzip is undone).
pub const MAX_REQUEST_BYTES: usize = 500 * 1024;
/// Most messages of one batch.
pub const MAX_BATCH: usize = 2_500;

/// What a request was posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/v1/batch`: `{"batch": [...], "context", "sentAt", "writeKey", ...}`.
    Batch,
    /// `/v1/<type>`: one message of that type.
    Single(&'static str),
}

impl Route {
    /// The route of a path segment after `/v1/`, if Herald serves it.
    pub fn parse(name: &str) -> Option<Route> {
        Some(match name {
            "batch" | "import" => Route::Batch,
            "identify" => Route::Single("identify"),
            "track" => Route::Single("track"),
            "page" => Route::Single("page"),
            "screen" => Route::Single("screen"),
            "group" => Route::Single("group"),
            "alias" => Route::Single("alias"),
            _ => return None,
        })
    }
}

/// Why a whole request is refused (`400`, nothing published).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the request body is {0} bytes, the limit is {MAX_REQUEST_BYTES}")]
    TooLarge(usize),
    #[error("the request body is not JSON: {0}")]
    NotJson(String),
    #[error("{0}")]
    BadShape(String),
    #[error("the batch holds {0} messages, the limit is {MAX_BATCH}")]
    TooMany(usize),
    #[error("message {index} is {bytes} bytes, the limit is {MAX_MESSAGE_BYTES}")]
    MessageTooLarge { index: usize, bytes: usize },
}

/// One message of a request, completed.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// Its position in the request.
    pub index: usize,
    /// The record key: `userId`, else `anonymousId` (empty when it has neither).
    pub key: String,
    /// The completed message's JSON: what is published (or dead-lettered).
    pub payload: Vec<u8>,
    /// Valid by §2, or why not.
    pub verdict: Result<Event, Rejection>,
}

/// A request body, taken apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `writeKey` of the body, if it carries one.
    pub write_key: Option<String>,
    pub messages: Vec<Prepared>,
}

/// Formats milliseconds since the epoch as RFC 3339 with milliseconds, UTC.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The UUID namespace of the `messageId`s Herald fills in (a v4 UUID fixed once for Herald).
const MESSAGE_ID_NAMESPACE: uuid::Uuid = uuid::uuid!("6f1c2b7e-3d4a-4c8e-9a51-0b7d2e4f8c13");

/// The `messageId` of a message that came without one: a UUID v5 of the write key, the
/// message's place in its request and its canonical JSON as sent (keys sorted, the batch's
/// `sentAt` and `context` included), so the same request sent again gets the same ids and is
/// applied once, and two equal messages of one batch stay two.
pub fn derived_message_id(
    write_key: &str,
    index: usize,
    message: &Value,
    batch_sent_at: Option<&str>,
    batch_context: Option<&Map<String, Value>>,
) -> String {
    let mut name = Vec::with_capacity(256);
    name.extend_from_slice(write_key.as_bytes());
    name.push(0);
    name.extend_from_slice(index.to_string().as_bytes());
    name.push(0);
    canonical_json(message, &mut name);
    name.push(0);
    name.extend_from_slice(batch_sent_at.unwrap_or_default().as_bytes());
    name.push(0);
    if let Some(c) = batch_context {
        canonical_json(&Value::Object(c.clone()), &mut name);
    }
    uuid::Uuid::new_v5(&MESSAGE_ID_NAMESPACE, &name).to_string()
}

/// JSON with every object's keys in sorted order, whatever order they arrived in.
fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                canonical_json(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// Takes a request body apart. `received_at_ms` is when it arrived; `header_key` is the write
/// key of the `Authorization` header, if any (else the body's is used to derive `messageId`s);
/// `max_message_bytes` is `limits.max_message_bytes`.
pub fn prepare(
    route: Route,
    body: &[u8],
    received_at_ms: i64,
    header_key: Option<&str>,
    max_message_bytes: usize,
) -> Result<Request, RequestError> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge(body.len()));
    }
    if route == Route::Batch {
        if let Some(request) =
            super::segment_splice::prepare(body, received_at_ms, max_message_bytes)
        {
            return Ok(request);
        }
    }
    prepare_parsed(route, body, received_at_ms, header_key, max_message_bytes)
}

/// [`prepare`] on the request parsed into a JSON tree: every case.
fn prepare_parsed(
    route: Route,
    body: &[u8],
    received_at_ms: i64,
    header_key: Option<&str>,
    max_message_bytes: usize,
) -> Result<Request, RequestError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| RequestError::NotJson(e.to_string()))?;
    let Value::Object(mut outer) = value else {
        return Err(RequestError::BadShape(
            "the request body must be a JSON object".into(),
        ));
    };
    let write_key = match outer.remove("writeKey") {
        Some(Value::String(k)) => Some(k),
        _ => None,
    };
    let (messages, context, sent_at) = match route {
        Route::Batch => {
            let messages = match outer.remove("batch") {
                Some(Value::Array(items)) => items,
                Some(_) => return Err(RequestError::BadShape("`batch` must be an array".into())),
                None => return Err(RequestError::BadShape("`batch` is required".into())),
            };
            if messages.len() > MAX_BATCH {
                return Err(RequestError::TooMany(messages.len()));
            }
            let context = match outer.remove("context") {
                Some(Value::Object(c)) => Some(c),
                _ => None,
            };
            let sent_at = outer
                .get("sentAt")
                .and_then(Value::as_str)
                .map(str::to_string);
            (messages, context, sent_at)
        }
        Route::Single(kind) => {
            // The path names the type.
            outer.insert("type".into(), Value::String(kind.into()));
            (vec![Value::Object(outer)], None, None)
        }
    };
    for (index, m) in messages.iter().enumerate() {
        let bytes = serde_json::to_vec(m).map_or(0, |b| b.len());
        if bytes > MAX_MESSAGE_BYTES {
            return Err(RequestError::MessageTooLarge { index, bytes });
        }
    }
    let id_key = header_key.or(write_key.as_deref()).unwrap_or_default();
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(index, m)| {
            let id = (m.is_object() && is_absent(m.get("messageId"))).then(|| {
                derived_message_id(id_key, index, &m, sent_at.as_deref(), context.as_ref())
            });
            let m = complete(m, context.as_ref(), sent_at.as_deref(), received_at_ms, id);
            let key = ["userId", "anonymousId"]
                .iter()
                .find_map(|k| m.get(*k).and_then(Value::as_str))
                .unwrap_or_default()
                .to_string();
            let payload = serde_json::to_vec(&m).unwrap_or_default();
            let verdict = decode(&payload, max_message_bytes);
            Prepared {
                index,
                key,
                payload,
                verdict,
            }
        })
        .collect();
    Ok(Request {
        write_key,
        messages,
    })
}

/// Completes one message the way Segment does; a non-object is left as it is (§2 rejects it).
fn complete(
    m: Value,
    batch_context: Option<&Map<String, Value>>,
    batch_sent_at: Option<&str>,
    received_at_ms: i64,
    new_id: Option<String>,
) -> Value {
    let Value::Object(mut m) = m else {
        return m;
    };
    m.remove("writeKey");
    if let Some(batch) = batch_context {
        // The message's own context keys win over the batch's.
        let mut merged = batch.clone();
        if let Some(Value::Object(own)) = m.remove("context") {
            merged.extend(own);
        }
        m.insert("context".into(), Value::Object(merged));
    }
    m.insert(
        "receivedAt".into(),
        Value::String(rfc3339_ms(received_at_ms)),
    );
    if let Some(id) = new_id {
        m.insert("messageId".into(), Value::String(id));
    }
    if is_absent(m.get("timestamp")) {
        let ms = |k: &str, m: &Map<String, Value>| {
            m.get(k).and_then(Value::as_str).and_then(parse_timestamp)
        };
        let sent_at = ms("sentAt", &m).or_else(|| batch_sent_at.and_then(parse_timestamp));
        // Corrected for the device's clock: the time between the event and the send, as the
        // device measured it, before the arrival.
        let timestamp = match (sent_at, ms("originalTimestamp", &m)) {
            (Some(sent), Some(original)) => {
                received_at_ms.saturating_sub(sent.saturating_sub(original))
            }
            _ => received_at_ms,
        };
        m.insert("timestamp".into(), Value::String(rfc3339_ms(timestamp)));
    }
    Value::Object(m)
}

fn is_absent(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{EventKind, RejectReason};
    use serde_json::json;

    const NOW: i64 = 1_795_428_000_000; // 2026-11-23T10:00:00Z

    fn batch(v: Value) -> Result<Request, RequestError> {
        prepare(
            Route::Batch,
            v.to_string().as_bytes(),
            NOW,
            Some("k"),
            1 << 20,
        )
    }

    fn published(p: &Prepared) -> Value {
        serde_json::from_slice(&p.payload).unwrap()
    }

    #[test]
    fn fills_received_at_message_id_and_timestamp() {
        let r = batch(json!({"batch": [
            {"type": "track", "userId": "u", "event": "signed_up"},
            {"type": "track", "userId": "u", "event": "e", "messageId": "own",
             "timestamp": "2026-11-23T09:00:00Z"},
        ]}))
        .unwrap();
        let first = published(&r.messages[0]);
        assert_eq!(first["receivedAt"], "2026-11-23T10:00:00.000Z");
        let sent = json!({"type": "track", "userId": "u", "event": "signed_up"});
        assert_eq!(
            first["messageId"],
            derived_message_id("k", 0, &sent, None, None).as_str()
        );
        assert_eq!(first["timestamp"], "2026-11-23T10:00:00.000Z");
        let second = published(&r.messages[1]);
        assert_eq!(second["messageId"], "own");
        assert_eq!(second["timestamp"], "2026-11-23T09:00:00Z");
        assert!(r.messages.iter().all(|m| m.verdict.is_ok()));
    }

    #[test]
    fn a_request_sent_again_gets_the_same_message_ids() {
        let body = json!({"sentAt": "2026-11-23T09:59:59Z", "batch": [
            {"type": "track", "userId": "u", "event": "e"},
            {"type": "track", "userId": "u", "event": "e"},
        ]});
        let ids = |r: &Request| -> Vec<String> {
            r.messages
                .iter()
                .map(|m| published(m)["messageId"].as_str().unwrap().to_string())
                .collect()
        };
        let first = batch(body.clone()).unwrap();
        // Later, keys in another order: the same ids.
        let again = prepare(
            Route::Batch,
            br#"{"batch": [{"event": "e", "userId": "u", "type": "track"},
                {"userId": "u", "type": "track", "event": "e"}],
                "sentAt": "2026-11-23T09:59:59Z"}"#,
            NOW + 60_000,
            Some("k"),
            1 << 20,
        )
        .unwrap();
        assert_eq!(ids(&first), ids(&again));
        assert_ne!(
            ids(&first)[0],
            ids(&first)[1],
            "two equal messages stay two"
        );
        let other_key = prepare(
            Route::Batch,
            body.to_string().as_bytes(),
            NOW,
            Some("k2"),
            1 << 20,
        )
        .unwrap();
        assert_ne!(ids(&first), ids(&other_key));
        let body_key = json!({"writeKey": "k", "sentAt": "2026-11-23T09:59:59Z",
            "batch": body["batch"].clone()});
        let from_body = prepare(
            Route::Batch,
            body_key.to_string().as_bytes(),
            NOW,
            None,
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            ids(&first),
            ids(&from_body),
            "the key in the body counts the same"
        );
    }

    #[test]
    fn timestamp_is_corrected_by_the_device_clock() {
        // The device says it sent 10 s after the event; it arrived at NOW.
        let r = batch(json!({"sentAt": "2030-01-01T00:00:10Z", "batch": [
            {"type": "track", "userId": "u", "event": "e",
             "originalTimestamp": "2030-01-01T00:00:00Z"},
            {"type": "track", "userId": "u", "event": "e",
             "originalTimestamp": "2030-01-01T00:00:00Z", "sentAt": "2030-01-01T00:00:01Z"},
            {"type": "track", "userId": "u", "event": "e", "originalTimestamp": "not a time"},
        ]}))
        .unwrap();
        assert_eq!(
            published(&r.messages[0])["timestamp"],
            rfc3339_ms(NOW - 10_000)
        );
        assert_eq!(
            published(&r.messages[1])["timestamp"],
            rfc3339_ms(NOW - 1_000),
            "the message's own sentAt wins"
        );
        assert_eq!(published(&r.messages[2])["timestamp"], rfc3339_ms(NOW));
    }

    #[test]
    fn batch_context_merges_under_the_message_context() {
        let r = batch(
            json!({"context": {"library": {"name": "x"}, "ip": "1.2.3.4"},
                "writeKey": "k", "batch": [
                {"type": "identify", "userId": "u", "context": {"ip": "5.6.7.8"}},
                {"type": "identify", "userId": "u"},
            ]}),
        )
        .unwrap();
        assert_eq!(r.write_key.as_deref(), Some("k"));
        let first = published(&r.messages[0]);
        assert_eq!(
            first["context"],
            json!({"library": {"name": "x"}, "ip": "5.6.7.8"})
        );
        assert_eq!(published(&r.messages[1])["context"]["ip"], "1.2.3.4");
        assert!(first.get("writeKey").is_none());
    }

    #[test]
    fn single_routes_take_their_type_from_the_path() {
        let body = json!({"userId": "u", "writeKey": "k", "name": "Home"}).to_string();
        let r = prepare(
            Route::Single("page"),
            body.as_bytes(),
            NOW,
            Some("k"),
            1 << 20,
        )
        .unwrap();
        assert_eq!(r.write_key.as_deref(), Some("k"));
        assert_eq!(r.messages.len(), 1);
        let event = r.messages[0].verdict.clone().unwrap();
        assert_eq!(
            event.kind,
            EventKind::Track {
                event: "page_viewed".into(),
                properties: None,
            }
        );
        assert!(Route::parse("bogus").is_none());
        assert_eq!(Route::parse("batch"), Some(Route::Batch));
    }

    #[test]
    fn keys_and_rejections() {
        let r = batch(json!({"batch": [
            {"type": "page", "anonymousId": "a-1"},
            {"type": "track", "userId": "u", "anonymousId": "a-1", "event": "e"},
            {"type": "track", "event": "e"},
            {"type": "alias", "userId": "u", "previousId": "a-1"},
            {"type": "nonsense", "userId": "u"},
            "not an object",
        ]}))
        .unwrap();
        let keys: Vec<&str> = r.messages.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, ["a-1", "u", "", "u", "u", ""]);
        let reasons: Vec<Option<RejectReason>> = r
            .messages
            .iter()
            .map(|m| m.verdict.as_ref().err().map(|e| e.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                None,
                None,
                Some(RejectReason::MissingField),
                None,
                Some(RejectReason::UnknownType),
                Some(RejectReason::NotObject),
            ]
        );
    }

    #[test]
    fn limits_at_and_over_their_edges() {
        let message_of = |bytes: usize| {
            let mut m =
                json!({"type": "track", "userId": "u", "event": "e", "properties": {"p": ""}});
            let len = serde_json::to_vec(&m).unwrap().len();
            m["properties"]["p"] = Value::String("x".repeat(bytes - len));
            assert_eq!(serde_json::to_vec(&m).unwrap().len(), bytes);
            m
        };
        assert!(batch(json!({"batch": [message_of(MAX_MESSAGE_BYTES)]})).is_ok());
        assert_eq!(
            batch(json!({"batch": [message_of(MAX_MESSAGE_BYTES + 1)]})),
            Err(RequestError::MessageTooLarge {
                index: 0,
                bytes: MAX_MESSAGE_BYTES + 1
            })
        );
        let small = json!({"type": "track", "userId": "u", "event": "e"});
        assert!(batch(json!({"batch": vec![small.clone(); MAX_BATCH]})).is_ok());
        assert_eq!(
            batch(json!({"batch": vec![small; MAX_BATCH + 1]})),
            Err(RequestError::TooMany(MAX_BATCH + 1))
        );
        let at_limit = vec![b' '; MAX_REQUEST_BYTES - 2];
        let body = [b"{}".as_slice(), &at_limit].concat();
        assert!(matches!(
            prepare(Route::Batch, &body, NOW, Some("k"), 1 << 20),
            Err(RequestError::BadShape(_))
        ));
        let body = [b"{}".as_slice(), &at_limit, b" "].concat();
        assert_eq!(
            prepare(Route::Batch, &body, NOW, Some("k"), 1 << 20),
            Err(RequestError::TooLarge(MAX_REQUEST_BYTES + 1))
        );
    }

    /// Both paths' answers, payloads compared as JSON values.
    fn both(body: &[u8]) -> (Option<Request>, Result<Request, RequestError>) {
        let fast = super::super::segment_splice::prepare(body, NOW, 1 << 20);
        (
            fast,
            prepare_parsed(Route::Batch, body, NOW, Some("k"), 1 << 20),
        )
    }

    fn same(fast: &Request, general: &Request) {
        assert_eq!(fast.write_key, general.write_key);
        assert_eq!(fast.messages.len(), general.messages.len());
        for (f, g) in fast.messages.iter().zip(&general.messages) {
            assert_eq!(published(f), published(g));
            assert_eq!((f.index, &f.key, &f.verdict), (g.index, &g.key, &g.verdict));
        }
    }

    #[test]
    fn the_spliced_path_publishes_what_the_general_one_does() {
        let m = |extra: Value| {
            let mut m = json!({"type": "track", "messageId": "m-1", "userId": "u",
                "timestamp": "2026-11-23T09:59:00.000Z", "event": "e"});
            for (k, v) in extra.as_object().unwrap() {
                m[k] = v.clone();
            }
            m
        };
        let spliced = [
            json!({"batch": [m(json!({}))]}),
            json!({"batch": [m(json!({"userId": 5, "anonymousId": "a"})), m(json!({"properties": {"x": [1, {"y": null}]}}))], "writeKey": "wk", "sentAt": "x"}),
            json!({"batch": [m(json!({}))], "context": {"library": {"name": "l"}, "ip": "1.2.3.4"}}),
            json!({"batch": [m(json!({})), m(json!({"type": "nonsense"})), m(json!({"messageId": 7}))], "context": "not an object"}),
            json!({"batch": []}),
        ];
        for body in spliced {
            let text = body.to_string();
            let (fast, general) = both(text.as_bytes());
            let fast = fast.unwrap_or_else(|| panic!("not spliced: {text}"));
            same(&fast, &general.unwrap());
            // Whitespace as sent does not change what is published.
            let pretty = serde_json::to_string_pretty(&body).unwrap();
            let (fast, general) = both(pretty.as_bytes());
            same(&fast.unwrap(), &general.unwrap());
        }
        let general_only = [
            json!({"batch": [m(json!({"messageId": null}))]}),
            json!({"batch": [m(json!({"timestamp": null}))]}),
            json!({"batch": [m(json!({"receivedAt": "2020-01-01T00:00:00Z"}))]}),
            json!({"batch": [m(json!({"writeKey": "w"}))]}),
            json!({"batch": [m(json!({"context": {"a": 1}}))], "context": {"b": 2}}),
            json!({"batch": [m(json!({"properties": {"p": "x".repeat(AS_SENT)}}))]}),
            json!({"batch": ["not an object"]}),
            json!({"batch": 5}),
        ];
        for body in general_only {
            let text = body.to_string();
            assert!(both(text.as_bytes()).0.is_none(), "spliced: {text}");
        }
        // A key given twice goes the general way too.
        let twice = r#"{"batch":[{"type":"track","messageId":"a","messageId":"b","userId":"u","timestamp":"2026-11-23T09:59:00Z","event":"e"}]}"#;
        assert!(both(twice.as_bytes()).0.is_none());
        assert!(prepare(Route::Batch, twice.as_bytes(), NOW, Some("k"), 1 << 20).is_ok());
    }

    /// Bigger than the spliced path takes.
    const AS_SENT: usize = MAX_MESSAGE_BYTES / 5;

    #[test]
    fn malformed_requests() {
        let bad = |body: &[u8]| prepare(Route::Batch, body, NOW, Some("k"), 1 << 20).unwrap_err();
        assert!(matches!(bad(b"{nope"), RequestError::NotJson(_)));
        assert!(matches!(bad(b"[1]"), RequestError::BadShape(_)));
        assert!(matches!(bad(br#"{"batch": 5}"#), RequestError::BadShape(_)));
        assert!(matches!(
            bad(br#"{"context": {}}"#),
            RequestError::BadShape(_)
        ));
    }
}
