"""Landing under bad input: every case is accounted for (read = landed + duplicates + rejected),
quarantined rows keep their source row, raw text and a reason, and unreadable files fail cleanly.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rec_pipeline.core.ingest import sources
from rec_pipeline.core.ingest.contract import EventContract
from rec_pipeline.core.ingest.landing import LandingReport, land_file, land_trusted
from rec_pipeline.core.ops.warehouse import Warehouse

UTC = timezone.utc
T = "2024-01-01T10:00:00Z"
T_UTC = datetime(2024, 1, 1, 10, tzinfo=UTC)
CSV_HEADER = "event_id,user_id,item_id,event_type,ts,value\n"
DROP = object()  # marks a field to leave out of an event


# --- helpers ----------------------------------------------------------------------------------


def event(event_id: str | None = "e1", **fields) -> dict:
    """A valid JSON event; pass field=DROP to leave a field out, event_id=None for no id."""
    row = {"event_id": event_id, "user_id": "u1", "item_id": "i1", "event_type": "view", "ts": T}
    row.update(fields)
    return {k: v for k, v in row.items() if v is not DROP and not (k == "event_id" and v is None)}


def jsonl(*rows: dict | str, newline: str = "\n") -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + newline for row in rows)


def csv(*records: str, header: str = CSV_HEADER) -> str:
    return header + "".join(record + "\n" for record in records)


def csv_record(event_id="e1", user_id="u1", item_id="i1", event_type="view", ts=T, value="") -> str:
    return ",".join(str(field) for field in (event_id, user_id, item_id, event_type, ts, value))


@pytest.fixture
def land(warehouse: Warehouse, now: datetime):
    def _land(path: Path) -> LandingReport:
        return land_file(warehouse, path, contract=EventContract(), now=now)

    return _land


def _dicts(con, sql: str, params=()) -> list[dict]:
    cursor = con.execute(sql, list(params))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def query(warehouse: Warehouse, sql: str, params=()) -> list[dict]:
    with warehouse.connect() as con:
        return _dicts(con, sql, params)


def table_counts(warehouse: Warehouse) -> dict[str, int]:
    with warehouse.connect() as con:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE NOT temporary ORDER BY table_name").fetchall()]
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


@dataclass
class Batch:
    """What one landing wrote: its events and its quarantined rows, both ordered by source_row."""

    report: LandingReport
    landed: list[dict]
    rejected: list[dict]

    @property
    def only_reject(self) -> dict:
        [row] = self.rejected
        return row

    def rejects_at(self, source_row: int) -> list[dict]:
        return [row for row in self.rejected if row["source_row"] == source_row]

    def landed_at(self, source_row: int) -> dict | None:
        return next((row for row in self.landed if row["source_row"] == source_row), None)


def check(warehouse: Warehouse, report: LandingReport, *, read: int, landed: int,
          duplicates: int = 0, rejected: int = 0) -> Batch:
    """The report, the manifest row and the tables all tell the same, exact accounting."""
    assert report.status == "landed", report.reason
    assert report.reason is None
    assert (report.read, report.landed, report.duplicates, report.rejected) == (
        read, landed, duplicates, rejected)
    assert report.read == report.landed + report.duplicates + report.rejected
    with warehouse.connect() as con:
        [manifest] = _dicts(con, "SELECT * FROM ingested_files WHERE batch_id = ?", [report.batch_id])
        batch = Batch(
            report,
            _dicts(con, "SELECT * FROM events WHERE batch_id = ? ORDER BY source_row", [report.batch_id]),
            _dicts(con, "SELECT * FROM events_rejected WHERE batch_id = ? ORDER BY source_row, reason",
                   [report.batch_id]),
        )
    assert (manifest["status"], manifest["rows_read"], manifest["rows_landed"], manifest["rows_duplicate"],
            manifest["rows_rejected"]) == ("landed", read, landed, duplicates, rejected)
    assert manifest["path"] == report.path
    assert len(batch.landed) == landed
    assert len(batch.rejected) == rejected
    return batch


def check_failed(warehouse: Warehouse, report: LandingReport, *reason_parts: str) -> None:
    """Failed: a reason, zero counts, nothing of it in events/events_rejected, manifest says failed."""
    assert report.status == "failed"
    assert report.reason
    for part in reason_parts:
        assert part in report.reason
    assert (report.read, report.landed, report.duplicates, report.rejected) == (0, 0, 0, 0)
    with warehouse.connect() as con:
        [manifest] = _dicts(con, "SELECT * FROM ingested_files WHERE batch_id = ?", [report.batch_id])
        written = con.execute(
            "SELECT (SELECT count(*) FROM events WHERE batch_id = $b) + "
            "(SELECT count(*) FROM events_rejected WHERE batch_id = $b)", {"b": report.batch_id}).fetchone()[0]
    assert manifest["status"] == "failed"
    assert manifest["reason"] == report.reason
    assert manifest["rows_read"] == manifest["rows_landed"] == manifest["rows_rejected"] == 0
    assert written == 0


def mismatches(cases: list[tuple[str, int, str, str | None]], batch: Batch) -> dict:
    """For (case, source_row, reason substring, raw or None): the cases whose quarantined row is not as expected."""
    wrong = {}
    for case, source_row, reason, raw in cases:
        rows = batch.rejects_at(source_row)
        if len(rows) != 1 or reason not in rows[0]["reason"] or (raw is not None and rows[0]["raw"] != raw):
            wrong[case] = rows
    return wrong


# --- empty files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content",
    [
        ("empty.jsonl", b""),
        ("empty.csv", b""),
        ("empty.jsonl.gz", gzip.compress(b"", mtime=0)),
        ("empty.csv.gz", gzip.compress(b"", mtime=0)),
        ("blank_lines.jsonl", b"\n \n\r\n  \r\n"),
        ("header_only.csv", CSV_HEADER.encode()),
        ("header_only_no_newline.csv", CSV_HEADER.rstrip("\n").encode()),
        ("header_only.csv.gz", gzip.compress(CSV_HEADER.encode(), mtime=0)),
    ],
)
def test_empty_file_lands_zero_rows(warehouse, land, write_file, name, content):
    check(warehouse, land(write_file(name, content)), read=0, landed=0)


def test_empty_parquet_table_lands_zero_rows(warehouse, land, tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"user_id": pa.array([], pa.string()), "item_id": pa.array([], pa.string())}), path)
    check(warehouse, land(path), read=0, landed=0)


@pytest.mark.parametrize("name", ["empty.parquet", "empty.jsonl.gz", "empty.csv.gz"])
def test_zero_byte_file_that_must_have_a_header_fails(warehouse, land, write_file, name):
    """Zero bytes are not a Parquet file nor a gzip stream (gzip of nothing is, see above)."""
    check_failed(warehouse, land(write_file(name, b"")))


# --- unreadable files -------------------------------------------------------------------------


def _many_jsonl_lines(n: int = 400, prefix: str = "g") -> str:
    return jsonl(*(event(f"{prefix}{i}", user_id=f"u{i}") for i in range(n)))


def _many_csv_records(n: int = 400, prefix: str = "c") -> str:
    return csv(*(csv_record(f"{prefix}{i}", f"u{i}") for i in range(n)))


@pytest.mark.parametrize("suffix, text", [(".jsonl.gz", _many_jsonl_lines()), (".csv.gz", _many_csv_records())])
def test_truncated_gzip_fails_and_next_file_lands(warehouse, land, write_file, suffix, text):
    compressed = gzip.compress(text.encode(), mtime=0)
    check_failed(warehouse, land(write_file("truncated" + suffix, compressed[: len(compressed) // 2])))
    counts = table_counts(warehouse)
    assert (counts["events"], counts["events_rejected"], counts["ingested_files"]) == (0, 0, 1)

    check(warehouse, land(write_file("good" + suffix, compressed)), read=400, landed=400)
    statuses = query(warehouse, "SELECT status, count(*) AS n FROM ingested_files GROUP BY status ORDER BY status")
    assert statuses == [{"status": "failed", "n": 1}, {"status": "landed", "n": 1}]


def test_gzip_missing_only_its_trailer_fails(warehouse, land, write_file):
    compressed = gzip.compress(_many_jsonl_lines(20).encode(), mtime=0)
    check_failed(warehouse, land(write_file("no_trailer.jsonl.gz", compressed[:-4])))


def test_large_truncated_gzip_fails_without_partial_rows(warehouse, land, write_file):
    """Cut deep inside a ~2 MB stream: many rows were readable before the error; none may stay."""
    compressed = gzip.compress(_many_jsonl_lines(20_000).encode(), mtime=0)
    broken = compressed[: int(len(compressed) * 0.8)]
    report = land(write_file("truncated.jsonl.gz", broken))
    check_failed(warehouse, report)
    assert table_counts(warehouse)["events"] == 0
    # The same broken bytes again (other name): failed again, still one manifest row for them.
    again = land(write_file("truncated_again.jsonl.gz", broken))
    assert again.status == "failed" and again.batch_id == report.batch_id
    assert len(query(warehouse, "SELECT * FROM ingested_files")) == 1
    check(warehouse, land(write_file("good.jsonl", _many_jsonl_lines(3))), read=3, landed=3)


def test_unsupported_suffix_fails_naming_supported_types(warehouse, land, write_file):
    report = land(write_file("events.txt", jsonl(event())))
    check_failed(warehouse, report, "unsupported", ".jsonl", ".csv", ".parquet", ".jsonl.gz", ".csv.gz")
    assert query(warehouse, "SELECT file_format FROM ingested_files") == [{"file_format": None}]


@pytest.mark.parametrize("name", ["garbage.parquet", "garbage.jsonl.gz", "garbage.csv.gz"])
def test_file_that_is_not_what_its_suffix_says_fails(warehouse, land, write_file, name):
    check_failed(warehouse, land(write_file(name, b"\x00\x01 certainly not that format \xff" * 20)))
    check(warehouse, land(write_file("good.jsonl", jsonl(event()))), read=1, landed=1)


def _parquet_with_columns(path: Path, names: list[str]) -> Path:
    columns = {"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": T}
    pq.write_table(pa.Table.from_arrays([pa.array([columns.get(name.lower(), "x")]) for name in names], names=names),
                   path)
    return path


@pytest.mark.parametrize("repeated", ["user_id", "USER_ID", "extra"])
def test_parquet_with_a_repeated_column_name_fails_with_its_reason_and_the_next_file_lands(
        warehouse, land, tmp_path, repeated):
    """It raised KeyError (a bug: retried, and missing from the manifest). DuckDB would have read
    `USER_ID` as a second `user_id`; a repeated column that landing ignores is just as ambiguous."""
    names = ["user_id", "item_id", "event_type", "ts", "extra", repeated]
    report = land(_parquet_with_columns(tmp_path / "repeated.parquet", names))
    check_failed(warehouse, report, "repeated column names", repeated)
    check(warehouse, land(_parquet_with_columns(tmp_path / "good.parquet", names[:4])), read=1, landed=1)


def test_csv_header_repeating_a_name_in_another_case_fails_with_its_reason(warehouse, land, write_file):
    """DuckDB's reader refused it with a BinderException: a bug, not a failed file."""
    text = csv(csv_record(), header="event_id,user_id,item_id,event_type,ts,USER_ID\n")
    check_failed(warehouse, land(write_file("case.csv", text)), "repeated column names", "USER_ID")


