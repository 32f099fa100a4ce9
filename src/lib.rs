//! Herald: turns a firehose of user events into per-user state and personalised messages,
//! effectively once. See ARCHITECTURE.md for the map.

pub mod actors;
pub mod adapters;
pub mod config;
pub mod demo;
pub mod domain;
pub mod embedded;
pub mod feed_setup;
pub mod huge_pages;
pub mod ingest_tier;
pub mod ports;
pub mod prefetch;
pub mod produce;
pub mod produce_http;
pub mod provider_setup;
pub mod provider_sim;
pub mod service;
pub mod telemetry;
pub mod workload;
