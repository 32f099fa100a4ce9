//! Which members of a template's global objects (`traits`, `events`) its source can read.
//!
//! Rendering hands Liquid only those: a profile's every trait converted to a Liquid value
//! (each string copied, each name allocated) cost more than the rest of a short template's
//! render. The reading is conservative: a member is known only where the source names it
//! literally right after the object (`traits.first_name`, `traits.address.city` — the member
//! `address` —, `traits["日本"]`); any other mention of the object (a loop over it, `traits |
//! json`, a variable index, its `size`, `first` or `last`, the word in plain text) makes the
//! whole object reachable, as it always was.

/// What of one global object a template can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reach {
    /// The source never names the object.
    Nothing,
    /// Only these members, named literally.
    Members(Vec<String>),
    /// Possibly any member.
    Everything,
}

/// Members whose name Liquid reads as a property of the object itself, not a member.
const SPECIAL: [&str; 3] = ["size", "first", "last"];

/// How much of the global object `root` the Liquid source `liquid` can read.
pub(super) fn reach(liquid: &str, root: &str) -> Reach {
    let mut members: Vec<String> = Vec::new();
    let mut named = false;
    let mut from = 0;
    while let Some(found) = liquid[from..].find(root) {
        let at = from + found;
        let after = &liquid[at + root.len()..];
        from = at + root.len();
        match liquid[..at].chars().next_back() {
            // Part of a longer name, or a member of another object: not this root.
            Some(c) if is_name_char(c) || c == '.' => continue,
            // `events` is not `event` (nor a longer name `traitsX` this one).
            _ if after.chars().next().is_some_and(is_name_char) => continue,
            // A quoted `"traits"`: a string, which Liquid may use as an index: anything.
            Some('"' | '\'') => return Reach::Everything,
            _ => {}
        }
        named = true;
        match member(after) {
            Some(name) if !SPECIAL.contains(&name) => {
                if !members.iter().any(|m| m == name) {
                    members.push(name.to_string());
                }
            }
            _ => return Reach::Everything,
        }
    }
    if named {
        Reach::Members(members)
    } else {
        Reach::Nothing
    }
}

/// The member named right at the start of `after`: `.name` or `["name"]` / `['name']`.
fn member(after: &str) -> Option<&str> {
    if let Some(rest) = after.strip_prefix('.') {
        let end = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        // `traits.x?` or an empty name: not a plain member.
        if end == 0 || rest[end..].starts_with('?') {
            return None;
        }
        return Some(&rest[..end]);
    }
    let rest = after.strip_prefix('[')?;
    let quote = rest.chars().next().filter(|&c| c == '"' || c == '\'')?;
    let inner = &rest[1..];
    let end = inner.find(quote)?;
    inner[end + 1..].starts_with(']').then_some(&inner[..end])
}

/// A character of a Liquid identifier.
fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(names: &[&str]) -> Reach {
        Reach::Members(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn members_named_literally_are_all_a_template_reads() {
        assert_eq!(reach("Tap to reset.", "traits"), Reach::Nothing);
        assert_eq!(
            reach("Hi {{traits.first_name}} {{ traits.first_name }}", "traits"),
            members(&["first_name"])
        );
        assert_eq!(
            reach(
                r#"{{ traits.address.city }} {{ traits["日本"] }} {{traits['a b']}} {% if traits.vip %}*{% endif %}"#,
                "traits"
            ),
            members(&["address", "日本", "a b", "vip"])
        );
        assert_eq!(
            reach(
                "{{ traits.first-name | default: \"there\" }} {{ events.signed_up.count }}",
                "events"
            ),
            members(&["signed_up"])
        );
        // Other names that contain the root's are not it.
        assert_eq!(
            reach(
                "{{ event.name }} {{ event.properties.traits }} {{ mytraits }} {{ traits_x }}",
                "traits"
            ),
            Reach::Nothing
        );
        assert_eq!(reach("{{ event.name }}", "events"), Reach::Nothing);
    }

    #[test]
    fn any_other_mention_reaches_everything() {
        for source in [
            "{% for t in traits %}{{ t }}{% endfor %}",
            "{{ traits | json }}",
            "{{ traits }}",
            "{{ traits[k] }}",
            "{{ traits.size }}",
            "{{ traits.first }}",
            "{{ traits.last }}",
            "{{ traits.vip? }}",
            "{{ traits. }}",
            "{{ traits[\"unclosed }}",
            "{% assign t = \"traits\" %}",
            "your traits are shown",
            "{{ traits.a }} and then traits",
        ] {
            assert_eq!(reach(source, "traits"), Reach::Everything, "{source}");
        }
    }
}
