//! Resource limits of a release, typed when they are set.
//!
//! Limits come from two config vars, `CYGNI_MEMORY` (`512m`, `1g`, `256k`
//! or bytes) and `CYGNI_CPUS` (`0.5`, `2`). They are parsed here, once, by
//! `config:set`: a bad value is refused before it is stored, never
//! discovered in the middle of a deploy. A release keeps the parsed
//! [`Limits`] in its snapshot; backends read the typed values.

use std::collections::BTreeMap;

/// The config var that sets the memory limit.
pub const MEMORY_VAR: &str = "CYGNI_MEMORY";
/// The config var that sets the CPU limit.
pub const CPUS_VAR: &str = "CYGNI_CPUS";

/// The smallest memory limit: the Docker engine refuses less than 6 MiB.
const MIN_MEMORY: u64 = 6 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not a valid limit: {reason}")]
pub struct InvalidLimit {
    pub var: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// What one instance may use. `None` means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Bytes of memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Thousandths of a CPU (`0.5` → 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub millicpus: Option<u64>,
}

impl Limits {
    /// The limits a set of config vars asks for.
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<Limits, InvalidLimit> {
        Ok(Limits {
            memory_bytes: vars.get(MEMORY_VAR).map(|v| parse_memory(v)).transpose()?,
            millicpus: vars.get(CPUS_VAR).map(|v| parse_cpus(v)).transpose()?,
        })
    }

    /// Is `name` one of the vars that set limits?
    pub fn is_limit_var(name: &str) -> bool {
        name == MEMORY_VAR || name == CPUS_VAR
    }

    /// Nano-CPUs, as the Docker engine counts them.
    pub fn nano_cpus(&self) -> Option<i64> {
        self.millicpus
            .map(|m| i64::try_from(m.saturating_mul(1_000_000)).unwrap_or(i64::MAX))
    }
}

/// `512m`, `1g`, `256k`, `1gb` or plain bytes; at least 6m.
pub fn parse_memory(value: &str) -> Result<u64, InvalidLimit> {
    let bad = |reason| InvalidLimit {
        var: MEMORY_VAR,
        value: value.to_owned(),
        reason,
    };
    let v = value.trim().to_ascii_lowercase();
    let v = v.strip_suffix('b').unwrap_or(&v);
    let (digits, unit) = match v.char_indices().last() {
        Some((i, 'k')) => (&v[..i], 1u64 << 10),
        Some((i, 'm')) => (&v[..i], 1 << 20),
        Some((i, 'g')) => (&v[..i], 1 << 30),
        _ => (v, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| bad("use a number with k, m or g, e.g. 512m"))?;
    let bytes = n
        .checked_mul(unit)
        .filter(|b| *b <= i64::MAX as u64)
        .ok_or_else(|| bad("far too large"))?;
    if bytes < MIN_MEMORY {
        return Err(bad("the minimum is 6m"));
    }
    Ok(bytes)
}

/// A number of CPUs (`0.5`, `2`), between 0.01 and 1024, in millicpus.
pub fn parse_cpus(value: &str) -> Result<u64, InvalidLimit> {
    let bad = |reason| InvalidLimit {
        var: CPUS_VAR,
        value: value.to_owned(),
        reason,
    };
    let cpus: f64 = value
        .trim()
        .parse()
        .map_err(|_| bad("use a number of CPUs, e.g. 0.5"))?;
    if !(0.01..=1024.0).contains(&cpus) {
        return Err(bad("use between 0.01 and 1024"));
    }
    Ok((cpus * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limits() {
        assert_eq!(parse_memory("512m").unwrap(), 512 << 20);
        assert_eq!(parse_memory("1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1gb").unwrap(), 1 << 30);
        assert_eq!(parse_memory("10485760").unwrap(), 10 << 20);
        for bad in ["", "lots", "-5m", "1.5g", "1m", "99999999999999g"] {
            assert!(parse_memory(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_memory("1m").unwrap_err().to_string(),
            "CYGNI_MEMORY=\"1m\" is not a valid limit: the minimum is 6m"
        );
    }

    #[test]
    fn cpu_limits() {
        assert_eq!(parse_cpus("0.5").unwrap(), 500);
        assert_eq!(parse_cpus("2").unwrap(), 2000);
        for bad in ["", "0", "many", "2000", "NaN", "inf"] {
            assert!(parse_cpus(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_from_vars() {
        let vars = BTreeMap::from([
            ("CYGNI_MEMORY".to_owned(), "256m".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ]);
        let l = Limits::from_vars(&vars).unwrap();
        assert_eq!(l.memory_bytes, Some(256 << 20));
        assert_eq!(l.millicpus, None);
        let bad = BTreeMap::from([("CYGNI_CPUS".to_owned(), "lots".to_owned())]);
        assert!(Limits::from_vars(&bad).is_err());
        assert_eq!(
            Limits::default(),
            Limits::from_vars(&BTreeMap::new()).unwrap()
        );
    }
}
