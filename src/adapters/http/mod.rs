//! Herald's HTTP listeners: the webhook receiver with `/metrics`, `/healthz` and `/readyz`,
//! and the Segment-compatible ingest.

pub mod ingest;
pub mod server;
