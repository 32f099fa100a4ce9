//! The ports: what the actors need from the outside world. Adapters implement them (Kafka,
//! RabbitMQ, Redis, MongoDB, HTTP providers later; embedded and in-memory ones now).
//!
//! Every method returns a `'static` boxed future so an actor can run it in its context
//! without borrowing the adapter.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use crate::domain::campaign::Channel;
use crate::domain::message::{MessageRecord, MessageStatus, StatusChange};
use crate::domain::profile::Profile;
use crate::domain::suppression::{Suppression, SuppressionReason};
use crate::domain::user::UserState;

pub type BoxFut<T> = BoxFuture<'static, T>;

/// One record read from a partition (or queue).
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: u32,
    pub offset: u64,
    pub key: Option<Bytes>,
    pub payload: Bytes,
    /// When the source received the record (ms since epoch), if it knows.
    pub timestamp_ms: Option<i64>,
}

/// An invalid record on its way to the dead-letter destination.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub record: Record,
    /// `<reason code>: <detail>`, the `herald-error` header.
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source unavailable: {0}")]
    Unavailable(String),
    #[error("partition {0} is not assigned to this instance")]
    NotAssigned(u32),
    #[error("commit rejected: {0}")]
    CommitRejected(String),
    /// The partition was taken away without a revoke (a RabbitMQ channel closed): nothing
    /// more can be committed for this incarnation; what it did not commit comes back
    /// redelivered to the next consumer.
    #[error("partition {0} was lost: its uncommitted records will be redelivered")]
    Lost(u32),
}

/// A change of which partitions this instance consumes.
#[derive(Debug)]
pub enum AssignmentEvent {
    Assigned(Vec<u32>),
    /// The source waits for `done` before handing the partitions to someone else, so the
    /// partitions can drain and commit first.
    Revoked {
        partitions: Vec<u32>,
        done: oneshot::Sender<()>,
    },
    /// Taken away without a revoke (Kafka: this member was evicted from the group, e.g. after
    /// `max.poll.interval.ms`): another member may own them already, so nothing more is
    /// committed; what was not committed is redelivered to the next owner.
    Lost(Vec<u32>),
}

/// Where records come from.
pub trait Source: Send + Sync + 'static {
    /// The `source` label of `herald_events_consumed_total`.
    fn kind(&self) -> &'static str;
    /// The assignment stream; `None` once taken (there is one consumer of it).
    fn take_assignments(&self) -> Option<mpsc::UnboundedReceiver<AssignmentEvent>>;
    /// A reader positioned at the partition's committed position.
    fn reader(&self, partition: u32) -> Result<Arc<dyn PartitionReader>, SourceError>;
    /// Commits `next_offset` (everything below it is durable).
    fn commit(&self, partition: u32, next_offset: u64) -> BoxFut<Result<(), SourceError>>;
    /// Writes invalid records to the dead-letter destination; resolves once they are durable.
    fn dead_letter(&self, letters: Vec<DeadLetter>) -> BoxFut<Result<(), SourceError>>;
    /// The partition's high watermark, for lag, if known.
    fn high_watermark(&self, partition: u32) -> Option<u64>;
    /// Whether the source stopped fetching the partition because its hand-off is full
    /// (`herald_source_paused`).
    fn is_paused(&self, _partition: u32) -> bool {
        false
    }
    /// Whether an offset names the same message forever (Kafka), so a user's last applied
    /// offset can reject replays. RabbitMQ delivery positions are per consumer session.
    fn durable_positions(&self) -> bool {
        true
    }
}

/// Reads one partition in order.
pub trait PartitionReader: Send + Sync {
    /// The committed position this reader started from.
    fn start_offset(&self) -> u64;
    /// Up to `max` records; an empty batch means "nothing right now" (poll again later).
    fn fetch(&self, max: usize) -> BoxFut<Result<Vec<Record>, SourceError>>;
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying: timeouts, connection loss, server busy.
    #[error("transient store error: {0}")]
    Transient(String),
    /// The data itself was refused (never succeeds on retry).
    #[error("store rejected data for {key}: {detail}")]
    BadData { key: String, detail: String },
    /// Some documents of a bulk write were refused (the others were written): the refused
    /// `(id, reason)` pairs. Retrying them would fail again.
    #[error("store refused {} document(s), first {first:?}", .refused.len(), first = .refused.first())]
    Refused { refused: Vec<(String, String)> },
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_))
    }
}

