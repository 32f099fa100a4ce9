//! Message templates in Liquid (the language Braze, Knock and Customer.io templates are written
//! in), through the `liquid` crate family: compiled once when the configuration loads, rendered
//! per message against the user's profile and the triggering event.
//!
//! Sandboxed: the language has no `include` or `render` (no partials, no file access), the
//! output is capped, and a variable that is not there renders as nothing (as Liquid's own lax
//! mode does) so `{{traits.first_name}}` and `{{ traits.x | default: "there" }}` behave as the
//! templates before Liquid did.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::sync::{Arc, LazyLock};

use liquid_core::model::{KString, KStringCow, KStringRef, Object, ScalarCow, Value, ValueCow};
use liquid_core::parser::{Language, ParseBlock, ParseFilter, ParseTag};
use liquid_core::runtime::{PartialStore, Registers, Renderable, Runtime, RuntimeBuilder};
use liquid_lib::stdlib;
use serde_json::Map;

use super::template_reach::{reach, Reach};
use super::user_profile::TraitLookup;

/// The tags, blocks and filters of Liquid's standard library, without `include` and `render`.
static LANGUAGE: LazyLock<Language> = LazyLock::new(|| {
    let mut l = Language::empty();
    let tags: Vec<Box<dyn ParseTag>> = vec![
        Box::new(stdlib::AssignTag),
        Box::new(stdlib::BreakTag),
        Box::new(stdlib::ContinueTag),
        Box::new(stdlib::CycleTag),
        Box::new(stdlib::IncrementTag),
        Box::new(stdlib::DecrementTag),
    ];
    for t in tags {
        l.tags.register(t.reflection().tag().to_owned(), t);
    }
    let blocks: Vec<Box<dyn ParseBlock>> = vec![
        Box::new(stdlib::RawBlock),
        Box::new(stdlib::IfBlock),
        Box::new(stdlib::UnlessBlock),
        Box::new(stdlib::IfChangedBlock),
        Box::new(stdlib::ForBlock),
        Box::new(stdlib::TableRowBlock),
        Box::new(stdlib::CommentBlock),
        Box::new(stdlib::CaptureBlock),
        Box::new(stdlib::CaseBlock),
    ];
    for b in blocks {
        l.blocks.register(b.reflection().start_tag().to_owned(), b);
    }
    let filters: Vec<Box<dyn ParseFilter>> = vec![
        Box::new(stdlib::Abs),
        Box::new(stdlib::Append),
        Box::new(stdlib::AtLeast),
        Box::new(stdlib::AtMost),
        Box::new(stdlib::Capitalize),
        Box::new(stdlib::Ceil),
        Box::new(stdlib::Compact),
        Box::new(stdlib::Concat),
        Box::new(stdlib::Date),
        Box::new(stdlib::Default),
        Box::new(stdlib::DividedBy),
        Box::new(stdlib::Downcase),
        Box::new(stdlib::Escape),
        Box::new(stdlib::EscapeOnce),
        Box::new(stdlib::First),
        Box::new(stdlib::Floor),
        Box::new(stdlib::Join),
        Box::new(stdlib::Last),
        Box::new(stdlib::Lstrip),
        Box::new(stdlib::Map),
        Box::new(stdlib::Minus),
        Box::new(stdlib::Modulo),
        Box::new(stdlib::NewlineToBr),
        Box::new(stdlib::Plus),
        Box::new(stdlib::Prepend),
        Box::new(stdlib::Remove),
        Box::new(stdlib::RemoveFirst),
        Box::new(stdlib::Replace),
        Box::new(stdlib::ReplaceFirst),
        Box::new(stdlib::Reverse),
        Box::new(stdlib::Round),
        Box::new(stdlib::Rstrip),
        Box::new(stdlib::Size),
        Box::new(stdlib::Slice),
        Box::new(stdlib::Sort),
        Box::new(stdlib::SortNatural),
        Box::new(stdlib::Split),
        Box::new(stdlib::Strip),
        Box::new(stdlib::StripHtml),
        Box::new(stdlib::StripNewlines),
        Box::new(stdlib::Times),
        Box::new(stdlib::Truncate),
        Box::new(stdlib::TruncateWords),
        Box::new(stdlib::Uniq),
        Box::new(stdlib::Upcase),
        Box::new(stdlib::UrlDecode),
        Box::new(stdlib::UrlEncode),
        Box::new(stdlib::Where),
    ];
    for f in filters {
        l.filters.register(f.reflection().name().to_owned(), f);
    }
    l
});

