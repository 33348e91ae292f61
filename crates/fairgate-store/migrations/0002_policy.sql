-- Policies, groups and ledger pricing. Portable DDL only, like 0001: one column per
-- ALTER TABLE (SQLite accepts no more), defaults on NOT NULL columns so existing rows stay valid.

-- JSON of TenantPolicy / KeyPolicy; NULL means the default policy.
ALTER TABLE tenants ADD COLUMN policy_json TEXT NULL;
ALTER TABLE keys ADD COLUMN policy_json TEXT NULL;

CREATE TABLE groups (
    name TEXT PRIMARY KEY,
    weight BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Rows written before this migration were unpriced, not cache hits, and admitted as
-- interactive (the only class there was).
ALTER TABLE ledger ADD COLUMN cost BIGINT NOT NULL DEFAULT 0;
ALTER TABLE ledger ADD COLUMN cache_hit BIGINT NOT NULL DEFAULT 0;
ALTER TABLE ledger ADD COLUMN priority TEXT NOT NULL DEFAULT 'interactive';

-- Per-key budgets sum a key's spend since the start of a period.
CREATE INDEX ledger_key_ts_idx ON ledger (key_id, ts);
