//! Who is calling: API key format, hashing, and the in-memory directory the hot path reads.
//!
//! A key looks like `fgk_<id>_<secret>`: `id` (12 lowercase alphanumerics) is public, is what
//! logs, the ledger and the admin API show, and is how the key is found; `secret` (40 base62
//! characters, ~238 bits) is never stored, only its SHA-256, compared in constant time. A fast
//! hash is right here because the secret is long and random, so there is nothing to brute-force.
//!
//! The hot path never touches the database: [`Identity`] holds an immutable [`Directory`]
//! snapshot behind an `ArcSwap`, rebuilt from the store after every admin change on this replica
//! and on a short interval (so changes made through another replica arrive too).

use arc_swap::ArcSwap;
use fairgate_store::{Store, StoreError};
use fairgate_types::{now_millis, Group, KeyId, KeyPolicy, KeyRecord, Tenant};
use rand::Rng;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

pub const KEY_PREFIX: &str = "fgk_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 40;

/// A freshly minted key. The full string exists only here and in the one response that shows it.
pub struct NewKey {
    pub id: KeyId,
    pub secret_hash: String,
    full: String,
}

impl NewKey {
    /// The full key string, to be shown to its owner exactly once.
    pub fn expose(&self) -> &str {
        &self.full
    }
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NewKey({}, *****)", self.id)
    }
}

fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(alphabet[rng.gen_range(0..alphabet.len())]))
        .collect()
}

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const BASE62: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Mints a key with a new id.
pub fn mint_key() -> NewKey {
    mint_secret_for(KeyId(random_string(ID_LEN, LOWER_ALNUM)))
}

/// Mints a new secret for an existing id (rotation keeps the id, so history stays joined).
pub fn mint_secret_for(id: KeyId) -> NewKey {
    let secret = random_string(SECRET_LEN, BASE62);
    let full = format!("{KEY_PREFIX}{}_{secret}", id.0);
    NewKey {
        secret_hash: hash_secret(&secret),
        id,
        full,
    }
}

pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        use fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Splits a presented key into (id, secret) without allocating; `None` if it is not our format.
pub fn split_key(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == ID_LEN && id.bytes().all(|b| LOWER_ALNUM.contains(&b));
    let secret_ok = secret.len() == SECRET_LEN && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    (id_ok && secret_ok).then_some((id, secret))
}

/// What a key resolves to; cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct Principal(Arc<KeyEntry>);

#[derive(Debug)]
pub struct KeyEntry {
    pub id: KeyId,
    pub tenant: String,
    pub user: Option<String>,
    /// `None`: every model.
    pub models: Option<HashSet<String>>,
    pub policy: KeyPolicy,
    secret_hash: [u8; 32],
    expires_at: Option<i64>,
    enabled: bool,
    revoked: bool,
    /// The key's owner (`user`) is a disabled portal user: off-boarding stops the keys
    /// without touching them, so re-enabling the person restores exactly what was there.
    owner_disabled: bool,
}

impl Principal {
    pub fn key_id(&self) -> &KeyId {
        &self.0.id
    }
    pub fn tenant(&self) -> &str {
        &self.0.tenant
    }
    pub fn user(&self) -> Option<&str> {
        self.0.user.as_deref()
    }
    pub fn may_use(&self, model: &str) -> bool {
        self.0.models.as_ref().is_none_or(|m| m.contains(model))
    }
    pub fn policy(&self) -> &KeyPolicy {
        &self.0.policy
    }
}

/// An authentication failure, with the key id when the key's id part was recognised, so the
/// ledger can attribute attempts with a revoked or wrong key to the right tenant.
pub struct AuthFailure {
    pub error: ApiError,
    pub known: Option<Principal>,
}

/// Immutable view of tenants and keys, swapped whole on change.
#[derive(Default)]
pub struct Directory {
    keys: HashMap<String, Arc<KeyEntry>>,
    tenants: HashMap<String, Tenant>,
    groups: HashMap<String, u32>,
}

fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

impl Directory {
    pub fn build(tenants: Vec<Tenant>, keys: Vec<KeyRecord>) -> Directory {
        Self::build_with(tenants, keys, &HashSet::new())
    }

