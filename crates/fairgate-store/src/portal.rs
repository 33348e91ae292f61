//! Portal accounts, browser sessions and the audit log.
//!
//! Emails are stored lower-cased (on create and update) and looked up lower-cased, so the
//! `UNIQUE` constraint on `users.email` makes addresses unique regardless of case on both
//! backends. Lower-casing happens in Rust rather than with SQL `LOWER`, which on SQLite only
//! folds ASCII and would also bypass the index.
//!
//! Uniqueness (id, email, OIDC subject) is enforced by the database, not by a read before the
//! write, so two concurrent sign-ups with one address cannot both succeed; the losing write is
//! then diagnosed with reads to name what clashed in the [`StoreError::Conflict`].
//!
//! Sessions are returned even when expired: whether one is still valid is the caller's call
//! (it knows the clock), and [`Store::delete_expired_sessions`] sweeps them.

use crate::{Store, StoreError};
use fairgate_types::{AuditEntry, Role, Session, UnixMillis, User};
use sqlx::any::AnyRow;
use sqlx::Row;

const USER_COLS: &str =
    "id, email, name, password_hash, role, tenant, oidc_subject, disabled, created_at";
const SESSION_COLS: &str = "id_hash, user_id, csrf, created_at, expires_at";
const AUDIT_COLS: &str = "id, ts, actor, action, target, before_json, after_json";

fn normalize_email(email: &str) -> String {
    email.to_lowercase()
}

fn user_from_row(row: &AnyRow) -> Result<User, StoreError> {
    let id: String = row.try_get("id")?;
    let role: String = row.try_get("role")?;
    let role = Role::parse(&role)
        .ok_or_else(|| StoreError::Corrupt(format!("user `{id}` has unknown role `{role}`")))?;
    let disabled: i64 = row.try_get("disabled")?;
    Ok(User {
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        role,
        tenant: row.try_get("tenant")?,
        oidc_subject: row.try_get("oidc_subject")?,
        disabled: disabled != 0,
        created_at: row.try_get("created_at")?,
        id,
    })
}

