-- Which key this warehouse's user ids were pseudonymized with, without the key: a check value,
-- HMAC-SHA256(key, a fixed message), recorded at the first keyed use (core/ops/pseudonymization.py).
-- No row: the ids were landed without a key (or nothing was landed yet).

CREATE TABLE pseudonymization_key (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    check_value VARCHAR NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL
);
