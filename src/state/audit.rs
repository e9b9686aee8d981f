//! The `audit` table: an append-only record of every change and every
//! refused attempt, with who, what, which app, when, from where and the
//! result. Secret values are never written here: the service layer passes
//! config keys, never values.

use rusqlite::{params, Connection};

use super::StateError;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Entry {
    #[serde(default)]
    pub id: i64,
    pub at: i64,
    /// The key's or token's name.
    pub actor: String,
    /// `key` or `token`.
    pub actor_kind: String,
    pub role: String,
    /// `ssh`, `git-ssh`, `api` or `git-http`.
    pub source: String,
    pub address: Option<String>,
    /// The command's name, as SSH spells it: `config:set`, `push`, ...
    pub action: String,
    pub app: Option<String>,
    /// What was changed: keys, hosts, a formation; never a secret value.
    pub detail: String,
    /// `ok`, `denied` or `failed`.
    pub result: String,
    /// The one-line message the actor was given, for `denied` and `failed`.
    pub message: String,
}

pub fn append(conn: &mut Connection, e: &Entry) -> Result<(), StateError> {
    conn.execute(
        "INSERT INTO audit (at, actor, actor_kind, role, source, address, action, app, detail, result, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            e.at,
            e.actor,
            e.actor_kind,
            e.role,
            e.source,
            e.address,
            e.action,
            e.app,
            e.detail,
            e.result,
            e.message
        ],
    )?;
    Ok(())
}

/// What a listing may show.
pub enum Scope<'a> {
    /// Admins: every entry (of one app if given).
    All(Option<&'a str>),
    /// Others: entries of these apps only (of one of them if given).
    Apps(&'a [String], Option<&'a str>),
}

/// The newest `limit` entries in scope, oldest first.
pub fn list(conn: &Connection, scope: Scope<'_>, limit: u32) -> Result<Vec<Entry>, StateError> {
    const COLUMNS: &str =
        "id, at, actor, actor_kind, role, source, address, action, app, detail, result, message";
    let row = |r: &rusqlite::Row<'_>| {
        Ok(Entry {
            id: r.get(0)?,
            at: r.get(1)?,
            actor: r.get(2)?,
            actor_kind: r.get(3)?,
            role: r.get(4)?,
            source: r.get(5)?,
            address: r.get(6)?,
            action: r.get(7)?,
            app: r.get(8)?,
            detail: r.get(9)?,
            result: r.get(10)?,
            message: r.get(11)?,
        })
    };
    let mut entries = match scope {
        Scope::All(None) => {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM audit ORDER BY id DESC LIMIT ?1"
            ))?;
            let v = stmt
                .query_map([limit], row)?
                .collect::<Result<Vec<_>, _>>()?;
            v
        }
        Scope::All(Some(app)) => {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM audit WHERE app = ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            let v = stmt
                .query_map(params![app, limit], row)?
                .collect::<Result<Vec<_>, _>>()?;
            v
        }
        Scope::Apps(apps, one) => {
            // Few grants per actor: filter in SQL by app, one at a time.
            let mut all = Vec::new();
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM audit WHERE app = ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            for app in apps.iter().filter(|a| one.is_none_or(|o| o == a.as_str())) {
                let v = stmt
                    .query_map(params![app, limit], row)?
                    .collect::<Result<Vec<_>, _>>()?;
                all.extend(v);
            }
            all.sort_by_key(|e| std::cmp::Reverse(e.id));
            all.truncate(limit as usize);
            all
        }
    };
    entries.reverse();
    Ok(entries)
}

/// Delete entries older than `before` (seconds since the epoch).
pub fn prune(conn: &mut Connection, before: i64) -> Result<usize, StateError> {
    Ok(conn.execute("DELETE FROM audit WHERE at < ?1", [before])?)
}
