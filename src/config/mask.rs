//! Masking of secrets in the effective configuration `check-config` prints.

use toml::Value;

pub(super) fn mask_secrets(v: &mut Value) {
    match v {
        Value::String(s) => *s = mask_url_password(s),
        Value::Table(t) => t.iter_mut().for_each(|(k, v)| {
            // librdkafka secrets (`sasl.password`, `ssl.key.password`, ...) in kafka.options.
            if k.contains("password") || k.contains("secret") {
                *v = Value::String("****".into());
            } else {
                mask_secrets(v)
            }
        }),
        Value::Array(a) => a.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

/// `scheme://user:secret@host` → `scheme://user:****@host`.
pub fn mask_url_password(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_string();
    };
    let rest = &s[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return s.to_string();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}://{}:****{}",
            &s[..scheme_end],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => s.to_string(),
    }
}
