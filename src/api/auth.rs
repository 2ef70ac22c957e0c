//! API keys and the `Tenant` extractor.
//!
//! Keys are held only as SHA-256 digests; a request's key is hashed and looked up.

use std::collections::HashMap;
use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::state::ApiState;

/// The tenant the request's API key belongs to.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    tenants_by_digest: HashMap<[u8; 32], String>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// Parses `tenant:key,tenant:key`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut keys = Self::default();
        for pair in spec
            .split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
        {
            let Some((tenant, key)) = pair.split_once(':') else {
                return Err(format!(
                    "SLUICE_API_KEYS: `{}…` is not `tenant:key`",
                    pair.chars().take(8).collect::<String>()
                ));
            };
            if tenant.is_empty() || key.is_empty() {
                return Err("SLUICE_API_KEYS: tenant and key must not be empty".into());
            }
            keys.tenants_by_digest
                .insert(digest(key), tenant.to_owned());
        }
        if keys.tenants_by_digest.is_empty() {
            return Err("SLUICE_API_KEYS: no `tenant:key` pair given".into());
        }
        Ok(keys)
    }

    /// The embedded mode's development key: made once, kept in the data directory, reused after.
    /// The file is readable by its owner only (0600), also when an older file was not.
    pub fn load_or_create_dev_key(data_dir: &Path) -> std::io::Result<(Self, String)> {
        let path = data_dir.join("dev-api-key");
        let key = match std::fs::read_to_string(&path) {
            Ok(key) if !key.trim().is_empty() => {
                owner_only(&path)?;
                key.trim().to_owned()
            }
            _ => {
                let key = format!("sk_dev_{}", hex::encode(rand::random::<[u8; 20]>()));
                std::fs::create_dir_all(data_dir)?;
                write_owner_only(&path, &key)?;
                key
            }
        };
        let keys = Self::parse(&format!("dev:{key}")).map_err(std::io::Error::other)?;
        Ok((keys, key))
    }

    pub fn tenant_for(&self, key: &str) -> Option<&str> {
        self.tenants_by_digest.get(&digest(key)).map(String::as_str)
    }
}

/// Writes a secret into a file that only its owner can read, created so from the start.
fn write_owner_only(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())?;
    owner_only(path)
}

/// Makes an existing secret file readable by its owner only.
fn owner_only(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

impl FromRequestParts<ApiState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let key = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .ok_or(ApiError::Unauthorized)?;
        let tenant = state.keys.tenant_for(key).ok_or(ApiError::Unauthorized)?;
        Ok(Tenant(tenant.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_their_tenant() {
        let keys = ApiKeys::parse("acme:k1, globex:k2").unwrap();
        assert_eq!(keys.tenant_for("k1"), Some("acme"));
        assert_eq!(keys.tenant_for("k2"), Some("globex"));
        assert_eq!(keys.tenant_for("k3"), None);
        assert!(ApiKeys::parse("nocolon").is_err());
        assert!(ApiKeys::parse(":k").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn the_dev_key_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let (keys, key) = ApiKeys::load_or_create_dev_key(dir.path()).unwrap();
        let path = dir.path().join("dev-api-key");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(keys.tenant_for(&key), Some("dev"));

        // A key file left world-readable by an older version is kept, and tightened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_, again) = ApiKeys::load_or_create_dev_key(dir.path()).unwrap();
        assert_eq!(again, key);
        assert_eq!(mode(&path), 0o600);
    }
}
