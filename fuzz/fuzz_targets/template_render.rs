//! Liquid templates (§12) rendered against hostile profiles and events: the fuzzer's bytes are
//! split into a template and a JSON profile; a template that compiles renders without a panic,
//! within the output cap, to the same length twice (an object rendered whole lists its keys
//! in the order of Liquid's own hash map, so not always the same text).
#![no_main]

use herald::domain::template::{RenderError, Template, TriggerEvent};
use herald::domain::user_profile::UserProfile;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

/// Templates worth starting from: the fuzzer mutates its way out of them.
const SEEDS: [&str; 4] = [
    "Hi {{ traits.first_name | default: \"there\" }}",
    "{% if traits.plan == \"pro\" %}{{ traits.plan | upcase }}{% endif %}",
    "{% for x in traits.list %}{{ x | append: event.properties.s }}{% endfor %}",
    "{{ event.properties.n | times: traits.n | divided_by: traits.d }}",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (head, json) = text.split_once('\u{0}').unwrap_or((text, "{}"));
    let template = match head.strip_prefix('#').and_then(|i| i.parse::<usize>().ok()) {
        Some(i) => SEEDS[i % SEEDS.len()].to_string(),
        None => head.to_string(),
    };
    // A range literal (`(1..1000000000)`) loops as long as the operator who wrote it asked:
    // templates are configuration, not input; the profile and the event are what is hostile.
    if template.contains("..") {
        return;
    }
    let Ok(t) = Template::parse(&template) else {
        return;
    };
    let value: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let mut profile = UserProfile::default();
    if let Some(o) = value.as_object() {
        for (k, v) in o {
            profile.traits.insert(k.clone(), v.clone());
        }
    }
    let event = TriggerEvent {
        name: "fuzzed",
        properties: value.as_object(),
    };
    let first = t.render("u-1", &profile, Some(event), MAX);
    if let Ok(out) = &first {
        assert!(out.len() <= MAX);
    }
    assert!(!matches!(first, Err(RenderError::TooLong(n)) if n != MAX));
    let second = t.render("u-1", &profile, Some(event), MAX);
    assert_eq!(
        first.as_ref().map(String::len),
        second.as_ref().map(String::len),
        "not deterministic"
    );
});
