-- Failover: how many backends a request was sent to. Portable DDL only, like 0001.
-- Rows written before this migration reached at most one backend: 1 where one was chosen.
ALTER TABLE ledger ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
UPDATE ledger SET attempts = 1 WHERE backend IS NOT NULL;
