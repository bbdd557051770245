//! Figures as people read them in the text output of the `quorrent`
//! commands (never in `--json`, which keeps exact bytes and numbers):
//! sizes with binary prefixes and one decimal (`286.1 MiB`), rates
//! (`12.3 MiB/s`), durations (`4.2 s`, `3 min 05 s`, `1 h 02 min`,
//! `7 days`) and
//! counts with a noun that agrees in number (`1 peer`, `2 peers`).

use std::time::Duration;

const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];

/// `bytes` in the largest binary unit under which it is at least 1, with
/// one decimal: `0 B`, `1023 B`, `1.0 KiB`, `286.1 MiB`.
pub fn size(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Moves up when the value would print as 1024.0 of a unit.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A rate in bytes per second: `12.3 MiB/s` (`0 B/s` when not a positive
/// number).
pub fn rate(bytes_per_sec: f64) -> String {
    if !(bytes_per_sec.is_finite() && bytes_per_sec > 0.0) {
        return "0 B/s".into();
    }
    format!("{}/s", size(bytes_per_sec.round() as u64))
}

/// A duration in seconds: `0.4 s`, `59.9 s`, `3 min 05 s`, `1 h 02 min`,
/// `2 days 3 h`.
pub fn duration(seconds: f64) -> String {
    if !(seconds.is_finite() && seconds > 0.0) {
        return "0.0 s".into();
    }
    if seconds < 59.95 {
        return format!("{seconds:.1} s");
    }
    let whole = seconds.round() as u64;
    if whole < 3600 {
        return format!("{} min {:02} s", whole / 60, whole % 60);
    }
    let minutes = whole / 60;
    if minutes < 48 * 60 {
        return format!("{} h {:02} min", minutes / 60, minutes % 60);
    }
    let hours = minutes / 60;
    match hours % 24 {
        0 => count(hours / 24, "day", "days"),
        h => format!("{} {h} h", count(hours / 24, "day", "days")),
    }
}

/// [`duration`] of a [`Duration`].
pub fn elapsed(d: Duration) -> String {
    duration(d.as_secs_f64())
}

/// `n` and the noun that agrees with it: `count(1, "peer", "peers")` is
/// `1 peer`, `count(0, ...)` is `0 peers`.
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// [`count`] of a `usize`.
pub fn count_usize(n: usize, one: &str, many: &str) -> String {
    count(n as u64, one, many)
}

/// The style of a bar over bytes: `{size}`, `{total_size}`, `{rate}` and
/// `{time_left}` in these units, beside indicatif's own keys.
pub fn bar_style(template: &str) -> Option<indicatif::ProgressStyle> {
    let style = indicatif::ProgressStyle::with_template(template).ok()?;
    Some(
        style
            .with_key("size", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&size(s.pos()));
            })
            .with_key(
                "total_size",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&size(s.len().unwrap_or(0)));
                },
            )
            .with_key("rate", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&rate(s.per_sec()));
            })
            .with_key(
                "time_left",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&elapsed(s.eta()));
                },
            )
            .progress_chars("=> "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_prefixes_and_one_decimal() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1), "1 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(300_000_000), "286.1 MiB");
        assert_eq!(size(512 << 20), "512.0 MiB");
        assert_eq!(size((1 << 20) - 1), "1.0 MiB", "never 1024.0 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
        assert_eq!(size(5 << 40), "5.0 TiB");
        assert_eq!(size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn rates_are_sizes_per_second() {
        assert_eq!(rate(12.3 * 1024.0 * 1024.0), "12.3 MiB/s");
        assert_eq!(rate(100.0), "100 B/s");
        assert_eq!(rate(0.0), "0 B/s");
        assert_eq!(rate(f64::NAN), "0 B/s");
        assert_eq!(rate(-5.0), "0 B/s");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0.0), "0.0 s");
        assert_eq!(duration(0.42), "0.4 s");
        assert_eq!(duration(12.345), "12.3 s");
        assert_eq!(duration(59.96), "1 min 00 s");
        assert_eq!(duration(185.0), "3 min 05 s");
        assert_eq!(duration(3600.0 + 125.0), "1 h 02 min");
        assert_eq!(duration(86400.0), "24 h 00 min");
        assert_eq!(duration(7.0 * 86400.0), "7 days");
        assert_eq!(duration(2.0 * 86400.0 + 3.0 * 3600.0 + 59.0), "2 days 3 h");
        assert_eq!(duration(f64::INFINITY), "0.0 s");
        assert_eq!(elapsed(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn counts_agree_in_number() {
        assert_eq!(count(1u32, "peer", "peers"), "1 peer");
        assert_eq!(count(2u32, "peer", "peers"), "2 peers");
        assert_eq!(count(0u32, "file", "files"), "0 files");
        assert_eq!(count(1u64, "chunk", "chunks"), "1 chunk");
        assert_eq!(count_usize(3, "owner", "owners"), "3 owners");
    }

    #[test]
    fn bar_styles_parse() {
        assert!(bar_style("{bar:40} {size}/{total_size} {rate} ETA {time_left} {msg}").is_some());
    }
}
