//! The common shape of an event's `timestamp`, `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, read without
//! a general RFC 3339 parser. Anything else (offsets, lower-case letters, leap seconds) is left
//! to the general one: [`utc_millis`] answers `None` for it.

/// Milliseconds since the Unix epoch of a UTC timestamp in the common shape, the fraction
/// truncated to milliseconds; `None` if `text` has another shape or names no valid time.
pub fn utc_millis(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut millis = 0;
    let rest = &b[19..b.len() - 1];
    if !rest.is_empty() {
        // A '.' and one or more digits; the first three are the milliseconds.
        if rest[0] != b'.' || rest.len() < 2 || !rest[1..].iter().all(u8::is_ascii_digit) {
            return None;
        }
        for i in 0..3 {
            millis = millis * 10 + rest.get(1 + i).map_or(0, |&c| i64::from(c - b'0'));
        }
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chrono_millis(text: &str) -> Option<i64> {
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    #[test]
    fn reads_the_common_shape_and_leaves_the_rest() {
        assert_eq!(utc_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(utc_millis("2026-11-23T10:00:00Z"), Some(1_795_428_000_000));
        assert_eq!(
            utc_millis("2026-11-23T10:00:00.1234Z"),
            Some(1_795_428_000_123)
        );
        assert_eq!(
            utc_millis("2024-02-29T23:59:59.9Z"),
            chrono_millis("2024-02-29T23:59:59.9Z")
        );
        assert_eq!(utc_millis("1969-12-31T23:59:59.500Z"), Some(-500));
        for other in [
            "2026-11-23T10:00:00+01:00",
            "2026-11-23t10:00:00z",
            "2026-11-23 10:00:00Z",
            "2023-02-29T00:00:00Z",
            "2026-11-23T10:00:60Z",
            "2026-11-23T10:00:00.Z",
            "2026-11-23T24:00:00Z",
            "2026-13-01T00:00:00Z",
            "+2026-11-23T10:00:00Z",
            "2026-11-23T10:00:00",
        ] {
            assert_eq!(utc_millis(other), None, "{other}");
        }
    }

    proptest! {
        /// Whatever the fast path reads, it reads as chrono's RFC 3339 parser does.
        #[test]
        fn agrees_with_chrono(
            ms in -62_135_596_800_000i64..253_402_300_799_000,
            fraction in prop_oneof![Just(""), Just(".5"), Just(".123"), Just(".123456789")],
        ) {
            let t = chrono::DateTime::from_timestamp_millis(ms).unwrap();
            let text = format!("{}{fraction}Z", t.format("%Y-%m-%dT%H:%M:%S"));
            prop_assert_eq!(utc_millis(&text), chrono_millis(&text));
            prop_assert!(utc_millis(&text).is_some());
        }

        /// Any text: the fast path answers nothing or chrono's answer.
        #[test]
        fn never_disagrees(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,4})?Z?") {
            if let Some(ms) = utc_millis(&text) {
                prop_assert_eq!(Some(ms), chrono_millis(&text));
            }
        }
    }
}