@pytest.mark.parametrize("name", ["no_header.csv", "no_header.csv.gz"])
def test_csv_without_a_header_row_is_refused_instead_of_losing_its_first_record(warehouse, land, write_file, name):
    """Its first record was taken for a header: consumed, never counted, and every other row rejected."""
    text = "".join(csv_record(f"e{i}", value="9.5", event_type="purchase") + "\n" for i in range(3))
    data = gzip.compress(text.encode(), mtime=0) if name.endswith(".gz") else text
    report = land(write_file(name, data))
    check_failed(warehouse, report, "not a header", "missing: user_id, item_id, event_type, ts", "header row")
    assert "u1" not in report.reason and "e0" not in report.reason, "the refusal repeats none of the record"


@pytest.mark.parametrize("column", ["user_id", "item_id", "event_type", "ts"])
def test_csv_header_not_naming_a_required_column_is_refused(warehouse, land, write_file, column):
    names = CSV_HEADER.strip().split(",")
    keep = [i for i, name in enumerate(names) if name != column]
    records = [csv_record(f"e{i}").split(",") for i in range(3)]
    text = ",".join(names[i] for i in keep) + "\n" + "".join(",".join(r[i] for i in keep) + "\n" for r in records)
    check_failed(warehouse, land(write_file("nocol.csv", text)), f"missing: {column})")


def test_csv_header_naming_the_required_columns_in_any_order_with_extras_lands(warehouse, land, write_file):
    text = "ts,extra,event_type,item_id,user_id\n" + f"{T},x,view,i1,u1\n"
    batch = check(warehouse, land(write_file("reordered.csv", text)), read=1, landed=1)
    assert (batch.landed[0]["user_id"], batch.landed[0]["item_id"]) == ("u1", "i1")


# --- encoding, BOM, line endings, blank lines -------------------------------------------------


def test_invalid_utf8_on_one_jsonl_line(warehouse, land, write_file):
    bad = json.dumps(event("e2")).encode().replace(b'"u1"', b'"u\xff1"')
    data = json.dumps(event("e1")).encode() + b"\n" + bad + b"\n" + json.dumps(event("e3")).encode() + b"\n"
    batch = check(warehouse, land(write_file("utf8.jsonl", data)), read=3, landed=2, rejected=1)
    row = batch.only_reject
    assert row["source_row"] == 2
    assert "encoding" in row["reason"].lower() or "utf-8" in row["reason"].lower()
    assert row["raw"].startswith('{"event_id": "e2", "user_id": "u') and row["raw"].endswith(f'"ts": "{T}"}}')
    assert [r["source_row"] for r in batch.landed] == [1, 3]


def test_invalid_utf8_in_one_csv_record(warehouse, land, write_file):
    data = csv(csv_record("e1"), f"e2,u\udcff1,i1,view,{T},", csv_record("e3")).encode(
        "utf-8", errors="surrogateescape")
    batch = check(warehouse, land(write_file("utf8.csv", data)), read=3, landed=2, rejected=1)
    row = batch.only_reject
    assert row["source_row"] == 2
    assert "encoding" in row["reason"].lower() or "utf-8" in row["reason"].lower()
    assert row["raw"].startswith("e2,u") and row["raw"].endswith(f"1,i1,view,{T},")
    assert [r["source_row"] for r in batch.landed] == [1, 3]


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.csv", "bom.jsonl.gz"])
def test_utf8_bom_is_ignored(warehouse, land, write_file, name):
    body = csv(csv_record("e1"), csv_record("e2")) if ".csv" in name else jsonl(event("e1"), event("e2"))
    data = b"\xef\xbb\xbf" + body.encode()
    batch = check(warehouse, land(write_file(name, gzip.compress(data) if name.endswith(".gz") else data)),
                  read=2, landed=2)
    assert [(r["event_id"], r["source_row"]) for r in batch.landed] == [("e1", 1), ("e2", 2)]


def test_crlf_line_endings_csv(warehouse, land, write_file):
    text = csv(csv_record("e1"), csv_record("e2", user_id=""), csv_record("e3", value="2")).replace("\n", "\r\n")
    batch = check(warehouse, land(write_file("crlf.csv", text)), read=3, landed=2, rejected=1)
    assert batch.only_reject["source_row"] == 2
    assert [(r["event_id"], r["source_row"], r["value"]) for r in batch.landed] == [("e1", 1, None), ("e3", 3, 2.0)]
    assert not any("\r" in str(v) for r in batch.landed for v in r.values())


def test_crlf_line_endings_jsonl(warehouse, land, write_file):
    batch = check(warehouse, land(write_file("crlf.jsonl", jsonl(event("e1"), "{oops", event("e3"), newline="\r\n"))),
                  read=3, landed=2, rejected=1)
    assert (batch.only_reject["source_row"], batch.only_reject["raw"]) == (2, "{oops")
    assert [r["event_id"] for r in batch.landed] == ["e1", "e3"]


def test_blank_jsonl_lines_are_not_rows_and_line_numbers_stay_physical(warehouse, land, write_file):
    text = jsonl(event("e1"), "", "   ", event("e4", user_id=DROP), "  ", event("e6"))
    batch = check(warehouse, land(write_file("blank.jsonl", text)), read=3, landed=2, rejected=1)
    assert batch.only_reject["source_row"] == 4
    assert [r["source_row"] for r in batch.landed] == [1, 6]


def test_tab_only_jsonl_line_is_blank(warehouse, land, write_file):
    check(warehouse, land(write_file("tab.jsonl", jsonl(event("e1"), "\t", " \t ", event("e4")))), read=2, landed=2)


