//! Pure business logic: decoding, aggregation, dedup, campaigns, message statuses, retries.
//! No runtime, driver or clock access here: time and randomness are passed in.

pub mod campaign;
pub mod dedup;
pub mod event;
mod event_fields;
pub mod feed;
pub mod feedback;
pub mod identity;
mod json_str;
pub mod keys;
pub mod merge;
pub mod message;
pub mod names;
pub mod opt_ms;
pub mod packed_state;
pub mod policy;
pub mod positions;
pub mod profile;
pub mod rate_limit;
pub mod retry;
pub mod ring;
pub mod segment;
mod segment_splice;
pub mod sendgrid;
pub mod signature;
pub mod status_lookup;
pub mod stored_state;
pub mod suppression;
pub mod template;
pub mod thin_slice;
pub mod thin_str;
mod timestamp;
pub mod trait_value;
pub mod twilio;
pub mod user;
pub mod user_profile;
pub mod watermark;
