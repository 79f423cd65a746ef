"""Event files as DuckDB relations of raw text fields, one row per record read.

Every reader gives a query with the same columns: `source_row`, `raw`, `parse_error` and the
contract fields as VARCHAR. `normalize.py` turns any of them into typed events plus a reject reason,
so each rule of the contract is written once. No row is parsed in a Python loop: DuckDB reads every
format (gzip included) on all threads, and parses JSON Lines with its JSON functions.
"""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import duckdb

from rec_pipeline.core.errors import InputError
from rec_pipeline.core.ingest.contract import (
    EVENT_COLUMNS,
    ID_COLUMNS,
    REQUIRED_COLUMNS,
)

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
_ID_FIELDS = ("event_id", "user_id", "item_id", "event_type", "session_id")
# A JSON number DuckDB reads although JSON has no such number, as Python's json module writes NaN
# and the infinities; as an id it would become the text 'NaN'.
_NON_FINITE_JSON = ("NaN", "Infinity", "-Infinity")
_ARROW_FLOATS = ("halffloat", "float", "double")
_NESTED = "object, array or boolean where a string or number belongs"
_NOT_FINITE = "NaN or infinity where an id belongs"


# Characters `trim` strips from text fields and blank lines (DuckDB's default trims spaces only).
WHITESPACE = "' ' || chr(9) || chr(10) || chr(13)"


class UnreadableFileError(InputError):
    """The file as a whole cannot be read; nothing of it lands."""


class UnsupportedFormatError(UnreadableFileError):
    pass


def format_suffix(path: Path) -> str:
    """The longest known suffix the file name ends with, e.g. '.jsonl.gz'."""
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise UnsupportedFormatError(
        f"{path.name}: unsupported file type (expected one of {', '.join(sorted(FORMATS))})"
    )


def detect_format(path: Path) -> str:
    return FORMATS[format_suffix(path)]


@dataclass(frozen=True)
class RecordSource:
    """How to read one file, as SQL to run on one connection.

    `records` selects the records the reader could parse, in file order, with columns
    `source_row` (NULL where the record's position in the result gives its number), `skip` (blank
    lines, not rows), `raw`, `parse_error` and the contract fields as VARCHAR. `rejected`, run after
    `records`, selects the same columns for the records the reader could not parse (kept by DuckDB
    in REJECTS_TABLE), with their record numbers; None when the reader rejects nothing itself.
    """

    records: str
    parameters: dict
    rejected: str | None = None


def record_source(path: Path) -> RecordSource:
    readers = {"jsonl": _jsonl_source, "csv": _csv_source, "parquet": _parquet_source}
    return readers[detect_format(path)](path)


# --- JSON Lines and CSV: DuckDB's CSV reader, unparseable records kept aside ------------------

REJECTS_TABLE = "text_rejects"
_READ_CSV = (
    "read_csv($path, store_rejects = true, rejects_table = 'text_rejects', rejects_scan = 'text_reject_scans',"
    f" max_line_size = {MAX_LINE_BYTES}, {{options}})"
)
_NULL_FIELDS = ", ".join(f"NULL::VARCHAR AS {field}" for field in _FIELDS)


def drop_reader_tables(con: duckdb.DuckDBPyConnection) -> None:
    """DuckDB's reader refuses to overwrite its rejects tables: drop the last file's."""
    for table in (REJECTS_TABLE, "text_reject_scans"):
        con.execute(f"DROP TABLE IF EXISTS {table}")


def _rejected_sql(header_lines: int, label: str) -> str:
    return f"""
SELECT line - {header_lines} AS source_row, false AS skip, first(csv_line) AS raw,
       '{label}: ' || string_agg(DISTINCT lower(error_type), ', ') AS parse_error, {_NULL_FIELDS}
FROM {REJECTS_TABLE} GROUP BY line"""


