//! Config vars: the rules for names, values, sizes and limits, checked
//! before anything is stored, and the release that follows a change.
//!
//! Values are stored byte for byte and never appear in a process
//! argument, a log line or an error message: errors name the key only.

use std::collections::BTreeMap;

use super::{Access, Actor, Service, ServiceError};
use crate::deploy::ops::Outcome;
use crate::deploy::Progress;
use crate::limits::Limits;
use crate::names::AppName;
use crate::state;

/// Largest value, and largest total per app.
pub const MAX_VALUE: usize = 64 * 1024;
pub const MAX_TOTAL: usize = 512 * 1024;
/// Most vars one app may have.
pub const MAX_KEYS: usize = 1000;
/// Settings Cygni reads from the app's config; every other CYGNI_ name is
/// reserved.
const ALLOWED_CYGNI: &[&str] = &[
    "CYGNI_BUILDER",
    crate::limits::MEMORY_VAR,
    crate::limits::CPUS_VAR,
];

/// `[A-Za-z_][A-Za-z0-9_]*`, not reserved.
pub fn check_name(name: &str) -> Result<(), ServiceError> {
    let b = name.as_bytes();
    let shaped = !b.is_empty()
        && b.len() <= 256
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
    if !shaped {
        return Err(ServiceError::Invalid(format!(
            "invalid config var name {name:?}: use letters, digits and '_', not starting with a digit"
        )));
    }
    if name == "PORT" || name == "DYNO" {
        return Err(ServiceError::Invalid(format!(
            "{name} is set by Cygni for each instance and cannot be configured"
        )));
    }
    if name.starts_with("CYGNI_") && !ALLOWED_CYGNI.contains(&name) {
        return Err(ServiceError::Invalid(format!(
            "{name}: the CYGNI_ prefix is reserved (settable: {})",
            ALLOWED_CYGNI.join(", ")
        )));
    }
    Ok(())
}

/// A value as it will be stored: at most 64 KiB of UTF-8 with no NUL.
pub fn check_value(name: &str, value: &[u8]) -> Result<String, ServiceError> {
    if value.len() > MAX_VALUE {
        return Err(ServiceError::Invalid(format!(
            "the value of {name} is larger than {} KiB",
            MAX_VALUE / 1024
        )));
    }
    if value.contains(&0) {
        return Err(ServiceError::Invalid(format!(
            "the value of {name} contains a NUL byte, which an environment variable cannot hold"
        )));
    }
    String::from_utf8(value.to_vec()).map_err(|_| {
        ServiceError::Invalid(format!(
            "the value of {name} is not UTF-8 text (encode binary data, e.g. as base64, in the app)"
        ))
    })
}

impl Service {
    /// An app's config vars, for an actor that may read it.
    pub async fn config_vars(
        &self,
        actor: &Actor,
        app: &AppName,
    ) -> Result<BTreeMap<String, String>, ServiceError> {
        self.app(actor, app, Access::Read).await?;
        let a = app.clone();
        Ok(self
            .db
            .call(move |c| state::config_vars::get_all(c, &a))
            .await?)
    }

    /// Set and unset vars (names and values already checked with
    /// [`check_name`] and [`check_value`]), then release the change
    /// unless `restart` is false. Totals, the key count and typed limits
    /// are checked against the whole resulting config before anything is
    /// stored.
    pub async fn change_config(
        &self,
        actor: &Actor,
        app: &AppName,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
        restart: bool,
        progress: &mut Progress,
    ) -> Result<Outcome, ServiceError> {
        let mut detail: Vec<String> = set.keys().map(|k| format!("set {k}")).collect();
        detail.extend(unset.iter().map(|k| format!("unset {k}")));
        let action = if set.is_empty() {
            "config:unset"
        } else {
            "config:set"
        };
        self.audited(actor, action, Some(app), detail.join(" "), async {
            self.app(actor, app, Access::Manage).await?;
            for name in set.keys().chain(unset.iter()) {
                check_name(name)?;
            }
            let a = app.clone();
            let mut after = self
                .db
                .call(move |c| state::config_vars::get_all(c, &a))
                .await?;
            for k in &unset {
                after.remove(k);
            }
            after.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
            let total: usize = after.iter().map(|(k, v)| k.len() + v.len()).sum();
            if total > MAX_TOTAL {
                return Err(ServiceError::Invalid(format!(
                    "{app}'s config would exceed {} KiB in all",
                    MAX_TOTAL / 1024
                )));
            }
            if after.len() > MAX_KEYS {
                return Err(ServiceError::Invalid(format!(
                    "{app} would have {} config vars; the most is {MAX_KEYS}",
                    after.len()
                )));
            }
            // Limits are typed here, when they are set, not in the middle of
            // a deploy.
            Limits::from_vars(&after).map_err(|e| ServiceError::Invalid(e.to_string()))?;
            Ok(self
                .platform
                .change_config(app, set, unset, restart, progress)
                .await?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "A",
            "_x",
            "DATABASE_URL",
            "a1",
            "CYGNI_BUILDER",
            "CYGNI_MEMORY",
        ] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("1A", "invalid config var name"),
            ("A-B", "invalid config var name"),
            ("", "invalid config var name"),
            ("A B", "invalid config var name"),
            ("PORT", "set by Cygni"),
            ("CYGNI_SECRET", "reserved"),
        ] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn values() {
        assert_eq!(
            check_value("K", b"$(id) `x` a;b|c&d\n'\"").unwrap(),
            "$(id) `x` a;b|c&d\n'\""
        );
        assert!(check_value("K", b"a\0b").is_err());
        assert!(check_value("K", &[0xff, 0xfe]).is_err());
        assert!(check_value("K", &vec![b'a'; MAX_VALUE + 1]).is_err());
        // Errors never carry the value.
        let e = check_value("K", b"secret\0").unwrap_err().to_string();
        assert!(!e.contains("secret"));
    }
}
