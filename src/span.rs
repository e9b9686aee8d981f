//! Spans of time as users type them: `90s`, `30m`, `12h`, `7d`, `2w`.
//! One grammar for every place that takes one (token expiry, a preview's
//! idle limit, a sync's interval); each caller bounds it and words its own
//! refusal.

/// Digits, then exactly one unit of `s`, `m`, `h`, `d` or `w`, as seconds.
/// None for anything else, including an overflow.
pub fn parse_secs(s: &str) -> Option<u64> {
    let unit_at = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(unit_at);
    if num.is_empty() {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::parse_secs;

    #[test]
    fn units_and_refusals() {
        assert_eq!(parse_secs("90s"), Some(90));
        assert_eq!(parse_secs("30m"), Some(1800));
        assert_eq!(parse_secs("12h"), Some(43_200));
        assert_eq!(parse_secs("7d"), Some(604_800));
        assert_eq!(parse_secs("2w"), Some(1_209_600));
        assert_eq!(parse_secs("0d"), Some(0));
        for bad in [
            "",
            "d",
            "7",
            "-1d",
            "+1d",
            "1.5h",
            "7y",
            "5é",
            "1dd",
            " 1d",
            "1d ",
            "99999999999999999999s",
            "99999999999999999w",
        ] {
            assert_eq!(parse_secs(bad), None, "{bad:?}");
        }
    }
}