/// One dirty user as of a flush: what its `users` document and its cache entry receive.
/// Built once per flush from the resident state (never per event).
#[derive(Debug, Clone, PartialEq)]
pub struct UserSnapshot {
    pub user_id: Arc<str>,
    /// The version this write creates. The stored document must be at `version - 1` (`0`: no
    /// document with bookkeeping yet) for the write to land.
    pub version: u64,
    pub profile: Profile,
    pub positions: crate::domain::positions::Positions,
    /// The whole dedup window, oldest first (what is older than `dedup.window_ms` left out).
    pub seen: Vec<(u64, i64)>,
    /// Its part in identity merges.
    pub identity: Option<Box<crate::domain::identity::Identity>>,
}

impl UserSnapshot {
    /// Where the parts its drop releases live (its event counts, traits, tags and remembered
    /// ids), read without touching them: hints for prefetching.
    pub fn storage_addrs(&self) -> [*const u8; 4] {
        let [events, traits, tags] = self.profile.storage_addrs();
        [events, traits, tags, self.seen.as_ptr().cast()]
    }

    /// A loaded state as it stands (at its own version): for refilling a cache.
    pub fn of_state(user_id: Arc<str>, state: &UserState) -> UserSnapshot {
        UserSnapshot {
            user_id,
            version: state.version,
            profile: state.profile.clone(),
            positions: state.positions.clone(),
            seen: state.seen.entries().collect(),
            identity: state.identity.clone(),
        }
    }
}

/// A user's state, as loaded.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadedState {
    Absent,
    Found(UserState),
    /// The stored state cannot be read by this release (does not parse, newer schema).
    Unreadable(String),
}

/// What the system of record (the `users` collection) holds for a user.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredUser {
    Absent,
    /// A document with Herald's bookkeeping: the whole state.
    Found(UserState),
    /// A document written before MongoDB held the bookkeeping (an earlier release): the
    /// profile only; that release kept the positions and the dedup window in Redis.
    WithoutBookkeeping(Profile),
    /// Bookkeeping this release cannot read (a newer schema, a broken field).
    Unreadable(String),
}

/// A cache of user states in front of the system of record (Redis in production). It may
/// lose any entry at any moment, or hold an older version than the system of record: the
/// write fenced by MongoDB finds that out (ARCHITECTURE.md, "Ownership across instances").
///
/// A writer marks its users *in flux* before it writes their documents, and the cache write
/// that follows clears the marks: an entry still marked (its writer died or lost its race
/// between the two writes) may be older than the document, and loads as a miss.
pub trait StateCache: Send + Sync + 'static {
    /// Each user's cached state, in order; `None` for a miss (absent, expired, unreadable,
    /// or in flux).
    fn load(&self, users: Vec<Arc<str>>) -> BoxFut<Result<Vec<Option<UserState>>, StoreError>>;
    /// Marks these users in flux: their documents are about to be written.
    fn begin_writes(&self, users: Vec<Arc<str>>) -> BoxFut<Result<(), StoreError>>;
    /// Caches each snapshot's state, at its version, and clears its in-flux mark.
    fn save(&self, users: Vec<Arc<UserSnapshot>>) -> BoxFut<Result<(), StoreError>>;
    /// For users whose document carries no bookkeeping: the state as an earlier release kept
    /// it in this cache, if it is still there (at version 0: this release's first write of
    /// the user creates version 1).
    fn load_legacy(
        &self,
        users: Vec<Arc<str>>,
    ) -> BoxFut<Result<Vec<Option<LoadedState>>, StoreError>> {
        let none = vec![None; users.len()];
        Box::pin(async move { Ok(none) })
    }
}

/// What a `users` bulk write did besides writing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsersWritten {
    /// The stored document is at a newer version: not written.
    pub stale: Vec<Arc<str>>,
    /// The server refused the document (bad data; never succeeds on retry).
    pub refused: Vec<(Arc<str>, String)>,
}

