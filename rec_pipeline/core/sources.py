"""Event files as DuckDB relations of raw text fields, one row per record read.

Every reader yields relations with the same columns: `source_row`, `raw`, `parse_error` and the
contract fields as VARCHAR. `normalize.py` turns any of them into typed events plus a reject reason,
so each rule of the contract is written once. Rows are never parsed in a Python loop: CSV and
Parquet are read by DuckDB, JSON Lines are split into lines in large blocks and parsed by DuckDB's
JSON functions.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl

from rec_pipeline.core.contract import EVENT_COLUMNS

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".jsonl.gz": "jsonl",
    ".ndjson.gz": "jsonl",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".parquet": "parquet",
}
JSONL_BLOCK_BYTES = 64 * 1024 * 1024
MAX_LINE_BYTES = 16 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"
_FIELDS = EVENT_COLUMNS
_SCALAR_FIELDS = ("event_id", "user_id", "item_id", "event_type", "ts", "value", "session_id")


class UnsupportedFormatError(ValueError):
    pass


def detect_format(path: Path) -> str:
    name = path.name.lower()
    for suffix, file_format in sorted(FORMATS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return file_format
    raise UnsupportedFormatError(
        f"{path.name}: unsupported file type (expected one of {', '.join(sorted(FORMATS))})"
    )


def source_relations(con: duckdb.DuckDBPyConnection, path: Path) -> Iterator[str]:
    """Yield SQL queries over the file's rows; each is valid until the next one is requested."""
    file_format = detect_format(path)
    if file_format == "jsonl":
        yield from _jsonl_relations(con, path)
    elif file_format == "csv":
        yield _csv_relation(con, path)
    else:
        yield _parquet_relation(con, path)


# --- JSON Lines -------------------------------------------------------------------------------


def _jsonl_relations(con: duckdb.DuckDBPyConnection, path: Path) -> Iterator[str]:
    for chunk in iter_jsonl_lines(path):
        con.register("jsonl_chunk", chunk)
        yield _JSONL_SQL
    con.unregister("jsonl_chunk")


def iter_jsonl_lines(path: Path, block_bytes: int = JSONL_BLOCK_BYTES) -> Iterator[pl.DataFrame]:
    """Non-blank lines with their 1-based line numbers, decoded per block, in bounded memory."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    first_line = 1
    carry = b""
    with opener(path, "rb") as handle:
        while block := handle.read(block_bytes):
            if first_line == 1 and not carry:
                block = block.removeprefix(_BOM)
            block = carry + block
            cut = block.rfind(b"\n")
            if cut < 0:
                carry = block
                continue
            carry = block[cut + 1 :]
            chunk = _lines_frame(block[:cut], first_line)
            first_line += chunk.height
            yield chunk.filter(pl.col("line").str.strip_chars() != "")
    if carry:
        yield _lines_frame(carry, first_line).filter(pl.col("line").str.strip_chars() != "")


def _lines_frame(block: bytes, first_line: int) -> pl.DataFrame:
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return _decode_lines_one_by_one(block.split(b"\n"), first_line)
    lines = pl.Series("line", [text]).str.split("\n").explode()
    frame = pl.DataFrame({"line": lines}).with_row_index("source_row", offset=first_line)
    return frame.with_columns(pl.lit(None, pl.String).alias("decode_error")).pipe(_mark_long_lines)


def _decode_lines_one_by_one(raw_lines: list[bytes], first_line: int) -> pl.DataFrame:
    """Only for a block that is not valid UTF-8: find the bad lines, keep their text readable."""
    lines, errors = [], []
    for raw in raw_lines:
        try:
            lines.append(raw.decode("utf-8"))
            errors.append(None)
        except UnicodeDecodeError as error:
            lines.append(raw.decode("utf-8", errors="replace"))
            errors.append(f"invalid UTF-8 at byte {error.start}")
    frame = pl.DataFrame({"line": lines, "decode_error": pl.Series(errors, dtype=pl.String)})
    return frame.with_row_index("source_row", offset=first_line).pipe(_mark_long_lines)


def _mark_long_lines(frame: pl.DataFrame) -> pl.DataFrame:
    too_long = pl.col("line").str.len_bytes() > MAX_LINE_BYTES
    return frame.with_columns(
        pl.col("line").str.strip_suffix("\r"),
        pl.col("source_row").cast(pl.Int64),
    ).with_columns(
        pl.when(too_long).then(pl.lit(f"line longer than {MAX_LINE_BYTES} bytes")).otherwise("decode_error").alias("decode_error"),
        pl.when(too_long).then(pl.col("line").str.slice(0, 1024)).otherwise("line").alias("line"),
    )


def _jsonl_select() -> str:
    """Parse JSON only on lines known to be JSON objects, so no JSON function ever sees bad input."""
    paths = ", ".join(f"'$.{field}'" for field in _FIELDS)
    scalar_paths = ", ".join(f"'$.{field}'" for field in _SCALAR_FIELDS)
    fields = ", ".join(f"fields[{i + 1}] AS {field}" for i, field in enumerate(_FIELDS))
    nulls = ", ".join(f"NULL::VARCHAR AS {field}" for field in _FIELDS)
    is_object = "decode_error IS NULL AND json_valid(line) AND starts_with(ltrim(line), '{')"
    return f"""