def test_line_numbers_stay_right_in_a_long_file(warehouse, land, write_file):
    """20k lines with a BOM, CRLF, blank lines, bad JSON and a bad-UTF-8 line scattered through them."""
    lines = [json.dumps(event(f"k{i}", user_id=f"u{i}")).encode() for i in range(20_000)]
    blank, broken, bad_utf8 = {5, 7_001, 19_998}, {12, 9_999, 15_000}, {4_321}
    for i in blank:
        lines[i] = b"   "
    for i in broken:
        lines[i] = b"{not json"
    for i in bad_utf8:
        lines[i] = lines[i].replace(b'"user_id": "', b'"user_id": "\xff')
    report = land(write_file("long.jsonl", b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n"))
    bad = broken | bad_utf8
    batch = check(warehouse, report, read=20_000 - len(blank), landed=20_000 - len(blank) - len(bad), rejected=len(bad))
    assert [r["source_row"] for r in batch.rejected] == sorted(i + 1 for i in bad)
    assert all(r["event_id"] == f"k{r['source_row'] - 1}" and r["user_id"] == f"u{r['source_row'] - 1}"
               for r in batch.landed)


# --- JSON structure ---------------------------------------------------------------------------

NOT_AN_OBJECT = [
    ("truncated object", '{"event_id": "e2", "user_id": ', "invalid JSON"),
    ("trailing garbage", '{"event_id": "e2"} trailing', "invalid JSON"),
    ("two objects", '{"event_id": "e2"}{"event_id": "e3"}', "invalid JSON"),
    ("plain text", "not json at all", "invalid JSON"),
    ("array", '[{"event_id": "e2", "user_id": "u1"}]', "JSON line is not an object"),
    ("string", '"just a string"', "JSON line is not an object"),
    ("number", "42", "JSON line is not an object"),
    ("null", "null", "JSON line is not an object"),
]


def test_json_syntax_errors_and_lines_that_are_not_objects_are_rejected(warehouse, land, write_file):
    text = jsonl(event("first"), *(line for _, line, _ in NOT_AN_OBJECT), event("last"))
    n = len(NOT_AN_OBJECT)
    batch = check(warehouse, land(write_file("bad.jsonl", text)), read=n + 2, landed=2, rejected=n)
    assert mismatches([(case, i + 2, reason, line) for i, (case, line, reason) in enumerate(NOT_AN_OBJECT)],
                      batch) == {}
    assert [r["source_row"] for r in batch.landed] == [1, n + 2]


NESTABLE_FIELDS = ["user_id", "item_id", "event_id", "event_type", "ts", "value", "session_id"]


def test_scalar_field_that_is_an_object_or_array_is_rejected(warehouse, land, write_file):
    bad = [event(**{"event_id": f"b{i}", field: nested})
           for i, (field, nested) in enumerate((f, n) for f in NESTABLE_FIELDS for n in ({"x": 1}, [1, 2]))]
    batch = check(warehouse, land(write_file("nested.jsonl", jsonl(event("ok"), *bad))),
                  read=len(bad) + 1, landed=1, rejected=len(bad))
    fields = [f for f in NESTABLE_FIELDS for _ in range(2)]
    cases = [(json.dumps(row), i + 2, fields[i], json.dumps(row)) for i, row in enumerate(bad)]
    assert mismatches(cases, batch) == {}  # each reason names the field


def test_context_object_is_carried_as_json_text(warehouse, land, write_file):
    batch = check(warehouse, land(write_file("ctx.jsonl", jsonl(event("e1", context={"page": "home", "pos": [1, 2]})))),
                  read=1, landed=1)
    assert json.loads(batch.landed[0]["context"]) == {"page": "home", "pos": [1, 2]}


def test_string_ids_starting_with_a_brace_or_bracket_land(warehouse, land, write_file):
    rows = [event("e1", user_id="{guest}"), event("e2", item_id="[sale] shoes"), event("[e3]")]
    check(warehouse, land(write_file("braces.jsonl", jsonl(*rows))), read=3, landed=3)


def test_json_numbers_as_ids_become_text(warehouse, land, write_file):
    batch = check(warehouse, land(write_file("num.jsonl", jsonl(event(7, user_id=123, item_id=456)))), read=1, landed=1)
    assert [(r["event_id"], r["user_id"], r["item_id"]) for r in batch.landed] == [("7", "123", "456")]


@pytest.mark.parametrize("field", ["user_id", "item_id", "event_id", "session_id"])
def test_json_nan_or_infinity_as_an_id_is_rejected_but_the_string_nan_lands(warehouse, land, write_file, field):
    """DuckDB reads Python's NaN and Infinity literals as numbers, whose text became the id 'NaN'."""
    literals = [json.dumps(event(**{"event_id": f"b{i}", field: "PLACEHOLDER"})).replace('"PLACEHOLDER"', literal)
                for i, literal in enumerate(["NaN", "Infinity", "-Infinity"])]
    text = jsonl(*literals, event(**{"event_id": "s", field: "NaN"}))
    batch = check(warehouse, land(write_file("nan.jsonl", text)), read=4, landed=1, rejected=3)
    assert all(r["reason"] == f"NaN or infinity where an id belongs: {field}" for r in batch.rejected)


# --- contract rules ---------------------------------------------------------------------------

# (case, fields changed on a valid event, expected reason substring); one line per case in one file.
JSONL_RULES = [
    ("value abc", {"value": "abc"}, "value is not a number"),
    ("value true", {"value": True}, "value is not a number"),
    ("ts yesterday", {"ts": "yesterday"}, "unparseable ts yesterday"),
    ("ts impossible date", {"ts": "2024-13-45"}, "unparseable ts 2024-13-45"),
    ("no user_id", {"user_id": DROP}, "missing user_id"),
    ("no item_id", {"item_id": DROP}, "missing item_id"),
    ("no event_type", {"event_type": DROP}, "missing event_type"),
    ("no ts", {"ts": DROP}, "missing ts"),
    ("empty user_id", {"user_id": ""}, "missing user_id"),
    ("blank item_id", {"item_id": "   "}, "missing item_id"),
    ("null user_id", {"user_id": None}, "missing user_id"),
    ("empty event_type", {"event_type": ""}, "missing event_type"),
    ("empty ts", {"ts": ""}, "missing ts"),
    ("unknown event_type", {"event_type": "teleport"}, "unknown event_type teleport"),
    ("negative value", {"value": -1}, "negative value"),
    ("negative price", {"event_type": "purchase", "value": -0.01}, "negative value"),
    ("absurd value", {"value": 2e9}, "value above"),
    ("absurd price", {"event_type": "purchase", "value": 1e9 + 1}, "value above"),
    ("rating 7", {"event_type": "rating", "value": 7}, "rating 7.0 outside 0.5..5.0"),
    ("rating 0", {"event_type": "rating", "value": 0}, "rating 0.0 outside 0.5..5.0"),
    ("rating 5.01", {"event_type": "rating", "value": 5.01}, "outside 0.5..5.0"),
    ("rating without value", {"event_type": "rating"}, "rating without value"),
    ("rating null value", {"event_type": "rating", "value": None}, "rating without value"),
    ("rating empty value", {"event_type": "rating", "value": ""}, "rating without value"),
    ("value 'NaN'", {"value": "NaN"}, "value is not finite"),
    ("value 'Infinity'", {"value": "Infinity"}, "value is not finite"),
    ("value '-Infinity'", {"value": "-Infinity"}, "value is not finite"),
]


def test_each_contract_violation_in_jsonl_is_quarantined_with_its_reason(warehouse, land, write_file):
    bad = [event(f"bad{i}", **fields) for i, (_, fields, _) in enumerate(JSONL_RULES)]
    batch = check(warehouse, land(write_file("rules.jsonl", jsonl(event("first"), *bad, event("last")))),
                  read=len(bad) + 2, landed=2, rejected=len(bad))
    cases = [(case, i + 2, reason, json.dumps(bad[i])) for i, (case, _, reason) in enumerate(JSONL_RULES)]
    assert mismatches(cases, batch) == {}
    assert [r["event_id"] for r in batch.rejected] == [row["event_id"] for row in bad]  # parsed fields kept
    assert [r["source_row"] for r in batch.landed] == [1, len(bad) + 2]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_and_infinity_literals_are_rejected(warehouse, land, write_file, literal):
    line = json.dumps(event("e2"))[:-1] + f', "value": {literal}}}'
    batch = check(warehouse, land(write_file("nan.jsonl", jsonl(event("e1"), line))), read=2, landed=1, rejected=1)
    assert (batch.only_reject["source_row"], batch.only_reject["raw"]) == (2, line)
    assert "value is not finite" in batch.only_reject["reason"]


def test_every_broken_rule_of_a_row_is_listed(warehouse, land, write_file):
    bad = event("e1", user_id=DROP, event_type="teleport", ts="yesterday", value="abc")
    batch = check(warehouse, land(write_file("many.jsonl", jsonl(bad))), read=1, landed=0, rejected=1)
    for part in ("missing user_id", "unknown event_type", "unparseable ts", "value is not a number"):
        assert part in batch.only_reject["reason"]


# (case, CSV record, expected reason substring); one record per case in one file.
CSV_RULES = [
    ("value abc", csv_record("c2", value="abc"), "value is not a number"),
    ("ts yesterday", csv_record("c3", ts="yesterday"), "unparseable ts yesterday"),
    ("empty user_id", csv_record("c4", user_id=""), "missing user_id"),
    ("quoted empty item_id", csv_record("c5", item_id='""'), "missing item_id"),
    ("empty event_type", csv_record("c6", event_type=""), "missing event_type"),
    ("empty ts", csv_record("c7", ts=""), "missing ts"),
    ("unknown event_type", csv_record("c8", event_type="teleport"), "unknown event_type teleport"),
    ("value NaN", csv_record("c9", value="NaN"), "value is not finite"),
    ("value -inf", csv_record("c10", value="-inf"), "value is not finite"),
    ("negative value", csv_record("c11", value="-3"), "negative value"),
    ("absurd value", csv_record("c12", value="1e10"), "value above"),
    ("rating 7", csv_record("c13", event_type="rating", value="7"), "rating 7.0 outside"),
    ("rating 0", csv_record("c14", event_type="rating", value="0"), "rating 0.0 outside"),
    ("rating without value", csv_record("c15", event_type="rating"), "rating without value"),
    ("far future", csv_record("c16", ts="2030-01-01T00:00:00Z"), "outside 1990-01-01..2024-06-02"),
]


def test_each_contract_violation_in_csv_is_quarantined_with_its_reason(warehouse, land, write_file):
    records = [csv_record("c1")] + [record for _, record, _ in CSV_RULES] + [csv_record("c99")]
    batch = check(warehouse, land(write_file("rules.csv", csv(*records))),
                  read=len(records), landed=2, rejected=len(CSV_RULES))
    assert mismatches([(case, i + 2, reason, None) for i, (case, _, reason) in enumerate(CSV_RULES)], batch) == {}
    # A CSV row that parsed is stored as JSON of its fields, with the source row and the parsed fields.
    assert [json.loads(r["raw"])["event_id"] for r in batch.rejected] == [f"c{i}" for i in range(2, 17)]
    assert [r["event_id"] for r in batch.rejected] == [f"c{i}" for i in range(2, 17)]
    assert [r["source_row"] for r in batch.landed] == [1, len(records)]


def test_csv_reject_keeps_the_offending_raw_text(warehouse, land, write_file):
    batch = check(warehouse, land(write_file("raw.csv", csv(csv_record("e1", value="abc")))), read=1, landed=0, rejected=1)
    assert "abc" in batch.only_reject["raw"]


def test_event_type_is_case_insensitive_and_normalized_to_lower(warehouse, land, write_file):
    written = ["PURCHASE", "View", " click ", "Add_To_Cart", "RATING"]
    rows = [event(f"e{i}", event_type=t, value=4) for i, t in enumerate(written)]
    batch = check(warehouse, land(write_file("case.jsonl", jsonl(*rows))), read=5, landed=5)
    assert [r["event_type"] for r in batch.landed] == ["purchase", "view", "click", "add_to_cart", "rating"]


def test_event_type_in_upper_case_in_csv(warehouse, land, write_file):
    batch = check(warehouse, land(write_file("case.csv", csv(csv_record(event_type="ADD_TO_CART")))), read=1, landed=1)
    assert batch.landed[0]["event_type"] == "add_to_cart"


ACCEPTED_VALUES = [
    ({"event_type": "purchase", "value": 0}, 0.0),
    ({"event_type": "purchase", "value": "0"}, 0.0),
    ({"event_type": "purchase", "value": 1e9}, 1e9),
    ({"event_type": "rating", "value": 0.5}, 0.5),
    ({"event_type": "rating", "value": 5}, 5.0),
    ({"event_type": "rating", "value": " 4.5 "}, 4.5),
    ({"event_type": "view", "value": None}, None),
    ({"event_type": "view", "value": ""}, None),
    ({"event_type": "click"}, None),
]


def test_price_zero_and_boundary_values_are_accepted(warehouse, land, write_file):
    rows = [event(f"e{i}", **fields) for i, (fields, _) in enumerate(ACCEPTED_VALUES)]
    batch = check(warehouse, land(write_file("ok.jsonl", jsonl(*rows))), read=len(rows), landed=len(rows))
    assert [r["value"] for r in batch.landed] == [value for _, value in ACCEPTED_VALUES]


def test_empty_event_id_gets_a_hash_id(warehouse, land, write_file):
    batch = check(warehouse, land(write_file("eid.jsonl", jsonl(event(""), event("  ", user_id="u2")))),
                  read=2, landed=2)
    assert all(r["event_id"].startswith("h-") for r in batch.landed)


def test_empty_quoted_csv_event_id_gets_a_hash_id(warehouse, land, write_file):
    batch = check(warehouse, land(write_file("eid.csv", csv(csv_record('""')))), read=1, landed=1)
    assert batch.landed[0]["event_id"].startswith("h-")


INVISIBLE_IDS = [
    ("NUL inside", "u1\x00x", "contains a NUL character"),
    ("NUL only", "\x00", "contains a NUL character"),
    ("zero-width space", "\u200b", "is blank"),
    ("zero-width joiners", "\u200c\u200d", "is blank"),
    ("word joiner", "\u2060", "is blank"),
    ("byte order mark", "\ufeff", "is blank"),
    ("no-break and ideographic spaces", "\u00a0\u3000", "is blank"),
    ("vertical tab and form feed", "\x0b\x0c", "is blank"),
    ("spaces around a zero-width space", " \u200b\u2003 ", "is blank"),
]


@pytest.mark.parametrize("field", ["user_id", "item_id", "event_id", "session_id"])
def test_ids_holding_a_nul_or_nothing_visible_are_rejected_naming_the_field(warehouse, land, write_file, field):
    """They were accepted: a user id of one zero-width space, or one with a NUL in it."""
    rows = [event(**{"event_id": f"b{i}", field: value}) for i, (_, value, _) in enumerate(INVISIBLE_IDS)]
    batch = check(warehouse, land(write_file("invisible.jsonl", jsonl(*rows))),
                  read=len(rows), landed=0, rejected=len(rows))
    cases = [(case, i + 1, f"{field} {reason}", None) for i, (case, _, reason) in enumerate(INVISIBLE_IDS)]
    assert mismatches(cases, batch) == {}


def test_ids_with_a_visible_character_land_whatever_their_script_or_invisible_neighbours(warehouse, land, write_file):
    ids = ["日本", "\u00e9", "u\u200b1", "\ufeffu2", "\u3000u3", "!", "~", "\U0001F600"]
    rows = [event(f"v{i}", user_id=user, item_id=user, session_id=user) for i, user in enumerate(ids)]
    batch = check(warehouse, land(write_file("visible.jsonl", jsonl(*rows))), read=len(ids), landed=len(ids))
    assert [r["user_id"] for r in batch.landed] == ids


def test_csv_id_with_a_raw_nul_byte_is_rejected(warehouse, land, write_file):
    data = csv(csv_record("c1", user_id="a\x00b"), csv_record("c2", item_id="\u200b"), csv_record("c3"))
    batch = check(warehouse, land(write_file("nul.csv", data)), read=3, landed=1, rejected=2)
    assert [r["reason"] for r in batch.rejected] == ["user_id contains a NUL character",
                                                     "item_id is blank (whitespace or zero-width characters only)"]


# --- duplicates and idempotence ---------------------------------------------------------------


def test_duplicate_event_ids_within_a_file_first_occurrence_lands(warehouse, land, write_file):
    text = jsonl(event("a", user_id="first"), event("b"), event("a", user_id="first"), event("a", user_id="first"))
    batch = check(warehouse, land(write_file("dups.jsonl", text)), read=4, landed=2, duplicates=2)
    assert [(r["event_id"], r["user_id"], r["source_row"]) for r in batch.landed] == [("a", "first", 1), ("b", "u1", 2)]


def test_an_event_id_repeated_with_other_contents_in_one_file_is_quarantined_as_a_conflict(
        warehouse, land, write_file):
    """It was counted as a plain duplicate, the other version gone without a trace."""
    text = jsonl(event("a", user_id="first"), event("b"), event("a", user_id="second"), event("a", user_id="first"),
                 event("a", value=1, event_type="purchase", user_id="first"))
    batch = check(warehouse, land(write_file("conflict.jsonl", text)), read=5, landed=2, duplicates=1, rejected=2)
    assert [(r["event_id"], r["user_id"], r["source_row"]) for r in batch.landed] == [("a", "first", 1), ("b", "u1", 2)]
    assert [(r["source_row"], r["reason"], r["user_id"]) for r in batch.rejected] == [
        (3, "event_id a already landed with other contents at row 1 of this file", "second"),
        (5, "event_id a already landed with other contents at row 1 of this file", "first")]
    assert batch.rejected[1]["event_type"] == "purchase", "the conflicting version is kept whole"


def test_rejected_first_occurrence_does_not_shadow_a_valid_later_one(warehouse, land, write_file):
    batch = check(warehouse, land(write_file("dups.jsonl", jsonl(event("a", user_id=DROP), event("a", user_id="ok")))),
                  read=2, landed=1, rejected=1)
    assert batch.landed[0]["source_row"] == 2


def test_duplicate_event_ids_across_files(warehouse, land, write_file):
    check(warehouse, land(write_file("one.jsonl", jsonl(event("a"), event("b")))), read=2, landed=2)
    check(warehouse, land(write_file("two.jsonl", jsonl(event("b"), event("c")))), read=2, landed=1, duplicates=1)
    assert query(warehouse, "SELECT user_id FROM events WHERE event_id = 'b'") == [{"user_id": "u1"}]


def test_an_event_id_already_landed_with_other_contents_is_quarantined_as_a_conflict(warehouse, land, write_file):
    """Another file's version of a landed event_id was counted as a duplicate, with no trace."""
    first = check(warehouse, land(write_file("one.jsonl", jsonl(event("a"), event("b")))), read=2, landed=2)
    text = jsonl(event("b", user_id="changed"), event("c"), event("b"), event("b", ts="2024-01-01T11:00:00Z"),
                 event("b", user_id="changed"))
    batch = check(warehouse, land(write_file("two.jsonl", text)), read=5, landed=1, duplicates=1, rejected=3)
    reason = f"event_id b already landed with other contents in batch {first.report.batch_id}"
    assert [(r["source_row"], r["reason"]) for r in batch.rejected] == [(1, reason), (4, reason), (5, reason)]
    assert query(warehouse, "SELECT user_id, ts FROM events WHERE event_id = 'b'") == [{"user_id": "u1", "ts": T_UTC}]


def test_a_conflict_is_judged_on_normalized_contents_so_another_format_of_an_event_is_a_duplicate(
        warehouse, land, write_file):
    as_jsonl = jsonl(event("a", ts="2024-01-01T11:00:00+01:00", event_type="Purchase", value=9.5))
    as_csv = csv(csv_record("a", ts="1704103200", event_type="purchase", value="9.50"))
    check(warehouse, land(write_file("one.jsonl", as_jsonl)), read=1, landed=1)
    check(warehouse, land(write_file("two.csv", as_csv)), read=1, landed=0, duplicates=1)


def test_same_file_twice_is_already_landed_and_changes_nothing(warehouse, land, write_file):
    path = write_file("batch.jsonl", jsonl(event("a"), event("a"), event("b", user_id=""), event("c")))
    first = land(path)
    check(warehouse, first, read=4, landed=2, duplicates=1, rejected=1)
    before = table_counts(warehouse)
    manifest_before = query(warehouse, "SELECT * FROM ingested_files ORDER BY batch_id")

    again = land(path)
    copy = land(write_file("copy_of_batch.jsonl", path.read_bytes()))
    for report in (again, copy):
        assert report.status == "already_landed"
        assert report.batch_id == first.batch_id
        assert report.read == report.landed + report.duplicates + report.rejected
        assert (report.read, report.landed, report.rejected) == (4, 0, 1)
    assert table_counts(warehouse) == before
    assert query(warehouse, "SELECT * FROM ingested_files ORDER BY batch_id") == manifest_before


def test_same_events_in_another_format_are_all_duplicates(warehouse, land, write_file):
    rows = [event("a", event_type="rating", value=4.5), event("b"), event("c", ts="yesterday")]
    as_csv = csv(csv_record("a", event_type="rating", value="4.5"), csv_record("b"), csv_record("c", ts="yesterday"))
    check(warehouse, land(write_file("ev.csv", as_csv)), read=3, landed=2, rejected=1)
    check(warehouse, land(write_file("ev.jsonl", jsonl(*rows))), read=3, landed=0, duplicates=2, rejected=1)
    assert table_counts(warehouse)["events"] == 2


# --- deterministic ids for rows without event_id ----------------------------------------------


def _write_three_formats(folder: Path) -> list[Path]:
    rows = [
        {"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": "2024-01-01T10:00:00Z", "session_id": "s1"},
        {"user_id": "u2", "item_id": "i2", "event_type": "rating", "ts": "2024-01-01T11:00:00Z", "value": 4.5},
    ]
    folder.mkdir()
    (folder / "ev.jsonl").write_text(jsonl(*rows))
    (folder / "ev.csv").write_text(
        "user_id,item_id,event_type,ts,value,session_id\n"
        "u1,i1,click,2024-01-01T10:00:00Z,,s1\n"
        "u2,i2,rating,2024-01-01T11:00:00Z,4.5,\n")
    pq.write_table(pa.table({
        "user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "event_type": ["click", "rating"],
        "ts": pa.array([datetime(2024, 1, 1, 10, tzinfo=UTC), datetime(2024, 1, 1, 11, tzinfo=UTC)],
                       pa.timestamp("us", tz="UTC")),
        "value": pa.array([None, 4.5], pa.float64()), "session_id": ["s1", None],
    }), folder / "ev.parquet")
    return [folder / "ev.csv", folder / "ev.jsonl", folder / "ev.parquet"]


def test_rows_without_event_id_get_the_same_hash_id_in_every_format(tmp_path, now):
    ids = []
    for path in _write_three_formats(tmp_path / "files"):
        wh = Warehouse(tmp_path / f"{path.suffix[1:]}.duckdb")
        batch = check(wh, land_file(wh, path, now=now), read=2, landed=2)
        ids.append([r["event_id"] for r in batch.landed])
    assert ids[0] == ids[1] == ids[2]
    assert all(i.startswith("h-") for i in ids[0]) and len(set(ids[0])) == 2


def test_relanding_hash_id_rows_from_other_formats_dedupes(warehouse, land, tmp_path):
    csv_path, jsonl_path, parquet_path = _write_three_formats(tmp_path / "files")
    check(warehouse, land(csv_path), read=2, landed=2)
    check(warehouse, land(jsonl_path), read=2, landed=0, duplicates=2)
    check(warehouse, land(parquet_path), read=2, landed=0, duplicates=2)


def test_hash_id_differs_when_any_contract_field_differs(warehouse, land, write_file):
    base = event(None, event_type="rating", value=4.5, session_id="s1")
    variants = [base] + [{**base, k: v} for k, v in [("user_id", "u2"), ("item_id", "i2"), ("event_type", "purchase"),
                                                        ("ts", "2024-01-01T10:00:01Z"), ("value", 4.0),
                                                        ("session_id", "s2")]]
    check(warehouse, land(write_file("variants.jsonl", jsonl(*variants, base))), read=8, landed=7, duplicates=1)


def test_hash_id_does_not_collide_when_nullable_fields_shift(warehouse, land, write_file):
    check(warehouse, land(write_file("collide.jsonl", jsonl(event(None, value=4.5), event(None, session_id="4.5")))),
          read=2, landed=2)


# --- timestamps -------------------------------------------------------------------------------

ACCEPTED_TS = [
    ("2024-01-01T10:00:00Z", T_UTC),
    ("2024-01-01T10:00:00.123456Z", T_UTC + timedelta(microseconds=123456)),
    ("2024-01-01T12:00:00+02:00", T_UTC),
    ("2024-01-01T05:30:00-04:30", T_UTC),
    ("2024-01-01T10:00:00", T_UTC),
    ("2024-01-01 10:00:00", T_UTC),
    ("2024-01-01", datetime(2024, 1, 1, tzinfo=UTC)),
    (1704103200, T_UTC),
    ("1704103200", T_UTC),
    (1704103200.5, T_UTC + timedelta(milliseconds=500)),
    ("1704103200.25", T_UTC + timedelta(milliseconds=250)),
    (1704103200123, T_UTC + timedelta(milliseconds=123)),
    ("1704103200123", T_UTC + timedelta(milliseconds=123)),
    ("1990-01-01T00:00:00Z", datetime(1990, 1, 1, tzinfo=UTC)),
    ("2024-06-02T12:00:00Z", datetime(2024, 6, 2, 12, tzinfo=UTC)),  # exactly contract.latest_ts(now)
]


def test_accepted_timestamp_forms_land_at_the_right_utc_instant(warehouse, land, write_file):
    rows = [event(f"t{i}", ts=ts) for i, (ts, _) in enumerate(ACCEPTED_TS)]
    batch = check(warehouse, land(write_file("ts.jsonl", jsonl(*rows))), read=len(rows), landed=len(rows))
    assert {str(ts): batch.landed_at(i + 1)["ts"] for i, (ts, _) in enumerate(ACCEPTED_TS)} == {
        str(ts): expected for ts, expected in ACCEPTED_TS}


def test_accepted_timestamp_forms_in_csv(warehouse, land, write_file):
    forms = [(ts, expected) for ts, expected in ACCEPTED_TS if " " not in str(ts)]
    records = [csv_record(f"t{i}", ts=ts) for i, (ts, _) in enumerate(forms)]
    batch = check(warehouse, land(write_file("ts.csv", csv(*records))), read=len(forms), landed=len(forms))
    assert {str(ts): batch.landed_at(i + 1)["ts"] for i, (ts, _) in enumerate(forms)} == {
        str(ts): expected for ts, expected in forms}


def test_latest_ts_follows_now(now):
    assert EventContract().latest_ts(now) == datetime(2024, 6, 2, 12, tzinfo=UTC)


REJECTED_TS = [
    "2024-06-02T12:00:01Z",  # one second after contract.latest_ts(now)
    "2100-01-01T00:00:00Z",
    4102444800,  # 2100 in epoch seconds
    4102444800000,  # 2100 in epoch milliseconds
    99999999999,  # epoch seconds just below the millisecond threshold: year 5138
    "1989-12-31T23:59:59Z",
    "1970-01-01",
    0,
    -5,
]


def test_far_future_and_far_past_are_rejected_with_a_ts_reason(warehouse, land, write_file):
    bad = [event(f"t{i}", ts=ts) for i, ts in enumerate(REJECTED_TS)]
    batch = check(warehouse, land(write_file("ts.jsonl", jsonl(event("ok"), *bad))),
                  read=len(bad) + 1, landed=1, rejected=len(bad))
    cases = [(str(ts), i + 2, "outside 1990-01-01..2024-06-02", json.dumps(bad[i])) for i, ts in enumerate(REJECTED_TS)]
    assert mismatches(cases, batch) == {}
    assert all(r["reason"].startswith("ts ") for r in batch.rejected)


# --- CSV quoting and malformed records --------------------------------------------------------


def test_csv_quoting_commas_doubled_quotes_and_newlines(warehouse, land, write_file):
    text = csv(
        f'e1,"u,1",i1,view,{T},',
        f'e2,"say ""hi""",i1,view,{T},',
        f'e3,"line one\nline two",i1,view,{T},',
        csv_record("e4", user_id=""),  # contract-failing record after the multi-line one
        csv_record("e5"),
    )
    batch = check(warehouse, land(write_file("quoted.csv", text)), read=5, landed=4, rejected=1)
    assert [(r["source_row"], r["user_id"]) for r in batch.landed] == [
        (1, "u,1"), (2, 'say "hi"'), (3, "line one\nline two"), (5, "u1")]
    assert (batch.only_reject["source_row"], batch.only_reject["event_id"]) == (4, "e4")


@pytest.mark.parametrize(
    "malformed, error",
    [(csv_record("e2") + ",extra", "too many columns"), ("e2,u1,i1,view", "missing columns")],
    ids=["too many", "too few"],
)
def test_csv_record_with_wrong_column_count_is_rejected_and_later_rows_keep_their_numbers(
        warehouse, land, write_file, malformed, error):
    text = csv(csv_record("e1"), malformed, csv_record("e3", user_id=""), csv_record("e4"))
    batch = check(warehouse, land(write_file("columns.csv", text)), read=4, landed=2, rejected=2)
    [csv_error] = batch.rejects_at(2)
    assert csv_error["raw"] == malformed
    assert csv_error["reason"] == f"unparseable CSV record: {error}"
    [contract_error] = batch.rejects_at(3)  # the contract-failing row after the malformed record
    assert (contract_error["reason"], contract_error["event_id"]) == ("missing user_id", "e3")
    assert [(r["event_id"], r["source_row"]) for r in batch.landed] == [("e1", 1), ("e4", 4)]


def test_malformed_csv_record_after_a_multiline_record_keeps_its_number(warehouse, land, write_file):
    text = csv(f'e1,"u\n1",i1,view,{T},', "e2,u1,i1,view", csv_record("e3", user_id=""), csv_record("e4"))
    batch = check(warehouse, land(write_file("columns.csv", text)), read=4, landed=2, rejected=2)
    assert [(r["source_row"], r["event_id"]) for r in batch.rejected] == [(2, None), (3, "e3")]
    assert [r["source_row"] for r in batch.landed] == [1, 4]


def test_rows_after_two_adjacent_malformed_csv_records_keep_their_numbers(warehouse, land, write_file):
    text = csv(csv_record("e1") + ",extra", "e2,u1,i1,view", csv_record("e3", user_id=""), csv_record("e4"))
    batch = check(warehouse, land(write_file("adjacent.csv", text)), read=4, landed=1, rejected=3)
    assert [(r["source_row"], r["event_id"]) for r in batch.rejected] == [(1, None), (2, None), (3, "e3")]
    assert [r["source_row"] for r in batch.landed] == [4]


def test_rows_after_two_adjacent_bad_utf8_jsonl_lines_keep_their_numbers(warehouse, land, write_file):
    bad = json.dumps(event("e1")).encode().replace(b'"u1"', b'"u\xff1"')
    data = b"\n".join([bad, bad.replace(b'"e1"', b'"e2"'), json.dumps(event("e3", user_id="")).encode(),
                       json.dumps(event("e4")).encode()]) + b"\n"
    batch = check(warehouse, land(write_file("adjacent.jsonl", data)), read=4, landed=1, rejected=3)
    assert [r["source_row"] for r in batch.rejected] == [1, 2, 3]
    assert [r["source_row"] for r in batch.landed] == [4]


# --- very long fields -------------------------------------------------------------------------


def test_ten_thousand_char_ids_are_rejected(warehouse, land, write_file):
    fields = ["user_id", "item_id", "event_id", "session_id"]
    bad = [event(**{"event_id": f"b{i}", field: "x" * 10_000}) for i, field in enumerate(fields)]
    batch = check(warehouse, land(write_file("long.jsonl", jsonl(event("ok"), *bad))),
                  read=len(bad) + 1, landed=1, rejected=len(bad))
    cases = [(f, i + 2, f"{f} longer than 256 characters", json.dumps(bad[i])) for i, f in enumerate(fields)]
    assert mismatches(cases, batch) == {}


def test_ten_thousand_char_user_id_in_csv_is_rejected(warehouse, land, write_file):
    batch = check(warehouse, land(write_file("long.csv", csv(csv_record("e1"), csv_record("e2", user_id="u" * 10_000)))),
                  read=2, landed=1, rejected=1)
    assert batch.only_reject["source_row"] == 2
    assert "user_id longer than 256" in batch.only_reject["reason"]
    assert json.loads(batch.only_reject["raw"])["user_id"] == "u" * 10_000


def test_hundred_k_context_is_rejected(warehouse, land, write_file):
    bad = event("e2", context="c" * 100_000)
    batch = check(warehouse, land(write_file("ctx.jsonl", jsonl(event("e1"), bad))), read=2, landed=1, rejected=1)
    assert (batch.only_reject["source_row"], batch.only_reject["raw"]) == (2, json.dumps(bad))
    assert "context longer than 4096" in batch.only_reject["reason"]


def test_jsonl_line_longer_than_16_mib_is_rejected_not_a_crash(warehouse, land, write_file):
    assert sources.MAX_LINE_BYTES == 16 * 1024 * 1024
    huge = json.dumps(event("e2", context="x" * (16 * 1024 * 1024 + 10)))
    batch = check(warehouse, land(write_file("huge.jsonl", jsonl(event("e1"), huge, event("e3")))),
                  read=3, landed=2, rejected=1)
    row = batch.only_reject
    assert row["source_row"] == 2
    assert re.search(r"line.*(longer|maximum)", row["reason"])
    assert row["raw"].startswith('{"event_id": "e2"') and len(row["raw"]) <= len(huge)
    assert [r["source_row"] for r in batch.landed] == [1, 3]


def test_csv_record_longer_than_max_line_size_is_rejected_not_the_whole_file(warehouse, land, write_file, monkeypatch):
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 4096)  # same behaviour as 16 MiB, without the 16 MiB
    text = csv(csv_record("e1"), csv_record("e2", user_id="u" * 5000), csv_record("e3"))
    check(warehouse, land(write_file("huge.csv", text)), read=3, landed=2, rejected=1)


# --- Parquet ----------------------------------------------------------------------------------


def test_parquet_typed_columns_land(warehouse, land, tmp_path):
    path = tmp_path / "typed.parquet"
    pq.write_table(pa.table({
        "event_id": pa.array([1, 2, 3], pa.int64()),
        "user_id": pa.array([10, 20, 30], pa.int64()),
        "item_id": pa.array([7, 8, 9], pa.int64()),
        "event_type": ["view", "rating", "PURCHASE"],
        "ts": pa.array([datetime(2024, 1, 1, 10, tzinfo=UTC), datetime(2024, 1, 1, 11, 30, 0, 250000, tzinfo=UTC),
                        datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))], pa.timestamp("us", tz="UTC")),
        "value": pa.array([None, 4.5, 0.0], pa.float64()),
        "session_id": ["s1", None, "s3"],
        "context": pa.array([{"a": 1, "b": "x"}, None, {"a": 2, "b": None}],
                            pa.struct([("a", pa.int64()), ("b", pa.string())])),
    }), path)
    with duckdb.connect() as con:  # the file really has the types this test is about
        types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE FROM '{path}')").fetchall())
    assert (types["ts"], types["value"], types["user_id"]) == ("TIMESTAMP WITH TIME ZONE", "DOUBLE", "BIGINT")
    batch = check(warehouse, land(path), read=3, landed=3)
    assert [(r["source_row"], r["event_id"], r["user_id"], r["item_id"], r["event_type"], r["ts"], r["value"],
             r["session_id"]) for r in batch.landed] == [
        (1, "1", "10", "7", "view", T_UTC, None, "s1"),
        (2, "2", "20", "8", "rating", datetime(2024, 1, 1, 11, 30, 0, 250000, tzinfo=UTC), 4.5, None),
        (3, "3", "30", "9", "purchase", T_UTC, 0.0, "s3"),
    ]
    assert [None if r["context"] is None else json.loads(r["context"]) for r in batch.landed] == [
        {"a": 1, "b": "x"}, None, {"a": 2, "b": None}]