/// What a `messages` insert did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InsertedMessages {
    /// The ids of the documents this flush created.
    pub created: Vec<String>,
    /// `(id, why)` of the documents the store refused (a validator, a size limit).
    pub refused: Vec<(String, String)>,
}

/// Where a page of waiting messages starts (see [`DocumentStore::stalled_messages`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StalledFrom {
    Start,
    /// Changed after this time (ms).
    After(i64),
    /// Changed at exactly this time, with an `_id` after this one.
    Tied {
        at: i64,
        after_id: String,
    },
}

/// The result of a conditional status transition.
#[derive(Debug, Clone, PartialEq)]
pub enum TransitionResult {
    /// The record as it stands after the change (shared: an in-process store keeps it too).
    Applied(Arc<MessageRecord>),
    /// The status machine refused it; the message stays in this status.
    Ignored(MessageStatus),
    /// A callback about a send the document does not know yet: ask for it again later.
    NotReady,
    NotFound,
}

/// A keyed record of a downstream feed (the changelog, the messages topic).
#[derive(Debug, Clone, PartialEq)]
pub struct FeedRecord {
    pub key: String,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("changelog: {0}")]
pub struct FeedError(pub String);

/// One batcher's writer of the users' changelog: one transaction at a time, staged before
/// the flush's fenced write and committed only if every user of it stood, so a reader
/// (`read_committed`) never sees a state MongoDB did not accept, and a key's versions keep
/// MongoDB's order (ARCHITECTURE.md, "The changelog").
pub trait ChangelogWriter: Send + Sync + 'static {
    /// Opens a transaction (aborting one left open) and sends the records into it; answers
    /// once the broker has acknowledged them all.
    fn stage(&self, records: Vec<FeedRecord>) -> BoxFut<Result<(), FeedError>>;
    /// Commits the staged records.
    fn commit(&self) -> BoxFut<Result<(), FeedError>>;
    /// Aborts the staged records (best effort: a transaction left open times out).
    fn abort(&self) -> BoxFut<()>;
}

/// One change of a message, for the feeds: its state right after the change and the change's
/// place in its `history` (`0`: created).
#[derive(Debug, Clone, PartialEq)]
pub struct MessageChange {
    pub record: MessageRecord,
    pub seq: u32,
}

/// Where the durable changes of messages go (the messages topic, feedback webhooks).
pub trait FeedSink: Send + Sync + 'static {
    /// Publishes the changes, in order, and answers once they are durable downstream. Called
    /// again with the same changes after a failure or a crash: a change may repeat, in order.
    fn publish(&self, changes: Arc<Vec<MessageChange>>) -> BoxFut<Result<(), FeedError>>;
}

/// Where the read API's next page of a user's messages starts: after this message (its
/// creation time and id), newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagesAfter {
    pub created_at: i64,
    pub id: String,
}

/// The queries of the read API (MongoDB in production).
pub trait ReadStore: Send + Sync + 'static {
    /// A user as its document reads, without `_herald` (`{_id, merged_into}` for an id an
    /// `alias` merged), or `None` if there is no such user.
    fn user(&self, id: String) -> BoxFut<Result<Option<serde_json::Value>, StoreError>>;
    fn message(&self, id: String) -> BoxFut<Result<Option<MessageRecord>, StoreError>>;
    /// Up to `limit` of a user's messages, newest first (creation time, then id), after
    /// `after` if given.
    fn user_messages(
        &self,
        user: String,
        limit: usize,
        after: Option<MessagesAfter>,
    ) -> BoxFut<Result<Vec<MessageRecord>, StoreError>>;
}

/// A feedback webhook call waiting in the durable schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackJob {
    /// One per event and hook ([`crate::domain::feedback::job_id`]).
    pub id: String,
    pub url: String,
    pub body: Vec<u8>,
    /// Calls made so far.
    pub attempts: u32,
    pub due_ms: i64,
}