SELECT source_row, line AS raw,
       CASE WHEN list_contains(field_types, 'OBJECT') OR list_contains(field_types, 'ARRAY')
            THEN 'an id, type, ts or value field is an object or array' END AS parse_error,
       {fields}
FROM (SELECT source_row, line, json_extract_string(line, [{paths}]) AS fields,
             json_type(line, [{scalar_paths}]) AS field_types
      FROM jsonl_chunk WHERE {is_object})
UNION ALL
SELECT source_row, line,
       coalesce(decode_error, CASE WHEN json_valid(line) THEN 'JSON line is not an object' ELSE 'invalid JSON' END),
       {nulls}
FROM jsonl_chunk WHERE NOT ({is_object})"""


_JSONL_SQL = _jsonl_select()


# --- CSV --------------------------------------------------------------------------------------


def _csv_relation(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    """Read the whole CSV into a temp table (DuckDB spills it), keeping unparseable records aside.

    DuckDB reports rejected records by record number; the accepted rows' record numbers are
    recovered by counting the rejected records before each of them (an ASOF join).
    """
    for table in ("csv_rows", "csv_rejects", "csv_reject_scans"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    con.execute(
        "CREATE TEMP TABLE csv_rows AS SELECT * FROM read_csv($path, all_varchar = true, header = true,"
        " store_rejects = true, rejects_table = 'csv_rejects', rejects_scan = 'csv_reject_scans',"
        f" strict_mode = true, max_line_size = {MAX_LINE_BYTES})",
        {"path": str(path)},
    )
    present = _columns(con, "csv_rows")
    fields = ", ".join(f'a."{f}"' if f in present else f"NULL::VARCHAR AS {f}" for f in _FIELDS)
    return f"""
WITH rejected AS (
    SELECT line - 1 AS record, first(csv_line) AS csv_line,
           string_agg(DISTINCT error_type, ', ') AS errors
    FROM csv_rejects GROUP BY line
), gaps AS (
    SELECT record - row_number() OVER (ORDER BY record) AS accepted_before,
           row_number() OVER (ORDER BY record) AS rejected_so_far
    FROM rejected
), accepted AS (SELECT row_number() OVER (ORDER BY rowid) AS accepted_rank, * FROM csv_rows)
SELECT a.accepted_rank + coalesce(g.rejected_so_far, 0) AS source_row, NULL::VARCHAR AS raw,
       NULL::VARCHAR AS parse_error, {fields}
FROM accepted a ASOF LEFT JOIN gaps g ON a.accepted_rank > g.accepted_before
UNION ALL
SELECT record, csv_line, 'unparseable CSV record: ' || lower(errors),
       {", ".join(f"NULL::VARCHAR AS {f}" for f in _FIELDS)}
FROM rejected"""


# --- Parquet ----------------------------------------------------------------------------------


def _parquet_relation(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    con.read_parquet(str(path), file_row_number=True).create_view("parquet_rows", replace=True)
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE parquet_rows)").fetchall())
    return (
        "SELECT file_row_number + 1 AS source_row, NULL::VARCHAR AS raw, NULL::VARCHAR AS parse_error, "
        + ", ".join(_parquet_field(field, types.get(field)) for field in _FIELDS)
        + " FROM parquet_rows"
    )


def _parquet_field(field: str, data_type: str | None) -> str:
    if data_type is None:
        return f"NULL::VARCHAR AS {field}"
    if data_type == "VARCHAR":
        return f'"{field}"'
    if field == "context" or data_type.startswith(("STRUCT", "MAP")) or data_type.endswith("[]"):
        return f'to_json("{field}")::VARCHAR AS {field}'
    return f'"{field}"::VARCHAR AS {field}'


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {row[0] for row in con.execute(f"SELECT column_name FROM (DESCRIBE {table})").fetchall()}
