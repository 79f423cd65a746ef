-- The online loop's bookkeeping: which batches each refresh consumed, and the fallback list.

CREATE TABLE refreshes (
    refresh_id      VARCHAR PRIMARY KEY,
    started_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ NOT NULL,
    events          BIGINT NOT NULL,
    challenger      VARCHAR,
    champion        VARCHAR,          -- the champion after the refresh
    promoted        BOOLEAN NOT NULL,
    recommendations BIGINT NOT NULL,
    stage_seconds   JSON NOT NULL
);

CREATE TABLE refresh_batches (
    batch_id        VARCHAR PRIMARY KEY,
    refresh_id      VARCHAR NOT NULL
);

-- What an unknown user (or anyone, before a model is promoted) is shown.
CREATE TABLE trending_items (
    item_id         VARCHAR NOT NULL,
    rank            INTEGER NOT NULL,
    score           DOUBLE NOT NULL,
    generated_at    TIMESTAMPTZ NOT NULL
);
