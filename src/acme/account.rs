//! The ACME account: created once per directory URL, its credentials (key
//! included) kept in SQLite, restored on every start.

use instant_acme::{Account, AccountBuilder, AccountCredentials, NewAccount};

use super::{AcmeConfig, AcmeError};
use crate::state::{self, Db};

fn builder(config: &AcmeConfig) -> Result<AccountBuilder, AcmeError> {
    match &config.ca {
        // A private CA (Pebble, step-ca): trust exactly its root.
        Some(path) => Account::builder_with_root(path).map_err(|source| AcmeError::CaRoot {
            path: path.clone(),
            source,
        }),
        None => Account::builder().map_err(|source| AcmeError::Client { source }),
    }
}

/// Restore the stored account for `config.directory`, or register a new
/// one (terms of service agreed, `--acme-email` as contact) and store it.
pub async fn load_or_create(db: &Db, config: &AcmeConfig) -> Result<Account, AcmeError> {
    let directory = config.directory.clone();
    let stored = db
        .call(move |c| state::certs::account(c, &directory))
        .await?;
    if let Some(json) = stored {
        let credentials: AccountCredentials =
            serde_json::from_str(&json).map_err(|source| AcmeError::StoredAccount { source })?;
        return builder(config)?
            .from_credentials(credentials)
            .await
            .map_err(|source| AcmeError::Account { source });
    }
    let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder(config)?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await
        .map_err(|source| AcmeError::Account { source })?;
    let json = serde_json::to_string(&credentials)
        .map_err(|source| AcmeError::StoredAccount { source })?;
    let directory = config.directory.clone();
    db.call(move |c| state::certs::save_account(c, &directory, &json))
        .await?;
    tracing::info!(directory = %config.directory, id = account.id(), "registered an ACME account");
    Ok(account)
}
