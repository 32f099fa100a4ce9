//! The layering behind [`Config::load`](super::Config::load): files read and parsed into
//! TOML, tables deep-merged, `HERALD__…` variables typed like the defaults, and the provenance
//! (file or variable) of every key, for error messages.

use std::collections::HashMap;
use std::path::Path;

use toml::Value;

use super::ConfigError;

pub(super) fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            path.display().to_string(),
            "(file)",
            format!("cannot read: {e}"),
        )
    })
}

pub(super) fn parse_layer(name: &str, text: &str) -> Result<Value, ConfigError> {
    text.parse::<toml::Table>().map(Value::Table).map_err(|e| {
        let problem = e.message().to_string();
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start].lines().count().max(1);
                format!("line {line}")
            })
            .unwrap_or_else(|| "(syntax)".into());
        ConfigError::new(name, at, problem)
    })
}

/// Deep-merges tables; anything else (including arrays of tables) is replaced whole.
pub(super) fn merge(
    into: &mut Value,
    layer: Value,
    prefix: &str,
    source: &str,
    prov: &mut HashMap<String, String>,
) {
    match (into, layer) {
        (Value::Table(dst), Value::Table(src)) => {
            for (k, v) in src {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match dst.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => {
                        merge(existing, v, &path, source, prov)
                    }
                    _ => {
                        record_provenance(&v, &path, source, prov);
                        dst.insert(k, v);
                    }
                }
            }
        }
        (dst, src) => *dst = src,
    }
}

fn record_provenance(v: &Value, path: &str, source: &str, prov: &mut HashMap<String, String>) {
    prov.insert(path.to_string(), source.to_string());
    if let Value::Table(t) = v {
        for (k, child) in t {
            record_provenance(child, &format!("{path}.{k}"), source, prov);
        }
    }
}

pub(super) fn lookup_provenance(prov: &HashMap<String, String>, key: &str) -> String {
    // serde_path_to_error renders array indices as `campaigns[0].x`; provenance is per table key.
    let mut k = key.split('[').next().unwrap_or(key).to_string();
    loop {
        if let Some(s) = prov.get(&k) {
            return s.clone();
        }
        match k.rfind('.') {
            Some(i) => k.truncate(i),
            None => return "configuration".to_string(),
        }
    }
}

/// Types an environment value like the default at the same path (integers stay integers).
pub(super) fn env_value(defaults: &Value, path: &[String], raw: &str) -> Value {
    let mut cur = Some(defaults);
    for p in path {
        cur = cur.and_then(|v| v.get(p.as_str()));
    }
    match cur {
        Some(Value::Integer(_)) => raw
            .trim()
            .parse()
            .map(Value::Integer)
            .unwrap_or_else(|_| Value::String(raw.into())),
        Some(Value::Float(_)) => raw
            .trim()
            .parse()
            .map(Value::Float)
            .unwrap_or_else(|_| Value::String(raw.into())),
        Some(Value::Boolean(_)) => raw
            .trim()
            .parse()
            .map(Value::Boolean)
            .unwrap_or_else(|_| Value::String(raw.into())),
        _ => Value::String(raw.to_string()),
    }
}

pub(super) fn set_path(root: &mut Value, path: &[String], value: Value) {
    let mut cur = root;
    for p in &path[..path.len() - 1] {
        let Value::Table(t) = cur else { return };
        cur = t
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Default::default()));
        if !cur.is_table() {
            *cur = Value::Table(Default::default());
        }
    }
    if let Value::Table(t) = cur {
        t.insert(path[path.len() - 1].clone(), value);
    }
}
