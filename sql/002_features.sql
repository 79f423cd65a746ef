-- Features: incremental time-decayed state (rec_pipeline/core/model/features.py).
-- Every log_* column stores log Σ w·exp(ln2·(ts − T0)/h) over a key's events, with T0 and the
-- half-life h recorded in feature_config; its value at time t is exp(log_* − ln2·(t − T0)/h).
-- A refresh rewrites only the rows of the keys in the new events (delete-then-insert, one
-- transaction), so the tables are key-less like `events`; keys are unique by construction.

CREATE TABLE feature_config (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint VARCHAR NOT NULL,          -- JSON: weights, half-lives, epoch the state was built with
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE user_item_strength (
    user_id         VARCHAR NOT NULL,
    item_id         VARCHAR NOT NULL,
    log_strength    DOUBLE NOT NULL,       -- weighted events, half-life FeatureConfig.half_life
    n_events        BIGINT NOT NULL,
    first_ts        TIMESTAMPTZ NOT NULL,
    last_ts         TIMESTAMPTZ NOT NULL,
    last_event_type VARCHAR NOT NULL       -- of the latest event (ties: greatest event_type)
);

-- One log_pop_<label> column per popularity half-life; these are the defaults (1h, 1d, 7d). Other
-- half-lives get their column added when a config using them is adopted (reset_features).
CREATE TABLE item_popularity (
    item_id    VARCHAR NOT NULL,
    log_pop_1h DOUBLE,
    log_pop_1d DOUBLE,
    log_pop_7d DOUBLE,
    n_events   BIGINT NOT NULL,
    n_users    BIGINT NOT NULL,            -- distinct users
    first_ts   TIMESTAMPTZ NOT NULL,       -- item age = at − first_ts
    last_ts    TIMESTAMPTZ NOT NULL
);

CREATE TABLE user_activity (
    user_id      VARCHAR NOT NULL,
    log_strength DOUBLE NOT NULL,          -- weighted events, half-life FeatureConfig.half_life
    n_events     BIGINT NOT NULL,
    n_items      BIGINT NOT NULL,          -- distinct items
    first_ts     TIMESTAMPTZ NOT NULL,
    last_ts      TIMESTAMPTZ NOT NULL
);

CREATE TABLE user_category_affinity (
    user_id      VARCHAR NOT NULL,
    category     VARCHAR NOT NULL,         -- from items.categories when the events were merged
    log_strength DOUBLE NOT NULL           -- weighted events on the category's items, same half-life
);
