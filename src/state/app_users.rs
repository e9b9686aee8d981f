//! The `app_users` table: the uid (and gid, the same number) each app's
//! builds and processes run as on the local runtime when the daemon is
//! root.
//!
//! Ids are Cygni's own, as systemd's `DynamicUser=` ones are systemd's:
//! no passwd or group entry is written (the unit's `ProtectSystem=strict`
//! keeps `/etc` read-only, and `useradd` would be a process fed with user
//! input). A tool that calls `getpwuid` for an app's uid finds no name.
//!
//! ```text
//! apps::create / previews::create ──► allocate (same transaction) ──► app_users row
//! an app from before migration 15 ──► ensure (first build or start)  ──┘
//! apps::delete ──► the row goes with the app (ON DELETE CASCADE)
//! ```
//!
//! The range ([`APP_IDS`]) is 0x70000000…0x7000FFFF (1879048192…1879113727):
//! systemd's UID/GID table (systemd.io/UIDS-GIDS) lists 1879048192…2147483647
//! as unused, above its container ranges (524288…1879048191, where
//! `systemd-nspawn` picks its 64K blocks) and its dynamic users
//! (61184…65519), and below 2^31, where devpts and `setfsuid` have trouble.
//! It is also above what `useradd` hands out in `/etc/subuid` for rootless
//! containers (100000…600100000 by default). Other user databases may still
//! use it (sssd's id mapping, LDAP): an id the host's user or group
//! database knows is skipped, as systemd skips them for dynamic users.
//!
//! A freed id is not handed out again until the range has wrapped: files a
//! destroyed app left where Cygni does not clean (the service's `/tmp`, a
//! host-path storage) keep its uid, and the next app must not own them.
//! `app_user_cursor` remembers where the next search starts.

use rusqlite::{params, Connection, OptionalExtension};

use super::{app_id, write_tx, StateError};
use crate::names::AppName;

/// SQL of migration 15.
pub const MIGRATION: &str = "CREATE TABLE app_users (
        app_id INTEGER PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
        uid INTEGER NOT NULL UNIQUE
    );
    CREATE TABLE app_user_cursor (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        next_uid INTEGER NOT NULL
    );";

/// A block of ids reserved for apps: `first` and the `count - 1` after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub first: u32,
    pub count: u32,
}

impl IdRange {
    pub fn last(&self) -> u32 {
        self.first + (self.count - 1)
    }

    pub fn contains(&self, id: u32) -> bool {
        (self.first..=self.last()).contains(&id)
    }
}

/// The ids Cygni gives apps (see the module docs for why these).
pub const APP_IDS: IdRange = IdRange {
    first: 0x7000_0000,
    count: 0x1_0000,
};