/// The durable schedule of feedback webhook calls (MongoDB in production).
pub trait FeedbackStore: Send + Sync + 'static {
    /// Adds jobs not there yet (a job already scheduled is left as it is).
    fn enqueue(&self, jobs: Vec<FeedbackJob>) -> BoxFut<Result<(), StoreError>>;
    /// Up to `limit` jobs due at `now_ms`, each taken for `lease_ms` (moved out of reach of
    /// other instances until then: if this one dies, the job is due again after it).
    fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> BoxFut<Result<Vec<FeedbackJob>, StoreError>>;
    /// The hook answered 2xx: the job is done.
    fn done(&self, id: String) -> BoxFut<Result<(), StoreError>>;
    /// The call failed: due again at `due_ms`, `attempts` made.
    fn retry_at(&self, id: String, attempts: u32, due_ms: i64) -> BoxFut<Result<(), StoreError>>;
}

/// The `users` and `messages` collections (MongoDB in production).
pub trait DocumentStore: Send + Sync + 'static {
    /// The users' documents, read by `_id`, one entry per requested user, in order.
    fn load_users(&self, users: Vec<Arc<str>>) -> BoxFut<Result<Vec<StoredUser>, StoreError>>;
    /// Replaces each user's document with its snapshot — profile and bookkeeping together —
    /// if the stored document is still at `version - 1` (the fence: of two writers of one
    /// version, one lands). `token` marks the flush's writes, so a statement that landed in an
    /// earlier try whose answer was lost is told from another writer's; `now_ms` is
    /// `updated_at`. Users whose document moved on are `stale`.
    fn upsert_users(
        &self,
        users: Vec<Arc<UserSnapshot>>,
        token: u64,
        now_ms: i64,
    ) -> BoxFut<Result<UsersWritten, StoreError>>;
    /// Removes, among `ids`, the messages the flush `token` inserted (a flush whose user did
    /// not stand: they were triggered by a state that is gone).
    fn remove_created_messages(
        &self,
        ids: Vec<String>,
        token: u64,
    ) -> BoxFut<Result<(), StoreError>>;
    /// Inserts messages that do not exist yet (existing ones are left untouched), each marked
    /// with `token` (one per flush). Answers the ids, among `messages`, of the documents
    /// carrying `token`: the ones this flush created — also by an earlier call with the same
    /// token whose answer was lost — and only those may be dispatched (an existing message
    /// is someone's already); and the documents the store refused (bad data: never written).
    fn insert_messages(
        &self,
        messages: Vec<Arc<MessageRecord>>,
        token: u64,
    ) -> BoxFut<Result<InsertedMessages, StoreError>>;
    /// Whether message changes go to feeds ([`DocumentStore::feed_created`] does something).
    fn feeds(&self) -> bool {
        false
    }
    /// Hands the messages a flush created (documents at version 0) to the feeds.
    fn feed_created(&self, _records: Vec<MessageRecord>) {}
    /// Applies a status change if the status machine allows it.
    fn transition(
        &self,
        id: String,
        change: StatusChange,
    ) -> BoxFut<Result<TransitionResult, StoreError>>;
    /// Keeps a callback whose send is not recorded yet (or whose message is not stored yet)
    /// until `expires_at_ms`, to be applied, checked like any callback, once it can be.
    /// `false` when `max` are kept already: the provider is asked to call again.
    fn keep_early_callback(
        &self,
        message_id: String,
        callback: Callback,
        expires_at_ms: i64,
        max: u64,
    ) -> BoxFut<Result<bool, StoreError>>;
    /// Up to `limit` kept callbacks, oldest first.
    fn early_callbacks(&self, limit: usize) -> BoxFut<Result<Vec<EarlyCallback>, StoreError>>;
    /// Forgets a kept callback (applied, refused or expired).
    fn drop_early_callback(&self, key: String) -> BoxFut<Result<(), StoreError>>;
    /// The message's record (shared: an in-process store keeps it too).
    fn get_message(&self, id: String) -> BoxFut<Result<Option<Arc<MessageRecord>>, StoreError>>;
    /// Counts message `message_id` against the frequency cap `key` (`<channel>:<user>`) at
    /// `now_ms`: [`Slot::Taken`] if fewer than `max` messages were counted in the `per_ms`
    /// before, [`Slot::AlreadyCounted`] if this message was, else [`Slot::Full`]. Exact with
    /// several writers; asking again after a lost answer finds the message counted.
    fn take_cap_slot(
        &self,
        key: String,
        message_id: String,
        now_ms: i64,
        max: usize,
        per_ms: i64,
    ) -> BoxFut<Result<crate::domain::policy::Slot, StoreError>>;
    /// How many messages read `status` (the `herald_messages_held` gauge).
    fn count_status(&self, status: MessageStatus) -> BoxFut<Result<u64, StoreError>>;
    /// Up to `limit` messages still `sent` whose status lookup is due at `now_ms`
    /// ([`MessageRecord::lookup_at`]), soonest first.
    fn lookups_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> BoxFut<Result<Vec<MessageRecord>, StoreError>>;
    /// Takes the lookup of message `id` due at `due_ms` (as read): if the message is still
    /// `sent` with that lookup due, moves its next lookup to `next_ms` (`None`: no more) and
    /// answers `true`. Of several instances taking one lookup, one gets `true`.
    fn claim_lookup(
        &self,
        id: String,
        due_ms: i64,
        next_ms: Option<i64>,
    ) -> BoxFut<Result<bool, StoreError>>;
    /// Up to `limit` messages waiting on a send (`queued` or `retrying`) whose last change
    /// was before `idle_before_ms`, from `from` on: in `updated_at` order (straight from an
    /// index), or — for the messages changed in one millisecond, `Tied` — in `_id` order. The
    /// reconciler pages through them all this way, never rescanning what it saw.
    fn stalled_messages(
        &self,
        idle_before_ms: i64,
        from: StalledFrom,
        limit: usize,
    ) -> BoxFut<Result<Vec<MessageRecord>, StoreError>>;
    /// The message whose current or an earlier send got `provider_message_id` from
    /// `provider` (callbacks that name only the provider's id).
    fn find_by_provider_message_id(
        &self,
        provider: String,
        provider_message_id: String,
    ) -> BoxFut<Result<Option<MessageRecord>, StoreError>>;
    /// Records suppressions (the first reason recorded for an address stays). Returns how
    /// many addresses were not suppressed before.
    fn suppress(&self, suppressions: Vec<Suppression>) -> BoxFut<Result<usize, StoreError>>;
    /// For each suppression `_id` asked about that is suppressed, its reason.
    fn suppressed(
        &self,
        ids: Vec<String>,
    ) -> BoxFut<Result<Vec<(String, SuppressionReason)>, StoreError>>;
}

