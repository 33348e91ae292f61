-- Initial schema. Portable DDL only: it runs unchanged on SQLite and PostgreSQL.
-- Times are BIGINT unix milliseconds, booleans BIGINT 0/1, model lists JSON text,
-- because those are the types sqlx's Any driver reads back the same on both.
-- No foreign keys: deleting a tenant keeps its (revoked) keys and its ledger rows.

CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    weight BIGINT NOT NULL,
    grp TEXT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    user_name TEXT NULL,
    name TEXT NOT NULL,
    models_json TEXT NULL,
    secret_hash TEXT NOT NULL,
    expires_at BIGINT NULL,
    enabled BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT NULL
);

CREATE INDEX keys_tenant_idx ON keys (tenant);

CREATE TABLE ledger (
    id TEXT PRIMARY KEY,
    ts BIGINT NOT NULL,
    tenant TEXT NULL,
    user_name TEXT NULL,
    key_id TEXT NULL,
    model TEXT NULL,
    backend TEXT NULL,
    endpoint TEXT NOT NULL,
    stream BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    reserved_tokens BIGINT NOT NULL,
    usage_source TEXT NOT NULL,
    status BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    error_class TEXT NULL,
    queue_ms BIGINT NOT NULL,
    ttft_ms BIGINT NULL,
    duration_ms BIGINT NOT NULL
);

-- Usage and request listings filter by tenant and time; retention sweeps by time alone.
CREATE INDEX ledger_tenant_ts_idx ON ledger (tenant, ts);
CREATE INDEX ledger_ts_idx ON ledger (ts);