    /// Like [`Directory::build`], with the (lower-cased) e-mails of disabled portal users:
    /// keys whose `user` is one of them answer `api_key_disabled`.
    pub fn build_with(
        tenants: Vec<Tenant>,
        keys: Vec<KeyRecord>,
        disabled_users: &HashSet<String>,
    ) -> Directory {
        let tenants: HashMap<String, Tenant> =
            tenants.into_iter().map(|t| (t.name.clone(), t)).collect();
        let keys = keys
            .into_iter()
            .filter_map(|k| {
                // A key whose stored hash is unreadable can never authenticate; skip it loudly.
                let Some(hash) = decode_hash(&k.secret_hash) else {
                    tracing::error!(key_id = %k.id, "stored key hash is corrupt; key disabled");
                    return None;
                };
                let owner_disabled = k
                    .user
                    .as_deref()
                    .is_some_and(|u| disabled_users.contains(&u.trim().to_lowercase()));
                let entry = KeyEntry {
                    owner_disabled,
                    id: k.id.clone(),
                    tenant: k.tenant,
                    user: k.user,
                    models: k.models.map(|m| m.into_iter().collect()),
                    policy: k.policy,
                    secret_hash: hash,
                    expires_at: k.expires_at,
                    enabled: k.enabled,
                    revoked: k.revoked_at.is_some(),
                };
                Some((k.id.0, Arc::new(entry)))
            })
            .collect();
        Directory {
            keys,
            tenants,
            groups: HashMap::new(),
        }
    }

    /// Sets the group weights (groups not listed weigh 1).
    pub fn with_groups(mut self, groups: Vec<Group>) -> Directory {
        self.groups = groups.into_iter().map(|g| (g.name, g.weight)).collect();
        self
    }

    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.get(name)
    }

    pub fn tenants(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.values()
    }

    /// Weight of a group; an undeclared group weighs 1.
    pub fn group_weight(&self, group: &str) -> u32 {
        self.groups.get(group).copied().unwrap_or(1)
    }

    /// Every key with its own policy, for seeding key budgets.
    pub fn keys_with_policy(&self) -> impl Iterator<Item = &KeyEntry> {
        self.keys
            .values()
            .filter(|k| !k.policy.is_default())
            .map(|k| k.as_ref())
    }

    /// Resolves an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>, now: i64) -> Result<Principal, AuthFailure> {
        let fail = |error, known| Err(AuthFailure { error, known });
        let Some(token) = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return fail(ApiError::MissingKey, None);
        };
        let Some((id, secret)) = split_key(token) else {
            return fail(ApiError::InvalidKey, None);
        };
        let Some(entry) = self.keys.get(id) else {
            return fail(ApiError::InvalidKey, None);
        };
        let presented = Sha256::digest(secret.as_bytes());
        if !bool::from(presented.as_slice().ct_eq(&entry.secret_hash)) {
            return fail(ApiError::InvalidKey, Some(Principal(entry.clone())));
        }
        let principal = Principal(entry.clone());
        if entry.revoked {
            return fail(ApiError::KeyRevoked, Some(principal));
        }
        if !entry.enabled || entry.owner_disabled || !self.tenants.contains_key(&entry.tenant) {
            return fail(ApiError::KeyDisabled, Some(principal));
        }
        if entry.expires_at.is_some_and(|t| t <= now) {
            return fail(ApiError::KeyExpired, Some(principal));
        }
        Ok(principal)
    }
}

/// The live directory plus the store it is loaded from.
pub struct Identity {
    current: ArcSwap<Directory>,
    store: Store,
}

impl Identity {
    pub async fn load(store: Store) -> Result<Identity, StoreError> {
        let id = Identity {
            current: ArcSwap::from_pointee(Directory::default()),
            store,
        };
        id.reload().await?;
        Ok(id)
    }

    /// Re-reads tenants, keys and disabled users and swaps the snapshot; readers never wait.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let tenants = self.store.list_tenants().await?;
        let keys = self.store.list_keys(None).await?;
        let groups = self.store.list_groups().await?;
        let disabled: HashSet<String> = self
            .store
            .disabled_user_emails()
            .await?
            .into_iter()
            .map(|e| e.to_lowercase())
            .collect();
        self.current.store(Arc::new(
            Directory::build_with(tenants, keys, &disabled).with_groups(groups),
        ));
        Ok(())
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Directory>> {
        self.current.load()
    }

