//! SSH keys and their grants: admins only.

use super::{Access, Actor, Service, ServiceError};
use crate::names::{AppName, KeyName};
use crate::state::{self, keys::Role};

impl Service {
    pub async fn keys(&self, actor: &Actor) -> Result<Vec<state::keys::Key>, ServiceError> {
        self.require_admin(actor, "list keys")?;
        Ok(self.db.call(|c| state::keys::list(c)).await?)
    }

    /// Add a validated public key (`public` in OpenSSH form).
    pub async fn add_key(
        &self,
        actor: &Actor,
        name: &KeyName,
        role: Role,
        fingerprint: &str,
        public: &str,
    ) -> Result<(), ServiceError> {
        let detail = format!(
            "name={name} role={} fingerprint={fingerprint}",
            role.as_str()
        );
        self.audited(actor, "keys:add", None, detail, async {
            self.require_admin(actor, "add keys")?;
            let (n, fp, p) = (name.clone(), fingerprint.to_owned(), public.to_owned());
            self.db
                .call(move |c| {
                    state::keys::add(
                        c,
                        state::keys::NewKey {
                            name: &n,
                            fingerprint: &fp,
                            public_key: &p,
                            role,
                        },
                    )
                })
                .await?;
            Ok(())
        })
        .await
    }

    pub async fn remove_key(
        &self,
        actor: &Actor,
        name_or_fingerprint: &str,
    ) -> Result<state::keys::Key, ServiceError> {
        let detail = format!("key={name_or_fingerprint}");
        self.audited(actor, "keys:remove", None, detail, async {
            self.require_admin(actor, "remove keys")?;
            let k = name_or_fingerprint.to_owned();
            Ok(self.db.call(move |c| state::keys::remove(c, &k)).await?)
        })
        .await
    }

    /// Let a deployer key push to and manage `app` (`grant`), or take
    /// that away.
    pub async fn set_grant(
        &self,
        actor: &Actor,
        key: &str,
        app: &AppName,
        grant: bool,
    ) -> Result<(), ServiceError> {
        let action = if grant { "keys:grant" } else { "keys:revoke" };
        self.audited(actor, action, Some(app), format!("key={key}"), async {
            self.app(actor, app, Access::Admin).await?;
            let (k, a) = (key.to_owned(), app.clone());
            self.db
                .call(move |c| {
                    if grant {
                        state::keys::grant(c, &k, &a)
                    } else {
                        state::keys::revoke(c, &k, &a)
                    }
                })
                .await?;
            Ok(())
        })
        .await
    }
}
