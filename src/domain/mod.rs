//! Pure business logic: decoding, aggregation, dedup, campaigns, message statuses, retries.
//! No runtime, driver or clock access here: time and randomness are passed in.

pub mod campaign;
pub mod dedup;
pub mod event;
pub mod message;
pub mod retry;
pub mod signature;
pub mod user;
pub mod watermark;
