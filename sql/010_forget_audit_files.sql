-- `forget` also deletes corrupt model artifacts and the imported or archived files holding the
-- user, and counts the input files it could not read: the audit row records those too.

ALTER TABLE forget_audit ADD COLUMN artifacts_deleted BIGINT NOT NULL DEFAULT 0;
ALTER TABLE forget_audit ADD COLUMN files_deleted BIGINT NOT NULL DEFAULT 0;
ALTER TABLE forget_audit ADD COLUMN files_unreadable BIGINT NOT NULL DEFAULT 0;
