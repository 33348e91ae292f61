-- Each surface's own unit (issue 16): `unit` names what `units` counts (`tokens`, `images`,
-- `audio_seconds`, `characters`, `calls`); `units` is the request's amount in it. Rows from
-- before this migration are token rows; their amount is what their token columns say.
ALTER TABLE ledger ADD COLUMN unit TEXT NOT NULL DEFAULT 'tokens';
ALTER TABLE ledger ADD COLUMN units BIGINT NOT NULL DEFAULT 0;
UPDATE ledger SET units = prompt_tokens + completion_tokens;