def test_parquet_naive_timestamp_and_epoch_columns(warehouse, land, tmp_path):
    path = tmp_path / "naive.parquet"
    pq.write_table(pa.table({
        "event_id": ["a", "b", "c"], "user_id": ["u"] * 3, "item_id": ["i"] * 3, "event_type": ["view"] * 3,
        "ts": pa.array([1704103200, 1704103200123, None], pa.int64()),
        "value": pa.array([1, 2, 3], pa.int32()),
    }), path)
    batch = check(warehouse, land(path), read=3, landed=2, rejected=1)
    assert [(r["ts"], r["value"]) for r in batch.landed] == [(T_UTC, 1.0), (T_UTC + timedelta(milliseconds=123), 2.0)]
    assert (batch.only_reject["source_row"], batch.only_reject["reason"]) == (3, "missing ts")


def test_parquet_without_item_id_rejects_every_row(warehouse, land, tmp_path):
    path = tmp_path / "noitem.parquet"
    pq.write_table(pa.table({"event_id": ["a", "b", "c"], "user_id": ["u1", "u2", "u3"],
                             "event_type": ["view"] * 3, "ts": [T] * 3}), path)
    batch = check(warehouse, land(path), read=3, landed=0, rejected=3)
    assert [r["source_row"] for r in batch.rejected] == [1, 2, 3]
    assert all(r["reason"] == "missing item_id" for r in batch.rejected)
    assert [json.loads(r["raw"])["user_id"] for r in batch.rejected] == ["u1", "u2", "u3"]


