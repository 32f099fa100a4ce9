//! The common batch request read without building JSON trees: when every message already has
//! its `messageId` and `timestamp` and neither `receivedAt` nor a `writeKey` of its own, it is
//! published as it was sent with `receivedAt` (and the batch's `context`, if it has none of its
//! own) spliced in before its closing brace. What that leaves out (ids to derive, timestamps
//! to fill, contexts to merge, repeated keys, large messages) goes through the general path,
//! which gives the same result.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::event::decode;
use super::segment::{rfc3339_ms, Prepared, Request, MAX_BATCH, MAX_MESSAGE_BYTES};

/// Messages up to this size are published as sent. The general path measures a message as
/// re-serialized, which can be longer than as sent (a number such as `1e15` is written out in
/// full): below a fifth of the limit no message can reach it.
const AS_SENT_BYTES: usize = MAX_MESSAGE_BYTES / 5;

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
    #[serde(default, borrow)]
    context: Option<&'a RawValue>,
    #[serde(rename = "writeKey", default, borrow)]
    write_key: Option<Cow<'a, str>>,
}

/// The top-level keys of one message that decide whether it can be published as sent.
#[derive(Deserialize)]
struct Shape<'a> {
    #[serde(rename = "messageId", default, borrow)]
    message_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(rename = "userId", default, borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(rename = "anonymousId", default, borrow)]
    anonymous_id: Option<&'a RawValue>,
    #[serde(rename = "receivedAt", default)]
    received_at: Present,
    #[serde(rename = "writeKey", default)]
    write_key: Present,
    #[serde(default)]
    context: Present,
}

/// Whether a key is there at all (even as `null`).
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Present(true))
    }
}

/// The request as the general path would take it apart, if it can be done by splicing.
pub(super) fn prepare(
    body: &[u8],
    received_at_ms: i64,
    max_message_bytes: usize,
) -> Option<Request> {
    let body: Body<'_> = serde_json::from_slice(body).ok()?;
    if body.batch.len() > MAX_BATCH {
        return None;
    }
    let context = body.context.filter(|c| c.get().starts_with('{'));
    let received_at = rfc3339_ms(received_at_ms);
    let mut messages = Vec::with_capacity(body.batch.len());
    for (index, raw) in body.batch.iter().enumerate() {
        let text = raw.get();
        if text.len() > AS_SENT_BYTES || !text.starts_with('{') || !text.ends_with('}') {
            return None;
        }
        let shape: Shape<'_> = serde_json::from_str(text).ok()?;
        let set = |v: Option<&RawValue>| v.is_some_and(|v| v.get() != "null");
        if !set(shape.message_id)
            || !set(shape.timestamp)
            || shape.received_at.0
            || shape.write_key.0
            || (context.is_some() && shape.context.0)
        {
            return None;
        }
        let key = [shape.user_id, shape.anonymous_id]
            .into_iter()
            .flatten()
            .find_map(|v| serde_json::from_str::<String>(v.get()).ok())
            .unwrap_or_default();
        let inner = &text[..text.len() - 1];
        let mut payload =
            Vec::with_capacity(text.len() + 48 + context.map_or(0, |c| c.get().len()));
        payload.extend_from_slice(inner.as_bytes());
        let mut separator: &[u8] = if inner[1..].trim().is_empty() {
            b""
        } else {
            b","
        };
        if let Some(c) = context {
            payload.extend_from_slice(separator);
            payload.extend_from_slice(b"\"context\":");
            payload.extend_from_slice(c.get().as_bytes());
            separator = b",";
        }
        payload.extend_from_slice(separator);
        payload.extend_from_slice(b"\"receivedAt\":\"");
        payload.extend_from_slice(received_at.as_bytes());
        payload.extend_from_slice(b"\"}");
        let verdict = decode(&payload, max_message_bytes);
        messages.push(Prepared {
            index,
            key,
            payload,
            verdict,
        });
    }
    Some(Request {
        write_key: body.write_key.map(Cow::into_owned),
        messages,
    })
}
