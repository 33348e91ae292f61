//! Local passwords: the policy every surface applies (admin API, portal, demo) and argon2id
//! hashing with OWASP parameters. Pure and slow: callers run hashing off the async workers.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Minimum password length, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Maximum password length, in characters (bounds hashing work per request).
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// OWASP argon2id parameters: 19 MiB memory, 2 iterations, 1 lane.
const ARGON2_M_KIB: u32 = 19 * 1024;
const ARGON2_T: u32 = 2;
const ARGON2_P: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("invalid argon2 parameters: {0}")]
    Params(argon2::Error),
}

fn argon2() -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None).map_err(AuthError::Params)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// argon2id with OWASP-recommended parameters (m=19 MiB, t=2, p=1), PHC string output.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    let hash = argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(AuthError::Hash)?;
    Ok(hash.to_string())
}

/// Verifies `password` against a PHC string (constant-time digest compare); false for
/// malformed hashes and for anything that is not argon2id.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return false;
    }
    // Parameters come from the PHC string, so older hashes keep verifying.
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// Fixed argon2id hash (current parameters) of a password no account uses.
const DUMMY_PHC: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$ad6cTk/INuWNxA5WvA4H0g$6Uw57OgSAF1AO26bx8GrdGwq06L3lLzqqD4GLDiXydQ";

/// Verifies against [`DUMMY_PHC`] and discards the result, so a sign-in for an unknown
/// email costs the same time as one for a known email.
pub fn dummy_verify(password: &str) {
    let _ = verify_password(password, DUMMY_PHC);
}

/// Password policy for local accounts; `Some(reason)` when rejected.
pub fn password_problem(password: &str) -> Option<&'static str> {
    let count = password.chars().count();
    if count < MIN_PASSWORD_CHARS {
        return Some("password must be at least 12 characters");
    }
    if count > MAX_PASSWORD_CHARS {
        return Some("password must be at most 1024 characters");
    }
    let mut chars = password.chars();
    let first = chars.next();
    if chars.all(|c| Some(c) == first) {
        return Some("password must not be a single repeated character");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verify_round_trip_and_salt() {
        let a = hash_password("correct horse battery").unwrap();
        let b = hash_password("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "salts must differ");
        assert!(verify_password("correct horse battery", &a));
        assert!(verify_password("correct horse battery", &b));
        assert!(!verify_password("correct horse batterY", &a));
        assert!(!verify_password("", &a));
    }

    #[test]
    fn malformed_hashes_do_not_verify() {
        for phc in [
            "",
            "not a hash",
            "$argon2id$",
            "$argon2id$v=19$m=19456,t=2,p=1$",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$!!!",
            // Valid PHC syntax, wrong algorithm.
            "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        ] {
            assert!(!verify_password("whatever password", phc), "{phc}");
        }
    }

    #[test]
    fn dummy_hash_uses_current_parameters() {
        let parsed = PasswordHash::new(DUMMY_PHC).unwrap();
        let current = argon2().unwrap();
        assert_eq!(parsed.algorithm, Algorithm::Argon2id.ident());
        let params = Params::try_from(&parsed).unwrap();
        let want = current.params();
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (want.m_cost(), want.t_cost(), want.p_cost())
        );
        assert!(verify_password(
            "fairgate-dummy-password-never-valid",
            DUMMY_PHC
        ));
        dummy_verify("whatever password");
    }

    #[test]
    fn password_policy() {
        assert!(password_problem("").is_some());
        assert!(password_problem("short").is_some());
        assert!(password_problem("elevenchars").is_some());
        assert_eq!(password_problem("twelve chars"), None);
        assert!(password_problem("aaaaaaaaaaaaaaaa").is_some());
        assert!(password_problem("ééééééééééééé").is_some());
        // Characters, not bytes: 6 two-byte chars is too short.
        assert!(password_problem("éèéèéè").is_some());
        assert_eq!(password_problem("éèéèéèéèéèéè"), None);
        assert!(password_problem(&"ab".repeat(600)).is_some());
        assert_eq!(password_problem(&"ab".repeat(512)), None);
    }
}