def test_parquet_contract_violations_are_numbered_from_one(warehouse, land, tmp_path):
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"event_id": ["a", "b", "c"], "user_id": ["u1", None, "u3"], "item_id": ["i"] * 3,
                             "event_type": ["view", "view", "teleport"], "ts": [T] * 3,
                             "value": pa.array([1.0, float("nan"), 2.0])}), path)
    batch = check(warehouse, land(path), read=3, landed=1, rejected=2)
    assert [r["source_row"] for r in batch.rejected] == [2, 3]
    assert "missing user_id" in batch.rejected[0]["reason"] and "value is not finite" in batch.rejected[0]["reason"]
    assert "unknown event_type teleport" in batch.rejected[1]["reason"]


def test_parquet_struct_or_list_typed_id_is_rejected_like_jsonl(warehouse, land, tmp_path):
    path = tmp_path / "struct_id.parquet"
    pq.write_table(pa.table({"event_id": ["a", "b"], "user_id": pa.array([{"a": 1}, {"a": 2}]),
                             "item_id": pa.array([["x"], ["y"]]), "event_type": ["view"] * 2, "ts": [T] * 2}), path)
    batch = check(warehouse, land(path), read=2, landed=0, rejected=2)
    assert all("user_id" in r["reason"] and "item_id" in r["reason"] for r in batch.rejected)


