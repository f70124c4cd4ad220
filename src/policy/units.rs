//! The unit-bearing strings of the policy: durations, sizes and rates, both ways.

use std::time::Duration;

fn split_number(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    (&s[..end], s[end..].trim_start())
}

/// `"250ms"`, `"30s"`, `"5m"`, `"1h"`. Zero is refused: no timeout or interval in the policy means "never".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HOW: &str =
        "write a whole number followed by ms, s, m, h or d, like \"30s\", \"5m\" or \"90d\"";
    let t = s.trim();
    let (num, unit) = split_number(t);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration \"{s}\"; {HOW}"))?;
    let ms_per: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => return Err(format!("duration \"{s}\" has no unit; {HOW}")),
        _ => {
            return Err(format!(
                "unknown duration unit \"{unit}\" in \"{s}\"; {HOW}"
            ))
        }
    };
    if n == 0 {
        return Err(format!("duration \"{s}\" must be greater than zero"));
    }
    let ms = n
        .checked_mul(ms_per)
        .filter(|ms| *ms <= 365 * 24 * 3_600_000)
        .ok_or_else(|| format!("duration \"{s}\" is too long; use at most a year"))?;
    Ok(Duration::from_millis(ms))
}

/// `"512m"`, `"1g"`, `"4MiB"`, `"64k"`, `"1000"`. Suffixes are binary (1024) like Docker's.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const HOW: &str =
        "write a number of bytes or a number followed by k, m or g (binary units), like \"512m\"";
    let t = s.trim();
    let (num, unit) = split_number(t);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size \"{s}\"; {HOW}"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("unknown size unit \"{unit}\" in \"{s}\"; {HOW}")),
    };
    if n == 0 {
        return Err(format!("size \"{s}\" must be greater than zero"));
    }
    n.checked_mul(mult)
        .ok_or_else(|| format!("size \"{s}\" is too large"))
}

/// `"120/min"`, `"10/s"`, `"1000/hour"`, `"5000/day"` -> (count, period).
pub fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    const HOW: &str = "write a count, a slash and a period (s, min, hour or day), like \"120/min\"";
    let (num, per) = s
        .trim()
        .split_once('/')
        .ok_or_else(|| format!("invalid rate \"{s}\"; {HOW}"))?;
    let count: u32 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid count in rate \"{s}\"; {HOW}"))?;
    if count == 0 {
        return Err(format!(
            "rate \"{s}\" allows no calls; use tools.deny to block a server's tools instead"
        ));
    }
    let secs = match per.trim() {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hr" | "hour" => 3_600,
        "d" | "day" => 86_400,
        other => return Err(format!("unknown rate period \"{other}\" in \"{s}\"; {HOW}")),
    };
    Ok((count, Duration::from_secs(secs)))
}

/// The shortest policy spelling of `d` (whole hours, minutes, seconds, else milliseconds).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1_000 == 0 {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// The shortest exact policy spelling of a byte count.
pub fn format_size(bytes: u64) -> String {
    for (unit, mult) in [
        ("t", 1u64 << 40),
        ("g", 1 << 30),
        ("m", 1 << 20),
        ("k", 1 << 10),
    ] {
        if bytes >= mult && bytes % mult == 0 {
            return format!("{}{unit}", bytes / mult);
        }
    }
    bytes.to_string()
}

/// `count/period` with the period spelled as in the policy.
pub fn format_rate(count: u32, per: Duration) -> String {
    let unit = match per.as_secs() {
        1 => "s".to_string(),
        60 => "min".to_string(),
        3_600 => "hour".to_string(),
        86_400 => "day".to_string(),
        _ => format_duration(per),
    };
    format!("{count}/{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration(" 1h "), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "30", "30x", "-5s", "1.5s", "0s", "99999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in ["", "m", "1x", "0", "-1m", "99999999999999999g"] {
            assert!(parse_size(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("120/min"), Ok((120, Duration::from_secs(60))));
        assert_eq!(parse_rate("10/s"), Ok((10, Duration::from_secs(1))));
        assert_eq!(
            parse_rate("1000/hour"),
            Ok((1000, Duration::from_secs(3600)))
        );
        assert_eq!(parse_rate("5/day"), Ok((5, Duration::from_secs(86400))));
        for bad in ["", "120", "0/min", "x/min", "10/week", "/s", "5000000000/s"] {
            assert!(parse_rate(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for s in ["250ms", "30s", "5m", "1h", "90s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
        for s in ["512m", "1g", "64k", "1000"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
        assert_eq!(format_rate(120, Duration::from_secs(60)), "120/min");
    }
}
