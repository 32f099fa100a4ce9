//! Herald's HTTP listeners: the webhook receiver with `/metrics`, `/healthz` and `/readyz`,
//! the Segment-compatible ingest, and the read API.

pub mod api;
pub mod ingest;
pub mod server;

/// Keys from a comma-separated value (blanks around them and empty ones ignored): the write
/// keys of the ingest, the bearer keys of the read API.
pub fn key_list(value: &str) -> std::collections::HashSet<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_comma_separated() {
        let keys = super::key_list(" a, b ,,c");
        assert_eq!(keys.len(), 3);
        assert!(keys.contains("b"));
    }
}