/// What to send through a provider: one attempt of a stored message (shared with the
/// dispatcher's job, not copied for each send).
#[derive(Debug, Clone, PartialEq)]
pub struct SendRequest {
    pub message: Arc<MessageRecord>,
    pub attempt: u32,
    /// Where the provider posts its delivery callbacks (one per provider, shared).
    pub callback_url: Arc<str>,
}

impl SendRequest {
    pub fn message_id(&self) -> &str {
        &self.message.id
    }

    /// The address (a queued message always has one; empty otherwise).
    pub fn to(&self) -> &str {
        self.message.to.as_deref().unwrap_or_default()
    }

    pub fn body(&self) -> &str {
        &self.message.body
    }

    /// Email subject (rendered from the campaign's `subject`).
    pub fn subject(&self) -> Option<&str> {
        self.message.subject.as_deref()
    }

    pub fn channel(&self) -> Channel {
        self.message.channel
    }

    /// `Idempotency-Key: <message id>:<attempt>` (REFERENCE.md §5).
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.message.id, self.attempt)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    Accepted {
        provider_message_id: String,
    },
    /// 429, 5xx, timeout, connection error.
    Retryable {
        retry_after_ms: Option<u64>,
        detail: String,
    },
    /// Other 4xx: this provider will never take it. `suppress`: the provider said the
    /// address itself must not be sent to again (Twilio 21610, FCM `UNREGISTERED`).
    Rejected {
        detail: String,
        suppress: Option<SuppressionReason>,
    },
    /// The answer was lost (timeout, connection reset after the request went out): the send
    /// may have happened. A provider without idempotency keys cannot tell; the provider's
    /// `on_unknown_outcome` decides whether this is retried or failed.
    Unknown {
        detail: String,
    },
}

/// What a send whose answer was lost becomes (`on_unknown_outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownOutcome {
    /// Sent again later (a provider without idempotency keys may then deliver it twice).
    #[default]
    Retry,
    /// `failed` (it may still have been delivered once).
    Fail,
}