/// The uid (= gid) of `app`, if it has one.
pub fn get(conn: &Connection, app: &AppName) -> Result<Option<u32>, StateError> {
    let uid: Option<i64> = conn
        .query_row(
            "SELECT u.uid FROM app_users u JOIN apps a ON a.id = u.app_id WHERE a.name = ?1",
            [app.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(uid.and_then(|u| u32::try_from(u).ok()))
}

/// The uid of `app`, given one now if it has none (an app created before
/// migration 15).
pub fn ensure(conn: &mut Connection, app: &AppName) -> Result<u32, StateError> {
    if let Some(uid) = get(conn, app)? {
        return Ok(uid);
    }
    let tx = write_tx(conn)?;
    let id = app_id(&tx, app)?;
    let uid = assign(&tx, id)?;
    tx.commit()?;
    Ok(uid)
}

/// Gives the app with row id `app_id` the next free id of [`APP_IDS`],
/// skipping ids the host knows: [`allocate`] as every new app needs it.
pub fn assign(conn: &Connection, app_id: i64) -> Result<u32, StateError> {
    allocate(conn, app_id, APP_IDS, &host_knows)
}

/// Gives the app with row id `app_id` the next free id of `range`, inside
/// the caller's transaction. `taken` says whether an id is in use outside
/// Cygni (the host's user database); such ids are skipped. With every id
/// taken it fails with [`StateError::Full`] and writes nothing.
pub fn allocate(
    conn: &Connection,
    app_id: i64,
    range: IdRange,
    taken: &dyn Fn(u32) -> bool,
) -> Result<u32, StateError> {
    let used: std::collections::HashSet<u32> = {
        let mut stmt = conn.prepare("SELECT uid FROM app_users")?;
        let rows = stmt
            .query_map([], |r| r.get::<_, i64>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .filter_map(|u| u32::try_from(u).ok())
            .collect()
    };
    let cursor: Option<i64> = conn
        .query_row(
            "SELECT next_uid FROM app_user_cursor WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let start = cursor
        .and_then(|c| u32::try_from(c).ok())
        .filter(|&c| range.contains(c))
        .unwrap_or(range.first);
    // From the cursor to the end, then from the start of the range.
    let offset = start - range.first;
    let found = (0..range.count)
        .map(|i| range.first + (offset + i) % range.count)
        .find(|uid| !used.contains(uid) && !taken(*uid));
    let Some(uid) = found else {
        return Err(StateError::Full(format!(
            "no free app user id: all {} ids from {} to {} are taken; destroy an app to free one",
            range.count,
            range.first,
            range.last()
        )));
    };
    conn.execute(
        "INSERT INTO app_users (app_id, uid) VALUES (?1, ?2)",
        params![app_id, i64::from(uid)],
    )?;
    let next = if uid == range.last() {
        range.first
    } else {
        uid + 1
    };
    conn.execute(
        "INSERT INTO app_user_cursor (id, next_uid) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET next_uid = excluded.next_uid",
        [i64::from(next)],
    )?;
    Ok(uid)
}

/// Does the host's user or group database (through NSS: passwd, LDAP,
/// sssd, ...) know `id`? A lookup that fails counts as known: better skip
/// an id than share it.
pub fn host_knows(id: u32) -> bool {
    use crate::nss::{lookup, Found};
    let known = |found: Found<()>| !matches!(found, Found::None);
    let user = lookup(|buf| {
        // SAFETY: zeroed passwd is a valid out-parameter.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf.len()` is
        // the buffer's real size.
        let rc = unsafe { libc::getpwuid_r(id, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
        (rc, (!found.is_null()).then_some(()))
    });
    let group = lookup(|buf| {
        // SAFETY: zeroed group is a valid out-parameter.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as above.
        let rc = unsafe { libc::getgrgid_r(id, &mut grp, buf.as_mut_ptr(), buf.len(), &mut found) };
        (rc, (!found.is_null()).then_some(()))
    });
    known(user) || known(group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{apps, test_db};

    fn count(c: &Connection, table: &str) -> i64 {
        c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn apps_get_unique_ids_that_go_with_them() {
        let (_dir, db) = test_db();
        let [a, b, c3] = ["shop", "blog", "wiki"].map(|n| AppName::parse(n).unwrap());
        db.call_blocking(|c| {
            apps::create(c, &a)?;
            apps::create(c, &b)?;
            let (ua, ub) = (get(c, &a)?.unwrap(), get(c, &b)?.unwrap());
            assert_ne!(ua, ub);
            assert!(APP_IDS.contains(ua) && APP_IDS.contains(ub));
            assert_eq!(ensure(c, &a)?, ua, "ensure keeps an app's id");

            apps::delete(c, &a)?;
            assert_eq!(count(c, "app_users"), 1, "the row went with the app");
            // A new app gets neither the live id nor, at once, the freed one.
            apps::create(c, &c3)?;
            let uc = get(c, &c3)?.unwrap();
            assert_ne!(uc, ub);
            assert_ne!(uc, ua, "a freed id waits until the range wraps");

            // The database itself refuses two apps one id.
            c.execute("INSERT INTO apps (name, created_at) VALUES ('raw', 0)", [])?;
            let raw = c.last_insert_rowid();
            let dup = c.execute(
                "INSERT INTO app_users (app_id, uid) VALUES (?1, ?2)",
                params![raw, i64::from(ub)],
            );
            let dup = dup.expect_err("two apps, one id");
            assert!(dup.to_string().contains("UNIQUE"), "{dup}");
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn a_preview_gets_an_id_of_its_own() {
        let (_dir, db) = test_db();
        let shop = AppName::parse("shop").unwrap();
        let name = crate::names::PreviewName::parse("x").unwrap();
        let preview = name.app_name(&shop).unwrap();
        db.call_blocking(|c| {
            apps::create(c, &shop)?;
            crate::state::previews::create(c, &shop, &name, &preview, "preview/x")?;
            let (parent, own) = (get(c, &shop)?.unwrap(), get(c, &preview)?.unwrap());
            assert_ne!(parent, own);
            apps::delete(c, &preview)?;
            assert_eq!(get(c, &shop)?, Some(parent), "the parent keeps its id");
            assert_eq!(count(c, "app_users"), 1);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn an_app_from_before_the_migration_gets_one_lazily() {
        let (_dir, db) = test_db();
        let a = AppName::parse("old").unwrap();
        db.call_blocking(|c| {
            apps::create(c, &a)?;
            c.execute("DELETE FROM app_users", [])?;
            assert_eq!(get(c, &a)?, None);
            let uid = ensure(c, &a)?;
            assert_eq!(get(c, &a)?, Some(uid));
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn exhaustion_is_one_clear_line_and_changes_nothing() {
        let (_dir, db) = test_db();
        let range = IdRange {
            first: 5000,
            count: 3,
        };
        let names = ["a", "b", "c", "d"].map(|n| AppName::parse(n).unwrap());
        db.call_blocking(|c| {
            c.execute("DELETE FROM app_users", [])?;
            let mut ids = Vec::new();
            for n in &names {
                c.execute(
                    "INSERT INTO apps (name, created_at) VALUES (?1, 0)",
                    [n.as_str()],
                )?;
            }
            let id_of = |c: &Connection, n: &AppName| app_id(c, n).unwrap();
            // 5001 is someone else's (the host's user database).
            let taken = |id: u32| id == 5001;
            for n in &names[..2] {
                let tx = write_tx(c)?;
                let id = id_of(&tx, n);
                ids.push(allocate(&tx, id, range, &taken)?);
                tx.commit()?;
            }
            assert_eq!(ids, [5000, 5002]);
            let before: (i64, i64) = c.query_row(
                "SELECT COUNT(*), (SELECT next_uid FROM app_user_cursor) FROM app_users",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let tx = write_tx(c)?;
            let id = id_of(&tx, &names[2]);
            let err = allocate(&tx, id, range, &taken).unwrap_err();
            drop(tx);
            let text = err.to_string();
            assert!(matches!(err, StateError::Full(_)), "{err:?}");
            assert_eq!(
                text,
                "no free app user id: all 3 ids from 5000 to 5002 are taken; destroy an app to free one"
            );
            assert!(!text.contains('\n'));
            let after: (i64, i64) = c.query_row(
                "SELECT COUNT(*), (SELECT next_uid FROM app_user_cursor) FROM app_users",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            assert_eq!(before, after, "a refused allocation writes nothing");

            // Destroying an app frees its id; the search wraps to it.
            apps::delete(c, &names[0])?;
            let tx = write_tx(c)?;
            let id = id_of(&tx, &names[3]);
            assert_eq!(allocate(&tx, id, range, &taken)?, 5000);
            tx.commit()?;
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn the_host_database_knows_root_and_not_cygnis_range() {
        assert!(host_knows(0));
        assert!(!host_knows(APP_IDS.first + 12345));
    }
}
