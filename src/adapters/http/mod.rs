//! Herald's HTTP listeners: the webhook receiver with `/metrics`, `/healthz` and `/readyz`,
//! the Segment-compatible ingest, and the read API.

pub mod api;
pub mod ingest;
pub mod server;