pub trait Provider: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn send(&self, request: SendRequest) -> BoxFut<SendOutcome>;
    /// Whether the provider's API can be asked what became of a send (§16 lookups).
    fn can_look_up(&self) -> bool {
        false
    }
    /// Asks the provider what became of the send it named `provider_message_id`.
    fn look_up(&self, _provider_message_id: String) -> BoxFut<LookupOutcome> {
        Box::pin(async { LookupOutcome::Unavailable("this provider offers no lookup".into()) })
    }
}

/// What a provider said about one of its sends, asked (a status lookup).
#[derive(Debug, Clone, PartialEq)]
pub enum LookupOutcome {
    /// It ended: what its callback would have said.
    Final {
        status: CallbackStatus,
        error: Option<String>,
        retryable: bool,
    },
    /// Still on its way (queued, sending, sent without a receipt).
    Pending,
    /// The provider does not know the send.
    NotFound,
    /// No answer worth acting on (a timeout, `5xx`, `429`, an unreadable body).
    Unavailable(String),
}

/// A callback kept until the send it is about is recorded.
#[derive(Debug, Clone)]
pub struct EarlyCallback {
    /// The store's key of it.
    pub key: String,
    /// The callback, or why its stored form cannot be read.
    pub callback: Result<Callback, String>,
    pub expires_at_ms: i64,
}

/// A provider's delivery callback, after authentication (serialised into the callback
/// journal as JSON).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Callback {
    pub provider: String,
    /// Herald's message id, when the callback carries it (Herald's own protocol, SendGrid's
    /// `custom_args`); Twilio's callbacks name only the provider's id.
    pub message_id: Option<String>,
    pub provider_message_id: Option<String>,
    pub status: CallbackStatus,
    pub error: Option<String>,
    pub retryable: bool,
    /// The provider says the address must not be sent to again.
    pub suppress: Option<SuppressionReason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackStatus {
    Delivered,
    Failed,
    Undelivered,
    /// No change of status (a SendGrid spam report after delivery): only its suppression.
    NoChange,
}

