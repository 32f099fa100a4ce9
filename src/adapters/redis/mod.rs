//! Redis, a cache that may lose everything (MongoDB rebuilds it): the user-state cache, the
//! retry schedule and its leases, the optional callback journal, and the connection (one
//! server or a cluster) they share.

pub mod connection;
pub mod journal;
pub mod retry;
pub mod state;