@pytest.mark.parametrize("arrow_type", [pa.float64(), pa.float32()])
@pytest.mark.parametrize("field", ["user_id", "item_id", "event_id", "session_id"])
def test_parquet_nan_or_infinite_float_id_is_rejected_not_landed_as_nan(warehouse, land, tmp_path, field, arrow_type):
    """A NaN user id landed as the user "nan" (and every NaN as that one user)."""
    columns = {"event_id": ["p1", "p2", "p3", "p4"], "user_id": ["u1"] * 4, "item_id": ["i1"] * 4,
               "event_type": ["view"] * 4, "ts": [T] * 4, "session_id": ["s"] * 4}
    columns[field] = pa.array([float("nan"), 7.0, float("inf"), float("-inf")], arrow_type)
    path = tmp_path / "nan.parquet"
    pq.write_table(pa.table(columns), path)
    batch = check(warehouse, land(path), read=4, landed=1, rejected=3)
    assert [r["source_row"] for r in batch.rejected] == [1, 3, 4]
    assert all(r["reason"] == f"NaN or infinity where an id belongs: {field}" for r in batch.rejected)
    assert batch.landed[0][field] == "7.0"


# --- property: random mixes of valid and invalid JSONL lines ----------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ID_TEXT = st.text(alphabet=st.characters(categories=("L", "N")) | st.sampled_from("-_.:@/"), min_size=1, max_size=12)
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")