impl CallbackStatus {
    pub fn parse(s: &str) -> Option<CallbackStatus> {
        match s {
            "delivered" => Some(CallbackStatus::Delivered),
            "failed" => Some(CallbackStatus::Failed),
            "undelivered" => Some(CallbackStatus::Undelivered),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallbackError {
    /// The callback is about a send Herald has not recorded yet: the provider should call
    /// back again later (HTTP 503).
    #[error("callback for {0} arrived before its send was recorded; try again")]
    NotReady(String),
    /// The callback's provider made no send of this message (or not the one it names): it
    /// changes nothing (HTTP 409).
    #[error("{0}")]
    NotItsSend(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where callbacks go (the webhook receiver, or the in-process simulator directly).
pub trait CallbackSink: Send + Sync + 'static {
    /// Resolves once the callback's effect is durable.
    fn deliver(&self, callback: Callback) -> BoxFut<Result<(), CallbackError>>;

    /// Every callback of one request (a SendGrid array); resolves once all are durable. In a
    /// request of several, an event about a send its provider did not make is skipped (the
    /// others apply); a request of one answers it.
    fn deliver_all(&self, callbacks: Vec<Callback>) -> BoxFut<Result<(), CallbackError>> {
        let several = callbacks.len() > 1;
        let each: Vec<_> = callbacks.into_iter().map(|c| self.deliver(c)).collect();
        Box::pin(async move {
            // One after the other, in the request's order.
            for delivery in each {
                match delivery.await {
                    Err(CallbackError::NotItsSend(why)) if several => {
                        tracing::info!(
                            why,
                            "a callback event about another provider's send skipped"
                        );
                    }
                    other => other?,
                }
            }
            Ok(())
        })
    }
}

/// A callback read back from the journal: its entry id (`<append ms>-<seq>`) and the
/// callback, or why its stored form could not be read.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub id: String,
    pub callback: Result<Callback, String>,
}

impl JournalEntry {
    /// When the entry was appended (from its id), in ms since the epoch.
    pub fn appended_ms(&self) -> Option<i64> {
        self.id.split_once('-')?.0.parse().ok()
    }
}

/// The callback journal (`http.callback_journal`): a durable log the webhook receiver appends
/// to before it answers, applied to the document store in large groups by every instance
/// (a Redis stream with a consumer group in production). An entry is removed only once
/// applied; one left unapplied (a callback that came before its send was recorded, a store
/// outage, an instance that died holding it) is read again after a while, by any instance.
pub trait CallbackJournal: Send + Sync + 'static {
    /// Appends every callback, atomically; resolves once they are durable.
    fn append(&self, callbacks: Vec<Callback>) -> BoxFut<Result<(), StoreError>>;
    /// Entries nobody has read yet, up to `max`, waiting at most `block_ms` for one.
    fn read_new(&self, max: usize, block_ms: u64) -> BoxFut<Result<Vec<JournalEntry>, StoreError>>;
    /// Entries read (by this instance or another) but not settled for `min_idle_ms`.
    fn reclaim(
        &self,
        min_idle_ms: u64,
        max: usize,
    ) -> BoxFut<Result<Vec<JournalEntry>, StoreError>>;
    /// Removes applied entries.
    fn settle(&self, ids: Vec<String>) -> BoxFut<Result<(), StoreError>>;
    /// How many entries the journal holds (applied ones are removed).
    fn backlog(&self) -> BoxFut<Result<u64, StoreError>>;
}

/// One scheduled retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryEntry {
    pub message_id: String,
    pub attempt: u32,
    /// 0: attempt `attempt` is a new send. `r > 0`: the `r`-th resend of attempt `attempt`,
    /// whose outcome was unknown (its answer lost), with the same `Idempotency-Key`; it fires
    /// only while the message still waits on that attempt (`retrying` at `attempt`).
    pub resend: u32,
    pub due_ms: i64,
    /// Set by a claim of a lease whose holder had marked its send started
    /// ([`RetrySchedule::mark_sending`]) and neither settled nor extended it in time (it
    /// died or stalled): the attempt may have reached the provider.
    pub lapsed: bool,
}

impl RetryEntry {
    /// The stored form of `(attempt, resend)`: `"<attempt>"`, or `"<attempt>.<resend>"`.
    pub fn stored_attempt(&self) -> String {
        if self.resend == 0 {
            self.attempt.to_string()
        } else {
            format!("{}.{}", self.attempt, self.resend)
        }
    }