/// A compiled template. Cheap to clone (the compiled form is shared).
#[derive(Clone)]
pub struct Template {
    source: Arc<str>,
    compiled: Arc<liquid_core::runtime::Template>,
    /// Which of the (costlier) globals the source can reach, and of `traits` and `events`
    /// which members (`template_reach`): a root variable is named literally in the source,
    /// or it cannot be read.
    traits: Reach,
    events: Reach,
    needs_event: bool,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.source)
    }
}

impl PartialEq for Template {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// A template that does not compile: Liquid's message, with the line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// Why a message's template did not render (the message is `failed` with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("the rendered text exceeds limits.max_message_body_bytes ({0} bytes)")]
    TooLong(usize),
    #[error("the template did not render: {0}")]
    Liquid(String),
}

/// The triggering event as a template sees it (`event.name`, `event.properties`).
#[derive(Debug, Clone, Copy)]
pub struct TriggerEvent<'a> {
    pub name: &'a str,
    pub properties: Option<&'a Map<String, serde_json::Value>>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        check_integer_literals(text)?;
        let liquid = quote_trait_names(text);
        let elements = liquid_core::parser::parse(&liquid, &LANGUAGE)
            .map_err(|e| TemplateError(e.to_string().trim().to_string()))?;
        Ok(Template {
            source: Arc::from(text),
            compiled: Arc::new(liquid_core::runtime::Template::new(elements)),
            traits: reach(&liquid, "traits"),
            events: reach(&liquid, "events"),
            needs_event: text.contains("event"),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the source can read the triggering event (`event.name`, `event.properties`).
    pub fn reads_event(&self) -> bool {
        self.needs_event
    }

    /// Renders for `user_id` with `profile` (as it stands right after the trigger) and the
    /// triggering event; at most `max_bytes` of output.
    pub fn render(
        &self,
        user_id: &str,
        profile: &impl TraitLookup,
        event: Option<TriggerEvent<'_>>,
        max_bytes: usize,
    ) -> Result<String, RenderError> {
        let mut globals = Object::new();
        globals.insert("userId".into(), Value::scalar(user_id.to_string()));
        if self.traits != Reach::Nothing {
            let mut traits = Object::new();
            if let Reach::Members(names) = &self.traits {
                for name in names {
                    if let Some(v) = profile.trait_value(name) {
                        traits.insert(KString::from_ref(name), json_value(&v));
                    }
                }
            } else {
                profile.each_trait(&mut |k, v| {
                    traits.insert(KString::from_ref(k), json_value(v));
                });
            }
            globals.insert("traits".into(), Value::Object(traits));
        }
        if self.events != Reach::Nothing {
            let mut events = Object::new();
            profile.each_event(&mut |name, stats| {
                if let Reach::Members(names) = &self.events {
                    if !names.iter().any(|n| n == name) {
                        return;
                    }
                }
                let mut o = Object::new();
                o.insert("count".into(), Value::scalar(stats.count));
                o.insert("first_at".into(), Value::scalar(rfc3339(stats.first_at)));
                o.insert("last_at".into(), Value::scalar(rfc3339(stats.last_at)));
                events.insert(KString::from_ref(name), Value::Object(o));
            });
            globals.insert("events".into(), Value::Object(events));
        }
        if let (true, Some(e)) = (self.needs_event, event) {
            let mut o = Object::new();
            o.insert("name".into(), Value::scalar(e.name.to_string()));
            let properties = e
                .properties
                .map(|p| {
                    p.iter()
                        .map(|(k, v)| (KString::from_ref(k), json_value(v)))
                        .collect::<Object>()
                })
                .unwrap_or_default();
            o.insert("properties".into(), Value::Object(properties));
            globals.insert("event".into(), Value::Object(o));
        }
        let runtime = Lax(RuntimeBuilder::new().set_globals(&globals).build());
        let mut out = Capped {
            // Room for about what the source holds (placeholders replaced by short values):
            // the text is not grown a doubling at a time from a few bytes.
            buf: Vec::with_capacity((self.source.len() + self.source.len() / 2).min(max_bytes)),
            max: max_bytes,
            over: false,
        };
        match self.compiled.render_to(&mut out, &runtime) {
            Ok(()) => {}
            Err(_) if out.over => return Err(RenderError::TooLong(max_bytes)),
            Err(e) => return Err(RenderError::Liquid(e.to_string().trim().to_string())),
        }
        // Liquid writes only what it was given and its own text, all UTF-8; a cut never
        // happens (the cap refuses a write whole).
        String::from_utf8(out.buf).map_err(|e| RenderError::Liquid(e.to_string()))
    }
}

/// The placeholders of the templates before Liquid named any trait: `{{traits.<name>}}` with a
/// name Liquid cannot write after a dot (`日本`, `first name`) is rewritten to Liquid's
/// `{{traits["<name>"]}}`, so it renders as it did. Names Liquid reads (`first_name`,
/// `address.city`: nested) are left as they are.
fn quote_trait_names(text: &str) -> std::borrow::Cow<'_, str> {
    let mut out = String::new();
    let mut rest = text;
    let mut changed = false;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            break;
        };
        let inner = after[..close].trim();
        let trait_name = inner
            .strip_prefix("traits.")
            .filter(|n| !n.is_empty() && !n.contains(['"', '|', '[', ']', '{', '}']));
        out.push_str(&rest[..open]);
        // Rewritten only where the text differs from Liquid's (a tab inside the braces, a
        // name Liquid cannot write after a dot); everything else is copied as it is.
        let rewritten = match trait_name {
            Some(n) if !n.split('.').all(is_liquid_identifier) => {
                Some(format!("{{{{ traits[\"{n}\"] }}}}"))
            }
            Some(n) => Some(format!("{{{{ traits.{n} }}}}")),
            None if inner == "userId" => Some("{{ userId }}".to_string()),
            None => None,
        };
        match rewritten {
            Some(r) => {
                changed = true;
                out.push_str(&r);
            }
            None => out.push_str(&rest[open..open + 2 + close + 2]),
        }
        rest = &after[close + 2..];
    }
    if !changed {
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Refuses an integer literal inside `{{ }}` or `{% %}` that does not fit 64 bits: the `liquid`
/// parser reads its integers with an `expect`, so `{{ 99999999999999999999 }}` would panic
/// inside it instead of failing to compile. Quoted strings are skipped; digits inside a name
/// (`a1`, `x-9`) or a float (`1.5`) are not integer literals. (A fix belongs in `liquid_core`
/// itself; until it has one, this check stands in front of it.)
fn check_integer_literals(text: &str) -> Result<(), TemplateError> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = match after.as_bytes().first() {
            Some(b'{') => "}}",
            Some(b'%') => "%}",
            _ => {
                rest = after;
                continue;
            }
        };
        let body = &after[1..];
        let end = find_markup_end(body, close).unwrap_or(body.len());
        if let Some((at, literal)) = oversized_integer(&body[..end]) {
            let offset = text.len() - body.len() + at;
            let before = &text[..offset];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            return Err(TemplateError(format!(
                "line {line}, column {column}: the integer {literal} does not fit 64 bits \
                 (write it as a string or a float)"
            )));
        }
        rest = &body[end..];
    }
    Ok(())
}

