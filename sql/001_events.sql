-- Landing: behaviour events, quarantined rows and the manifest of ingested files.

CREATE TABLE ingested_files (
    batch_id        VARCHAR PRIMARY KEY,      -- 'b-' || first 16 hex digits of sha256
    sha256          VARCHAR NOT NULL UNIQUE,
    path            VARCHAR NOT NULL,         -- where the file was read from
    file_format     VARCHAR,
    size_bytes      BIGINT NOT NULL,
    status          VARCHAR NOT NULL CHECK (status IN ('landed', 'failed')),
    reason          VARCHAR,                  -- why a failed file could not be read
    rows_read       BIGINT NOT NULL DEFAULT 0,
    rows_landed     BIGINT NOT NULL DEFAULT 0,
    rows_duplicate  BIGINT NOT NULL DEFAULT 0,
    rows_rejected   BIGINT NOT NULL DEFAULT 0,
    quality_status  VARCHAR NOT NULL DEFAULT 'pending'
        CHECK (quality_status IN ('pending', 'passed', 'failed', 'released', 'dropped')),
    landed_at       TIMESTAMPTZ NOT NULL,
    CHECK (rows_read = rows_landed + rows_duplicate + rows_rejected)
);

-- Append-only and key-less on purpose: a primary key makes bulk loads 4-6x slower in DuckDB;
-- landing deduplicates on event_id itself.
CREATE TABLE events (
    event_id    VARCHAR NOT NULL,
    user_id     VARCHAR NOT NULL,
    item_id     VARCHAR NOT NULL,
    event_type  VARCHAR NOT NULL,
    ts          TIMESTAMPTZ NOT NULL,
    value       DOUBLE,
    session_id  VARCHAR,
    context     VARCHAR,
    batch_id    VARCHAR NOT NULL,
    source_row  BIGINT NOT NULL
);

CREATE TABLE events_rejected (
    batch_id    VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    source_row  BIGINT NOT NULL,              -- line number (JSONL), record number (CSV), row index + 1 (Parquet)
    raw         VARCHAR,                      -- the line as read, or the row's fields as JSON
    reason      VARCHAR NOT NULL,
    -- what could be parsed of the row, so the batch's quality checks see every row read
    event_id    VARCHAR,
    user_id     VARCHAR,
    item_id     VARCHAR,
    event_type  VARCHAR,
    ts          TIMESTAMPTZ,
    value       DOUBLE,
    session_id  VARCHAR,
    context     VARCHAR
);

CREATE TABLE batch_checks (
    batch_id    VARCHAR NOT NULL,
    check_name  VARCHAR NOT NULL,
    passed      BOOLEAN NOT NULL,
    severity    VARCHAR NOT NULL,
    description VARCHAR,
    metadata    JSON,
    checked_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (batch_id, check_name)
);

CREATE TABLE items (
    item_id     VARCHAR PRIMARY KEY,
    title       VARCHAR,
    categories  VARCHAR[],
    updated_at  TIMESTAMPTZ NOT NULL
);

-- Events that downstream steps may learn from: their batch passed its blocking checks or was released.
CREATE VIEW events_validated AS
SELECT e.*
FROM events e
JOIN ingested_files f USING (batch_id)
WHERE f.quality_status IN ('passed', 'released');

-- One row per batch, with the failed checks named: what an operator looks at first.
CREATE VIEW batch_overview AS
SELECT f.batch_id, f.path, f.status, f.quality_status, f.rows_read, f.rows_landed,
       f.rows_duplicate, f.rows_rejected, f.landed_at, f.reason,
       list(c.check_name ORDER BY c.check_name) FILTER (WHERE NOT c.passed) AS failed_checks
FROM ingested_files f
LEFT JOIN batch_checks c USING (batch_id)
GROUP BY ALL;