    /// Reads [`RetryEntry::stored_attempt`] (entries written before resends: a bare number).
    pub fn parse_stored_attempt(text: &str) -> Option<(u32, u32)> {
        match text.split_once('.') {
            Some((a, r)) => Some((a.parse().ok()?, r.parse().ok()?)),
            None => Some((text.parse().ok()?, 0)),
        }
    }
}

/// The durable retry schedule (a Redis due-time index in production).
///
/// Claiming is a lease, not a removal: a claimed entry becomes due again `lease_ms` later
/// unless [`RetrySchedule::complete`] is called once the attempt's outcome is durable, so a
/// crash between claim and send loses nothing (the repeated send carries the same
/// `Idempotency-Key`). A lease belongs to the instance that claimed (or held) it: only that
/// instance extends or completes it, so a lease that ran out and was claimed elsewhere is
/// not settled or kept alive by its old holder. A claim of a lease that ran out after its
/// send was marked started says so ([`RetryEntry::lapsed`]): the dispatcher then applies its
/// provider's `on_unknown_outcome`.
pub trait RetrySchedule: Send + Sync + 'static {
    /// Schedules (or reschedules) the message's next attempt; one entry per message. A
    /// scheduled entry is not leased: nobody is sending it until it is claimed.
    fn schedule(&self, entry: RetryEntry) -> BoxFut<Result<(), StoreError>>;
    /// Schedules the entry leased to this instance, which hands its send on in-process (a
    /// fallback to the next provider), so no other instance fires it meanwhile.
    fn hand_off(&self, entry: RetryEntry) -> BoxFut<Result<(), StoreError>>;
    /// Atomically leases up to `limit` entries due at `now_ms`: each is returned to exactly
    /// one caller, even with several instances, until its lease runs out.
    fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> BoxFut<Result<Vec<RetryEntry>, StoreError>>;
    /// Whether the schedule lost entries since this was last asked — its store restarted
    /// empty, was flushed, or failed over to a replica that had not caught up (each part of
    /// the schedule keeps a marker that only such a loss removes). The reconciler then
    /// rebuilds what was lost from `messages`. The first answer of a fresh store is `true`.
    fn lost_entries(&self) -> BoxFut<Result<bool, StoreError>> {
        Box::pin(async { Ok(false) })
    }
    /// The claimed attempt is settled: removes the entry unless it was rescheduled since
    /// (a newer attempt).
    fn complete(&self, entry: RetryEntry) -> BoxFut<Result<(), StoreError>>;
    /// Creates each entry only if its message has none. `leased`: held by this instance,
    /// which is about to send them; otherwise only due (the reconciler adopting a stalled
    /// message, which nobody is sending). Answers, for each, whether it was created: an
    /// entry that exists is someone else's to fire.
    fn hold(&self, entries: Vec<RetryEntry>, leased: bool)
        -> BoxFut<Result<Vec<bool>, StoreError>>;
    /// Keeps leased entries until `until_ms` (a job still waiting for its provider): each
    /// only while it is still that attempt, leased to this instance. Answers the message ids
    /// whose lease is no longer this instance's (it ran out and another instance claimed
    /// it, or it was settled or superseded): their jobs are someone else's now.
    fn extend(
        &self,
        entries: Vec<RetryEntry>,
        until_ms: i64,
    ) -> BoxFut<Result<Vec<String>, StoreError>>;
    /// Records that these leased sends are starting: a claim after their lease ran out
    /// reports them `lapsed`, and no other process claims them while this one is alive
    /// ([`RetrySchedule::heartbeat`]). Answers the ids whose lease is no longer this
    /// instance's attempt: those are not to be sent.
    fn mark_sending(&self, entries: Vec<RetryEntry>) -> BoxFut<Result<Vec<String>, StoreError>>;
    /// This process is alive until `alive_until_ms`: its sends marked started are not
    /// claimed by another process before then, even once their leases ran out (a store
    /// stall). A single-process schedule needs nothing.
    fn heartbeat(&self, _now_ms: i64, _alive_until_ms: i64) -> BoxFut<Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn cancel(&self, message_id: String) -> BoxFut<Result<(), StoreError>>;
    /// The message's scheduled retry, if any.
    fn entry(&self, message_id: String) -> BoxFut<Result<Option<RetryEntry>, StoreError>>;
    /// How many retries are scheduled.
    fn pending(&self) -> BoxFut<Result<usize, StoreError>>;
    /// The earliest due time, if any (to arm an early wake-up).
    fn next_due(&self) -> BoxFut<Result<Option<i64>, StoreError>>;
}

/// Wall-clock time, injected so tests and the domain never read the clock themselves.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A readiness check of one backend (`/readyz`).
pub trait Probe: Send + Sync + 'static {
    /// `source`, `redis`, `mongodb`: what `/readyz` names when it fails.
    fn name(&self) -> &'static str;
    fn check(&self) -> BoxFut<Result<(), String>>;
}

/// One message the HTTP ingest publishes to the source, keyed by its user.
#[derive(Debug, Clone)]
pub struct Publication {
    pub key: String,
    pub payload: Vec<u8>,
}

/// One message the HTTP ingest refused by §2's rules, for the dead-letter destination.
#[derive(Debug, Clone)]
pub struct RefusedPublication {
    pub key: String,
    pub payload: Vec<u8>,
    /// `<reason code>: <detail>`, the `herald-error` header.
    pub error: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The broker did not take it (down, refused, local queue full): the request is answered
    /// 503 and the client sends it again.
    #[error("the broker did not acknowledge: {0}")]
    Unavailable(String),
}

/// Where the HTTP ingest publishes (`ingest.listen`): the configured source's broker.
pub trait EventPublisher: Send + Sync + 'static {
    /// Resolves once the broker acknowledged every message and dead letter (Kafka `acks=all`,
    /// RabbitMQ publisher confirms). Dropping the future abandons waiting, not the messages:
    /// they may still arrive, and the client's resend is deduplicated by `messageId`.
    fn publish(
        &self,
        messages: Vec<Publication>,
        refused: Vec<RefusedPublication>,
    ) -> BoxFut<Result<(), PublishError>>;
}