/// Where a markup's closing delimiter is, skipping quoted strings (as Liquid's lexer does).
fn find_markup_end(body: &str, close: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'"' | b'\'') => match body[i + 1..].find(q as char) {
                Some(n) => i += n + 2,
                None => return None,
            },
            _ if bytes[i..].starts_with(close.as_bytes()) => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Reads a markup's tokens as Liquid's grammar does (strings, names, numbers, the rest one
/// character at a time): the first integer that does not fit an `i64`, with its offset.
fn oversized_integer(markup: &str) -> Option<(usize, &str)> {
    let bytes = markup.as_bytes();
    let digit_at = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    let digits_from = |mut i: usize| {
        while digit_at(i) {
            i += 1;
        }
        i
    };
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' || b == b'\'' {
            i += markup[i + 1..]
                .find(b as char)
                .map_or(bytes.len(), |n| n + 2);
        } else if b.is_ascii_digit() || (b == b'-' || b == b'+') && digit_at(i + 1) {
            // A literal: `[+-]digits` is an integer, `[+-]digits.digits` a float.
            let start = i;
            let end = digits_from(i + 1);
            if bytes.get(end) == Some(&b'.') && digit_at(end + 1) {
                i = digits_from(end + 1);
                continue;
            }
            i = end;
            let literal = &markup[start..end];
            if literal.parse::<i64>().is_err() {
                return Some((start, literal));
            }
        } else if b.is_ascii_alphabetic() || b == b'_' || b == b'-' {
            // A name: letters, digits, `_` and `-` (`a1`, `x-99` are names, not numbers).
            i += 1;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'-')
            {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    None
}

fn is_liquid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn json_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::scalar(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::scalar(i),
            None => Value::scalar(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::scalar(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(json_value).collect()),
        serde_json::Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (KString::from_ref(k), json_value(v)))
                .collect(),
        ),
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A writer that refuses to grow past `max` bytes.
struct Capped {
    buf: Vec<u8>,
    max: usize,
    over: bool,
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.max {
            self.over = true;
            return Err(std::io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Liquid's lax mode: a variable or index that is not there is nil rather than an error.
struct Lax<R>(R);

impl<R: Runtime> Runtime for Lax<R> {
    fn partials(&self) -> &dyn PartialStore {
        self.0.partials()
    }

    fn name(&self) -> Option<KStringRef<'_>> {
        self.0.name()
    }

    fn roots(&self) -> BTreeSet<KStringCow<'_>> {
        self.0.roots()
    }

    fn try_get(&self, path: &[ScalarCow<'_>]) -> Option<ValueCow<'_>> {
        self.0.try_get(path)
    }

    fn get(&self, path: &[ScalarCow<'_>]) -> liquid_core::Result<ValueCow<'_>> {
        Ok(self.0.try_get(path).unwrap_or(ValueCow::Owned(Value::Nil)))
    }

    fn set_global(&self, name: KString, val: Value) -> Option<Value> {
        self.0.set_global(name, val)
    }

    fn set_index(&self, name: KString, val: Value) -> Option<Value> {
        self.0.set_index(name, val)
    }

    fn get_index<'a>(&'a self, name: &str) -> Option<ValueCow<'a>> {
        self.0.get_index(name)
    }

    fn registers(&self) -> &Registers {
        self.0.registers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::user_profile::{EventStats, UserProfile};
    use serde_json::json;

    fn profile(traits: serde_json::Value) -> UserProfile {
        let mut p = UserProfile::default();
        for (k, v) in traits.as_object().unwrap() {
            p.traits.insert(k.clone(), v.clone());
        }
        p
    }

    fn render(t: &str, p: &UserProfile) -> Result<String, RenderError> {
        Template::parse(t).unwrap().render("u-1", p, None, 1000)
    }

    #[test]
    fn the_placeholders_before_liquid_render_as_before() {
        let p = profile(json!({"first_name": "Ada", "n": 3}));
        assert_eq!(
            render(
                "Hi {{traits.first_name}}{{ traits.last }} ({{userId}}) {{traits.n}}",
                &p
            )
            .unwrap(),
            "Hi Ada (u-1) 3"
        );
    }

    #[test]
    fn an_integer_literal_past_64_bits_is_a_compile_error_not_a_panic() {
        for t in [
            "{{ 444444444444444444444444444444444444444444444444444444444444444444444 }}",
            "{{ traits.n | plus: 9223372036854775808 }}",
            "{% if traits.n > -9223372036854775809 %}x{% endif %}",
            "{{ traits.list[99999999999999999999] }}",
            "{% for i in (1..99999999999999999999) %}{% endfor %}",
            "{{ +9223372036854775808 }}",
        ] {
            let e = Template::parse(t).unwrap_err();
            assert!(e.0.contains("does not fit 64 bits"), "{t}: {e}");
        }
        assert_eq!(
            Template::parse("Hi\n  {{ traits.n | plus: 99999999999999999999 }}")
                .unwrap_err()
                .0,
            "line 2, column 23: the integer 99999999999999999999 does not fit 64 bits \
             (write it as a string or a float)"
        );
        // Still integers, floats, names, paths and strings, and text outside the markup.
        for t in [
            "{{ traits.n | plus: 9223372036854775807 }}{{ -9223372036854775808 }}",
            "{{ 99999999999999999999.5 }}{{ 1.99999999999999999999 }}",
            "{{ traits.a99999999999999999999 }}{{ traits.x-99999999999999999999 }}",
            "{{ traits.a--99999999999999999999 }}{% for i in (1..3) %}{% endfor %}",
            "{{ \"99999999999999999999\" }}{% if traits.s == '99999999999999999999' %}{% endif %}",
            "99999999999999999999 {{ userId }} 99999999999999999999",
        ] {
            Template::parse(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        }
    }

    #[test]
    fn trait_names_liquid_cannot_write_after_a_dot_still_render() {
        let p = profile(json!({"日本": "x", "first name": "Ada", "n": 12.5}));
        assert_eq!(
            render("{{traits.日本}}-{{ traits.first name }}-{{traits.n}}", &p).unwrap(),
            "x-Ada-12.5"
        );
    }

    #[test]
    fn a_template_handed_only_the_members_it_names_renders_as_with_all_of_them() {
        let mut p = profile(json!({
            "first_name": "Ada", "address": {"city": "Oslo"}, "日本": "x", "vip": true,
            "n": 3, "size": 9, "tags": ["a", "b"], "first name": "Ada L."
        }));
        for (name, count) in [("bought", 2), ("signed_up", 1), ("size", 5)] {
            let stats = EventStats {
                count,
                first_at: 0,
                last_at: 1_000,
            };
            p.events.insert(name.into(), stats);
        }
        let sources = [
            "Hi {{traits.first_name}}, {{ traits.address.city }} {{ traits.日本 }}",
            "{{traits.first name}} {{ traits['日本'] }} {{ traits.missing | default: \"there\" }}",
            "{% if traits.vip %}VIP {{ traits.n | plus: 1 }}{% endif %} {{ traits.tags | join: \",\" }}",
            "{{ traits.size }} {{ traits.first }} {{ events.size.count }} {{ events.bought.count }}",
            // (Liquid's objects iterate in no fixed order: the loops pick a member.)
            "{% for t in traits %}{% if t[0] == \"vip\" %}{{ t[1] }}{% endif %}{% endfor %}",
            "{% for e in events %}{% if e[0] == \"bought\" %}{{ e[1].count }}{% endif %}{% endfor %} {{ events.signed_up.last_at }}",
            "{{ events.bought.count }} {{ events.signed_up.first_at }} {{ events.none.count }}",
            "{% assign k = \"vip\" %}{{ traits[k] }} {{ traits | size }}",
            "your traits: {{ traits.first_name }}",
        ];
        for source in sources {
            let narrow = Template::parse(source).unwrap();
            let wide = Template {
                traits: Reach::Everything,
                events: Reach::Everything,
                ..narrow.clone()
            };
            assert_eq!(
                narrow.render("u-1", &p, None, 1000),
                wide.render("u-1", &p, None, 1000),
                "{source}"
            );
        }
        // The first ones do reach less (else this test would show nothing).
        assert!(matches!(
            Template::parse(sources[0]).unwrap().traits,
            Reach::Members(_)
        ));
        assert!(matches!(
            Template::parse(sources[6]).unwrap().events,
            Reach::Members(_)
        ));
    }

    #[test]
    fn filters_defaults_conditionals_and_the_event() {
        let mut p = profile(json!({"plan": "pro", "name": "ada lovelace"}));
        p.events.insert(
            "bought".into(),
            EventStats {
                count: 2,
                first_at: 0,
                last_at: 1_000,
            },
        );
        assert_eq!(
            render("{{ traits.first_name | default: \"there\" }}", &p).unwrap(),
            "there"
        );
        assert_eq!(
            render(
                "{% if traits.plan == \"pro\" %}Pro{% else %}Free{% endif %} {{ traits.name | capitalize }} {{ events.bought.count }}",
                &p
            )
            .unwrap(),
            "Pro Ada lovelace 2"
        );
        let props = json!({"amount": 12.5, "items": ["a", "b"]});
        let t = Template::parse(
            "{{ event.name }}: {{ event.properties.amount }} for {{ event.properties.items | join: \", \" }}{{ event.properties.none.deeper }}",
        )
        .unwrap();
        let event = TriggerEvent {
            name: "bought",
            properties: props.as_object(),
        };
        assert_eq!(
            t.render("u", &p, Some(event), 1000).unwrap(),
            "bought: 12.5 for a, b"
        );
    }

    #[test]
    fn errors_are_named_and_output_is_capped() {
        let e = Template::parse("Hi {% if traits.x %}").unwrap_err();
        assert!(!e.0.is_empty());
        assert!(Template::parse("{% include 'x' %}").is_err(), "no partials");
        assert!(Template::parse("{{ traits.x | no_such_filter }}").is_err());
        let p = profile(json!({"s": "x".repeat(600)}));
        assert_eq!(
            render("{{traits.s}}{{traits.s}}", &p),
            Err(RenderError::TooLong(1000))
        );
        // A filter given the wrong type fails at render time, as an error, not a panic.
        let r = render("{{ traits.s | divided_by: 0 }}", &p);
        assert!(matches!(r, Err(RenderError::Liquid(_))), "{r:?}");
    }
}
