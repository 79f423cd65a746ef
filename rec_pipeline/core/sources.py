"""Event files as DuckDB relations of raw text fields, one row per record read.

Every reader gives a query with the same columns: `source_row`, `raw`, `parse_error` and the
contract fields as VARCHAR. `normalize.py` turns any of them into typed events plus a reject reason,
so each rule of the contract is written once. No row is parsed in a Python loop: DuckDB reads every
format (gzip included) on all threads, and parses JSON Lines with its JSON functions.
"""

from __future__ import annotations

import csv
import gzip
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


# Characters `trim` strips from text fields and blank lines (DuckDB's default trims spaces only).
WHITESPACE = "' ' || chr(9) || chr(10) || chr(13)"


class UnreadableFileError(ValueError):
    """The file as a whole cannot be read; nothing of it lands."""


class UnsupportedFormatError(UnreadableFileError):
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


def _read_text_records(
    con: duckdb.DuckDBPyConnection, path: Path, options: str, columns: str = "*", parameters: dict | None = None
) -> None:
    """Read the file into temp table `text_rows`, unparseable records into `text_rejects`.

    DuckDB streams the file on all threads and spills the table to disk beyond its memory limit.
    A fresh table's rowids follow the file order, so `rowid + 1` is the accepted record's rank.
    """
    for table in ("text_rows", "text_rejects", "text_reject_scans"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    con.execute(
        f"CREATE TEMP TABLE text_rows AS SELECT {columns} FROM read_csv($path, store_rejects = true,"
        " rejects_table = 'text_rejects', rejects_scan = 'text_reject_scans',"
        f" max_line_size = {MAX_LINE_BYTES}, {options})",
        {"path": str(path)} | (parameters or {}),
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
    -- adjacent rejected records share `accepted_before`: keep the count after the last of them
    SELECT accepted_before, max(rejected_so_far) AS rejected_so_far
    FROM (SELECT record - row_number() OVER (ORDER BY record) AS accepted_before,
                 row_number() OVER (ORDER BY record) AS rejected_so_far
          FROM rejected)
    GROUP BY accepted_before
), numbered AS (
    SELECT a.rowid + 1 + coalesce(g.rejected_so_far, 0) AS record, a.*
    FROM text_rows a ASOF LEFT JOIN gaps g ON a.rowid + 1 > g.accepted_before
)"""


def _jsonl_relation(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    """One line per record (the unit separator never occurs in valid JSON, so it never splits a line).

    Each line is classified as it is read, so JSON functions only ever see lines that are JSON
    objects, and each line is parsed once.
    """
    _read_text_records(
        con, path,
        "columns = {'line': 'VARCHAR'}, header = false, delim = '\\x1f', quote = '', escape = '',"
        " auto_detect = false, strict_mode = false",
        columns="line, json_valid(line) AND starts_with(ltrim(line), '{') AS is_object",
    )
    return _numbered_records_sql(header_lines=0) + _JSONL_SELECT


def _jsonl_select() -> str:
    """A scalar field holding an object or array (its extracted text starts with '{' or '[') is a
    parse error; the JSON type is looked up only for those rare rows."""
    paths = ", ".join(f"'$.{field}'" for field in _FIELDS)
    scalars = [(i + 1, field) for i, field in enumerate(_FIELDS) if field != "context"]
    fields = ", ".join(f"fields[{i + 1}] AS {field}" for i, field in enumerate(_FIELDS))
    nulls = ", ".join(f"NULL::VARCHAR AS {field}" for field in _FIELDS)
    maybe_nested = " OR ".join(f"left(fields[{i}], 1) IN ('{{', '[')" for i, _ in scalars)
    nested = _nested_fields_error(
        {field: f"json_type(line, '$.{field}') IN ('OBJECT', 'ARRAY')" for _, field in scalars}
    )
    return f"""
SELECT record AS source_row, line AS raw,
       CASE WHEN {maybe_nested} THEN {nested} END AS parse_error,
       {fields}
FROM (SELECT record, line, json_extract_string(line, [{paths}]) AS fields FROM numbered WHERE is_object)
UNION ALL
SELECT record, line, CASE WHEN json_valid(line) THEN 'JSON line is not an object' ELSE 'invalid JSON' END, {nulls}
FROM numbered WHERE NOT is_object AND trim(line, {WHITESPACE}) <> ''
UNION ALL
SELECT record, csv_line, 'unreadable line: ' || errors, {nulls} FROM rejected"""


def _nested_fields_error(is_nested: dict[str, str]) -> str:
    """SQL naming the fields (by their `is_nested` conditions) that hold an object or array."""
    names = ", ".join(f"CASE WHEN {condition} THEN '{field}' END" for field, condition in is_nested.items())
    return f"'object or array where a string or number belongs: ' || nullif(concat_ws(', ', {names}), '')"


_JSONL_SELECT = _jsonl_select()


def _csv_relation(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    """Comma-separated, double-quoted, with a header. The header is read here rather than sniffed,
    so DuckDB's reader runs with fixed options and quarantines every unparseable record."""
    header = _csv_header(path)
    if not header:
        return _EMPTY_SOURCE
    _read_text_records(
        con, path,
        "columns = $columns, header = true, auto_detect = false, delim = ',', quote = '\"',"
        " escape = '\"', strict_mode = true",
        parameters={"columns": {name: "VARCHAR" for name in header}},
    )
    fields = ", ".join(f'"{f}"' if f in header else f"NULL::VARCHAR AS {f}" for f in _FIELDS)
    nulls = ", ".join(f"NULL::VARCHAR AS {field}" for field in _FIELDS)
    return _numbered_records_sql(header_lines=1) + f"""
SELECT record AS source_row, NULL::VARCHAR AS raw, NULL::VARCHAR AS parse_error, {fields} FROM numbered
UNION ALL
SELECT record, csv_line, 'unparseable CSV record: ' || errors, {nulls} FROM rejected"""


def _csv_header(path: Path) -> list[str]:
    """The column names of the first line; an empty file has none (and no rows)."""
    compressed = path.name.lower().endswith(".gz")
    if compressed and path.stat().st_size == 0:
        raise UnreadableFileError("an empty file is not a gzip stream")
    with (gzip.open if compressed else open)(path, "rb") as handle:
        first_line = handle.readline(MAX_LINE_BYTES).decode("utf-8-sig")
    header = [name.strip() for name in next(csv.reader([first_line]), [])]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates or "" in header:
        raise UnreadableFileError(f"the CSV header has empty or repeated column names: {duplicates}")
    return header


_EMPTY_SOURCE = (
    "SELECT NULL::BIGINT AS source_row, NULL::VARCHAR AS raw, NULL::VARCHAR AS parse_error, "
    + ", ".join(f"NULL::VARCHAR AS {field}" for field in _FIELDS)
    + " WHERE false"
)


# --- Parquet ----------------------------------------------------------------------------------


def _parquet_relation(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    con.read_parquet(str(path), file_row_number=True).create_view("parquet_rows", replace=True)
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE parquet_rows)").fetchall())
    nested = {
        field: f'"{field}" IS NOT NULL'
        for field in _FIELDS
        if field != "context" and field in types and _is_nested(types[field])
    }
    parse_error = _nested_fields_error(nested) if nested else "NULL::VARCHAR"
    return (
        f"SELECT file_row_number + 1 AS source_row, NULL::VARCHAR AS raw, {parse_error} AS parse_error, "
        + ", ".join(_parquet_field(field, types.get(field)) for field in _FIELDS)
        + " FROM parquet_rows"
    )


def _is_nested(data_type: str) -> bool:
    return data_type.startswith(("STRUCT", "MAP", "UNION")) or data_type.endswith("]")


def _parquet_field(field: str, data_type: str | None) -> str:
    if data_type is None:
        return f"NULL::VARCHAR AS {field}"
    if data_type == "VARCHAR":
        return f'"{field}"'
    if field == "context" or _is_nested(data_type):
        return f'to_json("{field}")::VARCHAR AS {field}'
    return f'"{field}"::VARCHAR AS {field}'


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {row[0] for row in con.execute(f"SELECT column_name FROM (DESCRIBE {table})").fetchall()}
