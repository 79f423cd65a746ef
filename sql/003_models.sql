-- Models, gate decisions and the published recommendations.

CREATE TABLE model_registry (
    version         VARCHAR PRIMARY KEY,          -- 'm-YYYYmmddTHHMMSS-<6 hex>'
    kind            VARCHAR NOT NULL,             -- what the artifact holds, e.g. 'retrieval+ranker'
    parent          VARCHAR,                      -- the champion it was warm-started from
    trained_at      TIMESTAMPTZ NOT NULL,
    window_start    TIMESTAMPTZ,                  -- event time span it learnt from
    window_end      TIMESTAMPTZ,
    metrics         JSON,
    status          VARCHAR NOT NULL CHECK (status IN ('challenger', 'champion', 'rejected', 'retired')),
    artifact_path   VARCHAR NOT NULL,             -- a folder under $REC_PIPELINE_HOME/models
    checksum        VARCHAR NOT NULL              -- sha256 over the artifact's files
);

CREATE TABLE evaluations (
    evaluated_at    TIMESTAMPTZ NOT NULL,
    challenger      VARCHAR NOT NULL,
    champion        VARCHAR,
    promoted        BOOLEAN NOT NULL,
    reason          VARCHAR NOT NULL,
    metrics         JSON NOT NULL                 -- both models' and the floor's metrics on the slice
);

CREATE TABLE recommendations (
    user_id         VARCHAR NOT NULL,
    item_id         VARCHAR NOT NULL,
    rank            INTEGER NOT NULL,
    score           DOUBLE NOT NULL,
    model_version   VARCHAR NOT NULL,             -- 'fallback' for the trending list
    generated_at    TIMESTAMPTZ NOT NULL,
    reason          VARCHAR
);
