//! The `preview_settings` and `previews` tables: which apps deploy preview
//! environments, and the previews that exist.
//!
//! A preview is an app of its own (`NAME--APP` in `apps`, so releases,
//! config, formation, routes and certificates work for it unchanged); the
//! `previews` row links it to its parent, the branch it deploys from and
//! when it was last pushed or requested (for the idle sweep). Both rows go
//! with either app (`ON DELETE CASCADE`), but only the deploy layer removes
//! a preview, so that its instances stop first.

use rusqlite::{params, Connection, OptionalExtension};

use super::{app_id, now, write_tx, StateError};
use crate::names::{AppName, PreviewName};

/// An app's preview settings (`previews:enable`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Settings {
    /// A branch pattern `PREFIX*`: the part `*` matches names the preview.
    pub pattern: String,
    /// A preview with no push and no request for this long is destroyed.
    pub idle_secs: u64,
}

impl Settings {
    /// The preview name in `branch`, when `branch` matches the pattern;
    /// `Some(Err)` when it matches but what follows is not a valid name.
    pub fn preview_name(
        &self,
        branch: &str,
    ) -> Option<Result<PreviewName, crate::names::InvalidName>> {
        let prefix = self.pattern.strip_suffix('*')?;
        let rest = branch.strip_prefix(prefix)?;
        Some(PreviewName::parse(rest))
    }
}

/// One preview.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Preview {
    /// Its own app name, `NAME--APP`.
    pub app: AppName,
    pub parent: AppName,
    pub name: String,
    pub branch: String,
    pub created_at: i64,
    pub last_push_at: i64,
    pub last_request_at: Option<i64>,
}

impl Preview {
    /// The last sign of use: a push or a proxied request.
    pub fn last_active(&self) -> i64 {
        self.last_push_at
            .max(self.last_request_at.unwrap_or(0))
            .max(self.created_at)
    }
}

const COLUMNS: &str = "child.name, parent.name, p.name, p.branch, p.created_at, p.last_push_at, \
                       p.last_request_at";
const FROM: &str = "previews p JOIN apps child ON child.id = p.app_id \
                    JOIN apps parent ON parent.id = p.parent_id";

fn row_to_preview(r: &rusqlite::Row<'_>) -> rusqlite::Result<Preview> {
    let app = |i: usize, s: String| {
        AppName::parse(&s).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    };
    Ok(Preview {
        app: app(0, r.get(0)?)?,
        parent: app(1, r.get(1)?)?,
        name: r.get(2)?,
        branch: r.get(3)?,
        created_at: r.get(4)?,
        last_push_at: r.get(5)?,
        last_request_at: r.get(6)?,
    })
}

pub fn settings(conn: &Connection, parent: &AppName) -> Result<Option<Settings>, StateError> {
    let id = app_id(conn, parent)?;
    Ok(conn
        .query_row(
            "SELECT pattern, idle_secs FROM preview_settings WHERE app_id = ?1",
            [id],
            |r| {
                Ok(Settings {
                    pattern: r.get(0)?,
                    idle_secs: r.get::<_, i64>(1)?.max(1) as u64,
                })
            },
        )
        .optional()?)
}

/// Turn previews on (or change the settings).
pub fn enable(conn: &mut Connection, parent: &AppName, s: &Settings) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    let id = app_id(&tx, parent)?;
    let idle = i64::try_from(s.idle_secs).unwrap_or(i64::MAX);
    tx.execute(
        "INSERT INTO preview_settings (app_id, pattern, idle_secs, enabled_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (app_id) DO UPDATE SET pattern = excluded.pattern, idle_secs = excluded.idle_secs",
        params![id, s.pattern, idle, now()],
    )?;
    tx.commit()?;
    Ok(())
}

/// Turn previews off; false when they were not on.
pub fn disable(conn: &mut Connection, parent: &AppName) -> Result<bool, StateError> {
    let tx = write_tx(conn)?;
    let id = app_id(&tx, parent)?;
    let n = tx.execute("DELETE FROM preview_settings WHERE app_id = ?1", [id])?;
    tx.commit()?;
    Ok(n > 0)
}

/// Create a preview: its app row, its link, and a copy of the parent's
/// config vars, in one transaction. An app of that name that exists
/// already is an error (it cannot be a preview: those are found first).
pub fn create(
    conn: &mut Connection,
    parent: &AppName,
    name: &PreviewName,
    app: &AppName,
    branch: &str,
) -> Result<Preview, StateError> {
    let tx = write_tx(conn)?;
    let parent_id = app_id(&tx, parent)?;
    let exists = tx
        .query_row("SELECT 1 FROM apps WHERE name = ?1", [app.as_str()], |_| {
            Ok(())
        })
        .optional()?
        .is_some();
    if exists {
        return Err(StateError::Exists(format!("app {app}")));
    }
    let at = now();
    tx.execute(
        "INSERT INTO apps (name, created_at) VALUES (?1, ?2)",
        params![app.as_str(), at],
    )?;
    let id = tx.last_insert_rowid();
    // A preview is an app: its own uid/gid, never its parent's.
    super::app_users::assign(&tx, id)?;
    tx.execute(
        "INSERT INTO previews (app_id, parent_id, name, branch, created_at, last_push_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![id, parent_id, name.as_str(), branch, at],
    )?;
    tx.execute(
        "INSERT INTO config_vars (app_id, name, value)
         SELECT ?1, name, value FROM config_vars WHERE app_id = ?2",
        params![id, parent_id],
    )?;
    tx.commit()?;
    Ok(Preview {
        app: app.clone(),
        parent: parent.clone(),
        name: name.as_str().to_owned(),
        branch: branch.to_owned(),
        created_at: at,
        last_push_at: at,
        last_request_at: None,
    })
}

