//! Small helpers for showing received messages to a person: a UTC time from Unix seconds, and
//! text with terminal control characters escaped (a sender controls the text it sends).

/// `2026-11-27 09:30:00 UTC` from Unix seconds (civil-from-days, proleptic Gregorian).
pub fn utc_time(unix_s: u64) -> String {
    let days = i64::try_from(unix_s / 86_400).unwrap_or(i64::MAX / 2);
    let secs = unix_s % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `text` with every control character but newline and tab written as `\u{…}`, so that a
/// message cannot move the cursor, clear the screen or retitle the terminal.
pub fn safe_for_terminal(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_time_formats_known_instants() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(1_764_000_000), "2025-11-24 16:00:00 UTC");
        assert_eq!(utc_time(951_825_600), "2000-02-29 12:00:00 UTC");
        assert_eq!(utc_time(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn terminal_escapes_are_neutralized() {
        assert_eq!(safe_for_terminal("a\u{1b}[2Jb\nc\td"), "a\\u{1b}[2Jb\nc\td");
        assert_eq!(
            safe_for_terminal("hello bob — meet at 6?"),
            "hello bob — meet at 6?"
        );
    }
}