def _jsonl_source(path: Path) -> RecordSource:
    """One line per record: the unit separator never occurs in valid JSON, so it never splits a line.

    JSON functions only ever see lines that are JSON objects (CASE evaluates its branch only for
    the rows that take it), and each line is parsed once. A scalar field holding an object or array
    (its text starts with '{' or '['), an id holding a boolean, or an id reading NaN or Infinity
    (a number, or a string that says so) is looked up again, for those rare rows only.
    """
    options = ("columns = {'line': 'VARCHAR'}, header = false, delim = '\\x1f', quote = '', escape = '',"
               " auto_detect = false, strict_mode = false")
    paths = ", ".join(f"'$.{field}'" for field in _FIELDS)
    scalars = [(i + 1, field) for i, field in enumerate(_FIELDS) if field != "context"]
    fields = ", ".join(f"fields[{i + 1}] AS {field}" for i, field in enumerate(_FIELDS))
    maybe_wrong = " OR ".join(
        f"left(fields[{i}], 1) IN ('{{', '[')" + (f" OR fields[{i}] IN {_literals(f)}" if f in _ID_FIELDS else "")
        for i, f in scalars
    )
    nested = {f: f"json_type(line, '$.{f}') IN {_wrong_json_types(f)}" for _, f in scalars}
    not_finite = {f: f"fields[{i}] IN {_sql_tuple(_NON_FINITE_JSON)} AND json_type(line, '$.{f}') = 'DOUBLE'"
                  for i, f in scalars if f in ID_COLUMNS}
    wrong_type = _errors(_fields_error(_NESTED, nested), _fields_error(_NOT_FINITE, not_finite))
    records = f"""
SELECT NULL::BIGINT AS source_row, skip, line AS raw,
       CASE WHEN skip THEN 'blank line'
            WHEN NOT is_object THEN CASE WHEN json_valid(line) THEN 'JSON line is not an object' ELSE 'invalid JSON' END
            WHEN {maybe_wrong} THEN {wrong_type}
       END AS parse_error,
       {fields}
FROM (
    SELECT line, is_object, CASE WHEN is_object THEN json_extract_string(line, [{paths}]) END AS fields,
           CASE WHEN is_object THEN false ELSE coalesce(trim(line, {WHITESPACE}), '') = '' END AS skip
    FROM (SELECT line, json_valid(line) AND starts_with(ltrim(line), '{{') AS is_object
          FROM {_READ_CSV.format(options=options)})
)"""
    return RecordSource(records, {"path": str(path)}, _rejected_sql(0, "unreadable line"))


def _wrong_json_types(field: str) -> str:
    return "('OBJECT', 'ARRAY', 'BOOLEAN')" if field in _ID_FIELDS else "('OBJECT', 'ARRAY')"


def _literals(field: str) -> str:
    """The texts of an id field that may be a JSON value no id can be: a boolean, or NaN/Infinity."""
    return _sql_tuple(("true", "false") + (_NON_FINITE_JSON if field in ID_COLUMNS else ()))


