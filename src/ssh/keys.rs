//! SSH keys: the server's host key, and the public keys users hand us.
//!
//! A user key comes in as text (stdin of `keys:add`, or the `--admin-key`
//! file) and is checked here once: exactly one OpenSSH public key line, no
//! `authorized_keys` options, no private key, no weak key type.

use std::path::Path;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("that is a private key: send the public key (the .pub file) instead")]
    Private,
    #[error("expected one OpenSSH public key line (like `ssh-ed25519 AAAA... comment`), got {0}")]
    Count(usize),
    #[error("key options (like `command=` or `from=`) are not supported: send the bare key")]
    Options,
    #[error("not an OpenSSH public key: {0}")]
    Parse(String),
    #[error("{0} keys are too weak: use ed25519, ecdsa, or RSA of at least 2048 bits")]
    Weak(String),
    #[error("host key {path}: {message}")]
    HostKey { path: String, message: String },
}

/// The SHA-256 fingerprint, as OpenSSH prints it (`SHA256:...`).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Parse and vet a user's public key text.
pub fn parse_user_key(text: &str) -> Result<PublicKey, KeyError> {
    if text.contains("PRIVATE KEY") {
        return Err(KeyError::Private);
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let [line] = lines[..] else {
        return Err(KeyError::Count(lines.len()));
    };
    let first = line.split_whitespace().next().unwrap_or_default();
    let known_type = first.starts_with("ssh-")
        || first.starts_with("ecdsa-")
        || first.starts_with("sk-")
        || first.starts_with("rsa-");
    if !known_type {
        // authorized_keys options come before the key type.
        return Err(if first.contains('=') || first.contains(',') {
            KeyError::Options
        } else {
            KeyError::Parse(format!("unknown key type {first:?}"))
        });
    }
    let key = PublicKey::from_openssh(line).map_err(|e| KeyError::Parse(e.to_string()))?;
    match key.key_data() {
        KeyData::Dsa(_) => return Err(KeyError::Weak("DSA".into())),
        KeyData::Rsa(rsa) if rsa.key_size() < 2048 => {
            return Err(KeyError::Weak(format!("{}-bit RSA", rsa.key_size())))
        }
        _ => {}
    }
    if matches!(key.algorithm(), Algorithm::Other(_)) {
        return Err(KeyError::Parse(format!(
            "unsupported key type {}",
            key.algorithm()
        )));
    }
    Ok(key)
}

/// Load the ed25519 host key, generating it (mode 0600) on first start.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey, KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let err = |message: String| KeyError::HostKey {
        path: path.display().to_string(),
        message,
    };
    if path.exists() {
        return PrivateKey::read_openssh_file(path).map_err(|e| err(e.to_string()));
    }
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let pem = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| err(e.to_string()))?;
    // Write to a temp file created 0600 from the start, then rename, so the
    // key is never readable by others and never half-written.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| err(e.to_string()))?;
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@host";

    #[test]
    fn accepts_one_ed25519_key() {
        let k = parse_user_key(&format!("\n{ED}\n")).unwrap();
        assert!(fingerprint(&k).starts_with("SHA256:"));
    }

    #[test]
    fn refusals_say_why() {
        let cases = [
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
                    .to_string(),
                "private key",
            ),
            (format!("command=\"ls\" {ED}"), "options"),
            (format!("no-pty,from=\"1.2.3.4\" {ED}"), "options"),
            (format!("{ED}\n{ED}"), "one OpenSSH public key"),
            (String::new(), "one OpenSSH public key"),
            ("ssh-ed25519 !!!notbase64".to_string(), "not an OpenSSH"),
            (
                "ssh-dss AAAAB3NzaC1kc3MAAACBAP1 x".to_string(),
                "not an OpenSSH",
            ),
        ];
        for (input, want) in cases {
            let err = parse_user_key(&input).unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }

    #[test]
    fn host_key_is_kept_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host_key");
        let a = load_or_create_host_key(&path).unwrap();
        let b = load_or_create_host_key(&path).unwrap();
        assert_eq!(
            fingerprint(a.public_key()),
            fingerprint(b.public_key()),
            "restart keeps the fingerprint"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