@st.composite
def valid_lines(draw):
    event_type = draw(st.sampled_from(EVENT_TYPES))
    instant = draw(st.datetimes(min_value=datetime(1990, 1, 2), max_value=datetime(2024, 5, 31),
                                timezones=st.just(UTC)))
    form = draw(st.sampled_from(["iso_z", "iso_offset", "epoch_s", "epoch_ms", "date"]))
    if form == "iso_z":
        ts = instant.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    elif form == "iso_offset":
        ts = instant.astimezone(timezone(timedelta(minutes=30 * draw(st.integers(-24, 28))))).isoformat()
    elif form == "epoch_s":
        instant = instant.replace(microsecond=0)
        ts = (instant - EPOCH) // timedelta(seconds=1)
    elif form == "epoch_ms":
        instant = instant.replace(microsecond=instant.microsecond // 1000 * 1000)
        ts = (instant - EPOCH) // timedelta(milliseconds=1)
    else:
        instant = instant.replace(hour=0, minute=0, second=0, microsecond=0)
        ts = instant.date().isoformat()
    if event_type == "rating":
        value = draw(st.floats(0.5, 5.0) | st.sampled_from([1, 2, 3, 4, 5]))
    else:
        value = draw(st.none() | st.floats(0.0, 1e9) | st.integers(0, 10**9))
    row = {"user_id": draw(ID_TEXT), "item_id": draw(ID_TEXT),
           "event_type": draw(st.sampled_from([event_type, event_type.upper(), event_type.title()])), "ts": ts}
    if value is not None:
        row["value"] = value
    event_id = draw(st.none() | st.sampled_from(["dup-1", "dup-2"]) | ID_TEXT)
    expected = (row["user_id"], row["item_id"], event_type, instant, None if value is None else float(value))
    return ("valid", row, event_id, expected)


INVALID_LINES = st.sampled_from([
    b'{"event_id": "x", "user_id": ',
    b"[1, 2, 3]",
    b'"a string"',
    b"42",
    b"null",
    b"{}",
    b'{"user_id": "u", "item_id": "i", "event_type": "view"}',
    b'{"user_id": "u", "item_id": "i", "ts": "2024-01-01"}',
    b'{"user_id": "", "item_id": "i", "event_type": "view", "ts": "2024-01-01"}',
    b'{"user_id": "u", "item_id": {"x": 1}, "event_type": "view", "ts": "2024-01-01"}',
    b'{"user_id": "u", "item_id": "i", "event_type": "view", "ts": "yesterday"}',
    b'{"user_id": "u", "item_id": "i", "event_type": "view", "ts": "2024-01-01", "value": "abc"}',
    b'{"user_id": "u", "item_id": "i", "event_type": "view", "ts": "2024-01-01", "value": NaN}',
    b'{"user_id": "u", "item_id": "i", "event_type": "view", "ts": "2024-01-01", "value": -1}',
    b'{"user_id": "u", "item_id": "i", "event_type": "rating", "ts": "2024-01-01", "value": 7}',
    b'{"event_id": "dup-1", "user_id": "u", "item_id": "i", "event_type": "teleport", "ts": "2024-01-01"}',
    b'{"event_id": "dup-2", "user_id": "u", "item_id": "i", "event_type": "view", "ts": "2999-01-01"}',
    b'{"user_id": "u\xff", "item_id": "i", "event_type": "view", "ts": "2024-01-01"}',
]).map(lambda line: ("invalid", line, None, None))

BLANK_LINES = st.sampled_from([b"", b"   "]).map(lambda line: ("blank", line, None, None))


def first_occurrences(valid: list[tuple]) -> tuple[dict, list[int]]:
    """Of the valid (number, event_id, expected) records: {record number: expected row} of those
    that land (the first of each event_id, or of each content when there is no id), and the numbers
    of the conflicts (a later record of an event_id with other contents)."""
    first_rows, seen, conflicts = {}, {}, []
    for n, eid, exp in valid:
        key = ("id", eid) if eid is not None else ("hash", exp)
        if key not in seen:
            seen[key] = exp
            first_rows[n] = exp
        elif seen[key] != exp:
            conflicts.append(n)
    return first_rows, conflicts


def landed_as_expected(batch: Batch) -> dict:
    return {r["source_row"]: (r["user_id"], r["item_id"], r["event_type"], r["ts"], r["value"]) for r in batch.landed}


def test_random_jsonl_mixes_are_fully_accounted_and_round_trip(tmp_path, now):
    """One warehouse for all examples (fast); each example's valid rows carry a unique session_id and
    event_id prefix, so examples never deduplicate against each other."""
    state = {"example": 0, "warehouse": Warehouse(tmp_path / "w.duckdb"), "seen": set()}

    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        lines=st.lists(st.one_of(valid_lines(), INVALID_LINES, BLANK_LINES), max_size=25),
        newline=st.sampled_from([b"\n", b"\r\n"]),
        trailing_newline=st.booleans(),
    )
    def run(lines, newline, trailing_newline):
        state["example"] += 1
        k = state["example"]
        encoded = []
        for kind, payload, event_id, _ in lines:
            if kind == "valid":
                row = {**payload, "session_id": f"example-{k}"}
                if event_id is not None:
                    row["event_id"] = f"{k}:{event_id}"
                payload = json.dumps(row).encode()
            encoded.append(payload)
        content = newline.join(encoded) + (newline if trailing_newline and lines else b"")
        if content in state["seen"]:  # identical bytes would be 'already_landed': use a fresh warehouse
            state["warehouse"] = Warehouse(tmp_path / f"w{k}.duckdb")
        state["seen"].add(content)
        path = tmp_path / f"mix{k}.jsonl"
        path.write_bytes(content)
        wh = state["warehouse"]
        report = land_file(wh, path, now=now)

        non_blank = [(n, kind, eid, exp) for n, (kind, _, eid, exp) in enumerate(lines, start=1) if kind != "blank"]
        valid = [(n, eid, exp) for n, kind, eid, exp in non_blank if kind == "valid"]
        first_rows, conflicts = first_occurrences(valid)
        batch = check(wh, report, read=len(non_blank), landed=len(first_rows),
                      duplicates=len(valid) - len(first_rows) - len(conflicts),
                      rejected=len(non_blank) - len(valid) + len(conflicts))
        assert landed_as_expected(batch) == first_rows
        assert all(r["session_id"] == f"example-{k}" for r in batch.landed)
        assert sorted(r["source_row"] for r in batch.rejected) == sorted(
            [n for n, kind, _, _ in non_blank if kind == "invalid"] + conflicts)

    run()


