-- Who made which version champion, when and why: the gate, or an operator's rollback (forced past
-- the gate's rejection or not). Statuses in model_registry say what a version is now; this says how
-- it got there.
CREATE TABLE champion_history (
    version         VARCHAR NOT NULL,
    since           TIMESTAMPTZ NOT NULL,
    promoted_by     VARCHAR NOT NULL CHECK (promoted_by IN ('gate', 'rollback', 'forced rollback')),
    previous        VARCHAR,                      -- the champion it replaced
    reason          VARCHAR NOT NULL
);

INSERT INTO champion_history
SELECT challenger, evaluated_at, 'gate', champion, reason FROM evaluations WHERE promoted;

-- Where each simulated stream (one per simulator seed) goes on: `rec-pipeline run` and `demo`
-- generate from here, so events a `forget` removed are never generated again.
CREATE TABLE simulation_streams (
    seed        BIGINT PRIMARY KEY,
    next_event  BIGINT NOT NULL
);

INSERT INTO simulation_streams
SELECT CAST(regexp_extract(event_id, '^sim(-?[0-9]+)-', 1) AS BIGINT) AS seed, count(*)
FROM (SELECT event_id FROM events UNION ALL SELECT event_id FROM events_rejected)
WHERE regexp_matches(event_id, '^sim-?[0-9]+-[0-9]+$')
GROUP BY seed;