def _sql_tuple(texts: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{text}'" for text in texts) + ")"


def _fields_error(message: str, conditions: dict[str, str]) -> str:
    """SQL for `message: ` and the fields whose SQL condition holds; NULL when none does."""
    names = ", ".join(f"CASE WHEN {condition} THEN '{field}' END" for field, condition in conditions.items())
    return f"'{message}: ' || nullif(concat_ws(', ', {names}), '')" if conditions else "NULL"


def _errors(*errors: str) -> str:
    """SQL joining the errors that apply, NULL when none does."""
    return f"nullif(concat_ws('; ', {', '.join(errors)}), '')"


def _refuse_repeated_columns(names: list[str], what: str) -> None:
    """DuckDB matches column names ignoring case: `ts` and `TS` would be one column read twice
    (the CSV reader refuses them, the Parquet reader silently renames the second)."""
    counts = Counter(name.lower() for name in names)
    repeated = sorted({name for name in names if counts[name.lower()] > 1})
    if repeated or "" in names:
        raise UnreadableFileError(f"{what} has empty or repeated column names (case is ignored): {repeated}")


def _csv_source(path: Path) -> RecordSource:
    """Comma-separated, double-quoted, with a header. The header is read here rather than sniffed,
    so DuckDB's reader runs with fixed options and quarantines every unparseable record."""
    header = _csv_header(path)
    if not header:
        return RecordSource(_EMPTY_RECORDS, {})
    options = ("columns = $columns, header = true, auto_detect = false, delim = ',', quote = '\"',"
               " escape = '\"', strict_mode = true")
    fields = ", ".join(f'"{f}"' if f in header else f"NULL::VARCHAR AS {f}" for f in _FIELDS)
    records = (f"SELECT NULL::BIGINT AS source_row, false AS skip, NULL::VARCHAR AS raw, NULL::VARCHAR AS parse_error,"
               f" {fields} FROM {_READ_CSV.format(options=options)}")
    parameters = {"path": str(path), "columns": {name: "VARCHAR" for name in header}}
    return RecordSource(records, parameters, _rejected_sql(1, "unparseable CSV record"))


def _csv_header(path: Path) -> list[str]:
    """The column names of the first line; an empty file has none (and no rows).

    A first line that does not name every required column is refused rather than taken for a
    header: in a file without a header row it is the first record, which would be neither landed
    nor counted. The refusal names only the missing columns: such a line holds a user's data.
    """
    compressed = path.name.lower().endswith(".gz")
    if compressed and path.stat().st_size == 0:
        raise UnreadableFileError("an empty file is not a gzip stream")
    with (gzip.open if compressed else open)(path, "rb") as handle:
        first_line = handle.readline(MAX_LINE_BYTES).decode("utf-8-sig")
    header = [name.strip() for name in next(csv.reader([first_line]), [])]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if header and missing:
        raise UnreadableFileError(
            f"the first line is not a header naming {', '.join(REQUIRED_COLUMNS)} (missing: {', '.join(missing)}):"
            " a CSV file needs a header row"
        )
    _refuse_repeated_columns(header, "the CSV header")
    return header


_EMPTY_RECORDS = (
    "SELECT NULL::BIGINT AS source_row, false AS skip, NULL::VARCHAR AS raw, NULL::VARCHAR AS parse_error, "
    + _NULL_FIELDS + " WHERE false"
)


# --- Parquet ----------------------------------------------------------------------------------


def _parquet_source(path: Path) -> RecordSource:
    """Typed columns are read as text, so one set of contract rules serves every format. A float
    id column's NaN or infinity is refused before it becomes the text 'nan' or 'inf'."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as error:  # pyarrow raises several types for a file that is not Parquet
        raise UnreadableFileError(f"not a readable Parquet file: {error}") from error
    _refuse_repeated_columns(schema.names, "the Parquet file")
    types = {column.name: str(column.type) for column in schema}
    nested = {
        field: f'"{field}" IS NOT NULL'
        for field in _FIELDS
        if field != "context" and field in types and _is_nested(types[field])
    }
    not_finite = {field: f'NOT isfinite("{field}")' for field in ID_COLUMNS if types.get(field) in _ARROW_FLOATS}
    parse_error = _errors(_fields_error(_NESTED, nested), _fields_error(_NOT_FINITE, not_finite))
    fields = ", ".join(_parquet_field(field, types.get(field)) for field in _FIELDS)
    records = (f"SELECT file_row_number + 1 AS source_row, false AS skip, NULL::VARCHAR AS raw,"
               f" {parse_error} AS parse_error, {fields} FROM read_parquet($path, file_row_number = true)")
    return RecordSource(records, {"path": str(path)})


def _is_nested(arrow_type: str) -> bool:
    return arrow_type.startswith(("struct", "map", "list", "large_list", "fixed_size_list", "dense_union", "sparse_union"))


def _parquet_field(field: str, arrow_type: str | None) -> str:
    if arrow_type is None:
        return f"NULL::VARCHAR AS {field}"
    if arrow_type in ("string", "large_string", "string_view"):
        return f'"{field}"'
    if field == "context" or _is_nested(arrow_type):
        return f'to_json("{field}")::VARCHAR AS {field}'
    return f'"{field}"::VARCHAR AS {field}'
