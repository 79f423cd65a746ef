-- Right to be forgotten: one row per `rec-pipeline forget`, without the user's id (raw or hashed).

CREATE TABLE forget_audit (
    request_id          VARCHAR PRIMARY KEY,   -- random, printed to whoever asked
    forgotten_at        TIMESTAMPTZ NOT NULL,
    events              BIGINT NOT NULL,       -- rows removed from each place
    rejected_rows       BIGINT NOT NULL,
    feature_rows        BIGINT NOT NULL,
    items_rebuilt       BIGINT NOT NULL,       -- popularity rows recomputed without the user
    recommendations     BIGINT NOT NULL,
    check_mentions      BIGINT NOT NULL,       -- quality-check metadata that named the user
    artifacts_rewritten BIGINT NOT NULL        -- model versions whose embedding row was dropped
);
