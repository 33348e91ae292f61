-- Daily aggregates of ledger rows older than the retention period (`[ledger] retention_days`).
-- A rollup deletes ledger rows and adds their sums here in the same transaction, so every
-- request is counted exactly once, in one table or the other; usage and spend queries read
-- both. Rows are only ever summed: one group (day, tenant, user, key, model, endpoint, status
-- class) may have several rows (one per rollup batch), which keeps concurrent rollups on two
-- replicas from ever clashing. NULL columns mean what they meant in the ledger row.
CREATE TABLE ledger_daily (
    day BIGINT NOT NULL,
    tenant TEXT NULL,
    user_name TEXT NULL,
    key_id TEXT NULL,
    model TEXT NULL,
    endpoint TEXT NOT NULL,
    status_class BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    cost BIGINT NOT NULL
);

CREATE INDEX ledger_daily_tenant_day_idx ON ledger_daily (tenant, day);
CREATE INDEX ledger_daily_key_day_idx ON ledger_daily (key_id, day);
CREATE INDEX ledger_daily_day_idx ON ledger_daily (day);
