-- Portal accounts, browser sessions and the audit log. Portable DDL only, like 0001.
-- No foreign keys: sessions are deleted with their user by the caller, audit rows outlive
-- whatever they describe.

-- email is stored lower-cased, so its UNIQUE constraint is case-insensitive.
-- oidc_subject is `issuer|subject`; UNIQUE allows any number of NULLs on both backends.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NULL,
    password_hash TEXT NULL,
    role TEXT NOT NULL,
    tenant TEXT NULL,
    oidc_subject TEXT NULL UNIQUE,
    disabled BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX users_tenant_idx ON users (tenant);

-- id_hash is the hex SHA-256 of the cookie value; the cookie itself is never stored.
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX sessions_user_idx ON sessions (user_id);

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    ts BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before_json TEXT NULL,
    after_json TEXT NULL
);

CREATE INDEX audit_log_ts_idx ON audit_log (ts);
