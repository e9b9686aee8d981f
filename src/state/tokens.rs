//! The `tokens` and `token_grants` tables: API credentials.
//!
//! A token has the same roles and per-app grants as an SSH key. Only a
//! SHA-256 hash of its secret is stored; the row is found by a public
//! lookup id that is part of the token text, and the hash is compared by
//! the caller in constant time. Revoking deletes the row, so a revoked
//! token is refused at its next request.

use rusqlite::{params, Connection, OptionalExtension};

use super::keys::Role;
use super::{now, write_tx, StateError};
use crate::names::AppName;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Token {
    #[serde(skip)]
    pub id: i64,
    pub name: String,
    #[serde(skip)]
    pub lookup: String,
    #[serde(skip)]
    pub secret_hash: Vec<u8>,
    pub role: Role,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    /// Apps granted to a developer or viewer token (empty for admins).
    pub apps: Vec<AppName>,
}

impl Token {
    pub fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

pub struct NewToken<'a> {
    pub name: &'a str,
    pub lookup: &'a str,
    pub secret_hash: &'a [u8],
    pub role: Role,
    pub created_by: &'a str,
    pub expires_at: Option<i64>,
    pub apps: &'a [AppName],
}

const COLUMNS: &str =
    "id, name, lookup, secret_hash, role, created_by, created_at, expires_at, last_used_at";

fn row_to_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<Token> {
    let role: String = r.get(4)?;
    Ok(Token {
        id: r.get(0)?,
        name: r.get(1)?,
        lookup: r.get(2)?,
        secret_hash: r.get(3)?,
        role: Role::parse(&role).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Text,
                format!("unknown token role {role:?}").into(),
            )
        })?,
        created_by: r.get(5)?,
        created_at: r.get(6)?,
        expires_at: r.get(7)?,
        last_used_at: r.get(8)?,
        apps: Vec::new(),
    })
}

fn with_grants(conn: &Connection, mut token: Token) -> Result<Token, StateError> {
    let mut stmt = conn.prepare_cached(
        "SELECT apps.name FROM token_grants JOIN apps ON apps.id = token_grants.app_id
         WHERE token_grants.token_id = ?1 ORDER BY apps.name",
    )?;
    let names = stmt
        .query_map([token.id], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    token.apps = names
        .iter()
        .filter_map(|n| AppName::parse(n).ok())
        .collect();
    Ok(token)
}

/// Insert a token and its grants in one transaction. Every granted app
/// must exist; nothing is written otherwise.
pub fn add(conn: &mut Connection, new: NewToken<'_>) -> Result<Token, StateError> {
    let tx = write_tx(conn)?;
    let clash: Option<i64> = tx
        .query_row("SELECT id FROM tokens WHERE name = ?1", [new.name], |r| {
            r.get(0)
        })
        .optional()?;
    if clash.is_some() {
        return Err(StateError::Exists(format!("token {:?}", new.name)));
    }
    let created_at = now();
    tx.execute(
        "INSERT INTO tokens (name, lookup, secret_hash, role, created_by, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            new.name,
            new.lookup,
            new.secret_hash,
            new.role.as_str(),
            new.created_by,
            created_at,
            new.expires_at
        ],
    )?;
    let id = tx.last_insert_rowid();
    for app in new.apps {
        let app_id: Option<i64> = tx
            .query_row("SELECT id FROM apps WHERE name = ?1", [app.as_str()], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(app_id) = app_id else {
            return Err(StateError::NotFound(format!("app {app}")));
        };
        tx.execute(
            "INSERT OR IGNORE INTO token_grants (token_id, app_id) VALUES (?1, ?2)",
            params![id, app_id],
        )?;
    }
    let token = with_grants(
        &tx,
        tx.query_row(
            &format!("SELECT {COLUMNS} FROM tokens WHERE id = ?1"),
            [id],
            row_to_token,
        )?,
    )?;
    tx.commit()?;
    Ok(token)
}

pub fn by_lookup(conn: &Connection, lookup: &str) -> Result<Option<Token>, StateError> {
    let token = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM tokens WHERE lookup = ?1"),
            [lookup],
            row_to_token,
        )
        .optional()?;
    token.map(|t| with_grants(conn, t)).transpose()
}

pub fn by_id(conn: &Connection, id: i64) -> Result<Option<Token>, StateError> {
    let token = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM tokens WHERE id = ?1"),
            [id],
            row_to_token,
        )
        .optional()?;
    token.map(|t| with_grants(conn, t)).transpose()
}

pub fn list(conn: &Connection) -> Result<Vec<Token>, StateError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM tokens ORDER BY name"))?;
    let tokens = stmt
        .query_map([], row_to_token)?
        .collect::<Result<Vec<_>, _>>()?;
    tokens.into_iter().map(|t| with_grants(conn, t)).collect()
}

/// Delete a token by name; `NotFound` when there is none.
pub fn remove(conn: &mut Connection, name: &str) -> Result<Token, StateError> {
    let tx = write_tx(conn)?;
    let token = tx
        .query_row(
            &format!("SELECT {COLUMNS} FROM tokens WHERE name = ?1"),
            [name],
            row_to_token,
        )
        .optional()?
        .ok_or_else(|| StateError::NotFound(format!("token {name:?}")))?;
    tx.execute("DELETE FROM tokens WHERE id = ?1", [token.id])?;
    tx.commit()?;
    Ok(token)
}

/// Record a use. At most one write a minute per token: the time is for
/// people ("last used 3 days ago"), and a busy client must not turn every
/// request into a database write.
pub fn touch(conn: &mut Connection, id: i64, at: i64) -> Result<(), StateError> {
    conn.execute(
        "UPDATE tokens SET last_used_at = ?2
         WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2 - 60)",
        params![id, at],
    )?;
    Ok(())
}