INVALID_CSV_ROWS = st.sampled_from([
    {"user_id": "", "item_id": "i", "event_type": "view", "ts": "2024-01-01"},
    {"user_id": "u", "item_id": "i", "event_type": "teleport", "ts": "2024-01-01"},
    {"user_id": "u", "item_id": "i", "event_type": "view", "ts": "yesterday"},
    {"user_id": "u", "item_id": "i", "event_type": "view", "ts": "2999-01-01"},
    {"user_id": "u", "item_id": "i", "event_type": "view", "ts": "2024-01-01", "value": "abc"},
    {"user_id": "u", "item_id": "i", "event_type": "view", "ts": "2024-01-01", "value": "-1"},
    {"user_id": "u", "item_id": "i", "event_type": "rating", "ts": "2024-01-01", "value": "7"},
    {"user_id": "u", "item_id": "", "event_type": "view", "ts": "2024-01-01"},
]).map(lambda row: ("invalid", row, None, None))


def test_random_csv_mixes_are_fully_accounted_and_round_trip(tmp_path, now):
    """The CSV reader under the same property as JSON Lines: any mix of valid and invalid records
    (quoting left to Python's csv module) is fully accounted, and the landed rows are exactly the
    valid ones, first occurrence of each event kept."""
    import csv as csv_module
    import io

    state = {"example": 0}

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(rows=st.lists(st.one_of(valid_lines(), INVALID_CSV_ROWS), min_size=1, max_size=25))
    def run(rows):
        state["example"] += 1
        k = state["example"]
        buffer = io.StringIO()
        writer = csv_module.DictWriter(buffer, fieldnames=["event_id", "user_id", "item_id", "event_type", "ts",
                                                           "value", "session_id"], lineterminator="\n")
        writer.writeheader()
        for kind, row, event_id, _ in rows:
            writer.writerow({**row, "session_id": f"example-{k}",
                             "event_id": f"{k}:{event_id}" if event_id is not None else ""})
        path = tmp_path / f"mix{k}.csv"
        path.write_text(buffer.getvalue())
        warehouse = Warehouse(tmp_path / f"w{k}.duckdb")
        report = land_file(warehouse, path, now=now)

        valid = [(n, eid, exp) for n, (kind, _, eid, exp) in enumerate(rows, start=1) if kind == "valid"]
        first_rows, conflicts = first_occurrences(valid)
        batch = check(warehouse, report, read=len(rows), landed=len(first_rows),
                      duplicates=len(valid) - len(first_rows) - len(conflicts),
                      rejected=len(rows) - len(valid) + len(conflicts))
        assert landed_as_expected(batch) == first_rows

    run()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_record_numbers_stay_exact_in_a_file_read_in_parallel(warehouse, land, write_file, suffix):
    """DuckDB reads a large file on several threads; every record keeps its own number."""
    n = 200_000
    bad_rows = {17, 18, 99_999, 150_000, n}  # includes two adjacent ones and the last record
    if suffix == ".jsonl":
        lines = [b'{"bad' if i in bad_rows else json.dumps(event(f"e{i}")).encode() for i in range(1, n + 1)]
        data = b"\n".join(lines) + b"\n"
    else:
        records = [csv_record(f"e{i}") + (",x,y" if i in bad_rows else "") for i in range(1, n + 1)]
        data = csv(*records).encode()
    batch = check(warehouse, land(write_file(f"big{suffix}", data)), read=n, landed=n - len(bad_rows),
                  rejected=len(bad_rows))
    assert sorted(r["source_row"] for r in batch.rejected) == sorted(bad_rows)
    assert all(r["event_id"] == f"e{r['source_row']}" for r in batch.landed)


def test_an_accounting_mismatch_rolls_the_whole_batch_back(warehouse, write_file, monkeypatch):
    """If the counts disagree after the inserts, nothing of the file stays in the warehouse."""
    from rec_pipeline.core.ingest import landing

    real_insert = landing._insert_new_events

    def insert_then_disagree(*args):
        real_insert(*args)
        raise landing.AccountingError("inserted 2 events, expected 1 new event ids")

    monkeypatch.setattr(landing, "_insert_new_events", insert_then_disagree)
    path = write_file("ok.jsonl", jsonl(event("e1"), event("e2", user_id="")))
    with pytest.raises(landing.AccountingError):
        landing.land_file(warehouse, path)
    with warehouse.connect() as con:
        for table in ("events", "events_rejected", "ingested_files"):
            assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table


def test_a_file_name_with_glob_characters_is_read_literally(warehouse, land, write_file):
    write_file("x1.jsonl", jsonl(event("other")))
    batch = check(warehouse, land(write_file("x[12].jsonl", jsonl(event("mine")))), read=1, landed=1)
    assert [r["event_id"] for r in batch.landed] == ["mine"]


def test_boolean_ids_are_rejected_naming_the_field(warehouse, land, write_file):
    rows = [event("e1", user_id=True), event("e2", item_id=False), event("e3")]
    batch = check(warehouse, land(write_file("bools.jsonl", jsonl(*rows))), read=3, landed=1, rejected=2)
    assert sorted(r["reason"].rsplit(": ", 1)[-1] for r in batch.rejected) == ["item_id", "user_id"]


def test_land_trusted_marks_a_whole_batch_passed_and_refuses_a_partial_one(warehouse, write_file):
    whole = land_trusted(warehouse, write_file("good.jsonl", _many_jsonl_lines(5)), 5)
    partial = write_file("partial.jsonl", _many_jsonl_lines(4, prefix="p") + '{"event_id": "bad", "user_id": null}\n')
    with pytest.raises(RuntimeError, match="landed 4 of 5"):
        land_trusted(warehouse, partial, 5)
    with warehouse.connect() as con:
        statuses = dict(con.execute("SELECT batch_id, quality_status FROM ingested_files").fetchall())
    assert statuses.pop(whole.batch_id) == "passed"
    assert list(statuses.values()) == ["pending"], "a batch that did not land whole is left to validation"


# --- files that change while they are landed --------------------------------------------------


def _grow(path: Path, rest: str) -> None:
    with path.open("a") as handle:
        handle.write(rest)


def _rewrite_in_place(path: Path, whole: str) -> None:
    """Same size, new bytes: only the mtime (set one second on, for coarse clocks) tells."""
    mtime = path.stat().st_mtime_ns
    path.write_text(whole)
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))


def _writer_finishing_before_commit(monkeypatch, finish) -> None:
    """The writer finishes after the file was read and before the landing commits."""
    from rec_pipeline.core.ingest import landing

    real_transaction, calls = landing.transaction, []

    @contextmanager
    def writer_finishes_first(con):
        if not calls:
            calls.append(finish())
        with real_transaction(con):
            yield

    monkeypatch.setattr(landing, "transaction", writer_finishes_first)


WHOLE = jsonl(event("e1"), event("e2"), event("e3"))


@pytest.mark.parametrize("writer", ["grows", "rewrites in place"])
def test_a_file_changing_while_it_is_landed_is_refused_and_lands_once_complete(
        warehouse, write_file, monkeypatch, now, writer):
    """Its half-written last line was quarantined as invalid JSON, without a word, under the
    sha256 of a version of the file that never existed whole."""
    from rec_pipeline.core.ingest.landing import FileChangedError

    if writer == "grows":
        path = write_file("growing.jsonl", WHOLE[:-20])
        _writer_finishing_before_commit(monkeypatch, lambda: _grow(path, WHOLE[-20:]))
    else:
        path = write_file("growing.jsonl", WHOLE.replace("e3", "x3"))
        _writer_finishing_before_commit(monkeypatch, lambda: _rewrite_in_place(path, WHOLE))
    with pytest.raises(FileChangedError, match="growing.jsonl changed while it was being landed"):
        land_file(warehouse, path, now=now)
    counts = table_counts(warehouse)
    assert (counts["events"], counts["events_rejected"]) == (0, 0), "nothing of it landed"
    [manifest] = query(warehouse, "SELECT status, reason, rows_read FROM ingested_files")
    assert manifest["status"] == "failed" and "changed while it was being landed" in manifest["reason"]

    monkeypatch.undo()
    check(warehouse, land_file(warehouse, path, now=now), read=3, landed=3)


def test_a_gzip_file_cut_short_because_it_is_still_being_written_is_refused_not_failed_as_unreadable(
        warehouse, write_file, monkeypatch, now):
    from rec_pipeline.core.ingest import landing

    compressed = gzip.compress(_many_jsonl_lines(50).encode(), mtime=0)
    path = write_file("growing.jsonl.gz", compressed[: len(compressed) // 2])
    real_stage = landing._stage_rows

    def read_while_the_writer_goes_on(*args):
        try:
            real_stage(*args)
        finally:
            path.write_bytes(compressed)

    monkeypatch.setattr(landing, "_stage_rows", read_while_the_writer_goes_on)
    with pytest.raises(landing.FileChangedError):
        land_file(warehouse, path, now=now)
    monkeypatch.undo()
    check(warehouse, land_file(warehouse, path, now=now), read=50, landed=50)
