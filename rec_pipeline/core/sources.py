"""Event files as DuckDB relations of raw text fields, one row per record read.

Every reader gives a query with the same columns: `source_row`, `raw`, `parse_error` and the
contract fields as VARCHAR. `normalize.py` turns any of them into typed events plus a reject reason,
so each rule of the contract is written once. No row is parsed in a Python loop: DuckDB reads every
format (gzip included) on all threads, and parses JSON Lines with its JSON functions.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

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
MAX_LINE_BYTES = 16 * 1024 * 1024
_FIELDS = EVENT_COLUMNS


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


def source_relation(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    """A SQL query over the file's records, valid on this connection until the next file is read."""
    readers = {"jsonl": _jsonl_relation, "csv": _csv_relation, "parquet": _parquet_relation}
    return readers[detect_format(path)](con, path)


# --- JSON Lines and CSV: DuckDB's CSV reader, unparseable records kept aside ------------------


def _read_text_records(con: duckdb.DuckDBPyConnection, path: Path, options: str) -> None:
    """Read the file into temp table `text_rows`, unparseable records into `text_rejects`.

    DuckDB streams the file on all threads and spills the table to disk beyond its memory limit.
    A fresh table's rowids follow the file order, so `rowid + 1` is the accepted record's rank.
    """
    for table in ("text_rows", "text_rejects", "text_reject_scans"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    con.execute(
        "CREATE TEMP TABLE text_rows AS SELECT * FROM read_csv($path, store_rejects = true,"
        " rejects_table = 'text_rejects', rejects_scan = 'text_reject_scans',"
        f" max_line_size = {MAX_LINE_BYTES}, {options})",
        {"path": str(path)},
    )


def _rejected_cte(header_lines: int) -> str:
    """`rejected`: the records DuckDB could not parse, one row per record with its errors."""
    return f"""
WITH rejected AS (
    SELECT line - {header_lines} AS record, first(csv_line) AS csv_line,
           string_agg(DISTINCT lower(error_type), ', ') AS errors
    FROM text_rejects GROUP BY line
)"""


def _numbered_records_sql(header_lines: int) -> str:
    """`numbered`: accepted records of `text_rows` with their record numbers, recovered by counting
    the rejected records before each (an ASOF join)."""
    return _rejected_cte(header_lines) + """, gaps AS (
    SELECT record - row_number() OVER (ORDER BY record) AS accepted_before,
           row_number() OVER (ORDER BY record) AS rejected_so_far
    FROM rejected
), numbered AS (
    SELECT a.rowid + 1 + coalesce(g.rejected_so_far, 0) AS record, a.*
    FROM text_rows a ASOF LEFT JOIN gaps g ON a.rowid + 1 > g.accepted_before
)"""


def _jsonl_relation(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    """One line per record (the unit separator never occurs in valid JSON, so it never splits a line).

    Lines are classified once into temp table `json_lines`, so JSON functions only ever see
    lines that are JSON objects, and each line is parsed once.
    """
    _read_text_records(
        con, path,
        "columns = {'line': 'VARCHAR'}, header = false, delim = '\\x1f', quote = '', escape = '',"
        " auto_detect = false, strict_mode = false",
    )
    con.execute("DROP TABLE IF EXISTS json_lines")
    con.execute(
        "CREATE TEMP TABLE json_lines AS " + _numbered_records_sql(header_lines=0)
        + " SELECT record, line, json_valid(line) AS valid, starts_with(ltrim(line), '{') AS braced"
        " FROM numbered WHERE trim(line) <> ''"
    )
    return _rejected_cte(header_lines=0) + _JSONL_SELECT


def _jsonl_select() -> str:
    """A field holding an object or array comes out as its JSON text, which the contract rejects."""
    paths = ", ".join(f"'$.{field}'" for field in _FIELDS)
    fields = ", ".join(f"fields[{i + 1}] AS {field}" for i, field in enumerate(_FIELDS))
    nulls = ", ".join(f"NULL::VARCHAR AS {field}" for field in _FIELDS)
    return f"""
SELECT record AS source_row, line AS raw, NULL::VARCHAR AS parse_error, {fields}
FROM (SELECT record, line, json_extract_string(line, [{paths}]) AS fields FROM json_lines WHERE valid AND braced)
UNION ALL
SELECT record, line, CASE WHEN valid THEN 'JSON line is not an object' ELSE 'invalid JSON' END, {nulls}
FROM json_lines WHERE NOT (valid AND braced)
UNION ALL
SELECT record, csv_line, 'unreadable line: ' || errors, {nulls} FROM rejected"""


_JSONL_SELECT = _jsonl_select()


def _csv_relation(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    _read_text_records(con, path, "all_varchar = true, header = true, strict_mode = true")
    present = _columns(con, "text_rows")
    fields = ", ".join(f'"{f}"' if f in present else f"NULL::VARCHAR AS {f}" for f in _FIELDS)
    nulls = ", ".join(f"NULL::VARCHAR AS {field}" for field in _FIELDS)
    return _numbered_records_sql(header_lines=1) + f"""
SELECT record AS source_row, NULL::VARCHAR AS raw, NULL::VARCHAR AS parse_error, {fields} FROM numbered
UNION ALL
SELECT record, csv_line, 'unparseable CSV record: ' || errors, {nulls} FROM rejected"""


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
