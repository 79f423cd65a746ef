"""The event contract as one SQL query: raw text fields in, typed events and a reject reason out.

Every rule of the contract in `../shared/DESIGN.md` is a clause of `reason`; a row with no reason lands. A row that
could not be parsed carries its parse error; any other row lists every rule it breaks, so one look
at `events_rejected` says everything wrong with it.
"""

from __future__ import annotations

from datetime import datetime

from rec_pipeline.core.ingest.contract import EventContract
from rec_pipeline.core.ingest.sources import WHITESPACE

# Characters that show nothing: Unicode separators (spaces), controls and format characters.
_INVISIBLE = r"[\p{Z}\p{Cc}\p{Cf}]"
# Epoch numbers at or above this are milliseconds: 1e11 seconds is the year 5138, 1e11 ms is 1973.
EPOCH_MILLIS_FROM = 1e11
# The event_id of an event its source gave none: a hash of its content, so a re-sent event is a
# duplicate. Over typed columns; landing recomputes it after pseudonymizing user_id.
CONTENT_EVENT_ID = ("'h-' || md5(to_json(struct_pack(user_id, item_id, event_type, ts := epoch_us(ts),"
                    " value, session_id, context))::VARCHAR)")


def normalize_sql(source_sql: str) -> str:
    """Typed, checked records over `source_sql` (a `RecordSource` query); bind with
    `contract_parameters`. Columns: source_row, skip, the contract fields typed, content_id (the
    event_id is CONTENT_EVENT_ID), reason, raw."""
    return f"""
WITH trimmed AS (
    SELECT source_row, skip, raw, parse_error,
           nullif(trim(event_id, {WHITESPACE}), '') AS event_id,
           nullif(trim(user_id, {WHITESPACE}), '') AS user_id,
           nullif(trim(item_id, {WHITESPACE}), '') AS item_id,
           lower(nullif(trim(event_type, {WHITESPACE}), '')) AS event_type,
           nullif(trim(ts), '') AS ts_text,
           nullif(trim(value), '') AS value_text,
           nullif(trim(session_id, {WHITESPACE}), '') AS session_id,
           nullif(context, '') AS context
    FROM ({source_sql})
), typed AS (
    SELECT *,
           CASE WHEN epoch IS NULL THEN TRY_CAST(ts_text AS TIMESTAMPTZ)
                WHEN abs(epoch) < {EPOCH_MILLIS_FROM} THEN to_timestamp(epoch)
                WHEN abs(epoch) < {EPOCH_MILLIS_FROM} * 1000 THEN to_timestamp(epoch / 1000)
           END AS ts,
           TRY_CAST(value_text AS DOUBLE) AS value
    FROM (SELECT *, TRY_CAST(ts_text AS DOUBLE) AS epoch FROM trimmed)
), checked AS (
SELECT source_row, skip, raw, event_id, ts_text, value_text,
       user_id, item_id, event_type, ts, value, session_id, context,
       coalesce(parse_error, nullif(concat_ws('; ',
           {_id_rule("user_id", required=True)},
           {_id_rule("item_id", required=True)},
           {_id_rule("event_id", required=False)},
           {_id_rule("session_id", required=False)},
           CASE WHEN event_type IS NULL THEN 'missing event_type'
                WHEN NOT list_contains($event_types, event_type)
                THEN 'unknown event_type ' || left(event_type, 40) END,
           CASE WHEN ts_text IS NULL THEN 'missing ts'
                WHEN ts IS NULL THEN 'unparseable ts ' || left(ts_text, 40)
                WHEN ts < $earliest_ts OR ts > $latest_ts
                THEN 'ts ' || strftime(ts, '%Y-%m-%dT%H:%M:%SZ') || ' outside '
                     || strftime($earliest_ts, '%Y-%m-%d') || '..' || strftime($latest_ts, '%Y-%m-%d') END,
           CASE WHEN value_text IS NOT NULL AND value IS NULL THEN 'value is not a number'
                WHEN isnan(value) OR isinf(value) THEN 'value is not finite'
                WHEN event_type = 'rating' AND value IS NULL THEN 'rating without value'
                WHEN event_type = 'rating' AND NOT value BETWEEN $rating_min AND $rating_max
                THEN 'rating ' || value || ' outside ' || $rating_min || '..' || $rating_max
                WHEN value < 0 THEN 'negative value'
                WHEN value > $value_max THEN 'value above ' || $value_max END,
           CASE WHEN length(context) > $max_text_length
                THEN 'context longer than ' || $max_text_length || ' characters' END
       ), '')) AS reason
FROM typed
)
-- Rejected rows keep the source's event_id (or none): a content hash of a broken row means nothing.
SELECT source_row, skip,
       CASE WHEN reason IS NULL AND event_id IS NULL THEN {CONTENT_EVENT_ID} ELSE event_id END AS event_id,
       reason IS NULL AND event_id IS NULL AS content_id,
       user_id, item_id, event_type, ts, value, session_id, context, reason,
       -- rejected rows only: the line as read, or the fields as read (CSV, Parquet)
       CASE WHEN reason IS NOT NULL
            THEN coalesce(raw, to_json(struct_pack(event_id, user_id, item_id, event_type, ts := ts_text,
                                                   value := value_text, session_id, context))::VARCHAR)
       END AS raw
FROM checked"""


def _id_rule(column: str, *, required: bool) -> str:
    """An id names nothing when it holds a NUL or only invisible characters (Unicode spaces,
    controls and format characters such as U+200B..U+200D, U+2060, U+FEFF). Those are refused, not
    trimmed: trimming with them is several times slower than with ASCII whitespace, and would merge
    ids silently. An id whose first character is visible ASCII has a visible character, so the
    pattern only runs for the rare others."""
    missing = f"WHEN {column} IS NULL THEN 'missing {column}'" if required else ""
    return f"""CASE {missing}
                WHEN length({column}) > $max_id_length THEN '{column} longer than ' || $max_id_length || ' characters'
                WHEN contains({column}, chr(0)) THEN '{column} contains a NUL character'
                WHEN {column} < '!' OR {column} >= chr(127) THEN
                    CASE WHEN regexp_full_match({column}, '{_INVISIBLE}+')
                         THEN '{column} is blank (whitespace or zero-width characters only)' END
           END"""


def contract_parameters(contract: EventContract, now: datetime | None = None) -> dict:
    return {
        "event_types": list(contract.event_types),
        "earliest_ts": contract.earliest_ts,
        "latest_ts": contract.latest_ts(now),
        "rating_min": contract.rating_min,
        "rating_max": contract.rating_max,
        "value_max": contract.value_max,
        "max_id_length": contract.max_id_length,
        "max_text_length": contract.max_text_length,
    }
