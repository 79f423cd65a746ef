-- Operating the pipeline unattended: failed runs (written by the run-failure sensor) and what each
-- housekeeping pass removed.

CREATE TABLE run_failures (
    run_id          VARCHAR PRIMARY KEY,
    job_name        VARCHAR NOT NULL,
    failed_at       TIMESTAMPTZ NOT NULL,
    message         VARCHAR NOT NULL,
    alert_status    VARCHAR NOT NULL   -- 'sent', 'not configured', or why posting failed
);

CREATE TABLE housekeeping_runs (
    ran_at                  TIMESTAMPTZ NOT NULL,
    archived_files_removed  BIGINT NOT NULL,
    artifacts_removed       BIGINT NOT NULL,
    bytes_freed             BIGINT NOT NULL
);