    /// An owned snapshot, for holding across `.await`.
    pub fn snapshot_arc(&self) -> Arc<Directory> {
        self.current.load_full()
    }

    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthFailure> {
        self.current.load().authenticate(header, now_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(k: &NewKey, tenant: &str) -> KeyRecord {
        KeyRecord {
            id: k.id.clone(),
            tenant: tenant.into(),
            user: None,
            name: "t".into(),
            models: Some(vec!["m1".into()]),
            secret_hash: k.secret_hash.clone(),
            expires_at: None,
            enabled: true,
            created_at: 0,
            revoked_at: None,
            policy: Default::default(),
        }
    }

    fn tenant(name: &str) -> Tenant {
        Tenant {
            name: name.into(),
            weight: 1,
            group: None,
            created_at: 0,
            policy: Default::default(),
        }
    }

    #[test]
    fn minted_keys_parse_and_authenticate() {
        let k = mint_key();
        assert!(k.expose().starts_with("fgk_"));
        assert!(!format!("{k:?}").contains(&k.expose()[16..]));
        let (id, _) = split_key(k.expose()).unwrap();
        assert_eq!(id, k.id.0);
        let dir = Directory::build(vec![tenant("a")], vec![record(&k, "a")]);
        let p = dir
            .authenticate(Some(&format!("Bearer {}", k.expose())), 0)
            .ok()
            .unwrap();
        assert_eq!(p.tenant(), "a");
        assert!(p.may_use("m1"));
        assert!(!p.may_use("m2"));
    }

    #[test]
    fn failures_are_classified() {
        let k = mint_key();
        let mut rec = record(&k, "a");
        let header = format!("Bearer {}", k.expose());
        let check = |rec: &KeyRecord, header: Option<&str>, now: i64| {
            let dir = Directory::build(vec![tenant("a")], vec![rec.clone()]);
            dir.authenticate(header, now).err().map(|f| f.error.class())
        };
        assert_eq!(check(&rec, None, 0), Some("missing_api_key"));
        assert_eq!(
            check(&rec, Some("Bearer sk-foo"), 0),
            Some("invalid_api_key")
        );
        let wrong = format!("Bearer {}_{}", &k.expose()[..16], "A".repeat(40));
        assert_eq!(check(&rec, Some(&wrong), 0), Some("invalid_api_key"));
        rec.expires_at = Some(10);
        assert_eq!(check(&rec, Some(&header), 5), None);
        assert_eq!(check(&rec, Some(&header), 10), Some("api_key_expired"));
        rec.expires_at = None;
        rec.enabled = false;
        assert_eq!(check(&rec, Some(&header), 0), Some("api_key_disabled"));
        rec.revoked_at = Some(1);
        assert_eq!(check(&rec, Some(&header), 0), Some("api_key_revoked"));
    }

    #[test]
    fn a_disabled_owner_disables_their_keys_and_re_enabling_restores_them() {
        let k = mint_key();
        let mut rec = record(&k, "a");
        rec.user = Some("Bob@Example.org".into());
        let header = format!("Bearer {}", k.expose());
        let other = mint_key();
        let mut other_rec = record(&other, "a");
        other_rec.user = Some("carol@example.org".into());
        let disabled: HashSet<String> = ["bob@example.org".to_owned()].into();
        let dir = Directory::build_with(
            vec![tenant("a")],
            vec![rec.clone(), other_rec.clone()],
            &disabled,
        );
        let err = dir.authenticate(Some(&header), 0).err().unwrap();
        assert_eq!(err.error.class(), "api_key_disabled");
        // The failure still names the key, so the ledger row is attributed.
        assert_eq!(err.known.unwrap().key_id(), &k.id);
        assert!(dir
            .authenticate(Some(&format!("Bearer {}", other.expose())), 0)
            .is_ok());
        // A revoked key stays revoked whatever its owner's state.
        let mut revoked = rec.clone();
        revoked.revoked_at = Some(1);
        let dir = Directory::build_with(vec![tenant("a")], vec![revoked], &disabled);
        assert_eq!(
            dir.authenticate(Some(&header), 0)
                .err()
                .unwrap()
                .error
                .class(),
            "api_key_revoked"
        );
        // Re-enabled: the same record works again.
        let dir = Directory::build_with(vec![tenant("a")], vec![rec], &HashSet::new());
        assert!(dir.authenticate(Some(&header), 0).is_ok());
    }

    #[test]
    fn rotation_invalidates_old_secret() {
        let k = mint_key();
        let rotated = mint_secret_for(k.id.clone());
        let dir = Directory::build(vec![tenant("a")], vec![record(&rotated, "a")]);
        let old = dir.authenticate(Some(&format!("Bearer {}", k.expose())), 0);
        assert!(matches!(
            old.err().map(|f| f.error),
            Some(ApiError::InvalidKey)
        ));
        assert!(dir
            .authenticate(Some(&format!("Bearer {}", rotated.expose())), 0)
            .is_ok());
    }

    #[test]
    fn split_key_rejects_garbage() {
        for s in [
            "",
            "fgk_",
            "fgk_abc_def",
            "sk-123",
            "fgk_ABCDEFGHIJKL_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ] {
            assert!(split_key(s).is_none(), "{s}");
        }
    }
}
