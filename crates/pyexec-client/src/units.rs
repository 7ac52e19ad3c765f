//! How durations and sizes are written and read: on the command lines (`pyexec
//! --timeout 90s`, `pyexecd --memory 256m`), in the server's messages and in `pyexec
//! --version`. Durations: a plain number of seconds or a suffix (`500ms`, `90s`, `2m`,
//! `1h`); sizes: bytes or a binary suffix (`64k`, `256m`, `1g`, also `MiB` style).
//! Measured sizes, which are rarely round (`pyexec --stats`), are written to a tenth of
//! their unit instead (`104.3 MiB`).

use std::time::Duration;

/// Parses `60`, `60s`, `500ms`, `2m`, `1h`, `1.5s`. A plain number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 60, 90s, 2m or 500ms)"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{s}' (use ms, s, m or h)"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 365.0 * 86400.0 {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way `parse_duration` takes it, to the millisecond (the wire's
/// precision): `60s`, `500ms`, `1.5s`, `1.25s`. The server's messages and `pyexec
/// --version` both write durations this way.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        let secs = format!("{}.{:03}", ms / 1000, ms % 1000);
        format!("{}s", secs.trim_end_matches('0'))
    }
}

/// Parses `1048576`, `64k`, `256m`, `1g`, `256MiB`, `1GB` (all binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (try 1048576, 64k, 256m or 1g)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown unit '{other}' in '{s}' (use k, m or g)")),
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is out of range"))
}

/// Formats a byte count the way the flags take it.
pub fn format_size(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (scale, unit) in UNITS {
        if n >= scale && n % scale == 0 {
            return format!("{} {unit}", n / scale);
        }
    }
    format!("{n} bytes")
}

/// Formats a measured byte count, to a tenth of the largest binary unit it reaches:
/// `12 bytes`, `1 byte`, `3.5 KiB`, `104.3 MiB`, `1.0 GiB`. For a reader, not for the
/// flags: unlike `format_size` it rounds.
pub fn format_size_approx(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    match n {
        1 => return "1 byte".into(),
        0..1024 => return format!("{n} bytes"),
        _ => {}
    }
    // The smallest unit whose rounded value stays under 1024 of it (1048575 bytes is
    // "1.0 MiB", not "1024.0 KiB"); the largest unit however big the value.
    let tenths = |scale: u64| (u128::from(n) * 10 + u128::from(scale) / 2) / u128::from(scale);
    let (scale, unit) = UNITS
        .iter()
        .rev()
        .copied()
        .find(|&(scale, _)| tenths(scale) < 10240)
        .unwrap_or(UNITS[0]);
    let t = tenths(scale);
    format!("{}.{} {unit}", t / 10, t % 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_they_are_read() {
        for (ms, text) in [
            (0, "0s"),
            (1, "1ms"),
            (500, "500ms"),
            (1000, "1s"),
            (1500, "1.5s"),
            (1250, "1.25s"),
            (60_001, "60.001s"),
            (60_000, "60s"),
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text).unwrap(), d, "{text}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("1t").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999g").is_err());
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size(1000), "1000 bytes");
    }

    #[test]
    fn measured_sizes() {
        for (n, text) in [
            (0, "0 bytes"),
            (1, "1 byte"),
            (12, "12 bytes"),
            (1023, "1023 bytes"),
            (1024, "1.0 KiB"),
            (3584, "3.5 KiB"),
            ((1 << 20) - 1, "1.0 MiB"),
            (109_366_477, "104.3 MiB"),
            (256 << 20, "256.0 MiB"),
            (1 << 30, "1.0 GiB"),
            (5 << 40, "5120.0 GiB"),
            (u64::MAX, "17179869184.0 GiB"),
        ] {
            assert_eq!(format_size_approx(n), text, "{n}");
        }
    }
}
