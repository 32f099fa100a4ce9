//! In-process backends (for `herald demo`, the embedded mode and tests): the user-state cache,
//! the document store, the retry schedule and the embedded partitioned source.

pub mod docs;
pub mod retry;
pub mod source;
pub mod state;