/// The preview whose own app is `app`, if `app` is one.
pub fn by_app(conn: &Connection, app: &AppName) -> Result<Option<Preview>, StateError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM {FROM} WHERE child.name = ?1"),
            [app.as_str()],
            row_to_preview,
        )
        .optional()?)
}

/// An app's preview by its name.
pub fn get(conn: &Connection, parent: &AppName, name: &str) -> Result<Option<Preview>, StateError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM {FROM} WHERE parent.name = ?1 AND p.name = ?2"),
            params![parent.as_str(), name],
            row_to_preview,
        )
        .optional()?)
}

/// An app's previews, by name.
pub fn list(conn: &Connection, parent: &AppName) -> Result<Vec<Preview>, StateError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE parent.name = ?1 ORDER BY p.name"
    ))?;
    let rows = stmt
        .query_map([parent.as_str()], row_to_preview)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Every preview with its parent's idle limit (`None`: previews are off
/// for the parent, which leaves none behind, but a row could outlive a
/// crash between the two).
pub fn all(conn: &Connection) -> Result<Vec<(Preview, Option<u64>)>, StateError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS}, s.idle_secs FROM {FROM}
         LEFT JOIN preview_settings s ON s.app_id = p.parent_id ORDER BY child.name"
    ))?;
    let rows = stmt
        .query_map([], |r| {
            let idle: Option<i64> = r.get(7)?;
            Ok((row_to_preview(r)?, idle.map(|i| i.max(1) as u64)))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A push reached the preview.
pub fn touch_push(conn: &mut Connection, app: &AppName, at: i64) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    tx.execute(
        "UPDATE previews SET last_push_at = ?2
         WHERE app_id = (SELECT id FROM apps WHERE name = ?1)",
        params![app.as_str(), at],
    )?;
    tx.commit()?;
    Ok(())
}

/// The proxy answered a request for the preview.
pub fn touch_request(conn: &mut Connection, app: &AppName, at: i64) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    tx.execute(
        "UPDATE previews SET last_request_at = ?2
         WHERE app_id = (SELECT id FROM apps WHERE name = ?1)",
        params![app.as_str(), at],
    )?;
    tx.commit()?;
    Ok(())
}

/// The parent of every preview, by the preview's app name: for the
/// authorization rule (a grant on the parent reaches its previews).
pub fn parents(conn: &Connection) -> Result<Vec<(AppName, AppName)>, StateError> {
    Ok(all(conn)?
        .into_iter()
        .map(|(p, _)| (p.app, p.parent))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{apps, config_vars, test_db};

    #[test]
    fn create_copies_config_and_goes_with_either_app() {
        let (_dir, db) = test_db();
        let shop = AppName::parse("shop").unwrap();
        let x = PreviewName::parse("x").unwrap();
        let child = x.app_name(&shop).unwrap();
        db.call_blocking(|c| {
            apps::create(c, &shop)?;
            let set = [("GREETING".to_owned(), "hi".to_owned())].into();
            config_vars::update(c, &shop, &set, &[])?;
            assert_eq!(settings(c, &shop)?, None);
            let s = Settings {
                pattern: "preview/*".into(),
                idle_secs: 60,
            };
            enable(c, &shop, &s)?;
            assert_eq!(settings(c, &shop)?, Some(s.clone()));
            assert_eq!(
                s.preview_name("preview/x")
                    .map(|r| r.map(|n| n.to_string())),
                Some(Ok("x".into()))
            );
            assert!(s.preview_name("main").is_none());
            assert!(matches!(s.preview_name("preview/Bad_Name"), Some(Err(_))));

            create(c, &shop, &x, &child, "preview/x")?;
            assert!(matches!(
                create(c, &shop, &x, &child, "preview/x"),
                Err(StateError::Exists(_))
            ));
            assert_eq!(config_vars::get_all(c, &child)?["GREETING"], "hi");
            let p = by_app(c, &child)?.expect("the preview");
            assert_eq!(
                (p.parent.as_str(), p.branch.as_str()),
                ("shop", "preview/x")
            );
            assert_eq!(list(c, &shop)?.len(), 1);
            touch_request(c, &child, p.created_at + 50)?;
            assert_eq!(
                get(c, &shop, "x")?.unwrap().last_active(),
                p.created_at + 50
            );
            assert_eq!(all(c)?[0].1, Some(60));

            // The child's app row going takes the link with it.
            apps::delete(c, &child)?;
            assert!(list(c, &shop)?.is_empty());
            assert!(disable(c, &shop)?);
            assert!(!disable(c, &shop)?);
            Ok(())
        })
        .unwrap();
    }
}