fn session_from_row(row: &AnyRow) -> Result<Session, StoreError> {
    Ok(Session {
        id_hash: row.try_get("id_hash")?,
        user_id: row.try_get("user_id")?,
        csrf: row.try_get("csrf")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

fn audit_from_row(row: &AnyRow) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        id: row.try_get("id")?,
        ts: row.try_get("ts")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        before: row.try_get("before_json")?,
        after: row.try_get("after_json")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    /// Stores a new user (email lower-cased); `Conflict` naming the id, the email or the OIDC
    /// subject if another user already has it.
    pub async fn create_user(&self, u: &User) -> Result<(), StoreError> {
        let email = normalize_email(&u.email);
        // No conflict target: any of the three unique columns clashing skips the insert.
        let sql = format!(
            "INSERT INTO users ({USER_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT DO NOTHING"
        );
        let inserted = sqlx::query(&sql)
            .bind(&u.id)
            .bind(&email)
            .bind(&u.name)
            .bind(&u.password_hash)
            .bind(u.role.as_str())
            .bind(&u.tenant)
            .bind(&u.oidc_subject)
            .bind(i64::from(u.disabled))
            .bind(u.created_at)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if inserted > 0 {
            return Ok(());
        }
        if self.get_user(&u.id).await?.is_some() {
            return Err(StoreError::Conflict(format!("user `{}`", u.id)));
        }
        Err(self
            .user_conflict(&u.id, &email, u.oidc_subject.as_deref())
            .await?)
    }

    /// What another user (not `id`) shares with these values, as a `Conflict`.
    async fn user_conflict(
        &self,
        id: &str,
        email: &str,
        subject: Option<&str>,
    ) -> Result<StoreError, StoreError> {
        if self
            .get_user_by_email(email)
            .await?
            .is_some_and(|other| other.id != id)
        {
            return Ok(StoreError::Conflict(format!("user with email `{email}`")));
        }
        if let Some(subject) = subject {
            if self
                .get_user_by_subject(subject)
                .await?
                .is_some_and(|other| other.id != id)
            {
                return Ok(StoreError::Conflict(format!(
                    "user with oidc subject `{subject}`"
                )));
            }
        }
        // The clashing row changed again before we looked; still a conflict.
        Ok(StoreError::Conflict(format!("user with email `{email}`")))
    }

    pub async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
        sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }

    /// The user with this email, compared case-insensitively.
    pub async fn get_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE email = $1");
        sqlx::query(&sql)
            .bind(normalize_email(email))
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }

    /// The user linked to this OpenID Connect identity (`issuer|subject`, compared exactly).
    pub async fn get_user_by_subject(&self, subject: &str) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE oidc_subject = $1");
        sqlx::query(&sql)
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }

    /// Users of one tenant, or all users, ordered by email (byte order on both backends).
    pub async fn list_users(&self, tenant: Option<&str>) -> Result<Vec<User>, StoreError> {
        let order = format!("ORDER BY email{}", self.backend.text_order());
        let rows = match tenant {
            Some(t) => {
                let sql = format!("SELECT {USER_COLS} FROM users WHERE tenant = $1 {order}");
                sqlx::query(&sql).bind(t).fetch_all(&self.pool).await?
            }
            None => {
                let sql = format!("SELECT {USER_COLS} FROM users {order}");
                sqlx::query(&sql).fetch_all(&self.pool).await?
            }
        };
        rows.iter().map(user_from_row).collect()
    }

    /// E-mails (lower-cased) of disabled users. The key directory joins keys to these by their
    /// `user`, so a disabled person's keys stop working without the keys being changed (and
    /// re-enabling the person restores exactly what was there).
    pub async fn disabled_user_emails(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT email FROM users WHERE disabled <> 0")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("email").map_err(StoreError::from))
            .collect()
    }

    /// Writes every field of the user with `u.id` except `created_at` (email lower-cased);
    /// `false` if there is none, `Conflict` if another user has the email or OIDC subject.
    pub async fn update_user(&self, u: &User) -> Result<bool, StoreError> {
        let email = normalize_email(&u.email);
        let result = sqlx::query(
            "UPDATE users SET email = $1, name = $2, password_hash = $3, role = $4, tenant = $5, \
             oidc_subject = $6, disabled = $7 WHERE id = $8",
        )
        .bind(&email)
        .bind(&u.name)
        .bind(&u.password_hash)
        .bind(u.role.as_str())
        .bind(&u.tenant)
        .bind(&u.oidc_subject)
        .bind(i64::from(u.disabled))
        .bind(&u.id)
        .execute(&self.pool)
        .await;
        match result {
            Ok(r) => Ok(r.rows_affected() > 0),
            Err(e) if is_unique_violation(&e) => Err(self
                .user_conflict(&u.id, &email, u.oidc_subject.as_deref())
                .await?),
            Err(e) => Err(e.into()),
        }
    }

    /// Number of users (disabled ones included); the portal bootstraps its first operator
    /// when this is 0.
    pub async fn count_users(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("user count {n}")))
    }

    /// Stores a new session; `Conflict` if its id hash exists (the hash is not repeated in the
    /// message: it identifies a live cookie).
    pub async fn create_session(&self, s: &Session) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO sessions ({SESSION_COLS}) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id_hash) DO NOTHING"
        );
        let inserted = sqlx::query(&sql)
            .bind(&s.id_hash)
            .bind(&s.user_id)
            .bind(&s.csrf)
            .bind(s.created_at)
            .bind(s.expires_at)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if inserted > 0 {
            Ok(())
        } else {
            Err(StoreError::Conflict("session".into()))
        }
    }

    /// The session with this id hash, expired or not: the caller compares `expires_at`.
    pub async fn get_session(&self, id_hash: &str) -> Result<Option<Session>, StoreError> {
        let sql = format!("SELECT {SESSION_COLS} FROM sessions WHERE id_hash = $1");
        sqlx::query(&sql)
            .bind(id_hash)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(session_from_row)
            .transpose()
    }

    /// Deletes one session (sign-out); `false` if there was none.
    pub async fn delete_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Deletes every session of a user (disabled, password changed); how many.
    pub async fn delete_user_sessions(&self, user_id: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Deletes sessions with `expires_at <= now` (a session is valid while `now < expires_at`);
    /// how many.
    pub async fn delete_expired_sessions(&self, now: UnixMillis) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Appends an audit entry; `Conflict` if its id exists.
    pub async fn insert_audit(&self, a: &AuditEntry) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO audit_log ({AUDIT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (id) DO NOTHING"
        );
        let inserted = sqlx::query(&sql)
            .bind(&a.id)
            .bind(a.ts)
            .bind(&a.actor)
            .bind(&a.action)
            .bind(&a.target)
            .bind(&a.before)
            .bind(&a.after)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if inserted > 0 {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!("audit entry `{}`", a.id)))
        }
    }

    /// At most `limit` audit entries, newest first (by ts, then id, descending), only those
    /// with `ts < before_ts` when given (for paging: pass the last entry's ts).
    pub async fn list_audit(
        &self,
        limit: u32,
        before_ts: Option<UnixMillis>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let order = format!("ORDER BY ts DESC, id{} DESC", self.backend.text_order());
        let rows = match before_ts {
            Some(before) => {
                let sql =
                    format!("SELECT {AUDIT_COLS} FROM audit_log WHERE ts < $1 {order} LIMIT $2");
                sqlx::query(&sql)
                    .bind(before)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!("SELECT {AUDIT_COLS} FROM audit_log {order} LIMIT $1");
                sqlx::query(&sql)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(audit_from_row).collect()
    }
}
